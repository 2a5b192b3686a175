"""Real image pairs with ground truth: EVD (homographies) and WxBS (annotated correspondences).

Layouts (`../shared/data/real_pairs/`, or the official releases laid out the same way):
- EVD: `NAME_1.jpg`, `NAME_2.jpg`, `NAME_H_1_2.txt` (3x3, image-1 pixels -> image-2 pixels).
- WxBS: `PAIR/01.jpg`, `PAIR/02.jpg`, `PAIR/corrs.txt` (one `x1 y1 x2 y2` per line).

Protocols (as the benchmarks define them):
- EVD: H estimated from the matches with OpenCV's MAGSAC (3 px); error = mean reprojection error of
  the ground truth over the part of image 1 visible in image 2; mAA = mean over thresholds
  1..20 px of the fraction of pairs under the threshold.
- WxBS: F estimated with OpenCV's MAGSAC as `cv2.findFundamentalMat(src, dst, USAC_MAGSAC, 0.25,
  0.999, 100000)` does, but repeated over several seeds (`magsac_params`, `evaluate`);
  per pair, the fraction of GT correspondences with symmetric epipolar distance (mean of the
  point-to-line distances in both images) <= t, for t = 0..10 px; mAA@10px = its mean.

Both mAAs are pass/fail per pair and the pairs are few (15 + 2), so a model that is better but
not yet good enough moves neither. Graded companions, computed on the same matches before any
robust estimation: the precision of the matches (EVD: within PRECISION_PX of the GT homography;
WxBS: within PRECISION_PX of the epipolar lines of the F fitted to all annotated
correspondences) and the number of such correct matches per pair.

Detector-free descriptor check on WxBS (`annotated_point_retrieval`): each annotated point of
one image is described and compared with the description of its annotated partner and of a
dense grid over the other image (grid points within EXCLUSION_PX of the partner removed);
top-1 (top-10) accuracy = fraction of points whose partner is beaten by no (at most 9) grid
points, both directions. It isolates the descriptor from the detector and grades what mAA only passes or fails.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .matchers import default_matcher_conf, match_nearest_neighbor

EVD_THRESHOLDS = np.arange(1, 21)
WXBS_THRESHOLDS = np.arange(0, 11)
PRECISION_PX = 5.0
GRID_STEP_PX = 8        # dense distractor grid of the annotated-point retrieval (original pixels)
EXCLUSION_PX = 8.0      # grid points this close to the true partner are not distractors


def list_evd(root: Path) -> list[dict]:
    """[{'name', 'image0', 'image1', 'H'}] for an EVD folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"EVD folder {root} does not exist.")
    pairs = []
    for hfile in sorted(root.glob("*_H_1_2.txt")):
        name = hfile.name[: -len("_H_1_2.txt")]
        im0, im1 = root / f"{name}_1.jpg", root / f"{name}_2.jpg"
        for p in (im0, im1):
            if not p.is_file():
                raise FileNotFoundError(f"{p} is missing: EVD pairs need NAME_1.jpg, NAME_2.jpg and NAME_H_1_2.txt.")
        pairs.append({"name": name, "image0": im0, "image1": im1, "H": np.loadtxt(hfile).reshape(3, 3)})
    if not pairs:
        raise ValueError(f"{root} holds no EVD pair (no NAME_H_1_2.txt file).")
    return pairs


def list_wxbs(root: Path) -> list[dict]:
    """[{'name', 'image0', 'image1', 'corrs' [N,4]}] for a WxBS folder of pair folders."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"WxBS folder {root} does not exist.")
    pairs = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [d / "01.jpg", d / "02.jpg", d / "corrs.txt"]
        if not all(f.is_file() for f in files):
            raise FileNotFoundError(f"{d} lacks one of 01.jpg, 02.jpg, corrs.txt (the WxBS layout).")
        pairs.append({"name": d.name, "image0": files[0], "image1": files[1],
                      "corrs": np.loadtxt(files[2]).reshape(-1, 4)})
    if not pairs:
        raise ValueError(f"{root} holds no WxBS pair folder.")
    return pairs


def homography_error(H_est: np.ndarray | None, H_gt: np.ndarray, size0: tuple[int, int],
                     size1: tuple[int, int], step: int = 8) -> float:
    """Mean |H_est(p) - H_gt(p)| over a grid of image-1 pixels p whose GT projection falls in
    image 2. size0, size1: (w, h). inf when there is no estimate."""
    if H_est is None:
        return float("inf")
    w0, h0 = size0
    ys, xs = np.mgrid[0:h0:step, 0:w0:step]
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)[None]
    gt = cv2.perspectiveTransform(pts, H_gt)[0]
    w1, h1 = size1
    vis = (gt[:, 0] >= 0) & (gt[:, 0] < w1) & (gt[:, 1] >= 0) & (gt[:, 1] < h1)
    if not vis.any():
        return float("inf")
    est = cv2.perspectiveTransform(pts, H_est)[0]
    return float(np.linalg.norm(est[vis] - gt[vis], axis=1).mean())


def magsac_params(threshold: float, seed: int) -> "cv2.UsacParams":
    """OpenCV's MAGSAC as its USAC_MAGSAC flag sets it up (MAGSAC++ score, sigma-consensus local
    optimisation, uniform sampling; confidence 0.999, at most 100000 iterations), with an explicit
    seed: the flag always draws from one fixed seed, whatever cv2.setRNGSeed says. Seed 0 comes
    close to the flag's draw without being bit-identical to it."""
    q = cv2.UsacParams()
    q.threshold, q.confidence, q.maxIterations = threshold, 0.999, 100000
    q.score, q.loMethod, q.sampler = cv2.SCORE_METHOD_MAGSAC, cv2.LOCAL_OPTIM_SIGMA, cv2.SAMPLING_UNIFORM
    q.randomGeneratorState = int(seed)
    return q


