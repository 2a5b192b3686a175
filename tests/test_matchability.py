"""Keypoint selection by learned matchability (hndesc_loc.models.matchability,
hndesc_loc.train.matchability, HNDesc's model.matchability_candidates)."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hndesc_loc.models.hndesc import HNDesc
from hndesc_loc.models.matchability import MatchabilityHead, fit_matchability, select_matchable
from hndesc_loc.models.network import load_checkpoint
from hndesc_loc.train.matchability import auc, day_night_trials, night_survival, observations_at, point_ids

LITE = Path(__file__).resolve().parent.parent / "hndesc_loc" / "weights" / "hndesc_lite.pt"


def test_labels_are_keypoints_near_an_observation_of_a_3d_point():
    kp = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]])
    obs = np.array([[2.0, 0.0], [20.0, 23.5]])
    def matched(kp, obs, radius):
        return point_ids(kp, obs, np.arange(len(obs)), radius) >= 0

    np.testing.assert_array_equal(matched(kp, obs, 3.0), [True, False, False])
    np.testing.assert_array_equal(matched(kp, obs, 3.6), [True, False, True])
    assert not matched(kp, np.zeros((0, 2)), 3.0).any()


def test_keypoints_take_the_id_of_the_nearest_observation_within_the_radius():
    kp = np.array([[0.0, 0.0], [10.0, 10.0], [5.0, 0.0]])
    obs = np.array([[2.0, 0.0], [6.0, 0.0], [30.0, 30.0]])
    np.testing.assert_array_equal(point_ids(kp, obs, np.array([7, 8, 9]), 3.0), [7, -1, 8])
    np.testing.assert_array_equal(point_ids(kp, np.zeros((0, 2)), np.zeros(0, int), 3.0), [-1, -1, -1])


def _unit(*rows):
    d = torch.tensor(rows, dtype=torch.float32)
    return torch.nn.functional.normalize(d, dim=1).T  # [D,N]


def test_a_day_keypoint_passes_when_its_mutual_neighbour_at_night_sees_the_same_3d_point():
    # Night photo: points of 3D points 6, 5, 9. Day: 5 (finds 5, mutual), 6 (nearest to 5's keypoint,
    # which prefers the day keypoint of 5: not mutual), -1 (unmatched), 7 (not seen at night).
    night = _unit([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0])
    day = _unit([0, 1, 0, 0], [0.2, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0])
    ids_day, ids_night = np.array([5, 6, -1, 7]), np.array([6, 5, 9])
    tried, passed = day_night_trials(day, ids_day, night, ids_night)
    np.testing.assert_array_equal(tried, [True, True, False, False])
    np.testing.assert_array_equal(passed, [True, False, False, False])
    # A mutual match to a keypoint of another 3D point fails.
    tried, passed = day_night_trials(day, ids_day, night, np.array([6, 4, 9]))
    np.testing.assert_array_equal(passed, [False, False, False, False])
    # Over photos and renderings: the share of trials passed, NaN where never tried.
    other_day = _unit([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0])
    shares = night_survival([day, other_day], [[day, day], [night, _unit([0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0])]],
                            [ids_day, ids_night])
    np.testing.assert_allclose(shares[0], [0.5, 0.0, np.nan, np.nan])
    assert shares[1].shape == (3,) and np.isnan(shares[1][2])


def test_observations_move_to_the_resized_image_in_the_pixel_centre_convention():
    # COLMAP's centre of the top-left pixel is (0.5, 0.5); ours is (0, 0). Unobserved points are left out.
    image = SimpleNamespace(points2D=[SimpleNamespace(xy=np.array([0.5, 0.5]), has_point3D=lambda: True),
                                      SimpleNamespace(xy=np.array([100.5, 50.5]), has_point3D=lambda: False),
                                      SimpleNamespace(xy=np.array([200.0, 100.0]), has_point3D=lambda: True)])
    np.testing.assert_allclose(observations_at(image, np.array([1.0, 1.0])), [[0, 0], [199.5, 99.5]])
    np.testing.assert_allclose(observations_at(image, np.array([0.5, 0.5])), [[-0.25, -0.25], [99.5, 49.5]])


def test_selection_keeps_the_largest_logits_in_detection_order():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0, 5.0])
    assert select_matchable(logits, 3).tolist() == [1, 3, 4]
    assert select_matchable(logits, 10).tolist() == [0, 1, 2, 3, 4]


def test_the_head_learns_which_features_are_matched_and_refuses_one_class():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 24, generator=g)
    y = (x[:, 3] + 0.5 * x[:, 7] > 0.8).float()       # about a fifth matched
    head = MatchabilityHead(16, 8)
    assert not bool(head.active) and not any(p.requires_grad for p in head.parameters())
    fit_matchability(head, x[:1500], y[:1500], [1.0, 0.5], epochs=200)
    assert bool(head.active) and head.scale_pooling == [1.0, 0.5]
    assert not any(p.requires_grad for p in head.parameters())   # frozen again for the descriptor's optimisers
    with torch.no_grad():
        held = auc(head(x[1500:]).numpy(), y[1500:].numpy())
    assert held > 0.95
    with pytest.raises(ValueError, match="both matched and unmatched"):
        fit_matchability(head, x, torch.zeros(len(x)), [1.0])
    head.reset()
    assert not bool(head.active) and head.scale_pooling == []


def test_auc_is_the_rank_statistic():
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auc(np.array([0.1, 0.4, 0.2, 0.3]), np.array([0, 1, 0, 1])) == 1.0


def test_extractor_keeps_the_most_matchable_candidates_with_their_descriptors(head_weights, image):
    conf = {"backbone": "lite", "weights": str(head_weights), "detector": {"name": "sift", "max_keypoints": 200}}
    selected = HNDesc({**conf, "matchability_candidates": 800})
    plain = HNDesc({**conf, "detector": {"name": "sift", "max_keypoints": 800}})
    with torch.no_grad():
        out = selected({"image": image})
        cand = plain({"image": image})
        feats = plain.net(image)
        logits = plain.net.matchability_logits(feats, cand["descriptors"], cand["keypoints"])[0]
    assert out["keypoints"].shape == (1, 200, 2) and out["descriptors"].shape[-1] == 200
    expected = select_matchable(logits, 200)
    torch.testing.assert_close(out["keypoints"][0], cand["keypoints"][0, expected])
    torch.testing.assert_close(out["descriptors"][0], cand["descriptors"][0][:, expected], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["scores"][0], torch.sigmoid(logits[expected]), atol=1e-5, rtol=0)
    # Not simply the detector's strongest 200.
    assert not torch.equal(out["keypoints"][0], cand["keypoints"][0, :200])


def test_bad_matchability_confs_are_clear_errors(head_weights):
    base = {"backbone": "lite", "detector": {"name": "sift", "max_keypoints": 200}}
    with pytest.raises(ValueError, match="carry no matchability head"):
        HNDesc({**base, "weights": str(LITE), "matchability_candidates": 400})
    with pytest.raises(ValueError, match="below detector.max_keypoints"):
        HNDesc({**base, "weights": str(head_weights), "matchability_candidates": 100})
    with pytest.raises(ValueError, match="pooled over"):
        HNDesc({**base, "weights": str(head_weights), "matchability_candidates": 400, "scale_pooling": [1.0, 0.5]})
    with pytest.raises(ValueError, match="exclusive"):
        HNDesc({**base, "weights": str(head_weights), "matchability_candidates": 400,
                "scale_adaptive": {"reference_size": 8.0, "num_levels": 3}})
    with pytest.raises(ValueError, match="positive number"):
        HNDesc({**base, "weights": str(head_weights), "matchability_candidates": 0})


def test_fine_tuning_drops_the_head_and_fp16_export_keeps_it_in_float32(head_weights, tmp_path):
    from hndesc_loc.train.export import main as export_main
    from hndesc_loc.train.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.conf = {"init_weights": str(head_weights), "backbone": "lite"}
    net = trainer.build_network()
    assert not bool(net.matchability.active)
    net = load_checkpoint(head_weights, "lite")
    ckpt = {"model": net.state_dict(), "backbone": "lite", "config": {"stage": "descriptor"}, "step": 1, "best_val": 0.0}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    export_main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--output", str(tmp_path / "half.pt"), "--half"])
    half = torch.load(tmp_path / "half.pt", weights_only=False)["model"]
    assert half["matchability.mlp.0.weight"].dtype == torch.float32 and half["matchability.std"].dtype == torch.float32
    assert bool(load_checkpoint(tmp_path / "half.pt", "lite").matchability.active)


def test_tool_learns_a_head_from_an_sfm_model_of_real_photos(shared_data, tmp_path):
    from hndesc_loc.train.matchability import main

    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(LITE, [tmp_path / "absent"], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="night_survival in"):
        main(LITE, [shared_data / "sacre_coeur"], tmp_path / "x.pt", {"night_renders": 2, "night_survival": 0.0})
    with pytest.raises(ValueError, match="must look like key.sub=value"):
        main(LITE, [shared_data / "sacre_coeur"], tmp_path / "x.pt", {"overrides": ["model.scale_pooling"]})
    assert not (tmp_path / "x.pt").exists()
    # The extractor conf's overrides reach the head: it is trained on, and records, that pooling.
    record = main(LITE, [shared_data / "sacre_coeur"], tmp_path / "m.pt",
                  {"candidates": 1024, "epochs": 60, "night_renders": 1, "overrides": ["model.scale_pooling=[1.0,0.7071]"]})
    assert record["scale_pooling"] == [1.0, 0.7071]
    folder = record["folders"][str(shared_data / "sacre_coeur")]
    assert folder["registered"] == 10
    assert 0.02 < record["matched"] / record["examples"] < 0.6
    # Day-night labels keep a part of the SfM positives, the ones the descriptor carries to night.
    assert record["matched"] == folder["matched_day_night"]
    assert 0.05 * folder["matched"] < folder["matched_day_night"] < folder["matched"]
    # Every fourth photo held out of one fit: the head ranks their matched keypoints first.
    assert record["held_out_auc"] > 0.75
    net = load_checkpoint(tmp_path / "m.pt", "lite")
    assert bool(net.matchability.active) and net.matchability.scale_pooling == [1.0, 0.7071]


def test_a_new_whitening_leaves_the_former_head_out(head_weights, tmp_path):
    from hndesc_loc.train.whitening import main as learn_whitening

    config = tmp_path / "tiny.yaml"
    config.write_text("backbone: lite\ndata:\n  builtin: [brick, camera, coins, grass]\n  num_keypoints: 128\n")
    out = learn_whitening(head_weights, config, tmp_path / "white.pt", num_pairs=8)
    assert not any(k.startswith("matchability.") for k in out["model"]) and "matchability" not in out
    net = load_checkpoint(tmp_path / "white.pt", "lite")
    assert bool(net.whitening.active) and not bool(net.matchability.active)
