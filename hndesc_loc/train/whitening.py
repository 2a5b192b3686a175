"""Learn the descriptor whitening of a trained network (`hndesc_loc.models.whitening`) from
synthetic positive pairs of its training photos, and write the weights with it.

    python -m hndesc_loc.train.whitening --weights hndesc_loc/weights/hndesc_effnet_std.pt \\
        --config configs/train/effnet_std.yaml --output hndesc_effnet_std_whitened.pt

The pairs are drawn exactly as training draws them (the config's photos, homographies and
appearance changes, SIFT keypoints on view A): no held-out photo, family or real pair is seen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import logger
from ..models.network import load_checkpoint
from ..models.whitening import check_power, learn_whitening
from ..utils.base_model import merge_conf
from ..utils.cli import Parser, run as run_cli
from .__main__ import load_config
from .data import PairDataset, collect_images, warp_inside
from .trainer import add_weights_tool_arguments, default_conf, read_small_weights, save_atomically

BATCH = 8
# Keypoints per 256 px crop in 'detector' mode: hndesc_joint's density (4096 per 640 px image).
DETECTOR_KEYPOINTS = 640


KEYPOINTS = ("sift", "detector")


def detector_keypoints(net, feats: dict, batch: dict, num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detection head's `num` strongest keypoints on each view A (`hndesc_joint`'s defaults
    otherwise), warped into view B: keypoints0, keypoints1 [B,num,2], valid [B,num]."""
    from ..models.hndesc import HNDescJoint, head_keypoints

    size = batch["image0"].shape[-1]  # square crops
    kpts, _ = head_keypoints(net, feats, batch["image0"].shape[-2:], {**HNDescJoint.default_conf, "max_keypoints": num})
    kp0, kp1 = torch.zeros(len(kpts), num, 2), torch.zeros(len(kpts), num, 2)
    valid = torch.zeros(len(kpts), num, dtype=torch.bool)
    for i, k in enumerate(kpts):
        warped, inside = warp_inside(batch["H"][i].double().numpy(), k.double().numpy(), size)
        kp0[i, :len(k)], kp1[i, :len(k)], valid[i, :len(k)] = k, torch.from_numpy(warped), torch.from_numpy(inside)
    return kp0, kp1, valid


@torch.no_grad()
def positive_pairs(net, dataset: PairDataset, num_pairs: int, seed: int,
                   keypoints: str = "sift") -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors [M,D] of view A and of view B at the same (warped) keypoints, over
    `num_pairs` synthetic image pairs; the network's own whitening is left out. `keypoints`:
    'sift' (training's keypoints) or 'detector' (the network's detection head, for the
    descriptor of `hndesc_joint`, which describes the head's keypoints)."""
    if keypoints not in KEYPOINTS:
        raise ValueError(f"keypoints='{keypoints}': use one of {KEYPOINTS}.")
    if keypoints == "detector" and not net.has_trained_detector:
        raise ValueError("keypoints='detector' needs weights with a trained detection head (a joint file).")
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in tqdm(range(-(-num_pairs // BATCH)), desc="whitening pairs", unit="batch"):
        batch = dataset.batch(rng, [int(i) for i in rng.integers(len(dataset), size=BATCH)])
        f0 = net(batch["image0"])
        if keypoints == "detector":
            kp0, kp1, valid = detector_keypoints(net, f0, batch, DETECTOR_KEYPOINTS)
        else:
            kp0, kp1, valid = batch["keypoints0"], batch["keypoints1"], batch["valid"]
        d0 = net.backbone.describe(f0, kp0).transpose(1, 2)
        d1 = net.backbone.describe(net(batch["image1"]), kp1).transpose(1, 2)
        a.append(d0[valid])
        b.append(d1[valid])
    return torch.cat(a), torch.cat(b)


def main(weights: Path, config: Path, output: Path, num_pairs: int = 400, seed: int = 0,
         keypoints: str = "sift", power: float = 1.0) -> dict:
    """Write `output`: the weights file `weights` with a whitening learned on `num_pairs`
    synthetic pairs drawn from the training data of `config`, at `keypoints` (see
    `positive_pairs`), of strength `power` (`learn_whitening`). Returns the written dict."""
    check_power(power)   # before minutes of pair drawing (learn_whitening checks it for library callers)
    ckpt = read_small_weights(weights)
    net = load_checkpoint(weights, ckpt.get("backbone"))
    conf = merge_conf(default_conf["data"], load_config(config).get("data", {}), f"{config} data")
    sources = collect_images(conf["folders"], conf["megadepth_root"], "train", conf["builtin"])
    if not sources:
        raise ValueError(f"{config} names no training images (data.folders / data.builtin): the whitening is "
                         "learned from the training photos.")
    torch.manual_seed(seed)
    desc0, desc1 = positive_pairs(net, PairDataset(sources, conf, seed=seed), num_pairs, seed, keypoints)
    mean, projection = learn_whitening(desc0, desc1, power=power)
    net.whitening.set(mean, projection)
    model = dict(ckpt["model"])
    model.update({f"whitening.{k}": v.clone() for k, v in net.whitening.state_dict().items()})
    # A matchability head read the descriptors of the former whitening: it no longer applies.
    if any(k.startswith("matchability.") for k in model):
        logger.info("%s carries a matchability head learned on other descriptors: left out of %s; learn a new one "
                    "with `python -m hndesc_loc.train.matchability`.", weights, output)
        model = {k: v for k, v in model.items() if not k.startswith("matchability.")}
    out = {**{k: v for k, v in ckpt.items() if k != "matchability"}, "model": model,
           "whitening": {"config": str(config), "num_pairs": num_pairs, "descriptor_pairs": len(desc0),
                         "seed": seed, "keypoints": keypoints, "power": power, "from": str(weights)}}
    save_atomically(out, output)
    logger.info("Whitening learned from %d descriptor pairs (%d image pairs of %s); wrote %s.",
                len(desc0), num_pairs, config, output)
    return out


def cli(argv=None):
    p = Parser(description=__doc__)
    add_weights_tool_arguments(p, "the whitening")
    p.add_argument("--config", type=Path, required=True,
                   help="training config whose photos and synthetic changes make the pairs (the run's own)")
    p.add_argument("--num_pairs", type=int, default=400, help="synthetic image pairs to draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs")
    p.add_argument("--keypoints", choices=KEYPOINTS, default="sift",
                   help="where descriptors are taken: 'sift' (training's keypoints, for `hndesc`) or 'detector' "
                        "(the file's detection head, for `hndesc_joint`)")
    p.add_argument("--power", type=float, default=1.0,
                   help="whitening strength in [0, 1]: 1 whitens fully, smaller values shrink towards the "
                        "unwhitened descriptor (eigenvalues raised to -power/2)")
    a = p.parse_args(argv)
    if a.num_pairs < 1:
        raise ValueError("--num_pairs must be at least 1.")
    main(a.weights, a.config, a.output, a.num_pairs, a.seed, a.keypoints, a.power)


if __name__ == "__main__":
    run_cli(cli)
