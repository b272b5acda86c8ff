"""SSDLite prediction heads: per feature map, 3x3 depthwise + BN + ReLU6, then a 1x1 conv."""

import torch
from torch import Tensor, nn

from .layers import ConvBNAct


class SSDLiteHead(nn.Module):
    """One depthwise-separable predictor per feature map, for ``outputs_per_box`` values per box.

    Args:
        in_channels: channels of each feature map.
        boxes_per_location: anchors per location of each feature map.
        outputs_per_box: 4 for box regression, K for class logits.
        padding: ``"torch"`` or ``"same"``.
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum.
    """

    def __init__(
        self,
        in_channels: list[int],
        boxes_per_location: list[int],
        outputs_per_box: int,
        padding: str = "torch",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        self.outputs_per_box = outputs_per_box
        self.predictors = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(c, c, 3, groups=c, padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum),
                nn.Conv2d(c, a * outputs_per_box, 1),
            )
            for c, a in zip(in_channels, boxes_per_location, strict=False)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        """Maps ``[N, C_i, H_i, W_i]`` features to ``[N, sum(H_i * W_i * A_i), outputs_per_box]``."""
        return torch.cat(self.levels(features), dim=1)

    def levels(self, features: list[Tensor]) -> list[Tensor]:
        """Each feature map's ``[N, H_i * W_i * A_i, outputs_per_box]`` outputs, before the concatenation."""
        outputs = []
        for feature, predictor in zip(features, self.predictors, strict=False):
            out = predictor(feature)
            # NHWC before the reshape so the order is y -> x -> box, as the anchors are.
            outputs.append(out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, self.outputs_per_box))
        return outputs
