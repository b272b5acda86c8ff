"""Box formats, the SSD box coder and IoU helpers.

Boxes inside the library are normalised to [0, 1]. Anchors are kept as (cx, cy, w, h);
ground truth and decoded detections as (x1, y1, x2, y2).
"""

import torch
from torch import Tensor

# exp() of a larger log-scale would overflow float16/bfloat16 and is never a real box.
MAX_LOG_SCALE = 4.135  # log(1000 / 16), as in torchvision


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def encode_boxes(boxes: Tensor, anchors: Tensor, weights: tuple[float, float, float, float]) -> Tensor:
    """Encodes (x1, y1, x2, y2) boxes as SSD offsets relative to (cx, cy, w, h) anchors.

    Args:
        boxes: ``[..., A, 4]`` boxes in (x1, y1, x2, y2), broadcastable against ``anchors``.
        anchors: ``[A, 4]`` anchors in (cx, cy, w, h).
        weights: scale factors for (dx, dy, dw, dh), e.g. ``(10, 10, 5, 5)``.

    Returns:
        ``[..., A, 4]`` regression targets (dx, dy, dw, dh).
    """
    wx, wy, ww, wh = weights
    target = xyxy_to_cxcywh(boxes)
    # Degenerate targets only occur for anchors that are not positives; keep them finite.
    tw = target[..., 2].clamp(min=1e-6)
    th = target[..., 3].clamp(min=1e-6)
    dx = wx * (target[..., 0] - anchors[:, 0]) / anchors[:, 2]
    dy = wy * (target[..., 1] - anchors[:, 1]) / anchors[:, 3]
    dw = ww * torch.log(tw / anchors[:, 2])
    dh = wh * torch.log(th / anchors[:, 3])
    return torch.stack((dx, dy, dw, dh), dim=-1)


def decode_boxes(deltas: Tensor, anchors: Tensor, weights: tuple[float, float, float, float]) -> Tensor:
    """Inverse of :func:`encode_boxes`: offsets ``[..., A, 4]`` to (x1, y1, x2, y2) boxes."""
    wx, wy, ww, wh = weights
    anchors = anchors.to(deltas.dtype)
    cx = deltas[..., 0] / wx * anchors[:, 2] + anchors[:, 0]
    cy = deltas[..., 1] / wy * anchors[:, 3] + anchors[:, 1]
    w = torch.exp((deltas[..., 2] / ww).clamp(max=MAX_LOG_SCALE)) * anchors[:, 2]
    h = torch.exp((deltas[..., 3] / wh).clamp(max=MAX_LOG_SCALE)) * anchors[:, 3]
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU between every pair of (x1, y1, x2, y2) boxes, batched over leading dimensions.

    Args:
        boxes1: ``[..., M, 4]``.
        boxes2: ``[..., A, 4]`` (leading dimensions broadcast against ``boxes1``'s).

    Returns:
        ``[..., M, A]`` IoU; 0 where both boxes are empty.
    """
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return inter / union.clamp(min=1e-12)
