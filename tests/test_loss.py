import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ssdlite.core.anchors import generate_anchors
from ssdlite.core.boxes import pairwise_iou, xyxy_to_cxcywh
from ssdlite.core.loss import TIE_TOLERANCE, SSDLoss, match_anchors, pad_targets

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
NUM_CLASSES = 6
SEEDS = range(6)
CONFIGS = [("softmax", "smooth_l1"), ("softmax", "giou"), ("focal", "smooth_l1"), ("focal", "giou")]


# ---------------------------------------------------------------------------------------------
# Reference implementation: one image at a time, losses in float64, written straight from the rules.
# ---------------------------------------------------------------------------------------------


def ref_to_xyxy(cxcywh):
    cx, cy, w, h = cxcywh.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def ref_iou_one(box, anchors_xyxy):
    iw = (torch.minimum(anchors_xyxy[:, 2], box[2]) - torch.maximum(anchors_xyxy[:, 0], box[0])).clamp(min=0)
    ih = (torch.minimum(anchors_xyxy[:, 3], box[3]) - torch.maximum(anchors_xyxy[:, 1], box[1])).clamp(min=0)
    inter = iw * ih
    area_box = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    area_anchors = (anchors_xyxy[:, 2] - anchors_xyxy[:, 0]) * (anchors_xyxy[:, 3] - anchors_xyxy[:, 1])
    union = area_box + area_anchors - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def ref_match_image(anchors, boxes, labels, iscrowd, threshold):
    # IoU stays in float32 as in loss.py; ties are then decided by the explicit rule below.
    anchors_xyxy = ref_to_xyxy(anchors.double()).to(boxes.dtype)
    num_anchors = len(anchors)
    ious = [ref_iou_one(box, anchors_xyxy) for box in boxes]
    normal = [g for g in range(len(boxes)) if labels[g] >= 0 and not iscrowd[g]]
    crowd = [g for g in range(len(boxes)) if labels[g] >= 0 and iscrowd[g]]

    best_iou = torch.full((num_anchors,), -math.inf)
    best_gt = torch.full((num_anchors,), -1)
    for g in normal:
        better = ious[g] > best_iou  # strict: the first gt wins ties
        best_iou = torch.where(better, ious[g], best_iou)
        best_gt = torch.where(better, torch.tensor(g), best_gt)
    matched = torch.where(best_iou >= threshold, best_gt, torch.tensor(-1))

    for g in normal:  # in order: a later gt takes an anchor an earlier one claimed
        best = ious[g].max()
        if best > 0:
            tied = torch.nonzero(ious[g] >= best - TIE_TOLERANCE)[:, 0]
            centre = (boxes[g][:2] + boxes[g][2:]) / 2
            matched[int(tied[(anchors[tied, :2] - centre).square().sum(1).argmin()])] = g

    for g in crowd:
        matched[(matched == -1) & (ious[g] >= threshold)] = -2
    return matched


def ref_match(anchors, boxes, labels, iscrowd, threshold):
    return torch.stack(
        [ref_match_image(anchors, boxes[i], labels[i], iscrowd[i], threshold) for i in range(len(boxes))]
    )


def ref_encode(box, anchor):
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = box[0] + w / 2, box[1] + h / 2
    acx, acy, aw, ah = anchor
    wx, wy, ww, wh = WEIGHTS
    return torch.stack([wx * (cx - acx) / aw, wy * (cy - acy) / ah, ww * torch.log(w / aw), wh * torch.log(h / ah)])


