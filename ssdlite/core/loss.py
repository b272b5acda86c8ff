"""Target padding, anchor matching and the SSD training loss.

Ground truth enters as padded ``[N, M]`` tensors (see :func:`pad_targets`): a label of ``-1``
marks a padding row ("no box"). Anchor matches use ``-1`` for background and ``-2`` for anchors
ignored because they overlap a crowd box.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .boxes import cxcywh_to_xyxy, decode_boxes, encode_boxes, pairwise_iou

BACKGROUND = -1
IGNORED = -2
# IoUs closer than this are one value: float rounding (about 1e-7 here) must not break a tie.
TIE_TOLERANCE = 1e-6


def pad_targets(
    boxes_list: Sequence[Tensor],
    labels_list: Sequence[Tensor],
    iscrowd_list: Sequence[Tensor] | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pads per-image targets of varying length into dense batch tensors.

    Args:
        boxes_list: per image, ``[M_i, 4]`` normalised (x1, y1, x2, y2) boxes (``M_i`` may be 0).
        labels_list: per image, ``[M_i]`` class labels in ``1..K-1``.
        iscrowd_list: per image, ``[M_i]`` crowd flags; all ``False`` when omitted.
        device: where to put the result; by default the device of the inputs.

    Returns:
        ``(boxes [N, M, 4] float32, labels [N, M] int64, iscrowd [N, M] bool)`` with
        ``M = max(1, max_i M_i)``. Padding rows have label ``-1``, box 0 and crowd ``False``.
    """
    boxes = [torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4) for b in boxes_list]
    labels = [torch.as_tensor(lab, dtype=torch.int64, device=device).reshape(-1) for lab in labels_list]
    if iscrowd_list is None:
        iscrowd = [torch.zeros(len(lab), dtype=torch.bool, device=lab.device) for lab in labels]
    else:
        iscrowd = [torch.as_tensor(c, device=device).reshape(-1).bool() for c in iscrowd_list]
    padded_boxes = nn.utils.rnn.pad_sequence(boxes, batch_first=True, padding_value=0.0)
    padded_labels = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-1)
    padded_iscrowd = nn.utils.rnn.pad_sequence(iscrowd, batch_first=True, padding_value=False)
    if padded_labels.shape[1] == 0:
        padded_boxes = F.pad(padded_boxes, (0, 0, 0, 1))
        padded_labels = F.pad(padded_labels, (0, 1), value=-1)
        padded_iscrowd = F.pad(padded_iscrowd, (0, 1), value=False)
    return padded_boxes, padded_labels, padded_iscrowd


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_iscrowd: Tensor | None = None,
    iou_threshold: float = 0.5,
) -> Tensor:
    """Assigns every anchor of every image to a ground-truth box, background, or "ignore".

    Rules, applied to the whole batch at once (torchvision's ``SSDMatcher`` with an explicit tie
    rule, plus crowd boxes):

    * An anchor is positive for its highest-IoU valid non-crowd gt (lowest gt index on ties)
      if that IoU is ``>= iou_threshold``.
    * Every valid non-crowd gt also claims its best anchor, overriding the threshold rule. IoUs
      within ``TIE_TOLERANCE`` of the gt's best are ties, and among them the anchor whose centre
      is nearest the gt's centre wins (then the lowest index). Ties are common: a small box
      inside several anchors of one scale (every aspect ratio has the same area) has exactly the
      same IoU with each, and float rounding must not pick among them. When several gts claim
      one anchor the last gt wins. A gt that overlaps no anchor at all (e.g. a zero-area box)
      claims nothing.
    * A remaining anchor whose IoU with some crowd box is ``>= iou_threshold`` is ignored (``-2``);
      all others are background (``-1``).

    Rows with a negative label are padding and never match.

    Args:
        anchors: ``[A, 4]`` anchors in (cx, cy, w, h).
        gt_boxes: ``[N, M, 4]`` ground-truth boxes in (x1, y1, x2, y2).
        gt_labels: ``[N, M]`` labels, ``-1`` for padding.
        gt_iscrowd: ``[N, M]`` crowd flags, or ``None`` for no crowd boxes.
        iou_threshold: minimum IoU for a positive (and for a crowd box to ignore an anchor).

    Returns:
        ``[N, A]`` int64: the matched gt index, ``-1`` for background or ``-2`` for ignored.
    """
    n, m = gt_labels.shape
    num_anchors = anchors.shape[0]
    if m == 0:
        return torch.full((n, num_anchors), BACKGROUND, dtype=torch.int64, device=gt_labels.device)

    # The anchors' corners, rounded once from their exact (cx, cy, w, h).
    iou = pairwise_iou(gt_boxes, cxcywh_to_xyxy(anchors.double()).to(gt_boxes.dtype))  # [N, M, A]
    valid = gt_labels >= 0
    crowd = valid & gt_iscrowd.bool() if gt_iscrowd is not None else torch.zeros_like(valid)
    matchable = valid & ~crowd

    # -1 is below any real IoU, so masked gts never win a max.
    match_iou = iou.masked_fill(~matchable[:, :, None], -1.0)
    best_iou, best_gt = match_iou.max(dim=1)  # [N, A]
    matched = torch.where(best_iou >= iou_threshold, best_gt, BACKGROUND)

    gt_best_iou = match_iou.amax(dim=2)  # [N, M]
    tied = match_iou >= (gt_best_iou - TIE_TOLERANCE)[:, :, None]
    gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    distance = (gt_centres[:, :, None, :] - anchors[:, :2]).square().sum(dim=-1)  # [N, M, A]
    claimed_anchor = distance.masked_fill(~tied, float("inf")).argmin(dim=2)  # argmin returns the first minimum
    gt_index = torch.arange(m, device=gt_labels.device).expand(n, m)
    claims = torch.where(gt_best_iou > 0, gt_index, BACKGROUND)  # padding and crowd rows sit at -1
    claimed_by = torch.full_like(matched, BACKGROUND).scatter_reduce_(1, claimed_anchor, claims, reduce="amax")
    matched = torch.where(claimed_by >= 0, claimed_by, matched)

    crowd_iou = iou.masked_fill(~crowd[:, :, None], -1.0).amax(dim=1)
    return torch.where((matched < 0) & (crowd_iou >= iou_threshold), IGNORED, matched)


