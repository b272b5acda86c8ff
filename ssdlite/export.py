"""ONNX export: float, INT8 (static QDQ) and end to end (postprocessing inside the graph).

``python -m ssdlite.export CKPT -o model.onnx [--int8 --calibration DIR] [--end-to-end]`` writes a
model with a dynamic batch axis whose metadata carries the config, class names and precision, so
the ``.onnx`` file is self-contained.
"""

import argparse
import copy
import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .backends import INPUT_NAME, OUTPUT_NAMES
from .model import SSDLite

OPSET = 17


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Returns an eval-mode copy with every conv -> BatchNorm pair folded into the conv.

    ONNX Runtime fuses Conv+Bias(+Clip) but runs a separate BatchNormalization much slower.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return model


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

    Args:
        model: the model to export.
        class_names: stored in the file's metadata with the config.
        destination: a path or buffer to write to, or ``None`` to only return the bytes.
        calibration: preprocessed images ``[N, 3, S, S]`` (see
            :func:`ssdlite.quantize.load_calibration_images`); given, the model is quantized to INT8.
        calibration_method: one of ``ssdlite.quantize.CALIBRATION_METHODS`` (default ``"average-minmax"``).
        end_to_end: append decoding, thresholds and NMS, so the outputs are final detections
            (see :mod:`ssdlite.end_to_end`).
        progress: show a progress bar while calibrating.

    Returns:
        The serialised ONNX model.
    """
    import onnx

    proto = _export_network(model)
    metadata = {"ssdlite_config": json.dumps(model.config.to_dict()), "class_names": json.dumps(class_names),
                "precision": "float32"}
    if calibration is not None:
        from .quantize import DEFAULT_CALIBRATION_METHOD, quantize_int8

        method = calibration_method or DEFAULT_CALIBRATION_METHOD
        proto = quantize_int8(proto, calibration, method, progress=progress)
        metadata["precision"] = "int8"
        metadata["calibration"] = json.dumps({"method": method, "images": len(calibration)})
    if end_to_end:
        from .end_to_end import append_postprocess

        proto = append_postprocess(proto, model.config)
        config = model.config
        metadata["end_to_end"] = "true"
        metadata["postprocess"] = json.dumps(
            {
                "score_threshold": config.score_threshold,
                "nms_iou": config.nms_iou,
                "max_detections": config.max_detections,
                "candidates_per_image": config.candidates_per_image,
                "score_function": config.score_function,
            }
        )
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    data = proto.SerializeToString()
    if isinstance(destination, io.BytesIO):
        destination.write(data)
    elif destination is not None:
        Path(destination).write_bytes(data)
    return data


def _export_network(model: SSDLite):
    """The network alone (raw outputs), BatchNorm folded, as an ``onnx.ModelProto``."""
    import onnx

    size = model.config.image_size
    folded = fold_batchnorm(model).cpu().float()
    dummy = torch.zeros(1, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            folded,
            (dummy,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=OPSET,
        )
    return _unshare_constants(onnx.load_from_string(buffer.getvalue()))


def _unshare_constants(proto):
    """Replaces the exporter's ``Identity(constant)`` nodes with constants of their own.

    The exporter stores equal tensors once and aliases the copies through Identity nodes (an
    untrained model's folded biases are all equal). The INT8 quantizer quantizes a bias only
    when it is a constant, so an aliased one would leave its Conv in float.
    """
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    aliases = [node for node in proto.graph.node if node.op_type == "Identity" and node.input[0] in initializers]
    for node in aliases:
        value = numpy_helper.to_array(initializers[node.input[0]])
        proto.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        proto.graph.node.remove(node)
    return proto


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError, load_checkpoint
    from .quantize import (
        CALIBRATION_METHODS,
        DEFAULT_CALIBRATION_IMAGES,
        DEFAULT_CALIBRATION_METHOD,
        CalibrationError,
        load_calibration_images,
    )
    from .zoo import ZooError, resolve

    parser = argparse.ArgumentParser(prog="python -m ssdlite.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint file (.pt) written by ssdlite, or a model-zoo name")
    parser.add_argument("-o", "--output", help="ONNX file to write (default: CHECKPOINT with .onnx suffix)")
    parser.add_argument("--int8", action="store_true", help="static INT8 quantization (needs --calibration)")
    parser.add_argument("--calibration", metavar="DIR", help="folder of images like those the model will see")
    parser.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
        help=f"use at most N, sorted by name (default {DEFAULT_CALIBRATION_IMAGES}; memory grows with N)",
    )
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION_METHOD,
                        help=f"how activation ranges are chosen (default {DEFAULT_CALIBRATION_METHOD})")
    parser.add_argument("--end-to-end", action="store_true",
                        help="decode, threshold and NMS in the graph: outputs boxes, scores, labels, num_detections")
    args = parser.parse_args(argv)
    if args.int8 and not args.calibration:
        parser.error("--int8 needs --calibration DIR: a folder of images like those the model will see "
                     "(a few dozen real photos are enough)")
    if args.calibration and not args.int8:
        parser.error("--calibration is only used with --int8")
    try:
        model, class_names = load_checkpoint(resolve(args.checkpoint, log=_stderr))
    except (CheckpointError, ZooError) as error:
        return _fail(error)
    calibration = None
    if args.int8:
        try:
            calibration_set = load_calibration_images(args.calibration, model.config, args.calibration_images)
        except CalibrationError as error:
            return _fail(error)
        if calibration_set.skipped:
            _stderr(f"warning: skipped {len(calibration_set.skipped)} unreadable image(s) in {args.calibration}:")
            for problem in calibration_set.skipped:
                _stderr(f"  {problem}")
        _stderr(f"calibrating on {len(calibration_set.files)} image(s) from {args.calibration}")
        calibration = calibration_set.images
    output = Path(args.output or Path(args.checkpoint).with_suffix(".onnx"))
    try:
        export_onnx(model, class_names, output, calibration=calibration, calibration_method=args.calibration_method,
                    end_to_end=args.end_to_end, progress=sys.stderr.isatty())
    except OSError as error:
        return _fail(f"{output}: cannot write ({error.strerror or error})")
    print(output)
    return 0


def _stderr(message: str):
    print(message, file=sys.stderr)


def _fail(error) -> int:
    _stderr(f"error: {error}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
