"""HNDesc network (backbone + global head) and checkpoint loading."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from .context_basis import ContextBasis
from .detection import DetectionHead
from .global_head import GlobalHead
from .matchability import MatchabilityHead
from .sampling import sample_features
from .whitening import DescriptorWhitening

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHIPPED_WEIGHTS = {"lite": WEIGHTS_DIR / "hndesc_lite.pt", "lite_wide": WEIGHTS_DIR / "hndesc_lite_wide.pt",
                   "caps": WEIGHTS_DIR / "hndesc_caps.pt", "effnet": WEIGHTS_DIR / "hndesc_effnet.pt",
                   "effnet_std": WEIGHTS_DIR / "hndesc_effnet_std.pt"}
# Same descriptor weights plus a trained detection head (`hndesc_joint`).
SHIPPED_JOINT_WEIGHTS = {"lite": WEIGHTS_DIR / "hndesc_lite_joint.pt",
                         "lite_wide": WEIGHTS_DIR / "hndesc_lite_wide_joint.pt",
                         "caps": WEIGHTS_DIR / "hndesc_caps_joint.pt",
                         "effnet": WEIGHTS_DIR / "hndesc_effnet_joint.pt",
                         "effnet_std": WEIGHTS_DIR / "hndesc_effnet_std_joint.pt"}
# Modules learned after training by the `hndesc_loc.train` tools of the same names: optional in a
# weights file (inactive when absent), kept float32 in fp16 exports, reset when training resumes
# on the network they were learned for.
LEARNED_AFTER_TRAINING = ("whitening", "matchability", "context_basis")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HNDescNet(nn.Module):
    """Backbone (local descriptors) + global head + detection head, on RGB images in [0,1].

    `has_trained_detector` is False when the loaded weights carry no detection head
    (descriptor-only checkpoints, release checkpoints): the head then stays random.
    `whitening` (learned after training, `hndesc_loc.train.whitening`) is applied to every local
    descriptor when the weights carry one, and is the identity otherwise. `matchability`
    (learned after training, `hndesc_loc.train.matchability`) scores keypoints for
    `HNDesc`'s keypoint selection; inactive in files without one. `context_basis` (learned after
    training, `hndesc_loc.train.context_basis`) shortens the coarse context of coarse-fine
    descriptors; the whole context in files without one."""

    def __init__(self, backbone: str = "lite"):
        super().__init__()
        self.backbone = registry.get("backbone", backbone)()
        self.backbone_name = backbone
        self.global_head = GlobalHead(self.backbone.coarse_dim)
        self.detection_head = DetectionHead(self.backbone.detection_inputs)
        self.whitening = DescriptorWhitening(self.backbone.descriptor_dim)
        self.matchability = MatchabilityHead(self.backbone.descriptor_dim, self.backbone.coarse_dim)
        self.context_basis = ContextBasis(self.backbone.coarse_dim)
        self.has_trained_detector = False
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict:
        """image [B,3,H,W] RGB in [0,1] -> backbone feature dict."""
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        return self.backbone((image - self.mean) / self.std)

    def fuse_for_inference(self) -> "HNDescNet":
        """For extraction: the backbone's own speed-up when it has one (`EffNetBackbone.fuse_for_inference`:
        BatchNorms folded, channels-last maps), the same function to float rounding; other backbones
        unchanged. A fused backbone refuses training. Returns self."""
        fuse = getattr(self.backbone, "fuse_for_inference", None)
        if fuse is not None:
            fuse()
        return self

    def describe(self, feats: dict, keypoints: torch.Tensor) -> torch.Tensor:
        """feats of `forward`, keypoints [B,N,2] (pixels) -> unit descriptors [B,D,N]."""
        return self.whitening(self.backbone.describe(feats, keypoints))

    def matchability_inputs(self, feats: dict, desc: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """feats of `forward`, descriptors [B,D,N] of keypoints [B,N,2] (pixels) -> the matchability
        head's inputs [B,N,D+C] (what it is trained on and what it scores)."""
        return self.matchability.inputs(desc, self.context(feats, keypoints))

    def context(self, feats: dict, keypoints: torch.Tensor) -> torch.Tensor:
        """feats of `forward`, keypoints [B,N,2] (pixels) -> the unit coarse encoder feature at each
        keypoint [B,C,N] (stride `backbone.coarse_stride`: context of a few tens of pixels)."""
        return F.normalize(sample_features(feats["coarse"], keypoints, self.backbone.coarse_stride), dim=1)

    def matchability_logits(self, feats: dict, desc: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """As `matchability_inputs` -> logits [B,N] of the learned matchability head."""
        if not bool(self.matchability.active):
            raise ValueError("these weights carry no matchability head: learn one with "
                             "`python -m hndesc_loc.train.matchability` or set model.matchability_candidates=null.")
        return self.matchability(self.matchability_inputs(feats, desc, keypoints))

    def global_descriptor(self, feats: dict) -> torch.Tensor:
        return self.global_head(feats["coarse"])

    def detection_maps(self, feats: dict, image_size: tuple[int, int]) -> dict:
        """{'repeatability', 'reliability'} probabilities [B,1,H,W] for an image of size (H, W)."""
        return {k: torch.sigmoid(v) for k, v in self.detection_head(feats, image_size).items()}


def _extract_state_dict(ckpt) -> dict:
    for key in ("model", "state_dict"):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise ValueError("checkpoint holds no state dict (expected a 'model' or 'state_dict' entry)")


def without_untrained_heads(state: dict, config: dict | None) -> dict:
    """The state dict less the detection head when `config` (the training conf stored with a
    checkpoint) is of the descriptor stage: that stage never trains the head, its weights there
    are an initialisation and must not pass for a trained detector."""
    if isinstance(config, dict) and config.get("stage") == "descriptor":
        return {k: v for k, v in state.items() if not k.startswith("detection_head.")}
    return state


def load_checkpoint(path: str | Path, backbone: str | None = None) -> HNDescNet:
    """Load our checkpoints (`{'model', 'backbone', ...}`), HNDesc release checkpoints
    (backbone keys under `state_dict`) or CAPS release checkpoints (same with `net.`).

    Release checkpoints carry no global head: it stays at its initialisation (GeM,
    identity whitening)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {path} does not exist. Ship-trained lite weights live in hndesc_loc/weights/; "
            "train others with `python -m hndesc_loc.train` or pass the path of an HNDesc/CAPS release checkpoint."
        )
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    try:
        state = _extract_state_dict(ckpt)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if state and all(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items()}
    state = without_untrained_heads(state, ckpt.get("config") if isinstance(ckpt, dict) else None)
    saved = ckpt.get("backbone") if isinstance(ckpt, dict) else None
    if backbone is not None and saved is not None and saved != backbone:
        raise ValueError(f"{path} holds a '{saved}' network but '{backbone}' was asked for: "
                         f"pass model.backbone={saved}.")
    if backbone is None:
        backbone = saved or "caps"
    net = HNDescNet(backbone)
    full = any(k.startswith("backbone.") for k in state)
    target = net if full else net.backbone
    result = target.load_state_dict(state, strict=False)
    # Descriptor-only checkpoints have no detection head: allowed, and recorded. Files without a
    # module of LEARNED_AFTER_TRAINING leave it inactive.
    missing = [k for k in result.missing_keys
               if not k.startswith(("detection_head.", *(f"{m}." for m in LEARNED_AFTER_TRAINING)))]
    net.has_trained_detector = full and not any(k.startswith("detection_head.") for k in result.missing_keys)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"Checkpoint {path} does not fit the '{backbone}' HNDesc network.\n"
            f"  missing keys ({len(missing)}): {missing[:20]}\n"
            f"  unexpected keys ({len(result.unexpected_keys)}): {result.unexpected_keys[:20]}"
        )
    return net.eval()


def resolve_weights(weights: str | Path | None, backbone: str, detector: bool = False) -> Path:
    """The weights file a model conf names: `weights` 'default' (or None) is the shipped file
    of the backbone (with a trained detection head when `detector`); anything else a path."""
    if weights in (None, "default"):
        return (SHIPPED_JOINT_WEIGHTS if detector else SHIPPED_WEIGHTS)[backbone]
    return Path(weights)


def load_network(weights: str | Path, backbone: str, detector: bool = False) -> HNDescNet:
    """`weights='default'` is the shipped file for the backbone (with a trained detection head
    when `detector`); anything else is a path."""
    if weights in (None, "default"):
        path = resolve_weights(weights, backbone, detector)
        config = f"configs/train/{backbone}{'_joint' if detector else ''}.yaml"
        if not (WEIGHTS_DIR.parent.parent / config).is_file():
            config = f"configs/train/effnet{'_joint' if detector else ''}.yaml backbone={backbone}"
        if not path.is_file():
            raise FileNotFoundError(
                f"No shipped weights for backbone '{backbone}' ({path} is absent). "
                f"Train it with `python -m hndesc_loc.train --config {config}` and pass "
                "model.weights=<checkpoint>, or use the 'hndesc' conf (its backbone has shipped weights)."
            )
        weights = path
    net = load_checkpoint(weights, backbone)
    if detector and not net.has_trained_detector:
        raise ValueError(
            f"Weights {weights} carry no trained detection head. Train one with "
            f"`python -m hndesc_loc.train --config configs/train/{backbone}_joint.yaml` or use weights='default'.")
    return net