class SSDLoss(nn.Module):
    """SSD multibox loss: anchor matching, box regression and classification.

    Classification is either softmax cross-entropy with hard-negative mining (``neg_pos_ratio``
    negatives per positive, chosen per image by highest loss) or sigmoid focal loss over all
    non-ignored anchors on the object classes ``1..K-1``. Box regression is either smooth-L1 on
    encoded offsets or GIoU on decoded boxes, over positives only. Every term is summed and divided
    by the number of positives in the batch (at least 1). All losses are computed in float32, also
    under autocast.

    Args:
        anchors: ``[A, 4]`` normalised anchors in (cx, cy, w, h).
        box_weights: ``(dx, dy, dw, dh)`` weights of the box coder.
        iou_threshold: IoU needed for an anchor to match a gt (see :func:`match_anchors`).
        neg_pos_ratio: negatives kept per positive in softmax mode.
        classification: ``"softmax"`` or ``"focal"``.
        box_loss: ``"smooth_l1"`` or ``"giou"``.
        focal_alpha: focal-loss alpha (weight of positives); negative disables the weighting.
        focal_gamma: focal-loss focusing exponent.
    """

    anchors: Tensor

    def __init__(
        self,
        anchors: Tensor,
        box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        iou_threshold: float = 0.5,
        neg_pos_ratio: int = 3,
        classification: str = "softmax",
        box_loss: str = "smooth_l1",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if classification not in ("softmax", "focal"):
            raise ValueError(f"classification must be 'softmax' or 'focal', got {classification!r}")
        if box_loss not in ("smooth_l1", "giou"):
            raise ValueError(f"box_loss must be 'smooth_l1' or 'giou', got {box_loss!r}")
        self.register_buffer("anchors", anchors.detach().float(), persistent=False)
        dx, dy, dw, dh = box_weights
        self.box_weights = (float(dx), float(dy), float(dw), float(dh))
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.classification = classification
        self.box_loss = box_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(
        self,
        box_regression: Tensor,
        class_logits: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_iscrowd: Tensor | None = None,
        matched: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Computes the loss for a batch.

        Args:
            box_regression: ``[N, A, 4]`` predicted encoded offsets.
            class_logits: ``[N, A, K]`` class logits, index 0 = background.
            gt_boxes: ``[N, M, 4]`` normalised (x1, y1, x2, y2) gt boxes, as from :func:`pad_targets`.
            gt_labels: ``[N, M]`` gt labels in ``1..K-1``, ``-1`` for padding.
            gt_iscrowd: ``[N, M]`` crowd flags, or ``None``.
            matched: ``[N, A]`` matches to use instead of :func:`match_anchors`' (same encoding).

        Returns:
            Dict with scalar float32 ``loss`` (= ``loss_box + loss_cls``), ``loss_box``,
            ``loss_cls`` and ``num_positives`` (int64, over the whole batch).
        """
        with torch.autocast(device_type=class_logits.device.type, enabled=False):
            box_regression = box_regression.float()
            class_logits = class_logits.float()
            gt_boxes = gt_boxes.float()
            gt_labels = gt_labels.long()
            anchors = self.anchors.float()
            if gt_labels.shape[1] == 0:
                # A single padding row keeps the gathers below in range.
                gt_boxes = gt_boxes.new_zeros(gt_labels.shape[0], 1, 4)
                gt_labels = gt_labels.new_full((gt_labels.shape[0], 1), -1)
                gt_iscrowd = None

            if matched is None:
                matched = self.match(gt_boxes, gt_labels, gt_iscrowd)
            positive = matched >= 0
            num_positives = positive.sum()
            normalizer = num_positives.clamp(min=1).float()

            loss_box = self._box_loss(box_regression, anchors, gt_boxes, matched, positive) / normalizer

            matched_labels = gt_labels.gather(1, matched.clamp(min=0))
            target_labels = torch.where(positive, matched_labels, 0)
            if self.classification == "softmax":
                loss_cls = self._softmax_loss(class_logits, target_labels, matched, positive) / normalizer
            else:
                loss_cls = self._focal_loss(class_logits, target_labels, matched) / normalizer

        return {
            "loss": loss_box + loss_cls,
            "loss_box": loss_box,
            "loss_cls": loss_cls,
            "num_positives": num_positives,
        }

    def match(self, gt_boxes: Tensor, gt_labels: Tensor, gt_iscrowd: Tensor | None = None) -> Tensor:
        """The anchor matches :meth:`forward` uses: ``[N, A]``, see :func:`match_anchors`."""
        return match_anchors(self.anchors, gt_boxes, gt_labels, gt_iscrowd, self.iou_threshold)

    def _box_loss(
        self, box_regression: Tensor, anchors: Tensor, gt_boxes: Tensor, matched: Tensor, positive: Tensor
    ) -> Tensor:
        image_idx, anchor_idx = positive.nonzero(as_tuple=True)
        deltas = box_regression[image_idx, anchor_idx]
        pos_anchors = anchors[anchor_idx]
        pos_gt = gt_boxes[image_idx, matched[image_idx, anchor_idx]]
        if self.box_loss == "smooth_l1":
            targets = encode_boxes(pos_gt, pos_anchors, self.box_weights)
            return F.smooth_l1_loss(deltas, targets, reduction="sum")
        decoded = decode_boxes(deltas, pos_anchors, self.box_weights)
        return generalized_box_iou_loss(decoded, pos_gt, reduction="sum")

    def _softmax_loss(self, class_logits: Tensor, target_labels: Tensor, matched: Tensor, positive: Tensor) -> Tensor:
        n, num_anchors, num_classes = class_logits.shape
        ce = F.cross_entropy(class_logits.reshape(-1, num_classes), target_labels.reshape(-1), reduction="none")
        ce = ce.view(n, num_anchors)

        negative = matched == BACKGROUND
        # As in torchvision, an image without positives contributes no negatives (ratio * 0 of them).
        num_negatives = self.neg_pos_ratio * positive.sum(dim=1, keepdim=True)
        negative_ce = ce.detach().masked_fill(~negative, -float("inf"))
        order = negative_ce.sort(dim=1, descending=True, stable=True).indices
        arange = torch.arange(num_anchors, device=ce.device).expand(n, num_anchors)
        rank = torch.empty_like(order).scatter_(1, order, arange)
        hard_negative = negative & (rank < num_negatives)

        return torch.where(positive | hard_negative, ce, 0.0).sum()

    def _focal_loss(self, class_logits: Tensor, target_labels: Tensor, matched: Tensor) -> Tensor:
        object_classes = torch.arange(1, class_logits.shape[-1], device=class_logits.device)
        targets = (target_labels[..., None] == object_classes).float()
        loss = sigmoid_focal_loss(
            class_logits[..., 1:], targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none"
        )
        return torch.where(matched != IGNORED, loss.sum(dim=-1), 0.0).sum()
