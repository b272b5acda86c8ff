"""Loading the served model: backend choice, warm-up and the /model description."""

import os
from pathlib import Path

import numpy as np
import torch

from ssdlite import Detector
from ssdlite.runtime import CPU_RUNTIMES
from ssdlite.weights.zoo import MODELS

from .schemas import ModelInfo
from .settings import Settings


def default_workers(backend: str, threads: int | None = None) -> int:
    """Inference calls at once unless ``SSDLITE_INFERENCE_WORKERS`` says: 2 for ONNX Runtime where it has 2
    cores or more (``threads``, default all), else 1 (torch: a GPU runs one batch at a time)."""
    return 2 if backend == "onnxruntime" and (threads or os.cpu_count() or 1) >= 2 else 1


def engine_workers(detector, settings: Settings) -> int:
    """How many inference calls the engine runs at once for this loaded detector."""
    return settings.inference_workers or default_workers(getattr(detector.backend, "name", "custom"), settings.threads)


def load_detector(settings: Settings) -> Detector:
    """The ``ssdlite.Detector`` for ``settings.model`` (a zoo name or a .pt/.onnx/.tflite/.pte path).

    Raises:
        ssdlite.SSDLiteError, OSError: the model cannot be loaded; the message says why.
    """
    detector = Detector.load(settings.model, backend=settings.backend, device=settings.device, threads=settings.threads)
    if detector.backend.name in CPU_RUNTIMES:
        # torch only resizes, converts and post-processes small tensors here; its thread pool
        # would fight ONNX Runtime's for the cores (on a busy 2-core machine a 0.3 ms
        # conversion took 8 ms with 2 torch threads).
        torch.set_num_threads(1)
    return detector


def warm_up(detector, max_batch_size: int):
    """Runs the first inferences: ONNX Runtime and cuDNN plan on their first call of each batch shape."""
    size = detector.config.image_size
    image = np.zeros((size, size, 3), np.uint8)
    for batch_size in sorted({*range(1, min(max_batch_size, 8) + 1), max_batch_size}):
        detector.predict_batch([image] * batch_size)


def model_name(source: str) -> str:
    """What clients see as the model's name: the zoo name, or a model file's name without the server's path."""
    return source if source in MODELS else Path(source).stem


def describe(detector, settings: Settings) -> ModelInfo:
    backend = detector.backend
    return ModelInfo(
        name=model_name(settings.model),
        classes=detector.class_names,
        input_size=detector.config.image_size,
        backend=getattr(backend, "name", "custom"),
        precision=getattr(backend, "precision", "float32"),
        device=str(detector.device),
        max_batch_size=settings.max_batch_size,
        score_threshold=settings.score_threshold,
        max_detections=settings.max_detections,
    )
