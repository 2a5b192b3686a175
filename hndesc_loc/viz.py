"""Figures: side-by-side matches (inliers green, outliers red), keypoint overlays,
and the localization view (query with its inlier 2D-3D matches through a database image)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def side_by_side(img0: np.ndarray, img1: np.ndarray, pad: int = 10) -> tuple[np.ndarray, int]:
    h = max(img0.shape[0], img1.shape[0])
    canvas = np.full((h, img0.shape[1] + pad + img1.shape[1], 3), 255, np.uint8)
    canvas[: img0.shape[0], : img0.shape[1]] = img0
    canvas[: img1.shape[0], img0.shape[1] + pad:] = img1
    return canvas, img0.shape[1] + pad


def plot_matches(img0: np.ndarray, img1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray, path: Path,
                 inliers: np.ndarray | None = None, title: str = "", max_lines: int = 400, seed: int = 0):
    """kp0, kp1 [M,2] matched keypoints (pixel-centre origin); inliers [M] bool (None: all)."""
    plt = _plt()
    canvas, off = side_by_side(img0, img1)
    fig, ax = plt.subplots(figsize=(12, 12 * canvas.shape[0] / canvas.shape[1] + 0.6))
    ax.imshow(canvas)
    inliers = np.ones(len(kp0), bool) if inliers is None else np.asarray(inliers, bool)
    idx = np.arange(len(kp0))
    if len(idx) > max_lines:
        idx = np.random.default_rng(seed).choice(idx, max_lines, replace=False)
    idx = idx[np.argsort(inliers[idx], kind="stable")]  # inliers drawn last: outliers would hide them
    for i in idx:
        good = inliers[i]
        ax.plot([kp0[i, 0], kp1[i, 0] + off], [kp0[i, 1], kp1[i, 1]], color="lime" if good else "red",
                lw=0.8 if good else 0.4, alpha=0.9 if good else 0.5)
    ax.scatter(kp0[idx, 0], kp0[idx, 1], s=3, c=np.where(inliers[idx], "lime", "red"))
    ax.scatter(kp1[idx, 0] + off, kp1[idx, 1], s=3, c=np.where(inliers[idx], "lime", "red"))
    ax.set_title(title or f"{int(inliers.sum())} inliers / {len(kp0)} matches", fontsize=10)
    ax.axis("off")
    _save(fig, path)


def plot_keypoints(image: np.ndarray, kpts: np.ndarray, path: Path, title: str = ""):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 8 * image.shape[0] / image.shape[1] + 0.5))
    ax.imshow(image)
    ax.scatter(kpts[:, 0], kpts[:, 1], s=2, c="lime")
    ax.set_title(title or f"{len(kpts)} keypoints", fontsize=10)
    ax.axis("off")
    _save(fig, path)


def plot_detection(images: list[np.ndarray], maps: list[dict], keypoints: list[np.ndarray], path: Path,
                   titles: list[str]):
    """Per row: the image with its keypoints, the repeatability map and the reliability map
    (maps: {'repeatability', 'reliability'} [H,W] in [0,1])."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(12, 4 * n * images[0].shape[0] / images[0].shape[1] + 0.5), squeeze=False)
    for row, (img, m, kp, t) in enumerate(zip(images, maps, keypoints, titles)):
        axes[row, 0].imshow(img)
        axes[row, 0].scatter(kp[:, 0], kp[:, 1], s=1.5, c="lime")
        axes[row, 0].set_title(f"{t}: {len(kp)} keypoints", fontsize=9)
        for col, key in ((1, "repeatability"), (2, "reliability")):
            axes[row, col].imshow(m[key], vmin=0, vmax=1, cmap="magma")
            axes[row, col].set_title(key, fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    _save(fig, path)


def plot_localization(query_image: np.ndarray, db_image: np.ndarray, kp_query: np.ndarray, kp_db: np.ndarray,
                      path: Path, title: str):
    """The query (left) with its inlier 2D-3D matches, drawn through the database image
    (right) that observes the same 3D points."""
    plot_matches(query_image, db_image, kp_query, kp_db, path, None, title)


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, xlabel: str, ylabel: str, title: str = ""):
    """One line per method, e.g. MMA against the pixel threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def _save(fig, path: Path):
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def localization_figure(results: Path, sfm_dir: Path, features: Path, image_dir: Path, query: str, path: Path) -> bool:
    """From a localize_sfm run: the query (left) and the retrieved database image sharing most
    inlier 3D points (right), with those inlier matches. False if the query has no inliers."""
    import json

    import pycolmap

    from .io import open_h5, read_image

    logs = json.loads(Path(str(results) + "_logs.json").read_text())["queries"][query]
    if not logs.get("inlier_points3D"):
        return False
    rec = pycolmap.Reconstruction(str(sfm_dir))
    best = None
    for db_name in logs["retrieved"]:
        image = rec.find_image_with_name(db_name)
        p3d_to_kp = {p.point3D_id: i for i, p in enumerate(image.points2D) if p.has_point3D()}
        hits = [(q, p3d_to_kp[p]) for q, p in zip(logs["inlier_keypoints"], logs["inlier_points3D"]) if p in p3d_to_kp]
        if best is None or len(hits) > len(best[1]):
            best = (db_name, hits)
    db_name, hits = best
    with open_h5(features) as fd:
        kq, kdb = fd[query]["keypoints"][()], fd[db_name]["keypoints"][()]
    hits = np.array(hits, int).reshape(-1, 2)
    plot_localization(read_image(Path(image_dir) / query), read_image(Path(image_dir) / db_name),
                      kq[hits[:, 0]], kdb[hits[:, 1]], path,
                      f"{query}: {logs['num_inliers']} PnP inliers; {len(hits)} drawn through {db_name}")
    return True
