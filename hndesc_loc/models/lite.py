"""`lite`: a small HNDesc backbone for the CPU (about 0.2 M parameters).

The input is standardised per image and channel (instance normalisation), which removes
global exposure and colour-cast changes (night) before any learned layer. A
depthwise-separable encoder goes down to stride 16; the descriptor of a keypoint is an
MLP over the encoder features bilinearly sampled at strides 2, 4, 8 and 16 (stride 2
for localisation precision, stride 16 for context). Because the
head runs on sampled features, extraction only pays for it at the keypoints, and the
dense map (`dense`) is the same function evaluated at every stride-4 cell.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .sampling import dense_descriptors, sample_features


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def sep_conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (stride) + pointwise 1x1, each with BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class LiteBackbone(nn.Module):
    stride = 4
    coarse_stride = 16
    widths = (16, 32, 48, 64, 128)
    # Maps the detection head reads: (key, stride, channels).

    hidden = 256                           # width of the descriptor MLP
    detection_inputs = [("f2", 2, 16), ("f4", 4, 48), ("f8", 8, 64)]

    def __init__(self, descriptor_dim: int = 128, coarse_dim: int = 128):
        super().__init__()
        c1, c2, c4, c8, c16 = self.widths
        self.descriptor_dim, self.coarse_dim = descriptor_dim, coarse_dim
        self.block2 = nn.Sequential(conv_bn(3, c1, 2))
        self.block4 = nn.Sequential(conv_bn(c1, c2, 2), sep_conv(c2, c4))
        self.block8 = nn.Sequential(sep_conv(c4, c8, 2), sep_conv(c8, c8))
        self.block16 = nn.Sequential(sep_conv(c8, c16, 2), sep_conv(c16, c16), sep_conv(c16, coarse_dim))
        self.input_norm = nn.InstanceNorm2d(3, affine=False, eps=1e-3)
        self.head = nn.Sequential(
            nn.Linear(c1 + c4 + c8 + coarse_dim, self.hidden), nn.ReLU(inplace=True),
            nn.Linear(self.hidden, descriptor_dim)
        )

    def forward(self, image: torch.Tensor) -> dict:
        """image [B,3,H,W] -> encoder maps at strides 2, 4, 8, 16 ('coarse' is stride 16)."""
        x2 = self.block2(self.input_norm(image))
        x4 = self.block4(x2)
        x8 = self.block8(x4)
        x16 = self.block16(x8)
        return {"f2": x2, "f4": x4, "f8": x8, "coarse": x16}

    def describe(self, feats: dict, keypoints: torch.Tensor) -> torch.Tensor:
        """Descriptors [B,D,N] at keypoints [B,N,2] (image pixels, centre origin)."""
        sampled = torch.cat(
            [sample_features(feats["f2"], keypoints, 2), sample_features(feats["f4"], keypoints, 4),
             sample_features(feats["f8"], keypoints, 8),
             sample_features(feats["coarse"], keypoints, 16)], 1)
        desc = self.head(sampled.transpose(1, 2)).transpose(1, 2)
        return F.normalize(desc, dim=1)

    def dense(self, feats: dict) -> torch.Tensor:
        """Dense descriptor map [B,D,h,w] at stride 4."""
        return dense_descriptors(self.describe, feats, "f4", 4)


class LiteWideBackbone(LiteBackbone):
    """`lite_wide`: the same design with wider maps and MLP (about 4x the operations of
    `lite`), still within the CPU budget (extraction >= 3x faster than DISK, benchmarks/extract.py)."""

    widths = (24, 48, 96, 128, 192)
    hidden = 384
    detection_inputs = [("f2", 2, 24), ("f4", 4, 96), ("f8", 8, 128)]
