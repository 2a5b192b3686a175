"""A small synthetic localization scene with exact ground truth.

Textured planar buildings around a plaza, rendered from known pinhole cameras by
exact ray-plane intersection. Database images are rendered by day; queries by day and
at night (the training submodule's night rendering, seeded). Written in the Aachen
v1.1 layout (COLMAP reference model of the database, query lists with intrinsics) and
in the InLoc layout (cutouts with per-pixel XYZ in scan coordinates + alignment files).

Facade textures are scikit-image and matplotlib sample photos that are held out of the
shipped model's training data (see hndesc_loc/weights/MODEL_CARD.md).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..io import write_text_atomic

TEXTURES = ("astronaut", "coffee", "rocket", "chelsea")


@dataclass
class Plane:
    origin: np.ndarray   # a corner (world)
    axis_u: np.ndarray   # vector spanning the width (world, length = width)
    axis_v: np.ndarray   # vector spanning the height
    texture: np.ndarray  # float32 RGB [H,W,3]


def load_texture(name: str, size=(1024, 640)) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return cv2.resize(img[..., :3], size, interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0


def ground_texture(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """Procedural paving: random-sized grey-brown stones with noise."""
    tex = np.full((size, size, 3), 0.45, np.float32)
    for _ in range(2500):
        c = rng.uniform(0, size, 2).astype(int)
        r = int(rng.integers(6, 22))
        col = np.clip(rng.normal([0.5, 0.45, 0.4], 0.12), 0, 1)
        cv2.circle(tex, (int(c[0]), int(c[1])), r, col.tolist(), -1)
    tex += rng.normal(0, 0.03, tex.shape).astype(np.float32)
    return np.clip(cv2.GaussianBlur(tex, (0, 0), 1.0), 0, 1)


def build_planes(rng: np.random.Generator) -> list[Plane]:
    """Four facades (20 m wide, 12 m tall) around a 30 m plaza, and the ground. World: z up."""
    planes = []
    half, width, height = 15.0, 20.0, 12.0
    # (corner, direction along the facade) for the four sides, facades facing the centre.
    sides = [((-10, half, 0), (1, 0, 0)), ((half, 10, 0), (0, -1, 0)),
             ((10, -half, 0), (-1, 0, 0)), ((-half, -10, 0), (0, 1, 0))]
    for (corner, direction), name in zip(sides, TEXTURES):
        planes.append(Plane(np.array(corner, float), np.array(direction, float) * width,
                            np.array([0, 0, height], float), load_texture(name)))
    planes.append(Plane(np.array([-half, -half, 0.0]), np.array([2 * half, 0, 0.0]), np.array([0, 2 * half, 0.0]),
                        ground_texture(rng)))
    return planes


def look_at_pose(center: np.ndarray, yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0):
    """cam_from_world (R, t) for a camera at `center` looking along yaw (about z), OpenCV axes."""
    yaw, pitch, roll = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R_wc = np.stack([right, down, forward], 1)  # columns: camera axes in the world
    c, s = np.cos(roll), np.sin(roll)
    R_wc = R_wc @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    R = R_wc.T
    return R, -R @ center


def render(planes: list[Plane], K: np.ndarray, R: np.ndarray, t: np.ndarray, size: tuple[int, int]):
    """Exact ray casting. Returns (image float32 [H,W,3], XYZ [H,W,3] world, NaN for sky)."""
    w, h = size
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pix = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3)
    rays = (pix @ np.linalg.inv(K).T) @ R  # world directions (R^T d, row form)
    center = -R.T @ t
    depth = np.full(len(rays), np.inf)
    image = np.zeros((len(rays), 3), np.float32)
    for plane in planes:
        n = np.cross(plane.axis_u, plane.axis_v)
        denom = rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = ((plane.origin - center) @ n) / denom
        pts = center + lam[:, None] * rays
        rel = pts - plane.origin
        u = rel @ plane.axis_u / (plane.axis_u @ plane.axis_u)
        v = rel @ plane.axis_v / (plane.axis_v @ plane.axis_v)
        hit = (lam > 1e-6) & (lam < depth) & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
        if not hit.any():
            continue
        th, tw = plane.texture.shape[:2]
        # Texture pixel centres at integer coordinates: u in [0,1] spans [-0.5, tw-0.5].
        mx = (u[hit] * tw - 0.5).astype(np.float32)
        my = ((1 - v[hit]) * th - 0.5).astype(np.float32)
        n = len(mx)
        pad = (-n) % 1024  # remap wants maps smaller than 32767 rows: use 1024-wide blocks
        mx, my = np.pad(mx, (0, pad)).reshape(-1, 1024), np.pad(my, (0, pad)).reshape(-1, 1024)
        samples = cv2.remap(plane.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        image[hit] = samples.reshape(-1, 3)[:n]
        depth[hit] = lam[hit]
    sky = ~np.isfinite(depth)
    grad = np.clip(0.55 + 0.4 * (1 - pix[:, 1] / h), 0, 1)
    image[sky] = np.stack([0.55 * grad, 0.7 * grad, 0.95 * grad], -1)[sky]
    xyz = center + depth[:, None] * rays
    xyz[sky] = np.nan
    return image.reshape(h, w, 3), xyz.reshape(h, w, 3)


def save_jpg(path: Path, image: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95])


def random_rigid(rng: np.random.Generator) -> np.ndarray:
    """A 4x4 scan-to-world alignment (rotation about z, translation), as InLoc's files hold."""
    a = rng.uniform(-np.pi, np.pi)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    T[:3, 3] = rng.uniform(-5, 5, 3)
    return T


