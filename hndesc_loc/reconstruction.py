"""Structure-from-motion from scratch with our features: COLMAP database from the
images, our keypoints and matches, geometric verification, incremental mapping.

    python -m hndesc_loc.reconstruction --sfm_dir OUT --image_dir IMAGES --pairs PAIRS.txt \
        --features FEATS.h5 --matches MATCHES.h5
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pycolmap

from . import logger
from .colmap_utils import check_pycolmap, quiet
from .io import atomic_path, parse_pairs, write_pairs
from .match_features import unique_pairs
from .triangulation import geometric_verification, import_features, import_matches, model_statistics
from .utils.cli import Parser, run as run_cli


def main(sfm_dir: Path, image_dir: Path, pairs: Path, features: Path, matches: Path,
         camera_mode: str = "AUTO", image_list: list[str] | None = None, verbose: bool = False,
         min_match_score: float | None = None, num_threads: int = 1) -> pycolmap.Reconstruction:
    """Largest reconstructed model, written to `sfm_dir` (through a temporary folder).
    `num_threads` 1 (the default) reproduces exactly; more threads are faster but the
    mapper's order of operations, hence the model, can change from run to run."""
    check_pycolmap()
    sfm_dir = Path(sfm_dir)
    with atomic_path(sfm_dir) as tmp:
        tmp.mkdir(parents=True)
        database = tmp / "database.db"
        pycolmap.Database.open(str(database)).close()  # creates the empty database
        with quiet(verbose):
            pycolmap.import_images(str(database), str(image_dir), pycolmap.CameraMode.__members__[camera_mode],
                                   image_names=image_list or [])
        with pycolmap.Database.open(str(database)) as db:
            image_ids = {img.name: img.image_id for img in db.read_all_images()}
        if not image_ids:
            raise ValueError(f"No image of {image_dir} could be imported into COLMAP.")
        counts = import_features(image_ids, database, features)
        imported = import_matches(image_ids, database, unique_pairs(parse_pairs(pairs)), matches, min_match_score, counts)
        write_pairs(tmp / "pairs-verification.txt", imported)
        geometric_verification(database, tmp / "pairs-verification.txt", verbose=verbose)
        opts = pycolmap.IncrementalPipelineOptions()
        opts.random_seed = 0
        opts.num_threads = num_threads
        with quiet(verbose):
            models = pycolmap.incremental_mapping(str(database), str(image_dir), str(tmp / "models"), opts)
        if not models:
            raise RuntimeError("Incremental mapping reconstructed no model: too few verified matches.")
        best = max(models, key=lambda i: models[i].num_reg_images())
        rec = models[best]
        rec.write(str(tmp))
        shutil.rmtree(tmp / "models")
        if sfm_dir.exists():
            shutil.rmtree(sfm_dir)
    stats = model_statistics(rec)
    logger.info("Reconstruction (%d models, largest kept): %s", len(models),
                ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    return rec


def cli():
    p = Parser(description=__doc__)
    for name in ("sfm_dir", "image_dir", "pairs", "features", "matches"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--camera_mode", default="AUTO", choices=["AUTO", "SINGLE", "PER_FOLDER", "PER_IMAGE"],
                   help="COLMAP camera sharing (default: %(default)s)")
    p.add_argument("--num_threads", type=int, default=1,
                   help="mapper threads; 1 reproduces exactly, -1 uses all cores (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's log")
    a = p.parse_args()
    main(a.sfm_dir, a.image_dir, a.pairs, a.features, a.matches, a.camera_mode, verbose=a.verbose,
         num_threads=a.num_threads)


if __name__ == "__main__":
    run_cli(cli)
