"""SSDLite object detection on MobileNet backbones.

The package is layered, and imports flow down only: ``cli`` > ``batch`` (corpus detection) >
``video`` (sources, tracking, counting) > ``runtime`` (backends, loader, ``Detector``) > ``weights``
(checkpoints, zoo, TF converter) > ``deploy`` (export formats) > ``images`` > ``core`` (the network
and its math) > ``errors``.
"""

from .batch.slicing import predict_sliced
from .core import PRESETS, PostprocessConfig, SSDLite, SSDLiteConfig, build_model, get_config
from .deploy import export_model, export_onnx
from .errors import SSDLiteError
from .images import draw_detections, read_image
from .runtime import BACKENDS, Detector, load_backend
from .weights import CheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "BACKENDS",
    "PRESETS",
    "CheckpointError",
    "Detector",
    "PostprocessConfig",
    "SSDLite",
    "SSDLiteConfig",
    "SSDLiteError",
    "build_model",
    "draw_detections",
    "export_model",
    "export_onnx",
    "get_config",
    "load_backend",
    "load_checkpoint",
    "predict_sliced",
    "read_image",
    "save_checkpoint",
]
