import numpy as np
import pycolmap
import pytest

from hndesc_loc import colmap_from_nvm
from hndesc_loc.evaluate import qvec_to_rotmat


def test_nvm_conversion(tmp_path):
    """Two cameras and one point; NVM stores camera centres, so t = -R c."""
    q = np.array([0.9, 0.1, -0.3, 0.2])
    q /= np.linalg.norm(q)
    c = np.array([1.0, 2.0, 3.0])
    nvm = tmp_path / "model.nvm"
    nvm.write_text(
        "NVM_V3\n\n2\n"
        f"db/1.jpg 500 {q[0]} {q[1]} {q[2]} {q[3]} {c[0]} {c[1]} {c[2]} 0 0\n"
        "db/2.jpg 500 1 0 0 0 0 0 0 0 0\n\n"
        "1\n0.5 0.5 5 255 0 0 2 0 7 10.0 -4.0 1 3 -2.0 6.0\n")
    intr = tmp_path / "database_intrinsics.txt"
    intr.write_text("db/1.jpg SIMPLE_RADIAL 800 600 500 400 300 0\ndb/2.jpg SIMPLE_RADIAL 800 600 510 400 300 0\n")
    rec = colmap_from_nvm.main(nvm, intr, None, tmp_path / "sfm")
    rec = pycolmap.Reconstruction(str(tmp_path / "sfm"))  # read back what was written
    img = rec.find_image_with_name("db/1.jpg")
    pose = img.cam_from_world()
    R = qvec_to_rotmat(q)
    assert np.allclose(pose.rotation.matrix(), R, atol=1e-6)
    assert np.allclose(pose.translation, -R @ c, atol=1e-6)
    assert rec.num_points3D() == 1
    p = next(iter(rec.points3D.values()))
    assert p.track.length() == 2 and np.allclose(p.xyz, [0.5, 0.5, 5])
    assert np.allclose(img.points2D[0].xy, [410.0, 296.0])  # measurement + principal point
    intr.write_text("db/1.jpg SIMPLE_RADIAL 800 600 500 400 300 0\n")
    with pytest.raises(ValueError, match="2 images but"):
        colmap_from_nvm.main(nvm, intr, None, tmp_path / "sfm2")
