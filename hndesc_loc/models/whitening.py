"""Learned whitening of local descriptors (Radenovic, Tolias, Chum, "Fine-tuning CNN image
retrieval with no human annotation", TPAMI 2018, section 3.3, here on local descriptors):
d -> normalize(P (d - m)), with P whitening the differences of matching descriptors and then
rotating onto the principal axes of the whitened descriptors. Learned from positive pairs
alone (synthetic homographies: no ground-truth correspondences), after training."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DescriptorWhitening(nn.Module):
    """Affine map + L2 normalisation of descriptors [B,D,N]; the identity while inactive (no
    whitening learned: every checkpoint written before it existed loads as inactive)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.eye(dim))
        self.register_buffer("active", torch.tensor(False))

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        """desc [B,D,N] (unit columns) -> [B,D,N] whitened, unit columns."""
        if not bool(self.active):
            return desc
        x = desc.float() - self.mean[None, :, None]
        return F.normalize(torch.einsum("ed,bdn->ben", self.projection, x), dim=1).to(desc.dtype)

    def set(self, mean: torch.Tensor, projection: torch.Tensor) -> None:
        if mean.shape != self.mean.shape or projection.shape != self.projection.shape:
            raise ValueError(f"whitening of shape {tuple(projection.shape)} for descriptors of dimension "
                             f"{self.mean.shape[0]}")
        self.mean.copy_(mean)
        self.projection.copy_(projection)
        self.active.fill_(True)

    def reset(self) -> None:
        self.mean.zero_()
        self.projection.copy_(torch.eye(len(self.mean)))
        self.active.fill_(False)


def check_power(power: float) -> None:
    """A whitening strength lies in [0, 1], else a one-line ValueError."""
    if not 0 <= power <= 1:
        raise ValueError(f"whitening power must be in [0, 1] (1: full whitening, 0: centring only), not {power}.")


def learn_whitening(desc0: torch.Tensor, desc1: torch.Tensor, eps: float = 1e-4,
                    power: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitening from matching descriptors desc0[i] <-> desc1[i], both [M,D].

    Returns (mean [D], projection [D,D]): projection = R C_pos^(-power/2), C_pos the covariance of
    the differences desc0 - desc1 (eigenvalues floored at eps x the largest, so that directions
    in which positives never differ are not blown up without bound) and R the principal axes of
    the descriptors whitened that way, largest variance first. power 1 whitens fully, 0 only
    centres; in between shrinks towards the unwhitened descriptor. Scaled so that its largest
    entry is 1 (the descriptor is normalised after it; the scale keeps float16 storage safe)."""
    check_power(power)
    if desc0.shape != desc1.shape or desc0.ndim != 2:
        raise ValueError(f"matching descriptors must both be [M,D], got {tuple(desc0.shape)} and {tuple(desc1.shape)}")
    dim = desc0.shape[1]
    if len(desc0) < 2 * dim:
        raise ValueError(f"{len(desc0)} descriptor pairs cannot estimate a {dim}x{dim} whitening: use at least {2 * dim}.")
    a, b = desc0.double(), desc1.double()
    x = torch.cat([a, b])
    mean = x.mean(0)
    w, v = torch.linalg.eigh(torch.cov((a - b).T))
    w = w.clamp(min=float(w.max()) * eps)
    inv_sqrt = v @ torch.diag(w.pow(-power / 2)) @ v.T
    _, r = torch.linalg.eigh(torch.cov(((x - mean) @ inv_sqrt.T).T))
    projection = r.flip(1).T @ inv_sqrt
    return mean.float(), (projection / projection.abs().max()).float()
