"""The network and its math: config and presets, layers, backbones, heads, anchors, box coding, loss,
postprocessing. Tensors in, tensors out: no files, no runtimes."""

from .config import PRESETS, PostprocessConfig, SSDLiteConfig, get_config
from .model import SSDLite, build_model
from .postprocess import Detections, postprocess

__all__ = [
    "PRESETS",
    "Detections",
    "PostprocessConfig",
    "SSDLite",
    "SSDLiteConfig",
    "build_model",
    "get_config",
    "postprocess",
]
