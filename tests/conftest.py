from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (a fresh clone has no ../shared); CI always has it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """A few scikit-image sample photos written as JPEG/PNG files, in a nested layout."""
    import cv2
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for name, rel in (("astronaut", "a.jpg"), ("coffee", "sub/b.png"), ("rocket", "c.jpg")):
        img = getattr(skimage.data, name)()
        cv2.imwrite(str(root / rel), img[:, :, ::-1])
    return root


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> dict:
    """The synthetic scene, smaller than the demo's for speed."""
    from hndesc_loc.synthetic.scene import generate

    root = tmp_path_factory.mktemp("scene")
    return generate(root, {"image_size": [512, 384], "num_db": 20, "num_day_queries": 4, "num_night_queries": 6})


@pytest.fixture(scope="session")
def net():
    """The shipped lite network (descriptor tests that need a real network, not its accuracy)."""
    from hndesc_loc.models.network import load_network

    return load_network("default", "lite").eval()


@pytest.fixture(scope="session")
def image():
    """A 448 x 448 RGB photo [1,3,H,W] in [0,1] (scikit-image's astronaut)."""
    import skimage.data

    return torch.from_numpy(skimage.data.astronaut()[:448, :448]).permute(2, 0, 1).float()[None] / 255
