"""A learned basis for the coarse context of coarse-fine descriptors (`HNDesc`'s
model.context_weight): the first `dims` uncentred principal axes of the unit coarse features
at keypoints of the training photos (`hndesc_loc.train.context_basis`). Projecting the context
onto them keeps the best rank-`dims` approximation of the context similarities while the stored
descriptor shrinks (effnet: 128 + 192 -> 128 + 32 dims). Inactive (the whole context) in files
that carry none."""
from __future__ import annotations

import torch
from torch import nn


class ContextBasis(nn.Module):
    def __init__(self, coarse_dim: int):
        super().__init__()
        self.register_buffer("axes", torch.eye(coarse_dim))   # rows: principal axes, strongest first
        self.register_buffer("dims", torch.tensor(0))          # axes kept; 0: inactive

    @property
    def active(self) -> bool:
        return int(self.dims) > 0

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """Unit context features [B,C,N] -> their coordinates on the kept axes [B,dims,N] (not
        renormalised: dot products approximate the whole context's), or unchanged when inactive."""
        if not self.active:
            return context
        return torch.einsum("kc,bcn->bkn", self.axes[:int(self.dims)].to(context.dtype), context)

    @torch.no_grad()
    def fit(self, contexts: torch.Tensor, dims: int) -> float:
        """Learn the axes from unit context features [M,C]; keep `dims` of them. Returns the share
        of the contexts' energy (sum of squared singular values) the kept axes hold."""
        self.check_dims(dims)
        if len(contexts) < dims:
            raise ValueError(f"{len(contexts)} context features cannot span {dims} axes: use more photos.")
        _, s, vh = torch.linalg.svd(contexts.double(), full_matrices=False)
        self.axes.zero_()
        self.axes[:len(vh)] = vh.to(self.axes.dtype)
        self.dims.fill_(dims)
        return float((s[:dims] ** 2).sum() / (s ** 2).sum())

    def check_dims(self, dims: int) -> None:
        if not 1 <= dims <= self.axes.shape[0]:
            raise ValueError(f"dims must be in [1, {self.axes.shape[0]}] (the coarse channels), got {dims}.")

    def reset(self) -> None:
        self.axes.copy_(torch.eye(self.axes.shape[0]))
        self.dims.fill_(0)
