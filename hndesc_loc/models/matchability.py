"""Matchability of keypoints (Hartmann, Havlena, Schindler, "Predicting Matchability", CVPR 2014):
a small classifier that tells, from a keypoint's descriptor and the encoder's coarse features
around it, whether the keypoint is likely to be matched in another real photo of the scene.
Learned after training from a structure-from-motion model of the training photos
(`hndesc_loc.train.matchability`): keypoints that became observations of a 3D point are the
positives, the rest the negatives. No annotation, no held-out photo.

Why: on real pairs SIFT spends most keypoints on vegetation, crowds and sky edges that change
between the two photos; mutual nearest neighbours cannot reject what they match there. The
coarse features (stride 16 or 32) see enough context to tell a tree crown from a facade."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MatchabilityHead(nn.Module):
    """Logit of matchability per keypoint; inactive (never used) until trained.

    Inputs are standardised by the training set's statistics (`mean`, `std`); the scale pooling of
    the descriptors it was trained on is kept (`pooling`, padded with zeros) so that an extractor
    never feeds it descriptors of another kind."""

    MAX_POOLING = 8

    def __init__(self, descriptor_dim: int, coarse_dim: int, hidden: int = 64):
        super().__init__()
        dim = descriptor_dim + coarse_dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        # Trained only by `fit_matchability`, after the network: frozen for the descriptor's
        # optimisers (and DDP, which refuses parameters that get no gradient).
        self.mlp.requires_grad_(False)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("pooling", torch.zeros(self.MAX_POOLING))
        self.register_buffer("active", torch.tensor(False))

    @property
    def scale_pooling(self) -> list[float]:
        """The descriptor scale pooling the head was trained on."""
        return [round(float(f), 6) for f in self.pooling if f > 0]

    @staticmethod
    def inputs(desc: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """desc [B,D,N] (unit), context [B,C,N] (the unit coarse feature at each keypoint,
        `HNDescNet.context`) -> features [B,N,D+C]."""
        return torch.cat([desc.float(), context.float()], 1).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B,N,D+C] of `inputs` -> logits [B,N]."""
        return self.mlp((features - self.mean) / self.std)[..., 0]

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor, scale_pooling) -> None:
        if len(scale_pooling) > self.MAX_POOLING:
            raise ValueError(f"at most {self.MAX_POOLING} scale-pooling factors, got {list(scale_pooling)}")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-6))
        self.pooling.zero_()
        self.pooling[:len(scale_pooling)] = torch.tensor([float(f) for f in scale_pooling])

    def activate(self) -> None:
        self.active.fill_(True)

    def reset(self) -> None:
        """Back to an untrained, inactive head."""
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        self.mean.zero_()
        self.std.fill_(1.0)
        self.pooling.zero_()
        self.active.fill_(False)


def select_matchable(logits: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices [K] (ascending, so the detector's order is kept) of the `keep` largest of
    logits [N]; all of them when N <= keep."""
    if keep < 0 or len(logits) <= keep:
        return torch.arange(len(logits), device=logits.device)
    return torch.topk(logits, keep).indices.sort().values


def fit_matchability(head: MatchabilityHead, features: torch.Tensor, labels: torch.Tensor,
                     scale_pooling, epochs: int = 300, lr: float = 1e-2, weight_decay: float = 1e-3,
                     seed: int = 0) -> float:
    """Train `head` on features [M,D+C] and labels [M] (1: matched in the SfM model), full batch,
    positives weighted by the negatives' share; sets its statistics and activates it. Returns the
    final loss."""
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features [M,D] and labels [M] expected, got {tuple(features.shape)} and {tuple(labels.shape)}")
    labels = labels.float()
    positives = float(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(f"matchability needs both matched and unmatched keypoints; got {int(positives)} matched "
                         f"of {len(labels)}.")
    torch.manual_seed(seed)
    head.reset()   # a fresh initialisation of the MLP, drawn from `seed`
    head.set_statistics(features.mean(0), features.std(0), scale_pooling)
    head.mlp.requires_grad_(True)
    optim = torch.optim.Adam(head.mlp.parameters(), lr=lr, weight_decay=weight_decay)
    pos_weight = torch.tensor((len(labels) - positives) / positives)
    head.train()
    try:
        for _ in range(epochs):
            optim.zero_grad()
            loss = F.binary_cross_entropy_with_logits(head(features), labels, pos_weight=pos_weight)
            loss.backward()
            optim.step()
    finally:
        head.eval()
        head.mlp.requires_grad_(False)
    head.activate()
    return float(loss.detach())
