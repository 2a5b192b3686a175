"""Scale-out: in-process vs Ray (1 and 2 workers) for extraction, matching and
localization on this machine; the driver's HDF5 write throughput (the serial ceiling);
and a projection of wall time for Aachen v1.1 (6,697 db + 1,015 queries) on 1, 8, 64 nodes.

    python benchmarks/scale.py
"""
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    import ray

    import hndesc_loc
    from hndesc_loc import extract_features, localize_sfm, match_features
    from hndesc_loc.distributed import RayExecutor
    from hndesc_loc.io import open_h5, write_item
    from hndesc_loc.synthetic.scene import generate
    from pipelines import aachen

    root = Path(tempfile.mkdtemp())
    scene = generate(root / "scene", {"num_db": 24, "num_day_queries": 8, "num_night_queries": 8})
    base = aachen.run(scene["aachen"], root / "base", num_covis=10, num_loc=10)
    images = scene["aachen"] / "images_upright"
    names = [f"db/{i:04d}.jpg" for i in range(24)] + [l.split()[0] for l in base["queries"].read_text().splitlines()]
    conf = hndesc_loc.confs["hndesc"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    modes = {"in-process": lambda: None, "ray 1 worker": lambda: RayExecutor(num_workers=1, chunk_size=4),
             "ray 2 workers": lambda: RayExecutor(num_workers=2, chunk_size=4)}
    rows, steady = {}, {}
    n_pairs = len(base["loc_pairs"].read_text().splitlines())
    n_queries = len(base["queries"].read_text().splitlines())
    for mode, make in modes.items():
        d = root / mode.replace(" ", "_")
        d.mkdir()
        ex = [make() for _ in range(3)]
        t_ext = timed(lambda: extract_features.main(conf, images, feature_path=d / "f.h5", image_list=names,
                                                    executor=ex[0]))
        t_match = timed(lambda: match_features.main(match_features.confs["NN-ratio"], base["loc_pairs"], d / "f.h5",
                                                    matches=d / "m.h5", executor=ex[1]))
        t_loc = timed(lambda: localize_sfm.main(base["sfm_dir"], base["queries"], base["loc_pairs"], base["features"],
                                                base["loc_matches"], d / "res.txt", executor=ex[2]))
        rows[mode] = (len(names) / t_ext, n_pairs / t_match, n_queries / t_loc)
        if ex[0] is not None:
            steady[mode] = [e.timing["steady_items"] / e.timing["steady_s"] for e in ex]
            steady[mode + " start-up"] = [e.timing["startup_and_first_chunk_s"] for e in ex]
    # The driver's serial ceiling: writing feature items (4096 kpts, 128-d, fp16) to HDF5.
    item = {"keypoints": np.zeros((4096, 2), np.float16), "descriptors": np.zeros((128, 4096), np.float16),
            "scores": np.zeros(4096, np.float16), "image_size": np.array([1024, 768])}
    with open_h5(root / "w.h5", "w") as fd:
        t_w = timed(lambda: [write_item(fd, f"img{i}.jpg", item) for i in range(300)])
    write_ips = 300 / t_w
    print(f"\n{'mode':16s} {'extract img/s':>13s} {'match pairs/s':>13s} {'localize q/s':>12s}")
    for mode, (e, m, l) in rows.items():
        print(f"{mode:16s} {e:13.2f} {m:13.2f} {l:12.2f}")
    ref, r2 = rows["in-process"], rows["ray 2 workers"]
    print("Ray overhead at equal cores (2 workers vs in-process, 2 threads): "
          + ", ".join(f"{k} {100 * (1 - b / a):+.0f}%" for k, a, b in zip(("extract", "match", "localize"), ref, r2)))
    print(f"driver HDF5 writes: {write_ips:.0f} feature items/s (serial ceiling)")
    print("Ray steady state (after the first chunk, i.e. without worker start-up), items/s for extract / match / "
          "localize, and the start-up + first chunk in s:")
    for k, v in steady.items():
        print(f"  {k:24s} " + " / ".join(f"{x:.2f}" for x in v))
    if "ray 2 workers" in steady:
        print("Ray overhead at equal cores in steady state (2 workers vs in-process): "
              + ", ".join(f"{k} {100 * (1 - b / a):+.0f}%" for k, a, b in zip(("extract", "match", "localize"), ref,
                                                                              steady["ray 2 workers"])))
    # Projection for Aachen v1.1: 7,712 images to extract, ~6,697*20 covisibility + 1,015*50 retrieval pairs,
    # 1,015 queries. Assumes one node = this machine's per-worker throughput x2 workers, linear scaling
    # across nodes until the driver's write ceiling, images at 1024 px (the scene's are 640x480: x2.6 pixels).
    n_img, n_pairs, n_q = 7712, 6697 * 20 + 1015 * 50, 1015
    r2 = steady.get("ray 2 workers", r2)  # steady state: start-up (seconds) is negligible at this scale
    per_node = (r2[0] / 2.6, r2[1], r2[2])
    print("\nProjected Aachen v1.1 wall time (extract + match + localize), assumptions above:")
    for nodes in (1, 8, 64):
        e = n_img / min(per_node[0] * nodes, write_ips)
        m = n_pairs / min(per_node[1] * nodes, write_ips * 5)  # a match item is ~5x smaller than a feature item
        l = n_q / (per_node[2] * nodes)
        print(f"  {nodes:3d} nodes: extract {e / 60:6.1f} min, match {m / 60:6.1f} min, localize {l / 60:5.1f} min, "
              f"total {(e + m + l) / 3600:5.2f} h")
    ray.shutdown()


if __name__ == "__main__":
    main()
