"""LiteRT (``.tflite``) export that MediaPipe Tasks' ObjectDetector runs unchanged.

The raw network is converted with litert-torch, in the layout MediaPipe's SSD decoding reads for a
model without NMS:

- input ``[1, S, S, 3]`` float, the pixels as ``(p - 127.5) / 127.5`` (MediaPipe normalises with
  one mean and std from the metadata; the graph maps them back to the model's own normalisation);
- ``location`` ``[1, A, 4]``: box regression as (dy, dx, dh, dw), MediaPipe's fixed YXHW order,
  divided by the box weights (so the metadata's decoding scales are 1);
- ``score`` ``[1, A, K - 1]``: class probabilities without the background column (MediaPipe keeps
  each anchor's best class, so a background column would win). Softmax or sigmoid is applied in
  the graph, for both score functions alike.

The file carries MediaPipe's object-detector metadata (labels, every anchor as a FixedAnchor, the
decoding scales, the normalisation) and, as a model metadata entry named ``ssdlite``, our config,
class names and precision, so ``Detector.load`` reads it like an ``.onnx`` export.

INT8 (``calibration``) goes through PT2E with litert-torch's quantizer; the input mapping, the
outputs' last steps and the heads' concatenations stay float (see :class:`MediaPipeLayout`).
"""

import dataclasses
import gc
import json
import sys
import types
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..core import SSDLite
from ..core.anchors import anchors_for
from ..core.postprocess import class_scores
from ..errors import SSDLiteError
from .int8 import DEFAULT_CALIBRATION_METHOD
from .onnx import fold_batchnorm
from .pt2e import activation_observer, check_calibration_method

INPUT_MEAN = 127.5
INPUT_STD = 127.5
METADATA_NAME = "ssdlite"
EXPORT_HINT = "pip install 'ssdlite[tflite]' && pip install --no-deps mediapipe==1.2.3"
RUNTIME_HINT = "pip install 'ssdlite[edge]'"
YXHW = [1, 0, 3, 2]  # our (dx, dy, dw, dh) as MediaPipe's (dy, dx, dh, dw), and back


class TFLiteExportError(SSDLiteError, ValueError):
    """A ``.tflite`` export that cannot be made: the converter missing, or a model it cannot express."""


class MediaPipeLayout(nn.Module):
    """The network with MediaPipe's input and output layout (see the module docstring).

    The box regression leaves divided by the box weights (MediaPipe's decoding scales are then 1)
    and the levels are concatenated last, after the scores and that division. Quantized, a head's
    concatenation takes one range for all levels, its first input's: the first level's boxes span
    -2.6..1.9 where later levels need -12.5..7.4, and were clipped. Each level is dequantized
    before those float ops, so the concatenation stays float.
    """

    box_scale: Tensor

    def __init__(self, model: SSDLite):
        super().__init__()
        self.network = cast(SSDLite, fold_batchnorm(model).cpu().float())
        self.score_function = model.config.postprocess.score_function
        self.register_buffer("box_scale", 1 / torch.tensor(model.config.postprocess.box_weights)[YXHW])
        with torch.no_grad():  # YXHW by reordering each box predictor's output channels: no gather op
            for predictor in self.network.box_head.predictors:
                last = cast(nn.Conv2d, cast(nn.Sequential, predictor)[-1])
                order = torch.arange(last.out_channels).view(-1, 4)[:, YXHW].flatten()
                last.weight.copy_(last.weight[order])
                bias = cast(Tensor, last.bias)
                bias.copy_(bias[order])

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        pixels = image.permute(0, 3, 1, 2) * INPUT_STD + INPUT_MEAN
        maps = self.network.features(pixels)
        boxes = [level * self.box_scale for level in self.network.box_head.levels(maps)]
        scores = [class_scores(level, self.score_function) for level in self.network.class_head.levels(maps)]
        return torch.cat(boxes, dim=1), torch.cat(scores, dim=1)


def mediapipe_input(images: np.ndarray | Tensor) -> np.ndarray:
    """Our preprocessed ``[N, 3, S, S]`` pixels in [0, 255] as the ``.tflite`` input ``[N, S, S, 3]``."""
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else images
    return np.ascontiguousarray((array.transpose(0, 2, 3, 1) - INPUT_MEAN) / INPUT_STD, dtype=np.float32)


def _converter() -> Any:
    try:
        import litert_torch
    except ImportError as error:
        raise TFLiteExportError(
            f"exporting .tflite needs litert-torch ({error.name} is missing): {EXPORT_HINT}"
        ) from None
    return litert_torch


def _metadata_writer() -> Any:
    """MediaPipe's object-detector metadata writer.

    mediapipe 1.2.3's wheel lacks the compiled module that only reports the metadata parser version
    a file needs; every field written here exists since version 1.5.0, so that is the answer given.
    """
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    if name not in sys.modules:
        try:
            __import__(name)
        except ImportError:
            package = ""
            for part in name.split(".")[:-1]:
                package = f"{package}.{part}" if package else part
                sys.modules.setdefault(package, types.ModuleType(package))
            stub = types.ModuleType(name)
            stub.GetMinimumMetadataParserVersion = lambda *_: "1.5.0"  # type: ignore[attr-defined]
            sys.modules[name] = stub
    try:
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer, object_detector
    except ImportError as error:
        raise TFLiteExportError(
            f"writing MediaPipe metadata needs mediapipe ({error.name} is missing): {EXPORT_HINT}"
        ) from None
    return object_detector, metadata_writer, metadata_info


def _schema() -> Any:
    """LiteRT's flatbuffer schema (generated code) and the flatbuffers package it runs on."""
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated
    except ImportError as error:
        raise SSDLiteError(
            f"reading .tflite files needs ai-edge-litert ({error.name} is missing): {RUNTIME_HINT}"
        ) from None
    return schema_py_generated, flatbuffers


