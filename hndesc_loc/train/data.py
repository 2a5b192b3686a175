"""Training data: image folders (or the paper's MegaDepth / MegaDepth-stylized layout),
synthetic pairs with keypoints, and batch composition (random or coarse-to-fine)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ..io import IMAGE_EXTENSIONS, read_image, read_sfm_pairs
from .synthesis import change_appearance, make_pair, warp_points


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
              "relit_dark_sky_share", "sfm_pair_share")


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
        self.partners = sfm_partners(sources, conf["sfm_pairs"]) if conf["sfm_pair_share"] > 0 else {}

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
        if appearance_fn is None and index in self.partners and rng.random() < c["sfm_pair_share"]:
            real = self.sfm_sample(rng, index)
            if real is not None:
                return real
        source, styl = self.sources[index]
        style = self.style_source(rng)
        use_styl = styl is not None and rng.random() < c["stylized_prob"]
        pair = make_pair(rng, self.load(source), c["crop_size"], c["homography"], c["photometric"],
                         stylized=self.load(styl) if use_styl else None, style_source=style,
                         night_prob=c["night_prob"], transfer_prob=c["transfer_prob"],
                         appearance_fn=appearance_fn, lifted_night_share=c["lifted_night_share"],
                         relit_night_share=c["relit_night_share"], relit_dark_sky_share=c["relit_dark_sky_share"])
        kp0 = self.keypoints(rng, pair["image0"])
        kp1, valid = warp_inside(pair["H"], kp0, c["crop_size"])
        return as_sample(pair["image0"], pair["image1"], kp0, kp1, valid, pair["H"], index, pair["appearance"])

    def style_source(self, rng: np.random.Generator) -> np.ndarray | None:
        """A random training photo for colour / histogram transfer (None when transfer is off)."""
        return self.load(self.sources[rng.integers(len(self.sources))][0]) if self.conf["transfer_prob"] > 0 else None

    def sfm_sample(self, rng: np.random.Generator, index: int) -> dict | None:
        """A real pair of image `index` and one of its SfM partners (`sfm_pairs`), cropped by
        `real_pair_crops`, with the training appearance changes on view B; None when no crop
        of the drawn pair keeps enough correspondences."""
        c = self.conf
        j, corr, size0, size1 = self.partners[index][rng.integers(len(self.partners[index]))]
        image0, image1 = self.load(self.sources[index][0]), self.load(self.sources[j][0])
        # Correspondences in the loaded (resized) images, pixel centres kept in place.
        f0 = np.array(image0.shape[1::-1], np.float64) / size0
        f1 = np.array(image1.shape[1::-1], np.float64) / size1
        corr = np.concatenate([(corr[:, :2] + 0.5) * f0 - 0.5, (corr[:, 2:] + 0.5) * f1 - 0.5], 1)
        crops = real_pair_crops(rng, image0, image1, corr, c["crop_size"], c["sfm_scale"], c["sfm_scale_jitter"],
                                c["num_keypoints"])
        if crops is None:
            return None
        im0, im1, kp0, kp1, valid = crops
        im0, im1, appearance = change_appearance(
            rng, im0, im1, "real", c["photometric"], False, self.style_source(rng), c["night_prob"],
            c["transfer_prob"], None, c["lifted_night_share"], c["relit_night_share"], c["relit_dark_sky_share"])
        # No homography relates real views: NaN, so any warp through it lands nowhere (invalid).
        return as_sample(im0, im1, kp0, kp1, valid, np.full((3, 3), np.nan), index,
                         f"real+{appearance}" if appearance != "real" else "real")

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        step, slot, index = key
        return self.sample(np.random.default_rng([self.seed, step, slot]), index)

    def batch(self, rng: np.random.Generator, indices: list[int], appearance_fn=None) -> dict:
        return collate([self.sample(rng, i, appearance_fn) for i in indices])


def as_sample(image0: np.ndarray, image1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray, valid: np.ndarray,
              H: np.ndarray, index: int, appearance: str) -> dict:
    """A training sample: views [S,S,3] as [3,S,S] tensors, keypoints [K,2] float, valid [K], H [3,3]."""
    return {"image0": torch.from_numpy(image0).permute(2, 0, 1), "image1": torch.from_numpy(image1).permute(2, 0, 1),
            "keypoints0": torch.from_numpy(kp0).float(), "keypoints1": torch.from_numpy(kp1).float(),
            "valid": torch.from_numpy(valid), "H": torch.from_numpy(H).float(), "index": index, "appearance": appearance}


def sfm_partners(sources: list[tuple[str, str | None]], files: list[str]) -> dict[int, list[tuple]]:
    """{source index: [(partner index, correspondences [N,4] (x0, y0, x1, y1: this image first),
    size of this image (w, h), size of the partner), ...]} from SfM pair files (`io.read_sfm_pairs`)
    whose images are among the training sources (matched by resolved path)."""
    if not files:
        raise ValueError("data.sfm_pair_share > 0 needs data.sfm_pairs: files made by `python -m "
                         "hndesc_loc.train.sfm_pairs`.")
    where = {str(Path(s).resolve()): i for i, (s, _) in enumerate(sources) if not s.startswith("skimage:")}
    partners: dict[int, list[tuple]] = {}
    for f in files:
        pairs, record = read_sfm_pairs(Path(f))
        root, sizes = Path(record["image_dir"]), record["image_sizes"]
        for (n0, n1), corr in pairs.items():
            i, j = (where.get(str((root / n).resolve())) for n in (n0, n1))
            if i is None or j is None:
                raise ValueError(f"{f}: image {root / (n0 if i is None else n1)} is not a training image; add "
                                 f"{root} to data.folders (paths are relative to where training starts).")
            s0, s1 = np.array(sizes[n0], np.float64), np.array(sizes[n1], np.float64)
            partners.setdefault(i, []).append((j, corr, s0, s1))
            partners.setdefault(j, []).append((i, corr[:, [2, 3, 0, 1]], s1, s0))
    return partners


def relative_scale(pts0: np.ndarray, pts1: np.ndarray, min_dist: float = 8.0) -> float | None:
    """Median ratio of distances between corresponding points [N,2] (view 1 over view 0): the
    scale of view 1 relative to view 0 around them; None when no two points are min_dist apart."""
    d0 = np.linalg.norm(pts0[:, None] - pts0[None], axis=-1)
    d1 = np.linalg.norm(pts1[:, None] - pts1[None], axis=-1)
    far = np.triu(d0 > min_dist, 1)
    return float(np.median(d1[far] / d0[far])) if far.any() else None


def similarity_crop(image: np.ndarray, centre: np.ndarray, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size x size view of `image` [H,W,3] scaled by `scale` with `centre` (x, y) in its middle:
    (view, the 2x3 map of image pixels to view pixels). Outside the image: black."""
    A = np.array([[scale, 0, (size - 1) / 2 - scale * centre[0]], [0, scale, (size - 1) / 2 - scale * centre[1]]])
    if scale < 1:  # anti-aliasing before the decimation
        image = cv2.GaussianBlur(image, (0, 0), 0.5 / scale)
    return cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT), A