def ref_decode(delta, anchor):
    acx, acy, aw, ah = anchor
    wx, wy, ww, wh = WEIGHTS
    cx, cy = delta[0] / wx * aw + acx, delta[1] / wy * ah + acy
    w, h = torch.exp(delta[2] / ww) * aw, torch.exp(delta[3] / wh) * ah
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def ref_giou_loss(a, b, eps=1e-7):  # torchvision's definition, eps included
    inter = (min(a[2], b[2]) - max(a[0], b[0])).clamp(min=0) * (min(a[3], b[3]) - max(a[1], b[1])).clamp(min=0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return 1 - (inter / (union + eps) - (hull - union) / (hull + eps))


def ref_focal(logits, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


def ref_loss(
    anchors, box_regression, class_logits, boxes, labels, iscrowd, classification, box_loss, ratio=3, threshold=0.5
):
    total_pos, box_sum, cls_sum = 0, 0.0, 0.0
    for i in range(len(boxes)):
        matched = ref_match_image(anchors, boxes[i], labels[i], iscrowd[i], threshold)
        gts = boxes[i].double()
        deltas = box_regression[i].double()
        logits = class_logits[i].double()
        positives = [a for a in range(len(anchors)) if matched[a] >= 0]
        total_pos += len(positives)

        for a in positives:
            gt = gts[matched[a]]
            if box_loss == "smooth_l1":
                diff = (deltas[a] - ref_encode(gt, anchors[a].double())).abs()
                box_sum += torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum()
            else:
                box_sum += ref_giou_loss(ref_decode(deltas[a], anchors[a].double()), gt)

        target = torch.zeros(len(anchors), dtype=torch.long)
        for a in positives:
            target[a] = labels[i][matched[a]]
        if classification == "softmax":
            ce = -torch.log_softmax(logits, -1)[torch.arange(len(anchors)), target]
            negative_ce = sorted((ce[a] for a in range(len(anchors)) if matched[a] == -1), reverse=True)
            cls_sum += sum(ce[a] for a in positives) + sum(negative_ce[: ratio * len(positives)])
        else:
            for a in range(len(anchors)):
                if matched[a] != -2:
                    onehot = F.one_hot(target[a], NUM_CLASSES)[1:].double()
                    cls_sum += ref_focal(logits[a, 1:], onehot).sum()
    normalizer = max(total_pos, 1)
    return box_sum / normalizer, cls_sum / normalizer, total_pos


# ---------------------------------------------------------------------------------------------
# Random data
# ---------------------------------------------------------------------------------------------


def random_anchors(gen):
    anchors = []
    for size, shapes in ((6, [(0.2, 0.2), (0.28, 0.14), (0.14, 0.28)]), (3, [(0.45, 0.45), (0.6, 0.3), (0.3, 0.6)])):
        for i in range(size):
            for j in range(size):
                anchors += [((j + 0.5) / size, (i + 0.5) / size, w, h) for w, h in shapes]
    grid = torch.tensor(anchors)
    loose = torch.cat([torch.rand(20, 2, generator=gen), 0.05 + 0.65 * torch.rand(20, 2, generator=gen)], 1)
    return torch.cat([grid, loose])


def random_targets(gen, num_images=4, max_boxes=7):
    boxes, labels, iscrowd = [], [], []
    for i in range(num_images):
        count = 0 if i == 0 else int(torch.randint(1, max_boxes + 1, (), generator=gen))
        xy = 0.8 * torch.rand(count, 2, generator=gen)
        wh = 0.03 + 0.6 * torch.rand(count, 2, generator=gen)
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=1.0)], 1))
        labels.append(torch.randint(1, NUM_CLASSES, (count,), generator=gen))
        iscrowd.append(torch.rand(count, generator=gen) < 0.25)
    return boxes, labels, iscrowd


def random_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = random_anchors(gen)
    boxes, labels, iscrowd = pad_targets(*random_targets(gen))
    box_regression = 0.5 * torch.randn(len(labels), len(anchors), 4, generator=gen)
    class_logits = 2.0 * torch.randn(len(labels), len(anchors), NUM_CLASSES, generator=gen)
    return anchors, box_regression, class_logits, boxes, labels, iscrowd


# ---------------------------------------------------------------------------------------------
# pad_targets
# ---------------------------------------------------------------------------------------------


