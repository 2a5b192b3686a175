"""HNDesc as extractors: `HNDesc` (detector keypoints + HNDesc descriptors) and
`HNDescGlobal` (global retrieval descriptor)."""
import torch

from ..detectors import get_detector
from ..utils.base_model import BaseModel
from .network import load_network


class HNDesc(BaseModel):
    default_conf = {
        "backbone": "lite",                 # 'lite' (shipped weights) or 'caps' (paper's ResUNet)
        "weights": "default",               # 'default': shipped weights of the backbone, else a path
        "detector": {"name": "sift"},       # detector name + its own conf (see hndesc_loc.detectors)
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        self.net = load_network(conf["weights"], conf["backbone"])
        det = dict(conf["detector"])
        self.detector = get_detector(det.pop("name"))(det)

    @torch.no_grad()
    def _forward(self, data):
        pred = self.detector({"image": data["image"]})
        feats = self.net(data["image"])
        desc = self.net.describe(feats, pred["keypoints"].to(data["image"].device))
        return {"keypoints": pred["keypoints"], "scores": pred["scores"], "descriptors": desc}


class HNDescGlobal(BaseModel):
    default_conf = {"backbone": "lite", "weights": "default"}
    required_inputs = ["image"]

    def _init(self, conf):
        self.net = load_network(conf["weights"], conf["backbone"])

    @torch.no_grad()
    def _forward(self, data):
        return {"global_descriptor": self.net.global_descriptor(self.net(data["image"]))}


MODELS = {"hndesc": HNDesc, "hndesc_global": HNDescGlobal}


def get_model(name: str) -> type[BaseModel]:
    from .baselines import MODELS as BASELINES

    models = {**MODELS, **BASELINES}
    if name not in models:
        raise KeyError(f"Unknown model '{name}' in conf['model']['name']; available: {sorted(models)}.")
    return models[name]
