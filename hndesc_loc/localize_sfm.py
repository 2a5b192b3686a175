"""Localize queries against an SfM model: 2D-3D matches through the retrieved database
images, LO-RANSAC + refinement (pycolmap), results in the benchmark's format.

    python -m hndesc_loc.localize_sfm --reference_sfm SFM --queries QUERIES.txt --retrieval PAIRS.txt \
        --features FEATS.h5 --matches MATCHES.h5 --results RESULTS.txt
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap

from . import logger
from .io import (open_h5, parse_image_list_with_intrinsics, parse_retrieval, read_matches, require_path, write_poses,
                 write_text_atomic)
from .utils.base_model import merge_conf
from .utils.cli import Parser, run as run_cli

default_conf = {
    "ransac_thresh": 12.0,       # px, hloc's default for Aachen (InLoc: 48 at full resolution)
    "covisibility_clustering": False,
    "min_num_inliers": 10,       # below: fall back to the top retrieved database pose
    "refine_focal_length": False,
    "seed": 0,                   # RANSAC seed: reproducible numbers
}


class QueryLocalizer:
    """Holds the reference model and the per-image 3D point ids; localizes one query at a time."""

    def __init__(self, reference: pycolmap.Reconstruction, conf: dict):
        self.rec = reference
        self.conf = merge_conf(default_conf, conf or {}, "localize_sfm conf")
        self.name_to_id = {img.name: i for i, img in reference.images.items()}
        self._p3d_ids: dict[int, np.ndarray] = {}

    def point3D_ids(self, image_id: int) -> np.ndarray:
        if image_id not in self._p3d_ids:
            ids = np.array([p.point3D_id if p.has_point3D() else -1 for p in self.rec.images[image_id].points2D], np.int64)
            self._p3d_ids[image_id] = ids
        return self._p3d_ids[image_id]

    def correspondences(self, qname: str, db_names: list[str], fmatch) -> tuple[np.ndarray, np.ndarray, dict]:
        """Query keypoint indices [M] and 3D point ids [M], plus per-db-image counts."""
        kp_idx, p3d, per_db = [], [], {}
        for db_name in db_names:
            if db_name not in self.name_to_id:
                raise KeyError(f"Retrieved image '{db_name}' is not in the reference model.")
            pairs, _ = read_matches(fmatch, qname, db_name)
            ids = self.point3D_ids(self.name_to_id[db_name])
            if len(pairs) and pairs[:, 1].max() >= len(ids):
                raise ValueError(f"Matches of ({qname}, {db_name}) index keypoints beyond the {len(ids)} of the model: "
                                 "the features used for triangulation differ from those used for matching.")
            valid = ids[pairs[:, 1]] > -1 if len(pairs) else np.zeros(0, bool)
            kp_idx.append(pairs[valid, 0])
            p3d.append(ids[pairs[valid, 1]])
            per_db[db_name] = {"matches": int(len(pairs)), "matches_3d": int(valid.sum())}
        return (np.concatenate(kp_idx) if kp_idx else np.zeros(0, int),
                np.concatenate(p3d) if p3d else np.zeros(0, int), per_db)

    def localize(self, camera: pycolmap.Camera, kpts: np.ndarray, kp_idx: np.ndarray, p3d_ids: np.ndarray) -> dict | None:
        if len(kp_idx) < 4:
            return None
        points2D = kpts[kp_idx].astype(np.float64) + 0.5  # COLMAP: origin at the pixel corner
        points3D = np.stack([self.rec.points3D[int(i)].xyz for i in p3d_ids])
        est = pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = self.conf["ransac_thresh"]
        est.ransac.random_seed = self.conf["seed"]
        ref = pycolmap.AbsolutePoseRefinementOptions()
        ref.refine_focal_length = self.conf["refine_focal_length"]
        ref.refine_extra_params = False
        ret = pycolmap.estimate_and_refine_absolute_pose(points2D, points3D, camera, est, ref)
        return ret

    def cluster(self, db_names: list[str]) -> list[list[str]]:
        """Covisibility clusters of the retrieved images (connected through shared 3D points)."""
        ids = [self.name_to_id[n] for n in db_names]
        points = {i: set(self.point3D_ids(i)[self.point3D_ids(i) > -1].tolist()) for i in ids}
        clusters, left = [], list(ids)
        while left:
            stack, comp = [left.pop(0)], []
            while stack:
                i = stack.pop()
                comp.append(i)
                for j in list(left):
                    if points[i] & points[j]:
                        left.remove(j)
                        stack.append(j)
            clusters.append([self.rec.images[i].name for i in comp])
        return clusters

    def run(self, qname: str, camera: pycolmap.Camera, db_names: list[str], ffeat, fmatch) -> dict:
        if qname not in ffeat:
            raise KeyError(f"Query '{qname}' has no features: extract features for the queries.")
        kpts = ffeat[qname]["keypoints"][()].astype(np.float64)
        groups = self.cluster(db_names) if self.conf["covisibility_clustering"] else [db_names]
        best, best_log = None, None
        for group in groups:
            kp_idx, p3d, per_db = self.correspondences(qname, group, fmatch)
            ret = self.localize(camera, kpts, kp_idx, p3d)
            n_in = int(ret["num_inliers"]) if ret is not None else 0
            if best_log is None or n_in > best_log["num_inliers"]:
                best, best_log = ret, {"num_inliers": n_in, "num_correspondences": int(len(kp_idx)), "db": per_db,
                                       "inlier_keypoints": kp_idx[ret["inlier_mask"]].tolist() if ret else [],
                                       "inlier_points3D": p3d[ret["inlier_mask"]].tolist() if ret else []}
        if best is None or best_log["num_inliers"] < self.conf["min_num_inliers"]:
            # Every query gets a pose: hloc falls back to the top retrieved database image.
            pose = cam_from_world_of(self.rec.images[self.name_to_id[db_names[0]]])
            return {"cam_from_world": pose, "success": False, "log": best_log}
        return {"cam_from_world": best["cam_from_world"], "success": True, "log": best_log}


def cam_from_world_of(image) -> pycolmap.Rigid3d:
    pose = image.cam_from_world
    return pose() if callable(pose) else pose


def query_result_name(name: str, prepend_camera_name: bool = False) -> str:
    """visuallocalization.net names: basename (Aachen, InLoc), camera folder + basename
    (RobotCar, 7-Scenes, Cambridge) when prepend_camera_name."""
    parts = name.split("/")
    return "/".join(parts[-2:]) if prepend_camera_name else parts[-1]


def read_progress(path: Path) -> dict[str, dict]:
    """Per-query records of an interrupted run; a truncated last line is not trusted."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[rec["query"]] = rec
    return out


