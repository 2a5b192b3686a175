"""hndesc_joint inference settings on the held-out HPatches-style set (640 px, mutual NN): each
argument is a comma-separated list of `model.*` overrides, evaluated with the project's HPatches
evaluator. The model card's NMS-radius and soft-argmax figures come from this script.

    python benchmarks/joint_settings.py "nms_radius=2,refine_temperature=0.1" "nms_radius=1" \
        "nms_radius=1,refine_temperature=null" [--weights runs/x/best_val.pt]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from descriptor_quality import ROOT, evaluate_methods  # noqa: E402

from hndesc_loc import extract_features, hpatches  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+", help="e.g. nms_radius=1,refine_temperature=0.2")
    p.add_argument("--weights", default="default", help="joint checkpoint (default: shipped)")
    p.add_argument("--outputs", type=Path, default=ROOT / "outputs" / "bench_joint_settings",
                   help="folder for the generated set, features and results (default: %(default)s)")
    a = p.parse_args()
    confs = {s: extract_features.parse_overrides(
        extract_features.confs["hndesc_joint"], [f"model.weights={a.weights}"] + [f"model.{x}" for x in s.split(",")])
        for s in a.settings}
    results, _, _ = evaluate_methods(a.outputs, confs)
    print(hpatches.format_table(results))


if __name__ == "__main__":
    main()