def test_pad_targets_pads_with_no_box_rows():
    boxes, labels, iscrowd = pad_targets(
        [torch.zeros(0, 4), torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.4, 0.9]]), torch.zeros(0)],
        [torch.zeros(0, dtype=torch.long), torch.tensor([3, 1]), torch.zeros(0, dtype=torch.long)],
        [torch.zeros(0, dtype=torch.bool), torch.tensor([False, True]), torch.zeros(0, dtype=torch.bool)],
    )
    assert boxes.shape == (3, 2, 4) and boxes.dtype == torch.float32
    assert labels.dtype == torch.int64 and iscrowd.dtype == torch.bool
    assert labels.tolist() == [[-1, -1], [3, 1], [-1, -1]]
    assert iscrowd.tolist() == [[False, False], [False, True], [False, False]]
    assert boxes[1, 1].tolist() == pytest.approx([0.2, 0.3, 0.4, 0.9])
    assert boxes[0].abs().sum() == 0 and boxes[2].abs().sum() == 0


def test_pad_targets_all_empty_keeps_one_padding_row():
    boxes, labels, iscrowd = pad_targets([torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert boxes.shape == (2, 1, 4)
    assert labels.tolist() == [[-1], [-1]]
    assert not iscrowd.any()


# ---------------------------------------------------------------------------------------------
# match_anchors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.35])
@pytest.mark.parametrize("seed", SEEDS)
def test_match_anchors_equals_reference(seed, threshold):
    anchors, _, _, boxes, labels, iscrowd = random_batch(seed)
    matched = match_anchors(anchors, boxes, labels, iscrowd, threshold)
    assert matched.dtype == torch.int64
    assert torch.equal(matched, ref_match(anchors, boxes, labels, iscrowd, threshold))
    assert (matched[0] == -1).all()  # the image without boxes is all background


def test_random_batches_cover_edge_cases():
    forced_below_threshold = ignored = crowd_free_image = shared_best_anchor = 0
    for seed in SEEDS:
        anchors, _, _, boxes, labels, iscrowd = random_batch(seed)
        anchors_xyxy = ref_to_xyxy(anchors)
        matched = ref_match(anchors, boxes, labels, iscrowd, 0.5)
        for i in range(len(boxes)):
            ious = torch.stack([ref_iou_one(b, anchors_xyxy) for b in boxes[i]])
            valid = (labels[i] >= 0) & ~iscrowd[i]
            forced_below_threshold += int((ious.amax(1)[valid] < 0.5).sum())
            best = ious.argmax(1)[valid]
            shared_best_anchor += len(best) - len(best.unique())
            crowd_free_image += int(not iscrowd[i].any())
        ignored += int((matched == -2).sum())
    assert forced_below_threshold > 0 and ignored > 0 and crowd_free_image > 0 and shared_best_anchor > 0


def test_forced_match_tie_at_equal_distance_goes_to_the_lowest_index():
    # Two anchors tie exactly at IoU 1/3 with the gt, their centres equally far from its centre.
    anchors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0]]))
    boxes = torch.tensor([[[0.25, 0.0, 0.75, 0.5]]])
    matched = match_anchors(anchors, boxes, torch.tensor([[2]]), None, 0.5)
    assert matched.tolist() == [[0, -1, -1]]


