"""HPatches evaluation (sparse matching), generic over feature sources, and a generator
of HPatches-format data sets from photos.

Official layout: folders `i_*` (illumination) and `v_*` (viewpoint), each with `1.ppm`..`6.ppm`
and homographies `H_1_2`..`H_1_6` (mapping image 1 to image k). Every method is evaluated
from hloc-format feature files whose groups are named `<sequence>/<k>.ppm`, matched with
mutual nearest neighbours; confs are first extracted into such files.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .io import open_h5, write_text_atomic
from .matchers import default_matcher_conf, match_nearest_neighbor

THRESHOLDS = np.arange(1, 11)
HEST_THRESHOLDS = (1, 3, 5, 10)


def list_sequences(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches folder {root} does not exist.")
    # i_, v_: HPatches; h_: held-out photometric families of generated sets
    seqs = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[:2] in ("i_", "v_", "h_"))
    if not seqs:
        raise ValueError(f"{root} holds no i_*/v_* sequence folders: not the HPatches layout.")
    for s in seqs:
        missing = [f for f in [f"{k}.ppm" for k in range(1, 7)] + [f"H_1_{k}" for k in range(2, 7)]
                   if not (root / s / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{root / s} lacks {missing}: every sequence needs 1.ppm-6.ppm and H_1_2-H_1_6.")
    return seqs


def image_names(root: Path) -> list[str]:
    return [f"{s}/{k}.ppm" for s in list_sequences(root) for k in range(1, 7)]


def pair_metrics(f0: dict, f1: dict, H: np.ndarray, size1: tuple[int, int], matcher_conf: dict | None = None) -> dict:
    """Metrics of one pair (image 1 -> image k) from features dicts (keypoints [N,2], descriptors [D,N])."""
    conf = {**default_matcher_conf, **(matcher_conf or {})}
    k0, k1 = f0["keypoints"].astype(np.float64), f1["keypoints"].astype(np.float64)
    d0 = torch.from_numpy(f0["descriptors"].astype(np.float32))[None]
    d1 = torch.from_numpy(f1["descriptors"].astype(np.float32))[None]
    m0 = match_nearest_neighbor(d0, d1, conf)["matches0"][0].numpy() if k0.size and k1.size else np.full(len(k0), -1)
    valid = m0 > -1
    mk0, mk1 = k0[valid], k1[m0[valid]]
    proj = cv2.perspectiveTransform(mk0[None], H)[0] if len(mk0) else np.zeros((0, 2))
    err = np.linalg.norm(proj - mk1, axis=1)
    mma = [float((err <= t).mean()) if len(err) else 0.0 for t in THRESHOLDS]
    # Repeatability at 3 px on the keypoints visible in both images.
    w, h = size1
    pk0 = cv2.perspectiveTransform(k0[None], H)[0] if len(k0) else np.zeros((0, 2))
    vis0 = (pk0[:, 0] >= 0) & (pk0[:, 0] < w) & (pk0[:, 1] >= 0) & (pk0[:, 1] < h)
    rep = 0.0
    if vis0.sum() and len(k1):
        dist = np.linalg.norm(pk0[vis0][:, None] - k1[None], axis=2)
        rep = float(((dist.min(1) <= 3).sum() + (dist.min(0) <= 3).sum()) / (vis0.sum() + len(k1)))
    # Homography estimation: mean corner error (as SuperPoint/HNDesc evaluate it).
    corner_err = np.inf
    if len(mk0) >= 4:
        H_est, _ = cv2.findHomography(mk0, mk1, cv2.RANSAC, 3.0, maxIters=5000, confidence=0.9999)
        if H_est is not None:
            h0, w0 = f0["image_size"][1], f0["image_size"][0]
            corners = np.array([[0, 0], [w0 - 1, 0], [0, h0 - 1], [w0 - 1, h0 - 1]], np.float64)[None]
            corner_err = float(np.linalg.norm(cv2.perspectiveTransform(corners, H_est)[0]
                                              - cv2.perspectiveTransform(corners, H)[0], axis=1).mean())
    return {"mma": mma, "correct3": int((err <= 3).sum()), "matches": int(valid.sum()),
            "keypoints": (len(k0) + len(k1)) / 2, "rep3": rep, "corner_error": corner_err}


def evaluate_features(root: Path, features: Path, matcher_conf: dict | None = None) -> dict:
    """Evaluate one feature file on an HPatches-format data set."""
    root = Path(root)
    seqs = list_sequences(root)
    per = {"v": [], "i": [], "h": []}  # h_: held-out photometric families (generated sets only)
    with open_h5(features) as fd:
        missing = [n for n in image_names(root) if n not in fd]
        if missing:
            raise KeyError(f"{features} lacks {len(missing)} HPatches images, e.g. {missing[:3]}: extract them first.")
        load = lambda n: {k: fd[n][k][()] for k in ("keypoints", "descriptors", "image_size")}
        for s in tqdm(seqs, desc=f"hpatches {Path(features).stem}", unit="seq"):
            f0 = load(f"{s}/1.ppm")
            families = read_families(root / s)
            for k in range(2, 7):
                H = np.loadtxt(root / s / f"H_1_{k}")
                f1 = load(f"{s}/{k}.ppm")
                m = pair_metrics(f0, f1, H, tuple(f1["image_size"]), matcher_conf)
                per[s[0]].append(m)
                if k in families:  # generated h_ sequences: also per held-out family
                    per.setdefault(f"h:{families[k]}", []).append(m)
    return summarize(per)


FAMILIES_FILE = "families.txt"  # generated h_ sequences: "k family" per target image


def read_families(seq: Path) -> dict[int, str]:
    path = seq / FAMILIES_FILE
    if not path.is_file():
        return {}
    return {int(k): fam for k, fam in (line.split() for line in path.read_text().splitlines() if line.strip())}


def summarize(per: dict) -> dict:
    out = {}
    # avg over v and i only, as HPatches reports it; h (and its families h:NAME) on its own.
    families = sorted(k for k in per if k.startswith("h:"))
    for split, rows in (("v", per["v"]), ("i", per["i"]), ("h", per.get("h", [])), ("avg", per["v"] + per["i"]),
                        *((f, per[f]) for f in families)):
        if not rows:
            continue
        ce = np.array([r["corner_error"] for r in rows])
        out[split] = {
            "mma": np.mean([r["mma"] for r in rows], 0).tolist(),
            "hest": [float((ce <= t).mean()) for t in HEST_THRESHOLDS],
            "correct3": float(np.mean([r["correct3"] for r in rows])),
            "matches": float(np.mean([r["matches"] for r in rows])),
            "keypoints": float(np.mean([r["keypoints"] for r in rows])),
            "rep3": float(np.mean([r["rep3"] for r in rows])),
            "num_pairs": len(rows),
        }
    return out


def format_table(results: dict[str, dict]) -> str:
    """The paper's format: MMA@1/3/5/10 and homography accuracy @1/3/5/10 px, v / i / avg."""
    lines = [f"{'method':28s} {'split':18s} {'MMA@1':>6s} {'@3':>6s} {'@5':>6s} {'@10':>6s} | "
             f"{'H@1':>5s} {'@3':>5s} {'@5':>5s} {'@10':>5s} | {'kpts':>6s} {'matches':>7s} {'corr@3':>7s} {'rep@3':>6s}"]
    for name, res in results.items():
        for split in ("v", "i", "h", "avg", *sorted(k for k in res if k.startswith("h:"))):
            if split not in res:
                continue
            r = res[split]
            m, h = r["mma"], r["hest"]
            lines.append(f"{name:28s} {split:18s} {m[0]:6.3f} {m[2]:6.3f} {m[4]:6.3f} {m[9]:6.3f} | "
                         f"{h[0]:5.3f} {h[1]:5.3f} {h[2]:5.3f} {h[3]:5.3f} | {r['keypoints']:6.0f} {r['matches']:7.0f} "
                         f"{r['correct3']:7.1f} {r['rep3']:6.3f}")
    return "\n".join(lines)


