"""The output formats of corpus detection, each read back by the tool that consumes it.

No model: hand-made ``Record`` values over tiny JPEGs written here. COCO files go through
pycocotools (``COCO``, ``loadRes``, ``COCOeval``), the YOLO dataset through the trainer's reader
(``train.data.yolo``), Label Studio tasks through label-studio-sdk's ``LabelInterface`` when it is
importable, and through a schema check written from Label Studio's docs always.
"""

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssdlite.batch import formats
from ssdlite.batch.formats import (
    OUTPUT_FORMATS,
    FormatError,
    OutputContext,
    labelstudio_config,
    load_coco_images,
    parse_formats,
    write_outputs,
)
from ssdlite.batch.records import Record
from ssdlite.errors import SSDLiteError
from train.data.yolo import load_yolo, parse_label_file, read_data_yaml

CLASS_NAMES = ["person", 'car: "red"', "dög 🐕"]  # YAML-, JSON- and non-ASCII characters on purpose
A_SIZE, B_SIZE = (200, 100), (160, 120)  # width, height


def detection(box: list[float], score: float, class_id: int) -> dict:
    return {"box": box, "score": score, "class_id": class_id, "label": CLASS_NAMES[class_id - 1]}


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """The run's input images: two small JPEGs of different sizes, and one more without detections."""
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = {}
    for name, (width, height) in {"a.jpg": A_SIZE, "b.jpg": B_SIZE, "c.jpg": A_SIZE}.items():
        paths[name] = folder / name
        cv2.imwrite(str(paths[name]), np.full((height, width, 3), 127, np.uint8))
    return paths


@pytest.fixture
def records(images: dict[str, Path]) -> list[Record]:
    return [
        Record(
            0,
            str(images["a.jpg"]),
            "a",
            *A_SIZE,
            [
                detection([100.0, 0.0, 200.0, 100.0], 0.9123456, 1),  # the right half
                detection([10.123456, 20.5, 60.987654, 70.25], 0.5, 3),
            ],
        ),
        Record(1, str(images["b.jpg"]), "b", *B_SIZE, [detection([16.0, 12.0, 80.0, 96.0], 0.75, 2)]),
        Record(2, str(images["c.jpg"]), "c", *A_SIZE, []),
    ]


@pytest.fixture
def context() -> OutputContext:
    return OutputContext(class_names=CLASS_NAMES, model_version="ssdlite-test-1")


# --format


def test_parse_formats_keeps_order_and_drops_repeats():
    assert parse_formats("coco,yolo") == ("coco", "yolo")
    assert parse_formats(" coco, yolo,coco ,") == ("coco", "yolo")
    assert set(OUTPUT_FORMATS) == {"jsonl", "coco", "yolo", "labelstudio", "images"}
    assert OUTPUT_FORMATS["images"].write is None


def test_unknown_format_names_the_known_ones():
    with pytest.raises(FormatError, match=r"'xml'.*jsonl, coco, yolo, labelstudio, images") as error:
        parse_formats("coco,xml")
    assert isinstance(error.value, SSDLiteError) and isinstance(error.value, ValueError)
    with pytest.raises(FormatError, match="no format"):
        parse_formats(" , ")


def test_write_outputs_skips_images_and_refuses_unknown_names(tmp_path, records, context):
    assert write_outputs(["images", "jsonl"], records, tmp_path / "out", context) == [
        tmp_path / "out" / "detections.jsonl"
    ]
    with pytest.raises(FormatError, match="'xml'"):
        write_outputs(["xml"], records, tmp_path / "out", context)


# jsonl


def test_jsonl_lines_are_ssdlite_detects_rounded(tmp_path, records, context):
    (path,) = write_outputs(["jsonl"], records, tmp_path, context)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(line) for line in lines] == [["image", "width", "height", "detections"]] * 3
    assert [line["image"] for line in lines] == [record.image for record in records]
    first = lines[0]["detections"]
    assert list(first[0]) == ["box", "score", "class_id", "label"]
    assert first[0]["score"] == 0.91235
    assert first[1]["box"] == [10.12, 20.5, 60.99, 70.25]
    assert lines[2]["detections"] == []
    write_outputs(["jsonl"], records, tmp_path / "again", context)
    assert (tmp_path / "again" / "detections.jsonl").read_bytes() == path.read_bytes()


# COCO results scored against the images' annotation file


