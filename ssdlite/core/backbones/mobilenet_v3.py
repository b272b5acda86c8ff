"""MobileNetV3-Large and -Small (Howard et al. 2019) as SSDLite feature extractors."""

from typing import cast

from torch import Tensor, nn

from ..layers import ConvBNAct, InvertedResidual, LayerOptions, make_divisible

STEM_CHANNELS = 16
ACTIVATIONS = {"RE": "relu", "HS": "hardswish"}

# (kernel, expansion size, output channels, SE, activation, stride) per bneck, the paper's
# Tables 1 and 2. The stem (3x3 conv, 16, HS, stride 2) and the last 1x1 conv (6x the last
# bneck's output: 960 / 576, HS) are built around them.
BLOCKS = {
    "large": (
        (3, 16, 16, False, "RE", 1),
        (3, 64, 24, False, "RE", 2),
        (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2),
        (5, 120, 40, True, "RE", 1),
        (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2),
        (3, 200, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 480, 112, True, "HS", 1),
        (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2),
        (5, 960, 160, True, "HS", 1),
        (5, 960, 160, True, "HS", 1),
    ),
    "small": (
        (3, 16, 16, True, "RE", 2),
        (3, 72, 24, False, "RE", 2),
        (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2),
        (5, 240, 40, True, "HS", 1),
        (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1),
        (5, 144, 48, True, "HS", 1),
        (5, 288, 96, True, "HS", 2),
        (5, 576, 96, True, "HS", 1),
        (5, 576, 96, True, "HS", 1),
    ),
}


class MobileNetV3(nn.Module):
    """MobileNetV3 returning SSDLite's two taps, chosen as torchvision's ssdlite320_mobilenet_v3_large.

    The stride-16 tap is the expansion output of the last stride-2 bneck (672 ch for large,
    288 for small); the stride-32 tap is the last 1x1 conv (960 / 576). Paper widths unless
    ``reduced_tail``, which halves the stride-32 stage as torchvision does when it builds SSDLite
    without ImageNet weights (the stride-16 tap keeps its width). ``features`` is
    ``[stem, bnecks..., last conv]`` in torchvision's order (its bneck layers are ``block.*``
    there, ``conv.*`` here, with the projection's conv and BN as separate modules), so
    torchvision weights load by position.

    Args:
        variant: ``"large"`` or ``"small"``.
        width_mult: width multiplier alpha; channels are rounded to multiples of 8.
        padding: ``"torch"`` (symmetric) or ``"same"`` (TensorFlow SAME, for converted weights).
        bn_eps: BatchNorm epsilon (TF graphs and torchvision's MobileNetV3 use 1e-3).
        bn_momentum: BatchNorm momentum (PyTorch convention).
        reduced_tail: halve the channels of the last three bnecks (and so of the last conv).
    """

    def __init__(
        self,
        variant: str = "large",
        width_mult: float = 1.0,
        reduced_tail: bool = False,
        padding: str = "torch",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        if variant not in BLOCKS:
            raise ValueError(f"variant must be one of {sorted(BLOCKS)}, got {variant!r}")
        options = LayerOptions(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        in_channels = make_divisible(STEM_CHANNELS * width_mult)
        stem = ConvBNAct(3, in_channels, 3, 2, activation="hardswish", **options)
        blocks = list(BLOCKS[variant])
        if reduced_tail:
            for i, (kernel, expansion, channels, se, activation, stride) in enumerate(blocks[-3:], len(blocks) - 3):
                expansion = expansion if stride == 2 else expansion // 2
                blocks[i] = (kernel, expansion, channels // 2, se, activation, stride)
        bnecks: list[InvertedResidual] = []
        for kernel, expansion, channels, se, activation, stride in blocks:
            expanded = make_divisible(expansion * width_mult)
            out_channels = make_divisible(channels * width_mult)
            se_channels = make_divisible(expanded // 4) if se else 0
            block = InvertedResidual(
                in_channels, out_channels, stride, expanded, kernel, ACTIVATIONS[activation], se_channels, **options
            )
            bnecks.append(block)
            in_channels = out_channels
        # torchvision: 6x the (already width-scaled) last bneck output.
        last_channels = 6 * in_channels
        last_conv = ConvBNAct(in_channels, last_channels, 1, activation="hardswish", **options)
        self.features = nn.Sequential(stem, *bnecks, last_conv)
        self.variant = variant
        # features[0] is the stem, so bneck i of the table is features[i + 1].
        strides = [block[-1] for block in blocks]
        self.stride16_block = max(i for i, s in enumerate(strides) if s == 2) + 1
        self.out_channels = (bnecks[self.stride16_block - 1].expanded_channels, last_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        # Indexing nn.Sequential gives a plain Module; this one is an InvertedResidual (see __init__).
        stride16_block = cast(InvertedResidual, self.features[self.stride16_block])
        x = self.features[: self.stride16_block](x)
        x, stride16 = stride16_block.forward_with_expansion(x)
        x = self.features[self.stride16_block + 1 :](x)
        return [stride16, x]
