"""TF Object Detection API SSDLite-MobileNetV2 frozen graph -> ssdlite model, without TensorFlow.

Weights map by name onto the ``ssdlite300_mobilenet_v2_tf`` preset; the input size, class
count, BatchNorm epsilon, anchor scales and aspect ratios, box-coder scales, score function
and NMS settings are read from the graph's own constants and checked, so a graph built with
other settings is rejected with the node that differs instead of converting silently wrong.
"""

import dataclasses
import math
import os
import re
from typing import NoReturn

import numpy as np
import torch

from ...core import SSDLite, get_config
from ...core.anchors import box_shapes
from ...errors import SSDLiteError
from .graphdef import GraphFormatError, Node, constants, read_graph

EXTRACTOR = "FeatureExtractor/MobilenetV2/"
ANCHORS = "MultipleGridAnchorGenerator/"
NMS = "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression/"
# Box encodings are (ty, tx, th, tw) in TF and (dx, dy, dw, dh) here.
TF_TO_OURS_BOX_ORDER = [1, 0, 3, 2]


class ConversionError(SSDLiteError, ValueError):
    """The graph is not an SSDLite-MobileNetV2 graph this converter understands."""


def convert_tf_graph(path: str | os.PathLike, class_names: list[str] | None = None) -> tuple[SSDLite, list[str]]:
    """Converts a frozen ``frozen_inference_graph.pb`` into an ssdlite model.

    Args:
        path: the frozen GraphDef file.
        class_names: names of classes 1..K-1; defaults to ``class1``, ``class2``, ...

    Returns:
        ``(model in eval mode, class_names)``.

    Raises:
        ConversionError: the graph is malformed or not the expected architecture; the message
            names the node and what was expected.
    """
    try:
        graph = read_graph(path)
    except GraphFormatError as error:
        raise ConversionError(str(error)) from None
    consts = constants(graph)
    reader = _GraphReader(path, graph, consts)
    config = reader.config()
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(1, config.num_classes)]
    if len(names) != config.num_classes - 1:
        raise ConversionError(
            f"{path}: the graph predicts {config.num_classes - 1} classes besides background, "
            f"but {len(names)} labels were given ({names})"
        )
    model = SSDLite(config)
    reader.load_weights(model)
    return model.eval(), names