def add_reference_points(rec, db_geometry: list, K: np.ndarray, size: tuple[int, int], step: int = 24):
    """Give the reference model exact 3D points and tracks, as a real reference model has
    (covisibility pairs need them): grid points of each image, observed in every other
    database image where they project unoccluded (checked against its rendered XYZ)."""
    import pycolmap

    w, h = size
    obs: dict[int, list] = {i: [] for i in range(len(db_geometry))}
    tracks = []
    for i, (_, _, xyz_i) in enumerate(tqdm(db_geometry, desc="reference tracks", unit="img")):
        ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step].reshape(2, -1)
        for x, y in zip(xs, ys):
            X = xyz_i[y, x].astype(np.float64)
            if not np.all(np.isfinite(X)):
                continue
            track = []
            for j, (R, t, xyz_j) in enumerate(db_geometry):
                pc = R @ X + t
                if pc[2] <= 0.1:
                    continue
                p = K @ pc
                u, v = p[0] / p[2], p[1] / p[2]
                ui, vi = int(round(u)), int(round(v))
                if not (0 <= ui < w and 0 <= vi < h):
                    continue
                Y = xyz_j[vi, ui]
                if not np.all(np.isfinite(Y)) or np.linalg.norm(Y - X) > 0.02 * pc[2] + 0.05:
                    continue  # occluded or off the surface
                track.append((j, len(obs[j])))
                obs[j].append((u + 0.5, v + 0.5))  # COLMAP: origin at the pixel corner
            if len(track) >= 2 and i == min(j for j, _ in track):  # each physical point once
                tracks.append((X, track))
    for j, image_id in enumerate(sorted(rec.images)):
        image = rec.images[image_id]
        image.points2D = pycolmap.Point2DList([pycolmap.Point2D(np.array(p)) for p in obs[j]])
    for X, track in tracks:
        tr = pycolmap.Track()
        for j, p2d in track:
            tr.add_element(sorted(rec.images)[j], p2d)
        rec.add_point3D(X, tr, np.array([128, 128, 128], np.uint8))


default_scene_conf = {
    "seed": 0,
    "image_size": [640, 480],
    "num_db": 24,             # database cameras on a circle, looking outwards
    "num_day_queries": 6,
    "num_night_queries": 8,
    "db_radius": 5.0,
    "night_strength": 1.0,
}


