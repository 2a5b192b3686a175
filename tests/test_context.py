"""Coarse-fine descriptors (model.context_weight): the unit coarse encoder feature at each
keypoint appended to the fine descriptor with weight w, then normalised."""
import pytest
import torch
import torch.nn.functional as F

from hndesc_loc.models.hndesc import HNDesc, HNDescJoint, describe_scale_pooled

CONF = {"backbone": "lite", "detector": {"name": "sift", "max_keypoints": 300}}
KP = torch.tensor([[[100.0, 120.0], [300.0, 200.0], [250.0, 330.0], [180.0, 60.0]]])


@torch.no_grad()
def test_similarity_is_the_weighted_sum_of_fine_and_context_similarities(image):
    w = 0.7
    model = HNDesc({**CONF, "context_weight": w})
    net = model.net
    desc = model.describe(image, KP)[0]
    feats = net(image)
    fine, ctx = net.describe(feats, KP)[0], net.context(feats, KP)[0]
    assert desc.shape == (net.backbone.descriptor_dim + net.backbone.coarse_dim, 4)
    torch.testing.assert_close(desc.norm(dim=0), torch.ones(4))
    expected = (fine.T @ fine + w ** 2 * ctx.T @ ctx) / (1 + w ** 2)
    torch.testing.assert_close(desc.T @ desc, expected, atol=1e-5, rtol=0)
    # The context is the coarse map at the keypoint: a map sampled elsewhere would not match.
    at_origin = F.normalize(feats["coarse"][0, :, 0, 0], dim=0)
    assert not torch.allclose(ctx[:, 0], at_origin, atol=1e-3)


@torch.no_grad()
def test_pooled_context_and_off_by_default(image):
    plain = HNDesc(CONF)
    assert torch.equal(plain.describe(image, KP), describe_scale_pooled(plain.net, image, KP, [1.0]))
    pooled = HNDesc({**CONF, "context_weight": 1.0, "scale_pooling": [1.0, 0.5]})
    fine, ctx = describe_scale_pooled(pooled.net, image, KP, [1.0, 0.5], context=True)
    torch.testing.assert_close(fine, describe_scale_pooled(pooled.net, image, KP, [1.0, 0.5]))
    small = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    ctx_small = pooled.net.context(pooled.net(small), (KP + 0.5) / 2 - 0.5)
    torch.testing.assert_close(ctx, F.normalize(pooled.net.context(pooled.net(image), KP) + ctx_small, dim=1))
    torch.testing.assert_close(pooled.describe(image, KP), F.normalize(torch.cat([fine, ctx], 1), dim=1))


@torch.no_grad()
def test_context_follows_the_point_when_the_image_moves(image):
    """The photo shifted by two coarse cells: a point's context equals that of the same scene
    point in the shifted photo, not that of the point the keypoint's old coordinates now show."""
    net = HNDesc({**CONF, "context_weight": 1.0}).net
    shift = 2 * net.backbone.coarse_stride
    moved = torch.roll(image, shifts=(shift, shift), dims=(-2, -1))
    kp = KP[:, :3]
    ctx, ctx_moved = net.context(net(image), kp)[0], net.context(net(moved), kp + shift)[0]
    ctx_stale = net.context(net(moved), kp)[0]
    same, stale = (ctx * ctx_moved).sum(0), (ctx * ctx_stale).sum(0)
    assert (same > 0.95).all(), same
    assert (stale < same - 0.1).all(), (stale, same)


def test_matchability_scores_the_fine_part_and_joint_takes_the_option_too(head_weights, image):
    conf = {**CONF, "weights": str(head_weights), "detector": {"name": "sift", "max_keypoints": 100},
            "matchability_candidates": 400}
    plain, ctx = HNDesc(conf), HNDesc({**conf, "context_weight": 1.0})
    net = plain.net
    with torch.no_grad():
        a, b = plain({"image": image}), ctx({"image": image})
    assert torch.equal(a["keypoints"], b["keypoints"]) and torch.equal(a["scores"], b["scores"])
    d = net.backbone.descriptor_dim
    assert b["descriptors"].shape == (1, d + net.backbone.coarse_dim, 100)
    torch.testing.assert_close(F.normalize(b["descriptors"][0, :d], dim=0), a["descriptors"][0], atol=1e-5, rtol=0)
    joint = HNDescJoint({"max_keypoints": 50, "context_weight": 1.0})
    with torch.no_grad():
        out = joint({"image": image})
    assert out["descriptors"].shape[:2] == (1, d + net.backbone.coarse_dim)


