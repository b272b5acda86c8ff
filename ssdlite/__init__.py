"""SSDLite object detection on MobileNet backbones."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .detector import Detector
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


def __getattr__(name: str):
    # Imported on first use, so `python -m ssdlite.export` does not find its module already loaded.
    if name == "export_onnx":
        from .export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'ssdlite' has no attribute {name!r}")
