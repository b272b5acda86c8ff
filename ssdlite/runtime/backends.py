"""Inference backends: a raw forward from ``[N, 3, S, S]`` float pixels to (box regression, class logits).

Each backend knows its model's ``config`` and ``class_names``, has a ``name`` (one of ``BACKENDS``)
and a ``precision`` (``"float32"``, ``"int8"``), which is what the service reports and the
benchmarks print, and the ``device`` its outputs are on.
"""

import json
import os
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch

from ..core import SSDLite, SSDLiteConfig
from ..deploy.onnx import INPUT_NAME, OUTPUT_NAMES
from ..errors import SSDLiteError

BACKENDS = ("torch", "onnxruntime", "litert", "executorch")


class ModelLoadError(SSDLiteError, ValueError):
    """A model file that cannot be run, or a backend/device combination that cannot run it."""


class Backend(Protocol):
    name: str
    precision: str
    config: SSDLiteConfig
    class_names: list[str]
    device: torch.device

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchBackend:
    """Eager PyTorch inference (channels_last, which is faster on CPU and GPU alike)."""

    name = "torch"
    precision = "float32"

    def __init__(self, model: SSDLite, class_names: list[str], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        # Module.to takes a device and a memory format together; its stubs have no overload for that.
        self.model: SSDLite = model.eval().to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.config = model.config
        self.class_names = list(class_names)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images.to(self.device, memory_format=torch.channels_last))


def onnxruntime_session(model: str | os.PathLike | bytes, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with the settings every ssdlite model runs under.

    Args:
        model: path to an ``.onnx`` file or its bytes.
        threads: intra-op threads (default: all cores).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Errors only: fusing an INT8 graph's ReLU6 into its QuantizeLinear leaves the clip bounds
    # unused, and ONNX Runtime would warn about each of them on every load.
    options.log_severity_level = 3
    # Spinning workers keep the cores busy after each run and starve the torch pre- and
    # postprocessing around it: measured 16.7 vs 18.2 ms end to end on 2 idle cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"]
    )


class OnnxRuntimeBackend:
    """Runs a model exported by ``ssdlite export`` (float or INT8) with ONNX Runtime on the CPU.

    Args:
        model: path to an ``.onnx`` file or its bytes.
        threads: intra-op threads (default: all cores).

    Raises:
        ModelLoadError: not an ONNX model, no ssdlite metadata, or an end-to-end export (whose graph
            already returns final detections; run those with onnxruntime directly).
    """

    name = "onnxruntime"
    device = torch.device("cpu")

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        label = "model bytes" if isinstance(model, bytes) else str(model)
        try:
            self.session = onnxruntime_session(model, threads)
        except Exception as error:
            raise ModelLoadError(f"{label}: not a loadable ONNX model ({error})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "ssdlite_config" not in metadata:
            raise ModelLoadError(f"{label}: ONNX model has no ssdlite metadata; export it with `ssdlite export`")
        if metadata.get("end_to_end") == "true":
            raise ModelLoadError(
                f"{label}: an end-to-end export (its graph returns final boxes, scores, labels); "
                "run it with onnxruntime directly, or export without --end-to-end for ssdlite and the service"
            )
        self.config = SSDLiteConfig.from_dict(json.loads(metadata["ssdlite_config"]))
        self.class_names = json.loads(metadata["class_names"])
        self.precision = metadata.get("precision", "float32")

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        boxes, logits = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return torch.from_numpy(boxes), torch.from_numpy(logits)