def write_annotation_file(path: Path, images: dict[str, Path]) -> Path:
    """A COCO file for a.jpg and b.jpg (under other folders), with sparse ids and one class the model lacks."""
    dataset = {
        "images": [
            {"id": 7, "file_name": "val2017/a.jpg", "width": A_SIZE[0], "height": A_SIZE[1]},
            {"id": 42, "file_name": "b.jpg", "width": B_SIZE[0], "height": B_SIZE[1]},
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": ""},
            {"id": 18, "name": "dög 🐕", "supercategory": ""},
            {"id": 3, "name": "bicycle", "supercategory": ""},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [100, 0, 100, 100], "area": 10000, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 18, "bbox": [10, 20, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 3, "image_id": 42, "category_id": 1, "bbox": [16, 12, 64, 84], "area": 5376, "iscrowd": 0},
        ],
    }
    path.write_text(json.dumps(dataset))
    return path


def test_coco_results_load_in_pycocotools_and_score_ap_1(tmp_path, images, context, caplog):
    annotations = write_annotation_file(tmp_path / "instances.json", images)
    a_boxes = [detection([100, 0, 200, 100], 0.9, 1), detection([10, 20, 60, 70], 0.7, 3)]
    b_boxes = [detection([16, 12, 80, 96], 0.8, 1), detection([0, 0, 50, 50], 0.6, 2)]  # a class the file lacks
    records = [
        Record(0, str(images["a.jpg"]), "a", *A_SIZE, a_boxes),
        Record(1, str(images["b.jpg"]), "b", *B_SIZE, b_boxes),
    ]
    coco_images = load_coco_images(annotations)
    coco_images.check([record.image for record in records])
    context = OutputContext(CLASS_NAMES, "test", coco_images=coco_images)
    with caplog.at_level(logging.WARNING, logger=formats.__name__):
        (path,) = write_outputs(["coco"], records, tmp_path / "out", context)
    assert path.name == "coco_results.json"
    assert "'car: \"red\"'" in caplog.text and "1 detections are left out" in caplog.text

    results = json.loads(path.read_text())
    assert {(r["image_id"], r["category_id"]) for r in results} == {(7, 1), (7, 18), (42, 1)}
    assert next(r["bbox"] for r in results if r["category_id"] == 18) == [10, 20, 50, 50]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth = COCO(str(annotations))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(path)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]


def test_coco_images_that_do_not_match_are_refused_before_any_work(tmp_path, images):
    coco_images = load_coco_images(write_annotation_file(tmp_path / "instances.json", images))
    keys = [str(images["a.jpg"]), str(images["c.jpg"])] + [f"/data/extra_{i}.jpg" for i in range(6)]
    with pytest.raises(FormatError, match=r"7 of the 8 input images are not in .*c\.jpg, extra_0\.jpg.* and 2 more"):
        coco_images.check(keys)
    with pytest.raises(FormatError, match="c.jpg"):
        coco_images.image_id(str(images["c.jpg"]))
    with pytest.raises(FormatError, match="more than once among the inputs"):
        coco_images.check([str(images["a.jpg"]), "/elsewhere/a.jpg"])

    ambiguous = json.loads((tmp_path / "instances.json").read_text())
    ambiguous["images"].append({"id": 8, "file_name": "train2017/a.jpg", "width": 1, "height": 1})
    (tmp_path / "ambiguous.json").write_text(json.dumps(ambiguous))
    with pytest.raises(FormatError, match=r"several images of this COCO file \(a\.jpg\)"):
        load_coco_images(tmp_path / "ambiguous.json").check([str(images["a.jpg"])])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "not a readable COCO annotation file"),
        ("[1, 2]", "not a COCO annotation file"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}]}', "no 'categories' list"),
        ('{"images": [{"file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}]}', "no 'id' field"),
    ],
)
def test_unusable_coco_images_file(tmp_path, content, message):
    path = tmp_path / "instances.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(FormatError, match=message) as error:
        load_coco_images(path)
    assert str(path) in str(error.value)


# COCO dataset (CVAT "COCO 1.0")


def test_coco_dataset_loads_in_pycocotools(tmp_path, records, context):
    frame = Record(3, "/videos/clip.mp4#12", "clip_000012", 320, 240, [detection([0, 0, 32, 24], 0.6, 1)], 12)
    (path,) = write_outputs(["coco"], [*records, frame], tmp_path, context)
    assert path.name == "coco.json"
    with contextlib.redirect_stdout(io.StringIO()):
        dataset = COCO(str(path))
    assert [dataset.cats[i]["name"] for i in sorted(dataset.cats)] == CLASS_NAMES
    assert sorted(dataset.cats) == [1, 2, 3]
    assert [dataset.imgs[i]["file_name"] for i in (1, 2, 3, 4)] == ["a.jpg", "b.jpg", "c.jpg", "clip_000012.jpg"]
    assert (dataset.imgs[2]["width"], dataset.imgs[2]["height"]) == B_SIZE
    assert [len(dataset.getAnnIds(imgIds=[i])) for i in (1, 2, 3, 4)] == [2, 1, 0, 1]
    assert len(dataset.getAnnIds(catIds=[3])) == 1
    (dog,) = dataset.loadAnns(dataset.getAnnIds(catIds=[3]))
    assert dog["bbox"] == [10.12, 20.5, 50.86, 49.75]
    assert dog["area"] == pytest.approx(50.86 * 49.75, abs=0.01)
    assert (dog["image_id"], dog["iscrowd"], dog["segmentation"], dog["score"]) == (1, 0, [], 0.5)
    assert len({annotation["id"] for annotation in dataset.anns.values()}) == 4


