"""Scale-adaptive description (model.scale_adaptive of `hndesc`): keypoints described on the
pyramid level that matches their detector scale."""
import pytest
import torch
import torch.nn.functional as F

from hndesc_loc.extract_features import build_model, confs, parse_overrides
from hndesc_loc.models.hndesc import describe_scale_adaptive


@torch.no_grad()
def test_reference_above_all_sizes_is_plain_description(net, image):
    kp = torch.tensor([[[100.0, 120.0], [300.5, 200.25], [40.0, 400.0]]])
    sizes = torch.tensor([[3.0, 9.0, 30.0]])
    plain = net.describe(net(image), kp)
    adaptive = describe_scale_adaptive(net, image, kp, sizes, reference_size=100.0, num_levels=5)
    assert torch.allclose(plain, adaptive)


@torch.no_grad()
def test_zoomed_out_image_gets_the_same_descriptor(net, image):
    """A keypoint of size 8 in an image and of size 4 in the same image at half resolution:
    with reference size 4 the first is described on pyramid level 2 (half resolution), so both
    descriptors come from the same pixels; described at full resolution they differ."""
    small = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    kp_big = torch.tensor([[[100.0, 120.0], [300.0, 200.0], [250.0, 330.0], [180.0, 60.0]]])
    kp_small = (kp_big + 0.5) / 2 - 0.5
    d_big = describe_scale_adaptive(net, image, kp_big, torch.full((1, 4), 8.0), 4.0, 5)
    d_small = describe_scale_adaptive(net, small, kp_small, torch.full((1, 4), 4.0), 4.0, 5)
    cos_adaptive = (d_big * d_small).sum(1)
    plain = (net.describe(net(image), kp_big) * net.describe(net(small), kp_small)).sum(1)
    assert cos_adaptive.min() > 0.999
    assert plain.mean() < 0.95


@torch.no_grad()
def test_levels_are_clipped_on_small_images(net):
    image = torch.rand(1, 3, 40, 48)
    kp = torch.tensor([[[10.0, 10.0], [30.0, 20.0]]])
    desc = describe_scale_adaptive(net, image, kp, torch.tensor([[2.0, 500.0]]), 2.0, 8)
    assert desc.shape == (1, 128, 2) and torch.isfinite(desc).all()


def test_conf_checks():
    conf = parse_overrides(confs["hndesc"], ["model.scale_pooling=[1.0]", "model.context_weight=null", "model.matchability_candidates=null", "model.scale_adaptive.reference_size=2.5",
                                             "model.scale_adaptive.num_levels=5"])
    model = build_model(conf)
    pred = model({"image": torch.rand(1, 3, 96, 128)})
    assert pred["descriptors"].shape[-1] == pred["keypoints"].shape[1]
    with pytest.raises(ValueError, match="reference_size and num_levels"):
        build_model(parse_overrides(confs["hndesc"], ["model.scale_pooling=[1.0]", "model.context_weight=null", "model.matchability_candidates=null", "model.scale_adaptive.reference_size=2.5"]))
    no_scales = build_model(parse_overrides(confs["hndesc"], ["model.detector={name: hndesc}", "model.scale_pooling=[1.0]",
                                                              "model.context_weight=null", "model.matchability_candidates=null",
                                                              "model.scale_adaptive.reference_size=2.5",
                                                              "model.scale_adaptive.num_levels=5"]))
    with pytest.raises(ValueError, match="does not report"):
        no_scales({"image": torch.rand(1, 3, 96, 128)})