def test_geometric_ties_go_to_the_nearest_anchor_whatever_the_rounding():
    """A small box inside several first-map anchors (all of area 0.2^2) ties with each of them exactly;
    float32 IoUs scatter by rounding, but the claim must go to the containing anchor whose centre is
    nearest the box's (the lowest index among anchors sharing that centre)."""
    anchors = generate_anchors("ssd", 160)
    first_map = anchors[: 10 * 10 * 6].double()
    first_map_xyxy = ref_to_xyxy(first_map)
    smallest = (first_map[:, 2] * first_map[:, 3] - 0.2**2).abs() < 1e-6  # all but the interpolated scale
    generator = torch.Generator().manual_seed(0)
    checked = rounding_would_differ = lowest_index_would_differ = 0
    for _ in range(200):
        centre = torch.rand(2, generator=generator, dtype=torch.float64)
        half = 0.01 + 0.02 * torch.rand(2, generator=generator, dtype=torch.float64)
        box = torch.cat([centre - half, centre + half])
        margin = torch.cat([box[:2] - first_map_xyxy[:, :2], first_map_xyxy[:, 2:] - box[2:]], 1).amin(1)
        margin[~smallest] = -1
        if not (margin > 1e-4).any() or ((margin > -1e-4) & (margin <= 1e-4)).any():
            continue  # contained nowhere, or too close to an anchor edge to say
        contained = torch.nonzero(margin > 1e-4)[:, 0]
        distance = (first_map[contained, :2] - centre).square().sum(1)
        farther = distance[distance > distance.min()]  # anchors sharing a centre have equal distances
        if len(farther) and farther.min() - distance.min() < 1e-6:
            continue  # two different centres equally near: rounding may decide
        expected = int(contained[distance.argmin()])
        gt = box.float()[None, None]
        matched = match_anchors(anchors, gt, torch.tensor([[1]]))
        assert matched[0, expected] == 0 and (matched[0] == 0).sum() == 1
        checked += 1
        rounding_would_differ += int(pairwise_iou(gt[0], ref_to_xyxy(anchors))[0].argmax() != expected)
        lowest_index_would_differ += int(contained[0] != expected)
    assert checked > 50 and rounding_would_differ > 0 and lowest_index_would_differ > 0


def test_threshold_is_inclusive_and_padding_never_matches():
    anchors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0]]))
    # Both anchors have IoU exactly 0.5; the padding row coincides with anchor 2 but must not match.
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0]]])
    matched = match_anchors(anchors, boxes, torch.tensor([[1, -1]]), None, 0.5)
    assert matched.tolist() == [[0, 0, -1]]


def test_forced_match_overrides_threshold_match_and_crowd_never_forces():
    anchors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.44, 0.44], [0.6, 0.6, 1.0, 1.0]]))
    boxes = torch.tensor(
        [
            [
                [0.0, 0.0, 0.44, 0.44],  # IoU 0.83 with anchor 0 (its best gt) but 1.0 with anchor 1
                [0.0, 0.0, 0.4, 0.3],  # IoU 0.75 with anchor 0, its best anchor: the forced match wins
                [0.0, 0.0, 0.2, 0.2],  # crowd, best anchor 0 at IoU 0.25: forces nothing, ignores nothing
            ]
        ]
    )
    labels = torch.tensor([[1, 2, 3]])
    matched = match_anchors(anchors, boxes, labels, torch.tensor([[False, False, True]]), 0.5)
    assert matched.tolist() == [[1, 0, -1]]


def test_gt_overlapping_no_anchor_is_not_forced():
    anchors = xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]))
    boxes = torch.tensor([[[0.6, 0.0, 0.9, 0.3], [0.7, 0.1, 0.7, 0.4]]])  # disjoint; zero-area
    labels = torch.tensor([[1, 2]])
    assert match_anchors(anchors, boxes, labels).tolist() == [[-1, -1]]
    out = SSDLoss(anchors)(torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), boxes, labels)
    assert int(out["num_positives"]) == 0 and out["loss"] == 0


# ---------------------------------------------------------------------------------------------
# SSDLoss against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classification,box_loss", CONFIGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_loss_equals_reference(seed, classification, box_loss):
    anchors, box_regression, class_logits, boxes, labels, iscrowd = random_batch(seed)
    loss_fn = SSDLoss(anchors, WEIGHTS, classification=classification, box_loss=box_loss)
    out = loss_fn(box_regression, class_logits, boxes, labels, iscrowd)
    ref_box, ref_cls, ref_pos = ref_loss(
        anchors, box_regression, class_logits, boxes, labels, iscrowd, classification, box_loss
    )
    assert int(out["num_positives"]) == ref_pos > 0
    torch.testing.assert_close(out["loss_box"].double(), torch.as_tensor(ref_box), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_cls"].double(), torch.as_tensor(ref_cls), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss"].double(), torch.as_tensor(ref_box + ref_cls), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [1, 7])
