"""Runs a ``.tflite`` export (``ssdlite export -o model.tflite``) with the LiteRT interpreter on the CPU.

The file's layout is MediaPipe's (see :mod:`ssdlite.deploy.tflite`): NHWC input, (dy, dx, dh, dw)
boxes divided by the box weights, and class probabilities without the background column. The
backend turns them back into what :class:`ssdlite.Detector` decodes: (dx, dy, dw, dh) box
regression and logits whose score function gives the same probabilities.
"""

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import SSDLiteConfig
from ..deploy.tflite import RUNTIME_HINT, YXHW, mediapipe_input, read_tflite_metadata
from ..errors import SSDLiteError
from .backends import ModelLoadError

# Probabilities are clipped this far from 0 and 1 before their logits are taken (an INT8 file's
# scores are multiples of 1/256, 0 and 1 included).
PROBABILITY_EPSILON = 1e-7


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ModelLoadError(
            f"running .tflite files needs ai-edge-litert ({error.name} is missing): {RUNTIME_HINT}"
        ) from None
    return Interpreter


def probabilities_to_logits(scores: np.ndarray, score_function: str) -> np.ndarray:
    """``[..., K - 1]`` class probabilities as ``[..., K]`` logits (background first) giving them back.

    Sigmoid: each probability's logit, and a background column the sigmoid scores ignore. Softmax:
    the logs of the probabilities, with the background's as what is left to 1.
    """
    p = np.clip(scores.astype(np.float64), PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON)
    if score_function == "sigmoid":
        classes = np.log(p) - np.log1p(-p)
        background = np.zeros_like(classes[..., :1])
    else:
        classes = np.log(p)
        background = np.log(np.clip(1 - scores.sum(axis=-1, keepdims=True), PROBABILITY_EPSILON, 1))
    return np.concatenate([background, classes], axis=-1).astype(np.float32)


class LiteRTBackend:
    """Runs an ssdlite ``.tflite`` export (float or INT8) with LiteRT on the CPU (XNNPACK).

    Args:
        model: path to a ``.tflite`` file or its bytes.
        threads: interpreter threads (default: all cores).

    Raises:
        ModelLoadError: ai-edge-litert missing, not a TFLite model, or one without ssdlite metadata.
    """

    name = "litert"
    device = torch.device("cpu")

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        label = "model bytes" if isinstance(model, bytes) else str(model)
        interpreter_class = _interpreter_class()
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        try:
            metadata = read_tflite_metadata(data)
        except SSDLiteError as error:
            raise ModelLoadError(f"{label}: {error}") from None
        if metadata is None:
            raise ModelLoadError(
                f"{label}: a TFLite model without ssdlite metadata; export it with `ssdlite export -o model.tflite`"
            )
        self.config = SSDLiteConfig.from_dict(metadata["ssdlite_config"])
        self.class_names = list(metadata["class_names"])
        self.precision = metadata.get("precision", "float32")
        try:
            self.interpreter = interpreter_class(model_content=data, num_threads=threads or os.cpu_count() or 1)
            self.runner = self.interpreter.get_signature_runner()
        except (RuntimeError, ValueError) as error:
            raise ModelLoadError(f"{label}: LiteRT cannot load it ({error})") from None
        self.input_name = next(iter(self.runner.get_input_details()))
        self.box_weights = np.array(self.config.postprocess.box_weights, dtype=np.float32)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = mediapipe_input(images)
        boxes, logits = [], []
        for image in inputs:  # the file's batch axis is 1
            outputs = self.runner(**{self.input_name: image[None]})
            location, scores = (outputs[name] for name in sorted(outputs))  # output_0, output_1
            boxes.append(location[..., YXHW] * self.box_weights)
            logits.append(probabilities_to_logits(scores, self.config.postprocess.score_function))
        return torch.from_numpy(np.concatenate(boxes)), torch.from_numpy(np.concatenate(logits))
