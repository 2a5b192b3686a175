"""Domain-size pooling (model.scale_pooling of `hndesc`): each keypoint's descriptor is the
normalised mean of its descriptors on the image at several scales."""
import pytest
import torch
import torch.nn.functional as F

from hndesc_loc.extract_features import build_model, confs, parse_overrides
from hndesc_loc.models.hndesc import describe_scale_pooled

KP = torch.tensor([[[100.0, 120.0], [300.0, 200.0], [250.0, 330.0], [180.0, 60.0]]])


@torch.no_grad()
def test_one_factor_is_plain_description(net, image):
    assert torch.equal(describe_scale_pooled(net, image, KP, [1.0]), net.describe(net(image), KP))


@torch.no_grad()
def test_half_scale_term_is_the_keypoint_on_the_half_resolution_image(net, image):
    """[1, 0.5] = normalise(descriptor at full resolution + descriptor of the same point, moved
    with the pixel-centre convention, on the image downsampled as a user would): a wrong
    keypoint mapping or resizing would break the equality."""
    small = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    d_full = net.describe(net(image), KP)
    d_half = net.describe(net(small), (KP + 0.5) / 2 - 0.5)
    pooled = describe_scale_pooled(net, image, KP, [1.0, 0.5])
    assert torch.allclose(pooled, F.normalize(d_full + d_half, dim=1), atol=1e-6)
    assert torch.allclose(pooled.norm(dim=1), torch.ones(1, 4))
    # Pooling brings the descriptors of the image and of its half-size copy closer together.
    pooled_small = describe_scale_pooled(net, small, (KP + 0.5) / 2 - 0.5, [1.0, 0.5])
    assert (pooled * pooled_small).sum(1).mean() > (d_full * d_half).sum(1).mean()


@torch.no_grad()
def test_upsampled_term_is_the_keypoint_on_the_enlarged_image(net, image):
    """[1.4142, 1.0, 0.5] (the `hndesc` conf's pooling) adds the descriptor of the same point on
    the image enlarged to round(448 * 1.4142) = 634 px, the keypoint moved by the size ratio."""
    size = round(448 * 1.4142)
    large = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    small = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    d_up = net.describe(net(large), (KP + 0.5) * size / 448 - 0.5)
    d_full = net.describe(net(image), KP)
    d_half = net.describe(net(small), (KP + 0.5) / 2 - 0.5)
    pooled = describe_scale_pooled(net, image, KP, [1.4142, 1.0, 0.5])
    assert torch.allclose(pooled, F.normalize(d_up + d_full + d_half, dim=1), atol=1e-6)
    assert not torch.allclose(pooled, describe_scale_pooled(net, image, KP, [1.0, 0.5]), atol=1e-3)


def test_conf_checks():
    assert confs["hndesc"]["model"]["scale_pooling"] == [1.4142, 1.0, 0.5]
    model = build_model(confs["hndesc"])
    pred = model({"image": torch.rand(1, 3, 96, 128)})
    assert pred["descriptors"].shape[-1] == pred["keypoints"].shape[1]
    assert torch.allclose(pred["descriptors"].norm(dim=1), torch.ones(1, pred["keypoints"].shape[1]))
    # The shipped head scores descriptors of the conf's pooling: another pooling with the selection
    # on is refused with the fix named, and runs without the selection.
    with pytest.raises(ValueError, match=r"pooled over \[1.4142, 1.0, 0.5\], not model.scale_pooling=\[1.0, 0.5\]"):
        build_model(parse_overrides(confs["hndesc"], ["model.scale_pooling=[1.0,0.5]"]))
    build_model(parse_overrides(confs["hndesc"], ["model.scale_pooling=[1.0,0.5]", "model.matchability_candidates=null"]))
    for bad in ("[]", "[1.0,-0.5]", "0.5", "[1.0,true]"):
        with pytest.raises(ValueError, match="model.scale_pooling must be"):
            build_model(parse_overrides(confs["hndesc"], [f"model.scale_pooling={bad}"]))
    with pytest.raises(ValueError, match="model.scale_pooling and model.scale_adaptive are exclusive"):
        build_model(parse_overrides(confs["hndesc"], ["model.matchability_candidates=null",
                                                      "model.scale_adaptive.reference_size=2.5",
                                                      "model.scale_adaptive.num_levels=5"]))