def test_neg_pos_ratio_equals_reference(ratio):
    anchors, box_regression, class_logits, boxes, labels, iscrowd = random_batch(100)
    out = SSDLoss(anchors, neg_pos_ratio=ratio)(box_regression, class_logits, boxes, labels, iscrowd)
    _, ref_cls, _ = ref_loss(
        anchors, box_regression, class_logits, boxes, labels, iscrowd, "softmax", "smooth_l1", ratio=ratio
    )
    torch.testing.assert_close(out["loss_cls"].double(), torch.as_tensor(ref_cls), rtol=1e-5, atol=1e-5)


def test_hard_negatives_never_exceed_available_negatives():
    # 2 positives want 6 negatives but only 2 exist: every anchor counts exactly once.
    anchors = xyxy_to_cxcywh(
        torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]])
    )
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    labels = torch.tensor([[1, 2]])
    logits = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0))
    out = SSDLoss(anchors)(torch.zeros(1, 4, 4), logits, boxes, labels)
    expected = F.cross_entropy(logits[0], torch.tensor([1, 0, 0, 2]), reduction="sum") / 2
    torch.testing.assert_close(out["loss_cls"], expected)
    torch.testing.assert_close(out["loss_box"], torch.tensor(0.0))


def test_image_without_positives_contributes_no_negatives():
    anchors, box_regression, class_logits, boxes, labels, iscrowd = random_batch(1)
    loss_fn = SSDLoss(anchors)
    full = loss_fn(box_regression, class_logits, boxes, labels, iscrowd)
    without_empty = loss_fn(box_regression[1:], class_logits[1:], boxes[1:], labels[1:], iscrowd[1:])
    torch.testing.assert_close(full["loss"], without_empty["loss"])


# ---------------------------------------------------------------------------------------------
# Crowd boxes, empty batches, gradients, dtypes, devices
# ---------------------------------------------------------------------------------------------


def crowd_case():
    anchors = xyxy_to_cxcywh(
        torch.tensor(
            [
                [0.0, 0.0, 0.5, 0.5],  # matches the gt
                [0.5, 0.5, 1.0, 1.0],  # covered by the crowd box: ignored
                [0.5, 0.0, 1.0, 0.5],
                [0.0, 0.5, 0.5, 1.0],
                [0.25, 0.25, 0.75, 0.75],
            ]
        )
    )
    logits = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 9.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [2.0, 0.0, 0.0]]])
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.55, 0.55, 1.0, 1.0]]])
    return anchors, logits, boxes, torch.tensor([[1, 2]]), torch.tensor([[False, True]])


def test_crowd_ignored_anchors_are_never_hard_negatives():
    anchors, logits, boxes, labels, iscrowd = crowd_case()
    loss_fn = SSDLoss(anchors, neg_pos_ratio=1)
    assert match_anchors(anchors, boxes, labels, iscrowd).tolist() == [[0, -2, -1, -1, -1]]

    out = loss_fn(torch.zeros(1, 5, 4), logits, boxes, labels, iscrowd)
    ce = F.cross_entropy(logits[0], torch.tensor([1, 0, 0, 0, 0]), reduction="none")
    torch.testing.assert_close(out["loss_cls"], ce[0] + ce[2:].max())

    # Without the crowd box, anchor 1 (the highest background loss) becomes the hard negative.
    no_crowd = loss_fn(torch.zeros(1, 5, 4), logits, boxes[:, :1], labels[:, :1])
    torch.testing.assert_close(no_crowd["loss_cls"], ce[0] + ce[1])
    assert no_crowd["loss_cls"] > out["loss_cls"] + 1.0

    # Asking for more negatives than exist still leaves the ignored anchor out.
    greedy = SSDLoss(anchors, neg_pos_ratio=10)(torch.zeros(1, 5, 4), logits, boxes, labels, iscrowd)
    torch.testing.assert_close(greedy["loss_cls"], ce[0] + ce[2:].sum())


