"""Keypoint detectors. Each is a BaseModel: {'image': [B,C,H,W] in [0,1]} ->
{'keypoints': [B,N,2] (pixel-centre origin), 'scores': [B,N]}. Looked up by name through
hndesc_loc.registry (kind 'detector')."""