def save_results(results: dict[str, dict], out_dir: Path, stem: str = "hpatches") -> dict[str, Path]:
    """JSON of every figure + PNG plots of MMA against the threshold (one curve per method)."""
    from .viz import plot_curves

    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json"}
    write_text_atomic(paths["json"], json.dumps(results, indent=2))
    for split, title in (("v", "viewpoint"), ("i", "illumination"), ("h", "held-out photometric families"),
                         ("avg", "overall")):
        curves = {n: (THRESHOLDS, np.array(r[split]["mma"])) for n, r in results.items() if split in r}
        if curves:
            paths[split] = out_dir / f"{stem}_mma_{split}.png"
            plot_curves(curves, paths[split], "threshold [px]", "MMA", f"MMA, {title}")
    return paths


# ------------------------------------------------------------------------ generator
def generate(photos: list[Path], out_dir: Path, seed: int = 0, max_size: int = 640,
             homography_conf: dict | None = None, held_out_families: bool = False) -> Path:
    """Write an HPatches-format data set: for each photo a `v_` sequence (random homographies)
    and an `i_` sequence (day-to-night renderings and colour transfers, identity homography:
    the training renderer's families). With `held_out_families`, also an `h_` sequence of
    photometric changes training never uses (`hndesc_loc.heldout_photometric`: sensor night,
    tone curve, colour temperature, cast shadow, sensor night). Never report its numbers as
    HPatches numbers."""
    from .io import read_image
    from .train.synthesis import color_transfer, render_night

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    hconf = {"perspective": 0.12, "rotation": 20.0, "scale": [0.75, 1.3], "translation": 0.05, **(homography_conf or {})}
    imgs = []
    for p in photos:
        img = read_image(Path(p)).astype(np.float32) / 255
        s = max_size / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        imgs.append(img)
    save = lambda path, im: (path.parent.mkdir(parents=True, exist_ok=True),
                             cv2.imwrite(str(path), cv2.cvtColor((np.clip(im, 0, 1) * 255 + .5).astype(np.uint8),
                                                                 cv2.COLOR_RGB2BGR)))
    for idx, (p, img) in enumerate(zip(photos, tqdm(imgs, desc="generate hpatches", unit="photo"))):
        h, w = img.shape[:2]
        stem = Path(p).stem[:40]
        v, i = out_dir / f"v_{stem}", out_dir / f"i_{stem}"
        save(v / "1.ppm", img)
        save(i / "1.ppm", img)
        for k in range(2, 7):
            H = random_homography_full(rng, w, h, hconf, strength=(k - 1) / 5)
            save(v / f"{k}.ppm", cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR))
            np.savetxt(v / f"H_1_{k}", H)
            other = imgs[(idx + k) % len(imgs)]
            change = render_night(rng, img) if k % 2 == 0 else color_transfer(img, other, 0.9)
            save(i / f"{k}.ppm", change)
            np.savetxt(i / f"H_1_{k}", np.eye(3))
        if held_out_families:
            from .heldout_photometric import FAMILIES

            hseq = out_dir / f"h_{stem}"
            save(hseq / "1.ppm", img)
            order = list(FAMILIES) + ["sensor_night"]
            for k, fam in zip(range(2, 7), order):
                save(hseq / f"{k}.ppm", FAMILIES[fam](rng, img))
                np.savetxt(hseq / f"H_1_{k}", np.eye(3))
            write_text_atomic(hseq / FAMILIES_FILE, "".join(f"{k} {fam}\n" for k, fam in zip(range(2, 7), order)))
    return out_dir


