"""SuperPoint (detector part used; the official weights are not redistributable:
pass the path of `superpoint_v1.pth`)."""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.base_model import BaseModel


def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Fast NMS by max-pooling on a score map [B,H,W]."""
    def max_pool(x):
        return F.max_pool2d(x, kernel_size=radius * 2 + 1, stride=1, padding=radius)

    zeros = torch.zeros_like(scores)
    max_mask = scores == max_pool(scores)
    for _ in range(2):
        supp_mask = max_pool(max_mask.float()) > 0
        supp_scores = torch.where(supp_mask, zeros, scores)
        new_max_mask = supp_scores == max_pool(supp_scores)
        max_mask = max_mask | (new_max_mask & (~supp_mask))
    return torch.where(max_mask, scores, zeros)


class SuperPoint(BaseModel):
    default_conf = {
        "weights": None,             # path to the official superpoint_v1.pth (required)
        "max_keypoints": 4096,
        "nms_radius": 3,             # as in the HNDesc evaluation
        "detection_threshold": 0.005,
        "remove_borders": 4,
    }
    required_inputs = ["image"]

    def _init(self, conf):
        if not conf["weights"] or not Path(conf["weights"]).is_file():
            raise FileNotFoundError(
                f"SuperPoint weights not found ({conf['weights']!r}). They are not redistributable: download "
                "superpoint_v1.pth from the SuperPoint/SuperGlue release yourself and pass detector.weights=PATH."
            )
        relu = nn.ReLU(inplace=True)
        self.relu = relu
        c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
        self.conv1a = nn.Conv2d(1, c1, 3, 1, 1); self.conv1b = nn.Conv2d(c1, c1, 3, 1, 1)
        self.conv2a = nn.Conv2d(c1, c2, 3, 1, 1); self.conv2b = nn.Conv2d(c2, c2, 3, 1, 1)
        self.conv3a = nn.Conv2d(c2, c3, 3, 1, 1); self.conv3b = nn.Conv2d(c3, c3, 3, 1, 1)
        self.conv4a = nn.Conv2d(c3, c4, 3, 1, 1); self.conv4b = nn.Conv2d(c4, c4, 3, 1, 1)
        self.convPa = nn.Conv2d(c4, c5, 3, 1, 1); self.convPb = nn.Conv2d(c5, 65, 1)
        self.convDa = nn.Conv2d(c4, c5, 3, 1, 1); self.convDb = nn.Conv2d(c5, 256, 1)
        self.load_state_dict(torch.load(str(conf["weights"]), map_location="cpu"))
        self.eval()

    def _forward(self, data):
        image = data["image"]
        if image.shape[1] == 3:
            image = (image * image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        r = self.relu
        x = r(self.conv1b(r(self.conv1a(image)))); x = F.max_pool2d(x, 2)
        x = r(self.conv2b(r(self.conv2a(x)))); x = F.max_pool2d(x, 2)
        x = r(self.conv3b(r(self.conv3a(x)))); x = F.max_pool2d(x, 2)
        x = r(self.conv4b(r(self.conv4a(x))))
        scores = self.convPb(r(self.convPa(x)))
        scores = F.softmax(scores, 1)[:, :-1]
        b, _, h, w = scores.shape
        scores = scores.permute(0, 2, 3, 1).reshape(b, h, w, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h * 8, w * 8)
        scores = simple_nms(scores, self.conf["nms_radius"])
        rb = self.conf["remove_borders"]
        if rb:
            scores[:, :rb] = -1; scores[:, :, :rb] = -1; scores[:, -rb:] = -1; scores[:, :, -rb:] = -1
        kpts, kscores = [], []
        for s in scores:
            idx = torch.nonzero(s > self.conf["detection_threshold"])
            sc = s[idx[:, 0], idx[:, 1]]
            if self.conf["max_keypoints"] > 0 and len(sc) > self.conf["max_keypoints"]:
                sc, top = torch.topk(sc, self.conf["max_keypoints"])
                idx = idx[top]
            kpts.append(torch.flip(idx, [1]).float()); kscores.append(sc)
        n = min(len(k) for k in kpts)
        return {"keypoints": torch.stack([k[:n] for k in kpts]), "scores": torch.stack([s[:n] for s in kscores])}
