"""``ssdlite export -o model.tflite``: LiteRT files that MediaPipe's ObjectDetector and ``Detector`` both run.

These tests need litert-torch and mediapipe, which live in their own environment: ``make test`` runs
this file with ``.venv-tflite`` (``make install-tflite``); elsewhere it skips.
"""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service import Settings, create_app
from ssdlite import Detector, build_model
from ssdlite.cli.detect import main as detect_main
from ssdlite.cli.export import main as export_main
from ssdlite.core.boxes import pairwise_iou
from ssdlite.core.postprocess import class_scores
from ssdlite.deploy import export_model
from ssdlite.deploy.tflite import TFLiteExportError, export_tflite
from ssdlite.images import SAMPLE_PHOTOS, read_image, write_image
from ssdlite.runtime import ModelLoadError

from .conftest import coco128_person_scores, randomize_batchnorm

pytest.importorskip("litert_torch", reason="needs the tflite extra: make install-tflite (runs in .venv-tflite)")
pytest.importorskip("mediapipe", reason="needs mediapipe: make install-tflite (runs in .venv-tflite)")

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted(SAMPLE_PHOTOS.glob("*.jpg"))


def iou(a, b) -> float:
    return pairwise_iou(torch.tensor([a]), torch.tensor([b])).item()


