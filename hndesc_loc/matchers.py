"""Nearest-neighbour matching of L2-normalised descriptors (pure torch functions)."""
from __future__ import annotations

import torch

default_matcher_conf = {
    "do_mutual_check": True,     # keep i<->j only if each is the other's nearest neighbour
    "ratio_threshold": None,     # Lowe's ratio on distances (e.g. 0.9); None: off
    "distance_threshold": None,  # max L2 distance between unit descriptors (e.g. 0.9); None: off
}


def find_nn(sim: torch.Tensor, ratio_threshold: float | None, distance_threshold: float | None) -> torch.Tensor:
    """sim [B,N,M] cosine similarities -> index of the nearest neighbour in M [B,N] (-1: rejected)."""
    k = 2 if ratio_threshold else 1
    if sim.shape[-1] < k:
        return sim.new_full(sim.shape[:2], -1, dtype=torch.long)
    sim_nn, ind_nn = sim.topk(k, dim=-1, largest=True)
    dist_nn = 2 * (1 - sim_nn).clamp(min=0)  # squared L2 distance of unit vectors
    mask = torch.ones(ind_nn.shape[:-1], dtype=torch.bool, device=sim.device)
    if ratio_threshold:
        mask &= dist_nn[..., 0] <= (ratio_threshold ** 2) * dist_nn[..., 1]
    if distance_threshold:
        mask &= dist_nn[..., 0] <= distance_threshold ** 2
    return torch.where(mask, ind_nn[..., 0], ind_nn.new_tensor(-1))


def mutual_check(m0: torch.Tensor, m1: torch.Tensor) -> torch.Tensor:
    """Keep m0[i]=j only if m1[j]=i. m0 [B,N], m1 [B,M]."""
    inds0 = torch.arange(m0.shape[-1], device=m0.device)
    loop = torch.gather(m1, -1, torch.where(m0 > -1, m0, m0.new_tensor(0)))
    ok = (m0 > -1) & (inds0 == loop)
    return torch.where(ok, m0, m0.new_tensor(-1))


def match_nearest_neighbor(desc0: torch.Tensor, desc1: torch.Tensor, conf: dict) -> dict:
    """desc0 [B,D,N], desc1 [B,D,M] -> {'matches0' [B,N] (-1 unmatched), 'matching_scores0' [B,N]}."""
    sim = torch.einsum("bdn,bdm->bnm", desc0.float(), desc1.float())
    m0 = find_nn(sim, conf["ratio_threshold"], conf["distance_threshold"])
    if conf["do_mutual_check"]:
        m1 = find_nn(sim.transpose(1, 2), conf["ratio_threshold"], conf["distance_threshold"])
        m0 = mutual_check(m0, m1)
    scores = torch.where(m0 > -1, torch.gather(sim, -1, m0.clamp(min=0)[..., None])[..., 0] if sim.shape[-1] else
                         torch.zeros_like(m0, dtype=sim.dtype), sim.new_tensor(0.0))
    return {"matches0": m0, "matching_scores0": (scores + 1) / 2}