def random_homography_full(rng, w: int, h: int, conf: dict, strength: float) -> np.ndarray:
    """Homography of a whole image, growing with `strength` in (0,1]: corners displaced about the centre."""
    c = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    center = c.mean(0)
    ang = np.deg2rad(rng.uniform(-1, 1) * conf["rotation"] * strength)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    scale = np.exp(rng.uniform(np.log(conf["scale"][0]), np.log(conf["scale"][1])) * strength)
    pts = (c - center) @ rot.T * scale + center
    pts += rng.uniform(-1, 1, (4, 2)) * conf["perspective"] * strength * np.array([w, h])
    return cv2.getPerspectiveTransform(c.astype(np.float32), pts.astype(np.float32)).astype(np.float64)


def plot_pair(root: Path, features: Path, seq: str, k: int, path: Path, matcher_conf: dict | None = None):
    """Matches of pair (1, k) of a sequence, green when within 3 px of the ground truth."""
    from .io import read_image
    from .viz import plot_matches

    conf = {**default_matcher_conf, **(matcher_conf or {})}
    with open_h5(features) as fd:
        f0 = {key: fd[f"{seq}/1.ppm"][key][()] for key in ("keypoints", "descriptors")}
        f1 = {key: fd[f"{seq}/{k}.ppm"][key][()] for key in ("keypoints", "descriptors")}
    m0 = match_nearest_neighbor(torch.from_numpy(f0["descriptors"].astype(np.float32))[None],
                                torch.from_numpy(f1["descriptors"].astype(np.float32))[None], conf)["matches0"][0].numpy()
    valid = m0 > -1
    k0, k1 = f0["keypoints"][valid].astype(np.float64), f1["keypoints"][m0[valid]].astype(np.float64)
    H = np.loadtxt(Path(root) / seq / f"H_1_{k}")
    ok = np.linalg.norm(cv2.perspectiveTransform(k0[None], H)[0] - k1, axis=1) <= 3 if len(k0) else np.zeros(0, bool)
    plot_matches(read_image(Path(root) / seq / "1.ppm"), read_image(Path(root) / seq / f"{k}.ppm"), k0, k1, path, ok,
                 f"{Path(features).stem} {seq} 1-{k}: {int(ok.sum())} correct (3 px) / {len(ok)} matches")
