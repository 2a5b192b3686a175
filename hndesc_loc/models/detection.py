"""HNDesc's keypoint detection head and the pure functions that turn its maps into keypoints.

The head predicts two full-resolution maps from the backbone's finest encoder features
(R2D2's decomposition): *repeatability* (peaks that the same scene point produces in
every view) and *reliability* (how well the descriptor at a pixel can be matched: its
AP against hard negatives). A keypoint is a local maximum of repeatability x reliability.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DetectionHead(nn.Module):
    """Feature maps -> repeatability and reliability logits [B,1,H,W] at image resolution.

    `inputs`: (feature key, stride, channels) of the backbone maps to use. They are projected,
    upsampled to the finest stride `s` and fused; the last layer predicts 2*s*s channels
    that a pixel shuffle turns into full-resolution maps (each sub-pixel phase has its own
    channel, so the head can place a peak on any pixel)."""

    def __init__(self, inputs: list[tuple[str, int, int]], width: int = 32):
        super().__init__()
        self.inputs = inputs
        self.stride = min(s for _, s, _ in inputs)
        self.proj = nn.ModuleDict({
            key: nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for key, _, c in inputs})
        self.fuse = nn.Sequential(
            nn.Conv2d(width * len(inputs), width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * self.stride ** 2, 1))

    def forward(self, feats: dict, image_size: tuple[int, int]) -> dict:
        """feats: backbone maps; image_size (H, W) -> {'repeatability', 'reliability'} logits [B,1,H,W]."""
        finest = min(self.inputs, key=lambda x: x[1])[0]
        size = feats[finest].shape[-2:]
        x = torch.cat([F.interpolate(self.proj[k](feats[k]), size=size, mode="bilinear", align_corners=True)
                       if feats[k].shape[-2:] != size else self.proj[k](feats[k]) for k, _, _ in self.inputs], 1)
        x = F.pixel_shuffle(self.fuse(x), self.stride)[..., : image_size[0], : image_size[1]]
        return {"repeatability": x[:, :1], "reliability": x[:, 1:]}


def nms_mask(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Local maxima of scores [B,1,H,W] in a (2r+1)^2 window -> bool mask [B,1,H,W]."""
    return scores == F.max_pool2d(scores, 2 * radius + 1, stride=1, padding=radius)


def refine_soft_argmax(scores: torch.Tensor, keypoints: torch.Tensor, radius: int,
                       temperature: float) -> torch.Tensor:
    """Sub-pixel keypoints: soft-argmax of the scores in the (2r+1)^2 window of each keypoint.

    scores [H,W]; keypoints [N,2] integer pixel positions (x, y) -> [N,2] float.
    Weights are softmax((s - s_peak) / temperature); the window is clipped at the border."""
    if len(keypoints) == 0 or radius == 0:
        return keypoints.float()
    H, W = scores.shape
    r = torch.arange(-radius, radius + 1, device=scores.device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    x = keypoints[:, 0].long()[:, None] + dx.reshape(1, -1)
    y = keypoints[:, 1].long()[:, None] + dy.reshape(1, -1)
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    patch = scores[y.clamp(0, H - 1), x.clamp(0, W - 1)]                  # [N,(2r+1)^2]
    logits = ((patch - patch.max(1, keepdim=True).values) / temperature).masked_fill(~inside, float("-inf"))
    w = logits.softmax(1)
    offset = torch.stack([(w * dx.reshape(1, -1)).sum(1), (w * dy.reshape(1, -1)).sum(1)], -1)
    return keypoints.float() + offset


def detect_keypoints(scores: torch.Tensor, nms_radius: int, threshold: float, max_keypoints: int,
                     remove_borders: int, refine_temperature: float | None) -> tuple[list, list]:
    """Keypoints from a score map [B,1,H,W] (higher is better).

    Local maxima above `threshold`, away from the border, the strongest `max_keypoints`
    (-1: all), refined by soft-argmax in the NMS window unless `refine_temperature` is None.
    Returns per image: keypoints [N,2] (x, y; pixel-centre origin) and scores [N]."""
    mask = nms_mask(scores, nms_radius) & (scores > threshold)
    if remove_borders > 0:
        b = remove_borders
        border = torch.zeros_like(mask)
        border[..., b:-b, b:-b] = True
        mask &= border
    keypoints, kscores = [], []
    for s, m in zip(scores[:, 0], mask[:, 0]):
        yx = torch.nonzero(m)
        v = s[yx[:, 0], yx[:, 1]]
        if 0 < max_keypoints < len(v):
            v, idx = v.topk(max_keypoints)
            yx = yx[idx]
        else:
            v, idx = v.sort(descending=True)
            yx = yx[idx]
        kp = yx.flip(1)
        if refine_temperature is not None:
            kp = refine_soft_argmax(s, kp, nms_radius, refine_temperature)
        keypoints.append(kp.float())
        kscores.append(v)
    return keypoints, kscores
