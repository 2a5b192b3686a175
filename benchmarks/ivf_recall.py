"""Retrieval at scale: recall@k of a faiss IVF index against exact search (IndexFlatIP),
on 10^5 random unit vectors plus the real global descriptors of the demo scene.

    python benchmarks/ivf_recall.py [--n 100000] [--nprobe 1 4 16 64]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hndesc_loc import extract_features
from hndesc_loc.pairs_from_retrieval import get_descriptors, search
from hndesc_loc.io import list_h5_names


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100_000, help="random unit vectors in the database (default: %(default)s)")
    p.add_argument("--k", type=int, default=50, help="recall@k: neighbours compared with exact search (default: %(default)s)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64],
                   help="IVF lists visited per query, one row each (default: %(default)s)")
    a = p.parse_args()
    from hndesc_loc.synthetic.scene import generate

    root = Path(tempfile.mkdtemp())
    scene = generate(root / "scene")
    images = scene["aachen"] / "images_upright"
    g = extract_features.main(extract_features.confs["hndesc_global"], images, root)
    names = sorted(list_h5_names(g))
    real = get_descriptors([g], names)
    rng = np.random.default_rng(0)
    rand = rng.normal(size=(a.n, real.shape[1])).astype(np.float32)
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    db = np.concatenate([real, rand])
    queries = np.concatenate([real, rand[rng.choice(a.n, 1000, replace=False)]])
    t = time.perf_counter()
    _, exact = search(queries, db, a.k, "flat")
    t_flat = time.perf_counter() - t
    print(f"database {len(db)} vectors ({len(real)} real scene descriptors + {a.n} random), {len(queries)} queries, k={a.k}")
    print(f"flat (exact): {len(queries) / t_flat:8.0f} queries/s")
    for nprobe in a.nprobe:
        t = time.perf_counter()
        _, approx = search(queries, db, a.k, "ivf", nprobe=nprobe)
        dt = time.perf_counter() - t
        rec = np.mean([len(set(e) & set(x)) / a.k for e, x in zip(exact, approx)])
        rec_real = np.mean([len(set(e) & set(x)) / a.k for e, x in zip(exact[:len(real)], approx[:len(real)])])
        print(f"ivf nprobe={nprobe:3d}: recall@{a.k} vs exact {rec:.3f} (scene queries {rec_real:.3f}), "
              f"{len(queries) / dt:8.0f} queries/s incl. training the index")


if __name__ == "__main__":
    main()