class _GraphReader:
    def __init__(self, path, graph: dict[str, Node], consts: dict[str, np.ndarray]):
        self.path, self.graph, self.consts = path, graph, consts
        self.used: set[str] = set()

    def fail(self, message: str) -> NoReturn:
        raise ConversionError(f"{self.path}: {message}")

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            self.fail(
                f"expected a constant node {name!r}, which this graph lacks (is it an SSDLite-MobileNetV2 graph?)"
            )
        return self.consts[name]

    def config(self):
        first_conv = self.const(EXTRACTOR + "Conv/weights")
        if first_conv.shape[:3] != (3, 3, 3):
            self.fail(f"{EXTRACTOR}Conv/weights has shape {first_conv.shape}, expected [3, 3, 3, C]")
        width_mult = first_conv.shape[3] / 32
        box_out = self.const("BoxPredictor_0/BoxEncodingPredictor/weights").shape[-1]
        class_out = self.const("BoxPredictor_0/ClassPredictor/weights").shape[-1]
        boxes_per_location = box_out // 4
        image_size = self._image_size()
        config = get_config(
            "ssdlite300_mobilenet_v2_tf",
            width_mult=width_mult,
            image_size=image_size,
            num_classes=class_out // boxes_per_location,
            bn_eps=self._batchnorm_epsilon(),
            box_weights=self._box_weights(),
            score_function=self._score_function(),
            **self._nms_settings(),
        )
        scale = self.const("Preprocessor/mul/x").item()
        offset = self.const("Preprocessor/sub/y").item()
        if not (math.isclose(scale, 2 / 255, rel_tol=1e-6) and offset == 1.0):
            self.fail(f"input normalisation is x * {scale} - {offset}, expected x * 2/255 - 1")
        return dataclasses.replace(config, **self._anchor_scales(config))

    def _image_size(self) -> int:
        size = self.consts.get("Preprocessor/map/while/ResizeImage/stack")
        if size is None:
            self.fail("no Preprocessor/map/while/ResizeImage/stack constant: cannot tell the input size")
        if size[0] != size[1]:
            self.fail(f"the graph resizes to {size.tolist()}; only square inputs are supported")
        return int(size[0])

    def _batchnorm_epsilon(self) -> float:
        epsilons: set[float] = set()
        for node in self.graph.values():
            if node.op.startswith("FusedBatchNorm") and "epsilon" in node.attrs:
                epsilon = node.attrs["epsilon"]
                if not isinstance(epsilon, float):
                    self.fail(f"{node.name} has epsilon {epsilon!r}, expected a float")
                epsilons.add(epsilon)
        if len(epsilons) != 1:
            self.fail(f"expected one BatchNorm epsilon across the graph, found {sorted(epsilons)}")
        return float(np.float32(epsilons.pop()))

    def _box_weights(self) -> tuple[float, float, float, float]:
        ty, tx, th, tw = (self.const(f"Postprocessor/Decode/truediv{s}/y").item() for s in ("", "_1", "_2", "_3"))
        return (tx, ty, tw, th)

    def _score_function(self) -> str:
        ops = {node.op for name, node in self.graph.items() if name.startswith("Postprocessor/convert_scores")}
        if "Sigmoid" in ops:
            return "sigmoid"
        if "Softmax" in ops:
            return "softmax"
        self.fail(f"Postprocessor/convert_scores uses {sorted(ops)}; expected Sigmoid or Softmax")

    def _nms_settings(self) -> dict:
        return {
            "nms_iou": round(self.const(NMS + "non_max_suppression/iou_threshold").item(), 6),
            "score_threshold": self.const(NMS + "non_max_suppression/score_threshold").item(),
            "max_detections": int(self.const(NMS + "Minimum_1/x").item()),
        }

    def _anchor_scales(self, config) -> dict:
        """Reads each map's (scale, aspect ratio) list and checks our generator reproduces it."""
        ratio_nodes = sorted(
            (n for n in self.consts if re.fullmatch(ANCHORS + r"Sqrt(_\d+)?/x", n)),
            key=lambda n: int(n.rsplit("_", 1)[1].split("/")[0]) if "Sqrt_" in n else 0,
        )
        scale_nodes = sorted(
            (n for n in self.consts if re.fullmatch(ANCHORS + r"truediv_\d+/x", n) and self.consts[n].size > 1),
            key=lambda n: int(n.split("_")[-1].split("/")[0]),
        )
        if len(ratio_nodes) != 6 or len(scale_nodes) != 6:
            self.fail(
                f"expected 6 anchor layers under {ANCHORS}, found {len(ratio_nodes)} aspect-ratio and "
                f"{len(scale_nodes)} scale lists"
            )
        graph_shapes = []
        for ratio_node, scale_node in zip(ratio_nodes, scale_nodes, strict=False):
            ratios, scales = self.consts[ratio_node].astype(np.float64), self.consts[scale_node].astype(np.float64)
            graph_shapes.append(list(zip(scales * np.sqrt(ratios), scales / np.sqrt(ratios), strict=False)))
        min_scale = float(np.float32(self.consts[scale_nodes[0]][1]))
        max_scale = float(np.float32(self.consts[scale_nodes[-1]][0]))
        ours = box_shapes("tf", 6, min_scale, max_scale)
        for k, (theirs, mine) in enumerate(zip(graph_shapes, ours, strict=False)):
            if len(theirs) != len(mine) or not np.allclose(theirs, mine, atol=1e-5):
                self.fail(
                    f"anchor layer {k} ({ratio_nodes[k]}, {scale_nodes[k]}) has box shapes {theirs}, "
                    f"which the SSDLite anchor generator does not produce ({mine})"
                )
        return {"min_scale": min_scale, "max_scale": max_scale}

    def load_weights(self, model: SSDLite):
        state = {}
        for ours, scope, kind in _weight_map(model):
            if kind == "bn":
                for suffix, tf_name in (
                    ("weight", "gamma"),
                    ("bias", "beta"),
                    ("running_mean", "moving_mean"),
                    ("running_var", "moving_variance"),
                ):
                    state[f"{ours}.{suffix}"] = self.take(f"{scope}/BatchNorm/{tf_name}")
            elif kind == "depthwise":
                state[f"{ours}.weight"] = self.take(f"{scope}/depthwise_weights").transpose(2, 3, 0, 1)
            else:
                state[f"{ours}.weight"] = self.take(f"{scope}/weights").transpose(3, 2, 0, 1)
                if kind == "conv_bias":
                    state[f"{ours}.bias"] = self.take(f"{scope}/biases")
        _reorder_box_outputs(model, state)
        expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        for key, tensor in expected.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                self.fail(f"weight for {key} has shape {state[key].shape}, the model expects {tuple(tensor.shape)}")
        unused = sorted(
            n
            for n, v in self.consts.items()
            if n.startswith((EXTRACTOR, "BoxPredictor_"))
            and v.dtype == np.float32
            and v.ndim > 0
            and n not in self.used
        )
        if unused:
            self.fail(f"{len(unused)} weights were not mapped onto the model, e.g. {unused[:3]}")
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)

    def take(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.const(name)


def _weight_map(model: SSDLite) -> list[tuple[str, str, str]]:
    """(our module path, TF scope, kind) for every layer with weights."""
    entries = [
        ("backbone.features.0.0", EXTRACTOR + "Conv", "conv"),
        ("backbone.features.0.1", EXTRACTOR + "Conv", "bn"),
    ]
    for index, block in enumerate(model.backbone.features[1:-1], start=1):
        scope = EXTRACTOR + ("expanded_conv" if index == 1 else f"expanded_conv_{index - 1}")
        layers = ["expand"] if block.has_expansion else []
        layers += ["depthwise", "project"]
        for position, layer in enumerate(layers):
            ours = f"backbone.features.{index}.conv.{position}"
            if layer == "project":
                entries += [
                    (ours, f"{scope}/project", "conv"),
                    (f"backbone.features.{index}.conv.{position + 1}", f"{scope}/project", "bn"),
                ]
            else:
                entries += [
                    (f"{ours}.0", f"{scope}/{layer}", "depthwise" if layer == "depthwise" else "conv"),
                    (f"{ours}.1", f"{scope}/{layer}", "bn"),
                ]
    last = len(model.backbone.features) - 1
    entries += [
        (f"backbone.features.{last}.0", EXTRACTOR + "Conv_1", "conv"),
        (f"backbone.features.{last}.1", EXTRACTOR + "Conv_1", "bn"),
    ]
    for index, extra in enumerate(model.extras):
        expand, _, project = extra.children()  # an ExtraBlock: 1x1 to half depth, 3x3 depthwise, 1x1 to depth
        n, half, depth = index + 2, expand.out_channels, project.out_channels
        scopes = (
            f"layer_19_1_Conv2d_{n}_1x1_{half}",
            f"layer_19_2_Conv2d_{n}_3x3_s2_{depth}_depthwise",
            f"layer_19_2_Conv2d_{n}_3x3_s2_{depth}",
        )
        for position, (scope, kind) in enumerate(zip(scopes, ("conv", "depthwise", "conv"), strict=False)):
            entries += [
                (f"extras.{index}.{position}.0", EXTRACTOR + scope, kind),
                (f"extras.{index}.{position}.1", EXTRACTOR + scope, "bn"),
            ]
    for head, tf_name in (("box_head", "BoxEncodingPredictor"), ("class_head", "ClassPredictor")):
        for k in range(len(getattr(model, head).predictors)):
            scope = f"BoxPredictor_{k}/{tf_name}"
            entries += [
                (f"{head}.predictors.{k}.0.0", f"{scope}_depthwise", "depthwise"),
                (f"{head}.predictors.{k}.0.1", f"{scope}_depthwise", "bn"),
                (f"{head}.predictors.{k}.1", scope, "conv_bias"),
            ]
    return entries


def _reorder_box_outputs(model: SSDLite, state: dict[str, np.ndarray]):
    for k in range(len(model.box_head.predictors)):
        for suffix in ("weight", "bias"):
            key = f"box_head.predictors.{k}.1.{suffix}"
            values = state[key]
            grouped = values.reshape(-1, 4, *values.shape[1:])  # (anchor, coordinate, ...)
            state[key] = grouped[:, TF_TO_OURS_BOX_ORDER].reshape(values.shape)
