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


@pytest.fixture(scope="session")
def head_weights(tmp_path_factory) -> Path:
    """The shipped lite weights plus a matchability head that prefers bright keypoints (a rule
    the extractor test can check without knowing which keypoints a real head prefers)."""
    from hndesc_loc.models.matchability import fit_matchability
    from hndesc_loc.models.network import SHIPPED_WEIGHTS, load_checkpoint

    lite = SHIPPED_WEIGHTS["lite"]
    net = load_checkpoint(lite, "lite")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, net.backbone.descriptor_dim + net.backbone.coarse_dim, generator=g)
    fit_matchability(net.matchability, x, (x[:, 0] > 0.5).float(), [1.0], epochs=100)
    ckpt = torch.load(lite, map_location="cpu", weights_only=False)
    ckpt["model"] = {**ckpt["model"], **{f"matchability.{k}": v for k, v in net.matchability.state_dict().items()}}
    path = tmp_path_factory.mktemp("match") / "lite_match.pt"
    torch.save(ckpt, path)
    return path
