"""The training loop: Adam + step schedule, seeded, tqdm, CSV log, checkpoints
(`latest.pt`, `best_val.pt`), resume, fixed validation pairs."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import logger
from ..models.network import HNDescNet
from ..utils.base_model import merge_conf
from .data import PairSampler, collect_images, knn_batches, knn_graph, load_source
from .losses import descriptor_loss, exact_ap_single_positive, candidate_lists, global_contrastive_loss
from .synthesis import default_homography_conf, default_photometric_conf

default_conf = {
    "stage": "descriptor",         # descriptor | detector (detector_trainer.py: head on a frozen network)
    "backbone": "lite",
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
        "night_prob": 0.35,        # share of second views rendered at night (no stylized copy)
        "transfer_prob": 0.25,     # share with Reinhard colour transfer from another image
        "num_val_pairs": 64,
    },
    "loss": {
        "mining": "in_batch",      # in_pair | in_batch | random
        "num_hard_negatives": 20,  # k hardest (or random) negatives from the other crops
        "neg_radius": 6.0,         # px: points this close to the positive are not negatives
        "nq": 20,                  # AP quantisation bins
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
    "time_limit_min": None,        # stop (with checkpoints) after this many minutes
    "threads": 2,
}


class Trainer:
    """Descriptor training (stage 'descriptor'): the whole network under the AP loss.
    Subclasses change the network, the trainable parameters, `forward` and `validate`."""

    default_conf = default_conf
    log_keys = ("loss", "ap", "global")   # scalars of `forward`'s output written to log.csv
    val_name = "val_ap"                   # higher is better

    def __init__(self, conf: dict):
        self.conf = conf = merge_conf(self.default_conf, conf, "train config")
        torch.manual_seed(conf["seed"])
        torch.set_num_threads(conf["threads"])
        self.out = Path(conf["output_dir"])
        self.out.mkdir(parents=True, exist_ok=True)
        d = conf["data"]
        self.train_sources = collect_images(d["folders"], d["megadepth_root"], "train", d["builtin"])
        val_sources = collect_images(d["val_folders"], None, "test", d["val_builtin"]) if (
            d["val_folders"] or d["val_builtin"]) else self.train_sources
        logger.info("Training on %d images, validating on %d.", len(self.train_sources), len(val_sources))
        self.sampler = PairSampler(self.train_sources, d)
        val_sampler = PairSampler(val_sources, d)
        vrng = np.random.default_rng(12345)  # fixed validation set, independent of the training seed
        self.val_batches = [val_sampler.batch(vrng, [int(vrng.integers(len(val_sampler))) for _ in range(8)])
                            for _ in range(max(1, d["num_val_pairs"] // 8))]
        self.net = self.build_network()
        o = conf["optim"]
        self.optimizer = torch.optim.Adam(self.trainable_parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, o["lr_step"], o["lr_gamma"])
        self.step, self.best_val = 0, -1.0
        self.rng = np.random.default_rng(conf["seed"])
        self.neighbours = None

    def build_network(self) -> HNDescNet:
        return HNDescNet(self.conf["backbone"])

    def trainable_parameters(self):
        return self.net.parameters()

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "best_val": self.best_val,
                "config": self.conf, "backbone": self.conf["backbone"], "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()}

    def save(self, name: str):
        tmp = self.out / f".{name}.tmp"
        torch.save(self.state(), tmp)
        tmp.replace(self.out / name)

    def resume(self, path: Path):
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.best_val = ckpt["step"], ckpt["best_val"]
        self.rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
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
                for s, _ in self.train_sources:
                    img = torch.from_numpy(load_source(s, c["image_size"])).permute(2, 0, 1)[None]
                    g.append(self.net.global_descriptor(self.net(img))[0].numpy())
            g = np.stack(g)
            self.set_train_mode()
        self.neighbours = knn_graph(g, c["k"])

    def next_indices(self) -> list[int]:
        c, bs = self.conf["coarse_to_fine"], self.conf["batch_size"]
        if c["enabled"]:
            if self.neighbours is None or self.step % c["rebuild_every"] == 0:
                self.rebuild_knn()
            return knn_batches(self.rng, self.neighbours, bs)
        return [int(i) for i in self.rng.choice(len(self.sampler), bs, replace=len(self.sampler) < bs)]

    def set_train_mode(self):
        self.net.train()

    def forward(self, batch: dict) -> dict:
        images = torch.cat([batch["image0"], batch["image1"]])
        feats = self.net(images)
        B = batch["image0"].shape[0]
        kps = torch.cat([batch["keypoints0"], batch["keypoints1"]])
        desc = self.net.describe(feats, kps)
        out = descriptor_loss(desc[:B], desc[B:], batch["keypoints0"], batch["keypoints1"], batch["valid"],
                              batch["index"], self.conf["loss"])
        g = self.net.global_head(feats["coarse"])
        out["global"] = global_contrastive_loss(g[:B], g[B:], batch["index"], self.conf["loss"]["global_temperature"])
        out["total"] = out["loss"] + self.conf["loss"]["global_weight"] * out["global"]
        return out

    @torch.no_grad()
    def validate(self) -> float:
        """Mean exact AP of view-0 anchors against in-pair negatives on the fixed validation pairs."""
        self.net.eval()
        aps = []
        for b in self.val_batches:
            f0, f1 = self.net(b["image0"]), self.net(b["image1"])
            d0, d1 = self.net.describe(f0, b["keypoints0"]), self.net.describe(f1, b["keypoints1"])
            ids = torch.arange(len(b["index"]))
            pos, negs, mask = candidate_lists(d0, d1, b["keypoints1"], b["valid"], ids, "in_pair", 0,
                                              self.conf["loss"]["neg_radius"])
            aps.append(exact_ap_single_positive(pos, negs, mask))
        self.set_train_mode()
        return float(torch.cat(aps).mean())

    # --------------------------------------------------------------------- loop
    def train(self):
        c = self.conf
        log_path = self.out / "log.csv"
        new_log = not log_path.exists() or self.step == 0
        log = open(log_path, "w" if new_log else "a", newline="")
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["step", *self.log_keys, "lr", self.val_name, "elapsed_s"])
        (self.out / "config.json").write_text(json.dumps(c, indent=2))
        start = time.time()
        self.set_train_mode()
        bar = tqdm(total=c["iterations"], initial=self.step, desc="train", unit="it")
        while self.step < c["iterations"]:
            batch = self.sampler.batch(self.rng, self.next_indices())
            out = self.forward(batch)
            self.optimizer.zero_grad()
            out["total"].backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            val_ap = ""
            if self.step % c["val_every"] == 0 or self.step == c["iterations"]:
                val_ap = self.validate()
                if val_ap > self.best_val:
                    self.best_val = val_ap
                    self.save("best_val.pt")
            elapsed = time.time() - start
            writer.writerow([self.step, *(f"{float(out[k]):.4f}" for k in self.log_keys),
                             self.scheduler.get_last_lr()[0], val_ap, f"{elapsed:.1f}"])
            bar.set_postfix(**{k: f"{float(out[k]):.3f}" for k in self.log_keys[:2]}, val=f"{self.best_val:.3f}")
            bar.update(1)
            if self.step % c["checkpoint_every"] == 0:
                log.flush()
                self.save("latest.pt")
            if c["time_limit_min"] and elapsed > 60 * c["time_limit_min"]:
                logger.info("Time limit reached at step %d.", self.step)
                break
        bar.close()
        self.save("latest.pt")
        log.close()
        logger.info("Done: step %d, best %s %.4f, %.1f s.", self.step, self.val_name, self.best_val, time.time() - start)
        return self.best_val


def export_weights(checkpoint: Path, output: Path) -> dict:
    """Strip a training checkpoint to what extraction needs (model, backbone, config, step, val AP)."""
    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    small = {"model": ckpt["model"], "backbone": ckpt["backbone"], "config": ckpt["config"],
             "step": ckpt["step"], "val_ap": ckpt["best_val"]}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    torch.save(small, tmp)
    tmp.replace(output)
    return small
