"""Our trainer's pieces against torchvision's SSDLite: the model preset, the matching and the loss."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import _utils as tv_det_utils
from torchvision.ops import box_iou

from ssdlite import build_model
from ssdlite.core.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

from .test_backbones import calibrate_bn

NUM_CLASSES = 7

# Our module prefix -> torchvision's, in the order the state dicts line up by position.
PARTS = {
    "backbone.": "backbone.features.",
    "extras.": "backbone.extra.",
    "box_head.": "head.regression_head.",
    "class_head.": "head.classification_head.",
}


def torchvision_ssdlite(size: int = 320) -> nn.Module:
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    )
    model.transform.fixed_size, model.transform.min_size, model.transform.max_size = (size, size), (size,), size
    return model


def paired_tensors(ours: nn.Module, theirs: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(our name, our tensor, torchvision's tensor) for every state-dict entry."""
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    pairs = []
    for our_prefix, their_prefix in PARTS.items():
        our_keys = [k for k in ours_state if k.startswith(our_prefix)]
        their_keys = [k for k in theirs_state if k.startswith(their_prefix)]
        assert len(our_keys) == len(their_keys), our_prefix
        pairs += [(a, ours_state[a], theirs_state[b]) for a, b in zip(our_keys, their_keys, strict=True)]
    assert len(pairs) == len(ours_state) == len(theirs_state)
    return pairs


