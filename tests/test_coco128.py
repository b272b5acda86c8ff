"""Real photos through ``python -m train.coco``: the shared coco128 set (skipped when absent).

coco128 is the first 128 images of COCO train2017 with their original annotations: sparse
category ids, crowd boxes, two images without boxes. The runs are tiny (one epoch at 96 px);
they check that real data goes through every path, not what the model learns.
"""

import json

from ssdlite.weights.checkpoint import read_checkpoint
from tests.test_yolo_data import write_yolo_copy
from train import coco as train_coco

from .conftest import coco128_person_scores

TINY = ["--image-size", "96", "--width-mult", "0.35", "--backbone-weights", "none", "--epochs", "1"]
TINY += ["--batch-size", "16", "--workers", "0", "--no-progress", "--augment", "ssd"]


def annotation_file(coco128):
    return coco128 / "annotations" / "instances_train2017.json"


def test_a_few_steps_with_the_coco_2017_layout(coco128, tmp_path, capsys):
    """--data-dir: train = val = coco128 (links, never copies of the photos)."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").symlink_to(annotation_file(coco128))
        (root / f"{split}2017").symlink_to(coco128 / "train2017", target_is_directory=True)
    assert train_coco.main(["--data-dir", str(root), *TINY, "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "128 images, 939 boxes (10 crowd, ignored in matching), 2 images without boxes" in out
    assert "80 classes" in out
    saved = read_checkpoint(tmp_path / "out" / "last.pt")
    assert len(saved["class_names"]) == 80 and saved["class_names"][0] == "person"
    assert saved["category_ids"][-1] == 90  # COCO's sparse ids travel with the checkpoint
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())[0]["AP"] >= 0


def test_a_few_steps_with_annotation_files_and_a_class_subset(coco128, tmp_path, capsys):
    """--train-ann/--val-ann on the same file, --classes person,car: the checkpoint's classes follow."""
    ann, images = str(annotation_file(coco128)), str(coco128 / "train2017")
    data = ["--train-ann", ann, "--train-images", images, "--val-ann", ann, "--val-images", images]
    args = [*data, *TINY, "--classes", "car,person", "--output-dir", str(tmp_path / "out")]
    assert train_coco.main(args) == 0
    out = capsys.readouterr().out
    assert "boxes of other classes dropped (--classes)" in out and "2 classes" in out
    saved = read_checkpoint(tmp_path / "out" / "best.pt")
    assert saved["class_names"] == ["person", "car"] and saved["category_ids"] == [1, 3]
    (row,) = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "AP" in row

    assert train_coco.main([*data, *TINY, "--classes", "person,unicorn"]) == 2
    err = capsys.readouterr().err
    assert "unknown category 'unicorn'" in err and "the dataset's categories: person, bicycle, car" in err


def test_yolo_data_yaml_trains_and_scores_with_pycocotools(coco128, tmp_path, capsys):
    data_yaml, _ = write_yolo_copy(coco128, tmp_path / "yolo")
    args = ["--data", str(data_yaml), *TINY, "--classes", "person", "--output-dir", str(tmp_path / "out")]
    assert train_coco.main(args) == 0
    out = capsys.readouterr().out
    assert f"train ({data_yaml} [train])" in out
    saved = read_checkpoint(tmp_path / "out" / "last.pt")
    assert saved["class_names"] == ["person"] and saved["category_ids"] == [1]
    assert "AP" in json.loads((tmp_path / "out" / "metrics.json").read_text())[0]


def test_eval_only_of_the_person_detector_writes_original_category_ids(coco128, person_checkpoint, tmp_path, capsys):
    ann, images = str(annotation_file(coco128)), str(coco128 / "train2017")
    args = ["--eval-only", "--weights", "tf-pedestrian", "--val-ann", ann, "--val-images", images]
    assert train_coco.main([*args, "--no-progress", "--workers", "0", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "evaluated tf-pedestrian on 128 images" in out
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert detections and {d["category_id"] for d in detections} == {1}
    assert {d["image_id"] for d in detections} <= {int(p.stem) for p in (coco128 / "train2017").glob("*.jpg")}
    (person,) = json.loads((tmp_path / "eval.json").read_text())["per_class"]
    assert person["name"] == "person" and person["gt"] == 254
    assert person["AP50"] > 0.3  # a real detector on real photos (0.39 measured)


def test_int8_person_detector_keeps_its_person_ap_on_real_photos(coco128, person_checkpoint, tmp_path, monkeypatch):
    """The zoo's INT8 build, scored through --eval-only like the float one (0.195 / 0.390 measured)."""
    from ssdlite.weights.zoo import fetch

    cache = tmp_path / "zoo"
    cache.mkdir()
    (cache / "tf-pedestrian.pt").symlink_to(person_checkpoint)
    monkeypatch.setenv("SSDLITE_HOME", str(cache))
    int8 = fetch("tf-pedestrian-int8")
    person = coco128_person_scores(int8, coco128, tmp_path / "eval")
    assert person["AP"] >= 0.185 and person["AP50"] >= 0.38  # within 0.01 of the float detector


def test_fine_tuning_the_person_detector_on_person_only_reinitialises_nothing(
    coco128, person_checkpoint, tmp_path, capsys
):
    ann, images = str(annotation_file(coco128)), str(coco128 / "train2017")
    data = ["--train-ann", ann, "--train-images", images, "--val-ann", ann, "--val-images", images]
    args = [*data, "--init", "tf-pedestrian", "--classes", "person", "--epochs", "1", "--batch-size", "32"]
    assert train_coco.main([*args, "--workers", "0", "--no-progress", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "re-initialised: nothing (same classes)" in out and "image 300" in out
    assert read_checkpoint(tmp_path / "best.pt")["class_names"] == ["person"]