def generate(root: Path, conf: dict | None = None, overwrite: bool = False) -> dict:
    """Write the scene under root/{aachen,inloc} (cached: a complete scene is reused).
    Returns the paths of what was written."""
    import pycolmap
    import scipy.io

    from ..colmap_utils import make_reconstruction
    from ..io import write_poses
    from ..train.synthesis import render_night

    conf = {**default_scene_conf, **(conf or {})}
    root = Path(root)
    marker = root / "scene.json"
    paths = {"aachen": root / "aachen", "inloc": root / "inloc", "ground_truth": root / "aachen" / "ground_truth.txt",
             "inloc_ground_truth": root / "inloc" / "ground_truth.txt"}
    if marker.exists() and not overwrite and json.loads(marker.read_text()) == conf:
        return paths
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(conf["seed"])
    planes = build_planes(rng)
    w, h = conf["image_size"]
    f = w * 28 / 36  # InLoc's query focal convention (4032 * 28 / 36 at full resolution)
    K = np.array([[f, 0, w / 2 - 0.5], [0, f, h / 2 - 0.5], [0, 0, 1]])  # centre origin (hloc)
    # COLMAP puts the origin at the corner: principal point w/2, h/2.
    camera = pycolmap.Camera(model="SIMPLE_PINHOLE", width=w, height=h, params=[f, w / 2, h / 2], camera_id=1)

    aachen, inloc = paths["aachen"], paths["inloc"]
    db_images, db_geometry, scan_T = [], [], random_rigid(rng)
    for i in tqdm(range(conf["num_db"]), desc="render database", unit="img"):
        yaw = 360.0 * i / conf["num_db"]
        ang = np.deg2rad(yaw + 180 + rng.uniform(-20, 20))
        center = np.array([conf["db_radius"] * np.cos(ang), conf["db_radius"] * np.sin(ang), 1.6 + rng.uniform(-0.2, 0.2)])
        R, t = look_at_pose(center, yaw + rng.uniform(-5, 5), rng.uniform(0, 8))
        img, xyz = render(planes, K, R, t, (w, h))
        name = f"db/{i:04d}.jpg"
        save_jpg(aachen / "images_upright" / name, img)
        # InLoc cutout: same image, XYZ in scan coordinates (world = T_scan * X).
        cut = inloc / "database" / "cutouts" / "DUC1" / "000" / f"DUC_cutout_000_{i:04d}.jpg"
        save_jpg(cut, img)
        xyz_scan = (xyz.reshape(-1, 3) - scan_T[:3, 3]) @ scan_T[:3, :3]
        scipy.io.savemat(str(cut) + ".mat", {"XYZcut": xyz_scan.reshape(h, w, 3)})
        db_images.append((name, 1, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t)))
        db_geometry.append((R, t, xyz.astype(np.float32)))
    # InLoc names the file after the building (first 3 letters of the cutout name) and the scan.
    align = inloc / "database" / "alignments" / "DUC1" / "transformations" / "DUC_trans_000.txt"
    align.parent.mkdir(parents=True, exist_ok=True)
    header = ["# synthetic scan alignment (hndesc-loc)"] + ["#"] * 6
    align.write_text("\n".join(header + [" ".join(f"{v:.10f}" for v in row) for row in scan_T]) + "\n")

    rec = make_reconstruction([camera], db_images)
    add_reference_points(rec, db_geometry, K, (w, h))
    model_dir = aachen / "3D-models" / "aachen_v_1_1"
    model_dir.mkdir(parents=True, exist_ok=True)
    rec.write(str(model_dir))

    qrng = np.random.default_rng(conf["seed"] + 1)
    gt, gt_inloc, lines = {}, {}, {"day": [], "night": []}
    nq = {"day": conf["num_day_queries"], "night": conf["num_night_queries"]}
    k = 0
    for cond in ("day", "night"):
        for j in tqdm(range(nq[cond]), desc=f"render {cond} queries", unit="img"):
            r, a = qrng.uniform(0, 6), qrng.uniform(0, 2 * np.pi)
            center = np.array([r * np.cos(a), r * np.sin(a), 1.6 + qrng.uniform(-0.3, 0.3)])
            R, t = look_at_pose(center, qrng.uniform(0, 360), qrng.uniform(-3, 10), qrng.uniform(-5, 5))
            img, _ = render(planes, K, R, t, (w, h))
            if cond == "night":
                img = render_night(np.random.default_rng(conf["seed"] * 1000 + k), img, conf["night_strength"])
            name = f"query/{cond}/synthetic/IMG_{k:04d}.jpg"
            save_jpg(aachen / "images_upright" / name, img)
            lines[cond].append(f"{name} SIMPLE_PINHOLE {w} {h} {f} {w / 2} {h / 2}\n")
            pose = pycolmap.Rigid3d(pycolmap.Rotation3d(R), t)
            gt[name.split("/")[-1]] = pose
            if cond == "night":
                iname = f"IMG_{k:04d}.JPG"
                save_jpg(inloc / "query" / "iphone7" / iname, img)
                gt_inloc[iname] = pose
            k += 1
    for cond in ("day", "night"):
        write_text_atomic(aachen / "queries" / f"{cond}_time_queries_with_intrinsics.txt", "".join(lines[cond]))
    write_poses(paths["ground_truth"], gt)
    write_poses(paths["inloc_ground_truth"], gt_inloc)
    write_text_atomic(marker, json.dumps(conf))
    return paths
