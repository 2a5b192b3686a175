"""The embedded demo: generate (and cache) a small synthetic scene with exact ground
truth, run the Aachen pipeline on it with the shipped HNDesc weights, print the recall
of day and night queries, and save a figure of a localized night query.

    python -m pipelines.demo [--outputs outputs/demo] [--conf hndesc]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pycolmap

from hndesc_loc import logger
from hndesc_loc.evaluate import evaluate, format_recall
from hndesc_loc.io import open_h5, read_image, read_poses, write_text_atomic
from hndesc_loc.synthetic.scene import generate
from hndesc_loc.viz import plot_localization
from pipelines import aachen


def localization_figure(out: dict, query: str, path: Path) -> bool:
    """Query (left) and the retrieved database image sharing most inlier 3D points (right)."""
    logs = json.loads(Path(str(out["results"]) + "_logs.json").read_text())["queries"][query]
    if not logs.get("inlier_points3D"):
        return False
    rec = pycolmap.Reconstruction(str(out["sfm_dir"]))
    inl_kp, inl_p3d = np.array(logs["inlier_keypoints"]), np.array(logs["inlier_points3D"])
    best = None
    for db_name in logs["retrieved"]:
        image = rec.find_image_with_name(db_name)
        p3d_to_kp = {p.point3D_id: i for i, p in enumerate(image.points2D) if p.has_point3D()}
        hits = [(q, p3d_to_kp[p]) for q, p in zip(inl_kp, inl_p3d) if p in p3d_to_kp]
        if best is None or len(hits) > len(best[1]):
            best = (db_name, hits)
    db_name, hits = best
    with open_h5(out["features"]) as fd:
        kq, kdb = fd[query]["keypoints"][()], fd[db_name]["keypoints"][()]
    hits = np.array(hits).reshape(-1, 2)
    plot_localization(read_image(out["images"] / query), read_image(out["images"] / db_name),
                      kq[hits[:, 0]], kdb[hits[:, 1]], path,
                      f"{query}: {logs['num_inliers']} PnP inliers; {len(hits)} drawn through {db_name}")
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outputs", type=Path, default=Path("outputs/demo"))
    p.add_argument("--conf", default="hndesc")
    p.add_argument("--num_loc", type=int, default=10)
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    a = p.parse_args(argv)
    from hndesc_loc.distributed import make_executor

    logger.info("Generating the synthetic scene (cached in %s).", a.outputs / "scene")
    scene = generate(a.outputs / "scene")
    out = aachen.run(scene["aachen"], a.outputs / f"aachen_{a.conf}", num_covis=10, num_loc=a.num_loc,
                     feature_conf=a.conf, executor=make_executor(a.executor))
    results, gt = read_poses(out["results"]), read_poses(scene["ground_truth"])
    queries = [line.split()[0] for line in out["queries"].read_text().splitlines()]
    summary = {}
    print("\nRecall (0.25m, 2°) / (0.5m, 5°) / (5m, 10°) on the synthetic scene:")
    for cond in ("day", "night"):
        names = [q.split("/")[-1] for q in queries if q.startswith(f"query/{cond}/")]
        ev = evaluate(results, gt, names)
        summary[cond] = {k: ev[k] for k in ("recall", "median_t", "median_R", "num")}
        print(f"  {cond:5s} ({ev['num']:2d} queries): {format_recall(ev['recall'])}   "
              f"median {ev['median_t']:.3f} m, {ev['median_R']:.2f}°")
    write_text_atomic(a.outputs / f"summary_{a.conf}.json", json.dumps(summary, indent=2))
    night = [q for q in queries if q.startswith("query/night/")]
    logs = json.loads(Path(str(out["results"]) + "_logs.json").read_text())["queries"]
    night = sorted(night, key=lambda q: -logs[q].get("num_inliers", 0))
    fig = a.outputs / f"night_query_{a.conf}.png"
    if night and localization_figure(out, night[len(night) // 2], fig):
        print(f"Figure of a localized night query (median inlier count): {fig}")
    print(f"Results file: {out['results']}")
    return summary


if __name__ == "__main__":
    main()