def magsac_draw_aborted(error: "cv2.error") -> bool:
    """Whether OpenCV's MAGSAC gave up on a draw: its sigma-consensus local optimisation asserts
    when the draw's best model keeps fewer inliers than the optimisation's own sample size (seen on
    a day-night pair for some seeds). Such a draw is a failed fit, not a broken benchmark."""
    return "sample_size <= points_size" in str(error)


def robust_fit(fit, mk0: np.ndarray, mk1: np.ndarray, min_matches: int, threshold: float,
               seed: int) -> np.ndarray | None:
    """A 3x3 model from matches mk0, mk1 [N,2] by `fit` (cv2.findHomography or
    cv2.findFundamentalMat) under MAGSAC, or None: too few matches, no model, or an aborted draw."""
    if len(mk0) < min_matches:
        return None
    try:
        M, _ = fit(mk0.astype(np.float64), mk1.astype(np.float64), magsac_params(threshold, seed))
    except cv2.error as e:
        if not magsac_draw_aborted(e):
            raise
        return None
    return M if M is not None and M.shape == (3, 3) else None


def estimate_homography(mk0: np.ndarray, mk1: np.ndarray, seed: int = 0) -> np.ndarray | None:
    return robust_fit(cv2.findHomography, mk0, mk1, 4, 3.0, seed)


def estimate_fundamental(mk0: np.ndarray, mk1: np.ndarray, seed: int = 0) -> np.ndarray | None:
    return robust_fit(cv2.findFundamentalMat, mk0, mk1, 8, 0.25, seed)


