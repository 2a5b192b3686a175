"""Sampling of dense feature maps at keypoints.

Pixel convention: keypoints have their origin at the centre of the top-left pixel
(hloc, OpenCV). A map of stride `s` produced by stride-2, kernel-3, padding-1
convolutions (or ResNet's 7x7/s2 stem and 3x3/s2 max-pool) has its cell `i` centred
on image pixel `i * s`, so image point x lies at map coordinate x / s.
"""
import torch
import torch.nn.functional as F


def keypoints_to_grid(keypoints: torch.Tensor, map_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Keypoints [B,N,2] (x,y image pixels) -> grid [B,1,N,2] in [-1,1] for grid_sample(align_corners=True)."""
    h, w = map_size
    u = keypoints / stride
    scale = keypoints.new_tensor([max(w - 1, 1), max(h - 1, 1)])
    return (2 * u / scale - 1)[:, None]


def sample_features(fmap: torch.Tensor, keypoints: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinearly sample fmap [B,C,h,w] at keypoints [B,N,2] -> [B,C,N] (not normalised)."""
    # float32 even under autocast: bf16 coordinates are off by pixels beyond 256.
    grid = keypoints_to_grid(keypoints.float(), fmap.shape[-2:], stride)
    out = F.grid_sample(fmap.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, 0]


def sample_descriptors(dmap: torch.Tensor, keypoints: torch.Tensor, stride: int) -> torch.Tensor:
    """Sample and L2-normalise: dmap [B,D,h,w], keypoints [B,N,2] -> [B,D,N]."""
    return F.normalize(sample_features(dmap, keypoints, stride), dim=1)


def dense_keypoints(image_size: tuple[int, int], stride: int, device=None) -> torch.Tensor:
    """Image coordinates [h*w,2] of the centres of all cells of a stride-`stride` map."""
    h, w = image_size
    ys = torch.arange(0, h, stride, device=device, dtype=torch.float32)
    xs = torch.arange(0, w, stride, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


def dense_descriptors(describe, feats: dict, key: str, stride: int) -> torch.Tensor:
    """describe(feats, keypoints [B,N,2]) -> [B,D,N] evaluated at every cell of feats[key] (a
    stride-`stride` map [B,C,h,w]): the dense descriptor map [B,D,h,w]."""
    fmap = feats[key]
    h, w = fmap.shape[-2:]
    kp = dense_keypoints((h * stride, w * stride), stride, fmap.device)[None].expand(fmap.shape[0], -1, -1)
    return describe(feats, kp).reshape(kp.shape[0], -1, h, w)
