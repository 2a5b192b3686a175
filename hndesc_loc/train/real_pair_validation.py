"""Real-pair scores of a network during training (checkpoint selection on data training never
sees): EVD and WxBS mAA with SIFT keypoints as the `hndesc` conf detects them and the network's
descriptors, and the detector-free annotated-point retrieval on WxBS (top-10), all with the
protocols of `hndesc_loc.real_pairs`. The mAAs pass or fail whole pairs (17 of them); the
retrieval grades the descriptor on ~90 annotated points, so it moves before they do. The robust
fits are averaged over MAGSAC_SEEDS seeds: one draw decides a hard pair."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .. import real_pairs
from .. import registry
from ..extract_features import load_image
from ..models.hndesc import describe_scale_pooled


MAGSAC_SEEDS = 5


@lru_cache(maxsize=4)
def _pairs(root: str):
    return real_pairs.list_evd(Path(root) / "evd"), real_pairs.list_wxbs(Path(root) / "wxbs_val")


@torch.no_grad()
def real_pair_scores(net, root: Path, size: int, device: torch.device, scale_pooling=(1.0,)) -> dict:
    """{'evd_maa', 'wxbs_maa', 'points_top10', 'real_score' (the mean of the three)} of `net` at
    longest side `size`, descriptors pooled over `scale_pooling` (`describe_scale_pooled`)."""
    evd, wxbs = _pairs(str(root))
    detector = registry.get("detector", "sift")({"max_keypoints": 2048})

    def features(path: Path) -> dict:
        data = load_image(path, {"resize_max": size})
        image = data["image"][None]
        kp = detector({"image": image})["keypoints"]
        desc = describe_scale_pooled(net, image.to(device), kp.to(device), scale_pooling)[0].float().cpu().numpy()
        scale = (data["original_size"] / np.array(image.shape[-2:][::-1])).astype(np.float32)
        return {"keypoints": (kp[0].numpy() + 0.5) * scale - 0.5, "descriptors": desc,
                "image_size": data["original_size"]}

    def describe(path: Path, points: np.ndarray) -> np.ndarray:
        image, kp = real_pairs.load_scaled(path, {"resize_max": size}, points)
        return describe_scale_pooled(net, image.to(device), kp.to(device), scale_pooling)[0].float().cpu().numpy()

    r = real_pairs.evaluate(features, evd, wxbs, seeds=range(MAGSAC_SEEDS), progress=False)
    top10 = real_pairs.annotated_point_retrieval(describe, wxbs, progress=False)["top10"]
    return {"evd_maa": r["evd_maa"], "wxbs_maa": r["wxbs_maa"], "points_top10": top10,
            "real_score": (r["evd_maa"] + r["wxbs_maa"] + top10) / 3}