def export_tflite(
    model: SSDLite,
    class_names: list[str],
    *,
    calibration: np.ndarray | None = None,
    calibration_method: str | None = None,
    progress: bool = False,
) -> bytes:
    """The model as a ``.tflite`` file that MediaPipe's ObjectDetector runs (see the module docstring).

    Args:
        model: the model to export (any preset; SSD or TF anchors; softmax or sigmoid scores).
        class_names: names of labels 1..K-1; MediaPipe's label file and our metadata.
        calibration: preprocessed images ``[N, 3, S, S]`` in [0, 255]; given, the model is INT8.
        calibration_method: ``"average-minmax"`` (default) or ``"minmax"`` (``PT2E_CALIBRATION_METHODS``).
        progress: a progress bar while calibrating.

    Returns:
        The ``.tflite`` file's bytes.
    """
    litert_torch = _converter()
    object_detector, metadata_writer, metadata_info = _metadata_writer()
    wrapped = MediaPipeLayout(model).eval()
    size = model.config.image_size
    example = (torch.zeros(1, size, size, 3),)
    metadata: dict[str, Any] = {
        "ssdlite_config": model.config.to_dict(),
        "class_names": list(class_names),
        "precision": "float32",
    }
    if calibration is None:
        converted = litert_torch.convert(wrapped, example)
    else:
        method = calibration_method or DEFAULT_CALIBRATION_METHOD
        check_calibration_method(method, ".tflite")
        converted = _convert_int8(litert_torch, wrapped, example, calibration, method, progress)
        metadata["precision"] = "int8"
        metadata["calibration"] = {"method": method, "images": len(calibration)}
    flatbuffer = bytes(converted.model_content())
    flatbuffer = _with_model_metadata(flatbuffer, METADATA_NAME, json.dumps(metadata).encode())

    anchors = anchors_for(model.config).tolist()
    labels = metadata_writer.Labels().add(list(class_names))
    writer = object_detector.MetadataWriter.create_for_models_without_nms(
        bytearray(flatbuffer),
        [INPUT_MEAN],
        [INPUT_STD],
        labels,
        object_detector.SsdAnchorsOptions(
            fixed_anchors_schema=object_detector.FixedAnchorsSchema(
                anchors=[object_detector.FixedAnchor(cx, cy, w, h) for cx, cy, w, h in anchors]
            )
        ),
        object_detector.TensorsDecodingOptions(
            num_classes=len(class_names),
            num_boxes=len(anchors),
            num_coords=4,
            keypoint_coord_offset=0,
            num_keypoints=0,
            num_values_per_keypoint=2,
            x_scale=1.0,
            y_scale=1.0,
            w_scale=1.0,
            h_scale=1.0,
            apply_exponential_on_box_size=True,
            sigmoid_score=False,
        ),
        metadata_info.RawDetectionOutputTensorsOrder.LOCATION_SCORE,
    )
    data, _ = writer.populate()
    del writer
    gc.collect()  # the writer's temporary folder, in a reference cycle, is removed now and not at exit
    return bytes(data)


def _convert_int8(
    litert_torch: Any, wrapped: nn.Module, example: tuple[Tensor], calibration: np.ndarray, method: str, progress: bool
) -> Any:
    """PT2E static INT8 (per-channel symmetric weights) calibrated on ``calibration``, then converted."""
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class NetworkQuantizer(pt2e_quantizer.PT2EQuantizer):
        """Quantizes the network's ops only: the input's mapping to pixels and the outputs' last
        steps stay float, so the file's input and outputs are float as MediaPipe expects."""

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            self._annotate_all_static_patterns(model, self.global_config, _in_network)
            pt2e_quantizer.propagate_annotation(model)
            return model

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    activations = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=activation_observer(method))
    config = dataclasses.replace(config, input_activation=activations, output_activation=activations)
    quantizer = NetworkQuantizer().set_global(config)
    prepared = prepare_pt2e(torch.export.export(wrapped, example).module(), quantizer)
    images = tqdm(calibration, desc="calibrating", unit="image", disable=not progress)
    with torch.no_grad():
        for image in images:
            prepared(torch.from_numpy(mediapipe_input(image[None])))
    quantized = convert_pt2e(prepared, fold_quantize=False)
    quantized.training = False  # exported modules refuse .eval(); nothing in the graph depends on the mode
    return litert_torch.convert(quantized, example, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))


def _in_network(node: torch.fx.Node) -> bool:
    """Whether an exported graph's op comes from :class:`MediaPipeLayout`'s ``network`` (weights, which
    belong to no module in the graph, count as inside)."""
    stack = node.meta.get("nn_module_stack")
    return not stack or any(path.split(".")[0] == "network" for path, _ in stack.values())


def _with_model_metadata(flatbuffer: bytes, name: str, value: bytes) -> bytes:
    """The ``.tflite`` flatbuffer with a model metadata entry ``name`` holding ``value``."""
    schema, flatbuffers = _schema()
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode() and m.name != name] + [entry]
    builder = flatbuffers.Builder(len(flatbuffer) + len(value) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(data: bytes) -> dict | None:
    """Our metadata (config, class names, precision) from a ``.tflite`` file's bytes, or ``None`` if it has none.

    Raises:
        SSDLiteError: ``ai-edge-litert`` is missing, or ``data`` is not a TFLite flatbuffer.
    """
    schema, _ = _schema()
    if data[4:8] != b"TFL3":
        raise SSDLiteError("not a TFLite flatbuffer")
    model = schema.Model.GetRootAs(data, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() == METADATA_NAME.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None
