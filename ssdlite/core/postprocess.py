"""Batched detection postprocessing: decode, score filter, top-k, class-aware NMS, max detections.

One pass for the whole batch on the outputs' device: no loop over images or classes.
"""

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .boxes import decode_boxes
from .config import PostprocessConfig


@dataclass
class Detections:
    """Detections of one image: ``boxes [D, 4]`` (x1, y1, x2, y2), ``scores [D]``, ``labels [D]``.

    Boxes are normalised to [0, 1] as returned by :func:`postprocess`; labels count from 1
    (0 is background).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def class_scores(class_logits: Tensor, score_function: str) -> Tensor:
    """Per-class probabilities without the background column: ``[N, A, K] -> [N, A, K - 1]``."""
    logits = class_logits.float()
    if score_function == "softmax":
        return logits.softmax(dim=-1)[..., 1:]
    if score_function == "sigmoid":
        return logits[..., 1:].sigmoid()
    raise ValueError(f"score_function must be 'softmax' or 'sigmoid', got {score_function!r}")


def postprocess(
    box_regression: Tensor,
    class_logits: Tensor,
    anchors: Tensor,
    config: PostprocessConfig | None = None,
) -> list[Detections]:
    """Turns raw SSD outputs into per-image detections.

    Args:
        box_regression: ``[N, A, 4]`` encoded offsets.
        class_logits: ``[N, A, K]`` logits, column 0 background.
        anchors: ``[A, 4]`` (cx, cy, w, h) normalised anchors.
        config: (default ``PostprocessConfig()``) score function, box coder weights, score threshold
            (candidates scoring at or below it are dropped before NMS), NMS IoU (above which a
            lower-scoring box of the same class is suppressed), detections kept per image, and the
            highest-scoring (box, class) pairs per image that enter NMS.

    Returns:
        One :class:`Detections` per image, sorted by score, boxes clipped to [0, 1].
    """
    config = config or PostprocessConfig()
    num_images, num_anchors, _ = box_regression.shape
    scores = class_scores(class_logits, config.score_function)
    num_classes = scores.shape[-1]
    flat_scores = scores.reshape(num_images, -1)
    k = min(config.candidates_per_image, flat_scores.shape[1])
    top_scores, top_index = flat_scores.topk(k, dim=1)
    keep = top_scores > config.score_threshold
    image_index = torch.arange(num_images, device=scores.device)[:, None].expand(-1, k)[keep]
    flat_index = top_index[keep]
    candidate_scores = top_scores[keep]
    anchor_index = torch.div(flat_index, num_classes, rounding_mode="floor")
    labels = flat_index % num_classes + 1

    # Decode only the surviving candidates; NMS runs on unclipped boxes, clipping comes after.
    deltas = box_regression[image_index, anchor_index].float()
    boxes = decode_boxes(deltas, anchors[anchor_index], config.box_weights)
    kept = batched_nms(boxes, candidate_scores, image_index * (num_classes + 1) + labels, config.nms_iou)

    # batched_nms returns indices by decreasing score; a stable sort by image keeps that order.
    kept = kept[torch.sort(image_index[kept], stable=True).indices]
    kept_image = image_index[kept]
    counts = torch.bincount(kept_image, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[kept_image]
    kept = kept[rank < config.max_detections]
    detections_per_image = counts.clamp(max=config.max_detections).tolist()

    boxes = boxes[kept].clamp(0, 1)
    return [
        Detections(image_boxes, image_scores, image_labels)
        for image_boxes, image_scores, image_labels in zip(
            boxes.split(detections_per_image),
            candidate_scores[kept].split(detections_per_image),
            labels[kept].split(detections_per_image),
            strict=False,
        )
    ]
