"""The localization regression check of a feature file: the Aachen pipeline on the demo's synthetic
scene and on the test suite's smaller scene, recall per condition, one row per variant, all in
one run (the shipped conf is always included: compare only rows of the same run).

    python benchmarks/localization_check.py [--outputs outputs/loc_check]
        [--variant "hndesc_joint model.weights=W" ...] [--confs hndesc hndesc_joint]

A variant is a feature conf name followed by overrides (as extract_features' CLI takes them); the
overrides give its feature, match and results files their own names (hloc's naming plus a hash),
so variants share a scene's folder (pairs, global descriptors) but never their features.
Printed: recall at (0.25 m, 2°) / (0.5 m, 5°) / (5 m, 10°) and the median position error, day and
night, per scene; saved as JSON in the outputs folder with every query's errors.
"""
import json
import shlex
from pathlib import Path

from hndesc_loc.evaluate import evaluate_conditions, format_recall
from hndesc_loc.io import read_poses, write_text_atomic
from hndesc_loc.synthetic.scene import generate
from hndesc_loc.utils.cli import Parser, run as run_cli

# The demo's scene (pipelines.demo) and the scene of tests/conftest.py, with their num_loc.
SCENES = {
    "demo": (None, 10),
    "test": ({"image_size": [512, 384], "num_db": 20, "num_day_queries": 4, "num_night_queries": 6}, 8),
}


def check(outputs: Path, conf: str, overrides: list[str]) -> dict:
    from pipelines import aachen

    rows = {}
    for name, (scene_conf, num_loc) in SCENES.items():
        scene = generate(outputs / f"scene_{name}", scene_conf)
        out = aachen.run(scene["aachen"], outputs / name, num_covis=10, num_loc=num_loc,
                         feature_conf=conf, overrides={"features": overrides} if overrides else None)
        results, gt = read_poses(out["results"]), read_poses(scene["ground_truth"])
        queries = [line.split()[0] for line in out["queries"].read_text().splitlines()]
        for cond, ev in evaluate_conditions(results, gt, queries).items():
            rows[f"{name} {cond}"] = {"recall": ev["recall"], "median_t": ev["median_t"], "num": ev["num"],
                                      "errors": ev["errors"]}   # per query: (position m, rotation °)
    return rows


def main(argv=None):
    from hndesc_loc.extract_features import local_confs

    p = Parser(description=__doc__)
    p.add_argument("--outputs", type=Path, default=Path("outputs/loc_check"),
                   help="folder for the scenes, pipeline outputs and loc_check.json")
    p.add_argument("--confs", nargs="*", default=["hndesc"],
                   help="shipped feature confs to run as they are")
    p.add_argument("--variant", nargs="*", default=[],
                   help='"CONF key=value ...": a feature conf with overrides, e.g. "hndesc_joint model.weights=W"')
    a = p.parse_args(argv)
    variants = [(c, []) for c in a.confs] + [(v[0], v[1:]) for v in map(shlex.split, a.variant)]
    if not variants:
        raise ValueError("Nothing to run: name at least one --confs or --variant.")
    unknown = sorted({c for c, _ in variants} - set(local_confs()))
    if unknown:
        raise KeyError(f"Unknown feature conf(s) {unknown}: choose among {sorted(local_confs())}.")
    table = {}
    for conf, overrides in variants:
        label = " ".join([conf, *overrides])
        table[label] = check(a.outputs, conf, overrides)
        write_text_atomic(a.outputs / "loc_check.json", json.dumps(table, indent=2))
    print("\nRecall (0.25m, 2°) / (0.5m, 5°) / (5m, 10°), median position error:")
    for label, rows in table.items():
        print(label)
        for key, r in rows.items():
            print(f"  {key:11s} ({r['num']:2d} queries): {format_recall(r['recall'])}   median {r['median_t']:.3f} m")
    print(f"Saved {a.outputs / 'loc_check.json'}")
    return table


if __name__ == "__main__":
    run_cli(main)
