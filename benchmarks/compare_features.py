"""The README's comparison table: same images (HPatches-style set from held-out photos), same
matcher (mutual NN), for HNDesc (shipped lite), SIFT and DISK (when its weights are installed):
MMA@3 and homography accuracy @3 px (viewpoint / illumination), extraction time per image,
descriptor size.

    python benchmarks/compare_features.py [--outputs outputs/bench_quality]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from descriptor_quality import ROOT, evaluate_methods, method_confs  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outputs", type=Path, default=ROOT / "outputs" / "bench_quality",
                   help="folder of descriptor_quality.py whose features are compared (default: %(default)s)")
    a = p.parse_args()
    confs = {k: v for k, v in method_confs([]).items() if k in ("hndesc (shipped conf)", "opencv sift (defaults)",
                                                                "sift-desc on same kpts", "disk")}
    results, timings, dims = evaluate_methods(a.outputs, confs)
    print("\n| method | MMA@3 v | MMA@3 i | H-acc@3px v | H-acc@3px i | ms / image (640 px) | descriptor |")
    print("|---|---|---|---|---|---|---|")
    for k, r in results.items():
        t = f"{1000 * timings[k]:.0f}" if k in timings else "cached"
        d, dt = dims[k]
        size = d * (2 if dt == "float16" else 4)
        print(f"| {k} | {r['v']['mma'][2]:.3f} | {r['i']['mma'][2]:.3f} | {r['v']['hest'][1]:.3f} | "
              f"{r['i']['hest'][1]:.3f} | {t} | {d}-d {dt} ({size} B) |")


if __name__ == "__main__":
    main()
