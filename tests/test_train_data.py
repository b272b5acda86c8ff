"""Training data: augmentation geometry, COCO id mapping, dataset edge cases, --init, evaluation."""

import json

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from ssdlite.core.postprocess import Detections
from train import coco as train_coco
from train.data import CategoryMap, CocoDetection, collate
from train.evaluation import STAT_NAMES, CocoEvaluator
from train.transforms import SSDRandomCrop, ZoomOut, bbox_params, build_transform


def write_dataset(root, images, annotations, categories):
    """images: {file_name: RGB array | raw bytes | None (no file)}; writes ``root/ann.json``."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for image_id, (name, content) in enumerate(images.items(), start=1):
        height, width = content.shape[:2] if isinstance(content, np.ndarray) else (40, 60)
        entries.append({"id": image_id, "file_name": name, "width": width, "height": height})
        if isinstance(content, np.ndarray):
            Image.fromarray(content).save(image_dir / name)
        elif isinstance(content, bytes):
            (image_dir / name).write_bytes(content)
    for i, ann in enumerate(annotations, start=1):
        ann.setdefault("id", i)
        ann.setdefault("iscrowd", 0)
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return ann_file, image_dir


# ---------------------------------------------------------------------------------------------
# Augmentation geometry
# ---------------------------------------------------------------------------------------------


def test_boxes_follow_a_hand_computed_zoom_out_crop_flip_resize(monkeypatch):
    monkeypatch.setattr(
        ZoomOut, "get_params_dependent_on_data", lambda self, params, data: {"canvas": (100, 200), "offset": (40, 20)}
    )
    monkeypatch.setattr(
        SSDRandomCrop, "get_params_dependent_on_data", lambda self, params, data: {"crop_coords": (30, 10, 130, 90)}
    )
    pipeline = A.Compose(
        [ZoomOut(p=1), SSDRandomCrop(), A.HorizontalFlip(p=1), A.Resize(64, 64)], bbox_params=bbox_params(train=True)
    )
    image = np.zeros((50, 100, 3), np.uint8)  # h=50, w=100
    image[5:45, 10:50] = 255
    boxes = [[10, 5, 50, 45], [0, 0, 20, 10], [80, 30, 100, 50], [95, 0, 100, 5]]
    out = pipeline(image=image, bboxes=boxes, labels=[1, 2, 3, 4], iscrowd=[0, 0, 1, 0])

    # By hand: zoom-out shifts by (40, 20) on a 200x100 canvas; the crop (30, 10)-(130, 90) shifts by
    # (-30, -10) and clips to 100x80; the flip maps x -> 100 - x; the resize scales by (0.64, 0.8).
    # Box 3 keeps half its width (>= min visibility); box 4 falls outside the crop and is dropped.
    expected = [[25.6, 12.0, 51.2, 44.0], [44.8, 8.0, 57.6, 16.0], [0.0, 32.0, 6.4, 48.0]]
    np.testing.assert_allclose(np.asarray(out["bboxes"]), expected, atol=1e-4)
    assert list(map(int, out["labels"])) == [1, 2, 3]
    assert list(map(int, out["iscrowd"])) == [0, 0, 1]
    # The pixels moved with the box: the white square now spans the first expected box.
    x1, y1, x2, y2 = (round(v) for v in expected[0])
    assert out["image"][y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() == 255
    assert out["image"][:, : x1 - 1].max() < 255 and out["image"][:, x2 + 1 :].max() < 255
    # Zoom-out fills with the mean colour, not black.
    zoomed = ZoomOut(p=1).apply(image, canvas=(100, 200), offset=(40, 20))
    assert tuple(zoomed[0, 0]) == ZoomOut().fill


def test_random_ssd_pipeline_keeps_boxes_on_their_pixels():
    transform = build_transform(96, "ssd", train=True)
    image = np.full((160, 200, 3), 90, np.uint8)
    mask = np.zeros((160, 200), np.uint8)
    boxes = [[20, 30, 90, 100], [120, 50, 190, 150]]
    for value, (x1, y1, x2, y2) in enumerate(boxes, start=1):
        mask[y1:y2, x1:x2] = value
    changed = 0
    for seed in range(40):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask, bboxes=boxes, labels=[1, 2], iscrowd=[0, 0])
        assert out["image"].shape == (96, 96, 3)
        for box, label in zip(out["bboxes"], out["labels"], strict=True):
            ys, xs = np.nonzero(out["mask"] == int(label))
            extent = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            np.testing.assert_allclose(box, extent, atol=2.5, err_msg=f"seed {seed}")
            resized_only = np.array(boxes[int(label) - 1]) * np.array([96 / 200, 96 / 160] * 2)
            changed += not np.allclose(box, resized_only, atol=0.5)
    assert changed > 10  # the geometry really varied


# ---------------------------------------------------------------------------------------------
# COCO ids, dataset edge cases
# ---------------------------------------------------------------------------------------------

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]


def test_category_ids_map_to_contiguous_labels_and_back(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    anns = [{"image_id": 1, "category_id": c, "bbox": [5, 5, 10, 10]} for c in (3, 7, 90)]
    ann_file, image_dir = write_dataset(tmp_path, {"a.png": image}, anns, CATEGORIES)
    dataset = CocoDetection(ann_file, image_dir)
    categories = dataset.categories
    assert categories.category_ids == (3, 7, 90) and categories.names == ("car", "train", "toothbrush")
    assert [categories.to_label(c) for c in (3, 7, 90)] == [1, 2, 3]
    assert [categories.to_category_id(label) for label in (1, 2, 3)] == [3, 7, 90]
    assert categories.label_to_category_id == {1: 3, 2: 7, 3: 90}
    assert categories.num_classes == 4
    assert dataset.records[0].labels.tolist() == [1, 2, 3]

    # Results JSON carries the original ids; perfect detections score AP 1.
    evaluator = CocoEvaluator(dataset.coco, {i + 1: c for i, c in enumerate(categories.category_ids)})
    boxes = torch.tensor([[5, 5, 15, 15]] * 3, dtype=torch.float32) / torch.tensor([60, 40, 60, 40])
    evaluator.update(
        torch.tensor([1]),
        torch.tensor([[40, 60]]),
        [Detections(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 3]))],
    )
    assert sorted(r["category_id"] for r in evaluator.results) == [3, 7, 90]
    assert evaluator.results[0]["bbox"] == [5.0, 5.0, 10.0, 10.0]
    result = evaluator.summarize()
    assert result.stats["AP"] == pytest.approx(1.0)
    assert [row["name"] for row in result.per_class] == ["car", "train", "toothbrush"]
    assert set(result.stats) == set(STAT_NAMES)


def test_crowd_empty_degenerate_and_unreadable_images_are_handled_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    images = {"ok.png": image, "empty.png": image, "corrupt.jpg": b"not a jpeg at all", "missing.png": None}
    anns = [
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10]},
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 1},
        {"image_id": 1, "category_id": 7, "bbox": [50, 30, 20, 20]},  # runs off the image: clipped
        {"image_id": 1, "category_id": 7, "bbox": [10, 10, 0, 5]},  # zero width: dropped
        {"image_id": 1, "category_id": 7, "bbox": [100, 100, 5, 5]},  # outside the image: dropped
        {"image_id": 1, "category_id": 7, "bbox": [float("nan"), 1, 5, 5]},  # non-finite: dropped
        {"image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]},  # unknown category: dropped
        {"image_id": 3, "category_id": 3, "bbox": [1, 1, 5, 5]},
    ]
    ann_file, image_dir = write_dataset(tmp_path, images, anns, CATEGORIES)
    dataset = CocoDetection(ann_file, image_dir, transform=build_transform(64, "none", train=True))
    stats = dataset.stats
    assert (stats.images, stats.boxes, stats.crowd) == (4, 4, 1)
    assert (stats.empty_images, stats.clipped, stats.dropped, stats.unknown_category) == (2, 1, 3, 1)
    summary = stats.summary("train")
    assert (
        "1 boxes clipped" in summary and "3 degenerate boxes dropped" in summary and "2 images without boxes" in summary
    )
    np.testing.assert_allclose(dataset.records[0].boxes[2], [50, 30, 60, 40])

    batch = collate([dataset[i] for i in range(4)])
    assert len(batch) == 2 and batch.images.shape == (2, 3, 64, 64)
    assert len(batch.skipped) == 2
    assert any("corrupt.jpg" in s for s in batch.skipped) and any("missing.png" in s for s in batch.skipped)
    assert batch.image_ids.tolist() == [1, 2]
    labels, crowd = batch.labels[0], batch.iscrowd[0]
    assert bool(crowd[labels == 1].any())  # the crowd box travels with its flag (the loss ignores it)
    assert (batch.labels[1] == -1).all()  # the empty image has only padding


def test_image_formats_and_exif_orientation(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (255, 0, 0)
    (tmp_path / "images").mkdir()
    Image.fromarray(rgb).convert("L").save(tmp_path / "images" / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "images" / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)])).save(tmp_path / "images" / "rgba.png")
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: 40 wide, 60 high
    rotated.save(tmp_path / "images" / "exif_display.jpg", exif=exif)
    rotated.save(tmp_path / "images" / "exif_raw.jpg", exif=exif)
    entries = [
        ("gray.png", 60, 40),
        ("cmyk.jpg", 60, 40),
        ("rgba.png", 60, 40),
        ("exif_display.jpg", 40, 60),
        ("exif_raw.jpg", 60, 40),
    ]
    images = [{"id": i, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(entries, start=1)]
    anns = [{"id": i, "image_id": i, "category_id": 3, "bbox": [0, 0, 10, 20], "iscrowd": 0} for i in range(1, 6)]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    dataset = CocoDetection(tmp_path / "ann.json", tmp_path / "images")
    for record, (_, width, height) in zip(dataset.records, entries, strict=True):
        image, boxes = dataset.load_image(record)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8, record.path
        np.testing.assert_allclose(boxes, [[0, 0, 10, 20]])
    display, _ = dataset.load_image(dataset.records[3])
    assert display[0, -1, 0] > 200 and display[-1, 0, 0] < 50  # the red half is on top after rotation
    raw, _ = dataset.load_image(dataset.records[4])
    assert raw[0, 0, 0] > 200 and raw[0, -1, 0] < 50  # annotated on the stored pixels: kept unrotated


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "annotation file not found"),
        ("{not json", "not a readable JSON"),
        ('{"images": []}', "no 'categories'"),
        ('{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}]}', "images[0] lacks file_name"),
    ],
)
def test_bad_annotation_files_give_one_clear_cli_message(tmp_path, capsys, content, message):
    ann = tmp_path / "instances.json"
    if content is not None:
        ann.write_text(content)
    (tmp_path / "images").mkdir()
    code = train_coco.main(
        [
            "--eval-only",
            "--weights",
            "x.pt",
            "--val-ann",
            str(ann),
            "--val-images",
            str(tmp_path / "images"),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and str(ann) in err and message in err


def test_missing_image_dir_and_data_dir_give_clear_cli_messages(tmp_path, capsys):
    ann, _ = write_dataset(tmp_path, {"a.png": np.zeros((4, 4, 3), np.uint8)}, [], CATEGORIES)
    missing = tmp_path / "nope"
    args = [
        "--train-ann",
        str(ann),
        "--train-images",
        str(missing),
        "--val-ann",
        str(ann),
        "--val-images",
        str(missing),
    ]
    assert train_coco.main(args + ["--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {missing}: image directory not found\n"
    assert train_coco.main(["--data-dir", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: {missing}: data directory not found\n"
    (tmp_path / "coco").mkdir()
    assert train_coco.main(["--data-dir", str(tmp_path / "coco")]) == 2
    assert "instances_train2017.json: annotation file not found" in capsys.readouterr().err


def test_category_map_from_unsorted_categories():
    categories = CategoryMap((1, 5), ("a", "b"))
    assert categories.to_label(5) == 2 and categories.to_category_id(2) == 5


def test_detections_are_scaled_to_each_original_image():
    gt = {
        "images": [{"id": 1, "width": 200, "height": 100, "file_name": "x"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 100, 50], "area": 5000, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    evaluator = CocoEvaluator(coco, {1: 1})
    boxes = torch.tensor([[0.1, 0.1, 0.6, 0.6]])
    evaluator.update(
        torch.tensor([1]), torch.tensor([[100, 200]]), [Detections(boxes, torch.tensor([0.5]), torch.tensor([1]))]
    )
    assert evaluator.results[0]["bbox"] == [20.0, 10.0, 100.0, 50.0]


def test_training_sampler_shuffles_per_epoch_and_resumes_mid_epoch():
    """Seed 0 once reached DistributedSampler's ``shuffle`` argument: the data was never shuffled."""
    from train.data import build_loaders
    from train.distributed import DistInfo

    dataset = list(range(40))
    train_loader, _ = build_loaders(dataset, dataset, 8, 0, DistInfo(), torch.device("cpu"), seed=0)
    sampler = train_loader.sampler
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(first) == dataset and first != dataset
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    sampler.start_index = 16
    assert list(sampler) == first[16:] and len(sampler) == 24
