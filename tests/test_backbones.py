"""Backbones: tap shapes and channels, torchvision equivalence, parameter counts, SAME padding."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ssdlite.core.backbones import BACKBONES, build_backbone
from ssdlite.core.backbones.mobilenet_v3 import MobileNetV3
from ssdlite.core.layers import Conv2dSame, ConvBNAct, conv2d


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def calibrate_bn(module: nn.Module, x: torch.Tensor) -> None:
    """Random BN affine parameters and running statistics taken from ``x``, then eval mode.

    With random init and the default running statistics (mean 0, var 1) the activations of a
    deep MobileNet shrink to ~1e-8 (depthwise kernels are initialised for fan-out), so an
    absolute tolerance would compare nothing. Calibrated statistics keep every layer O(1).
    """
    generator = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch gives that batch's statistics
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=generator))
    module.train()
    with torch.no_grad():
        module(x)
    module.eval()


def assert_nontrivial(t: torch.Tensor) -> None:
    assert t.std() > 0.1, "activations vanished: the comparison would be vacuous"


@pytest.mark.parametrize("padding", ["torch", "same"])
@pytest.mark.parametrize("width_mult", [0.5, 1.0])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_taps_have_strides_16_and_32(name, width_mult, padding):
    torch.manual_seed(0)
    model = build_backbone(name, width_mult=width_mult, padding=padding).eval()
    assert len(model.out_channels) == 2
    with torch.no_grad():
        for size, expected in ((320, (20, 10)), (300, (19, 10))):
            features = model(torch.randn(1, 3, size, size))
            assert len(features) == 2
            for feature, channels, hw in zip(features, model.out_channels, expected, strict=True):
                assert feature.shape == (1, channels, hw, hw)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_same_padding_uses_conv2d_same(name):
    model = build_backbone(name, padding="same")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
    assert convs and all(isinstance(m, Conv2dSame) for m in convs)
    model = build_backbone(name, padding="torch")
    assert not any(isinstance(m, Conv2dSame) for m in model.modules())


@pytest.mark.parametrize(
    "name, channels",
    [
        ("mobilenet_v1", (512, 1024)),
        ("mobilenet_v2", (576, 1280)),
        ("mobilenet_v3_large", (672, 960)),
        ("mobilenet_v3_small", (288, 576)),
    ],
)
def test_out_channels_at_width_1(name, channels):
    assert build_backbone(name).out_channels == channels


def test_mobilenet_v2_matches_torchvision():
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2()
    calibrate_bn(tv.features, torch.randn(2, 3, 96, 96))
    ours = build_backbone("mobilenet_v2")
    tv_state = {k[len("features.") :]: v for k, v in tv.state_dict().items() if k.startswith("features.")}
    ours_state = {k[len("features.") :]: v for k, v in ours.state_dict().items()}
    assert {k: v.shape for k, v in tv_state.items()} == {k: v.shape for k, v in ours_state.items()}
    ours.features.load_state_dict(tv_state, strict=True)
    ours.eval()
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        stride16, stride32 = ours(x)
        expected16 = tv.features[14].conv[0](tv.features[:14](x))
        expected32 = tv.features(x)
    assert_nontrivial(expected16)
    assert_nontrivial(expected32)
    torch.testing.assert_close(stride16, expected16, atol=1e-5, rtol=0)
    torch.testing.assert_close(stride32, expected32, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant, tap_index", [("large", 13), ("small", 9)])
def test_mobilenet_v3_matches_torchvision(variant, tap_index):
    """torchvision names bneck layers ``block.*`` and nests the projection's conv+BN, so the
    state dicts line up by position and shape rather than by name."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"mobilenet_v3_{variant}")()
    calibrate_bn(tv.features, torch.randn(2, 3, 96, 96))
    ours = MobileNetV3(variant, bn_eps=1e-3).eval()  # torchvision's MobileNetV3 uses eps 1e-3
    assert ours.stride16_block == tap_index
    tv_values = list(tv.features.state_dict().values())
    ours_keys = list(ours.features.state_dict())
    assert len(tv_values) == len(ours_keys)
    ours.features.load_state_dict(dict(zip(ours_keys, tv_values, strict=True)), strict=True)
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        stride16, stride32 = ours(x)
        expected16 = tv.features[tap_index].block[0](tv.features[:tap_index](x))
        expected32 = tv.features(x)
    assert_nontrivial(expected16)
    assert_nontrivial(expected32)
    torch.testing.assert_close(stride16, expected16, atol=1e-5, rtol=0)
    torch.testing.assert_close(stride32, expected32, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name, reference",
    [
        ("mobilenet_v2", torchvision.models.mobilenet_v2),
        ("mobilenet_v3_large", torchvision.models.mobilenet_v3_large),
        ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small),
    ],
)
def test_param_count_matches_torchvision(name, reference):
    # torchvision follows the paper tables (no reduced_tail by default): counts are identical.
    assert num_params(build_backbone(name)) == num_params(reference().features)


def test_mobilenet_v1_param_count():
    # Paper: 4.2M parameters with the 1024x1000 FC layer, i.e. ~3.2M in the convolutions.
    model = build_backbone("mobilenet_v1")
    conv_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert abs(conv_params - 3.2e6) / 3.2e6 < 0.02
    assert abs(num_params(model) - 3.2e6) / 3.2e6 < 0.02


def test_mobilenet_v1_layout():
    model = build_backbone("mobilenet_v1", width_mult=0.5)
    assert len(model.features) == 14  # stem + 13 depthwise-separable blocks
    assert model.out_channels == (256, 512)
    strides = [model.features[0][0].stride[0]] + [b.depthwise[0].stride[0] for b in model.features[1:]]
    assert strides == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert all(isinstance(m, nn.ReLU6) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6)))


def test_mobilenet_v3_rejects_unknown_variant():
    with pytest.raises(ValueError):
        MobileNetV3("medium")


def test_same_padding_stride2_pads_bottom_right_on_even_sizes():
    torch.manual_seed(0)
    block = ConvBNAct(4, 6, 3, 2, padding="same")
    conv = block[0]
    assert isinstance(conv, Conv2dSame)
    x = torch.randn(2, 4, 8, 10)
    calibrate_bn(block, x)
    with torch.no_grad():
        # Even size, stride 2, kernel 3: one row/column of padding, after only.
        expected = block[2](block[1](F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)))
        torch.testing.assert_close(block(x), expected)
        assert block(x).shape == (2, 6, 4, 5)
        # Symmetric (PyTorch) padding shifts every window by one pixel: a different result.
        symmetric = block[2](block[1](F.conv2d(x, conv.weight, stride=2, padding=1)))
        assert not torch.allclose(block(x), symmetric)
        # Odd size: SAME pads (1, 1), the same as PyTorch's padding.
        x_odd = torch.randn(2, 4, 9, 9)
        torch.testing.assert_close(conv(x_odd), F.conv2d(x_odd, conv.weight, stride=2, padding=1))


def test_same_padding_depthwise_and_pointwise():
    torch.manual_seed(0)
    depthwise = conv2d(4, 4, 5, 2, groups=4, padding="same")
    assert isinstance(depthwise, Conv2dSame)
    x = torch.randn(1, 4, 10, 10)
    # Kernel 5, stride 2, size 10: total padding 3 -> (1 before, 2 after).
    expected = F.conv2d(F.pad(x, (1, 2, 1, 2)), depthwise.weight, stride=2, groups=4)
    torch.testing.assert_close(depthwise(x), expected)
    # 1x1 convolutions need no padding: a plain nn.Conv2d.
    assert type(conv2d(4, 8, 1, padding="same")) is nn.Conv2d
