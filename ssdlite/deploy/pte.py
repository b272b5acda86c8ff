"""ExecuTorch (``.pte``) export: the network lowered to XNNPACK, float32 or static INT8 (PT2E), metadata inside.

The program's ``forward`` takes ``[1, 3, S, S]`` float pixels in [0, 255], like the ONNX export's input,
and returns ``(box_regression [1, A, 4], class_logits [1, A, K])``; a constant method
(``METADATA_METHOD``) returns the config, class names and precision as JSON, so the file is
self-contained. :class:`ssdlite.runtime.pte.ExecuTorchBackend` runs it.

ExecuTorch is an optional extra: it is imported inside the functions that need it.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..core import SSDLite
from ..errors import SSDLiteError
from .int8 import DEFAULT_CALIBRATION_METHOD
from .onnx import fold_batchnorm
from .pt2e import activation_observer, check_calibration_method

INSTALL_HINT = "pip install 'ssdlite[edge]'"
METADATA_METHOD = "ssdlite_metadata"


class ExecuTorchError(SSDLiteError, ValueError):
    """An ExecuTorch export or file that cannot be made or read as asked (missing package, an option it lacks)."""


def _executorch_exir() -> Any:
    try:
        import executorch.exir
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    except ImportError as error:
        raise ExecuTorchError(f"ExecuTorch export needs executorch ({error.name} is missing): {INSTALL_HINT}") from None
    return executorch.exir, XnnpackPartitioner


def executorch_runtime() -> Any:
    """The ExecuTorch runtime singleton (``executorch.runtime.Runtime``).

    Raises:
        ExecuTorchError: executorch is not installed.
    """
    try:
        from executorch.runtime import Runtime
    except ImportError as error:
        raise ExecuTorchError(
            f"running .pte files needs executorch ({error.name} is missing): {INSTALL_HINT}"
        ) from None
    return Runtime.get()


def export_pte(
    model: SSDLite,
    class_names: list[str],
    *,
    calibration: np.ndarray | None = None,
    calibration_method: str | None = None,
    progress: bool = False,
) -> bytes:
    """Exports ``model`` to an ExecuTorch program delegated to XNNPACK (batch 1, input size fixed).

    Args:
        model: the model to export.
        class_names: stored in the program's metadata with the config.
        calibration: preprocessed images ``[N, 3, S, S]`` (see
            :func:`ssdlite.deploy.int8.load_calibration_images`); given, the model is quantized to INT8
            with XNNPACKQuantizer (per-channel symmetric weights, static int8 activations).
        calibration_method: ``"average-minmax"`` (default) or ``"minmax"`` (``PT2E_CALIBRATION_METHODS``).
        progress: show a progress bar while calibrating.

    Returns:
        The serialised program.

    Raises:
        ExecuTorchError: executorch is not installed, or a calibration method the format cannot express.
    """
    exir, partitioner = _executorch_exir()
    size = model.config.image_size
    example = (torch.zeros(1, 3, size, size),)
    network = fold_batchnorm(model).cpu().float()
    metadata: dict[str, Any] = {
        "ssdlite_config": model.config.to_dict(),
        "class_names": list(class_names),
        "precision": "float32",
    }
    if calibration is None:
        program = torch.export.export(network, example)
    else:
        method = calibration_method or DEFAULT_CALIBRATION_METHOD
        check_calibration_method(method, ".pte")
        if calibration.ndim != 4 or calibration.shape[1:] != (3, size, size) or not len(calibration):
            raise ExecuTorchError(f"calibration images must be [N, 3, {size}, {size}], got {list(calibration.shape)}")
        quantized = quantize_pt2e(network, example, calibration, method, progress=progress)
        program = torch.export.export(quantized, example)
        metadata["precision"] = "int8"
        metadata["calibration"] = {"method": method, "images": len(calibration)}
    lowered = exir.to_edge_transform_and_lower(
        program, partitioner=[partitioner()], constant_methods={METADATA_METHOD: json.dumps(metadata)}
    )
    return bytes(lowered.to_executorch().buffer)


def quantize_pt2e(
    network: torch.nn.Module,
    example: tuple[torch.Tensor],
    calibration: np.ndarray,
    method: str = DEFAULT_CALIBRATION_METHOD,
    progress: bool = False,
) -> torch.fx.GraphModule:
    """The static INT8 (quantize/dequantize) graph of a BatchNorm-folded network, calibrated on images.

    XNNPACKQuantizer's conv+activation pattern knows ``relu`` only: each ReLU6 (``hardtanh(0, 6)``)
    stayed a clamp op of its own, quantized with its convolution's range, pre-clamp values outside
    [0, 6] included. Here conv+ReLU6 is annotated as one op quantized after the clamp: 59 fewer
    quantize/dequantize pairs and clamp ops in SSDLite-MobileNetV2, and a finer int8 step. The heads'
    concatenations (and the reshapes into them) stay in float, so each feature map's outputs keep a
    scale of their own instead of one range shared by all six maps.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    captured = torch.export.export(network, example).module()
    prepared = prepare_pt2e(captured, _ssdlite_quantizer(method))
    with torch.no_grad():
        for image in tqdm(calibration, desc=f"calibrating ({method})", unit="img", disable=not progress, leave=False):
            prepared(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None])
    return convert_pt2e(prepared)