def real_pair_crops(rng: np.random.Generator, image0: np.ndarray, image1: np.ndarray, corr: np.ndarray, size: int,
                    scale_range: tuple[float, float], scale_jitter: float, num_points: int,
                    min_points: int = 16, tries: int = 8, border: int = 8):
    """Crops of a real pair around a random correspondence. View 0 is scaled by a factor drawn in
    `scale_range`; view 1 so that the scene appears at the same scale (`relative_scale` of the 32
    correspondences nearest the centre) times a factor in [1/scale_jitter, scale_jitter] (its zoom
    kept within [0.25, 2] of the loaded image), and centred on the partner shifted by up to a quarter crop. corr [N,4] (x0, y0, x1, y1) in the images.

    Returns (view0, view1 [size,size,3], kp0, kp1 [num_points,2], valid [num_points]): the
    correspondences inside both views (at most num_points, random ones), the rest padded with
    invalid points; None when `tries` draws keep fewer than min_points correspondences."""
    for _ in range(tries):
        c = corr[rng.integers(len(corr))]
        near = np.argsort(np.linalg.norm(corr[:, :2] - c[:2], axis=1))[:32]
        rel = relative_scale(corr[near, :2], corr[near, 2:]) or relative_scale(corr[:, :2], corr[:, 2:])
        if rel is None:
            return None
        s0 = rng.uniform(*scale_range)
        s1 = float(np.clip(s0 / rel * np.exp(rng.uniform(-1, 1) * np.log(scale_jitter)), 0.25, 2.0))
        view0, A0 = similarity_crop(image0, c[:2], s0, size)
        view1, A1 = similarity_crop(image1, c[2:] + rng.uniform(-size / 4, size / 4, 2) / s1, s1, size)
        p0 = corr[:, :2] @ A0[:, :2].T + A0[:, 2]
        p1 = corr[:, 2:] @ A1[:, :2].T + A1[:, 2]
        inside = np.all((p0 >= border) & (p0 <= size - 1 - border) & (p1 >= border) & (p1 <= size - 1 - border), 1)
        idx = np.flatnonzero(inside)
        if len(idx) < min_points:
            continue
        idx = rng.permutation(idx)[:num_points]
        kp0, kp1 = np.zeros((num_points, 2)), np.zeros((num_points, 2))
        valid = np.zeros(num_points, bool)
        kp0[:len(idx)], kp1[:len(idx)], valid[:len(idx)] = p0[idx], p1[idx], True
        # Padding: points of view 0 with no partner (invalid: neither anchors nor negatives).
        kp0[len(idx):] = rng.uniform(border, size - 1 - border, (num_points - len(idx), 2))
        return view0.astype(np.float32), view1.astype(np.float32), kp0, kp1, valid
    return None


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
