"""Learn the context basis of a trained network (`hndesc_loc.models.context_basis`) from its
training photos, and write the weights with it.

    python -m hndesc_loc.train.context_basis --weights hndesc_loc/weights/hndesc_effnet_std.pt \\
        --image_dirs ../shared/data/sacre_coeur ../shared/data/freiburg_sequence --output W.pt --dims 32

The keypoints the extractor conf detects (its detector and resolution, no matchability
selection) are described as that conf describes them; their unit coarse contexts, pooled over
the conf's `scale_pooling`, give the uncentred principal axes (SVD) of which `--dims` are kept.
Unsupervised: no pair, no label, no held-out photo.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from .. import logger
from ..extract_features import confs as extract_confs, load_image
from ..io import list_images
from ..models.hndesc import HNDesc, describe_scale_pooled
from ..utils.base_model import merge_conf
from ..utils.cli import Parser, run as run_cli
from .trainer import add_weights_tool_arguments, read_small_weights, save_atomically

default_conf = {
    "conf": "hndesc",   # extractor conf whose detector, resolution and scale pooling are used
    "dims": 32,         # principal axes kept: the context's length in the descriptor
}


@torch.no_grad()
def image_contexts(model: HNDesc, path: Path, preprocessing: dict) -> torch.Tensor:
    """Pooled unit coarse contexts [N,C] at the detector's keypoints of one image."""
    image = load_image(path, preprocessing)["image"][None]
    kpts = model.detector({"image": image})["keypoints"]
    _, context = describe_scale_pooled(model.net, image, kpts, model.conf["scale_pooling"], context=True)
    return context[0].T


def main(weights: Path, image_dirs: list[Path], output: Path, conf: dict | None = None) -> dict:
    """Write `output`: `weights` with a context basis learned on the photos of `image_dirs`.
    Returns the record stored under 'context_basis' in the file."""
    conf = merge_conf(default_conf, conf or {}, "context basis conf")
    if conf["conf"] not in extract_confs or extract_confs[conf["conf"]]["model"]["name"] != "hndesc":
        raise ValueError(f"--conf {conf['conf']!r} is not an extractor conf of the 'hndesc' model.")
    ckpt = read_small_weights(weights)
    names = {}
    for d in image_dirs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"Image folder {d} does not exist: pass folders of training photos.")
        names[d] = list_images(Path(d))
        if not names[d]:
            raise ValueError(f"Image folder {d} holds no images: pass folders of training photos.")
    extract = extract_confs[conf["conf"]]
    model_conf = {**extract["model"], "weights": str(weights), "backbone": ckpt.get("backbone", extract["model"]["backbone"]),
                  "matchability_candidates": None, "context_weight": None}
    model = HNDesc(model_conf).eval()
    basis = model.net.context_basis
    basis.check_dims(conf["dims"])  # before minutes of extraction
    basis.reset()  # the contexts are the encoder's own, whatever basis the file carried
    contexts = [image_contexts(model, Path(d) / name, extract["preprocessing"])
                for d in image_dirs for name in tqdm(names[d], desc=f"contexts {Path(d).name}", unit="image")]
    energy = basis.fit(torch.cat(contexts), conf["dims"])
    record = {"conf": conf, "image_dirs": [str(d) for d in image_dirs], "images": len(contexts),
              "contexts": int(sum(len(c) for c in contexts)), "energy": energy, "from": str(weights)}
    state = dict(ckpt["model"])
    state.update({f"context_basis.{k}": v.clone() for k, v in basis.state_dict().items()})
    save_atomically({**ckpt, "model": state, "context_basis": record}, output)
    logger.info("Context basis: %d of %d axes hold %.1f%% of the energy of %d contexts from %d images; wrote %s.",
                conf["dims"], basis.axes.shape[0], 100 * energy, record["contexts"], len(contexts), output)
    return record


def cli(argv=None):
    p = Parser(description=__doc__)
    add_weights_tool_arguments(p, "the basis", "folders of training photos (never evaluation photos)")
    p.add_argument("--dims", type=int, default=default_conf["dims"],
                   help="principal axes kept, the context's length in the descriptor (default: %(default)s)")
    p.add_argument("--conf", default=default_conf["conf"],
                   help="extractor conf (of the 'hndesc' model) whose detector, resolution and pooling are used")
    a = p.parse_args(argv)
    main(a.weights, a.image_dirs, a.output, {"conf": a.conf, "dims": a.dims})


if __name__ == "__main__":
    run_cli(cli)
