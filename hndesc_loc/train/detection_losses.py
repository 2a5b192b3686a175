"""Self-supervised losses of the detection head (R2D2's objective on HNDesc's pairs).

- repeatability: the score maps of the two views, warped into each other by the known
  homography, agree patch by patch (cosine similarity), and are peaky in every patch;
- reliability: the head predicts where the (frozen) HNDesc descriptor is matchable, from the
  descriptor's AP against in-pair and in-batch hard negatives: 1 - [AP R + kappa (1 - R)];
- distillation (`detection.teacher`): the repeatability map reproduces a pretrained detector's
  score map on the same crops (`train.teacher`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def warp_map(source: torch.Tensor, H: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample source [B,C,h,w] (view 1) onto the pixels of view 0 (size (H0, W0)), where
    H [B,3,3] maps view-0 pixels to view-1 pixels. Returns (warped [B,C,H0,W0], valid [B,1,H0,W0])."""
    B = source.shape[0]
    h0, w0 = size
    ys, xs = torch.meshgrid(torch.arange(h0, dtype=H.dtype, device=H.device),
                            torch.arange(w0, dtype=H.dtype, device=H.device), indexing="ij")
    p = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3) @ H.transpose(1, 2)
    p = p[..., :2] / p[..., 2:].clamp(min=1e-8)
    h1, w1 = source.shape[-2:]
    valid = (p[..., 0] >= 0) & (p[..., 0] <= w1 - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h1 - 1)
    grid = 2 * p / p.new_tensor([w1 - 1, h1 - 1]) - 1
    warped = F.grid_sample(source, grid.reshape(B, h0, w0, 2).to(source.dtype), mode="bilinear",
                           align_corners=True, padding_mode="zeros")
    return warped, valid.reshape(B, 1, h0, w0).to(source.dtype)


def cosim_loss(s0: torch.Tensor, s1_warped: torch.Tensor, valid: torch.Tensor, patch: int) -> torch.Tensor:
    """1 - mean cosine similarity of the two maps [B,1,H,W] over patches (stride patch/2)
    that lie at least half in the valid region."""
    a, b = s0 * valid, s1_warped * valid
    pool = lambda x: F.avg_pool2d(x, patch, stride=patch // 2)
    cos = pool(a * b) / (pool(a * a) * pool(b * b)).clamp(min=1e-12).sqrt()  # clamp first: sqrt'(0) is inf
    w = (pool(valid) > 0.5).to(cos.dtype)
    return 1 - (cos * w).sum() / w.sum().clamp(min=1)


def peaky_loss(s: torch.Tensor, patch: int) -> torch.Tensor:
    """1 - mean(local max - local mean) over (patch+1)^2 windows: one clear peak per patch."""
    k, r = patch + 1, patch // 2
    return 1 - (F.max_pool2d(s, k, 1, r) - F.avg_pool2d(s, k, 1, r, count_include_pad=False)).mean()


def reliability_loss(ap: torch.Tensor, reliability: torch.Tensor, kappa: float) -> torch.Tensor:
    """R2D2's AP-weighted reliability: ap, reliability [N] -> scalar. The head learns R -> 1
    where the descriptor's AP beats kappa, R -> 0 elsewhere (ap carries no gradient)."""
    return (1 - (ap.detach() * reliability + kappa * (1 - reliability))).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, center: float, temperature: float) -> torch.Tensor:
    """Binary cross-entropy of the student's logits [B,1,H,W] against the teacher's scores
    squashed to probabilities sigmoid((teacher - center) / temperature) [B,1,H,W]: the student
    reproduces the teacher's ranking where it matters, around the scores its keypoints have
    (`center`); far below it every pixel is simply 'no keypoint'."""
    target = torch.sigmoid((teacher.to(student.dtype) - center) / temperature)
    return F.binary_cross_entropy_with_logits(student, target)
