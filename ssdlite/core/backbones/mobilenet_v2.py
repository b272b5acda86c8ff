"""MobileNetV2 (Sandler et al. 2018) as an SSDLite feature extractor."""

from typing import cast

from torch import Tensor, nn

from ..layers import ConvBNAct, InvertedResidual, LayerOptions, make_divisible

# (expand ratio t, output channels c, repeats n, first stride s), the paper's Table 2.
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# SSDLite's stride-16 tap is the expansion output of the first 160-channel block
# ("layer_15/expansion_output" in TF, features[14] here).
STRIDE16_BLOCK = 14


class MobileNetV2(nn.Module):
    """MobileNetV2 returning SSDLite's two taps.

    ``features`` has torchvision's layout, so ``torchvision.models.mobilenet_v2()``'s
    ``features.*`` weights load strictly.

    Args:
        width_mult: width multiplier alpha; channels are rounded to multiples of 8.
        padding: ``"torch"`` (symmetric) or ``"same"`` (TensorFlow SAME, for converted weights).
        bn_eps: BatchNorm epsilon (TF graphs use 1e-3).
        bn_momentum: BatchNorm momentum (PyTorch convention).
    """

    def __init__(self, width_mult: float = 1.0, padding: str = "torch", bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        options = LayerOptions(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        in_channels = make_divisible(32 * width_mult)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        stem = ConvBNAct(3, in_channels, 3, 2, **options)
        blocks: list[InvertedResidual] = []
        for t, c, n, s in STAGES:
            out_channels = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(InvertedResidual(in_channels, out_channels, stride, in_channels * t, **options))
                in_channels = out_channels
        self.features = nn.Sequential(stem, *blocks, ConvBNAct(in_channels, last_channels, 1, **options))
        # features[0] is the stem, so features[i] is blocks[i - 1].
        self.out_channels = (blocks[STRIDE16_BLOCK - 1].expanded_channels, last_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        # Indexing nn.Sequential gives a plain Module; this one is an InvertedResidual (see __init__).
        stride16_block = cast(InvertedResidual, self.features[STRIDE16_BLOCK])
        x = self.features[:STRIDE16_BLOCK](x)
        x, stride16 = stride16_block.forward_with_expansion(x)
        x = self.features[STRIDE16_BLOCK + 1 :](x)
        return [stride16, x]
