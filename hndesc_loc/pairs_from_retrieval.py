"""Top-k database images per query from global descriptors (faiss inner product).

    python -m hndesc_loc.pairs_from_retrieval --descriptors GLOBAL.h5 --output PAIRS.txt --num_matched 50 \
        --query_prefix query --db_prefix db
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import logger
from .io import list_h5_names, open_h5, write_pairs
from .utils.cli import Parser, run as run_cli


def parse_names(prefix, names, names_all: list[str]) -> list[str]:
    if names is not None:
        if isinstance(names, (str, Path)):
            names = [line.split()[0] for line in Path(names).read_text().splitlines() if line.strip()]
        missing = [n for n in names if n not in set(names_all)]
        if missing:
            raise KeyError(f"{len(missing)} names have no global descriptor, e.g. {missing[:5]}.")
        return list(names)
    if prefix is not None:
        prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        out = [n for n in names_all if n.startswith(prefixes)]
        if not out:
            raise ValueError(f"No image name starts with {prefixes}.")
        return out
    return list(names_all)


def get_descriptors(paths: list[Path], names: list[str], key: str = "global_descriptor") -> np.ndarray:
    """Stack global descriptors [N,D] (float32) of `names` from one or more files."""
    fds = [open_h5(p) for p in paths]
    try:
        out = []
        for n in names:
            fd = next((f for f in fds if n in f), None)
            if fd is None or key not in fd[n]:
                raise KeyError(f"'{n}' has no {key} in {[str(p) for p in paths]}.")
            out.append(fd[n][key][()])
    finally:
        for f in fds:
            f.close()
    return np.stack(out).astype(np.float32)


def build_index(db: np.ndarray, index_type: str = "flat", nlist: int | None = None, nprobe: int = 16):
    """faiss inner-product index over L2-normalised rows: exact (`flat`) or `ivf` for large databases.
    Moved to the GPU when faiss-gpu and CUDA are present."""
    import faiss

    d = db.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif index_type == "ivf":
        nlist = nlist or max(1, int(4 * np.sqrt(len(db))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(db)
        index.nprobe = nprobe
    else:
        raise KeyError(f"Unknown index type '{index_type}' (flat | ivf).")
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(db)
    return index


def search(query: np.ndarray, db: np.ndarray, k: int, index_type: str = "flat", **kw) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores [Q,k], indices [Q,k]) without ever building the full Q x N matrix."""
    index = build_index(np.ascontiguousarray(db, np.float32), index_type, **kw)
    scores, idx = index.search(np.ascontiguousarray(query, np.float32), min(k, len(db)))
    return scores, idx


def main(descriptors: Path, output: Path, num_matched: int, query_prefix=None, query_list=None,
         db_prefix=None, db_list=None, db_model: Path | None = None, db_descriptors: Path | None = None,
         index_type: str = "flat") -> Path:
    descriptors = Path(descriptors)
    db_paths = [Path(db_descriptors)] if db_descriptors else [descriptors]
    query_all = sorted(list_h5_names(descriptors))
    db_all = sorted(set().union(*[list_h5_names(p) for p in db_paths]))
    if db_model is not None:
        import pycolmap

        db_names = [img.name for img in pycolmap.Reconstruction(str(db_model)).images.values()]
    else:
        db_names = parse_names(db_prefix, db_list, db_all)
    query_names = parse_names(query_prefix, query_list, query_all)
    if not db_names or not query_names:
        raise ValueError("Empty query or database selection: check the prefixes/lists.")
    logger.info("Retrieving top-%d of %d database images for %d queries.", num_matched, len(db_names), len(query_names))
    qd = get_descriptors([descriptors], query_names)
    dd = get_descriptors(db_paths, db_names)
    # One more than asked, so that dropping a self-pair still leaves num_matched.
    _, idx = search(qd, dd, num_matched + 1, index_type)
    pairs = []
    for qi, q in enumerate(query_names):
        kept = [db_names[j] for j in idx[qi] if j >= 0 and db_names[j] != q][:num_matched]
        pairs += [(q, r) for r in kept]
    write_pairs(Path(output), pairs)
    logger.info("Wrote %d pairs to %s.", len(pairs), output)
    return Path(output)


def cli():
    p = Parser(description=__doc__)
    p.add_argument("--descriptors", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--num_matched", type=int, required=True)
    p.add_argument("--query_prefix", nargs="+")
    p.add_argument("--query_list", type=Path)
    p.add_argument("--db_prefix", nargs="+")
    p.add_argument("--db_list", type=Path)
    p.add_argument("--db_model", type=Path)
    p.add_argument("--db_descriptors", type=Path)
    p.add_argument("--index_type", choices=["flat", "ivf"], default="flat")
    a = p.parse_args()
    main(a.descriptors, a.output, a.num_matched, a.query_prefix, a.query_list, a.db_prefix, a.db_list,
         a.db_model, a.db_descriptors, a.index_type)


if __name__ == "__main__":
    run_cli(cli)
