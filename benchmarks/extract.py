"""Extraction speed and peak memory on 1024 px images: HNDesc (the `hndesc` conf; also without its keypoint
selection and coarse context, the same scale pooling; lite too), hndesc_joint (HNDesc's own detection head), HNDesc caps backbone, DISK (when its weights are
installed) and pycolmap's SIFT extraction of the same images, in one run.

    python benchmarks/extract.py [--num_images 12] [--variant "hndesc model.rotation_pooling.angles=[-10,10] model.rotation_pooling.scales=[0.7071]" ...]

Each --variant adds a row (and its ratio to DISK): an extract_features conf with overrides.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_images, run_isolated, variant_confs  # noqa: E402


def hndesc(conf_name, image_dir, names, out, overrides):
    import torch

    torch.set_num_threads(2)
    from hndesc_loc import extract_features

    conf = extract_features.parse_overrides(extract_features.confs[conf_name], overrides)
    if conf["model"].get("backbone") == "caps":
        # Speed only: no caps weights ship; time the paper's network with random weights.
        from hndesc_loc.models import hndesc as H
        from hndesc_loc.models.network import HNDescNet

        H.load_network = lambda weights, backbone, **kw: HNDescNet(backbone).eval()
    extract_features.main(conf, image_dir, feature_path=Path(out), image_list=names[:1])  # warm-up
    import time

    t = time.perf_counter()
    extract_features.main(conf, image_dir, feature_path=Path(out), image_list=names)
    return time.perf_counter() - t


def colmap_sift(image_dir, names, out):
    import time

    import pycolmap

    opts = pycolmap.FeatureExtractionOptions()
    opts.num_threads = 2
    opts.max_image_size = 1024
    t = time.perf_counter()
    pycolmap.extract_features(str(out), str(image_dir), image_names=names, extraction_options=opts,
                              device=pycolmap.Device.cpu)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--num_images", type=int, default=12, help="images timed per method (default: %(default)s)")
    p.add_argument("--variant", nargs="*", default=[],
                   help='extra rows as "CONF key=value ...", e.g. "hndesc model.tone_pooling=[1.0,0.5]"')
    a = p.parse_args()
    if a.variant:   # a bad conf name or value fails here, before anything is timed
        from hndesc_loc.extract_features import build_model

        for v, conf in variant_confs(a.variant).items():
            try:
                build_model(conf)
            except ValueError as e:
                raise SystemExit(f"--variant {v!r}: {e}") from None
    tmp = Path(tempfile.mkdtemp())
    names = make_images(tmp / "images", 1024, a.num_images)
    n = len(names)
    rows = {}
    _, mem, secs = run_isolated(colmap_sift, tmp / "images", names, tmp / "colmap.db")
    rows["pycolmap SIFT"] = (n / secs, mem)
    default = "hndesc (default conf)"   # the name only: importing the package here would load torch in the parent
    _, mem, secs = run_isolated(hndesc, "hndesc", tmp / "images", names, tmp / "default.h5", [])
    rows[default] = (n / secs, mem)
    plain = "hndesc (no selection, no context)"
    _, mem, secs = run_isolated(hndesc, "hndesc", tmp / "images", names, tmp / "plain.h5",
                                ["model.matchability_candidates=null", "model.context_weight=null"])
    rows[plain] = (n / secs, mem)
    _, mem, secs = run_isolated(hndesc, "hndesc", tmp / "images", names, tmp / "lite.h5", ["model.backbone=lite", "model.matchability_candidates=null"])
    rows["hndesc (lite+sift)"] = (n / secs, mem)
    _, mem, secs = run_isolated(hndesc, "hndesc_joint", tmp / "images", names, tmp / "joint.h5", [])
    rows["hndesc_joint"] = (n / secs, mem)
    for i, v in enumerate(a.variant):
        name, *overrides = v.split()
        _, mem, secs = run_isolated(hndesc, name, tmp / "images", names, tmp / f"variant{i}.h5", overrides)
        rows[v] = (n / secs, mem)
    _, mem, secs = run_isolated(hndesc, "hndesc_caps", tmp / "images", names, tmp / "caps.h5", [])
    rows["hndesc_caps (random weights)"] = (n / secs, mem)
    try:
        from hndesc_loc.detectors.disk import find_disk_weights

        find_disk_weights()
        _, mem, secs = run_isolated(hndesc, "disk", tmp / "images", names, tmp / "disk.h5", [])
        rows["disk"] = (n / secs, mem)
    except FileNotFoundError as e:
        print(f"DISK skipped: {e}")
    base = rows["pycolmap SIFT"]
    print(f"\n{n} images at 1024 px, 2 CPU threads")
    width = max([32] + [len(k) for k in rows])
    print(f"{'method':{width}s} {'img/s':>7s} {'x SIFT':>7s} {'peak RSS MiB':>13s} {'x SIFT':>7s}")
    for k, (ips, mem) in rows.items():
        print(f"{k:{width}s} {ips:7.2f} {ips / base[0]:7.2f} {mem:13.0f} {mem / base[1]:7.2f}")
    if "disk" in rows:
        print(f"hndesc vs DISK: x{rows[default][0] / rows['disk'][0]:.1f} faster "
              f"({1000 / rows[default][0]:.0f} vs {1000 / rows['disk'][0]:.0f} ms / image; target >= x3)")
        print(f"hndesc without selection and context vs DISK: x{rows[plain][0] / rows['disk'][0]:.1f} faster "
              f"({1000 / rows[plain][0]:.0f} vs {1000 / rows['disk'][0]:.0f} ms / image)")
        print(f"hndesc_joint vs DISK: x{rows['hndesc_joint'][0] / rows['disk'][0]:.1f} faster "
              f"({1000 / rows['hndesc_joint'][0]:.0f} vs {1000 / rows['disk'][0]:.0f} ms / image; target >= x3)")
        for v in a.variant:
            print(f"{v} vs DISK: x{rows[v][0] / rows['disk'][0]:.1f} faster "
                  f"({1000 / rows[v][0]:.0f} vs {1000 / rows['disk'][0]:.0f} ms / image)")


if __name__ == "__main__":
    main()