def test_crowd_ignored_anchors_are_excluded_from_focal_loss():
    anchors, logits, boxes, labels, iscrowd = crowd_case()
    out = SSDLoss(anchors, classification="focal")(torch.zeros(1, 5, 4), logits, boxes, labels, iscrowd)
    targets = torch.zeros(5, 2)
    targets[0, 0] = 1.0
    per_anchor = ref_focal(logits[0, :, 1:].double(), targets.double()).sum(1)
    torch.testing.assert_close(out["loss_cls"].double(), per_anchor[[0, 2, 3, 4]].sum(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("classification,box_loss", CONFIGS)
def test_all_empty_batch_is_finite_and_differentiable(classification, box_loss):
    gen = torch.Generator().manual_seed(0)
    anchors = random_anchors(gen)
    boxes, labels, iscrowd = pad_targets([torch.zeros(0, 4)] * 3, [torch.zeros(0, dtype=torch.long)] * 3)
    box_regression = torch.randn(3, len(anchors), 4, generator=gen, requires_grad=True)
    class_logits = torch.randn(3, len(anchors), NUM_CLASSES, generator=gen, requires_grad=True)
    out = SSDLoss(anchors, classification=classification, box_loss=box_loss)(
        box_regression, class_logits, boxes, labels, iscrowd
    )
    assert int(out["num_positives"]) == 0
    assert torch.isfinite(out["loss"])
    assert out["loss_box"] == 0
    out["loss"].backward()
    assert torch.isfinite(box_regression.grad).all() and torch.isfinite(class_logits.grad).all()
    assert (box_regression.grad == 0).all()
    if classification == "softmax":
        assert out["loss_cls"] == 0  # no positives, hence no mined negatives
    else:
        torch.testing.assert_close(
            out["loss_cls"].double(),
            ref_focal(class_logits.detach()[..., 1:].double(), torch.zeros(1)).sum(),
            rtol=1e-5,
            atol=1e-5,
        )
        assert class_logits.grad[..., 1:].abs().sum() > 0


def test_zero_width_targets_are_accepted():
    anchors = random_anchors(torch.Generator().manual_seed(0))
    boxes, labels = torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)
    iscrowd = torch.zeros(2, 0, dtype=torch.bool)
    assert (match_anchors(anchors, boxes, labels, iscrowd) == -1).all()
    out = SSDLoss(anchors)(torch.zeros(2, len(anchors), 4), torch.zeros(2, len(anchors), 3), boxes, labels, iscrowd)
    assert int(out["num_positives"]) == 0 and out["loss"] == 0


def test_gradients_only_reach_counted_anchors():
    anchors, box_regression, class_logits, boxes, labels, iscrowd = random_batch(2)
    box_regression.requires_grad_(True)
    class_logits.requires_grad_(True)
    SSDLoss(anchors)(box_regression, class_logits, boxes, labels, iscrowd)["loss"].backward()
    matched = match_anchors(anchors, boxes, labels, iscrowd)
    box_grad = box_regression.grad.abs().sum(-1)
    cls_grad = class_logits.grad.abs().sum(-1)
    assert (box_grad[matched >= 0] > 0).all() and (box_grad[matched < 0] == 0).all()
    assert (cls_grad[matched == -2] == 0).all() and (cls_grad[matched >= 0] > 0).all()
    counted_negatives = int(((cls_grad > 0) & (matched == -1)).sum(1)[1:].min())
    assert counted_negatives > 0


@pytest.mark.parametrize("classification,box_loss", CONFIGS)
def test_optimising_raw_outputs_decreases_loss(classification, box_loss):
    anchors, box_regression, class_logits, boxes, labels, iscrowd = random_batch(3)
    params = [box_regression.requires_grad_(True), class_logits.requires_grad_(True)]
    loss_fn = SSDLoss(anchors, classification=classification, box_loss=box_loss)
    optimizer = torch.optim.Adam(params, lr=0.2)
    history = []
    for _ in range(20):
        out = loss_fn(box_regression, class_logits, boxes, labels, iscrowd)
        history.append((out["loss_box"].item(), out["loss_cls"].item()))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    (box_start, cls_start), (box_end, cls_end) = history[0], history[-1]
    assert box_end < 0.5 * box_start and cls_end < 0.5 * cls_start
    assert all(sum(after) < sum(before) for before, after in zip(history, history[1:], strict=False))


def test_bf16_autocast_computes_in_float32():
    anchors, box_regression, class_logits, boxes, labels, iscrowd = random_batch(4)
    box_regression, class_logits = box_regression.bfloat16(), class_logits.bfloat16()
    loss_fn = SSDLoss(anchors, classification="focal", box_loss="giou")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(box_regression, class_logits, boxes, labels, iscrowd)
    expected = loss_fn(box_regression.float(), class_logits.float(), boxes, labels, iscrowd)
    for key in ("loss", "loss_box", "loss_cls"):
        assert out[key].dtype == torch.float32
        torch.testing.assert_close(out[key], expected[key])


def test_anchors_are_a_non_persistent_buffer():
    anchors = random_anchors(torch.Generator().manual_seed(0))
    loss_fn = SSDLoss(anchors)
    assert "anchors" not in loss_fn.state_dict()
    assert torch.equal(dict(loss_fn.named_buffers())["anchors"], anchors)


def test_rejects_unknown_modes():
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    with pytest.raises(ValueError):
        SSDLoss(anchors, classification="sigmoid")
    with pytest.raises(ValueError):
        SSDLoss(anchors, box_loss="l2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("classification,box_loss", CONFIGS)
def test_cuda_matches_cpu(classification, box_loss):
    anchors, box_regression, class_logits, boxes, labels, iscrowd = random_batch(5)
    loss_fn = SSDLoss(anchors, classification=classification, box_loss=box_loss)
    expected = loss_fn(box_regression, class_logits, boxes, labels, iscrowd)
    loss_fn.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = loss_fn(box_regression.cuda(), class_logits.cuda(), boxes.cuda(), labels.cuda(), iscrowd.cuda())
    for key in ("loss", "loss_box", "loss_cls", "num_positives"):
        torch.testing.assert_close(out[key].cpu(), expected[key], rtol=1e-5, atol=1e-5)


def test_equals_torchvision_ssd_loss_on_its_own_head_outputs():
    """Same anchors, matching, coding, hard-negative mining and normalisation as torchvision's SSD.

    (They can differ only where a box's best anchor is a tie to float rounding, e.g. two anchors
    at 0.07198205 IoU: torchvision computes IoU in pixels, ours in normalised units. These boxes
    have no such tie.)
    """
    torch.manual_seed(0)
    size, num_classes = 160, 7
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes
    ).train()
    model.transform.fixed_size, model.transform.min_size, model.transform.max_size = (size, size), (size,), size
    generator = torch.Generator().manual_seed(1)
    boxes, labels = [], []
    for count in (1, 2, 3, 4):
        centre = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        half = torch.rand(count, 2, generator=generator) * 0.2 + 0.025
        boxes.append(torch.cat([centre - half, centre + half], 1).clamp(0, 1))
        labels.append(torch.randint(1, num_classes, (count,), generator=generator))
    head_outputs = {}
    compute_loss = model.compute_loss
    model.compute_loss = lambda targets, outputs, *rest: (
        head_outputs.update(outputs) or compute_loss(targets, outputs, *rest)
    )
    theirs = model(
        list(torch.rand(4, 3, size, size).unbind(0)),
        [{"boxes": b * size, "labels": lab} for b, lab in zip(boxes, labels, strict=True)],
    )

    ours = SSDLoss(generate_anchors("ssd", size, 0.2, 0.95), WEIGHTS)(
        head_outputs["bbox_regression"], head_outputs["cls_logits"], *pad_targets(boxes, labels)
    )
    assert ours["loss_box"].item() == pytest.approx(theirs["bbox_regression"].item(), rel=1e-5)
    assert ours["loss_cls"].item() == pytest.approx(theirs["classification"].item(), rel=1e-5)
