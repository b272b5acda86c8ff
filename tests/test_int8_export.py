"""``python -m ssdlite.export --int8``: static QDQ quantization calibrated on real photos."""

import json

import numpy as np
import onnx
import pytest

from ssdlite import Detector, save_checkpoint
from ssdlite.cli.export import main as export_main
from ssdlite.core.boxes import pairwise_iou
from ssdlite.deploy.int8 import CalibrationError, load_calibration_images
from ssdlite.images import SAMPLE_PHOTOS, read_image
from ssdlite.runtime.backends import OnnxRuntimeBackend

from .conftest import randomize_batchnorm

NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def small_checkpoint(tmp_path, small_model):
    return save_checkpoint(tmp_path / "small.pt", randomize_batchnorm(small_model), NAMES)


def box_iou(a, b) -> float:
    import torch

    return pairwise_iou(torch.tensor([a]), torch.tensor([b])).item()


def test_int8_person_detector_finds_the_person_as_the_float_one_does(person_checkpoint, tmp_path, capsys):
    output = tmp_path / "person_int8.onnx"
    args = [str(person_checkpoint), "-o", str(output), "--int8", "--calibration", str(SAMPLE_PHOTOS)]
    assert export_main(args) == 0
    assert "calibrating on 2 image(s)" in capsys.readouterr().err
    metadata = {p.key: p.value for p in onnx.load(output).metadata_props}
    assert metadata["precision"] == "int8"
    assert json.loads(metadata["calibration"]) == {"method": "average-minmax", "images": 2}
    graph_ops = {node.op_type for node in onnx.load(output).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph_ops
    assert output.stat().st_size < 0.4 * person_checkpoint.stat().st_size  # int8 weights

    int8 = Detector.from_checkpoint(output)
    assert int8.backend.name == "onnxruntime" and int8.backend.precision == "int8"
    assert int8.class_names == ["person"]
    reference = Detector.from_checkpoint(person_checkpoint, backend="onnxruntime")
    assert reference.backend.precision == "float32"
    for photo in ("astronaut.jpg", "grace_hopper.jpg"):
        image = read_image(SAMPLE_PHOTOS / photo)
        (expected,) = [d for d in reference.predict(image) if d["score"] > 0.5]
        found = [d for d in int8.predict(image) if d["score"] > 0.5]
        assert len(found) == 1 and found[0]["label"] == "person"
        assert abs(found[0]["score"] - expected["score"]) < 0.05
        assert box_iou(found[0]["box"], expected["box"]) > 0.9


def test_int8_without_calibration_is_refused(small_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(small_checkpoint), "--int8"])
    assert exit_info.value.code == 2
    assert "--int8 needs --calibration DIR" in capsys.readouterr().err


def test_calibration_folder_without_readable_images(small_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert export_main([str(small_checkpoint), "--int8", "--calibration", str(empty)]) == 2
    assert f"error: {empty}: no readable calibration images (no .jpg" in capsys.readouterr().err

    (empty / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert export_main([str(small_checkpoint), "--int8", "--calibration", str(empty)]) == 2
    assert "(all 1 image files are unreadable)" in capsys.readouterr().err

    missing = tmp_path / "missing"
    assert export_main([str(small_checkpoint), "--int8", "--calibration", str(missing)]) == 2
    assert f"{missing}: no such directory" in capsys.readouterr().err
    assert not small_checkpoint.with_suffix(".onnx").exists()


def test_unreadable_calibration_images_are_skipped_and_counted(small_checkpoint, tmp_path, capsys):
    folder = tmp_path / "calibration"
    folder.mkdir()
    (folder / "a_good.jpg").write_bytes((SAMPLE_PHOTOS / "astronaut.jpg").read_bytes())
    (folder / "b_truncated.jpg").write_bytes(b"")
    (folder / "c_text.png").write_text("hello")
    output = tmp_path / "small_int8.onnx"
    args = [str(small_checkpoint), "-o", str(output), "--int8", "--calibration", str(folder)]
    assert export_main(args) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped 2 unreadable image(s) in {folder}" in err
    assert "b_truncated.jpg" in err and "c_text.png" in err
    assert "calibrating on 1 image(s)" in err
    assert OnnxRuntimeBackend(output).precision == "int8"


def test_calibration_images_go_through_the_detectors_preprocessing(small_model):
    calibration = load_calibration_images(SAMPLE_PHOTOS, small_model.config, limit=1)
    assert [p.name for p in calibration.files] == ["astronaut.jpg"]  # sorted by name, limited
    detector = Detector(None, small_model.config, NAMES)
    expected, _ = detector.preprocess([read_image(SAMPLE_PHOTOS / "astronaut.jpg")])
    np.testing.assert_array_equal(calibration.images, expected.numpy())
    with pytest.raises(CalibrationError, match="at least 1"):
        load_calibration_images(SAMPLE_PHOTOS, small_model.config, limit=0)


def test_zoo_builds_the_int8_person_detector_once_from_the_cached_checkpoint(
    person_checkpoint, tmp_path, monkeypatch, caplog
):
    from ssdlite.weights.zoo import fetch

    monkeypatch.setenv("SSDLITE_HOME", str(tmp_path))
    (tmp_path / "tf-pedestrian.pt").symlink_to(person_checkpoint)  # already fetched: no network
    caplog.set_level("INFO", logger="ssdlite")
    path = fetch("tf-pedestrian-int8")
    messages = [record.getMessage() for record in caplog.records]
    assert path == tmp_path / "tf-pedestrian-int8.onnx"
    assert any(m.startswith("quantizing tf-pedestrian to INT8") for m in messages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tf-pedestrian-int8.onnx", "tf-pedestrian.pt"]
    built = path.stat().st_mtime_ns
    assert fetch("tf-pedestrian-int8") == path and path.stat().st_mtime_ns == built

    detector = Detector.load("tf-pedestrian-int8")
    assert (detector.backend.precision, detector.class_names) == ("int8", ["person"])
    best = detector.predict(read_image(SAMPLE_PHOTOS / "grace_hopper.jpg"))[0]
    assert best["label"] == "person" and best["score"] > 0.5


def test_zoo_int8_builds_at_the_same_time_do_not_collide(person_checkpoint, tmp_path, monkeypatch):
    """Replicas sharing one model cache may all build the INT8 model on their first start."""
    import subprocess
    import sys

    monkeypatch.setenv("SSDLITE_HOME", str(tmp_path))
    (tmp_path / "tf-pedestrian.pt").symlink_to(person_checkpoint)
    build = "from ssdlite.weights.zoo import fetch; print(fetch('tf-pedestrian-int8', force=True))"
    replicas = [
        subprocess.Popen([sys.executable, "-c", build], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [replica.communicate(timeout=300)[0] for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0, 0], outputs
    assert [output.strip().splitlines()[-1] for output in outputs] == [str(tmp_path / "tf-pedestrian-int8.onnx")] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tf-pedestrian-int8.onnx", "tf-pedestrian.pt"]
    assert Detector.load("tf-pedestrian-int8").backend.precision == "int8"
