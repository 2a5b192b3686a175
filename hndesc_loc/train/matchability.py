"""Learn the matchability head of a trained network (`hndesc_loc.models.matchability`) from
structure-from-motion models of its training photos, and write the weights with it.

    python -m hndesc_loc.train.matchability --weights hndesc_loc/weights/hndesc_effnet_std.pt \\
        --image_dirs ../shared/data/sacre_coeur ../shared/data/freiburg_sequence --output W.pt

Each folder is reconstructed with COLMAP's own SIFT pipeline (`train.sfm_pairs.reconstruct_sift`);
the keypoints the extractor conf proposes (its detector, `--candidates` of them, at its
resolution) that lie within `--radius` px of an observation of a 3D point are the matched ones,
the others the unmatched ones (Hartmann, Havlena, Schindler, "Predicting Matchability", CVPR
2014, label SIFT keypoints the same way). Features: the conf's descriptor (scale pooling included)
and the encoder's coarse features at the keypoint. No annotation and no held-out photo is seen.

With `--night_renders R` a matched keypoint stays a positive only if our descriptor carries it
across day and night: each photo is rendered R times at night (the training night models of
`train.synthesis`, never the held-out families), and for every other photo of the folder that sees
the keypoint's 3D point, its day descriptor's mutual nearest neighbour among that photo's night
keypoints must be a keypoint of the same 3D point, in at least `--night_survival` of the trials.
Why: SfM of day photos says where a photo is matchable by day to SIFT; a day-night pair needs the
points whose descriptor also holds across a real viewpoint change at night.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import logger
from ..extract_features import confs as extract_confs, load_image, parse_overrides
from ..io import list_images
from ..models.hndesc import HNDesc, describe_keypoints
from ..models.matchability import fit_matchability
from ..utils.base_model import merge_conf
from ..utils.cli import Parser, run as run_cli
from .sfm_pairs import reconstruct_sift
from .synthesis import lift_night, relight_night, render_night
from .trainer import add_weights_tool_arguments, read_small_weights, save_atomically

default_conf = {
    "conf": "hndesc",      # extractor conf whose detector, resolution and descriptor pooling are used
    "overrides": [],       # `key.sub=value` changes of that conf, as extract_features takes them (e.g.
                           # "model.scale_pooling=[1.4142,1.0,0.5]": a head for another pooling)
    "candidates": 16384,   # keypoints proposed per image (the extractor's model.matchability_candidates)
    "radius": 3.0,         # px at the extraction resolution: a keypoint this near a 3D point's observation is matched
    "epochs": 300,         # full-batch Adam steps of the head
    "seed": 0,
    "num_threads": 1,      # COLMAP threads; 1 reproduces exactly
    "night_renders": 0,    # night renderings per photo for day-night labels (0: SfM labels alone)
    "night_survival": 0.5,  # share of day-to-night trials a positive must pass (with night_renders > 0)
}


def point_ids(keypoints: np.ndarray, observations: np.ndarray, ids: np.ndarray, radius: float) -> np.ndarray:
    """keypoints [N,2], observations [M,2] of 3D points ids [M] -> [N] int64: the id of the nearest
    observation within `radius`, -1 where none is."""
    out = np.full(len(keypoints), -1, np.int64)
    if len(keypoints) == 0 or len(observations) == 0:
        return out
    d = torch.cdist(torch.from_numpy(keypoints).double(), torch.from_numpy(observations).double())
    dist, nearest = d.min(1)
    near = (dist <= radius).numpy()
    out[near] = np.asarray(ids, np.int64)[nearest.numpy()[near]]
    return out


def observations_at(image: "pycolmap.Image", scale: np.ndarray) -> np.ndarray:  # noqa: F821
    """Positions [M,2] of the image's observations of 3D points, moved to an image resized by
    `scale` [2] (x, y) and to this project's pixel convention (COLMAP's is shifted by half a pixel)."""
    xy = np.array([p.xy for p in image.points2D if p.has_point3D()], np.float64).reshape(-1, 2)
    return xy * scale[None] - 0.5


def observed_point_ids(image: "pycolmap.Image") -> np.ndarray:  # noqa: F821
    """3D point ids [M] of the image's observations, in the order of `observations_at`."""
    return np.array([p.point3D_id for p in image.points2D if p.has_point3D()], np.int64)


