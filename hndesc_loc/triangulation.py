"""Triangulate a reference 3D model from known database poses with our features.

    python -m hndesc_loc.triangulation --reference_model REF --sfm_dir OUT --image_dir IMAGES \
        --pairs PAIRS.txt --features FEATS.h5 --matches MATCHES.h5
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .colmap_utils import check_pycolmap, create_db_from_model, quiet
from .io import atomic_path, open_h5, parse_pairs, read_matches, write_pairs
from .match_features import unique_pairs
from .utils.cli import Parser, run as run_cli


def import_features(image_ids: dict[str, int], database_path: Path, features: Path) -> dict[str, int]:
    """Keypoints of the model's images into the COLMAP database; returns their counts."""
    counts = {}
    with open_h5(features) as fd, pycolmap.Database.open(str(database_path)) as db:
        for name, image_id in tqdm(image_ids.items(), desc="import features", unit="img"):
            if name not in fd:
                raise KeyError(f"Image '{name}' of the reference model has no features in {features}: "
                               "extract features for all database images.")
            # hloc files put the origin at the centre of the first pixel, COLMAP at its corner.
            kpts = fd[name]["keypoints"][()].astype(np.float32) + 0.5
            db.write_keypoints(image_id, kpts)
            counts[name] = len(kpts)
    return counts


def import_matches(image_ids: dict[str, int], database_path: Path, pairs: list[tuple[str, str]],
                   matches: Path, min_match_score: float | None = None,
                   num_keypoints: dict[str, int] | None = None) -> list[tuple[str, str]]:
    imported = []
    with open_h5(matches) as fd, pycolmap.Database.open(str(database_path)) as db:
        for name0, name1 in tqdm(pairs, desc="import matches", unit="pair"):
            if name0 not in image_ids or name1 not in image_ids:
                raise KeyError(f"Pair ({name0}, {name1}) names an image that is not in the reference model.")
            counts = (num_keypoints[name0], num_keypoints[name1]) if num_keypoints else None
            m, scores = read_matches(fd, name0, name1, counts)
            if min_match_score is not None:
                m = m[scores > min_match_score]
            id0, id1 = image_ids[name0], image_ids[name1]
            db.write_matches(id0, id1, np.ascontiguousarray(m, np.uint32))
            imported.append((name0, name1))
    return imported


def geometric_verification(database_path: Path, pairs_path: Path, max_error: float = 4.0, verbose: bool = False):
    """Two-view geometry of every pair of `pairs_path`, which must be every pair with matches in
    the database (as `import_matches` writes them)."""
    opts = pycolmap.TwoViewGeometryOptions()
    opts.ransac.max_error = max_error
    opts.ransac.random_seed = 0
    with quiet(verbose):
        if hasattr(pycolmap, "geometric_verification"):
            # pycolmap >= 4: verify the database's matched pairs. Its `verify_matches` (pairs read
            # from a file) crashed the process (SIGSEGV) in a test process that had run the caps
            # network and SuperPoint before, reproducibly, where this entry point on the same
            # database does not.
            pycolmap.geometric_verification(str(database_path), two_view_geometry_options=opts)
        else:
            pycolmap.verify_matches(str(database_path), str(pairs_path), opts)


def model_statistics(rec: pycolmap.Reconstruction) -> dict:
    return {"num_reg_images": rec.num_reg_images(), "num_points3D": rec.num_points3D(),
            "num_observations": rec.compute_num_observations(),
            "mean_track_length": rec.compute_mean_track_length(),
            "mean_observations_per_reg_image": rec.compute_mean_observations_per_reg_image(),
            "mean_reprojection_error": rec.compute_mean_reprojection_error()}


def main(sfm_dir: Path, reference_model: Path, image_dir: Path, pairs: Path, features: Path, matches: Path,
         min_match_score: float | None = None, verbose: bool = False, num_threads: int = 1) -> pycolmap.Reconstruction:
    """Triangulate into `sfm_dir` (written through a temporary folder, renamed when complete).
    `num_threads` 1 (the default) reproduces exactly."""
    check_pycolmap()
    reference_model, sfm_dir = Path(reference_model), Path(sfm_dir)
    if not reference_model.is_dir():
        raise FileNotFoundError(f"Reference model {reference_model} does not exist.")
    reference = pycolmap.Reconstruction(str(reference_model))
    pair_list = unique_pairs(parse_pairs(pairs))
    with atomic_path(sfm_dir) as tmp:
        tmp.mkdir(parents=True)
        database = tmp / "database.db"
        image_ids = create_db_from_model(reference, database)
        counts = import_features(image_ids, database, features)
        imported = import_matches(image_ids, database, pair_list, matches, min_match_score, counts)
        verified_pairs = tmp / "pairs-verification.txt"
        write_pairs(verified_pairs, imported)
        geometric_verification(database, verified_pairs, verbose=verbose)
        opts = pycolmap.IncrementalPipelineOptions()
        opts.random_seed = 0
        opts.num_threads = num_threads
        with quiet(verbose):
            rec = pycolmap.triangulate_points(reference, str(database), str(image_dir), str(tmp),
                                              clear_points=True, options=opts)
            rec.write(str(tmp))
        if sfm_dir.exists():
            shutil.rmtree(sfm_dir)
    stats = model_statistics(rec)
    logger.info("Triangulated model: %s", ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in stats.items()))
    if stats["num_points3D"] == 0:
        raise RuntimeError(f"Triangulation produced no 3D point in {sfm_dir}: check the features, matches and poses.")
    return rec


def cli():
    p = Parser(description=__doc__)
    for name in ("sfm_dir", "reference_model", "image_dir", "pairs", "features", "matches"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    main(a.sfm_dir, a.reference_model, a.image_dir, a.pairs, a.features, a.matches, verbose=a.verbose)


if __name__ == "__main__":
    run_cli(cli)
