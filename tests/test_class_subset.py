"""Training on a subset of a dataset's categories (``CocoDetection(..., classes=[...])``)."""

import argparse
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from ssdlite.core.postprocess import Detections
from train.data import ClassListError, CocoDetection, DataError, parse_class_list
from train.evaluation import CocoEvaluator

CATEGORIES = [
    {"id": 90, "name": "toothbrush"},
    {"id": 3, "name": "car"},
    {"id": 7, "name": "train"},
    {"id": 1, "name": "person"},
]


def write_small_dataset(root):
    """Three 60x40 images: mixed classes; only a toothbrush; a car, a person and a box of an undeclared id."""
    (root / "images").mkdir()
    images = []
    for image_id in (1, 2, 3):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 60, "height": 40})
    anns = [
        (1, 1, [1, 1, 10, 10]),
        (1, 3, [20, 5, 10, 10]),
        (1, 7, [5, 20, 10, 10]),
        (1, 90, [40, 20, 10, 10]),
        (2, 90, [5, 5, 20, 20]),
        (3, 3, [2, 2, 20, 20]),
        (3, 1, [30, 10, 10, 20]),
        (3, 5, [1, 1, 5, 5]),  # category 5 is not declared at all
    ]
    annotations = [
        {"id": i, "image_id": image_id, "category_id": c, "bbox": bbox, "iscrowd": 0}
        for i, (image_id, c, bbox) in enumerate(anns, start=1)
    ]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path, root / "images"


def test_parse_class_list():
    assert parse_class_list("person, car") == ["person", "car"]
    assert parse_class_list(" traffic light ,person,traffic light") == ["traffic light", "person"]
    for bad in ("", " ", " , ", "person,,car", "person,"):
        with pytest.raises(ClassListError, match="empty class"):
            parse_class_list(bad)
    assert issubclass(ClassListError, ValueError)

    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=parse_class_list)
    assert parser.parse_args(["--classes", "person,car"]).classes == ["person", "car"]


def test_subset_keeps_chosen_categories_in_id_order_and_images_as_negatives(tmp_path):
    ann_file, image_dir = write_small_dataset(tmp_path)
    full = CocoDetection(ann_file, image_dir)
    subset = CocoDetection(ann_file, image_dir, classes=["toothbrush", "person", "toothbrush"])

    assert full.categories.category_ids == (1, 3, 7, 90)
    assert subset.categories.category_ids == (1, 90) and subset.categories.names == ("person", "toothbrush")
    assert subset.categories.label_to_category_id == {1: 1, 2: 90}
    assert subset.categories.num_classes == 3
    assert len(subset) == len(full) == 3  # images without chosen boxes stay, as negatives
    assert [r.labels.tolist() for r in subset.records] == [[1, 2], [2], [1]]
    np.testing.assert_allclose(subset.records[0].boxes, [[1, 1, 11, 11], [40, 20, 50, 30]])
    np.testing.assert_allclose(subset.records[2].boxes, [[30, 10, 40, 30]])

    stats = subset.stats
    assert (stats.images, stats.boxes, stats.other_classes, stats.unknown_category) == (3, 4, 3, 1)
    assert full.stats.other_classes == 0 and full.stats.unknown_category == 1
    summary = stats.summary("train")
    assert "3 boxes of other classes dropped" in summary
    assert "other classes" not in summary.split("warning:")[-1]  # information, not a warning

    car_only = CocoDetection(ann_file, image_dir, classes=["car"])
    assert car_only.stats.empty_images == 1 and car_only.stats.summary("x").count("images without boxes") == 1
    assert [r.labels.tolist() for r in car_only.records] == [[1], [], [1]]

    sample = subset[0]
    assert set(sample["labels"].tolist()) == {1, 2}


def test_unknown_or_empty_class_names_are_errors_naming_the_file_and_categories(tmp_path):
    ann_file, image_dir = write_small_dataset(tmp_path)
    with pytest.raises(DataError) as error:
        CocoDetection(ann_file, image_dir, classes=["person", "persn", "bus"])
    message = str(error.value)
    assert message.startswith(f"{ann_file}: unknown categories 'persn', 'bus' ")
    assert "did you mean 'persn' -> 'person'?" in message
    assert message.endswith("the dataset's categories: person, car, train, toothbrush")  # in id order
    with pytest.raises(DataError, match="empty class list"):
        CocoDetection(ann_file, image_dir, classes=[])
    # A comma-separated string works like the list.
    assert CocoDetection(ann_file, image_dir, classes="car, person").categories.names == ("person", "car")


def test_coco128_person_and_car(coco128):
    ann_file, image_dir = coco128 / "annotations" / "instances_train2017.json", coco128 / "train2017"
    full = CocoDetection(ann_file, image_dir)
    subset = CocoDetection(ann_file, image_dir, classes=["person", "car"])
    annotations = json.loads(ann_file.read_text())["annotations"]
    counts = Counter(a["category_id"] for a in annotations)

    assert len(subset) == len(full) == 128
    assert subset.categories.category_ids == (1, 3) and subset.categories.names == ("person", "car")
    assert subset.stats.other_classes == len(annotations) - counts[1] - counts[3]
    labels = np.concatenate([r.labels for r in subset.records])
    assert set(labels.tolist()) == {1, 2}
    assert (labels == 1).sum() == (np.concatenate([r.labels for r in full.records]) == 1).sum()
    for a, b in zip(full.records, subset.records, strict=True):  # the same boxes, relabelled
        chosen = np.isin(a.labels, [full.categories.to_label(1), full.categories.to_label(3)])
        np.testing.assert_array_equal(a.boxes[chosen], b.boxes)
        np.testing.assert_array_equal(a.iscrowd[chosen], b.iscrowd)
        expected = np.where(a.labels[chosen] == full.categories.to_label(1), 1, 2)
        np.testing.assert_array_equal(b.labels, expected)
    assert subset.stats.empty_images > full.stats.empty_images


def test_evaluator_with_the_subset_map_scores_only_the_chosen_categories(coco128):
    ann_file, image_dir = coco128 / "annotations" / "instances_train2017.json", coco128 / "train2017"
    subset = CocoDetection(ann_file, image_dir, classes=["person", "car"])
    evaluator = CocoEvaluator(subset.coco, subset.categories.label_to_category_id)
    for record in subset.records:
        keep = (record.labels == 1) & ~record.iscrowd  # ground-truth persons as detections
        scale = torch.tensor([record.width, record.height] * 2, dtype=torch.float32)
        boxes = torch.from_numpy(record.boxes[keep]) / scale
        labels = torch.ones(len(boxes), dtype=torch.int64)
        # A label outside the map (a class the model has but the subset does not) is not scored.
        boxes, labels = torch.cat([boxes, torch.tensor([[0.0, 0.0, 0.5, 0.5]])]), torch.cat([labels, torch.tensor([3])])
        evaluator.update(
            torch.tensor([record.image_id]),
            torch.tensor([[record.height, record.width]]),
            [Detections(boxes, torch.linspace(0.9, 0.5, len(boxes)), labels)],
        )
    assert {r["category_id"] for r in evaluator.results} == {1}
    result = evaluator.summarize()
    rows = {row["name"]: row for row in result.per_class}
    assert [row["category_id"] for row in result.per_class] == [1, 3]
    assert rows["person"]["AP"] == pytest.approx(1.0)
    assert rows["car"]["AP"] == pytest.approx(0.0)
    assert result.stats["AP"] == pytest.approx(0.5)  # the mean over the two chosen categories only