def draw_night(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """One night rendering of img [H,W,3] in [0,1] by a training night model, drawn in turn:
    a dark exposure lifted by the camera (`render_night` + `lift_night`) or floodlight relighting
    with the sky darkened half the time (`relight_night`)."""
    if rng.random() < 0.5:
        return lift_night(rng, render_night(rng, img))
    return relight_night(rng, img, dark_sky_prob=0.5)


def day_night_trials(day: torch.Tensor, ids_day: np.ndarray, night: torch.Tensor,
                     ids_night: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors day [D,N] of one photo's keypoints (3D point ids [N], -1: none) against night
    [D,M] of another photo's keypoints (ids [M]) -> (tried [N] bool, passed [N] bool): a keypoint
    is tried when its 3D point has a keypoint in the other photo, and passes when its mutual
    nearest neighbour there is a keypoint of the same 3D point."""
    tried = (ids_day >= 0) & np.isin(ids_day, ids_night[ids_night >= 0])
    passed = np.zeros(len(ids_day), bool)
    rows = np.flatnonzero(tried)
    if len(rows):
        day, night = day.float(), night.float()
        nn = (day[:, rows].T @ night).argmax(1)
        back = (night[:, nn].T @ day).argmax(1).numpy()
        nn = nn.numpy()
        passed[rows] = (back == rows) & (ids_night[nn] == ids_day[rows])
    return tried, passed


def night_survival(day: list[torch.Tensor], nights: list[list[torch.Tensor]], ids: list[np.ndarray]) -> list[np.ndarray]:
    """Per photo a of one scene: day descriptors day[a] [D,N_a], those of its night renderings
    nights[a][r] [D,N_a] and the keypoints' 3D point ids ids[a] [N_a] -> [N_a] share of the trials
    (every other photo b, every rendering of b; `day_night_trials`) passed, NaN where never tried."""
    out = []
    for a in range(len(day)):
        tried, passed = np.zeros(len(ids[a])), np.zeros(len(ids[a]))
        for b in range(len(day)):
            if b == a:
                continue
            for night in nights[b]:
                t, p = day_night_trials(day[a], ids[a], night, ids[b])
                tried += t
                passed += p
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(tried > 0, passed / np.maximum(tried, 1), np.nan))
    return out


@torch.no_grad()
def image_examples(model: HNDesc, path: Path, preprocessing: dict, image: "pycolmap.Image",  # noqa: F821
                   radius: float, night_renders: int = 0, rng: np.random.Generator | None = None) -> dict:
    """The candidate keypoints of one registered image: {'features': head inputs [N,D+C], 'ids':
    their 3D point ids [N] (-1: unmatched)}, and with night_renders > 0 the conf's descriptors of
    the photo ('day' [D',N]) and of its night renderings ('nights', R x [D',N])."""
    data = load_image(path, preprocessing)
    tensor = data["image"][None]
    scale = np.array(tensor.shape[-2:][::-1], np.float64) / data["original_size"]
    kpts = model.detector({"image": tensor})["keypoints"]
    feats = model.net(tensor)
    # One description serves both: the head reads the fine part, the night labels the conf's whole descriptor.
    desc, fine = describe_keypoints(model.net, tensor, kpts, model.conf, feats)
    out = {"features": model.net.matchability_inputs(feats, fine, kpts)[0],
           "ids": point_ids(kpts[0].numpy(), observations_at(image, scale), observed_point_ids(image), radius)}
    if night_renders > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        out["day"] = desc[0].half()
        img = tensor[0].permute(1, 2, 0).numpy()
        out["nights"] = [model.describe(torch.from_numpy(np.ascontiguousarray(draw_night(rng, img)))
                                        .permute(2, 0, 1)[None].float(), kpts)[0].half() for _ in range(night_renders)]
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of scores [N] for boolean labels [N] (rank statistic)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(len(scores))
    pos = labels.astype(bool)
    return float((ranks[pos].mean() - (pos.sum() - 1) / 2) / (~pos).sum())


def main(weights: Path, image_dirs: list[Path], output: Path, conf: dict | None = None) -> dict:
    """Write `output`: `weights` with a matchability head learned on SfM models of `image_dirs`.
    Returns the record stored under 'matchability' in the file."""
    conf = merge_conf(default_conf, conf or {}, "matchability conf")
    if conf["candidates"] < 1 or conf["radius"] <= 0 or conf["epochs"] < 1:
        raise ValueError("candidates and epochs must be >= 1 and radius > 0.")
    if conf["night_renders"] < 0 or not 0 < conf["night_survival"] <= 1:
        raise ValueError("night_renders must be >= 0 and night_survival in (0, 1].")
    if conf["conf"] not in extract_confs:
        raise ValueError(f"--conf {conf['conf']!r} is not an extractor conf (one of {sorted(extract_confs)}).")
    extract = parse_overrides(extract_confs[conf["conf"]], list(conf["overrides"]))
    if extract["model"]["name"] != "hndesc":
        raise ValueError(f"--conf {conf['conf']!r} describes with the {extract['model']['name']!r} model; the head "
                         "scores descriptors of the 'hndesc' model: pass an 'hndesc' conf (e.g. --conf hndesc).")
    ckpt = read_small_weights(weights)
    for d in image_dirs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"Image folder {d} does not exist: pass folders of overlapping training photos.")
    model_conf = {**extract["model"], "weights": str(weights), "backbone": ckpt.get("backbone", extract["model"]["backbone"]),
                  "matchability_candidates": None,
                  "detector": {**extract["model"]["detector"], "max_keypoints": conf["candidates"]}}
    model = HNDesc(model_conf).eval()
    features, labels, folds, per_dir = [], [], [], {}
    rng = np.random.default_rng(conf["seed"])
    for d in image_dirs:
        with tempfile.TemporaryDirectory() as work:
            logger.info("Reconstructing %s with COLMAP's SIFT pipeline.", d)
            rec = reconstruct_sift(Path(d), Path(work), conf["num_threads"])
        # Registered images only: one without a pose has no 3D point, and all its keypoints would
        # pass for unmatched.
        images = sorted((rec.images[i] for i in rec.reg_image_ids()), key=lambda im: im.name)
        left_out = sorted(set(list_images(Path(d))) - {im.name for im in images})
        if left_out:
            logger.warning("%d image(s) of %s are not in the COLMAP model (unreadable, or sharing too little with "
                           "the others) and give no examples: %s", len(left_out), d, ", ".join(left_out[:10]))
        examples = [image_examples(model, Path(d) / im.name, extract["preprocessing"], im, conf["radius"],
                                   conf["night_renders"], rng)
                    for im in tqdm(images, desc=f"matchability examples {Path(d).name}", unit="image")]
        folder = [e["ids"] >= 0 for e in examples]
        per_dir[str(d)] = {"registered": len(images), "keypoints": int(sum(len(y) for y in folder)),
                           "matched": int(sum(y.sum() for y in folder))}
        if conf["night_renders"] > 0:
            survival = night_survival([e["day"] for e in examples], [e["nights"] for e in examples],
                                      [e["ids"] for e in examples])
            # Never tried (its 3D point has no keypoint in another photo): the SfM label stands.
            folder = [y & ~(s < conf["night_survival"]) for y, s in zip(folder, survival)]
            per_dir[str(d)]["matched_day_night"] = int(sum(y.sum() for y in folder))
        for e, y in zip(examples, folder):
            features.append(e["features"])
            labels.append(y)
            folds.append(len(folds) % 4)
    head = model.net.matchability
    pooling = model.conf["scale_pooling"]
    # Held-out estimate first: every fourth registered image left out of one fit.
    fold = np.array(folds)
    held = [i for i in range(len(labels)) if fold[i] == 0]
    train = [i for i in range(len(labels)) if fold[i] != 0]
    fit_matchability(head, torch.cat([features[i] for i in train]), torch.from_numpy(np.concatenate([labels[i] for i in train])),
                     pooling, conf["epochs"], seed=conf["seed"])
    with torch.no_grad():
        held_scores = head(torch.cat([features[i] for i in held])).numpy()
    held_auc = auc(held_scores, np.concatenate([labels[i] for i in held]))
    x, y = torch.cat(features), torch.from_numpy(np.concatenate(labels))
    loss = fit_matchability(head, x, y, pooling, conf["epochs"], seed=conf["seed"])
    record = {"conf": conf, "image_dirs": [str(d) for d in image_dirs], "folders": per_dir,
              "examples": len(y), "matched": int(y.sum()), "loss": loss, "held_out_auc": held_auc,
              "scale_pooling": list(pooling), "from": str(weights)}
    state = dict(ckpt["model"])
    state.update({f"matchability.{k}": v.clone() for k, v in head.state_dict().items()})
    out = {**ckpt, "model": state, "matchability": record}
    save_atomically(out, output)
    logger.info("Matchability head from %d keypoints (%d matched) of %d images; held-out image AUC %.3f; wrote %s.",
                len(y), int(y.sum()), len(labels), held_auc, output)
    return record


def cli(argv=None):
    p = Parser(description=__doc__)
    add_weights_tool_arguments(p, "the head",
                               "folders of overlapping training photos, one scene each (never evaluation photos)")
    p.add_argument("--conf", default=default_conf["conf"],
                   help="extractor conf (of the 'hndesc' model) whose detector, resolution and pooling are used")
    p.add_argument("--overrides", nargs="+", default=[],
                   help="changes of that conf as key.sub=value, e.g. --overrides model.scale_pooling=[1.4142,1.0,0.5]")
    p.add_argument("--candidates", type=int, default=default_conf["candidates"],
                   help="keypoints proposed per image, as the extractor's model.matchability_candidates")
    p.add_argument("--radius", type=float, default=default_conf["radius"],
                   help="px at the extraction resolution within which a keypoint counts as a 3D point's observation")
    p.add_argument("--epochs", type=int, default=default_conf["epochs"], help="full-batch training steps of the head")
    p.add_argument("--seed", type=int, default=default_conf["seed"], help="seed of the head's initialisation")
    p.add_argument("--num_threads", type=int, default=default_conf["num_threads"],
                   help="COLMAP threads (1, the default, reproduces the shipped head exactly)")
    p.add_argument("--night_renders", type=int, default=default_conf["night_renders"],
                   help="night renderings per photo; > 0 keeps as positives only the matched keypoints our descriptor "
                        "carries from day to night across the folder's photos (0, the default: SfM labels alone)")
    p.add_argument("--night_survival", type=float, default=default_conf["night_survival"],
                   help="share of the day-to-night trials a positive must pass (used with --night_renders)")
    a = p.parse_args(argv)
    main(a.weights, a.image_dirs, a.output, {"conf": a.conf, "overrides": a.overrides, "candidates": a.candidates, "radius": a.radius,
                                            "epochs": a.epochs, "seed": a.seed, "num_threads": a.num_threads,
                                            "night_renders": a.night_renders, "night_survival": a.night_survival})


if __name__ == "__main__":
    run_cli(cli)
