"""Learned descriptor whitening (hndesc_loc.models.whitening, hndesc_loc.train.whitening)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hndesc_loc.models.network import load_checkpoint, load_network
from hndesc_loc.models.whitening import DescriptorWhitening, learn_whitening


def nuisance_pairs(n: int, dim: int = 16, seed: int = 0):
    """Unit descriptors whose matching copies differ mostly along three 'nuisance' directions
    (as illumination moves a descriptor along a few directions) plus a little isotropic noise."""
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(99)))[0][:, :3]
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    def view():
        return F.normalize(z + 0.6 * torch.randn(n, 3, generator=g) @ basis.T + 0.03 * torch.randn(n, dim, generator=g), dim=1)
    return view(), view()


def nn_accuracy(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a @ b.T).argmax(1) == torch.arange(len(a))).float().mean())


def test_learned_whitening_suppresses_the_directions_positives_differ_in():
    train0, train1 = nuisance_pairs(4000, seed=0)
    test0, test1 = nuisance_pairs(500, seed=1)
    mean, projection = learn_whitening(train0, train1)
    w = DescriptorWhitening(16)
    w.set(mean, projection)
    white0, white1 = (w(t.T[None])[0].T for t in (test0, test1))
    before, after = nn_accuracy(test0, test1), nn_accuracy(white0, white1)
    assert after > before + 0.2, (before, after)
    assert torch.allclose(white0.norm(dim=1), torch.ones(len(white0)), atol=1e-5)
    assert float(projection.abs().max()) == pytest.approx(1.0)


def test_whitening_power_shrinks_towards_centring_only():
    train0, train1 = nuisance_pairs(4000, seed=0)
    test0, test1 = nuisance_pairs(500, seed=1)
    acc = []
    for power in (0.0, 0.5, 1.0):
        mean, projection = learn_whitening(train0, train1, power=power)
        w = DescriptorWhitening(16)
        w.set(mean, projection)
        acc.append(nn_accuracy(*(w(t.T[None])[0].T for t in (test0, test1))))
        if power == 0:   # centring and a rotation only: similarities of the centred descriptors
            centred = torch.nn.functional.normalize(test0 - mean, dim=1)
            assert torch.allclose(w(test0.T[None])[0].T @ w(test0.T[None])[0], centred @ centred.T, atol=1e-4)
    assert acc[0] < acc[1] < acc[2], acc
    with pytest.raises(ValueError, match="power must be in"):
        learn_whitening(train0, train1, power=1.5)


def test_too_few_pairs_or_mismatched_shapes_are_clear_errors():
    a, b = nuisance_pairs(20)
    with pytest.raises(ValueError, match="at least 32"):
        learn_whitening(a, b)
    with pytest.raises(ValueError, match=r"\[M,D\]"):
        learn_whitening(a, b[:10])
    with pytest.raises(ValueError, match="dimension 8"):
        DescriptorWhitening(8).set(torch.zeros(16), torch.eye(16))
    from hndesc_loc.train.whitening import main as learn_main

    with pytest.raises(FileNotFoundError, match="does not exist: pass a file written by"):
        learn_main(Path("no_such_weights.pt"), Path("configs/train/effnet_std.yaml"), Path("out.pt"))


def test_files_without_whitening_describe_as_before():
    net = load_network("default", "lite")
    assert not bool(net.whitening.active)
    image, kp = torch.rand(1, 3, 96, 128), torch.rand(1, 20, 2) * 90
    feats = net(image)
    assert torch.equal(net.describe(feats, kp), net.backbone.describe(feats, kp))


def test_cli_writes_weights_whose_descriptors_are_whitened_and_training_drops_it(tmp_path):
    from hndesc_loc.train.export import main as export_main
    from hndesc_loc.train.trainer import Trainer
    from hndesc_loc.train.whitening import main as learn_main

    config = tmp_path / "tiny.yaml"
    config.write_text("backbone: lite\ndata:\n  builtin: [brick, camera, coins, grass]\n  num_keypoints: 128\n")
    source = Path(__file__).resolve().parent.parent / "hndesc_loc" / "weights" / "hndesc_lite.pt"
    out = learn_main(source, config, tmp_path / "white.pt", num_pairs=8)
    assert out["whitening"]["descriptor_pairs"] >= 256 and out["model"]["whitening.projection"].dtype == torch.float32

    plain, white = load_checkpoint(source, "lite"), load_checkpoint(tmp_path / "white.pt", "lite")
    assert bool(white.whitening.active)
    image, kp = torch.rand(1, 3, 96, 128), torch.rand(1, 30, 2) * 90
    with torch.no_grad():
        d = plain.describe(plain(image), kp)
        expected = F.normalize(white.whitening.projection @ (d[0] - white.whitening.mean[:, None]), dim=0)
        got = white.describe(white(image), kp)[0]
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, d[0], atol=1e-2)

    # A fine-tune changes the descriptor the whitening was learned for: the trainer drops it.
    trainer = Trainer.__new__(Trainer)
    trainer.conf = {"init_weights": str(tmp_path / "white.pt"), "backbone": "lite"}
    assert not bool(trainer.build_network().whitening.active)

    # fp16 export of a checkpoint keeps the whitening in float32.
    ckpt = {"model": white.state_dict(), "backbone": "lite", "config": {"stage": "descriptor"}, "step": 1,
            "best_val": 0.0}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    export_main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--output", str(tmp_path / "half.pt"), "--half"])
    half = torch.load(tmp_path / "half.pt", weights_only=False)["model"]
    assert half["whitening.projection"].dtype == torch.float32 and half["backbone.head.0.weight"].dtype == torch.float16


def test_pairs_at_the_detection_heads_keypoints_match_geometrically():
    """'detector' mode: keypoints from the joint file's head on view A, warped by the pair's
    homography into view B (so matching descriptors are similar); a file without a trained
    head is refused."""
    from hndesc_loc.train.data import PairDataset, collect_images
    from hndesc_loc.train.trainer import default_conf
    from hndesc_loc.train.whitening import positive_pairs

    conf = {**default_conf["data"], "builtin": ["brick", "camera"], "num_keypoints": 32, "night_prob": 0.0,
            "transfer_prob": 0.0}
    dataset = PairDataset(collect_images([], None, "train", conf["builtin"]), conf, seed=0)
    joint = load_network("default", "lite", detector=True)
    a, b = positive_pairs(joint, dataset, 8, seed=0, keypoints="detector")
    assert len(a) > 8 * 32 and a.shape == b.shape
    assert float((a * b).sum(1).median()) > float((a * b.roll(1, 0)).sum(1).median()) + 0.3
    with pytest.raises(ValueError, match="trained detection head"):
        positive_pairs(load_network("default", "lite"), dataset, 8, seed=0, keypoints="detector")
