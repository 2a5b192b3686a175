from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

from . import extractors
from .utils.base_model import dynamic_load


def main(conf, image_dir, export_dir, as_half=True):
    Model = dynamic_load(extractors, conf["model"]["name"])
    model = Model(conf["model"]).eval()
    path = Path(export_dir) / (conf["output"] + ".h5")
    names = sorted(p.relative_to(image_dir).as_posix() for p in Path(image_dir).rglob("*") if p.suffix in (".jpg", ".png"))
    for name in names:
        image = cv2.imread(str(Path(image_dir) / name))[:, :, ::-1].astype(np.float32)
        size = np.array(image.shape[:2][::-1])
        rmax = conf["preprocessing"].get("resize_max")
        if rmax and max(size) > rmax:
            scale = rmax / max(size)
            image = cv2.resize(image, tuple(int(round(x * scale)) for x in size), interpolation=cv2.INTER_AREA)
        tensor = torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float()[None]
        with torch.no_grad():
            pred = model({"image": tensor})
        pred = {k: v[0].cpu().numpy() for k, v in pred.items()}
        pred["image_size"] = size
        if "keypoints" in pred:
            scales = (size / np.array(tensor.shape[-2:][::-1])).astype(np.float32)
            pred["keypoints"] = (pred["keypoints"] + 0.5) * scales[None] - 0.5
            uncertainty = getattr(model, "detection_noise", 1) * scales.mean()
        if as_half:
            for k in pred:
                if pred[k].dtype == np.float32:
                    pred[k] = pred[k].astype(np.float16)
        with h5py.File(str(path), "a", libver="latest") as fd:
            grp = fd.create_group(name)
            for k, v in pred.items():
                grp.create_dataset(k, data=v)
            if "keypoints" in pred:
                grp["keypoints"].attrs["uncertainty"] = uncertainty
    return path
