"""Running a model: backends (torch, ONNX Runtime, LiteRT, ExecuTorch), the loader that picks one, and ``Detector``."""

from .backends import BACKENDS, Backend, ModelLoadError, OnnxRuntimeBackend, TorchBackend
from .detector import Detector, UnknownClassError, check_classes
from .loading import CPU_RUNTIMES, MODEL_FORMATS, default_model, load_backend, model_file

__all__ = [
    "BACKENDS",
    "CPU_RUNTIMES",
    "MODEL_FORMATS",
    "Backend",
    "Detector",
    "ModelLoadError",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "UnknownClassError",
    "check_classes",
    "default_model",
    "load_backend",
    "model_file",
]
