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


SHARE_KEYS = ("stylized_prob", "night_prob", "transfer_prob", "lifted_night_share", "relit_night_share",
              "relit_dark_sky_share")


def check_shares(conf: dict) -> None:
    """The `data` conf's shares (probabilities) lie in [0, 1], else a one-line ValueError."""
    bad = {k: conf[k] for k in SHARE_KEYS if not 0 <= conf[k] <= 1}
    if bad:
        raise ValueError(f"data shares must lie in [0, 1], not {bad}.")


class PairDataset(torch.utils.data.Dataset):
    """Training samples (pair + keypoints in both views + validity mask), streamed: images
    are read from disk when a sample needs them and kept in a small per-process cache, so
    memory stays flat in the number of images (DataLoader workers each hold their own).

    Items are addressed by `(step, slot, index)`: the sample's randomness comes from
    `default_rng([seed, step, slot])`, so a batch depends on nothing but its step, whatever
    the number of workers or a resume in between."""

    def __init__(self, sources: list[tuple[str, str | None]], conf: dict, seed: int = 0, cache_size: int = 64):
        check_shares(conf)
        self.conf, self.sources, self.seed, self.cache_size = conf, sources, seed, cache_size
        self._cache: dict[str, np.ndarray] = {}
        self._sift = None
        self.loads = 0  # images decoded so far by this process (memory test)

    def __len__(self):
        return len(self.sources)

    def load(self, source: str) -> np.ndarray:
        if source not in self._cache:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))  # oldest first
            self._cache[source] = load_source(source, self.conf["max_image_size"])
            self.loads += 1
        return self._cache[source]

    @property
    def sift(self):
        if self._sift is None:  # created in the worker: cv2 objects do not pickle
            self._sift = cv2.SIFT_create(contrastThreshold=self.conf["sift_contrast_threshold"])
        return self._sift

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

    def sample(self, rng: np.random.Generator, index: int, appearance_fn=None) -> dict:
        """One sample of image `index`. `appearance_fn(rng, image1) -> (image1, name)` replaces the
        training appearance changes (validation uses held-out photometric families)."""
        c = self.conf
        source, styl = self.sources[index]
        style = self.load(self.sources[rng.integers(len(self.sources))][0]) if c["transfer_prob"] > 0 else None
        use_styl = styl is not None and rng.random() < c["stylized_prob"]
        pair = make_pair(rng, self.load(source), c["crop_size"], c["homography"], c["photometric"],
                         stylized=self.load(styl) if use_styl else None, style_source=style,
                         night_prob=c["night_prob"], transfer_prob=c["transfer_prob"],
                         appearance_fn=appearance_fn, lifted_night_share=c["lifted_night_share"],
                         relit_night_share=c["relit_night_share"], relit_dark_sky_share=c["relit_dark_sky_share"])
        kp0 = self.keypoints(rng, pair["image0"])
        kp1, valid = warp_inside(pair["H"], kp0, c["crop_size"])
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

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        step, slot, index = key
        return self.sample(np.random.default_rng([self.seed, step, slot]), index)

    def batch(self, rng: np.random.Generator, indices: list[int], appearance_fn=None) -> dict:
        return collate([self.sample(rng, i, appearance_fn) for i in indices])


def warp_inside(H: np.ndarray, pts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Points [N,2] of view A warped by H into a size x size view B: (points [N,2], inside [N]);
    points falling outside are set to 0 (finite: NaN would leak through masks)."""
    warped = warp_points(H, pts)
    inside = np.all(np.isfinite(warped) & (warped >= 0) & (warped <= size - 1), 1)
    return np.where(inside[:, None], warped, 0.0), inside


def warp_into_view1(H: torch.Tensor, kp0: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points kp0 [B,K,2] of view 0 through H [B,3,3] into a size x size view 1 -> (kp1 [B,K,2],
    valid [B,K]) on kp0's device; points that leave the view are set to 0 (finite: NaN would leak
    through masks)."""
    kp1 = torch.from_numpy(np.stack([warp_points(h, k) for h, k in zip(H.detach().cpu().double().numpy(),
                                                                       kp0.detach().cpu().double().numpy())]))
    kp1 = kp1.float().to(kp0.device)
    valid = (torch.isfinite(kp1) & (kp1 >= 0) & (kp1 <= size - 1)).all(-1)
    return torch.where(valid[..., None], kp1, torch.zeros_like(kp1)), valid


def collate(samples: list[dict]) -> dict:
    out = {k: torch.stack([s[k] for s in samples]) for k in ("image0", "image1", "keypoints0", "keypoints1", "valid", "H")}
    out["index"] = torch.tensor([s["index"] for s in samples])
    out["appearance"] = [s["appearance"] for s in samples]
    return out


class StepBatches(torch.utils.data.Sampler):
    """Batch keys for steps [start, stop): `[(step, slot, index), ...]` with the image indices
    of each step from `indices_of(step)`; process `rank` of `world` takes its contiguous share
    of the slots (torchrun: the global batch split in rank order)."""

    def __init__(self, start: int, stop: int, indices_of, rank: int = 0, world: int = 1):
        self.start, self.stop, self.indices_of = start, stop, indices_of
        self.rank, self.world = rank, world

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            keys = [(step, slot, i) for slot, i in enumerate(self.indices_of(step))]
            share = len(keys) // self.world
            yield keys[self.rank * share:(self.rank + 1) * share]


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
