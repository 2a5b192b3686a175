"""Image-retrieval metrics: revisited Oxford/Paris mAP (Easy / Medium / Hard protocols with
the standard junk handling) and Tokyo 24/7 recall@N (25 m)."""
from __future__ import annotations

import numpy as np


def average_precision(pos_ranks: np.ndarray, num_positives: int) -> float:
    """AP from the 0-based ranks of the positives (junk already removed), with the
    trapezoidal precision interpolation of the revisited benchmark's reference code."""
    ap, step = 0.0, 1.0 / num_positives
    for j, rank in enumerate(np.sort(pos_ranks)):
        p0 = 1.0 if rank == 0 else j / rank
        p1 = (j + 1) / (rank + 1)
        ap += (p0 + p1) * step / 2
    return ap


def query_ap(ranking: np.ndarray, positives, junk) -> float | None:
    """ranking: database indices best first; junk images are removed from the ranking."""
    positives = np.asarray(list(positives), int)
    if len(positives) == 0:
        return None
    is_pos = np.isin(ranking, positives)
    is_junk = np.isin(ranking, np.asarray(list(junk), int))
    kept = ~is_junk
    pos_ranks = np.flatnonzero(is_pos[kept])
    return average_precision(pos_ranks, len(positives))


PROTOCOLS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def revisited_map(rankings: np.ndarray, gnd: list[dict]) -> dict[str, float]:
    """rankings [num_queries, num_db] (indices best first); gnd: per query {'easy','hard','junk'}.
    Returns mAP per protocol (queries without positives in a protocol are skipped)."""
    out = {}
    for name, (ok_keys, junk_keys) in PROTOCOLS.items():
        aps = []
        for ranking, g in zip(rankings, gnd):
            ok = np.concatenate([np.asarray(g.get(k, []), int) for k in ok_keys])
            junk = np.concatenate([np.asarray(g.get(k, []), int) for k in junk_keys])
            ap = query_ap(ranking, ok, junk)
            if ap is not None:
                aps.append(ap)
        out[name] = float(np.mean(aps)) if aps else float("nan")
    return out


def recall_at_n(rankings: np.ndarray, db_positions: np.ndarray, query_positions: np.ndarray,
                ns=(1, 5, 10), threshold: float = 25.0) -> dict[int, float]:
    """Tokyo 24/7 / Pitts: share of queries with a database image within `threshold` m in the top N."""
    hits = {n: 0 for n in ns}
    for ranking, q in zip(rankings, query_positions):
        d = np.linalg.norm(db_positions[ranking[:max(ns)]] - q, axis=1)
        first = np.flatnonzero(d <= threshold)
        for n in ns:
            hits[n] += bool(len(first) and first[0] < n)
    return {n: hits[n] / len(rankings) for n in ns}
