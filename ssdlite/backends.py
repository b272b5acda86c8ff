"""Inference backends: a raw forward from ``[N, 3, S, S]`` float pixels to (box regression, class logits).

Each backend has a ``name`` (``"torch"``, ``"onnxruntime"``) and a ``precision`` (``"float32"``,
``"int8"``), which is what the service reports and the benchmarks print.
"""

import json
import os
from typing import Protocol

import numpy as np
import torch

from .model import SSDLite, SSDLiteConfig

INPUT_NAME = "images"
OUTPUT_NAMES = ("box_regression", "class_logits")


class Backend(Protocol):
    name: str
    precision: str

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchBackend:
    """Eager PyTorch inference (channels_last, which is faster on CPU and GPU alike)."""

    name = "torch"
    precision = "float32"

    def __init__(self, model: SSDLite, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images.to(self.device, memory_format=torch.channels_last))


def onnxruntime_session(model: str | os.PathLike | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session with the settings every ssdlite model runs under.

    Args:
        model: path to an ``.onnx`` file or its bytes.
        threads: intra-op threads (default: all cores).
    """
    import onnxruntime as ort

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
    """Runs a model exported by ``python -m ssdlite.export`` (float or INT8) with ONNX Runtime on the CPU.

    Args:
        model: path to an ``.onnx`` file or its bytes.
        threads: intra-op threads (default: all cores).

    Raises:
        ValueError: not an ONNX model, no ssdlite metadata, or an end-to-end export (whose graph
            already returns final detections; run those with onnxruntime directly).
    """

    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        label = "model bytes" if isinstance(model, bytes) else str(model)
        try:
            self.session = onnxruntime_session(model, threads)
        except Exception as error:
            raise ValueError(f"{label}: not a loadable ONNX model ({error})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "ssdlite_config" not in metadata:
            raise ValueError(f"{label}: ONNX model has no ssdlite metadata; export it with `python -m ssdlite.export`")
        if metadata.get("end_to_end") == "true":
            raise ValueError(
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
