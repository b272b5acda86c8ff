"""Appends SSD postprocessing to an exported graph, so one ONNX file returns final detections.

Inside the graph, as :func:`ssdlite.core.postprocess.postprocess` does it in torch: class scores
(softmax or sigmoid), the ``candidates_per_image`` best (anchor, class) pairs per image, box
decoding, a score threshold and class-aware NMS (ONNX ``NonMaxSuppression``), then the
``max_detections`` best per image, padded. Outputs:

- ``boxes [N, D, 4]`` float: x1, y1, x2, y2 normalised to [0, 1];
- ``scores [N, D]`` float;
- ``labels [N, D]`` int64: 1-based indices into the class names (0 in padding rows);
- ``num_detections [N]`` int64: how many rows of each image are real.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core import SSDLiteConfig
from ..core.anchors import anchors_for
from ..core.boxes import MAX_LOG_SCALE
from .onnx import OUTPUT_NAMES

END_TO_END_OUTPUTS = ("boxes", "scores", "labels", "num_detections")


class _GraphBuilder:
    """Adds nodes and constants to a graph under a name prefix, so nothing clashes with the network's names."""

    def __init__(self, graph: onnx.GraphProto, prefix: str = "postprocess/"):
        self.graph = graph
        self.prefix = prefix
        self.count = 0

    def constant(self, value, dtype=np.float32) -> str:
        name = self._name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attributes):
        names = [name] if name else [self._name(op_type.lower()) for _ in range(outputs)]
        self.graph.node.append(helper.make_node(op_type, list(inputs), names, name=self._name(op_type), **attributes))
        return names[0] if outputs == 1 else names

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{self.prefix}{kind}_{self.count}"


def append_postprocess(model: onnx.ModelProto, config: SSDLiteConfig) -> onnx.ModelProto:
    """Returns ``model`` with its raw outputs replaced by final detections (see the module docstring).

    ``model`` must have the raw outputs of :func:`ssdlite.deploy.onnx.export_network` (float or INT8).
    Thresholds and sizes come from ``config.postprocess``; the metadata records them.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    raw_outputs = [output.name for output in graph.output]
    if tuple(raw_outputs) != OUTPUT_NAMES:
        raise ValueError(f"expected a model with outputs {OUTPUT_NAMES}, got {raw_outputs}")
    box_regression, class_logits = OUTPUT_NAMES
    anchors = anchors_for(config).numpy()
    num_anchors, num_classes = anchors.shape[0], config.num_classes - 1
    settings = config.postprocess
    candidates = min(settings.candidates_per_image, num_anchors * num_classes)
    max_detections = min(settings.max_detections, candidates)
    g = _GraphBuilder(graph)

    def axis_slice(tensor: str, start: int, end: int, axis: int) -> str:
        return g.op(
            "Slice", tensor, g.constant([start], np.int64), g.constant([end], np.int64), g.constant([axis], np.int64)
        )

    # Class probabilities without the background column: [N, A, C].
    if settings.score_function == "softmax":
        scores = axis_slice(g.op("Softmax", class_logits, axis=-1), 1, config.num_classes, 2)
    else:
        scores = g.op("Sigmoid", axis_slice(class_logits, 1, config.num_classes, 2))

    # The best (anchor, class) pairs of each image, as the torch postprocess takes them.
    flat = g.op("Reshape", scores, g.constant([0, -1], np.int64))
    top_scores, top_index = g.op("TopK", flat, g.constant([candidates], np.int64), axis=1, outputs=2)  # [N, K]
    num_classes_constant = g.constant(num_classes, np.int64)
    anchor_index = g.op("Div", top_index, num_classes_constant)
    class_index = g.op("Mod", top_index, num_classes_constant)

    # Decode the candidates' boxes: the same arithmetic as ssdlite.boxes.decode_boxes.
    def per_coordinate(index: str) -> str:  # [N, K] -> [N, K, 4] for GatherElements
        return g.op("Expand", g.op("Unsqueeze", index, g.constant([2], np.int64)), g.constant([1, 1, 4], np.int64))

    deltas = g.op("GatherElements", box_regression, per_coordinate(anchor_index), axis=1)
    priors = g.op("Gather", g.constant(anchors), anchor_index, axis=0)  # [N, K, 4] (cx, cy, w, h)

    def column(tensor: str, i: int) -> str:
        return axis_slice(tensor, i, i + 1, 2)

    wx, wy, ww, wh = settings.box_weights
    max_log = g.constant(MAX_LOG_SCALE)
    cx = g.op("Add", g.op("Mul", g.op("Div", column(deltas, 0), g.constant(wx)), column(priors, 2)), column(priors, 0))
    cy = g.op("Add", g.op("Mul", g.op("Div", column(deltas, 1), g.constant(wy)), column(priors, 3)), column(priors, 1))
    w = g.op(
        "Mul", g.op("Exp", g.op("Min", g.op("Div", column(deltas, 2), g.constant(ww)), max_log)), column(priors, 2)
    )
    h = g.op(
        "Mul", g.op("Exp", g.op("Min", g.op("Div", column(deltas, 3), g.constant(wh)), max_log)), column(priors, 3)
    )
    half_w, half_h = g.op("Div", w, g.constant(2.0)), g.op("Div", h, g.constant(2.0))
    boxes = g.op(
        "Concat",
        g.op("Sub", cx, half_w),
        g.op("Sub", cy, half_h),
        g.op("Add", cx, half_w),
        g.op("Add", cy, half_h),
        axis=2,
    )

    # Class-aware NMS on the unclipped candidate boxes: each candidate scores only in its own
    # class ([N, C, K]); selected rows are (image, class, candidate).
    in_class = g.op(
        "Equal",
        g.op("Unsqueeze", class_index, g.constant([1], np.int64)),
        g.constant(np.arange(num_classes)[None, :, None], np.int64),
    )
    per_class = g.op("Where", in_class, g.op("Unsqueeze", top_scores, g.constant([1], np.int64)), g.constant(0.0))
    selected = g.op(
        "NonMaxSuppression",
        boxes,
        per_class,
        g.constant([max_detections], np.int64),
        g.constant([settings.nms_iou]),
        g.constant([settings.score_threshold]),
    )

    # The best max_detections survivors of each image: their scores on a -1 canvas over the
    # candidates, then the top of it.
    image_and_candidate = g.op("Gather", selected, g.constant([0, 2], np.int64), axis=1)
    canvas = g.op(
        "ConstantOfShape",
        g.op("Shape", top_scores),
        value=helper.make_tensor("minus_one", TensorProto.FLOAT, [1], [-1.0]),
    )
    canvas = g.op("ScatterND", canvas, image_and_candidate, g.op("GatherND", top_scores, image_and_candidate))
    best_scores, best = g.op("TopK", canvas, g.constant([max_detections], np.int64), axis=1, outputs=2)
    valid = g.op("Greater", best_scores, g.constant(-0.5))
    labels = g.op("Add", g.op("GatherElements", class_index, best, axis=1), g.constant(1, np.int64))
    best_boxes = g.op(
        "Clip", g.op("GatherElements", boxes, per_coordinate(best), axis=1), g.constant(0.0), g.constant(1.0)
    )

    out_boxes, out_scores, out_labels, out_count = END_TO_END_OUTPUTS
    g.op("Where", g.op("Unsqueeze", valid, g.constant([2], np.int64)), best_boxes, g.constant(0.0), name=out_boxes)
    g.op("Where", valid, best_scores, g.constant(0.0), name=out_scores)
    g.op("Where", valid, labels, g.constant(0, np.int64), name=out_labels)
    g.op("ReduceSum", g.op("Cast", valid, to=TensorProto.INT64), g.constant([1], np.int64), keepdims=0, name=out_count)

    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(out_boxes, TensorProto.FLOAT, ["batch", max_detections, 4]),
            helper.make_tensor_value_info(out_scores, TensorProto.FLOAT, ["batch", max_detections]),
            helper.make_tensor_value_info(out_labels, TensorProto.INT64, ["batch", max_detections]),
            helper.make_tensor_value_info(out_count, TensorProto.INT64, ["batch"]),
        ]
    )
    onnx.checker.check_model(model)
    return model
