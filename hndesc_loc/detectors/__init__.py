"""Keypoint detectors. Each is a BaseModel: {'image': [B,C,H,W] in [0,1]} ->
{'keypoints': [B,N,2] (pixel-centre origin), 'scores': [B,N]}. Registered in hndesc_loc.registry."""
from ..registry import get


def get_detector(name: str):
    return get("detector", name)
