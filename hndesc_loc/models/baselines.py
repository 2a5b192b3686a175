"""Baselines for comparisons, written as extractors of the same contract:
OpenCV SIFT (detector + descriptor, RootSIFT optional) and DISK (kornia)."""
import cv2
import numpy as np
import torch

from ..detectors.sift import SIFT
from ..utils.base_model import BaseModel


class SIFTDescriptor(BaseModel):
    default_conf = {"detector": {"name": "sift"}, "rootsift": True}  # detector: the SIFT detector conf
    required_inputs = ["image"]

    def _init(self, conf):
        self.detector = SIFT(conf["detector"])
        self.sift = cv2.SIFT_create()

    def _forward(self, data):
        kpts_b, scores_b, descs = [], [], []
        for image in data["image"]:
            gray, kps = self.detector.detect_cv(image)
            kps, d = self.sift.compute(gray, kps)  # may drop points too close to the border
            d = np.zeros((0, 128), np.float32) if d is None else d.astype(np.float32)
            if self.conf["rootsift"]:
                d = np.sqrt(d / np.maximum(d.sum(1, keepdims=True), 1e-8))
            else:
                d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-8)
            descs.append(torch.from_numpy(d).t())
            kpts_b.append(torch.tensor([k.pt for k in kps], dtype=torch.float32).reshape(-1, 2))
            scores_b.append(torch.tensor([k.response for k in kps], dtype=torch.float32))
        return {"keypoints": torch.stack(kpts_b), "scores": torch.stack(scores_b), "descriptors": torch.stack(descs)}


