"""Static INT8 quantization of an exported model with ONNX Runtime, calibrated on real images.

QDQ format: int8 per-channel weights, uint8 activations whose ranges come from running the
float model on calibration images prepared exactly as :class:`ssdlite.Detector` prepares its input.
"""

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from ..core import SSDLiteConfig
from ..errors import SSDLiteError
from ..images import IMAGE_SUFFIXES, preprocess, read_image

# average-minmax: each activation's range is the mean over the images of each image's min and max.
# The plain extremes (minmax) let one outlier image stretch a range: person AP on coco128 fell
# from 0.195 to 0.063 calibrated on 64 COCO photos, against 0.180 averaged (see the README).
CALIBRATION_METHODS = ("average-minmax", "minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "average-minmax"
DEFAULT_CALIBRATION_IMAGES = 64
KEPT_FLOAT_CONVOLUTIONS = 3


class CalibrationError(SSDLiteError, ValueError):
    """The calibration images cannot be used; the message names the folder or file."""


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs ``[N, 3, S, S]`` float32, the files they came from, and what was skipped."""

    images: np.ndarray
    files: list[Path]
    skipped: list[str] = field(default_factory=list)  # "file: reason"


def load_calibration_images(
    folder: str | Path, config: SSDLiteConfig, limit: int = DEFAULT_CALIBRATION_IMAGES
) -> CalibrationSet:
    """Reads up to ``limit`` images (sorted by name) from ``folder`` and preprocesses them for ``config``.

    Files with image extensions that do not decode are skipped and listed in ``skipped``.

    Raises:
        CalibrationError: ``folder`` is not a directory, or holds no readable image.
    """
    folder = Path(folder)
    if limit < 1:
        raise CalibrationError(f"the number of calibration images must be at least 1, got {limit}")
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: no such directory (--calibration wants a folder of images)")
    candidates = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    images: list[np.ndarray] = []
    files: list[Path] = []
    skipped: list[str] = []
    for path in candidates:
        if len(files) == limit:
            break
        try:
            images.append(read_image(path))
        except (OSError, ValueError) as error:
            skipped.append(str(error))  # read_image names the file
            continue
        files.append(path)
    if not files:
        reason = f"all {len(skipped)} image files are unreadable" if skipped else f"no {'/'.join(IMAGE_SUFFIXES)} files"
        raise CalibrationError(f"{folder}: no readable calibration images ({reason})")
    batch, _ = preprocess(images, config.image_size)
    return CalibrationSet(batch.numpy(), files, skipped)


def quantize_int8(
    float_model: onnx.ModelProto,
    calibration: np.ndarray,
    method: str = DEFAULT_CALIBRATION_METHOD,
    progress: bool = True,
) -> onnx.ModelProto:
    """Returns the static INT8 (QDQ) version of an exported float model.

    Args:
        float_model: a graph from :func:`ssdlite.deploy.onnx.export_network` (raw outputs).
        calibration: preprocessed images ``[N, 3, S, S]`` float32 (see :func:`load_calibration_images`).
        method: how activation ranges are chosen, one of ``CALIBRATION_METHODS``.
        progress: show a progress bar over the calibration images.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "average-minmax": (CalibrationMethod.MinMax, {"CalibMovingAverage": True}),
        "minmax": (CalibrationMethod.MinMax, {}),
        "entropy": (CalibrationMethod.Entropy, {}),
        "percentile": (CalibrationMethod.Percentile, {}),
    }
    if method not in methods:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    input_name = float_model.graph.input[0].name
    keep_float = float_nodes(float_model)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(
                tqdm(calibration, desc=f"calibrating ({method})", unit="img", disable=not progress, leave=False)
            )

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {input_name: image[None]}

    with tempfile.TemporaryDirectory() as scratch, _quiet_quantizer():
        output = Path(scratch) / "int8.onnx"
        quantize_static(
            float_model,
            output,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method][0],
            nodes_to_exclude=keep_float,
            extra_options=methods[method][1],
        )
        return onnx.load(output)


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes an INT8 export keeps in float, chosen by person AP on coco128 (see the README):

    - the first three convolutions (the stem and the first block): int8 there cost the most
      accuracy for the least time, at the largest feature maps;
    - the heads' final concatenations, so each feature map's box offsets and logits keep a scale
      of their own instead of one range stretched over all six maps.
    """
    convolutions = [node.name for node in model.graph.node if node.op_type == "Conv"]
    outputs = {output.name for output in model.graph.output}
    return convolutions[:KEPT_FLOAT_CONVOLUTIONS] + [
        node.name for node in model.graph.node if set(node.output) & outputs
    ]


@contextlib.contextmanager
def _quiet_quantizer():
    # The quantizer logs advice through the root logger ("consider pre-processing"): it targets
    # unfolded graphs, and ours arrive with BatchNorm already folded.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
