"""Every export format as one row of one table, and the functions that write them.

``EXPORT_FORMATS`` maps a file suffix to its format; :func:`export_model` picks the row from the
destination's suffix, so an unknown suffix is an error and never a file in another format.
"""

import dataclasses
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..core import SSDLite
from ..errors import SSDLiteError
from .end_to_end import append_postprocess
from .int8 import DEFAULT_CALIBRATION_METHOD, quantize_int8
from .onnx import export_network
from .pte import export_pte
from .tflite import export_tflite


class ExportError(SSDLiteError, ValueError):
    """An export that cannot be made as asked (unknown format, an option the format lacks)."""


def export_onnx(
    model: SSDLite,
    class_names: list[str],
    destination: str | os.PathLike | io.BytesIO | None = None,
    *,
    calibration: np.ndarray | None = None,
    calibration_method: str | None = None,
    end_to_end: bool = False,
    progress: bool = False,
) -> bytes:
    """Exports ``model`` to ONNX (batch axis dynamic, input size fixed to ``config.image_size``).

    The file's metadata carries the config, class names and precision, so it is self-contained.

    Args:
        model: the model to export.
        class_names: stored in the file's metadata with the config.
        destination: a path or buffer to write to, or ``None`` to only return the bytes.
        calibration: preprocessed images ``[N, 3, S, S]`` (see
            :func:`ssdlite.deploy.int8.load_calibration_images`); given, the model is quantized to INT8.
        calibration_method: one of ``ssdlite.deploy.int8.CALIBRATION_METHODS`` (default ``"average-minmax"``).
        end_to_end: append decoding, thresholds and NMS, so the outputs are final detections
            (see :mod:`ssdlite.deploy.end_to_end`).
        progress: show a progress bar while calibrating.

    Returns:
        The serialised ONNX model.
    """
    proto = export_network(model)
    metadata = {
        "ssdlite_config": json.dumps(model.config.to_dict()),
        "class_names": json.dumps(class_names),
        "precision": "float32",
    }
    if calibration is not None:
        method = calibration_method or DEFAULT_CALIBRATION_METHOD
        proto = quantize_int8(proto, calibration, method, progress=progress)
        metadata["precision"] = "int8"
        metadata["calibration"] = json.dumps({"method": method, "images": len(calibration)})
    if end_to_end:
        proto = append_postprocess(proto, model.config)
        settings = dataclasses.asdict(model.config.postprocess)
        del settings["box_weights"]  # in the graph's constants; the metadata names what a caller may want to know
        metadata["end_to_end"] = "true"
        metadata["postprocess"] = json.dumps(settings)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    data = proto.SerializeToString()
    if isinstance(destination, io.BytesIO):
        destination.write(data)
    elif destination is not None:
        Path(destination).write_bytes(data)
    return data


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    description: str
    options: frozenset[str]  # which of export_model's keyword options the format honours
    export: Callable[..., bytes]


EXPORT_FORMATS: dict[str, ExportFormat] = {
    ".onnx": ExportFormat(
        "onnx",
        ".onnx",
        "ONNX (float32 or static INT8, raw outputs or end to end); runs on ONNX Runtime",
        frozenset({"calibration", "calibration_method", "end_to_end", "progress"}),
        export_onnx,
    ),
    ".tflite": ExportFormat(
        "tflite",
        ".tflite",
        "LiteRT (float32 or INT8) with MediaPipe object-detector metadata; runs in MediaPipe Tasks and LiteRT",
        frozenset({"calibration", "calibration_method", "progress"}),
        export_tflite,
    ),
    ".pte": ExportFormat(
        "pte",
        ".pte",
        "ExecuTorch program (float32 or INT8) with the XNNPACK delegate; runs in ExecuTorch apps",
        frozenset({"calibration", "calibration_method", "progress"}),
        export_pte,
    ),
}


def export_format(destination: str | os.PathLike) -> ExportFormat:
    """The format a destination file's suffix names.

    Raises:
        ExportError: the suffix is not one of ``EXPORT_FORMATS``.
    """
    suffix = Path(destination).suffix.lower()
    if suffix not in EXPORT_FORMATS:
        known = ", ".join(EXPORT_FORMATS)
        raise ExportError(f"{destination}: cannot export to a {suffix or 'suffix-less'} file; formats: {known}")
    return EXPORT_FORMATS[suffix]


def export_model(model: SSDLite, class_names: list[str], destination: str | os.PathLike, **options) -> Path:
    """Writes ``model`` to ``destination`` in the format its suffix names, atomically.

    Args:
        model: the model to export.
        class_names: names of labels 1..K-1, stored in the file.
        destination: the file to write; its suffix picks the row of ``EXPORT_FORMATS``.
        **options: the format's options (for ``.onnx``: ``calibration``, ``calibration_method``,
            ``end_to_end``, ``progress``); an option the format does not take is an :class:`ExportError`.

    Returns:
        The path written.
    """
    destination = Path(destination)
    file_format = export_format(destination)
    given = {name for name, value in options.items() if value is not None and value is not False}
    unsupported = sorted(given - file_format.options)
    if unsupported:
        raise ExportError(f"{destination}: the {file_format.name} format does not take {', '.join(unsupported)}")
    data = file_format.export(model, class_names, **{k: v for k, v in options.items() if k in file_format.options})
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination
