"""The embedded demo: generate (and cache) a small synthetic scene with exact ground
truth, run the Aachen pipeline on it with the shipped HNDesc weights, print the recall
of day and night queries, and save a figure of a localized night query.

    python -m pipelines.demo [--outputs outputs/demo] [--conf hndesc]
"""
from __future__ import annotations

import json
from pathlib import Path

from hndesc_loc import logger
from hndesc_loc.evaluate import evaluate_conditions, format_recall
from hndesc_loc.io import read_poses, write_text_atomic
from hndesc_loc.synthetic.scene import generate
from hndesc_loc.viz import localization_figure
from pipelines import aachen
from hndesc_loc.utils.cli import Parser, run as run_cli


def main(argv=None):
    p = Parser(description=__doc__)
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
    for cond, ev in evaluate_conditions(results, gt, queries).items():
        summary[cond] = {k: ev[k] for k in ("recall", "median_t", "median_R", "num")}
        print(f"  {cond:5s} ({ev['num']:2d} queries): {format_recall(ev['recall'])}   "
              f"median {ev['median_t']:.3f} m, {ev['median_R']:.2f}°")
    write_text_atomic(a.outputs / f"summary_{a.conf}.json", json.dumps(summary, indent=2))
    night = [q for q in queries if q.startswith("query/night/")]
    logs = json.loads(Path(str(out["results"]) + "_logs.json").read_text())["queries"]
    night = sorted(night, key=lambda q: -logs[q].get("num_inliers", 0))
    fig = a.outputs / f"night_query_{a.conf}.png"
    if night and localization_figure(out["results"], out["sfm_dir"], out["features"], out["images"],
                                     night[len(night) // 2], fig):
        print(f"Figure of a localized night query (median inlier count): {fig}")
    print(f"Results file: {out['results']}")
    return summary


if __name__ == "__main__":
    run_cli(main)
