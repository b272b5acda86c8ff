"""SSDLite object detection on MobileNet backbones."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .detector import Detector
from .export import export_onnx
from .model import PRESETS, SSDLite, SSDLiteConfig, build_model, get_config

__all__ = [
    "PRESETS",
    "CheckpointError",
    "Detector",
    "SSDLite",
    "SSDLiteConfig",
    "build_model",
    "export_onnx",
    "get_config",
    "load_checkpoint",
    "save_checkpoint",
]
