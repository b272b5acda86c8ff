"""YOLO-format datasets (Ultralytics / Roboflow layout) read as in-memory COCO annotations."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssdlite.core.postprocess import Detections
from train.data import (
    CocoDetection,
    DataError,
    DataSource,
    ResumableSampler,
    build_loaders,
    open_datasets,
    yolo,
    yolo_detection,
)
from train.data.yolo import label_path, load_yolo
from train.distributed import DistInfo
from train.evaluation import CocoEvaluator
from train.transforms import build_transform


def write_yolo_copy(coco128, root, names_as="list", val=None, negative_label="empty"):
    """A YOLO copy of six coco128 photos (symlinked) in ``root``: five with boxes and one without.

    Returns ``(data.yaml, expected)`` where ``expected`` maps file names to the original non-crowd
    ``(category name, COCO bbox)`` list (YOLO has no crowd boxes).
    """
    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    names = {c["id"]: c["name"] for c in categories}
    boxed = {a["image_id"] for a in data["annotations"]}
    images = sorted(data["images"], key=lambda i: i["id"])
    chosen = [i for i in images if i["id"] in boxed][:5] + [i for i in images if i["id"] not in boxed][:1]
    (root / "images" / "train2017").mkdir(parents=True)
    (root / "labels" / "train2017").mkdir(parents=True)
    expected = {}
    for info in chosen:
        (root / "images" / "train2017" / info["file_name"]).symlink_to(coco128 / "train2017" / info["file_name"])
        width, height = info["width"], info["height"]
        lines, objects = [], []
        for a in data["annotations"]:
            if a["image_id"] != info["id"] or a["iscrowd"]:
                continue
            x, y, w, h = a["bbox"]
            lines.append(f"{index[a['category_id']]} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                         f"{w / width:.6f} {h / height:.6f}")  # fmt: skip
            objects.append((names[a["category_id"]], a["bbox"]))
        expected[info["file_name"]] = objects
        label = root / "labels" / "train2017" / (info["file_name"][:-4] + ".txt")
        if lines or negative_label == "empty":
            label.write_text("\n".join(lines) + ("\n" if lines else ""))
    class_names = [c["name"] for c in categories]
    config = {
        "path": ".",
        "train": "images/train2017",
        "val": val or "images/train2017",
        "names": class_names if names_as == "list" else dict(enumerate(class_names)),
    }
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root / "data.yaml", expected


def loaded_objects(dataset: CocoDetection) -> dict[str, list]:
    coco = dataset.coco
    return {
        info["file_name"].split("/")[-1]: [
            (coco.cats[a["category_id"]]["name"], a["bbox"]) for a in coco.imgToAnns.get(image_id, [])
        ]
        for image_id, info in coco.imgs.items()
    }


def assert_round_trip(dataset, expected):
    got = loaded_objects(dataset)
    assert sorted(got) == sorted(expected)
    for name, objects in expected.items():
        assert [n for n, _ in got[name]] == [n for n, _ in objects], name
        np.testing.assert_allclose([b for _, b in got[name]], [b for _, b in objects], atol=0.5, err_msg=name)


@pytest.mark.parametrize("names_as", ["list", "dict"])
def test_yolo_copy_of_coco128_round_trips_to_the_coco_boxes(coco128, tmp_path, names_as):
    data_yaml, expected = write_yolo_copy(coco128, tmp_path, names_as=names_as)
    loaded = load_yolo(data_yaml, "train")
    assert loaded.notes == [] and loaded.image_root == tmp_path and loaded.source == data_yaml
    categories = loaded.dataset["categories"]
    assert len(categories) == 80 and categories[0] == {"id": 1, "name": "person", "supercategory": ""}
    assert categories[79]["id"] == 80 and categories[79]["name"] == "toothbrush"  # id = YOLO index + 1
    for info in loaded.dataset["images"]:
        with Image.open(tmp_path / info["file_name"]) as image:
            assert (info["width"], info["height"]) == image.size
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in loaded.dataset["annotations"])

    dataset = yolo_detection(data_yaml, "train")
    assert dataset.annotation_file == data_yaml and len(dataset) == 6
    assert_round_trip(dataset, expected)
    assert dataset.stats.empty_images == 1 and dataset.stats.dropped == 0
    assert dataset.stats.boxes == sum(len(v) for v in expected.values())
    sample = dataset[0]
    assert sample["image"].shape[:2] == sample["size"] and sample["boxes"].max() <= 1


def test_val_as_a_txt_list_and_missing_label_files_are_negatives(coco128, tmp_path):
    data_yaml, expected = write_yolo_copy(coco128, tmp_path, val="val.txt", negative_label="none")
    files = sorted(expected)[:3]
    (tmp_path / "val.txt").write_text("".join(f"./images/train2017/{f}\n" for f in files))
    val = yolo_detection(data_yaml, "val")
    assert len(val) == 3
    assert_round_trip(val, {f: expected[f] for f in files})
    train = yolo_detection(data_yaml, "train")  # the negative has no label file at all
    assert len(train) == 6 and train.stats.empty_images == 1 and train.stats.notes == []

    # A list of sources; a Roboflow-style yaml (no 'path', "../x/images" entries next to the yaml).
    config = yaml.safe_load(data_yaml.read_text())
    config.update(train=["val.txt", "images/train2017"])
    data_yaml.write_text(yaml.safe_dump(config))
    assert len(load_yolo(data_yaml, "train").dataset["images"]) == 6
    del config["path"]
    config.update(train="../images/train2017", val="../val.txt")
    data_yaml.write_text(yaml.safe_dump(config))
    assert len(load_yolo(data_yaml, "val").dataset["images"]) == 3


def test_label_path_replaces_the_last_images_component():
    assert str(label_path("/d/images/train/images/a.b.jpg")) == "/d/images/train/labels/a.b.txt"
    assert str(label_path("/d/flat/a.jpg")) == "/d/flat/a.txt"


def test_bad_label_lines_are_skipped_and_reported_once_by_file_and_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(tmp_path / "images" / f"{name}.jpg")
    lines = [
        "0 0.5 0.5 0.2 0.4",  # good: [40, 15, 20, 20]
        "1 0.5 0.5 0.2",  # 4 fields
        "1 0.5 zero 0.2 0.2",  # not a number
        "2 0.5 0.5 0.2 0.2",  # class out of range
        "1 nan 0.5 0.2 0.2",  # non-finite
        "1 0.5 0.5 0 0.2",  # zero width
        "1 50 25 20 10",  # pixels, not normalised
        "0 0.5 0.5 0.2 0.4",  # repeats line 1
        "",
        "1 0.1 0.1 0.3 0.1 0.3 0.3",  # a polygon: its bounding box [10, 5, 20, 10]
        "1.0 0.95 0.5 0.2 0.2",  # runs off the right edge: clipped to [85, 20, 15, 10]
    ]
    (tmp_path / "labels" / "a.txt").write_text("\n".join(lines))
    (tmp_path / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.4 extra\n")
    (tmp_path / "data.yaml").write_text("train: images\nval: images\nnames: {0: cat, 1: dog}\n")

    loaded = load_yolo(tmp_path / "data.yaml", "train")
    assert len(loaded.notes) == 1
    note = loaded.notes[0]
    label = tmp_path / "labels" / "a.txt"
    assert note.startswith(f"warning: skipped 8 bad label lines in {tmp_path / 'data.yaml'}'s train split: ")
    assert f"{label}:2: expected 'class cx cy w h', got 4 fields" in note
    assert f"{label}:3: not a number: 'zero'" in note
    assert f"{label}:4: class index 2 is not one of 0..1" in note
    assert f"{label}:5: non-finite value" in note and f"{label}:6: width or height <= 0" in note
    assert "; and 3 more" in note and ":7:" not in note  # five shown, the rest counted
    problems = yolo.parse_label_file(label, 2)[1]
    assert problems[5:] == [f"{label}:7: coordinates outside 0..1 (labels must be normalised to the image size)",
                            f"{label}:8: duplicate of line 1"]  # fmt: skip

    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in loaded.dataset["annotations"]]
    assert [(i, c) for i, c, _ in boxes] == [(1, 1), (1, 2), (1, 2)]
    np.testing.assert_allclose([b for *_, b in boxes], [[40, 15, 20, 20], [10, 5, 20, 10], [85, 20, 15, 10]])

    dataset = yolo_detection(tmp_path / "data.yaml", "train")  # the run goes on; the summary shows the note
    assert len(dataset) == 2 and dataset.stats.boxes == 3
    assert dataset.stats.summary("train").splitlines()[1] == note


def test_yaml_and_split_errors_name_the_file(tmp_path):
    data_yaml = tmp_path / "data.yaml"
    with pytest.raises(DataError, match="data.yaml: dataset yaml not found"):
        load_yolo(data_yaml, "train")
    data_yaml.write_text("train: [unclosed\n")
    with pytest.raises(DataError, match="data.yaml: not a readable YAML file"):
        load_yolo(data_yaml, "train")
    (tmp_path / "images").mkdir()
    data_yaml.write_text("train: images\nnames: [a]\n")
    with pytest.raises(DataError, match=r"data.yaml: no 'val' split \(it has: train\)"):
        load_yolo(data_yaml, "val")
    with pytest.raises(DataError, match="data.yaml: no images found for the 'train' split"):
        load_yolo(data_yaml, "train")
    data_yaml.write_text("train: nowhere\nnames: [a]\n")
    with pytest.raises(DataError, match="data.yaml: 'train' split 'nowhere' not found"):
        load_yolo(data_yaml, "train")
    data_yaml.write_text("train: images\nnc: 2\nnames: [a]\n")
    with pytest.raises(DataError, match="'nc' is 2 but 'names' has 1"):
        load_yolo(data_yaml, "train")
    data_yaml.write_text("train: images\nnames: {0: a, 2: b}\n")
    with pytest.raises(DataError, match="without gaps"):
        load_yolo(data_yaml, "train")
    data_yaml.write_text("path: elsewhere\ntrain: images\nnames: [a]\n")
    with pytest.raises(DataError, match="dataset root 'elsewhere' not found"):
        load_yolo(data_yaml, "train")

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "x.png")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    data_yaml.write_text("train: images\nnc: 3\n")
    loaded = load_yolo(data_yaml, "train")
    assert [c["name"] for c in loaded.dataset["categories"]] == ["class_0", "class_1", "class_2"]
    assert len(loaded.dataset["images"]) == 1
    assert loaded.notes[0].startswith("warning: skipped 1 unreadable images in ")
    assert "broken.jpg" in loaded.notes[0]
    assert loaded.notes[1].startswith("warning: no label files found for any of the 1 images")
    with pytest.raises(DataError, match=r"data.yaml: unknown category 'dog'"):
        yolo_detection(data_yaml, "train", classes=["dog"])


def test_sizes_follow_exif_orientation_like_the_decoder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    pixels = np.zeros((40, 60, 3), np.uint8)  # stored 60 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 40 wide, 60 high
    Image.fromarray(pixels).save(tmp_path / "images" / "r.jpg", exif=exif.tobytes())
    (tmp_path / "labels" / "r.txt").write_text("0 0.25 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\n")
    dataset = yolo_detection(tmp_path / "data.yaml", "train")
    info = dataset.coco.imgs[1]
    assert (info["width"], info["height"]) == (40, 60)
    np.testing.assert_allclose(dataset.coco.anns[1]["bbox"], [0, 15, 20, 30])
    image, boxes = dataset.load_image(dataset.records[0])
    assert image.shape[:2] == (60, 40)
    np.testing.assert_allclose(boxes, [[0, 15, 20, 45]])


def test_progress_bar_for_many_images(tmp_path, monkeypatch, capsys):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\n")
    monkeypatch.setattr(yolo, "PROGRESS_THRESHOLD", 2)
    load_yolo(tmp_path / "data.yaml", "train", progress=False)
    assert "img" not in capsys.readouterr().err
    load_yolo(tmp_path / "data.yaml", "train")
    assert "3/3" in capsys.readouterr().err


def test_evaluator_on_the_in_memory_ground_truth(coco128, tmp_path):
    data_yaml, _ = write_yolo_copy(coco128, tmp_path)
    dataset = yolo_detection(data_yaml, "val", classes=["person", "car", "dog"])
    evaluator = CocoEvaluator(dataset.coco, dataset.categories.label_to_category_id)
    for record in dataset.records:
        scale = torch.tensor([record.width, record.height] * 2, dtype=torch.float32)
        boxes, labels = torch.from_numpy(record.boxes) / scale, torch.from_numpy(record.labels)
        evaluator.update(
            torch.tensor([record.image_id]),
            torch.tensor([[record.height, record.width]]),
            [Detections(boxes, torch.ones(len(boxes)), labels)],
        )
    result = evaluator.summarize()
    assert result.stats["AP"] == pytest.approx(1.0)
    scored = {row["name"]: row for row in result.per_class if row["gt"]}
    assert set(scored) <= {"person", "car", "dog"} and "person" in scored
    assert all(row["AP"] == pytest.approx(1.0) for row in scored.values())


def test_open_datasets_and_loaders_for_a_yolo_source(coco128, tmp_path):
    data_yaml, expected = write_yolo_copy(coco128, tmp_path)
    source = DataSource("yolo", yaml=str(data_yaml))
    assert source.describe("val") == f"{data_yaml} [val]"
    train_set, val_set = open_datasets(source, DistInfo(), classes=["person"], seed=3, progress=False)
    assert train_set.seed == 3 and train_set.categories == val_set.categories
    assert train_set.categories.names == ("person",) and len(train_set) == 6
    assert open_datasets(source, DistInfo(), train=False)[0] is None

    train_set.transform = val_set.transform = build_transform(64, "none", train=False)
    train_loader, val_loader = build_loaders(train_set, val_set, 4, 0, DistInfo(), torch.device("cpu"), seed=3)
    assert isinstance(train_loader.sampler, ResumableSampler)
    assert [len(b) for b in train_loader] == [4]  # drop_last: 6 images, batches of 4
    assert [b.image_ids.tolist() for b in val_loader] == [[1, 2, 3, 4], [5, 6]]
    order = list(train_loader.sampler)
    train_loader.sampler.start_index = 4  # resuming mid-epoch
    assert list(train_loader.sampler) == order[4:] and len(train_loader.sampler) == 2
