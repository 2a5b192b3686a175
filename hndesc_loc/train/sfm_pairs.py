"""Real image pairs for training: the correspondences of a structure-from-motion model of the
training photos. Every 3D point observed in two images gives a correspondence between them;
nothing is annotated (COLMAP's own SIFT pipeline, through pycolmap, makes the model).

Why: synthetic pairs (one photo, a homography, a photometric change) never show what separates
two real photos of a place: another camera, viewpoint and parallax, another day. The model's
pairs add that, as the paper's epipolar variant draws its pairs from MegaDepth's SfM models.

    python -m hndesc_loc.train.sfm_pairs --image_dir ../shared/data/sacre_coeur \
        --output datasets/sfm_pairs/sacre_coeur.h5

The file (`io.write_sfm_pairs`) records the image folder as given, the model's statistics and
the conf; `data.sfm_pairs` of a training config lists such files.
"""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pycolmap

from .. import logger
from ..colmap_utils import check_pycolmap, quiet
from ..io import list_images, write_sfm_pairs
from ..triangulation import model_statistics
from ..utils.base_model import merge_conf
from ..utils.cli import Parser, run as run_cli

default_conf = {
    "min_shared": 20,                # pairs with fewer shared 3D points are left out
    "max_reprojection_error": 1.5,   # px: 3D points with a larger mean reprojection error are left out
    "num_threads": 1,                # COLMAP threads; 1 reproduces exactly
}


def reconstruct_sift(image_dir: Path, work_dir: Path, num_threads: int = 1,
                     verbose: bool = False) -> pycolmap.Reconstruction:
    """COLMAP's SIFT pipeline (extraction, exhaustive matching, incremental mapping) on the images
    of `image_dir`; the model with the most registered images."""
    check_pycolmap()
    database = Path(work_dir) / "database.db"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.random_seed, mapping.num_threads = 0, num_threads
    with quiet(verbose):
        pycolmap.extract_features(str(database), str(image_dir), extraction_options=extraction)
        pycolmap.match_exhaustive(str(database), matching_options=matching)
        models = pycolmap.incremental_mapping(str(database), str(image_dir), str(Path(work_dir) / "models"), mapping)
    if not models:
        raise RuntimeError(f"COLMAP reconstructed no model of {image_dir}: the photos share too little (they "
                           "must show the same scene from overlapping views).")
    return max(models.values(), key=lambda r: r.num_reg_images())


def pair_correspondences(rec: pycolmap.Reconstruction, min_shared: int = 20,
                         max_reprojection_error: float = 1.5) -> dict[tuple[str, str], np.ndarray]:
    """{(name0, name1): [N,4] float32 (x0, y0, x1, y1)} for the image pairs sharing at least
    `min_shared` 3D points (names sorted within a pair). Pixel coordinates follow this project's
    convention (the centre of the top-left pixel is (0, 0)); COLMAP's is shifted by half a pixel."""
    names = {i: img.name for i, img in rec.images.items()}
    xy = {i: np.array([p.xy for p in img.points2D], np.float64).reshape(-1, 2) - 0.5 for i, img in rec.images.items()}
    found: dict[tuple[str, str], list] = {}
    for point in rec.points3D.values():
        if point.error > max_reprojection_error:
            continue
        # One observation per image (a track may hold two in one image: ambiguous, skipped).
        obs: dict[int, int] = {}
        for el in point.track.elements:
            obs[el.image_id] = -1 if el.image_id in obs else el.point2D_idx
        obs = {i: k for i, k in obs.items() if k >= 0}
        for a, b in itertools.combinations(sorted(obs, key=lambda i: names[i]), 2):
            found.setdefault((names[a], names[b]), []).append(np.concatenate([xy[a][obs[a]], xy[b][obs[b]]]))
    return {k: np.array(v, np.float32) for k, v in sorted(found.items()) if len(v) >= min_shared}


def main(image_dir: Path, output: Path, conf: dict | None = None, verbose: bool = False) -> dict:
    """Reconstruct `image_dir` and write its pair correspondences to `output`; returns the pairs."""
    conf = merge_conf(default_conf, conf or {}, "sfm_pairs conf")
    if conf["min_shared"] < 1 or conf["max_reprojection_error"] <= 0:
        raise ValueError("min_shared must be >= 1 and max_reprojection_error > 0.")
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"Image folder {image_dir} does not exist: pass the folder of the training photos.")
    num_images = len(list_images(image_dir))
    if num_images < 2:
        raise ValueError(f"{image_dir} holds fewer than 2 images: a reconstruction needs overlapping photos.")
    with tempfile.TemporaryDirectory() as work:
        logger.info("Reconstructing %s with COLMAP's SIFT pipeline.", image_dir)
        rec = reconstruct_sift(image_dir, Path(work), conf["num_threads"], verbose)
        stats = model_statistics(rec)
        pairs = pair_correspondences(rec, conf["min_shared"], conf["max_reprojection_error"])
    if not pairs:
        raise RuntimeError(f"No pair of {image_dir} shares {conf['min_shared']} 3D points: lower min_shared or "
                           "add overlapping photos.")
    # Sizes as COLMAP read the images: a reader that loads them otherwise (another orientation) is caught.
    sizes = {img.name: [rec.cameras[img.camera_id].width, rec.cameras[img.camera_id].height]
             for img in rec.images.values()}
    record = {"image_dir": str(image_dir), "conf": conf, "model": stats, "pycolmap": pycolmap.__version__,
              "images": num_images, "image_sizes": sizes}
    write_sfm_pairs(Path(output), pairs, record)
    logger.info("%d registered of %d images, %d pairs, %d correspondences: wrote %s.", stats["num_reg_images"],
                record["images"], len(pairs), sum(len(v) for v in pairs.values()), output)
    return pairs


def cli(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--image_dir", type=Path, required=True,
                   help="folder of training photos of one scene (the path is recorded as given: keep it relative "
                        "to the project root, as training configs name their folders)")
    p.add_argument("--output", type=Path, required=True, help="correspondence file to write (.h5)")
    p.add_argument("--min_shared", type=int, default=default_conf["min_shared"],
                   help="leave out pairs sharing fewer 3D points")
    p.add_argument("--max_reprojection_error", type=float, default=default_conf["max_reprojection_error"],
                   help="leave out 3D points with a larger mean reprojection error (px)")
    p.add_argument("--num_threads", type=int, default=default_conf["num_threads"])
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    main(a.image_dir, a.output, {"min_shared": a.min_shared, "max_reprojection_error": a.max_reprojection_error,
                                 "num_threads": a.num_threads}, a.verbose)


if __name__ == "__main__":
    run_cli(cli)