def _ssdlite_quantizer(method: str) -> Any:
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as annotations
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    config = get_symmetric_quantization_config(is_per_channel=True)
    activation = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=activation_observer(method))
    config = dataclasses.replace(config, input_activation=activation, output_activation=activation)

    hardtanh = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default}
    convolutions = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default}

    def annotate_conv_relu6(relu6: torch.fx.Node):
        conv = relu6.args[0]
        assert isinstance(conv, torch.fx.Node)
        inputs = {
            conv.args[0]: annotations.get_input_act_qspec(config),
            conv.args[1]: annotations.get_weight_qspec(config),
        }
        if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node):
            inputs[conv.args[2]] = annotations.get_bias_qspec(config)
        conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
        output = annotations.get_output_act_qspec(config)
        relu6.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=output, _annotated=True)

    class SSDLiteQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.target == torch.ops.aten.cat.default:
                    # The heads' concatenations and the reshapes into them stay in float.
                    for kept in (node, *node.args[0]):
                        kept.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
                elif (
                    node.target in hardtanh
                    and tuple(node.args[1:3]) == (0.0, 6.0)  # nn.ReLU6
                    and node.args[0].target in convolutions
                    and len(node.args[0].users) == 1
                ):
                    annotate_conv_relu6(node)
            return super().annotate(model)

    return SSDLiteQuantizer().set_global(config)


def load_program(source: str | os.PathLike | bytes) -> Any:
    """Loads an ExecuTorch program (``executorch.runtime.Program``) from a ``.pte`` file or its bytes.

    Raises:
        ExecuTorchError: executorch is not installed, or ``source`` is not a loadable program.
    """
    label = _label(source)
    try:
        runtime = executorch_runtime()
    except ExecuTorchError as error:
        raise ExecuTorchError(f"{label}: {error}") from None
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ExecuTorchError(f"{label}: no such file")
    try:
        return runtime.load_program(source if isinstance(source, bytes) else Path(source))
    except RuntimeError as error:
        raise ExecuTorchError(f"{label}: not a loadable ExecuTorch program ({error})") from None


def program_metadata(program: Any, label: str = "ExecuTorch program") -> dict[str, Any]:
    """The metadata :func:`export_pte` stored in a loaded program (``label`` names it in errors).

    Raises:
        ExecuTorchError: the program has no ssdlite metadata.
    """
    if METADATA_METHOD not in program.method_names:
        raise ExecuTorchError(
            f"{label}: ExecuTorch program has no ssdlite metadata; export it with `ssdlite export -o model.pte`"
        )
    (text,) = program.load_method(METADATA_METHOD).execute([])
    return json.loads(text)


def read_pte_metadata(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """The metadata of a ``.pte`` file written by :func:`export_pte`, or of its bytes.

    Returns:
        ``{"ssdlite_config": dict, "class_names": list, "precision": "float32" | "int8"}``, plus
        ``"calibration": {"method": str, "images": int}`` for INT8.

    Raises:
        ExecuTorchError: executorch is not installed, not a program, or no ssdlite metadata.
    """
    return program_metadata(load_program(source), _label(source))


def _label(source: str | os.PathLike | bytes) -> str:
    return "program bytes" if isinstance(source, bytes) else str(source)
