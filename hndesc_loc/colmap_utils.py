"""pycolmap helpers shared by the steps: building models with known poses, COLMAP
databases from a model, and version checks."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pycolmap

SUPPORTED_PYCOLMAP = ((3, 13), (5, 0))  # [min, max); tested with 4.2.1


def check_pycolmap(version: str | None = None):
    """Fail early, with the fix, on a pycolmap whose API we have not tested (hloc #348, #393, #440)."""
    v = version or pycolmap.__version__
    parts = tuple(int(x) for x in v.split("+")[0].split(".")[:2] if x.isdigit())
    lo, hi = SUPPORTED_PYCOLMAP
    if not lo <= parts < hi:
        raise RuntimeError(f"pycolmap {v} is not supported: install 'pycolmap>=3.13,<5' (tested with 4.2.1).")


def make_reconstruction(cameras: list[pycolmap.Camera], images: list[tuple[str, int, pycolmap.Rigid3d]]) -> pycolmap.Reconstruction:
    """Model with known poses and no points: cameras (with camera_id set) and
    (name, camera_id, cam_from_world) per image; image ids are 1..N in order."""
    rec = pycolmap.Reconstruction()
    for cam in cameras:
        rec.add_camera_with_trivial_rig(cam)
    for image_id, (name, camera_id, pose) in enumerate(images, start=1):
        image = pycolmap.Image(name=name, camera_id=camera_id, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pose)
    return rec


def create_db_from_model(rec: pycolmap.Reconstruction, database_path: Path) -> dict[str, int]:
    """A COLMAP database holding the model's cameras, rigs, frames and images with the same ids."""
    database_path = Path(database_path)
    if database_path.exists():
        database_path.unlink()
    with pycolmap.Database.open(str(database_path)) as db:
        for cam in rec.cameras.values():
            db.write_camera(cam, use_camera_id=True)
        for rig in rec.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in rec.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in rec.images.values():
            db.write_image(image, use_image_id=True)
    return {image.name: image_id for image_id, image in rec.images.items()}


@contextlib.contextmanager
def quiet(verbose: bool = False):
    """Silence pycolmap's chatter (stdout, and COLMAP's glog INFO lines on stderr) unless
    verbose; warnings and errors still show."""
    if verbose:
        yield
        return
    import pycolmap

    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1  # WARNING and above
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        pycolmap.logging.minloglevel = level
