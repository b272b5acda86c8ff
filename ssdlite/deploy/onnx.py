"""The network as an ONNX graph: raw outputs, BatchNorm folded into the convolutions.

:func:`ssdlite.deploy.export.export_onnx` builds the file users get from this graph (metadata,
INT8, end-to-end postprocessing); :class:`ssdlite.runtime.backends.OnnxRuntimeBackend` runs it.
"""

import copy
import io
import warnings

import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..core import SSDLite

INPUT_NAME = "images"
OUTPUT_NAMES = ("box_regression", "class_logits")
OPSET = 17


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Returns an eval-mode copy with every conv -> BatchNorm pair folded into the conv.

    ONNX Runtime fuses Conv+Bias(+Clip) but runs a separate BatchNormalization much slower.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return model


def export_network(model: SSDLite) -> onnx.ModelProto:
    """The network alone (raw outputs, dynamic batch axis), BatchNorm folded, as an ``onnx.ModelProto``."""
    size = model.config.image_size
    folded = fold_batchnorm(model).cpu().float()
    dummy = torch.zeros(1, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            folded,
            (dummy,),
            buffer,  # type: ignore[arg-type]  # the stubs omit file objects, which the TorchScript exporter takes
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=OPSET,
        )
    return _unshare_constants(onnx.load_from_string(buffer.getvalue()))


def _unshare_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replaces the exporter's ``Identity(constant)`` nodes with constants of their own.

    The exporter stores equal tensors once and aliases the copies through Identity nodes (an
    untrained model's folded biases are all equal). The INT8 quantizer quantizes a bias only
    when it is a constant, so an aliased one would leave its Conv in float.
    """
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    aliases = [node for node in proto.graph.node if node.op_type == "Identity" and node.input[0] in initializers]
    for node in aliases:
        value = numpy_helper.to_array(initializers[node.input[0]])
        proto.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        proto.graph.node.remove(node)
    return proto
