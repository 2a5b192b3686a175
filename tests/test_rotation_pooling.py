"""Rotation pooling (model.rotation_pooling of `hndesc`): each keypoint's descriptor is the
normalised mean of its upright descriptor and its descriptors on the image rotated about its
centre by a few angles."""
import pytest
import torch
import torch.nn.functional as F

from hndesc_loc.extract_features import build_model, confs, parse_overrides
from hndesc_loc.models.hndesc import describe_keypoints, describe_view, rotate

KP = torch.tensor([[[100.0, 120.0], [300.0, 200.0], [250.0, 330.0], [180.0, 60.0]]])
CONF = {"scale_pooling": [1.0, 0.5], "context_weight": None}
ROT = "model.rotation_pooling={angles: [-10, 10], scales: [0.7071]}"


def test_rotate_moves_keypoints_with_the_pixels():
    """A bright pixel lands where its keypoint goes, for both signs and a non-square image; 0
    degrees returns the very tensors."""
    img = torch.zeros(1, 1, 100, 160)
    img[0, 0, 20, 30] = 1.0
    kp = torch.tensor([[[30.0, 20.0]]])
    for angle in (10.0, -25.0):
        turned, moved = rotate(img, kp, angle)
        y, x = divmod(int(turned[0, 0].argmax()), 160)
        assert abs(x - moved[0, 0, 0]) <= 0.6 and abs(y - moved[0, 0, 1]) <= 0.6, (angle, x, y, moved)
    # Clockwise as displayed (y down): a point right of the centre moves down (larger y).
    assert rotate(img, torch.tensor([[[120.0, 49.5]]]), 10.0)[1][0, 0, 1] > 49.5
    same = rotate(img, kp, 0.0)
    assert same[0] is img and same[1] is kp


def test_pooled_descriptor_is_the_mean_over_rotations(net, image):
    """angles [-10, 10] at scales [0.7071] = normalise(the upright description pooled over
    scale_pooling + the description of the image turned by each angle, resized by 0.7071, the
    keypoints moved with it); the fine part for the matchability head is the upright image's."""
    conf = {**CONF, "rotation_pooling": {"angles": [-10.0, 10.0], "scales": [0.7071]}}
    desc, fine = describe_keypoints(net, image, KP, conf)
    parts = [describe_view(net, image, KP, CONF, CONF["scale_pooling"])[0]]
    parts += [describe_view(net, *rotate(image, KP, a), CONF, [0.7071])[0] for a in (-10.0, 10.0)]
    assert torch.allclose(desc, F.normalize(sum(parts), dim=1), atol=1e-6)
    assert torch.allclose(fine, parts[0])
    # Pooling brings the descriptors of a photo and of its copy turned by 10 degrees closer.
    turned, kp_turned = rotate(image, KP, 10.0)
    pooled_turned = describe_keypoints(net, turned, kp_turned, conf)[0]
    upright_turned = describe_view(net, turned, kp_turned, CONF, CONF["scale_pooling"])[0]
    assert (desc * pooled_turned).sum(1).mean() > (parts[0] * upright_turned).sum(1).mean()


def test_selection_reads_the_upright_image():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 160, 200) ** 2
    plain = build_model(confs["hndesc"])({"image": img})
    turned = build_model(parse_overrides(confs["hndesc"], [ROT]))({"image": img})
    assert torch.equal(plain["keypoints"], turned["keypoints"]) and torch.equal(plain["scores"], turned["scores"])
    assert not torch.allclose(plain["descriptors"], turned["descriptors"], atol=1e-3)


def test_conf_checks():
    for bad in ("[-10,10]", "{angles: [0, 10], scales: [1.0]}", "{angles: [90], scales: [1.0]}",
                "{angles: [5, 5], scales: [1.0]}", "{angles: [true], scales: [1.0]}", "{angles: [10]}",
                "{angles: [], scales: [1.0]}", "{angles: [10], scales: [1.0], weight: 2}"):
        with pytest.raises(ValueError, match="model.rotation_pooling must be"):
            build_model(parse_overrides(confs["hndesc"], [f"model.rotation_pooling={bad}"]))
    for bad in ("[]", "[0]", "0.5"):
        with pytest.raises(ValueError, match="model.rotation_pooling.scales must be"):
            build_model(parse_overrides(confs["hndesc"], [f"model.rotation_pooling={{angles: [10], scales: {bad}}}"]))
    with pytest.raises(ValueError, match="scale_adaptive"):
        build_model(parse_overrides(confs["hndesc"], [ROT, "model.scale_pooling=[1.0]",
                                                      "model.context_weight=null", "model.matchability_candidates=null",
                                                      "model.scale_adaptive.reference_size=2.5",
                                                      "model.scale_adaptive.num_levels=5"]))
