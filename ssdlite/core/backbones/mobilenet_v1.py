"""MobileNetV1 (Howard et al. 2017) as an SSD/SSDLite feature extractor."""

from collections import OrderedDict

from torch import Tensor, nn

from ..layers import ConvBNAct, LayerOptions, make_divisible

STEM_CHANNELS = 32

# (pointwise output channels, depthwise stride) of the 13 depthwise-separable blocks, the
# paper's Table 1 ("Conv2d_1" ... "Conv2d_13" in TF's mobilenet_v1).
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))

# TF's ssd_mobilenet_v1 taps "Conv2d_11_pointwise" (stride 16) and "Conv2d_13_pointwise"
# (stride 32): features[11] and features[13] here, features[0] being the stem.
STRIDE16_BLOCK = 11


class MobileNetV1(nn.Module):
    """MobileNetV1 returning ``[Conv2d_11_pointwise, Conv2d_13_pointwise]``.

    ``features[0]`` is the stem; ``features[i]`` (1 <= i <= 13) holds ``depthwise`` and
    ``pointwise`` ``ConvBNAct``s, named after TF's ``Conv2d_i_depthwise``/``Conv2d_i_pointwise``.
    All activations are ReLU6, as in TF's implementation.

    Args:
        width_mult: width multiplier alpha; channels are rounded to multiples of 8.
        padding: ``"torch"`` (symmetric) or ``"same"`` (TensorFlow SAME, for converted weights).
        bn_eps: BatchNorm epsilon (TF graphs use 1e-3).
        bn_momentum: BatchNorm momentum (PyTorch convention).
    """

    def __init__(self, width_mult: float = 1.0, padding: str = "torch", bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        options = LayerOptions(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        in_channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [ConvBNAct(3, in_channels, 3, 2, **options)]
        for index, (channels, stride) in enumerate(BLOCKS, start=1):
            out_channels = make_divisible(channels * width_mult)
            depthwise = ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, **options)
            pointwise = ConvBNAct(in_channels, out_channels, 1, **options)
            layers.append(nn.Sequential(OrderedDict(depthwise=depthwise, pointwise=pointwise)))
            if index == STRIDE16_BLOCK:
                stride16_channels = out_channels
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = (stride16_channels, in_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        stride16 = self.features[: STRIDE16_BLOCK + 1](x)
        return [stride16, self.features[STRIDE16_BLOCK + 1 :](stride16)]
