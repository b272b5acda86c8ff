"""Feature extractors. Each returns ``[stride-16 map, stride-32 map]`` and sets ``out_channels``."""

from collections.abc import Callable

from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3

Backbone = MobileNetV1 | MobileNetV2 | MobileNetV3

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "mobilenet_v1": lambda **kw: MobileNetV1(**kw),
    "mobilenet_v2": lambda **kw: MobileNetV2(**kw),
    "mobilenet_v3_large": lambda **kw: MobileNetV3("large", **kw),
    "mobilenet_v3_large_reduced_tail": lambda **kw: MobileNetV3("large", reduced_tail=True, **kw),
    "mobilenet_v3_small": lambda **kw: MobileNetV3("small", **kw),
}


def build_backbone(name: str, **kwargs) -> Backbone:
    """Builds a backbone by name with ``width_mult``, ``padding``, ``bn_eps``, ``bn_momentum``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)
