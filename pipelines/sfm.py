"""Reconstruction from scratch with HNDesc features (exhaustive or retrieval pairs), and
the same with COLMAP's own SIFT pipeline for comparison (--compare_sift).

    python -m pipelines.sfm --images ../shared/data/sacre_coeur --outputs outputs/sacre_coeur
"""
from __future__ import annotations

import json
from pathlib import Path

from hndesc_loc import extract_features, match_features, pairs_exhaustive, pairs_from_retrieval, reconstruction
from hndesc_loc.colmap_utils import quiet
from hndesc_loc.io import list_images, write_text_atomic
from hndesc_loc.triangulation import model_statistics
from hndesc_loc.utils.cli import Parser, run as run_cli


def colmap_sift(images: Path, outputs: Path) -> dict:
    """COLMAP's own pipeline, default options (the figure in ../shared/data/README.md)."""
    import shutil

    import pycolmap

    work = outputs / "colmap_sift"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    db = work / "database.db"
    # One thread and fixed seeds: the baseline reproduces exactly (as our own reconstruction).
    extraction, matching = pycolmap.FeatureExtractionOptions(), pycolmap.FeatureMatchingOptions()
    extraction.num_threads = matching.num_threads = 1
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = 0
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.random_seed, mapping.num_threads = 0, 1
    with quiet():
        pycolmap.extract_features(str(db), str(images), extraction_options=extraction, device=pycolmap.Device.cpu)
        pycolmap.match_exhaustive(str(db), matching_options=matching, verification_options=verification,
                                  device=pycolmap.Device.cpu)
        models = pycolmap.incremental_mapping(str(db), str(images), str(work), mapping)
    best = max(models.values(), key=lambda r: r.num_reg_images())
    return model_statistics(best)


def run(images: Path, outputs: Path, conf: str = "hndesc", matcher: str = "NN-mutual", num_retrieval: int | None = None,
        compare_sift: bool = False) -> dict:
    images, outputs = Path(images), Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    names = list_images(images)
    features = extract_features.main(extract_features.confs[conf], images, outputs)
    if num_retrieval:
        g = extract_features.main(extract_features.confs["hndesc_global"], images, outputs)
        pairs = pairs_from_retrieval.main(g, outputs / f"pairs-retrieval{num_retrieval}.txt", num_retrieval)
    else:
        pairs = pairs_exhaustive.main(outputs / "pairs-exhaustive.txt", names)
    matches = match_features.main(match_features.confs[matcher], pairs, features, outputs,
                                  matches=outputs / f"{features.stem}_{matcher}_{pairs.stem}.h5")
    rec = reconstruction.main(outputs / f"sfm_{conf}+{matcher}", images, pairs, features, matches)
    stats = {conf: {**model_statistics(rec), "num_images": len(names)}}
    if compare_sift:
        stats["colmap_sift"] = {**colmap_sift(images, outputs), "num_images": len(names)}
    print(f"\n{'pipeline':16s} {'registered':>10s} {'points':>7s} {'track len':>9s} {'reproj px':>9s}")
    for k, s in stats.items():
        print(f"{k:16s} {s['num_reg_images']:>4d} / {s['num_images']:<3d} {s['num_points3D']:7d} "
              f"{s['mean_track_length']:9.2f} {s['mean_reprojection_error']:9.2f}")
    write_text_atomic(outputs / "sfm_stats.json", json.dumps(stats, indent=2))
    return stats


def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--images", type=Path, required=True, help="folder of images to reconstruct")
    p.add_argument("--outputs", type=Path, required=True, help="folder for features, matches and the model")
    p.add_argument("--conf", default="hndesc", choices=extract_features.local_confs(),
                   help="local feature conf (default: %(default)s)")
    # Mutual NN without ratio test: on sacre_coeur it registers 10/10 images (NN-ratio: 9/10).
    p.add_argument("--matcher", default="NN-mutual", choices=list(match_features.confs),
                   help="matcher conf (default: %(default)s)")
    p.add_argument("--num_retrieval", type=int, help="retrieval pairs (top-k) instead of exhaustive")
    p.add_argument("--compare_sift", action="store_true", help="also run COLMAP's own SIFT pipeline")
    a = p.parse_args(argv)
    run(a.images, a.outputs, a.conf, a.matcher, a.num_retrieval, a.compare_sift)


if __name__ == "__main__":
    run_cli(main)
