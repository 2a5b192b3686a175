"""The paper's backbone: CAPS's ResUNet (ResNet-50 stem + layer1-3, U-Net decoder).

Parameter names follow the original HNDesc/CAPS releases so their checkpoints load
with strict=True: torchvision's ResNet naming under firstconv/firstbn/layer1-3,
decoder blocks `conv_coarse, upconv3, iconv3, upconv2, iconv2, conv_fine`, each a
Conv2d at `.conv` and a BatchNorm2d at `.bn` (an up-conv wraps one at `.conv`).

The forward pass and the keypoint sampling reproduce the official code (imelekhov/HNDesc,
`CapsDesc.forward`, `CAPSNet.extract_local_descs`) so that release checkpoints give the
official descriptors; tests/test_caps_parity.py checks it against the official outputs.
Training and inference share these functions, so the project's caps weights use the same
convention.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .sampling import dense_keypoints



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
    """x2 bilinear up-sampling (align_corners=True) then a ConvBlock (CAPS's `upconv`)."""

    def __init__(self, cin: int, cout: int, kernel_size: int):
        super().__init__()
        self.conv = ConvBlock(cin, cout, kernel_size, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


def skip_connect(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """CAPS's skip connection: zero-pad `skip` [B,C1,h,w] to the size of `up` [B,C2,H,W]
    (the extra row/column split floor/ceil), then concatenate as [up, skip] -> [B,C2+C1,H,W]."""
    dy, dx = up.shape[-2] - skip.shape[-2], up.shape[-1] - skip.shape[-1]
    skip = F.pad(skip, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
    return torch.cat([up, skip], 1)


def official_grid(keypoints: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """CAPS's keypoint normalisation: keypoints [B,N,2] (x,y image pixels) -> grid [B,N,1,2],
    `(kp - c) / c` with c = ((w-1)/2, (h-1)/2) of the *image*, for grid_sample with
    align_corners=False (so image pixel 0 falls half a map cell before the first cell centre)."""
    h, w = image_size
    c = keypoints.new_tensor([(w - 1) / 2.0, (h - 1) / 2.0])
    return ((keypoints - c) / c)[:, :, None]


def sample_official(fmap: torch.Tensor, keypoints: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """fmap [B,C,h,w] sampled at keypoints [B,N,2] as CAPS does (bilinear, zero padding,
    align_corners=False) -> [B,C,N], not normalised."""
    grid = official_grid(keypoints.float(), image_size)  # float32 even under autocast
    return F.grid_sample(fmap.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]


class CapsBackbone(nn.Module):
    """ResUNet: fine 128-d map at stride 4, coarse 128-d map at stride 16.

    `descriptor`: 'fine' (HNDesc release: the fine map, 128-d) or 'coarse_fine' (the CAPS
    release descriptor: L2-normalised coarse and fine samples concatenated, 256-d, scaled
    to unit norm)."""

    stride = 4
    coarse_stride = 16
    detection_inputs = [("fine", 4, 128)]  # (key, stride, channels) read by the detection head

    def __init__(self, descriptor_dim: int = 128, coarse_dim: int = 128, descriptor: str = "fine"):
        super().__init__()
        if descriptor not in ("fine", "coarse_fine"):
            raise ValueError(f"caps descriptor must be 'fine' or 'coarse_fine', not {descriptor!r}")
        self.descriptor = descriptor
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
        x = self.iconv3(skip_connect(x2, self.upconv3(x3)))
        x = self.iconv2(skip_connect(x1, self.upconv2(x)))
        # The decoder pads, so the fine map can exceed H/4: the image size is kept for sampling.
        return {"fine": self.conv_fine(x), "coarse": coarse, "image_size": image.shape[-2:]}

    def describe(self, feats: dict, keypoints: torch.Tensor) -> torch.Tensor:
        """Descriptors [B,D,N] at keypoints [B,N,2] (image pixels, centre origin), L2-normalised."""
        size = tuple(feats["image_size"])
        fine = F.normalize(sample_official(feats["fine"], keypoints, size), dim=1)
        if self.descriptor == "fine":
            return fine
        coarse = F.normalize(sample_official(feats["coarse"], keypoints, size), dim=1)
        return torch.cat([coarse, fine], 1) / 2 ** 0.5

    def dense(self, feats: dict) -> torch.Tensor:
        """Descriptors at the centres of the image's stride-4 cells [B,D,ceil(H/4),ceil(W/4)]."""
        h, w = feats["image_size"]
        kp = dense_keypoints((h, w), self.stride, feats["fine"].device)
        kp = kp[None].expand(feats["fine"].shape[0], -1, -1)
        return self.describe(feats, kp).reshape(kp.shape[0], -1, -(-h // 4), -(-w // 4))
