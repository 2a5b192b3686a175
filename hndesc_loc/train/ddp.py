"""Multi-GPU training with torchrun (DistributedDataParallel).

    torchrun --nproc_per_node 8 -m hndesc_loc.train --config configs/train/caps_paper.yaml ...

`batch_size` stays the *global* batch (the paper's 16): each process takes its share of the
pairs of every step, in order, so the coarse-to-fine batch (an image and its global-descriptor
neighbours) is the same as on one GPU. Descriptors (and keypoints, validity, image ids,
global descriptors) are gathered from every process before the loss, so in-batch hard
negatives are mined over the whole batch, as in the paper; the gathered copies of other
processes carry no gradient, and the loss, identical on every process, is scaled by the
world size so that DDP's gradient average equals the gradient of the global batch.
What differs from one GPU: BatchNorm statistics are per process (per-GPU batch) unless
`sync_batchnorm` is set (CUDA only).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from ..models.hndesc import describe_scale_pooled


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), size


def init(device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); the process's device."""
    rank, local_rank, size = world()
    if size == 1:
        return device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return device


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` [B,...] of every process along dim 0 (rank order); this process's part
    keeps its gradient, the others are constants."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def any_process(flag: bool, device: torch.device) -> bool:
    """True if `flag` is True on any process (e.g. a time limit, so that all stop together)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class DescribeStep(nn.Module):
    """The differentiable part of a training step as one module (what DDP wraps):
    images [2B,3,H,W], keypoints [2B,K,2] -> (descriptors [2B,D,K], global descriptors [2B,G]).
    scale_pooling: the descriptors pooled over these image scales, as the extractor's
    `model.scale_pooling` (`models.hndesc.describe_scale_pooled`); [1.0]: one pass."""

    def __init__(self, net: nn.Module, scale_pooling=(1.0,)):
        super().__init__()
        self.net = net
        self.scale_pooling = list(scale_pooling)

    def forward(self, images: torch.Tensor, keypoints: torch.Tensor):
        feats = self.net(images)
        desc = describe_scale_pooled(self.net, images, keypoints, self.scale_pooling, feats=feats)
        return desc.float(), self.net.global_head(feats["coarse"]).float()


def wrap(net: nn.Module, device: torch.device, sync_batchnorm: bool = False, scale_pooling=(1.0,)) -> nn.Module:
    step = DescribeStep(net, scale_pooling)
    if world()[2] == 1:
        return step
    if sync_batchnorm and device.type == "cuda":
        step = nn.SyncBatchNorm.convert_sync_batchnorm(step)
    return nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
