"""HNDesc as extractors: `HNDesc` (detector keypoints + HNDesc descriptors), `HNDescJoint`
(HNDesc's own detection head + descriptors, one forward pass) and `HNDescGlobal` (global
retrieval descriptor)."""
import torch

from .. import registry
from ..utils.base_model import BaseModel
from .detection import detect_keypoints
from .network import load_network


class HNDesc(BaseModel):
    default_conf = {
        "backbone": "lite",                 # 'lite' (shipped weights) or 'caps' (paper's ResUNet)
        "weights": "default",               # 'default': shipped weights of the backbone, else a path
        "detector": {"name": "sift"},       # detector name + its own conf (see hndesc_loc.detectors)
        "descriptor": "fine",               # caps only: 'fine' (HNDesc) or 'coarse_fine' (CAPS release, 256-d)
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        if conf["weights"] is None:
            raise ValueError(f"model.weights is required for backbone '{conf['backbone']}' in this conf: pass the "
                             "release checkpoint, e.g. model.weights=/path/to/hndesc_caps_MP_st.pth.")
        self.net = load_network(conf["weights"], conf["backbone"])
        if conf["descriptor"] != "fine":
            if conf["backbone"] != "caps":
                raise ValueError(f"model.descriptor='{conf['descriptor']}' needs the caps backbone.")
            self.net.backbone.descriptor = conf["descriptor"]
        det = dict(conf["detector"])
        self.detector = registry.get("detector", det.pop("name"))(det)

    @torch.no_grad()
    def _forward(self, data):
        pred = self.detector({"image": data["image"]})
        feats = self.net(data["image"])
        desc = self.net.describe(feats, pred["keypoints"].to(data["image"].device))
        return {"keypoints": pred["keypoints"], "scores": pred["scores"], "descriptors": desc}


class HNDescJoint(BaseModel):
    """Detect and describe in one forward pass: keypoints are the local maxima of
    repeatability x reliability from the detection head. Also usable as the detector
    'hndesc' of other models (it then returns its descriptors too, like DISK)."""

    default_conf = {
        "backbone": "lite",
        "weights": "default",          # 'default': shipped joint weights (descriptor + detection head)
        "max_keypoints": 4096,         # strongest N after NMS (-1: all)
        "nms_radius": 1,               # NMS window 2r+1, also the soft-argmax window (r=2: MMA@3 -6 pts)
        "detection_threshold": 0.01,   # on repeatability x reliability (both in [0,1])
        "remove_borders": 4,           # px; the maps are unreliable where convolutions see padding
        "refine_temperature": 0.2,     # soft-argmax temperature on scores (None: integer pixels, MMA@1 -6 pts)
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        self.net = load_network(conf["weights"], conf["backbone"], detector=True)

    @torch.no_grad()
    def _forward(self, data):
        image = data["image"]
        feats = self.net(image)
        maps = self.net.detection_maps(feats, image.shape[-2:])
        c = self.conf
        kpts, scores = detect_keypoints(maps["repeatability"] * maps["reliability"], c["nms_radius"],
                                        c["detection_threshold"], c["max_keypoints"], c["remove_borders"],
                                        c["refine_temperature"])
        n = min(len(k) for k in kpts)  # batches are of one image in practice
        kpts = torch.stack([k[:n] for k in kpts])
        return {"keypoints": kpts, "scores": torch.stack([s[:n] for s in scores]),
                "descriptors": self.net.describe(feats, kpts)}


class HNDescGlobal(BaseModel):
    default_conf = {"backbone": "lite", "weights": "default"}
    required_inputs = ["image"]

    def _init(self, conf):
        self.net = load_network(conf["weights"], conf["backbone"])

    @torch.no_grad()
    def _forward(self, data):
        return {"global_descriptor": self.net.global_descriptor(self.net(data["image"]))}