def test_bad_context_confs_are_clear_errors():
    for bad in (0, -1.0, "a", True):
        with pytest.raises(ValueError, match="model.context_weight must be a positive number"):
            HNDesc({**CONF, "context_weight": bad})
    with pytest.raises(ValueError, match="exclusive"):
        HNDesc({**CONF, "context_weight": 1.0, "scale_adaptive": {"reference_size": 8.0, "num_levels": 3}})
    with pytest.raises(ValueError, match="model.context_weight must be a positive number"):
        HNDescJoint({"context_weight": -2})


def test_basis_keeps_the_leading_axes_and_approximates_context_similarities():
    from hndesc_loc.models.context_basis import ContextBasis

    g = torch.Generator().manual_seed(0)
    strong = torch.randn(500, 3, generator=g) @ torch.randn(3, 16, generator=g)
    x = F.normalize(strong + 0.02 * torch.randn(500, 16, generator=g), dim=1)
    basis = ContextBasis(16)
    assert torch.equal(basis(x.T[None]), x.T[None])  # inactive: the whole context
    energy = basis.fit(x, 3)
    assert basis.active and energy > 0.99
    torch.testing.assert_close(basis.axes @ basis.axes.T, torch.eye(16), atol=1e-5, rtol=0)
    proj = basis(x.T[None])[0]
    assert proj.shape == (3, 500)
    assert (proj.T @ proj - x @ x.T).abs().max() < 0.05
    assert basis.fit(x, 1) < energy  # fewer axes, less energy
    for bad in (0, 17):
        with pytest.raises(ValueError, match="dims must be in"):
            basis.fit(x, bad)
    basis.reset()
    assert not basis.active


def test_tool_learns_a_basis_that_the_extractor_applies(shared_data, image, tmp_path):
    from hndesc_loc.models.network import SHIPPED_WEIGHTS, load_checkpoint
    from hndesc_loc.train.context_basis import main

    lite = SHIPPED_WEIGHTS["lite"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(lite, [tmp_path / "absent"], tmp_path / "x.pt")
    record = main(lite, [shared_data / "sacre_coeur"], tmp_path / "b.pt", {"dims": 8})
    assert record["images"] == 10 and record["contexts"] > 10000 and 0.5 < record["energy"] < 1
    assert not (tmp_path / "x.pt").exists()
    before, after = torch.load(lite, weights_only=False)["model"], torch.load(tmp_path / "b.pt", weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    net = load_checkpoint(tmp_path / "b.pt", "lite")
    assert net.context_basis.active and int(net.context_basis.dims) == 8
    model = HNDesc({**CONF, "weights": str(tmp_path / "b.pt"), "context_weight": 0.5})
    with torch.no_grad():
        desc = model.describe(image, KP)
        feats = model.net(image)
        fine, ctx = model.net.describe(feats, KP), model.net.context(feats, KP)
    assert desc.shape == (1, model.net.backbone.descriptor_dim + 8, 4)
    expected = F.normalize(torch.cat([fine, 0.5 * (net.context_basis.axes[:8] @ ctx[0])[None]], 1), dim=1)
    torch.testing.assert_close(desc, expected, atol=1e-5, rtol=0)


def test_fine_tuning_drops_the_basis_and_fp16_export_keeps_it_in_float32(tmp_path):
    from hndesc_loc.models.network import SHIPPED_WEIGHTS, load_checkpoint
    from hndesc_loc.train.export import main as export_main
    from hndesc_loc.train.trainer import drop_learned_after_training

    net = load_checkpoint(SHIPPED_WEIGHTS["lite"], "lite")
    net.context_basis.fit(F.normalize(torch.randn(300, net.backbone.coarse_dim), dim=1), 4)
    ckpt = {"model": net.state_dict(), "backbone": "lite", "config": {"stage": "descriptor"}, "step": 1, "best_val": 0.0}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    export_main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--output", str(tmp_path / "half.pt"), "--half"])
    half = torch.load(tmp_path / "half.pt", weights_only=False)["model"]
    assert half["context_basis.axes"].dtype == torch.float32
    loaded = load_checkpoint(tmp_path / "half.pt", "lite")
    assert torch.equal(loaded.context_basis.axes, net.context_basis.axes)
    drop_learned_after_training(loaded, "test")
    assert not loaded.context_basis.active
