"""The SSDLite network (tensor in, raw outputs out) and ``build_model``."""

import os
from typing import Unpack

import torch
from torch import Tensor, nn

from .anchors import anchors_for, num_anchors_per_location
from .backbones import build_backbone
from .backbones.imagenet import TORCHVISION_BN_EPS, BackboneWeightsError, check_backbone_weights, load_backbone_weights
from .config import IMAGENET_MEAN, IMAGENET_STD, SSDLiteConfig, get_config
from .head import SSDLiteHead
from .layers import ConvBNAct, LayerOptions, make_divisible


class ExtraBlock(nn.Sequential):
    """SSDLite extra layer: 1x1 to half depth, 3x3 depthwise stride 2, 1x1 to depth."""

    def __init__(self, in_channels: int, depth: int, **options: Unpack[LayerOptions]):
        half = depth // 2
        super().__init__(
            ConvBNAct(in_channels, half, 1, **options),
            ConvBNAct(half, half, 3, 2, groups=half, **options),
            ConvBNAct(half, depth, 1, **options),
        )


class SSDLite(nn.Module):
    """SSDLite: backbone taps + four extra layers + depthwise-separable heads.

    ``forward`` takes ``[N, 3, H, W]`` RGB float pixels in [0, 255] at ``config.image_size``
    (normalisation happens inside, so exported models take the same input) and returns
    ``(box_regression [N, A, 4], class_logits [N, A, num_classes])`` aligned with ``self.anchors``.

    ``backbone_weights`` says which pretrained backbone weights ``build_model`` loaded (``None``:
    from scratch), for logs; it is not part of the config or of checkpoints.
    """

    mean: Tensor
    std: Tensor
    anchors: Tensor

    def __init__(self, config: SSDLiteConfig):
        super().__init__()
        self.config = config
        self.backbone_weights: str | None = None
        options = LayerOptions(padding=config.padding, bn_eps=config.bn_eps, bn_momentum=config.bn_momentum)
        self.backbone = build_backbone(config.backbone, width_mult=config.width_mult, **options)
        channels = list(self.backbone.out_channels)
        self.extras = nn.ModuleList()
        for depth in config.extra_depths:
            depth = make_divisible(depth * config.width_mult, 8, min_value=16)
            self.extras.append(ExtraBlock(channels[-1], depth, **options))
            channels.append(depth)
        boxes_per_location = num_anchors_per_location(config.anchor_style, len(channels), config.aspect_ratios)
        self.box_head = SSDLiteHead(channels, boxes_per_location, 4, **options)
        self.class_head = SSDLiteHead(channels, boxes_per_location, config.num_classes, **options)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("anchors", anchors_for(config), persistent=False)
        self._init_weights()

    def _init_weights(self):
        # From scratch, every conv starts at N(0, 0.03): torchvision's SSDLite without pretrained
        # weights and the TF Object Detection API's SSDLite configs both do this.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.03)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def features(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        maps = self.backbone(x)
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        return maps

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.features(images)
        return self.box_head(maps), self.class_head(maps)


def build_model(
    name: str = "ssdlite320_mobilenet_v2",
    *,
    num_classes: int = 91,
    backbone_weights: str | os.PathLike | None = None,
    **overrides,
) -> SSDLite:
    """Builds an SSDLite model from a named preset.

    With ``backbone_weights`` the model is first built exactly as without (same random draws, so
    extras and heads are identical), then its backbone tensors are overwritten. The config then takes
    the settings the weights were trained with: ImageNet ``mean``/``std``, torchvision's BatchNorm
    epsilon (``TORCHVISION_BN_EPS``: 1e-5 for MobileNetV2, 1e-3 for V3) and symmetric ``padding``;
    since they are recorded in the config, a checkpoint of the model rebuilds the same network.

    Args:
        name: a key of ``PRESETS``, e.g. ``"ssdlite320_mobilenet_v2"``.
        num_classes: classes including background (COCO: 91 with TF's ids, 81 contiguous).
        backbone_weights: ``None`` (from scratch), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``,
            downloaded to the torch hub cache on first use) or a path to a torchvision-format state
            dict; for ``mobilenet_v2``, ``mobilenet_v3_large`` and ``mobilenet_v3_small`` at width 1.0.
        **overrides: any other ``SSDLiteConfig`` field, e.g. ``width_mult=0.5, image_size=256``.

    Returns:
        An ``SSDLite`` module; ``model.backbone_weights`` describes what was loaded.

    Raises:
        BackboneWeightsError: the weights do not fit the backbone, an override contradicts them, the
            file is missing or unreadable, or the download failed (one line each).
    """
    config = get_config(name, num_classes=num_classes, **overrides)
    if backbone_weights is None:
        return SSDLite(config)
    check_backbone_weights(config, weights=backbone_weights)
    required = {
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "bn_eps": TORCHVISION_BN_EPS[config.backbone],
        "padding": "torch",
    }
    for key, value in required.items():
        if key in overrides and not _same_setting(overrides[key], value):
            raise BackboneWeightsError(
                f"{key}={overrides[key]!r} contradicts the ImageNet backbone weights, which need {key}={value!r}; "
                f"drop the {key} override"
            )
    model = SSDLite(config.replace(**required))
    model.backbone_weights = load_backbone_weights(model.backbone, config.backbone, backbone_weights)
    return model


def _same_setting(given, required) -> bool:
    if isinstance(required, tuple):
        return isinstance(given, (tuple, list)) and tuple(float(v) for v in given) == required
    return given == required
