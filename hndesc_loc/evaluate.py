"""Localization recall against ground-truth poses, as visuallocalization.net reports it.

    python -m hndesc_loc.evaluate --results RESULTS.txt --ground_truth GT.txt
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import read_poses
from .utils.cli import Parser, run as run_cli

THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))  # (m, deg)


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * x * z + 2 * w * y],
        [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
        [2 * x * z - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y]])


def pose_errors(q_est, t_est, q_gt, t_gt) -> tuple[float, float]:
    """Position error (m, between camera centres) and rotation error (deg) of cam_from_world poses."""
    R_est, R_gt = qvec_to_rotmat(np.asarray(q_est)), qvec_to_rotmat(np.asarray(q_gt))
    c_est, c_gt = -R_est.T @ np.asarray(t_est), -R_gt.T @ np.asarray(t_gt)
    cos = np.clip((np.trace(R_est @ R_gt.T) - 1) / 2, -1, 1)
    return float(np.linalg.norm(c_est - c_gt)), float(np.rad2deg(np.arccos(cos)))


def evaluate(results: dict, ground_truth: dict, names: list[str] | None = None) -> dict:
    """Recall at the three thresholds plus median errors; a missing result counts as a failure."""
    names = sorted(ground_truth) if names is None else names
    errs = []
    for n in names:
        if n not in results:
            errs.append((np.inf, np.inf))
        else:
            errs.append(pose_errors(*results[n], *ground_truth[n]))
    errs = np.array(errs).reshape(-1, 2)
    recall = [float(np.mean((errs[:, 0] <= t) & (errs[:, 1] <= r))) if len(errs) else 0.0 for t, r in THRESHOLDS]
    return {"recall": recall, "median_t": float(np.median(errs[:, 0])) if len(errs) else np.inf,
            "median_R": float(np.median(errs[:, 1])) if len(errs) else np.inf, "num": len(names),
            "errors": {n: e.tolist() for n, e in zip(names, errs)}}


def evaluate_conditions(results: dict, ground_truth: dict, queries: list[str],
                        conditions: tuple[str, ...] = ("day", "night")) -> dict:
    """`evaluate` per query condition: queries are Aachen-style names ('query/night/.../IMG.jpg'),
    results and ground truth are keyed by basename (the results format). -> {condition: evaluate(...)}"""
    return {cond: evaluate(results, ground_truth, [q.split("/")[-1] for q in queries if f"/{cond}/" in f"/{q}"])
            for cond in conditions}


def format_recall(recall: list[float]) -> str:
    """visuallocalization.net style: '87.8 / 95.9 / 99.0'."""
    return " / ".join(f"{100 * r:.1f}" for r in recall)


def main(results: Path, ground_truth: Path, names: list[str] | None = None) -> dict:
    out = evaluate(read_poses(results), read_poses(ground_truth), names)
    print(f"(0.25m, 2°) / (0.5m, 5°) / (5m, 10°): {format_recall(out['recall'])}   "
          f"median errors: {out['median_t']:.3f} m, {out['median_R']:.2f}°  ({out['num']} queries)")
    return out


def cli():
    p = Parser(description=__doc__)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--ground_truth", type=Path, required=True)
    a = p.parse_args()
    main(a.results, a.ground_truth)


if __name__ == "__main__":
    run_cli(cli)
