"""Batched detection postprocessing: decode, score filter, top-k, class-aware NMS, max detections.

One pass for the whole batch on the outputs' device: no loop over images or classes.
"""

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .boxes import decode_boxes


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
    *,
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
    score_function: str = "softmax",
    score_threshold: float = 0.01,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    candidates_per_image: int = 400,
) -> list[Detections]:
    """Turns raw SSD outputs into per-image detections.

    Args:
        box_regression: ``[N, A, 4]`` encoded offsets.
        class_logits: ``[N, A, K]`` logits, column 0 background.
        anchors: ``[A, 4]`` (cx, cy, w, h) normalised anchors.
        box_weights: the box coder's scale factors.
        score_function: ``"softmax"`` or ``"sigmoid"``.
        score_threshold: drop candidates scoring at or below this before NMS.
        nms_iou: IoU above which a lower-scoring box of the same class is suppressed.
        max_detections: detections kept per image after NMS.
        candidates_per_image: highest-scoring (box, class) pairs per image that enter NMS.

    Returns:
        One :class:`Detections` per image, sorted by score, boxes clipped to [0, 1].
    """
    num_images, num_anchors, _ = box_regression.shape
    scores = class_scores(class_logits, score_function)
    num_classes = scores.shape[-1]
    flat_scores = scores.reshape(num_images, -1)
    k = min(candidates_per_image, flat_scores.shape[1])
    top_scores, top_index = flat_scores.topk(k, dim=1)
    keep = top_scores > score_threshold
    image_index = torch.arange(num_images, device=scores.device)[:, None].expand(-1, k)[keep]
    flat_index = top_index[keep]
    candidate_scores = top_scores[keep]
    anchor_index = torch.div(flat_index, num_classes, rounding_mode="floor")
    labels = flat_index % num_classes + 1

    # Decode only the surviving candidates; NMS runs on unclipped boxes, clipping comes after.
    deltas = box_regression[image_index, anchor_index].float()
    boxes = decode_boxes(deltas, anchors[anchor_index], box_weights)
    kept = batched_nms(boxes, candidate_scores, image_index * (num_classes + 1) + labels, nms_iou)

    # batched_nms returns indices by decreasing score; a stable sort by image keeps that order.
    kept = kept[torch.sort(image_index[kept], stable=True).indices]
    kept_image = image_index[kept]
    counts = torch.bincount(kept_image, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[kept_image]
    kept = kept[rank < max_detections]
    counts = counts.clamp(max=max_detections).tolist()

    boxes = boxes[kept].clamp(0, 1)
    return [
        Detections(b, s, l)
        for b, s, l in zip(boxes.split(counts), candidate_scores[kept].split(counts), labels[kept].split(counts))
    ]
