"""InLoc localization with HNDesc: extract (cutouts + queries) -> retrieval (our global
head, or a given pair list such as the benchmark's NetVLAD top-40) -> match -> localize
from the cutouts' scan coordinates.

    python -m pipelines.inloc --dataset datasets/inloc --outputs outputs/inloc
"""
from __future__ import annotations

from pathlib import Path

from hndesc_loc import extract_features, localize_inloc, logger, match_features, pairs_from_retrieval
from hndesc_loc.distributed import make_executor
from hndesc_loc.io import list_images
from hndesc_loc.utils.cli import Parser, run as run_cli

LAYOUT = ["database/cutouts", "database/alignments", "query/iphone7"]


def check_layout(dataset: Path) -> None:
    missing = [p for p in LAYOUT if not (dataset / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"{dataset} does not follow the InLoc layout; missing folders: {missing}. "
                                "See datasets/README.md.")


def run(dataset: Path, outputs: Path, num_loc: int = 40, pairs: Path | None = None, feature_conf: str = "hndesc",
        matcher_conf: str = "NN-ratio", retrieval_conf: str = "hndesc_global", ransac_thresh: float = 48.0,
        executor=None) -> dict:
    dataset, outputs = Path(dataset), Path(outputs)
    check_layout(dataset)
    outputs.mkdir(parents=True, exist_ok=True)
    db_names = list_images(dataset, "database/cutouts")
    if pairs is None:
        query_names = list_images(dataset, "query/iphone7")
    else:
        from hndesc_loc.io import parse_retrieval

        query_names = sorted(parse_retrieval(pairs))
    feature_cfg = extract_features.confs[feature_conf]
    matcher_cfg = match_features.confs[matcher_conf]
    features = extract_features.main(feature_cfg, dataset, outputs, image_list=db_names + query_names, executor=executor)
    if pairs is None:
        global_descriptors = extract_features.main(extract_features.confs[retrieval_conf], dataset, outputs,
                                                   image_list=db_names + query_names, executor=executor)
        pairs = outputs / f"pairs-query-{retrieval_conf}{num_loc}.txt"
        pairs_from_retrieval.main(global_descriptors, pairs, num_loc, query_list=query_names, db_list=db_names)
    matches = match_features.main(matcher_cfg, pairs, features, outputs,
                                  matches=outputs / f"{features.stem}_{matcher_cfg['output']}_{Path(pairs).stem}.h5",
                                  executor=executor)
    results = outputs / f"InLoc_hloc_{feature_conf}+{matcher_conf}_{Path(pairs).stem}.txt"
    localize_inloc.main(dataset, pairs, features, matches, results, {"ransac_thresh": ransac_thresh})
    return {"results": results, "features": features, "matches": matches, "pairs": pairs}


def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--outputs", type=Path, required=True)
    p.add_argument("--num_loc", type=int, default=40)
    p.add_argument("--pairs", type=Path, help="use this pair list (e.g. pairs-query-netvlad40-temporal.txt)")
    p.add_argument("--conf", default="hndesc", choices=extract_features.local_confs(),
                   help="local feature conf")
    p.add_argument("--matcher", default="NN-ratio", choices=list(match_features.confs))
    p.add_argument("--ransac_thresh", type=float, default=48.0)
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    a = p.parse_args(argv)
    out = run(a.dataset, a.outputs, a.num_loc, a.pairs, a.conf, a.matcher, ransac_thresh=a.ransac_thresh,
              executor=make_executor(a.executor))
    logger.info("Results to submit: %s", out["results"])


if __name__ == "__main__":
    run_cli(main)
