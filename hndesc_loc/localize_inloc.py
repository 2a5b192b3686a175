"""Localize InLoc queries: 3D points come from the database cutouts' per-pixel scan
coordinates (`XYZcut` in the `.mat` beside each cutout), aligned with the scan
transformation files; no SfM model.

    python -m hndesc_loc.localize_inloc --dataset INLOC --retrieval PAIRS.txt --features FEATS.h5 \
        --matches MATCHES.h5 --results RESULTS.txt
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .io import open_h5, parse_retrieval, read_matches, write_poses, write_text_atomic
from .utils.base_model import merge_conf
from .localize_sfm import query_result_name
from .utils.cli import Parser, run as run_cli

default_conf = {
    "ransac_thresh": 48.0,     # px at full resolution (hloc's InLoc setting)
    "min_db_matches": 20,      # database images with fewer matches are skipped
    "focal_factor": 28 / 36,   # focal = image width * 28/36 (iPhone 7: 4032 * 28 / 36)
    "seed": 0,
}


def interpolate_scan(xyz: np.ndarray, kpts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """XYZ [H,W,3] at keypoints [N,2] (pixel-centre origin): bilinear, nearest where the
    bilinear value is NaN, dropped if still NaN. Returns (points [M,3], valid [N])."""
    h, w = xyz.shape[:2]
    x = np.clip(kpts[:, 0], 0, w - 1)
    y = np.clip(kpts[:, 1], 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    bil = (xyz[y0, x0] * (1 - ax) * (1 - ay) + xyz[y0, x1] * ax * (1 - ay)
           + xyz[y1, x0] * (1 - ax) * ay + xyz[y1, x1] * ax * ay)
    nearest = xyz[np.round(y).astype(int), np.round(x).astype(int)]
    out = np.where(np.isnan(bil).any(1, keepdims=True), nearest, bil)
    valid = ~np.isnan(out).any(1)
    return out[valid], valid


def scan_alignment(dataset: Path, cutout: str) -> np.ndarray:
    """4x4 transform of a cutout's scan: alignments/{floor}/transformations/{building}_trans_{scan}.txt,
    lines 7-10 (0-based)."""
    parts = cutout.split("/")
    floor, scan, image = parts[-3], parts[-2], parts[-1]
    path = dataset / "database" / "alignments" / floor / "transformations" / f"{image[:3]}_trans_{scan}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"Scan alignment {path} for {cutout} does not exist (InLoc layout).")
    lines = path.read_text().splitlines()
    try:
        return np.array([np.array(lines[i].split(), float) for i in range(7, 11)])
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: lines 7-10 must hold the 4x4 transformation ({e}).") from e


@lru_cache(maxsize=64)
def load_cutout_xyz(path: str) -> np.ndarray:
    import scipy.io

    mat = Path(path + ".mat")
    if not mat.is_file():
        raise FileNotFoundError(f"{mat} does not exist: every InLoc cutout needs its .mat with XYZcut.")
    return scipy.io.loadmat(str(mat))["XYZcut"].astype(np.float64)


def query_camera(dataset: Path, qname: str, focal_factor: float) -> pycolmap.Camera:
    img = cv2.imread(str(dataset / qname), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f"Query image {dataset / qname} is missing or unreadable.")
    h, w = img.shape[:2]
    return pycolmap.Camera(model="SIMPLE_PINHOLE", width=w, height=h, params=[w * focal_factor, w / 2, h / 2])


def localize_query(dataset: Path, qname: str, db_names: list[str], ffeat, fmatch, conf: dict) -> dict:
    kpq = ffeat[qname]["keypoints"][()].astype(np.float64)
    pts2d, pts3d, per_db = [], [], {}
    for db in db_names:
        pairs, _ = read_matches(fmatch, qname, db)
        per_db[db] = {"matches": int(len(pairs))}
        if len(pairs) < conf["min_db_matches"]:
            continue
        kpr = ffeat[db]["keypoints"][()].astype(np.float64)[pairs[:, 1]]
        xyz, valid = interpolate_scan(load_cutout_xyz(str(dataset / db)), kpr)
        T = scan_alignment(dataset, db)
        xyz = xyz @ T[:3, :3].T + T[:3, 3]
        pts2d.append(kpq[pairs[valid, 0]])
        pts3d.append(xyz)
        per_db[db]["matches_3d"] = int(valid.sum())
    camera = query_camera(dataset, qname, conf["focal_factor"])
    log = {"db": per_db, "num_inliers": 0}
    if pts2d and sum(len(p) for p in pts2d) >= 4:
        p2, p3 = np.concatenate(pts2d) + 0.5, np.concatenate(pts3d)
        est = pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = conf["ransac_thresh"]
        est.ransac.random_seed = conf["seed"]
        ret = pycolmap.estimate_and_refine_absolute_pose(p2, p3, camera, est)
        if ret is not None:
            log.update(num_inliers=int(ret["num_inliers"]), num_correspondences=int(len(p2)))
            return {"cam_from_world": ret["cam_from_world"], "success": True, "log": log}
    return {"cam_from_world": None, "success": False, "log": log}


def main(dataset: Path, retrieval: Path, features: Path, matches: Path, results: Path, conf: dict | None = None) -> Path:
    dataset = Path(dataset)
    conf = merge_conf(default_conf, conf or {}, "localize_inloc conf")
    retrieval_dict = parse_retrieval(retrieval)
    poses, logs = {}, {}
    with open_h5(features) as ffeat, open_h5(matches) as fmatch:
        for q in [q for q in retrieval_dict if q not in ffeat]:
            raise KeyError(f"Query '{q}' has no features in {features}.")
        for qname, db_names in tqdm(retrieval_dict.items(), desc="localize", unit="query"):
            out = localize_query(dataset, qname, db_names, ffeat, fmatch, conf)
            if out["cam_from_world"] is None:
                # Every query gets a line: identity pose when nothing could be estimated
                # (InLoc cutouts carry no camera pose to fall back on).
                out["cam_from_world"] = pycolmap.Rigid3d()
            poses[query_result_name(qname)] = out["cam_from_world"]
            logs[qname] = {"success": out["success"], "retrieved": db_names, **out["log"]}
    write_poses(Path(results), poses)
    write_text_atomic(Path(str(results) + "_logs.json"), json.dumps({"conf": conf, "queries": logs}))
    logger.info("Localized %d / %d queries; results in %s.", sum(v["success"] for v in logs.values()), len(logs), results)
    return Path(results)


def cli():
    p = Parser(description=__doc__)
    for name in ("dataset", "retrieval", "features", "matches", "results"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--ransac_thresh", type=float, default=48.0)
    a = p.parse_args()
    main(a.dataset, a.retrieval, a.features, a.matches, a.results, {"ransac_thresh": a.ransac_thresh})


if __name__ == "__main__":
    run_cli(cli)
