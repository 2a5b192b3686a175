"""Image retrieval with the HNDesc global head: revisited Oxford / Paris (mAP, Easy /
Medium / Hard) and Tokyo 24/7 (recall@1/5/10 at 25 m), with optional re-ranking of the
top-k by the number of RANSAC-verified HNDesc matches.

    python -m pipelines.retrieval --dataset roxford5k --data datasets/roxford5k [--rerank 100]
    python -m pipelines.retrieval --dataset tokyo247 --data datasets/tokyo247

Layouts: roxford5k/rparis6k: `jpg/<name>.jpg` and `gnd_r{oxford5k,paris6k}.pkl` (imlist, qimlist,
gnd with bbx/easy/hard/junk; queries are cropped to their box). tokyo247: `tokyo247.mat`
(NetVLAD's dbStruct: dbImageFns, utmDb, qImageFns, utmQ) with the images at those relative paths.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hndesc_loc import extract_features
from hndesc_loc.io import open_h5, read_image, write_text_atomic
from hndesc_loc.matchers import default_matcher_conf, match_nearest_neighbor
from hndesc_loc.pairs_from_retrieval import get_descriptors, search
from hndesc_loc.retrieval_eval import recall_at_n, revisited_map
from hndesc_loc.utils.cli import Parser, run as run_cli


def load_revisited(data: Path, name: str, outputs: Path) -> dict:
    gnd_path = data / f"gnd_{name}.pkl"
    if not gnd_path.is_file() or not (data / "jpg").is_dir():
        raise FileNotFoundError(f"{data} does not follow the revisited {name} layout: need jpg/ and {gnd_path.name}.")
    with open(gnd_path, "rb") as f:
        cfg = pickle.load(f)
    db = [f"jpg/{n}.jpg" for n in cfg["imlist"]]
    # Queries are cropped to their bounding box (the standard protocol): written once under outputs.
    crops = outputs / "query_crops"
    queries = []
    for qn, g in zip(cfg["qimlist"], cfg["gnd"]):
        out = crops / f"{qn}.jpg"
        if not out.exists():
            img = read_image(data / "jpg" / f"{qn}.jpg")
            x1, y1, x2, y2 = [int(round(v)) for v in g["bbx"]]
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), img[max(y1, 0):y2, max(x1, 0):x2, ::-1])
        queries.append(f"{qn}.jpg")
    return {"db_root": data, "db": db, "query_root": crops, "queries": queries, "gnd": cfg["gnd"]}


def load_tokyo(data: Path) -> dict:
    import scipy.io

    path = data / "tokyo247.mat"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: Tokyo 24/7 needs NetVLAD's tokyo247.mat (dbStruct).")
    s = scipy.io.loadmat(str(path))["dbStruct"][0, 0]
    fns = lambda key: [str(np.asarray(x).ravel()[0]) for x in np.asarray(s[key]).ravel()]
    return {"db_root": data, "db": fns("dbImageFns"), "query_root": data, "queries": fns("qImageFns"),
            "utm_db": np.asarray(s["utmDb"], float).T, "utm_q": np.asarray(s["utmQ"], float).T}


def verified_matches(fd_q, fd_db, q: str, db: str) -> int:
    """Number of fundamental-matrix RANSAC inliers among mutual-NN + ratio matches."""
    k0, k1 = fd_q[q]["keypoints"][()], fd_db[db]["keypoints"][()]
    d0 = fd_q[q]["descriptors"][()].astype(np.float32)
    d1 = fd_db[db]["descriptors"][()].astype(np.float32)
    import torch

    m = match_nearest_neighbor(torch.from_numpy(d0)[None], torch.from_numpy(d1)[None],
                               {**default_matcher_conf, "ratio_threshold": 0.9})["matches0"][0].numpy()
    valid = m > -1
    if valid.sum() < 8:
        return int(valid.sum()) // 4
    _, mask = cv2.findFundamentalMat(k0[valid].astype(np.float64), k1[m[valid]].astype(np.float64),
                                     cv2.USAC_MAGSAC, 3.0, 0.999, 2000)
    return int(mask.sum()) if mask is not None else 0


def run(dataset: str, data: Path, outputs: Path, global_conf: str = "hndesc_global", local_conf: str = "hndesc",
        rerank: int = 0) -> dict:
    data, outputs = Path(data), Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    ds = load_tokyo(data) if dataset == "tokyo247" else load_revisited(data, dataset, outputs)
    gconf = extract_features.confs[global_conf]
    g_db = extract_features.main(gconf, ds["db_root"], feature_path=outputs / f"{gconf['output']}_db.h5", image_list=ds["db"])
    g_q = extract_features.main(gconf, ds["query_root"], feature_path=outputs / f"{gconf['output']}_q.h5",
                                image_list=ds["queries"])
    qd, dd = get_descriptors([g_q], ds["queries"]), get_descriptors([g_db], ds["db"])
    _, rankings = search(qd, dd, len(ds["db"]))
    metrics = {}

    def evaluate(tag, ranks):
        if dataset == "tokyo247":
            metrics[tag] = {f"R@{n}": v for n, v in recall_at_n(ranks, ds["utm_db"], ds["utm_q"]).items()}
        else:
            metrics[tag] = revisited_map(ranks, ds["gnd"])

    evaluate("global", rankings)
    if rerank:
        lconf = extract_features.confs[local_conf]
        top = sorted({int(i) for r in rankings[:, :rerank] for i in r})
        l_db = extract_features.main(lconf, ds["db_root"], feature_path=outputs / f"{lconf['output']}_db.h5",
                                     image_list=[ds["db"][i] for i in top])
        l_q = extract_features.main(lconf, ds["query_root"], feature_path=outputs / f"{lconf['output']}_q.h5",
                                    image_list=ds["queries"])
        reranked = rankings.copy()
        with open_h5(l_q) as fq, open_h5(l_db) as fdb:
            for i, q in enumerate(tqdm(ds["queries"], desc="re-rank", unit="query")):
                cand = rankings[i, :rerank]
                scores = np.array([verified_matches(fq, fdb, q, ds["db"][j]) for j in cand])
                reranked[i, :rerank] = cand[np.argsort(-scores, kind="stable")]
        evaluate(f"global+rerank{rerank}", reranked)
    for tag, m in metrics.items():
        print(f"{dataset} {tag}: " + "  ".join(f"{k} {100 * v:.1f}" for k, v in m.items()))
    write_text_atomic(outputs / f"retrieval_{dataset}.json", json.dumps(metrics, indent=2))
    return metrics


def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--dataset", required=True, choices=["roxford5k", "rparis6k", "tokyo247"])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--outputs", type=Path, default=Path("outputs/retrieval"))
    p.add_argument("--conf", default="hndesc_global", choices=extract_features.global_confs(),
                   help="global descriptor conf")
    p.add_argument("--rerank", type=int, default=0, help="re-rank the top-k by verified local matches")
    a = p.parse_args(argv)
    run(a.dataset, a.data, a.outputs, a.conf, rerank=a.rerank)


if __name__ == "__main__":
    run_cli(main)
