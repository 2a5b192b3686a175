"""The paper's backbone: CAPS's ResUNet (ResNet-50 stem + layer1-3, U-Net decoder).

Parameter names follow the original HNDesc/CAPS releases so their checkpoints load
with strict=True: torchvision's ResNet naming under firstconv/firstbn/layer1-3,
decoder blocks `conv_coarse, upconv3, iconv3, upconv2, iconv2, conv_fine`, each a
Conv2d at `.conv` and a BatchNorm2d at `.bn` (an up-conv wraps one at `.conv`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .sampling import sample_descriptors


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (stride on the 3x3 conv), same parameter names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm2d -> ELU (CAPS's `conv`)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=(kernel_size - 1) // 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.elu(self.bn(self.conv(x)), inplace=True)


class UpConvBlock(nn.Module):
    """x2 bilinear up-sampling then a ConvBlock (CAPS's `upconv`)."""

    def __init__(self, cin: int, cout: int, kernel_size: int):
        super().__init__()
        self.conv = ConvBlock(cin, cout, kernel_size, 1)

    def forward(self, x, size):
        # Interpolate to the skip connection's size so odd image sizes work too.
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class CapsBackbone(nn.Module):
    """ResUNet: fine 128-d map at stride 4, coarse 128-d map at stride 16."""

    stride = 4
    coarse_stride = 16
    detection_inputs = [("fine", 4, 128)]  # (key, stride, channels) read by the detection head

    def __init__(self, descriptor_dim: int = 128, coarse_dim: int = 128):
        super().__init__()
        self.descriptor_dim, self.coarse_dim = descriptor_dim, coarse_dim
        self.firstconv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.firstbn = nn.BatchNorm2d(64)
        self.layer1 = make_layer(64, 64, 3, 1)
        self.layer2 = make_layer(256, 128, 4, 2)
        self.layer3 = make_layer(512, 256, 6, 2)
        self.conv_coarse = ConvBlock(1024, coarse_dim, 1)
        self.upconv3 = UpConvBlock(1024, 512, 3)
        self.iconv3 = ConvBlock(512 + 512, 512, 3)
        self.upconv2 = UpConvBlock(512, 256, 3)
        self.iconv2 = ConvBlock(256 + 256, 256, 3)
        self.conv_fine = ConvBlock(256, descriptor_dim, 1)

    def forward(self, image: torch.Tensor) -> dict:
        """image [B,3,H,W] normalised -> {'fine' [B,128,H/4,W/4], 'coarse' [B,128,H/16,W/16]}."""
        x = F.relu(self.firstbn(self.firstconv(image)), inplace=True)
        x = F.max_pool2d(x, 3, 2, 1)
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        coarse = self.conv_coarse(x3)
        x = self.iconv3(torch.cat([x2, self.upconv3(x3, x2.shape[-2:])], 1))
        x = self.iconv2(torch.cat([x1, self.upconv2(x, x1.shape[-2:])], 1))
        return {"fine": self.conv_fine(x), "coarse": coarse}

    def describe(self, feats: dict, keypoints: torch.Tensor) -> torch.Tensor:
        """Descriptors [B,D,N] at keypoints [B,N,2]."""
        return sample_descriptors(feats["fine"], keypoints, self.stride)

    def dense(self, feats: dict) -> torch.Tensor:
        return F.normalize(feats["fine"], dim=1)
