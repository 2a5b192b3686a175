import pytest
import torch

from hndesc_loc.models.caps import CapsBackbone
from hndesc_loc.models.network import HNDescNet, load_checkpoint, load_network
from hndesc_loc.models.sampling import sample_descriptors


def test_caps_parameter_names_match_the_release():
    keys = set(CapsBackbone().state_dict())
    for k in ["firstconv.weight", "firstbn.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.bias", "layer3.5.bn3.weight", "conv_coarse.conv.weight", "conv_coarse.bn.bias",
              "upconv3.conv.conv.weight", "upconv3.conv.bn.running_var", "iconv3.conv.weight", "upconv2.conv.conv.bias",
              "iconv2.bn.weight", "conv_fine.conv.weight", "conv_fine.bn.num_batches_tracked"]:
        assert k in keys, k
    assert not any(k.startswith(("layer4", "fc.")) for k in keys)
    assert CapsBackbone().conv_fine.conv.weight.shape == (128, 256, 1, 1)


def test_load_release_checkpoints(tmp_path):
    ref = CapsBackbone()
    with torch.no_grad():
        ref.conv_fine.conv.weight.normal_()
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "hndesc.pth")          # HNDesc release
    torch.save({"state_dict": {f"net.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "caps.pth")  # CAPS
    for name in ("hndesc.pth", "caps.pth"):
        net = load_checkpoint(tmp_path / name)
        assert net.backbone_name == "caps"
        assert torch.equal(net.backbone.conv_fine.conv.weight, ref.conv_fine.conv.weight)
    bad = {k: v for k, v in ref.state_dict().items() if not k.startswith("iconv2")}
    bad["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \(\d+\).*iconv2.*\n.*unexpected keys \(1\).*extra.weight"):
        load_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def test_sampling_convention_cell_centres():
    """Keypoint x maps to map coordinate x / stride: sampling at i*stride returns cell i exactly."""
    dmap = torch.randn(1, 8, 5, 7)
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    kp = torch.stack([xs.reshape(-1) * 4.0, ys.reshape(-1) * 4.0], -1)[None]
    out = sample_descriptors(dmap, kp, 4)
    ref = torch.nn.functional.normalize(dmap, dim=1).reshape(1, 8, -1)
    assert torch.allclose(out, ref, atol=1e-5)
    # Half-way between two cells: the mean of both (bilinear).
    mid = sample_descriptors(dmap, torch.tensor([[[2.0, 0.0]]]), 4)
    exp = torch.nn.functional.normalize((dmap[:, :, 0, 0] + dmap[:, :, 0, 1]) / 2, dim=1)
    assert torch.allclose(mid[:, :, 0], exp, atol=1e-5)


@pytest.mark.parametrize("backbone", ["lite", "caps", "effnet", "effnet_std"])
def test_integer_shift_equivariance(backbone):
    """Shift the image by the coarsest stride: descriptors at shifted keypoints (away from borders) agree."""
    torch.manual_seed(0)
    # A randomly initialised lite net is nearly constant; test the shipped weights.
    net = load_network("default", "lite") if backbone == "lite" else HNDescNet(backbone).eval()
    img = torch.rand(1, 3, 224, 288)
    img = torch.nn.functional.avg_pool2d(img, 5, 1, 2)  # some spatial structure
    shift = net.backbone.coarse_stride
    # A circular shift keeps the image statistics (lite standardises its input per image);
    # keypoints stay far from the seam and the borders.
    shifted = torch.roll(img, shift, dims=-1)
    kp = torch.stack(torch.meshgrid(torch.arange(90, 150, 7.3), torch.arange(80, 140, 6.1), indexing="xy"), -1)
    kp = kp.reshape(1, -1, 2).float()
    with torch.no_grad():
        d0 = net.describe(net(img), kp)
        d1 = net.describe(net(shifted), kp + torch.tensor([shift, 0.0]))
        # A keypoint convention off by a pixel would disagree noticeably:
        d_wrong = net.describe(net(shifted), kp + torch.tensor([shift + 2.0, 0.0]))
    cos = (d0 * d1).sum(1)
    assert cos.min() > 0.999, cos.min()
    assert (d0 * d_wrong).sum(1).mean() < cos.mean() - 1e-3


@pytest.mark.parametrize("backbone", ["lite", "effnet"])
def test_dense_equals_sparse(backbone):
    net = HNDescNet(backbone).eval()
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 64, 96))
        dense = net.backbone.dense(feats)
        kp = torch.tensor([[[8.0, 12.0], [40.0, 20.0]]])
        sparse = net.describe(feats, kp)
    assert torch.allclose(dense[0, :, 3, 2], sparse[0, :, 0], atol=1e-5)
    assert torch.allclose(dense[0, :, 5, 10], sparse[0, :, 1], atol=1e-5)


def test_global_head_is_unit_norm():
    net = HNDescNet("lite").eval()
    with torch.no_grad():
        g = net.global_descriptor(net(torch.rand(2, 3, 128, 128)))
    assert g.shape == (2, 128) and torch.allclose(g.norm(dim=1), torch.ones(2), atol=1e-5)