def test_torchvision_preset_is_torchvisions_ssdlite():
    torch.manual_seed(0)
    theirs = torchvision_ssdlite()
    calibrate_bn(theirs.backbone, torch.randn(2, 3, 320, 320))
    calibrate_bn(theirs.head, [f.detach() for f in theirs.backbone(torch.randn(2, 3, 320, 320)).values()])
    ours = build_model("ssdlite320_mobilenet_v3_large_torchvision", num_classes=NUM_CLASSES).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    ours.load_state_dict({name: value for name, _, value in paired_tensors(ours, theirs)}, strict=True)

    images = torch.rand(2, 3, 320, 320) * 255
    with torch.no_grad():
        box_regression, class_logits = ours(images)
        image_list, _ = theirs.transform(list((images / 255).unbind(0)))
        features = list(theirs.backbone(image_list.tensors).values())
        expected = theirs.head(features)
        their_anchors = theirs.anchor_generator(image_list, features)[0]
    assert expected["cls_logits"].std() > 0.1, "outputs vanished: the comparison would be vacuous"
    torch.testing.assert_close(box_regression, expected["bbox_regression"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(class_logits, expected["cls_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cxcywh_to_xyxy(ours.anchors) * 320, their_anchors, atol=1e-4, rtol=0)
    bn = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bn} == {(1e-3, 0.03)}


def test_initialisation_follows_torchvision():
    """From scratch every conv starts at N(0, 0.03), as in torchvision: each tensor's spread as theirs."""
    torch.manual_seed(0)
    theirs = torchvision_ssdlite()
    ours = build_model("ssdlite320_mobilenet_v3_large_torchvision", num_classes=NUM_CLASSES)
    checked = 0
    for name, our_value, their_value in paired_tensors(ours, theirs):
        if not our_value.dtype.is_floating_point or our_value.numel() < 200:
            continue
        assert our_value.std().item() == pytest.approx(their_value.std().item(), rel=0.2), name
        checked += 1
    assert checked > 100


def synthetic_batch(seed: int, num_images: int = 6, size: int = 160):
    """A collated batch of random boxes (some small, some large, one image without boxes)."""
    from train.data import collate

    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num_images):
        count = 0 if i == 0 else int(torch.randint(1, 9, (), generator=generator))
        centre = torch.rand(count, 2, generator=generator)
        half = torch.rand(count, 2, generator=generator) * 0.3 + 0.01
        boxes = torch.cat([centre - half, centre + half], 1).clamp(0, 1)
        samples.append(
            {
                "image": torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy(),
                "boxes": boxes.numpy(),
                "labels": torch.randint(1, NUM_CLASSES, (count,), generator=generator).numpy(),
                "iscrowd": torch.zeros(count, dtype=torch.bool).numpy(),
                "image_id": i,
                "size": (size, size),
            }
        )
    return collate(samples)


def test_benchmark_torchvision_arm_is_torchvisions_training_call():
    """bench.accuracy's torchvision/torchvision/torchvision arm computes what ``model(images, targets)`` does."""
    from bench.accuracy import Arm, Criterion

    torch.manual_seed(0)
    size = 160
    model = torchvision_ssdlite(size).train()
    batch = synthetic_batch(0, size=size)
    criterion = Criterion(Arm.parse("torchvision"), size)
    image_list, _ = model.transform(list((batch.images.float() / 255).unbind(0)))
    outputs = model.head(list(model.backbone(image_list.tensors).values()))
    ours = criterion(outputs["bbox_regression"], outputs["cls_logits"], batch)
    targets = [
        {"boxes": boxes[labels >= 0] * size, "labels": labels[labels >= 0]}
        for boxes, labels in zip(batch.boxes, batch.labels, strict=True)
    ]
    theirs = sum(model(list((batch.images.float() / 255).unbind(0)), targets).values())
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("matching", ["ours", "torchvision"])
def test_losses_and_gradients_equal_on_identical_matches(matching):
    """Our SSDLoss and torchvision's SSD.compute_loss, fed the same matches, agree with their gradients."""
    from bench.accuracy import Arm, Criterion

    size = 160
    for seed in range(4):
        batch = synthetic_batch(seed, size=size)
        generator = torch.Generator().manual_seed(seed)
        num_anchors = len(Criterion(Arm("ours", "ours", matching), size).tv_anchors)
        box_regression = torch.randn(len(batch), num_anchors, 4, generator=generator)
        class_logits = 2 * torch.randn(len(batch), num_anchors, NUM_CLASSES, generator=generator)
        gradients = []
        for loss in ("ours", "torchvision"):
            outputs = (box_regression.clone().requires_grad_(), class_logits.clone().requires_grad_())
            value = Criterion(Arm("ours", loss, matching), size)(*outputs, batch)
            value.backward()
            gradients.append((value.detach(), outputs[0].grad, outputs[1].grad))
        for ours, theirs in zip(*gradients, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def dyadic_anchors() -> torch.Tensor:
    """(x1, y1, x2, y2) anchors whose coordinates are multiples of 1/64: IoUs are then exact in float32."""
    anchors = []
    for cells, shapes in ((8, [(1 / 4, 1 / 4), (1 / 4, 1 / 8), (1 / 8, 1 / 4)]), (4, [(1 / 2, 1 / 2), (1 / 2, 1 / 4)])):
        for y in range(cells):
            for x in range(cells):
                cx, cy = (x + 0.5) / cells, (y + 0.5) / cells
                anchors += [(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for w, h in shapes]
    return torch.tensor(anchors)


def test_matching_equals_torchvision_ssd_matcher_when_iou_is_exact():
    """Same rules as torchvision's SSDMatcher: threshold, forced best anchor, the later gt winning a
    contested anchor. Boxes on a 1/64 grid make every IoU exact in both, so any difference would be a
    difference of rules, not of rounding. One rule differs on purpose: when a gt's best IoU ties
    between anchors of different centres, ours takes the nearest centre where torchvision takes the
    lowest index (measured +0.014 AP, see bench/accuracy.py). Those images are checked for that."""
    from ssdlite.core.loss import match_anchors, pad_targets

    anchors = dyadic_anchors()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    matcher = tv_det_utils.SSDMatcher(0.5)
    threshold_matcher = tv_det_utils.Matcher(0.5, 0.5)
    generator = torch.Generator().manual_seed(0)
    equal = nearest_tie = contested = 0
    for _ in range(50):
        boxes_list, labels_list = [], []
        for _ in range(8):
            count = int(torch.randint(1, 9, (), generator=generator))
            corner = torch.randint(0, 60, (count, 2), generator=generator)
            side = torch.randint(1, 33, (count, 2), generator=generator)
            boxes_list.append(torch.cat([corner, (corner + side).clamp(max=64)], 1).float() / 64)
            labels_list.append(torch.randint(1, NUM_CLASSES, (count,), generator=generator))
        ours = match_anchors(xyxy_to_cxcywh(anchors), *pad_targets(boxes_list, labels_list)[:2])
        for i, boxes in enumerate(boxes_list):
            iou = box_iou(boxes * 256, anchors * 256)
            tied = iou == iou.amax(1, keepdim=True)
            distance = torch.cdist((boxes[:, :2] + boxes[:, 2:]) / 2, centres).masked_fill(~tied, float("inf"))
            nearest, lowest = distance.argmin(1), tied.to(torch.uint8).argmax(1)
            forced = iou.argmax(1)
            contested += len(forced) - len(forced.unique())
            if torch.equal(nearest, lowest):
                assert torch.equal(ours[i], matcher(iou)), f"batch image {i}"
                equal += 1
            else:  # torchvision's SSDMatcher with the nearest tied anchor forced instead
                expected = threshold_matcher(iou)
                expected[nearest] = torch.arange(len(boxes))
                assert torch.equal(ours[i], expected), f"batch image {i}"
                nearest_tie += 1
    assert equal > 200 and nearest_tie > 100 and contested > 10


def test_benchmark_arms_and_paired_summary():
    import argparse

    from bench.accuracy import Arm, parse_seeds, summarize

    assert Arm.parse("ours") == Arm("ours", "ours", "ours")
    assert Arm.parse("torchvision") == Arm("torchvision", "torchvision", "torchvision")
    assert Arm.parse("ssdlite320_mobilenet_v3_large_torchvision/ours/torchvision").matching == "torchvision"
    for bad in ("ours/ours", "resnet/ours/ours", "ours/mine/ours", "ssdlite300_mobilenet_v2_tf"):
        with pytest.raises(argparse.ArgumentTypeError):
            Arm.parse(bad)
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]

    arms = [Arm.parse("torchvision"), Arm.parse("ours")]
    reference, ours = [0.30, 0.40, 0.20], [0.32, 0.41, 0.23]  # the seeds vary far more than the arms
    runs = [
        {"arm": arm.name, "seed": seed, "train_seconds": 1.0, "stats": {"AP": ap}}
        for arm, aps in zip(arms, (reference, ours), strict=True)
        for seed, ap in enumerate(aps)
    ]
    rows = summarize(arms, [0, 1, 2], runs)
    assert rows[0]["diff"] == 0 and rows[0]["diff_stderr"] == 0
    assert rows[1]["mean"] == pytest.approx(0.32) and rows[1]["stderr"] == pytest.approx(0.09 / 3**0.5)
    assert rows[1]["diff"] == pytest.approx(0.02) and rows[1]["diff_stderr"] == pytest.approx(0.01 / 3**0.5)
