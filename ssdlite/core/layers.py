"""Building blocks shared by the backbones, the extra layers and the heads.

``ConvBNAct`` is an ``nn.Sequential`` of (conv, bn, act) so its state-dict keys are
``0.weight``, ``1.running_mean``, ... exactly like torchvision's ``Conv2dNormActivation``;
that is what lets torchvision's ImageNet MobileNetV2 weights load strictly.
"""

import math
from typing import TypedDict

import torch.nn.functional as F
from torch import Tensor, nn

PADDING_STYLES = ("torch", "same")


class LayerOptions(TypedDict):
    """The settings every ``ConvBNAct`` of a network shares, passed on as ``**options``."""

    padding: str
    bn_eps: float
    bn_momentum: float


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to a multiple of ``divisor`` without dropping more than 10%."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial dimension.

    Stride-2 convolutions on even sizes pad only after (bottom/right); plain symmetric padding
    keeps the output shape but shifts every window by one pixel.
    """
    effective_kernel = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective_kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size."""

    def forward(self, x: Tensor) -> Tensor:
        # Python ints from the shape: exporters see constant pads for a fixed input size.
        pad_h = same_padding(int(x.shape[-2]), self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = same_padding(int(x.shape[-1]), self.kernel_size[1], self.stride[1], self.dilation[1])
        if pad_h[0] == pad_h[1] and pad_w[0] == pad_w[1]:
            # The convolution's own padding: a separate pad op costs a copy of the input (about a
            # third of the TF preset's ONNX Runtime time when every 3x3 conv had one).
            return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h[0], pad_w[0]), self.dilation, self.groups)
        x = F.pad(x, (pad_w[0], pad_w[1], pad_h[0], pad_h[1]))
        return self._conv_forward(x, self.weight, self.bias)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: str = "torch",
) -> nn.Conv2d:
    """A convolution with PyTorch-style symmetric padding or TensorFlow "SAME" padding."""
    if padding not in PADDING_STYLES:
        raise ValueError(f"padding must be one of {PADDING_STYLES}, got {padding!r}")
    if padding == "same" and kernel_size > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=bias)


def make_activation(name: str) -> nn.Module:
    activations = {"relu6": nn.ReLU6, "relu": nn.ReLU, "hardswish": nn.Hardswish, "none": nn.Identity}
    if name not in activations:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(activations)}")
    return activations[name](inplace=True) if name != "none" else nn.Identity()


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) + BatchNorm + activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: str = "relu6",
        padding: str = "torch",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        conv = conv2d(in_channels, out_channels, kernel_size, stride, groups, padding=padding)
        bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        if activation == "none":
            super().__init__(conv, bn)
        else:
            super().__init__(conv, bn, make_activation(activation))
        self.out_channels = out_channels


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with hard-sigmoid gating (MobileNetV3)."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expansion, depthwise kxk, optional SE, linear 1x1 projection.

    The layers live in ``self.conv`` in torchvision's order, so ``conv[0]`` is the expansion
    whenever ``expand_ratio != 1``; SSDLite taps that expansion output (``forward_with_expansion``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expanded_channels: int,
        kernel_size: int = 3,
        activation: str = "relu6",
        se_channels: int = 0,
        padding: str = "torch",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        bn = LayerOptions(bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)
        self.has_expansion = expanded_channels != in_channels
        self.has_skip = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if self.has_expansion:
            layers.append(ConvBNAct(in_channels, expanded_channels, 1, activation=activation, **bn))
        layers.append(
            ConvBNAct(expanded_channels, expanded_channels, kernel_size, stride, expanded_channels, activation, **bn)
        )
        if se_channels:
            layers.append(SqueezeExcite(expanded_channels, se_channels))
        layers.append(nn.Conv2d(expanded_channels, out_channels, 1, bias=False))
        layers.append(nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum))
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels
        self.expanded_channels = expanded_channels

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.has_skip else self.conv(x)

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (block output, output of the 1x1 expansion)."""
        if not self.has_expansion:
            raise ValueError("this block has no expansion layer to tap")
        expanded = self.conv[0](x)
        out = self.conv[1:](expanded)
        return (x + out if self.has_skip else out), expanded
