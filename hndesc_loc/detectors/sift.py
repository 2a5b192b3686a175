"""OpenCV's DoG (SIFT) detector; no weights needed."""
import cv2
import numpy as np
import torch

from ..utils.base_model import BaseModel


def to_gray_uint8(image: torch.Tensor, normalize: bool) -> np.ndarray:
    """image [C,H,W] in [0,1] -> grey uint8 [H,W]; optional min-max stretch (helps at night)."""
    img = image.detach().cpu().float()
    gray = img[0] if img.shape[0] == 1 else (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])
    gray = gray.numpy()
    if normalize:
        lo, hi = np.percentile(gray, 0.5), np.percentile(gray, 99.5)
        gray = np.clip((gray - lo) / max(hi - lo, 1e-3), 0, 1)
    return (gray * 255 + 0.5).astype(np.uint8)


class SIFT(BaseModel):
    default_conf = {
        "max_keypoints": 4096,      # keep the strongest N by DoG response (-1: all)
        "contrast_threshold": 0.01, # OpenCV default is 0.04: far too few keypoints at night
        "edge_threshold": 10,       # OpenCV default
        "nms_radius": 0,            # optional extra radius NMS in pixels (0: off)
        "normalize_image": True,    # percentile stretch of the grey image before detection: dark night images otherwise give few keypoints (README)
    }
    required_inputs = ["image"]

    def _init(self, conf):
        self.sift = cv2.SIFT_create(nfeatures=0, contrastThreshold=conf["contrast_threshold"],
                                    edgeThreshold=conf["edge_threshold"])

    def detect_cv(self, image: torch.Tensor) -> tuple[np.ndarray, list]:
        """image [C,H,W] -> (grey uint8 image, selected cv2.KeyPoints sorted by response)."""
        gray = to_gray_uint8(image, self.conf["normalize_image"])
        kps = self.sift.detect(gray, None)
        # DoG reports a point once per orientation: keep the first of each position.
        seen, unique = set(), []
        for k in sorted(kps, key=lambda k: -k.response):
            key = (round(k.pt[0], 2), round(k.pt[1], 2))
            if key not in seen:
                seen.add(key)
                unique.append(k)
        if self.conf["nms_radius"] > 0 and unique:
            pts = np.array([k.pt for k in unique], np.float32)
            keep = radius_nms(pts, self.conf["nms_radius"])
            unique = [unique[i] for i in keep]
        if self.conf["max_keypoints"] > 0:
            unique = unique[: self.conf["max_keypoints"]]
        return gray, unique

    def _forward(self, data):
        kpts_b, scores_b, scales_b = [], [], []
        for image in data["image"]:
            _, kps = self.detect_cv(image)
            kpts_b.append(torch.tensor([k.pt for k in kps], dtype=torch.float32).reshape(-1, 2))
            scores_b.append(torch.tensor([k.response for k in kps], dtype=torch.float32))
            scales_b.append(torch.tensor([k.size for k in kps], dtype=torch.float32))
        n = min(len(k) for k in kpts_b)  # batches are of one image in practice
        return {"keypoints": torch.stack([k[:n] for k in kpts_b]), "scores": torch.stack([s[:n] for s in scores_b]),
                "scales": torch.stack([s[:n] for s in scales_b])}


def radius_nms(pts: np.ndarray, radius: float) -> list[int]:
    """Greedy NMS on points sorted by decreasing score: indices kept."""
    from scipy.spatial import cKDTree

    tree = cKDTree(pts)
    keep = np.ones(len(pts), bool)
    for i in range(len(pts)):
        if keep[i]:
            for j in tree.query_ball_point(pts[i], radius):
                if j > i:
                    keep[j] = False
    return np.flatnonzero(keep).tolist()