# YOLO dataset


def test_yolo_dataset_reads_back_with_the_trainer(tmp_path, records, context, images):
    out = tmp_path / "out"
    written = write_outputs(["yolo"], records, out, context)
    assert written == [out / "data.yaml", out / "images", out / "labels"]
    assert read_data_yaml(out / "data.yaml").names == CLASS_NAMES
    assert os.path.realpath(out / "images" / "a.jpg") == os.path.realpath(images["a.jpg"])
    assert (out / "labels" / "c.txt").read_text() == ""
    assert sorted(p.name for p in out.iterdir()) == ["data.yaml", "images", "labels"]  # nothing staged left

    for split in ("train", "val"):
        loaded = load_yolo(out / "data.yaml", split, progress=False)
        assert loaded.notes == []
        assert [c["name"] for c in loaded.dataset["categories"]] == CLASS_NAMES
        by_file = {image["file_name"]: image for image in loaded.dataset["images"]}
        assert sorted(by_file) == ["images/a.jpg", "images/b.jpg", "images/c.jpg"]
        for record in records:
            image = by_file[f"images/{record.name}.jpg"]
            assert (image["width"], image["height"]) == (record.width, record.height)
            boxes = [
                (a["category_id"], a["bbox"]) for a in loaded.dataset["annotations"] if a["image_id"] == image["id"]
            ]
            expected = [(d["class_id"], d["box"]) for d in record.detections]
            assert [class_id for class_id, _ in boxes] == [class_id for class_id, _ in expected]
            for (_, (x, y, w, h)), (_, (x1, y1, x2, y2)) in zip(boxes, expected, strict=True):
                assert [x, y, x + w, y + h] == pytest.approx([x1, y1, x2, y2], abs=0.01)


def test_yolo_links_relative_inputs_from_anywhere(tmp_path, context, images, monkeypatch):
    monkeypatch.chdir(images["a.jpg"].parent)
    record = Record(0, "a.jpg", "a", *A_SIZE, [detection([0, 0, 100, 50], 0.6, 1)])
    write_outputs(["yolo"], [record], tmp_path / "out", context)
    assert os.path.realpath(tmp_path / "out" / "images" / "a.jpg") == os.path.realpath(images["a.jpg"])
    assert load_yolo(tmp_path / "out" / "data.yaml", "train", progress=False).notes == []


def test_yolo_video_frames_use_the_runners_jpeg(tmp_path, context):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    cv2.imwrite(str(out / "images" / "clip_000003.jpg"), np.zeros((240, 320, 3), np.uint8))
    frame = Record(0, str(tmp_path / "clip.mp4#3"), "clip_000003", 320, 240, [detection([0, 0, 160, 120], 0.6, 2)], 3)
    write_outputs(["yolo"], [frame], out, context)
    assert not (out / "images" / "clip_000003.jpg").is_symlink()
    assert (out / "labels" / "clip_000003.txt").read_text() == "1 0.250000 0.250000 0.500000 0.500000\n"
    loaded = load_yolo(out / "data.yaml", "train", progress=False)
    assert [a["bbox"] for a in loaded.dataset["annotations"]] == [[0, 0, 160, 120]]


def test_yolo_confidence_column_is_for_review_tools_not_training(tmp_path, records):
    context = OutputContext(CLASS_NAMES, "test", yolo_confidence=True)
    write_outputs(["yolo"], records, tmp_path, context)
    assert (tmp_path / "labels" / "a.txt").read_text().splitlines()[
        0
    ] == "0 0.750000 0.500000 0.500000 1.000000 0.91235"
    rows, problems, _ = parse_label_file(tmp_path / "labels" / "a.txt", len(CLASS_NAMES))
    assert len(rows) == 0 and "got 6 fields" in problems[0]  # as the docstring of write_yolo says


def test_yolo_rewrite_replaces_the_labels_whole(tmp_path, records, context):
    write_outputs(["yolo"], records, tmp_path, context)
    fewer = [Record(r.index, r.image, r.name, r.width, r.height, []) for r in records[:2]]
    write_outputs(["yolo"], fewer, tmp_path, context)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "labels" / "a.txt").read_text() == ""
    assert not (tmp_path / "labels.tmp").exists() and not (tmp_path / "labels.old").exists()


# Label Studio


