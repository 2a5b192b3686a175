"""Keypoint detectors. Each is a BaseModel: {'image': [B,C,H,W] in [0,1]} ->
{'keypoints': [B,N,2] (pixel-centre origin), 'scores': [B,N]}."""
from ..utils.base_model import BaseModel


def get_detector(name: str) -> type[BaseModel]:
    if name == "sift":
        from .sift import SIFT as cls
    elif name == "disk":
        from .disk import DISK as cls
    elif name == "superpoint":
        from .superpoint import SuperPoint as cls
    elif name == "hndesc":  # HNDesc's own trained detection head
        from ..models.hndesc import HNDescJoint as cls
    else:
        raise KeyError(f"Unknown detector '{name}'; choose one of ['sift', 'disk', 'superpoint', 'hndesc'].")
    return cls