def drop_partial_line(path: Path) -> None:
    """A run killed mid-write leaves a last line without its newline: cut it, so that the next
    record starts on a line of its own."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            write_text_atomic(path, data[: data.rfind(b"\n") + 1].decode())


def to_record(qname: str, out: dict) -> dict:
    pose = out["cam_from_world"]
    return {"query": qname, "quat_xyzw": list(map(float, pose.rotation.quat)),
            "t": list(map(float, pose.translation)), "success": bool(out["success"]), "log": out["log"]}


class LocalizeWorker:
    """The localization step's worker (for any executor): reference model and files opened once."""

    def __init__(self, reference_sfm: Path, features: Path, matches: Path, conf: dict | None):
        self.localizer = QueryLocalizer(pycolmap.Reconstruction(str(require_path(Path(reference_sfm)))), conf)
        self.ffeat, self.fmatch = open_h5(require_path(Path(features))), open_h5(require_path(Path(matches)))

    def process(self, items: list) -> list:
        return [(q, self.localizer.run(q, cam, dbs, self.ffeat, self.fmatch)) for q, cam, dbs in items]

    def close(self):
        self.ffeat.close()
        self.fmatch.close()


def main(reference_sfm: Path, queries: Path, retrieval: Path, features: Path, matches: Path, results: Path,
         conf: dict | None = None, prepend_camera_name: bool = False, executor=None) -> Path:
    """Localize every query; per-query records go to `<results>.partial.jsonl` as they come
    (a killed run resumes from it), the results file is written at the end, atomically."""
    reference_sfm, results = Path(reference_sfm), Path(results)
    if not reference_sfm.is_dir():
        raise FileNotFoundError(f"Reference SfM model {reference_sfm} does not exist: run the triangulation first.")
    query_list = parse_image_list_with_intrinsics(queries)
    retrieval_dict = parse_retrieval(retrieval)
    missing = [q for q, _ in query_list if q not in retrieval_dict]
    if missing:
        raise KeyError(f"{len(missing)} queries have no retrieved images in {retrieval}, e.g. {missing[:5]}.")
    progress = Path(str(results) + ".partial.jsonl")
    done = read_progress(progress)
    todo = [(q, cam, retrieval_dict[q]) for q, cam in query_list if q not in done]
    logger.info("Localizing %d queries (%d done in an earlier run) against %s.", len(todo), len(done), reference_sfm)
    progress.parent.mkdir(parents=True, exist_ok=True)
    drop_partial_line(progress)
    with open(progress, "a") as fp:
        def write(chunk: list):
            for qname, out in chunk:
                fp.write(json.dumps(to_record(qname, out)) + "\n")
            fp.flush()

        if todo:
            from .distributed import LocalExecutor

            (executor or LocalExecutor()).map(LocalizeWorker, (reference_sfm, features, matches, conf), todo,
                                              "localize", write)
    records = read_progress(progress)
    poses = {query_result_name(q, prepend_camera_name): pycolmap.Rigid3d(
        pycolmap.Rotation3d(np.array(records[q]["quat_xyzw"])), np.array(records[q]["t"])) for q, _ in query_list}
    write_poses(results, poses)
    logs = {"conf": merge_conf(default_conf, conf or {}, "localize_sfm conf"), "retrieval": str(retrieval),
            "queries": {q: {"success": records[q]["success"], "retrieved": retrieval_dict[q], **(records[q]["log"] or {})}
                        for q, _ in query_list}}
    write_text_atomic(Path(str(results) + "_logs.json"), json.dumps(logs))
    progress.unlink()
    n_ok = sum(records[q]["success"] for q, _ in query_list)
    logger.info("Localized %d / %d queries; results in %s.", n_ok, len(query_list), results)
    return results


def cli():
    p = Parser(description=__doc__)
    for name in ("reference_sfm", "queries", "retrieval", "features", "matches", "results"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--ransac_thresh", type=float, default=12.0)
    p.add_argument("--covisibility_clustering", action="store_true")
    p.add_argument("--prepend_camera_name", action="store_true")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    a = p.parse_args()
    from .distributed import make_executor

    main(a.reference_sfm, a.queries, a.retrieval, a.features, a.matches, a.results,
         {"ransac_thresh": a.ransac_thresh, "covisibility_clustering": a.covisibility_clustering},
         a.prepend_camera_name, executor=make_executor(a.executor))


if __name__ == "__main__":
    run_cli(cli)