def test_labelstudio_tasks_follow_the_documented_format(tmp_path, records, context):
    (path,) = write_outputs(["labelstudio"], records, tmp_path, context)
    tasks = json.loads(path.read_text())
    assert [task["data"]["image"] for task in tasks] == [record.image for record in records]
    for task, record in zip(tasks, records, strict=True):
        assert set(task) == {"data", "predictions"}
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "ssdlite-test-1"
        assert len(prediction["result"]) == len(record.detections)
        for region, found in zip(prediction["result"], record.detections, strict=True):
            assert (region["type"], region["from_name"], region["to_name"]) == ("rectanglelabels", "label", "image")
            assert (region["original_width"], region["original_height"]) == (record.width, record.height)
            assert region["image_rotation"] == 0 and region["value"]["rotation"] == 0
            assert region["value"]["rectanglelabels"] == [found["label"]]
            assert all(0 <= region["value"][key] <= 100 for key in ("x", "y", "width", "height"))
        assert len({region["id"] for region in prediction["result"]}) == len(record.detections)
    right_half = tasks[0]["predictions"][0]["result"][0]
    assert {key: right_half["value"][key] for key in ("x", "y", "width", "height")} == {
        "x": 50,
        "y": 0,
        "width": 50,
        "height": 100,
    }
    assert right_half["score"] == 0.91235
    assert tasks[0]["predictions"][0]["score"] == pytest.approx((0.9123456 + 0.5) / 2, abs=1e-5)
    assert tasks[2]["predictions"][0] == {"model_version": "ssdlite-test-1", "score": 0, "result": []}


def test_labelstudio_boxes_are_clipped_and_urls_prefixed(tmp_path, context):
    outside = Record(0, "/photos/wide.png", "wide", 200, 100, [detection([-20, 50, 250, 130], 0.5, 1)])
    frame = Record(1, "/videos/clip.mp4#12", "clip_000012", 200, 100, [], 12)
    prefixed = OutputContext(CLASS_NAMES, "v1", image_url_prefix="/data/local-files/?d=out/images/")
    (path,) = write_outputs(["labelstudio"], [outside, frame], tmp_path, prefixed)
    tasks = json.loads(path.read_text())
    assert [task["data"]["image"] for task in tasks] == [
        "/data/local-files/?d=out/images/wide.png",
        "/data/local-files/?d=out/images/clip_000012.jpg",
    ]
    value = tasks[0]["predictions"][0]["result"][0]["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == (0, 50, 100, 50)


def test_labelstudio_sdk_accepts_the_predictions(tmp_path, records, context):
    sdk = pytest.importorskip(
        "label_studio_sdk.label_interface",
        reason="label-studio-sdk is not installed (not in the dev extra: it pins opencv-python-headless<4.13)",
    )
    interface = sdk.LabelInterface(labelstudio_config(CLASS_NAMES))
    interface.validate()
    (path,) = write_outputs(["labelstudio"], records, tmp_path, context)
    for task in json.loads(path.read_text()):
        assert all(task["data"].get(tag.value_name) for tag in interface.objects)
        for prediction in task["predictions"]:
            assert interface.validate_prediction(prediction, return_errors=True) == []
    wrong = {"result": [{**json.loads(path.read_text())[0]["predictions"][0]["result"][0], "from_name": "box"}]}
    assert interface.validate_prediction(wrong, return_errors=True)  # the check can fail


# Atomic writes


def test_an_interrupted_json_write_leaves_the_previous_file(tmp_path, records, context, monkeypatch):
    write_outputs(["coco", "labelstudio"], records, tmp_path, context)
    before = {name: (tmp_path / name).read_bytes() for name in ("coco.json", "labelstudio.json")}

    def dump_half(value, file):
        file.write(json.dumps(value)[:10])
        raise OSError("disk full")

    monkeypatch.setattr(formats.json, "dump", dump_half)
    for name in ("coco", "labelstudio"):
        with pytest.raises(OSError, match="disk full"):
            write_outputs([name], records, tmp_path, context)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(OSError, match="disk full"):
        write_outputs(["coco"], records, tmp_path / "fresh", context)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_an_interrupted_label_write_leaves_the_previous_labels(tmp_path, records, context, monkeypatch):
    write_outputs(["yolo"], records, tmp_path, context)
    before = {p.name: p.read_text() for p in (tmp_path / "labels").iterdir()}
    calls = []

    def fail_on_second(record, confidence):
        calls.append(record)
        if len(calls) == 2:
            raise OSError("disk full")
        return iter(["0 0.5 0.5 0.1 0.1\n"])

    monkeypatch.setattr(formats, "_yolo_lines", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(["yolo"], records, tmp_path, context)
    assert {p.name: p.read_text() for p in (tmp_path / "labels").iterdir()} == before
    assert not (tmp_path / "labels.tmp").exists()
