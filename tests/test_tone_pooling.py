"""Tone pooling (model.tone_pooling of `hndesc`): each keypoint's descriptor is the normalised
mean of its descriptors on the image under several tone curves x -> x^gamma."""
import pytest
import torch
import torch.nn.functional as F

from hndesc_loc.extract_features import build_model, confs, parse_overrides
from hndesc_loc.models.hndesc import describe_keypoints, describe_view

KP = torch.tensor([[[100.0, 120.0], [300.0, 200.0], [250.0, 330.0], [180.0, 60.0]]])
CONF = {"scale_pooling": [1.0, 0.5], "context_weight": None}


def test_gamma_one_alone_is_the_scale_pooled_description(net, image):
    desc, fine = describe_keypoints(net, image, KP, {**CONF, "tone_pooling": [1.0]})
    assert torch.equal(desc, describe_view(net, image, KP, CONF, CONF['scale_pooling'])[0]) and desc is fine


def test_pooled_descriptor_is_the_mean_over_tone_curves(net, image):
    """[1, 0.5] = normalise(description of the image + description of its square root): a tone
    curve applied to the wrong tensor, or an unnormalised sum, breaks the equality. The fine
    part returned for the matchability head is the untouched image's."""
    desc, fine = describe_keypoints(net, image, KP, {**CONF, "tone_pooling": [1.0, 0.5]})
    d1 = describe_view(net, image, KP, CONF, CONF['scale_pooling'])[0]
    d_sqrt = describe_view(net, image.sqrt(), KP, CONF, CONF['scale_pooling'])[0]
    assert torch.allclose(desc, F.normalize(d1 + d_sqrt, dim=1), atol=1e-6)
    assert torch.allclose(fine, d1)
    # Pooling brings the descriptors of a photo and of its darker copy (x^2, as at dusk) closer:
    # the two pooled descriptors share the term of the photo itself.
    dark = image ** 2
    d_dark = describe_view(net, dark, KP, CONF, CONF['scale_pooling'])[0]
    pooled_dark = describe_keypoints(net, dark, KP, {**CONF, "tone_pooling": [1.0, 0.5]})[0]
    assert (desc * pooled_dark).sum(1).mean() > (d1 * d_dark).sum(1).mean()


def test_selection_reads_the_untouched_image():
    """With the matchability head on (the shipped `hndesc` conf), tone pooling changes the
    descriptors and neither the kept keypoints nor their scores."""
    torch.manual_seed(0)
    img = torch.rand(1, 3, 160, 200) ** 2
    plain = build_model(confs["hndesc"])({"image": img})
    toned = build_model(parse_overrides(confs["hndesc"], ["model.tone_pooling=[1.0,0.5]"]))({"image": img})
    assert torch.equal(plain["keypoints"], toned["keypoints"]) and torch.equal(plain["scores"], toned["scores"])
    assert plain["descriptors"].shape == toned["descriptors"].shape
    assert not torch.allclose(plain["descriptors"], toned["descriptors"], atol=1e-3)


def test_conf_checks():
    for bad in ("[]", "[0.5]", "[1.0,-0.5]", "0.5", "[1.0,true]", "[1.0,1.0]"):
        with pytest.raises(ValueError, match="model.tone_pooling must be"):
            build_model(parse_overrides(confs["hndesc"], [f"model.tone_pooling={bad}"]))
    with pytest.raises(ValueError, match="scale_adaptive"):
        build_model(parse_overrides(confs["hndesc"], ["model.tone_pooling=[1.0,0.5]", "model.scale_pooling=[1.0]",
                                                      "model.context_weight=null", "model.matchability_candidates=null",
                                                      "model.scale_adaptive.reference_size=2.5",
                                                      "model.scale_adaptive.num_levels=5"]))