def mediapipe_detect(model: Path, images: list[Path], score_threshold: float = 0.3) -> list[dict]:
    """Detections from MediaPipe's ObjectDetector, in a process importing only mediapipe and numpy."""
    script = ROOT / "bench" / "mediapipe_detect.py"
    command = [sys.executable, str(script), str(model), *map(str, images), "--score-threshold", str(score_threshold)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def person(person_checkpoint, tmp_path_factory) -> Path:
    """The zoo's person detector exported to .tflite (float32)."""
    path = tmp_path_factory.mktemp("tflite") / "person.tflite"
    assert export_main([str(person_checkpoint), "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def model_sized_photos(tmp_path_factory) -> list[Path]:
    """The shipped photos already at the person detector's 300 px, so MediaPipe's own resizing plays no part."""
    folder = tmp_path_factory.mktemp("photos300")
    paths = []
    for photo in PHOTOS:
        path = folder / f"{photo.stem}.png"
        write_image(path, cv2.resize(read_image(photo), (300, 300), interpolation=cv2.INTER_LINEAR))
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("preset", "options"),
    [
        ("ssdlite320_mobilenet_v2", {}),  # SSD anchors, softmax
        ("ssdlite300_mobilenet_v2_tf", {}),  # TF anchors, sigmoid
        ("ssdlite320_mobilenet_v3_large", {}),
        ("ssdlite320_mobilenet_v3_small", {}),
        ("ssdlite320_mobilenet_v1", {}),
    ],
)
def test_every_preset_exports_and_detects_as_the_checkpoint_does(preset, options, tmp_path, photo_like_image):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(preset, num_classes=4, width_mult=0.5, image_size=128, **options)).eval()
    names = ["cat", "dog", "bird"]
    path = export_model(model, names, tmp_path / "model.tflite")
    exported = Detector.load(path)
    assert exported.backend.name == "litert" and exported.backend.precision == "float32"
    assert exported.class_names == names and exported.config == model.config
    reference = Detector.from_model(model, names)
    batch, _ = reference.preprocess([photo_like_image])
    (expected_boxes, expected_logits), (boxes, logits) = reference.backend(batch), exported.backend(batch)
    assert (boxes - expected_boxes).abs().max() < 1e-4
    score_function = model.config.postprocess.score_function
    assert (class_scores(logits, score_function) - class_scores(expected_logits, score_function)).abs().max() < 1e-5

    expected = reference.predict(photo_like_image, score_threshold=0.05)
    found = exported.predict(photo_like_image, score_threshold=0.05)
    assert len(found) == len(expected) > 0

    def same(a, b) -> bool:
        close_box = np.abs(np.subtract(a["box"], b["box"])).max() < 0.01
        return a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-4 and close_box

    # A random model scores many boxes alike: equal scores may come in either order, or either side of the cap.
    assert all(any(same(a, b) for b in expected) for a in found[:20])


def test_mediapipe_finds_what_the_checkpoint_finds(person, person_checkpoint, model_sized_photos):
    reference = Detector.from_checkpoint(person_checkpoint)
    exported = Detector.load(person)
    results = mediapipe_detect(person, model_sized_photos)
    assert len(results) == 2
    for path, result in zip(model_sized_photos, results, strict=True):
        image = read_image(path)
        expected = reference.predict(image, score_threshold=0.3)
        (through_litert,) = exported.predict(image, score_threshold=0.3)
        assert np.abs(np.subtract(through_litert["box"], expected[0]["box"])).max() < 1e-3
        found = result["detections"]
        assert len(found) == len(expected) == 1 and found[0]["label"] == "person"
        assert found[0]["score"] == pytest.approx(expected[0]["score"], abs=1e-3)
        # MediaPipe reports whole pixels: origin and size each truncated.
        assert np.abs(np.subtract(found[0]["box"], expected[0]["box"])).max() < 2


def test_mediapipe_on_the_full_size_photos(person, person_checkpoint):
    """MediaPipe resizes the photos itself: same person, boxes within a few pixels (measured: 4)."""
    reference = Detector.from_checkpoint(person_checkpoint)
    for photo, result in zip(PHOTOS, mediapipe_detect(person, PHOTOS), strict=True):
        (expected,) = reference.predict(read_image(photo), score_threshold=0.3)
        (found,) = result["detections"]
        assert iou(found["box"], expected["box"]) > 0.97 and abs(found["score"] - expected["score"]) < 0.05


def test_int8_keeps_every_level_of_box_outputs_and_runs_in_mediapipe(person_checkpoint, model_sized_photos, tmp_path):
    output = tmp_path / "person_int8.tflite"
    args = [str(person_checkpoint), "-o", str(output), "--int8", "--calibration", str(SAMPLE_PHOTOS)]
    assert export_main(args) == 0
    assert output.stat().st_size < 0.4 * person_checkpoint.stat().st_size
    int8 = Detector.load(output)
    assert int8.backend.precision == "int8"
    reference = Detector.from_checkpoint(person_checkpoint)
    # The raw box outputs: a shared range would clip later levels (seen: errors of 10-12 px).
    batch, _ = reference.preprocess([read_image(p) for p in PHOTOS])
    expected_boxes = reference.backend(batch)[0]
    found_boxes = int8.backend(batch)[0]
    assert found_boxes.min() < -10 and found_boxes.max() > 6  # as the float model's -12.5 .. 7.4
    assert (found_boxes - expected_boxes).abs().mean() < 0.2  # measured 0.09-0.12 calibrated on the 2 photos
    for path, result in zip(model_sized_photos, mediapipe_detect(output, model_sized_photos), strict=True):
        (expected,) = reference.predict(read_image(path), score_threshold=0.3)
        (found,) = result["detections"]
        assert iou(found["box"], expected["box"]) > 0.9


def test_export_refuses_what_tflite_cannot_do(person_checkpoint, tmp_path, capsys):
    output = tmp_path / "model.tflite"
    assert export_main([str(person_checkpoint), "-o", str(output), "--end-to-end"]) == 2
    assert "the tflite format does not take end_to_end" in capsys.readouterr().err
    args = [str(person_checkpoint), "-o", str(output), "--int8", "--calibration", str(SAMPLE_PHOTOS)]
    assert export_main([*args, "--calibration-method", "entropy"]) == 2
    err = capsys.readouterr().err
    assert "'entropy' is not available for .tflite" in err and "Traceback" not in err
    assert not output.exists() and not list(tmp_path.glob(".*partial"))


def test_missing_converter_is_one_line(small_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(TFLiteExportError, match=r"needs litert-torch .*pip install 'ssdlite\[tflite\]'"):
        export_tflite(small_model, ["a", "b", "c"])


def test_a_tflite_without_ssdlite_metadata_is_refused(tmp_path):
    import litert_torch

    path = tmp_path / "other.tflite"
    litert_torch.convert(torch.nn.Conv2d(3, 4, 1).eval(), (torch.zeros(1, 3, 8, 8),)).export(str(path))
    with pytest.raises(ModelLoadError, match="without ssdlite metadata; export it with `ssdlite export"):
        Detector.load(path)


def test_service_and_cli_run_the_tflite_file(person, capsys):
    with TestClient(create_app(Settings(model=str(person)))) as client:
        model = client.get("/model").json()
        assert model["backend"] == "litert" and model["precision"] == "float32"
        with PHOTOS[0].open("rb") as photo:
            reply = client.post("/detect", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert reply.status_code == 200 and reply.json()["detections"][0]["label"] == "person"

    assert detect_main(["--model", str(person), str(PHOTOS[1])]) == 0
    assert '"label": "person"' in capsys.readouterr().out


def test_evaluation_scores_the_tflite_file_itself(person, coco128, tmp_path):
    # The export itself scored on 128 real photos: the float checkpoint's person AP 0.195 / AP50 0.390.
    result = coco128_person_scores(person, coco128, tmp_path)
    assert result["AP"] == pytest.approx(0.195, abs=0.002) and result["AP50"] == pytest.approx(0.390, abs=0.003)


@pytest.mark.slow
def test_int8_person_ap_on_coco128_within_a_hundredth_of_float(person_checkpoint, coco128, tmp_path):
    """Measured: float 0.195, INT8 0.190 (64 coco128 photos, average-minmax)."""
    output = tmp_path / "person_int8.tflite"
    calibration = coco128 / "train2017"
    assert export_main([str(person_checkpoint), "-o", str(output), "--int8", "--calibration", str(calibration)]) == 0
    assert coco128_person_scores(output, coco128, tmp_path)["AP"] > 0.195 - 0.01
