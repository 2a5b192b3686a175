"""Convert Aachen v1.0's NVM model (+ database_intrinsics.txt, + aachen.db for ids) into a COLMAP model.

NVM stores camera centres and quaternions (wxyz, world-to-camera rotation): t = -R c.
Measurements are relative to the principal point; only triangulated observations exist.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .evaluate import qvec_to_rotmat
from .io import atomic_path
from .utils.cli import Parser, run as run_cli


def read_intrinsics(path: Path) -> dict[str, pycolmap.Camera]:
    cams = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, model, w, h, *params = line.split()
        cams[name] = pycolmap.Camera(model=model, width=int(w), height=int(h), params=[float(p) for p in params])
    return cams


def read_db_ids(database: Path) -> dict[str, int]:
    with sqlite3.connect(str(database)) as db:
        return {name: image_id for image_id, name in db.execute("SELECT image_id, name FROM images")}


def main(nvm: Path, intrinsics: Path, database: Path | None, output: Path, skip_points: bool = False) -> pycolmap.Reconstruction:
    for p in (nvm, intrinsics):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p} does not exist (Aachen v1.0 needs 3D-models/aachen_cvpr2018_db.nvm "
                                    "and 3D-models/database_intrinsics.txt).")
    cameras = read_intrinsics(intrinsics)
    ids = read_db_ids(database) if database and Path(database).is_file() else {}
    lines = iter(Path(nvm).read_text().splitlines())
    header = next(lines)
    if not header.startswith("NVM_V3"):
        raise ValueError(f"{nvm}: not an NVM_V3 file.")
    line = next(lines)
    while not line.strip():
        line = next(lines)
    num_images = int(line.split()[0])
    if num_images != len(cameras):
        raise ValueError(f"{nvm} has {num_images} images but {intrinsics} has {len(cameras)} lines.")
    rec = pycolmap.Reconstruction()
    images = []
    for i in tqdm(range(num_images), desc="NVM cameras", unit="img"):
        name, _focal, qw, qx, qy, qz, cx, cy, cz, *_ = next(lines).split()
        name = name.replace("\\", "/")
        if name not in cameras:
            raise KeyError(f"{name} of {nvm} has no line in {intrinsics}.")
        image_id = ids.get(name, i + 1)
        R = qvec_to_rotmat(np.array([qw, qx, qy, qz], float))
        t = -R @ np.array([cx, cy, cz], float)
        cam = cameras[name]
        cam.camera_id = image_id
        images.append((name, image_id, cam, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t)))
    line = next(lines, "")
    while line is not None and not line.strip():
        line = next(lines, None)
    num_points = int(line.split()[0]) if line else 0
    obs: dict[int, list] = {i: [] for i in range(num_images)}
    tracks = []
    for _ in tqdm(range(0 if skip_points else num_points), desc="NVM points", unit="pt"):
        data = next(lines).split()
        xyz, rgb, n = np.array(data[:3], float), np.array(data[3:6], int), int(data[6])
        track = []
        for k in range(n):
            img_idx, _feat, x, y = data[7 + 4 * k: 11 + 4 * k]
            img_idx = int(img_idx)
            track.append((img_idx, len(obs[img_idx])))
            obs[img_idx].append((float(x), float(y)))
        tracks.append((xyz, rgb, track))
    for idx, (name, image_id, cam, pose) in enumerate(images):
        rec.add_camera_with_trivial_rig(cam)
        kp = np.array(obs[idx], float).reshape(-1, 2) + [cam.principal_point_x, cam.principal_point_y]
        image = pycolmap.Image(name=name, keypoints=kp, camera_id=cam.camera_id, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pose)
    for xyz, rgb, track in tracks:
        t = pycolmap.Track()
        for img_idx, p2d in track:
            t.add_element(images[img_idx][1], p2d)
        rec.add_point3D(xyz, t, rgb.astype(np.uint8))
    with atomic_path(Path(output)) as tmp:
        tmp.mkdir(parents=True)
        rec.write(str(tmp))
    logger.info("Converted %s: %d images, %d points.", nvm, rec.num_images(), rec.num_points3D())
    return rec


def cli():
    p = Parser(description=__doc__)
    p.add_argument("--nvm", type=Path, required=True)
    p.add_argument("--intrinsics", type=Path, required=True)
    p.add_argument("--database", type=Path)
    p.add_argument("--output", type=Path, required=True)
    a = p.parse_args()
    main(a.nvm, a.intrinsics, a.database, a.output)


if __name__ == "__main__":
    run_cli(cli)
