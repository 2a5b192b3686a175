"""Training of the detection head (stage 'detector') on a frozen, trained HNDesc network.

The descriptor, its backbone and the global head stay as they are (so `hndesc_joint`
describes exactly like `hndesc`); only the detection head learns, from the same synthetic
pairs as the descriptor (homographies, colour changes, night rendering, colour transfer),
with R2D2's repeatability + reliability objective (see detection_losses.py and the model card).
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.detection import detect_keypoints
from ..models.network import HNDescNet, load_network
from ..models.sampling import sample_features
from .detection_losses import cosim_loss, peaky_loss, reliability_loss, warp_map
from .losses import candidate_lists, exact_ap_single_positive
from .synthesis import warp_points
from .trainer import Trainer, default_conf

default_detector_conf = {
    **default_conf,
    "stage": "detector",
    "output_dir": "runs/lite_joint",
    "init_weights": "default",       # trained descriptor network to freeze ('default': shipped lite)
    "detection": {
        "patch_size": 16,            # N of R2D2's cosim/peaky losses: about one peak per N x N patch
        "cosim_weight": 1.0,
        "peaky_weight": 1.0,
        "reliability_weight": 1.0,   # 0: repeatability only (the reliability map is then constant 1)
        "kappa": 0.5,                # AP a pixel must beat to be called reliable
        "num_points": 256,           # uniform points per crop where the descriptor's AP is measured
        "border": 8,                 # px kept free of those points
        "val_keypoints": 300,        # keypoints per crop in validation
        "nms_radius": 2,
    },
}


class DetectorTrainer(Trainer):
    default_conf = default_detector_conf
    log_keys = ("loss", "cosim", "peaky", "reliability", "ap")
    val_name = "val_correct"   # correct (3 px) mutual matches per validation pair

    def build_network(self) -> HNDescNet:
        try:
            net = load_network(self.conf["init_weights"], self.conf["backbone"])
        except FileNotFoundError as e:
            raise FileNotFoundError(f"init_weights: the detection head trains on a frozen, trained network. {e}") from e
        for p in net.parameters():
            p.requires_grad_(False)
        for p in net.detection_head.parameters():
            p.requires_grad_(True)
        if self.conf["detection"]["reliability_weight"] == 0:
            # Untrained reliability would multiply the scores by noise: make it constant 1.
            # The loss never reaches these outputs, so they stay fixed.
            last, n = net.detection_head.fuse[-1], net.detection_head.stride ** 2
            with torch.no_grad():
                last.weight[n:] = 0
                last.bias[n:] = 20.0
        return net

    def trainable_parameters(self):
        return self.net.detection_head.parameters()

    def set_train_mode(self):
        self.net.eval()   # frozen BatchNorm statistics of the descriptor network
        self.net.detection_head.train()

    def uniform_points(self, B: int, size: int) -> torch.Tensor:
        c = self.conf["detection"]
        pts = self.rng.uniform(c["border"], size - 1 - c["border"], (B, c["num_points"], 2))
        return torch.from_numpy(pts).float()

    def forward(self, batch: dict) -> dict:
        c = self.conf["detection"]
        images = torch.cat([batch["image0"], batch["image1"]])
        B, size = batch["image0"].shape[0], images.shape[-2:]
        with torch.no_grad():
            feats = self.net(images)
        logits = self.net.detection_head(feats, size)
        rep, rel = torch.sigmoid(logits["repeatability"]), torch.sigmoid(logits["reliability"])
        H = batch["H"]
        s0, s1 = rep[:B], rep[B:]
        w1, v1 = warp_map(s1, H, size)
        w0, v0 = warp_map(s0, torch.linalg.inv(H), size)
        cosim = (cosim_loss(s0, w1, v1, c["patch_size"]) + cosim_loss(s1, w0, v0, c["patch_size"])) / 2
        peaky = peaky_loss(rep, c["patch_size"])

        # Reliability: the frozen descriptor's AP at uniform points, in-pair + in-batch negatives.
        kp0 = self.uniform_points(B, size[-1])
        kp1 = torch.from_numpy(np.stack([warp_points(h, k) for h, k in zip(H.double().numpy(), kp0.double().numpy())])).float()
        valid = ((kp1 >= 0) & (kp1 <= size[-1] - 1)).all(-1)
        with torch.no_grad():
            d = self.net.describe(feats, torch.cat([kp0, kp1]))
        r = sample_features(rel, torch.cat([kp0, kp1]), 1)[:, 0]   # [2B,K]
        lc = self.conf["loss"]
        rel_losses, aps = [], []
        for da, db, kpb, ra in ((d[:B], d[B:], kp1, r[:B]), (d[B:], d[:B], kp0, r[B:])):
            pos, negs, mask = candidate_lists(da, db, kpb, valid, batch["index"], lc["mining"],
                                              lc["num_hard_negatives"], lc["neg_radius"])
            ap = exact_ap_single_positive(pos, negs, mask)
            rel_losses.append(reliability_loss(ap, ra.reshape(-1)[valid.reshape(-1)], c["kappa"]))
            aps.append(ap.mean())
        reliability = sum(rel_losses) / 2
        total = c["cosim_weight"] * cosim + c["peaky_weight"] * peaky + c["reliability_weight"] * reliability
        return {"total": total, "loss": total.detach(), "cosim": cosim.detach(), "peaky": peaky.detach(),
                "reliability": reliability.detach(), "ap": sum(aps) / 2}

    @torch.no_grad()
    def validate(self) -> dict:
        """Correct (3 px) mutual-NN matches per fixed validation pair, `val_keypoints` per crop."""
        from ..hpatches import pair_metrics

        c = self.conf["detection"]
        self.net.eval()
        correct = []
        for b in self.val_batches:
            images = torch.cat([b["image0"], b["image1"]])
            B, size = b["image0"].shape[0], images.shape[-2:]
            feats = self.net(images)
            maps = self.net.detection_maps(feats, size)
            kpts, _ = detect_keypoints(maps["repeatability"] * maps["reliability"], c["nms_radius"], 0.0,
                                       c["val_keypoints"], 4, 0.1)
            f = [{"keypoints": k.numpy(), "image_size": np.array(size[::-1]),
                  "descriptors": self.net.describe({n: v[j:j + 1] if torch.is_tensor(v) else v
                                                    for n, v in feats.items()}, k[None])[0].numpy()}
                 for j, k in enumerate(kpts)]
            for i in range(B):
                m = pair_metrics(f[i], f[B + i], b["H"][i].double().numpy(), tuple(size[::-1]))
                correct.append(m["correct3"])
        self.set_train_mode()
        return {self.val_name: float(np.mean(correct))}
