"""Training data: image folders (or the paper's MegaDepth / MegaDepth-stylized layout),
synthetic pairs with keypoints, and batch composition (random or coarse-to-fine)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ..io import IMAGE_EXTENSIONS, read_image
from .synthesis import make_pair, warp_points


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def collect_images(folders: list[str], megadepth_root: str | None = None, split: str = "train",
                   builtin: list[str] | None = None) -> list[tuple[str, str | None]]:
    """List (image, stylized image or None) sources.

    folders: plain image folders. megadepth_root: a root with `MegaDepth/{split}` and
    optionally `MegaDepth-stylized/{split}` holding the same relative file names.
    builtin: names of scikit-image sample photos (`skimage:<name>`), shipped with that package.
    """
    items: list[tuple[str, str | None]] = []
    for folder in folders or []:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"Training folder {folder} does not exist: fix data.folders in the config.")
        found = _images_in(folder)
        if not found:
            raise ValueError(f"Training folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        items += [(str(p), None) for p in found]
    if megadepth_root:
        base = Path(megadepth_root) / "MegaDepth" / split
        if not base.is_dir():
            raise FileNotFoundError(f"{base} does not exist: expected the layout <root>/MegaDepth/{{train,test}}.")
        styl = Path(megadepth_root) / "MegaDepth-stylized" / split
        for p in _images_in(base):
            s = styl / p.relative_to(base)
            items.append((str(p), str(s) if s.is_file() else None))
    items += [(f"skimage:{n}", None) for n in builtin or []]
    if not items:
        raise ValueError("No training images: set data.folders, data.megadepth_root or data.builtin.")
    return items


def load_source(source: str, max_size: int) -> np.ndarray:
    """RGB float32 [H,W,3] in [0,1], longest side at most max_size."""
    if source.startswith("skimage:"):
        import skimage.data

        img = getattr(skimage.data, source.split(":", 1)[1])()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, -1)
        img = np.ascontiguousarray(img[..., :3])
    else:
        img = read_image(Path(source))
    img = img.astype(np.float32) / 255.0
    s = max_size / max(img.shape[:2])
    if s < 1:
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return img


class PairSampler:
    """Makes training samples: pair + keypoints in both views + validity mask."""

    def __init__(self, sources: list[tuple[str, str | None]], conf: dict):
        self.conf = conf
        self.sources = sources
        self.images = [load_source(s, conf["max_image_size"]) for s, _ in sources]
        self.stylized = [load_source(t, conf["max_image_size"]) if t else None for _, t in sources]
        self.sift = cv2.SIFT_create(contrastThreshold=conf["sift_contrast_threshold"])

    def __len__(self):
        return len(self.images)

    def keypoints(self, rng: np.random.Generator, image0: np.ndarray) -> np.ndarray:
        """Detector keypoints on view A, topped up with random points, exactly K of them."""
        k, size, border = self.conf["num_keypoints"], self.conf["crop_size"], 8
        gray = (cv2.cvtColor(image0, cv2.COLOR_RGB2GRAY) * 255).astype(np.uint8)
        kps = sorted(self.sift.detect(gray, None), key=lambda p: -p.response)
        pts = np.array([p.pt for p in kps], np.float64).reshape(-1, 2)
        inside = np.all((pts >= border) & (pts <= size - 1 - border), 1)
        pts = np.unique(np.round(pts[inside], 1), axis=0)
        if len(pts) > k:
            pts = pts[rng.choice(len(pts), k, replace=False)]
        if len(pts) < k:
            pts = np.concatenate([pts, rng.uniform(border, size - 1 - border, (k - len(pts), 2))])
        return pts

    def sample(self, rng: np.random.Generator, index: int) -> dict:
        c = self.conf
        style = self.images[rng.integers(len(self.images))] if c["transfer_prob"] > 0 else None
        pair = make_pair(rng, self.images[index], c["crop_size"], c["homography"], c["photometric"],
                         stylized=self.stylized[index], style_source=style,
                         night_prob=c["night_prob"], transfer_prob=c["transfer_prob"])
        kp0 = self.keypoints(rng, pair["image0"])
        kp1 = warp_points(pair["H"], kp0)
        valid = np.all((kp1 >= 0) & (kp1 <= c["crop_size"] - 1), 1)
        return {
            "image0": torch.from_numpy(pair["image0"]).permute(2, 0, 1),
            "image1": torch.from_numpy(pair["image1"]).permute(2, 0, 1),
            "keypoints0": torch.from_numpy(kp0).float(),
            "keypoints1": torch.from_numpy(kp1).float(),
            "valid": torch.from_numpy(valid),
            "H": torch.from_numpy(pair["H"]).float(),
            "index": index,
            "appearance": pair["appearance"],
        }

    def batch(self, rng: np.random.Generator, indices: list[int]) -> dict:
        samples = [self.sample(rng, i) for i in indices]
        out = {k: torch.stack([s[k] for s in samples]) for k in ("image0", "image1", "keypoints0", "keypoints1", "valid", "H")}
        out["index"] = torch.tensor([s["index"] for s in samples])
        out["appearance"] = [s["appearance"] for s in samples]
        return out


def knn_batches(rng: np.random.Generator, neighbours: np.ndarray, batch_size: int) -> list[int]:
    """Coarse-to-fine batch: a random seed image and images close to it in global-descriptor
    space (neighbours [N,k] sorted by similarity), so in-batch negatives are hard."""
    seed = int(rng.integers(len(neighbours)))
    pool = [seed] + [int(j) for j in neighbours[seed] if j != seed]
    batch = pool[:batch_size]
    while len(batch) < batch_size:  # fewer neighbours than the batch: repeat (different crops)
        batch.append(pool[len(batch) % len(pool)])
    return batch


def knn_graph(global_desc: np.ndarray, k: int) -> np.ndarray:
    """Indices [N,k] of the k most similar images to each one (itself excluded)."""
    sim = global_desc @ global_desc.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(sim) - 1)
    return np.argsort(-sim, axis=1)[:, :k]
