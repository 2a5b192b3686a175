"""Global retrieval head: GeM pooling of the coarse map + learned linear whitening, L2-normalised."""
import torch
import torch.nn.functional as F
from torch import nn


class GlobalHead(nn.Module):
    def __init__(self, dim: int = 128, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps
        self.whiten = nn.Linear(dim, dim)
        # Identity at init: a checkpoint without a trained head still gives plain GeM.
        nn.init.eye_(self.whiten.weight)
        nn.init.zeros_(self.whiten.bias)

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        """coarse [B,C,h,w] -> global descriptor [B,C], L2-normalised."""
        x = F.relu(coarse).clamp(min=self.eps).pow(self.p)
        x = x.mean(dim=(-2, -1)).pow(1.0 / self.p)
        return F.normalize(self.whiten(F.normalize(x, dim=-1)), dim=-1)
