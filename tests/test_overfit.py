"""Loss, matching, box coding and postprocess agree: a model overfits a few images and finds every box."""

import numpy as np
import torch

from ssdlite import Detector, build_model
from ssdlite.core.boxes import pairwise_iou
from ssdlite.core.loss import SSDLoss, pad_targets

SIZE = 128
CLASS_NAMES = ["square", "disc"]


def make_images(count: int, seed: int = 0):
    """Noisy images with 1-3 red squares (label 1) and blue discs (label 2) of varied size."""
    import cv2

    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(count):
        image = rng.integers(60, 140, (SIZE, SIZE, 3), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(rng.integers(1, 4)):
            for _attempt in range(20):
                side = int(rng.integers(20, 60))
                x, y = (int(v) for v in rng.integers(0, SIZE - side, 2))
                box = [x, y, x + side, y + side]
                if all(
                    pairwise_iou(torch.tensor([box], dtype=torch.float), torch.tensor([b], dtype=torch.float))[0, 0]
                    == 0
                    for b in boxes
                ):
                    break
            else:
                continue
            label = int(rng.integers(1, 3))
            if label == 1:
                cv2.rectangle(image, (x, y), (x + side - 1, y + side - 1), (220, 30, 30), -1)
            else:
                cv2.circle(image, (x + side // 2, y + side // 2), side // 2, (30, 30, 220), -1)
            boxes.append(box)
            labels.append(label)
        images.append(image)
        targets.append((torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)))
    return images, targets


def test_overfits_a_handful_of_images():
    torch.manual_seed(0)
    images, targets = make_images(4)
    model = build_model("ssdlite320_mobilenet_v2", num_classes=3, width_mult=0.5, image_size=SIZE)
    criterion = SSDLoss(model.anchors, model.config.postprocess.box_weights)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    gt_boxes, gt_labels, _ = pad_targets([b / SIZE for b, _ in targets], [lab for _, lab in targets])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250):
        losses = criterion(*model(batch), gt_boxes, gt_labels)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert losses["loss"].item() < 1.0
    # Re-estimate BatchNorm's running statistics on the final weights ("precise BN"): with the
    # weights still moving fast, their moving average lags what these four images give.
    with torch.no_grad():
        for _ in range(100):
            model(batch)

    detector = Detector.from_model(model.eval(), CLASS_NAMES)
    for _image, (boxes, labels), found in zip(
        images, targets, detector.predict_batch(images, score_threshold=0.3), strict=False
    ):
        assert found, "no detections at all"
        found_boxes = torch.tensor([d["box"] for d in found])
        found_labels = torch.tensor([d["class_id"] for d in found])
        iou = pairwise_iou(boxes, found_boxes)
        for i, label in enumerate(labels):
            same_class = found_labels == label
            assert same_class.any() and iou[i][same_class].max() >= 0.5, f"missed {boxes[i].tolist()} ({label})"
        # and no confident false positive
        assert (iou.max(dim=0).values >= 0.5).all()
