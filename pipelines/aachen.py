"""Aachen Day-Night (v1.0 or v1.1) localization with HNDesc, in hloc's steps:
covisibility pairs -> extract -> match -> triangulate -> global descriptors ->
retrieval -> match -> localize. Writes a results file ready for visuallocalization.net.

    python -m pipelines.aachen --dataset datasets/aachen_v1.1 --outputs outputs/aachen_v1.1
"""
from __future__ import annotations

from pathlib import Path

from hndesc_loc import (colmap_from_nvm, extract_features, localize_sfm, logger, match_features,
                        pairs_from_covisibility, pairs_from_retrieval, triangulation)
from hndesc_loc.distributed import make_executor
from hndesc_loc.io import parse_image_list_with_intrinsics, write_text_atomic
from hndesc_loc.utils.cli import Parser, run as run_cli

LAYOUT = {
    "1.1": ["images_upright/db", "3D-models/aachen_v_1_1", "queries/day_time_queries_with_intrinsics.txt",
            "queries/night_time_queries_with_intrinsics.txt"],
    "1.0": ["images_upright/db", "3D-models/aachen_cvpr2018_db.nvm", "3D-models/database_intrinsics.txt",
            "queries/day_time_queries_with_intrinsics.txt", "queries/night_time_queries_with_intrinsics.txt"],
}


# Matcher and retrieval depth per feature conf when the user names none: the paper's
# configuration matches by mutual NN without a threshold (imelekhov/HNDesc
# experiments/configs/matcher/knn.yaml) and localizes against the top 20 retrieved images
# (localization_aachen_v11.yaml: image_pairs_day_night_aachen_v11_top20.txt).
PIPELINE_DEFAULTS = {"hndesc_paper": {"matcher": "NN-mutual", "num_loc": 20}}
GENERIC_DEFAULTS = {"matcher": "NN-ratio", "num_loc": 50}


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

    feature_cfg = extract_features.conf_with_overrides(extract_features.confs[feature_conf],
                                                       (overrides or {}).get("features", []))
    matcher_cfg = match_features.confs[matcher_conf]
    retrieval_cfg = extract_features.confs[retrieval_conf]
    import pycolmap

    db_names = sorted(img.name for img in pycolmap.Reconstruction(str(reference)).images.values())
    sfm_pairs = outputs / f"pairs-db-covis{num_covis}.txt"
    loc_pairs = outputs / f"pairs-query-{retrieval_conf}{num_loc}.txt"
    sfm_dir = outputs / f"sfm_{feature_cfg['output']}+{matcher_cfg['output']}_covis{num_covis}"
    changed = feature_cfg["output"][len(extract_features.confs[feature_conf]["output"]):]  # '-<hash>' when overridden
    results = outputs / f"Aachen-v{version}_hloc_{feature_conf}{changed}+{matcher_conf}_{retrieval_conf}{num_loc}.txt"

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
    p = Parser(description=__doc__)
    p.add_argument("--dataset", type=Path, required=True, help="Aachen root (images_upright/, 3D-models/, queries/)")
    p.add_argument("--outputs", type=Path, required=True, help="folder for features, matches, models and results")
    p.add_argument("--version", choices=["1.0", "1.1"], default="1.1", help="Aachen version (default: %(default)s)")
    p.add_argument("--num_covis", type=int, default=20, help="covisible db images per db image (default: %(default)s)")
    p.add_argument("--num_loc", type=int, default=None,
                   help=f"retrieved db images per query (default: {GENERIC_DEFAULTS['num_loc']}; 20 for hndesc_paper)")
    p.add_argument("--conf", default="hndesc", choices=extract_features.local_confs(),
                   help="local feature conf (default: %(default)s)")
    p.add_argument("--matcher", default=None, choices=list(match_features.confs),
                   help=f"matcher conf (default: {GENERIC_DEFAULTS['matcher']}; NN-mutual for hndesc_paper)")
    p.add_argument("--ransac_thresh", type=float, default=12.0, help="PnP RANSAC threshold in px (default: %(default)s)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="where heavy steps run (default: %(default)s)")
    p.add_argument("--viz", type=int, default=0, metavar="N", help="write localization figures of N night queries")
    p.add_argument("overrides", nargs="*", help="feature conf overrides, e.g. model.weights=/path/hndesc_caps_MP_st.pth")
    a = p.parse_args(argv)
    defaults = {**GENERIC_DEFAULTS, **PIPELINE_DEFAULTS.get(a.conf, {})}
    out = run(a.dataset, a.outputs, a.version, a.num_covis, a.num_loc or defaults["num_loc"], a.conf,
              a.matcher or defaults["matcher"], executor=make_executor(a.executor), ransac_thresh=a.ransac_thresh,
              overrides={"features": a.overrides})
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
    run_cli(main)
