"""Validation on real image pairs that training never sees (../shared/data/real_pairs):
EVD homography mAA (1..20 px) and WxBS-validation mAA@10px (fundamental matrix), for
`hndesc`, `hndesc_joint`, SIFT and DISK in the same run, mutual nearest neighbours.

    python benchmarks/real_pairs.py [--outputs outputs/bench_real_pairs] [--weights W.pt ...]
                                    [--joint_weights J.pt ...] [--only_weights] [--methods hndesc sift ...]
                                    [--variant "hndesc preprocessing.resize_max=640" ...] [--ransac_seeds 10]
                                    [--match_figures]

Each robust fit (MAGSAC) is repeated with --ransac_seeds seeds on the same matches and the mAAs
are means over them (+- their standard deviation): with two WxBS pairs one RANSAC draw can
otherwise swing the figure. Prints a table, writes `real_pairs.json` (per pair and summary) and `real_pairs.png`;
with --match_figures also `matches/<method>__<pair>.png` per method and WxBS pair: the mutual matches, green
where they lie within 5 px of the annotated epipolar geometry, red elsewhere.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import variant_confs  # noqa: E402
from hndesc_loc import extract_features, real_pairs, viz  # noqa: E402
from hndesc_loc.io import read_image  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "real_pairs"


def method_confs(names: list[str], weights: list[Path], joint_weights: list[Path], variants: list[str] = ()) -> dict:
    c, po = extract_features.confs, extract_features.parse_overrides
    confs = {n: c[n] for n in names}
    confs.update(variant_confs(variants))
    for w in weights:
        confs[f"hndesc ({Path(w).parent.name}/{Path(w).stem})"] = po(c["hndesc"], [f"model.weights={w}"])
    for w in joint_weights:
        confs[f"hndesc_joint ({Path(w).parent.name}/{Path(w).stem})"] = po(c["hndesc_joint"], [f"model.weights={w}"])
    return confs


def point_describer(model, conf: dict):
    """describe(path, points [N,2] original pixels) -> [D,N] for the detector-free check, or None
    for a method that cannot describe given points. HNDesc: its network; DISK: its dense
    descriptor map; SIFT: upright OpenCV SIFT at a fixed size (SIFT_POINT_SIZE)."""
    import cv2
    import torch
    import torch.nn.functional as F

    from hndesc_loc.models.sampling import sample_features

    pre = conf.get("preprocessing", {})
    name = conf["model"]["name"]

    def load(path, pts):
        return real_pairs.load_scaled(path, pre, pts)

    @torch.no_grad()
    def hndesc(path, pts):
        image, kp = load(path, pts)
        return model.describe(image, kp)[0].numpy()

    @torch.no_grad()
    def disk(path, pts):
        image, kp = load(path, pts)
        h, w = image.shape[-2:]
        padded = F.pad(image, (0, -w % 16, 0, -h % 16))
        _, dense = model.net.heatmap_and_dense_descriptors(padded)
        return F.normalize(sample_features(dense[..., :h, :w], kp, 1), dim=1)[0].numpy()

    def sift(path, pts):
        image, kp = load(path, pts)
        gray = (image[0].mean(0).numpy() * 255).astype(np.uint8)
        kps = [cv2.KeyPoint(float(x), float(y), SIFT_POINT_SIZE) for x, y in kp[0].numpy()]
        kps, desc = cv2.SIFT_create().compute(gray, kps)
        if len(kps) != len(pts):
            raise RuntimeError("OpenCV dropped points while describing them.")
        desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-6))   # RootSIFT, unit norm
        return desc.T

    if name in ("hndesc", "hndesc_joint") and hasattr(model, "describe"):
        return hndesc if not (conf["model"].get("scale_adaptive")) else None
    if name == "disk":
        return disk
    if name == "sift":
        return sift
    return None


SIFT_POINT_SIZE = 16.0  # px at the extraction resolution: a mid-range DoG scale


def match_figure_writer(folder: Path, method: str):
    """on_wxbs_matches callback of `real_pairs.evaluate`: one PNG per WxBS pair in `folder`."""
    def write(pair: dict, mk0: np.ndarray, mk1: np.ndarray, right: np.ndarray) -> None:
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in method)
        viz.plot_matches(read_image(pair["image0"]), read_image(pair["image1"]), mk0, mk1,
                         folder / f"{safe}__{pair['name']}.png", inliers=right, max_lines=len(mk0),
                         title=f"{method}, {pair['name']}: {int(right.sum())} right (green) of {len(mk0)} mutual matches")
    return write


def evaluate_method(conf: dict, evd: list[dict], wxbs: list[dict], seeds: list[int],
                    figures: Path | None = None, name: str = "") -> dict:
    """Both protocols for one extractor conf; figures: folder for the WxBS match figures (None: none)."""
    model = extract_features.build_model(conf)
    pre = conf.get("preprocessing", {})
    t0 = time.perf_counter()
    out = real_pairs.evaluate(
        lambda path: extract_features.extract_one(model, path.parent, path.name, pre, as_half=False)["data"], evd, wxbs,
        seeds=seeds, on_wxbs_matches=match_figure_writer(figures, name) if figures is not None else None)
    out["seconds"] = time.perf_counter() - t0
    describe = point_describer(model, conf)
    out["annotated"] = real_pairs.annotated_point_retrieval(describe, wxbs) if describe else None
    return out


def plot(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    ax.bar(x - 0.2, [results[n]["evd_maa"] for n in names], 0.4,
           yerr=[results[n]["evd_maa_std"] for n in names], capsize=3, label="EVD homography mAA (1-20 px)")
    ax.bar(x + 0.2, [results[n]["wxbs_maa"] for n in names], 0.4,
           yerr=[results[n]["wxbs_maa_std"] for n in names], capsize=3, label="WxBS-val mAA@10px")
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Real pairs (held out from training), mutual NN")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with evd/ and wxbs_val/ (default: %(default)s)")
    parser.add_argument("--outputs", type=Path, default=ROOT / "outputs" / "bench_real_pairs",
                        help="where real_pairs.json and real_pairs.png go (default: %(default)s)")
    parser.add_argument("--methods", nargs="*", default=["hndesc", "hndesc_joint", "sift", "disk"],
                        help="extract_features confs to evaluate (default: %(default)s)")
    parser.add_argument("--weights", nargs="*", type=Path, default=[], help="extra hndesc weights to evaluate")
    parser.add_argument("--joint_weights", nargs="*", type=Path, default=[],
                        help="extra hndesc_joint weights (with a detection head) to evaluate")
    parser.add_argument("--variant", nargs="*", default=[],
                        help='extra methods as "CONF key=value ...", e.g. "hndesc preprocessing.resize_max=640"')
    parser.add_argument("--only_weights", action="store_true", help="evaluate only --weights/--joint_weights/--variant")
    parser.add_argument("--ransac_seeds", type=int, default=10,
                        help="MAGSAC runs (seeds 0..N-1) per pair on the same matches; mAAs are their mean (default: %(default)s)")
    parser.add_argument("--match_figures", action="store_true",
                        help="also draw each method's mutual matches on each WxBS pair (right green, wrong red) "
                             "into OUTPUTS/matches/")
    args = parser.parse_args(argv)
    if args.ransac_seeds < 1:
        raise SystemExit("--ransac_seeds must be at least 1.")
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is absent: this benchmark needs ../shared/data/real_pairs.")
    evd, wxbs = real_pairs.list_evd(args.data / "evd"), real_pairs.list_wxbs(args.data / "wxbs_val")
    names = [] if args.only_weights else list(args.methods)
    if "disk" in names:
        try:
            from hndesc_loc.detectors.disk import find_disk_weights

            find_disk_weights()
        except FileNotFoundError as e:
            print(f"DISK skipped: {e}")
            names.remove("disk")
    confs = method_confs(names, args.weights, args.joint_weights, args.variant)
    figures = args.outputs / "matches" if args.match_figures else None
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, conf in tqdm(confs.items(), desc="methods", unit="method"):
        results[name] = evaluate_method(conf, evd, wxbs, list(range(args.ransac_seeds)), figures, name)
    args.outputs.mkdir(parents=True, exist_ok=True)
    (args.outputs / "real_pairs.json").write_text(json.dumps(results, indent=1))
    plot(results, args.outputs / "real_pairs.png")
    print(f"\nReal pairs: EVD {len(evd)} pairs, WxBS-val {len(wxbs)} pairs; mutual NN, 1024 px; "
          f"mAA = mean over {args.ransac_seeds} MAGSAC seeds (+- std)")
    print(f"precision / correct: matches within {real_pairs.PRECISION_PX:g} px of the GT homography (EVD) or of the "
          "epipolar lines of the annotated correspondences (WxBS), mean per pair")
    print(f"{'method':44s} {'EVD mAA':>12s} {'WxBS mAA':>12s} {'EVD prec':>9s} {'EVD corr':>9s} {'WxBS prec':>10s} "
          f"{'WxBS corr':>10s} {'top100 ok':>10s} {'hub skew':>9s} {'pts top1':>9s} {'matches':>8s} {'s':>6s}")
    for name, r in results.items():
        top1 = f"{r['annotated']['top1']:9.3f}" if r["annotated"] else f"{'-':>9s}"
        print(f"{name:44s} {r['evd_maa']:6.3f}+-{r['evd_maa_std']:.3f} {r['wxbs_maa']:6.3f}+-{r['wxbs_maa_std']:.3f} {r['evd_precision']:9.3f} {r['evd_correct']:9.0f} "
              f"{r['wxbs_precision']:10.3f} {r['wxbs_correct']:10.0f} {r['wxbs_confident_right']:10.1f} "
              f"{r['wxbs_hub_skew']:9.1f} {top1} {r['mean_matches']:8.0f} "
              f"{r['seconds']:6.1f}")
    print("WxBS mAA per pair: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v['maa']:.3f}" for k, v in r["wxbs"].items()) for name, r in results.items()))
    print(f"WxBS mutual matches / right / right of the top {real_pairs.CONFIDENT_TOP} / hub skew per pair: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v['matches']} / {v['correct']} / {v['confident_right']} / {v['hub_skew']:.1f}"
                                for k, v in r["wxbs"].items())
        for name, r in results.items()))
    print(f"top100 ok: right matches among the {real_pairs.CONFIDENT_TOP} mutual matches of highest descriptor "
          "similarity, mean per WxBS pair (does the descriptor's confidence point at the right matches?)")
    print("hub skew: skewness of how often each point of image 2 is the nearest neighbour of image 1's points "
          "(high: hubs absorb clutter's neighbours, so the mutual check rejects them)")
    print(f"pts top1: WxBS annotated points whose annotated partner is nearer in descriptor space than every point "
          f"of a {real_pairs.GRID_STEP_PX} px grid over the other image (detector-free; SIFT: upright, "
          f"{SIFT_POINT_SIZE:g} px)")
    print(f"Wrote {args.outputs / 'real_pairs.json'} and {args.outputs / 'real_pairs.png'}")


if __name__ == "__main__":
    main()