def symmetric_epipolar_distance(F: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Mean of the distances of x1 to the line F x0 and of x0 to F^T x1. x0, x1 [N,2] -> [N]."""
    h0 = np.concatenate([x0, np.ones((len(x0), 1))], 1)
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    l1 = h0 @ F.T   # lines in image 2
    l0 = h1 @ F     # lines in image 1
    num = np.abs((h1 * l1).sum(1))
    d1 = num / np.linalg.norm(l1[:, :2], axis=1).clip(min=1e-12)
    d0 = num / np.linalg.norm(l0[:, :2], axis=1).clip(min=1e-12)
    return (d0 + d1) / 2


def wxbs_accuracy(F: np.ndarray | None, corrs: np.ndarray) -> np.ndarray:
    """Per threshold of WXBS_THRESHOLDS: fraction of GT correspondences within it (zeros without F)."""
    if F is None:
        return np.zeros(len(WXBS_THRESHOLDS))
    d = symmetric_epipolar_distance(F, corrs[:, :2], corrs[:, 2:])
    return np.array([(d <= t).mean() for t in WXBS_THRESHOLDS])


def gt_fundamental(corrs: np.ndarray) -> np.ndarray:
    """F fitted (normalised 8-point, least squares) to all annotated correspondences [N,4]."""
    F, _ = cv2.findFundamentalMat(corrs[:, :2].astype(np.float64), corrs[:, 2:].astype(np.float64), cv2.FM_8POINT)
    return F


def match_precision(errors: np.ndarray) -> tuple[float, int]:
    """(fraction, count) of matches with error <= PRECISION_PX; (0, 0) without matches."""
    good = int((errors <= PRECISION_PX).sum())
    return (good / len(errors) if len(errors) else 0.0), good


def annotated_point_retrieval(describe: Callable[[Path, np.ndarray], np.ndarray], wxbs: list[dict],
                              progress: bool = True) -> dict:
    """Top-1 retrieval of annotated partners against a dense distractor grid (module docstring).
    describe(image_path, points [N,2] original pixels) -> L2-normalised descriptors [D,N].
    Returns {'pairs': {name: {'top1', 'top10', 'median_rank'}}, and 'top1', 'top10', 'median_rank'
    over all points}."""
    from PIL import Image

    out, ranks = {}, []
    for p in tqdm(wxbs, desc="annotated points", unit="pair", leave=False, disable=not progress):
        # Each image is described once, at its annotations and its grid; both directions reuse it.
        points, grids, descs = [p["corrs"][:, :2], p["corrs"][:, 2:]], [], []
        for key, pts in zip(("image0", "image1"), points):
            with Image.open(p[key]) as im:  # the header is enough for the size
                w, h = im.size
            ys, xs = np.mgrid[GRID_STEP_PX // 2:h:GRID_STEP_PX, GRID_STEP_PX // 2:w:GRID_STEP_PX]
            grids.append(np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64))
            descs.append(describe(p[key], np.concatenate([pts, grids[-1]])))
        n, pair_ranks = len(p["corrs"]), []
        for a, b in ((0, 1), (1, 0)):
            q, pos, neg = descs[a][:, :n], descs[b][:, :n], descs[b][:, n:]
            d_pos = 2 - 2 * (q * pos).sum(0)                      # [N]
            d_neg = 2 - 2 * q.T @ neg                             # [N,G]
            far = np.linalg.norm(points[b][:, None] - grids[b][None], axis=2) > EXCLUSION_PX
            pair_ranks.append(((d_neg < d_pos[:, None]) & far).sum(1))  # distractors beating the partner
        pair_ranks = np.concatenate(pair_ranks)
        out[p["name"]] = {"top1": float((pair_ranks == 0).mean()), "top10": float((pair_ranks < 10).mean()),
                          "median_rank": float(np.median(pair_ranks))}
        ranks.append(pair_ranks)
    ranks = np.concatenate(ranks)
    return {"pairs": out, "top1": float((ranks == 0).mean()), "top10": float((ranks < 10).mean()),
            "median_rank": float(np.median(ranks))}


def load_scaled(path: Path, preprocessing: dict, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [1,C,H,W] as `preprocessing` resizes it, and points [N,2] given in original pixels
    moved to that resolution ([1,N,2], pixel-centre convention)."""
    from .extract_features import load_image

    data = load_image(path, preprocessing)
    image = data["image"][None]
    scale = np.array(image.shape[-2:][::-1]) / data["original_size"]
    return image, torch.from_numpy(((points + 0.5) * scale - 0.5).astype(np.float32))[None]


def evd_maa(errors: list[float]) -> float:
    e = np.asarray(errors, np.float64)
    return float(np.mean([(e <= t).mean() for t in EVD_THRESHOLDS])) if len(e) else 0.0


def match_mutual(f0: dict, f1: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual nearest-neighbour matches -> matched keypoints (mk0 [M,2], mk1 [M,2]) and their
    matching scores [M] (higher: more similar descriptors)."""
    if not len(f0["keypoints"]) or not len(f1["keypoints"]):
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
    d0 = torch.from_numpy(np.asarray(f0["descriptors"], np.float32))[None]
    d1 = torch.from_numpy(np.asarray(f1["descriptors"], np.float32))[None]
    pred = match_nearest_neighbor(d0, d1, default_matcher_conf)
    m0, scores = pred["matches0"][0].numpy(), pred["matching_scores0"][0].numpy()
    v = m0 > -1
    return f0["keypoints"][v].astype(np.float64), f1["keypoints"][m0[v]].astype(np.float64), scores[v].astype(np.float64)


CONFIDENT_TOP = 100  # matches: the most similar mutual matches counted by `confident_right`


def confident_right(errors: np.ndarray, scores: np.ndarray, top: int = CONFIDENT_TOP) -> int:
    """Right matches (error <= PRECISION_PX) among the `top` mutual matches of highest score: whether the
    descriptor's own confidence points at the right matches (DISK's does on the day-night pair)."""
    return int((errors[np.argsort(-scores, kind="stable")[:top]] <= PRECISION_PX).sum())


def nn_hub_skew(desc0: np.ndarray, desc1: np.ndarray) -> float:
    """Skewness of the k-occurrence of image 1's descriptors: how many of image 0's descriptors
    [D,N0] take each of image 1's [D,N1] as nearest neighbour. High: a few hubs attract the
    neighbours of unmatchable points, and mutual checking rejects them (DISK on day-night pairs);
    near 0: every point has a partner of its own, and clutter passes the mutual check."""
    if desc0.shape[1] == 0 or desc1.shape[1] < 2:
        return 0.0
    d0 = torch.from_numpy(np.asarray(desc0, np.float32))
    d1 = torch.from_numpy(np.asarray(desc1, np.float32))
    k = torch.bincount((d0.t() @ d1).argmax(1), minlength=d1.shape[1]).double()
    std = k.std(unbiased=False)
    return float(((k - k.mean()) ** 3).mean() / std ** 3) if std > 0 else 0.0


def evaluate(features: Callable[[Path], dict], evd: list[dict], wxbs: list[dict],
             seeds: Sequence[int] = (0,), progress: bool = True,
             on_wxbs_matches: Callable[[dict, np.ndarray, np.ndarray, np.ndarray], None] | None = None) -> dict:
    """Both protocols for a feature function `features(image_path) -> {'keypoints' [N,2] in
    original-image pixels, 'descriptors' [D,N], 'image_size' (w,h)}` (each image computed once).

    The robust fit is repeated with each MAGSAC seed of `seeds` on the same matches: at the
    inlier ratios of hard pairs one RANSAC draw decides pass or fail, so a single seed makes the
    two-pair WxBS figure a lottery. Per pair, 'maa' / 'accuracy' are means over the seeds and
    'error' (EVD) the median; 'evd_maa' / 'wxbs_maa' are means over the seeds of the per-seed
    figures and '*_maa_std' their standard deviation (the estimator's share of the noise).
    on_wxbs_matches(pair, mk0 [M,2], mk1 [M,2], right [M] bool): called with each WxBS pair's mutual
    matches and which of them lie within PRECISION_PX of the annotated epipolar geometry (figures)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("evaluate needs at least one MAGSAC seed.")
    cache: dict[Path, dict] = {}
    out = {"evd": {}, "wxbs": {}, "seeds": seeds}
    for p in tqdm(evd + wxbs, desc="real pairs", unit="pair", leave=False, disable=not progress):
        for k in ("image0", "image1"):
            if p[k] not in cache:
                cache[p[k]] = features(p[k])
        f0, f1 = cache[p["image0"]], cache[p["image1"]]
        mk0, mk1, scores = match_mutual(f0, f1)
        if "H" in p:
            errors = [homography_error(estimate_homography(mk0, mk1, seed), p["H"], tuple(f0["image_size"]),
                                       tuple(f1["image_size"])) for seed in seeds]
            proj = cv2.perspectiveTransform(mk0[None], p["H"])[0] if len(mk0) else mk0
            prec, good = match_precision(np.linalg.norm(proj - mk1, axis=1))
            out["evd"][p["name"]] = {"error": float(np.median(errors)), "errors": errors, "matches": len(mk0),
                                     "precision": prec, "correct": good}
        else:
            acc = np.stack([wxbs_accuracy(estimate_fundamental(mk0, mk1, seed), p["corrs"])
                            for seed in seeds])                        # [S, T]
            epi = symmetric_epipolar_distance(gt_fundamental(p["corrs"]), mk0, mk1)
            prec, good = match_precision(epi)
            if on_wxbs_matches is not None:
                on_wxbs_matches(p, mk0, mk1, epi <= PRECISION_PX)
            out["wxbs"][p["name"]] = {"accuracy": acc.mean(0).tolist(), "maa": float(acc.mean()),
                                      "maa_per_seed": acc.mean(1).tolist(), "matches": len(mk0),
                                      "precision": prec, "correct": good, "confident_right": confident_right(epi, scores),
                                      "hub_skew": nn_hub_skew(f0["descriptors"], f1["descriptors"])}
    evd_per_seed = [evd_maa([v["errors"][i] for v in out["evd"].values()]) for i in range(len(seeds))]
    wxbs_per_seed = [float(np.mean([v["maa_per_seed"][i] for v in out["wxbs"].values()])) if out["wxbs"] else 0.0
                     for i in range(len(seeds))]
    out["evd_maa"], out["evd_maa_std"] = float(np.mean(evd_per_seed)), float(np.std(evd_per_seed))
    out["wxbs_maa"], out["wxbs_maa_std"] = float(np.mean(wxbs_per_seed)), float(np.std(wxbs_per_seed))
    for d in ("evd", "wxbs"):
        for k in ("precision", "correct"):
            out[f"{d}_{k}"] = float(np.mean([v[k] for v in out[d].values()])) if out[d] else 0.0
    out["wxbs_confident_right"] = float(np.mean([v["confident_right"] for v in out["wxbs"].values()])) if out["wxbs"] else 0.0
    out["wxbs_hub_skew"] = float(np.mean([v["hub_skew"] for v in out["wxbs"].values()])) if out["wxbs"] else 0.0
    counts = [v["matches"] for d in ("evd", "wxbs") for v in out[d].values()]
    out["mean_matches"] = float(np.mean(counts)) if counts else 0.0
    return out
