"""Real training pairs from an SfM model of the training photos (hndesc_loc.train.sfm_pairs)."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from hndesc_loc.io import read_sfm_pairs, write_sfm_pairs
from hndesc_loc.train.data import PairDataset, real_pair_crops, relative_scale
from hndesc_loc.train.sfm_pairs import pair_correspondences
from hndesc_loc.train.trainer import default_conf


def _stub_model():
    """Duck-typed pycolmap model: 3 images; point 0 seen by a, b, c; point 1 by a, b (too large an
    error); point 2 by a twice and by c (ambiguous in a)."""
    def image(name, xys):
        return SimpleNamespace(name=name, points2D=[SimpleNamespace(xy=np.array(p, float)) for p in xys])

    def point(error, obs):
        return SimpleNamespace(error=error, track=SimpleNamespace(
            elements=[SimpleNamespace(image_id=i, point2D_idx=k) for i, k in obs]))

    images = {1: image("b.jpg", [(10.5, 20.5), (30.5, 40.5)]), 2: image("a.jpg", [(1.5, 2.5), (3.5, 4.5), (5.5, 6.5)]),
              3: image("c.jpg", [(7.5, 8.5), (9.5, 10.5)])}
    points = {0: point(0.5, [(1, 0), (2, 0), (3, 0)]), 1: point(3.0, [(1, 1), (2, 1)]),
              2: point(0.2, [(2, 1), (2, 2), (3, 1)])}
    return SimpleNamespace(images=images, points3D=points)


def test_pair_correspondences_use_pixel_centres_and_drop_unreliable_points():
    pairs = pair_correspondences(_stub_model(), min_shared=1, max_reprojection_error=1.5)
    # Names sorted within a pair; COLMAP's half-pixel shift removed; point 1 (error) and point 2's
    # ambiguous observations in a.jpg are left out, so (a, c) holds point 0 only.
    assert set(pairs) == {("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("b.jpg", "c.jpg")}
    np.testing.assert_allclose(pairs[("a.jpg", "b.jpg")], [[1, 2, 10, 20]])
    np.testing.assert_allclose(pairs[("a.jpg", "c.jpg")], [[1, 2, 7, 8]])
    assert pairs[("a.jpg", "b.jpg")].dtype == np.float32
    assert pair_correspondences(_stub_model(), min_shared=2) == {}
    assert len(pair_correspondences(_stub_model(), min_shared=1, max_reprojection_error=5.0)[("a.jpg", "b.jpg")]) == 2


def test_sfm_pair_file_round_trip_and_wrong_file(tmp_path):
    pairs = {("a.jpg", "b.jpg"): np.arange(8, dtype=np.float32).reshape(2, 4)}
    write_sfm_pairs(tmp_path / "p.h5", pairs, {"image_dir": "x", "image_sizes": {}})
    back, record = read_sfm_pairs(tmp_path / "p.h5")
    assert record["image_dir"] == "x" and np.array_equal(back[("a.jpg", "b.jpg")], pairs[("a.jpg", "b.jpg")])
    with pytest.raises(ValueError, match="image_dir"):
        write_sfm_pairs(tmp_path / "q.h5", pairs, {})
    assert not (tmp_path / "q.h5").exists()
    import h5py

    with h5py.File(tmp_path / "features.h5", "w") as fd:
        fd.create_dataset("x/keypoints", data=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not an SfM pair file"):
        read_sfm_pairs(tmp_path / "features.h5")
    (tmp_path / "notes.txt").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an SfM pair file"):
        read_sfm_pairs(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="make it with"):
        read_sfm_pairs(tmp_path / "missing.h5")


def _scaled_scene(scale: float = 1.5, shift=(-40.0, -25.0)):
    """A photo and a copy scaled by `scale` and shifted, with correspondences on a grid [N,4]."""
    from skimage.data import astronaut

    img0 = astronaut().astype(np.float32) / 255
    A = np.array([[scale, 0, shift[0] + (scale - 1) / 2], [0, scale, shift[1] + (scale - 1) / 2]])  # pixel centres
    img1 = cv2.warpAffine(img0, A, (600, 600), flags=cv2.INTER_LINEAR)
    g = np.stack(np.meshgrid(np.arange(40, 480, 9.0), np.arange(40, 480, 9.0)), -1).reshape(-1, 2)
    p1 = g @ A[:, :2].T + A[:, 2]
    keep = np.all((p1 >= 0) & (p1 <= 599), 1)
    return img0, img1, np.concatenate([g[keep], p1[keep]], 1)


def test_real_pair_crops_show_the_same_points_at_similar_scales():
    img0, img1, corr = _scaled_scene()
    assert relative_scale(corr[:, :2], corr[:, 2:]) == pytest.approx(1.5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        v0, v1, kp0, kp1, valid = real_pair_crops(rng, img0, img1, corr, 128, (0.5, 1.0), 1.5, 64)
        assert v0.shape == v1.shape == (128, 128, 3) and valid.sum() >= 16
        assert np.all((kp0[valid] >= 8) & (kp0[valid] <= 119)) and np.all((kp1[valid] >= 8) & (kp1[valid] <= 119))
        # The apparent scale of view 1 over view 0 stays within the jitter of equal.
        assert 1 / 1.5 - 1e-6 <= relative_scale(kp0[valid], kp1[valid]) <= 1.5 + 1e-6
        # Same scene points: colours agree (a wrong map moves them by pixels on this photo).
        c0 = np.array([v0[int(round(y)), int(round(x))] for x, y in kp0[valid]])
        c1 = np.array([v1[int(round(y)), int(round(x))] for x, y in kp1[valid]])
        assert np.median(np.abs(c0 - c1)) < 0.05
    assert real_pair_crops(rng, img0, img1, corr[:5], 128, (0.5, 1.0), 1.5, 64) is None   # too few points


def _dataset_conf(files, share):
    return {**default_conf["data"], "num_keypoints": 64, "crop_size": 128, "sfm_pairs": [str(f) for f in files],
            "sfm_pair_share": share}


def test_dataset_draws_real_pairs_of_partnered_photos_only(tmp_path):
    img0, img1, corr = _scaled_scene()
    for name, img in (("p0.png", img0), ("p1.png", img1)):
        cv2.imwrite(str(tmp_path / name), (img[..., ::-1] * 255).round().astype(np.uint8))
    sizes = {"p0.png": [512, 512], "p1.png": [600, 600]}
    write_sfm_pairs(tmp_path / "pairs.h5", {("p0.png", "p1.png"): corr.astype(np.float32)},
                    {"image_dir": str(tmp_path), "image_sizes": sizes})
    sources = [(str(tmp_path / "p0.png"), None), (str(tmp_path / "p1.png"), None), ("skimage:coffee", None)]
    conf = {**_dataset_conf([tmp_path / "pairs.h5"], 1.0), "max_image_size": 400}   # correspondences rescaled
    ds = PairDataset(sources, conf)
    assert set(ds.partners) == {0, 1}
    for step in range(4):
        s = ds[(step, 0, step % 2)]
        assert s["appearance"].startswith("real") and torch.isnan(s["H"]).all()
        assert s["valid"].sum() >= 16 and s["index"] == step % 2
    assert not ds[(0, 0, 2)]["appearance"].startswith("real")   # no partner: a synthetic pair
    # Share 0: the former synthetic draws exactly, files unread.
    off = PairDataset(sources, {**conf, "sfm_pair_share": 0.0, "sfm_pairs": []})
    on_zero = PairDataset(sources, {**conf, "sfm_pair_share": 0.0})
    a, b = off[(3, 1, 0)], on_zero[(3, 1, 0)]
    assert torch.equal(a["image1"], b["image1"]) and torch.equal(a["keypoints0"], b["keypoints0"])
    # Validation (an appearance_fn) never draws real pairs.
    v = ds.sample(np.random.default_rng(0), 0, appearance_fn=lambda rng, im: (im, "held-out"))
    assert v["appearance"] == "held-out"
    with pytest.raises(ValueError, match="is not a training image"):
        PairDataset(sources[1:], conf)
    with pytest.raises(ValueError, match="needs data.sfm_pairs"):
        PairDataset(sources, {**conf, "sfm_pairs": []})


def test_trainer_refuses_real_pairs_with_a_homography_reward_before_writing(tmp_path):
    from hndesc_loc.train.trainer import Trainer

    out = tmp_path / "run"
    conf = {"output_dir": str(out), "data": {"builtin": ["camera"], "sfm_pair_share": 0.5, "sfm_pairs": ["x.h5"]},
            "loss": {"reward_weight": 0.1}, "device": "cpu"}
    with pytest.raises(ValueError, match="sfm_pair_share"):
        Trainer(conf)
    assert not out.exists()
    (tmp_path / "notes.txt").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an SfM pair file"):
        Trainer({**conf, "loss": {}, "data": {**conf["data"], "sfm_pairs": [str(tmp_path / "notes.txt")]}})
    assert not out.exists()


def test_sfm_pairs_cli_on_real_photos(shared_data, tmp_path):
    """COLMAP's SIFT model of real photos: every pair's correspondences obey one epipolar geometry,
    and the recorded sizes are those the training reader sees."""
    from hndesc_loc.io import read_image
    from hndesc_loc.train.sfm_pairs import cli

    images = tmp_path / "photos"
    images.mkdir()
    for name in ("71295362_4051449754", "93341989_396310999", "51091044_3486849416", "44120379_8371960244"):
        (images / f"{name}.jpg").write_bytes((shared_data / "sacre_coeur" / f"{name}.jpg").read_bytes())
    cli(["--image_dir", str(images), "--output", str(tmp_path / "sc.h5")])
    pairs, record = read_sfm_pairs(tmp_path / "sc.h5")
    assert pairs and record["image_dir"] == str(images) and record["model"]["num_reg_images"] >= 3
    for name, (w, h) in record["image_sizes"].items():
        assert read_image(images / name).shape[:2] == (h, w)
    rng = np.random.default_rng(0)
    for corr in pairs.values():
        assert len(corr) >= 20
        # 2 px: the model's radial distortion bends the epipolar lines a little.
        _, inliers = cv2.findFundamentalMat(corr[:, :2], corr[:, 2:], cv2.USAC_ACCURATE, 2.0, 0.9999)
        assert inliers.mean() > 0.95
        _, shuffled = cv2.findFundamentalMat(corr[:, :2], rng.permutation(corr[:, 2:]), cv2.USAC_ACCURATE, 2.0, 0.9999)
        assert shuffled is None or shuffled.mean() < 0.5   # the check can fail
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli(["--image_dir", str(tmp_path / "missing"), "--output", str(tmp_path / "x.h5")])
    assert not (tmp_path / "x.h5").exists()
