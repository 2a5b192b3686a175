"""Aachen Day-Night (v1.0 or v1.1) localization with HNDesc, in hloc's steps:
covisibility pairs -> extract -> match -> triangulate -> global descriptors ->
retrieval -> match -> localize. Writes a results file ready for visuallocalization.net.

    python -m pipelines.aachen --dataset datasets/aachen_v1.1 --outputs outputs/aachen_v1.1
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hndesc_loc import (colmap_from_nvm, extract_features, localize_sfm, logger, match_features,
                        pairs_from_covisibility, pairs_from_retrieval, triangulation)
from hndesc_loc.distributed import make_executor
from hndesc_loc.io import parse_image_list_with_intrinsics, write_text_atomic

LAYOUT = {
    "1.1": ["images_upright/db", "3D-models/aachen_v_1_1", "queries/day_time_queries_with_intrinsics.txt",
            "queries/night_time_queries_with_intrinsics.txt"],
    "1.0": ["images_upright/db", "3D-models/aachen_cvpr2018_db.nvm", "3D-models/database_intrinsics.txt",
            "queries/day_time_queries_with_intrinsics.txt", "queries/night_time_queries_with_intrinsics.txt"],
}


def check_layout(dataset: Path, version: str) -> None:
    missing = [p for p in LAYOUT[version] if not (dataset / p).exists()]
    if missing:
        raise FileNotFoundError(
            f"{dataset} does not follow the Aachen v{version} layout; missing: {missing}. "
            "See datasets/README.md for the expected tree (images_upright/, 3D-models/, queries/).")


def run(dataset: Path, outputs: Path, version: str = "1.1", num_covis: int = 20, num_loc: int = 50,
        feature_conf: str = "hndesc", matcher_conf: str = "NN-ratio", retrieval_conf: str = "hndesc_global",
        executor=None, ransac_thresh: float = 12.0, overrides: dict | None = None) -> dict:
    dataset, outputs = Path(dataset), Path(outputs)
    check_layout(dataset, version)
    outputs.mkdir(parents=True, exist_ok=True)
    images = dataset / "images_upright"
    if version == "1.1":
        reference = dataset / "3D-models" / "aachen_v_1_1"
    else:
        reference = outputs / "sfm_empty"
        if not reference.exists():
            colmap_from_nvm.main(dataset / "3D-models/aachen_cvpr2018_db.nvm",
                                 dataset / "3D-models/database_intrinsics.txt", dataset / "aachen.db", reference)
    query_lists = sorted((dataset / "queries").glob("*_time_queries_with_intrinsics.txt"))
    queries = outputs / "queries_with_intrinsics.txt"
    write_text_atomic(queries, "".join(p.read_text() for p in query_lists))
    query_names = [n for n, _ in parse_image_list_with_intrinsics(queries)]

    feature_cfg = extract_features.parse_overrides(extract_features.confs[feature_conf], (overrides or {}).get("features", []))
    matcher_cfg = match_features.confs[matcher_conf]
    retrieval_cfg = extract_features.confs[retrieval_conf]
    import pycolmap

    db_names = sorted(img.name for img in pycolmap.Reconstruction(str(reference)).images.values())
    sfm_pairs = outputs / f"pairs-db-covis{num_covis}.txt"
    loc_pairs = outputs / f"pairs-query-{retrieval_conf}{num_loc}.txt"
    sfm_dir = outputs / f"sfm_{feature_cfg['output']}+{matcher_cfg['output']}"
    results = outputs / f"Aachen-v{version}_hloc_{feature_conf}+{matcher_conf}_{retrieval_conf}{num_loc}.txt"

    if not sfm_pairs.exists():
        pairs_from_covisibility.main(reference, sfm_pairs, num_matched=num_covis)
    features = extract_features.main(feature_cfg, images, outputs, image_list=db_names + query_names, executor=executor)
    sfm_matches = match_features.main(matcher_cfg, sfm_pairs, features, outputs,
                                      matches=outputs / f"{features.stem}_{matcher_cfg['output']}_{sfm_pairs.stem}.h5",
                                      executor=executor)
    if not sfm_dir.exists():
        triangulation.main(sfm_dir, reference, images, sfm_pairs, features, sfm_matches)
    global_descriptors = extract_features.main(retrieval_cfg, images, outputs, image_list=db_names + query_names,
                                               executor=executor)
    pairs_from_retrieval.main(global_descriptors, loc_pairs, num_loc, query_list=query_names, db_model=reference)
    loc_matches = match_features.main(matcher_cfg, loc_pairs, features, outputs,
                                      matches=outputs / f"{features.stem}_{matcher_cfg['output']}_{loc_pairs.stem}.h5",
                                      executor=executor)
    localize_sfm.main(sfm_dir, queries, loc_pairs, features, loc_matches, results,
                      {"ransac_thresh": ransac_thresh, "covisibility_clustering": False}, executor=executor)
    return {"results": results, "features": features, "loc_matches": loc_matches, "loc_pairs": loc_pairs,
            "sfm_dir": sfm_dir, "queries": queries, "images": images}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--outputs", type=Path, required=True)
    p.add_argument("--version", choices=["1.0", "1.1"], default="1.1")
    p.add_argument("--num_covis", type=int, default=20)
    p.add_argument("--num_loc", type=int, default=50)
    p.add_argument("--conf", default="hndesc", choices=list(extract_features.confs))
    p.add_argument("--matcher", default="NN-ratio", choices=list(match_features.confs))
    p.add_argument("--ransac_thresh", type=float, default=12.0)
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--viz", type=int, default=0, metavar="N", help="write localization figures of N night queries")
    a = p.parse_args(argv)
    out = run(a.dataset, a.outputs, a.version, a.num_covis, a.num_loc, a.conf, a.matcher,
              executor=make_executor(a.executor), ransac_thresh=a.ransac_thresh)
    logger.info("Results to submit: %s", out["results"])
    if a.viz:
        from hndesc_loc.viz import localization_figure

        names = [l.split()[0] for l in out["queries"].read_text().splitlines()]
        night = [n for n in names if "/night/" in n] or names
        for q in night[: a.viz]:
            path = a.outputs / "viz" / (q.replace("/", "-") + ".png")
            if localization_figure(out["results"], out["sfm_dir"], out["features"], out["images"], q, path):
                logger.info("Wrote %s", path)


if __name__ == "__main__":
    main()
