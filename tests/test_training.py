import numpy as np
import pytest
import torch

from hndesc_loc.train import losses
from hndesc_loc.train.synthesis import (color_transfer, default_homography_conf, random_homography, render_night,
                                        warp_points)


def test_warp_points_follows_warp_perspective():
    """Keypoints move exactly as the pixels do (pixel-centre convention)."""
    import cv2

    rng = np.random.default_rng(0)
    H = random_homography(rng, 128, default_homography_conf)
    img = np.zeros((128, 128), np.float32)
    img[60, 70] = 1
    warped = cv2.warpPerspective(img, H, (128, 128), flags=cv2.INTER_LINEAR)
    y, x = np.unravel_index(warped.argmax(), warped.shape)
    p = warp_points(H, np.array([[70.0, 60.0]]))[0]
    assert np.hypot(p[0] - x, p[1] - y) < 1.0


def test_night_and_transfer_change_appearance():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.3, 0.9, (64, 64, 3)).astype(np.float32)
    night = render_night(rng, img)
    assert night.mean() < 0.5 * img.mean() and night.dtype == np.float32
    style = np.zeros_like(img)
    style[..., 2] = 0.8
    out = color_transfer(img, style)
    assert out[..., 2].mean() > out[..., 0].mean() + 0.2


def test_pair_keypoints_correspond():
    from hndesc_loc.train.data import PairSampler
    from hndesc_loc.train.trainer import default_conf

    conf = {**default_conf["data"], "num_keypoints": 32, "night_prob": 0.0, "transfer_prob": 0.0,
            "photometric": {**default_conf["data"]["photometric"], "noise_std": 0.0, "blur_prob": 0.0,
                            "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0, "gamma": [1, 1]}}
    sampler = PairSampler([("skimage:astronaut", None)], conf)
    s = sampler.sample(np.random.default_rng(1), 0)
    i0, i1 = s["image0"].numpy(), s["image1"].numpy()
    errs = []
    for (x0, y0), (x1, y1), v in zip(s["keypoints0"].numpy(), s["keypoints1"].numpy(), s["valid"].numpy()):
        if v and 2 <= x1 < 254 and 2 <= y1 < 254:
            errs.append(np.abs(i0[:, int(round(y0)), int(round(x0))] - i1[:, int(round(y1)), int(round(x1))]).mean())
    assert len(errs) > 10 and np.median(errs) < 0.08


def test_ap_loss_orders():
    """Perfect ranking gives AP 1; a positive below all negatives gives AP ~ 1/(M+1)."""
    scores = torch.tensor([[0.9, 0.1, 0.0, -0.5], [-0.9, 0.1, 0.5, 0.6]])
    labels = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    ap = losses.quantized_ap(scores, labels, torch.ones_like(scores))
    assert ap[0] > 0.99 and ap[1] < 0.3
    exact = losses.exact_ap_single_positive(scores[:, 0], scores[:, 1:], torch.ones(2, 3, dtype=torch.bool))
    assert exact.tolist() == [1.0, 0.25]


@pytest.mark.parametrize("mining", ["in_pair", "in_batch", "random"])
def test_mining_modes(mining):
    torch.manual_seed(0)
    B, D, K = 3, 16, 10
    d0 = torch.nn.functional.normalize(torch.randn(B, D, K), dim=1)
    d0[2] = d0[1]  # crops 1 and 2 of one image see the same points: they must never be negatives
    d1 = d0.clone()
    kp = torch.rand(B, K, 2) * 200
    valid = torch.ones(B, K, dtype=torch.bool)
    valid[0, 0] = False
    ids = torch.tensor([0, 1, 1])  # crops 1 and 2 come from the same image
    pos, negs, mask = losses.candidate_lists(d0, d1, kp, valid, ids, mining, 4, 1.0)
    assert pos.shape == (B * K - 1,) and torch.allclose(pos, torch.ones_like(pos))
    assert negs.shape[1] == K + (0 if mining == "in_pair" else 4)
    out = losses.descriptor_loss(d0, d1, kp, kp, valid, ids, {"mining": mining, "num_hard_negatives": 4,
                                                              "neg_radius": 1.0, "nq": 20})
    assert out["ap"] == pytest.approx(1.0)  # would drop if crop 2 gave negatives to crop 1
    ids_wrong = torch.tensor([0, 1, 2])
    if mining == "in_batch":
        bad = losses.descriptor_loss(d0, d1, kp, kp, valid, ids_wrong, {"mining": mining, "num_hard_negatives": 4,
                                                                        "neg_radius": 1.0, "nq": 20})
        assert bad["ap"] < 0.9


def test_trainer_runs_resumes_and_rejects_bad_keys(tmp_path):
    from hndesc_loc.train.trainer import Trainer

    conf = {"output_dir": str(tmp_path), "iterations": 4, "batch_size": 2, "val_every": 2, "checkpoint_every": 2,
            "data": {"builtin": ["astronaut", "coffee"], "num_keypoints": 32, "num_val_pairs": 8, "max_image_size": 320},
            "coarse_to_fine": {"k": 1, "rebuild_every": 2}}
    t = Trainer(conf)
    t.train()
    assert (tmp_path / "latest.pt").exists() and (tmp_path / "best_val.pt").exists()
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 5
    t2 = Trainer({**conf, "iterations": 6})
    t2.resume(tmp_path / "latest.pt")
    assert t2.step == 4
    t2.train()
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert [int(l.split(",")[0]) for l in lines[1:]] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(KeyError, match="Unknown key 'learning_rate'"):
        Trainer({**conf, "learning_rate": 1})
    with pytest.raises(FileNotFoundError, match="Training folder"):
        Trainer({**conf, "data": {"folders": [str(tmp_path / "none")]}})
