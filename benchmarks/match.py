"""Mutual nearest-neighbour matching speed, 4096 x 4096 keypoints, 128-d: our torch
matcher against a straightforward numpy implementation, in the same run.

    python benchmarks/match.py [--pairs 20]
"""
import argparse
import time

import numpy as np
import torch

from hndesc_loc.matchers import default_matcher_conf, match_nearest_neighbor


def numpy_mutual_nn(d0: np.ndarray, d1: np.ndarray, ratio: float) -> np.ndarray:
    sim = d0.T @ d1
    nn01 = np.argsort(-sim, axis=1)[:, :2]
    nn10 = np.argmax(sim, axis=0)
    dist = 2 - 2 * np.take_along_axis(sim, nn01, 1)
    ok = dist[:, 0] <= ratio ** 2 * dist[:, 1]
    m0 = np.where(ok, nn01[:, 0], -1)
    mutual = nn10[np.clip(m0, 0, None)] == np.arange(len(m0))
    return np.where(ok & mutual, m0, -1)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=20, help="pairs timed per matcher (default: %(default)s)")
    p.add_argument("--n", type=int, default=4096, help="keypoints per image (default: %(default)s)")
    a = p.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    descs = [rng.normal(size=(128, a.n)).astype(np.float32) for _ in range(4)]
    descs = [d / np.linalg.norm(d, axis=0) for d in descs]
    conf = {**default_matcher_conf, "ratio_threshold": 0.9}
    t = time.perf_counter()
    for i in range(a.pairs):
        d0, d1 = descs[i % 4], descs[(i + 1) % 4]
        m_t = match_nearest_neighbor(torch.from_numpy(d0)[None], torch.from_numpy(d1)[None], conf)["matches0"][0].numpy()
    t_torch = (time.perf_counter() - t) / a.pairs
    t = time.perf_counter()
    for i in range(max(2, a.pairs // 4)):
        d0, d1 = descs[i % 4], descs[(i + 1) % 4]
        numpy_mutual_nn(d0, d1, 0.9)
    t_np = (time.perf_counter() - t) / max(2, a.pairs // 4)
    same = np.array_equal(numpy_mutual_nn(descs[(a.pairs - 1) % 4], descs[a.pairs % 4], 0.9), m_t)
    print(f"{a.n} x {a.n} keypoints, mutual NN + ratio 0.9, 2 threads")
    print(f"torch (ours): {1 / t_torch:6.2f} pairs/s  ({t_torch * 1000:.0f} ms/pair)")
    print(f"numpy       : {1 / t_np:6.2f} pairs/s  ({t_np * 1000:.0f} ms/pair)")
    print(f"speed-up x{t_np / t_torch:.1f}; identical matches: {same}")


if __name__ == "__main__":
    main()
