import numpy as np
import pytest
import torch
from PIL import Image

from ssdlite import Detector
from ssdlite.core.boxes import encode_boxes


def detector_that_sees(box_xyxy_normalised, config_model):
    """A Detector whose raw forward always reports one object of class 1 at the given box."""
    model = config_model
    anchors = model.anchors
    target = torch.tensor(box_xyxy_normalised)
    deltas = encode_boxes(target.expand(anchors.shape[0], 4), anchors, model.config.postprocess.box_weights)
    logits = torch.full((anchors.shape[0], model.config.num_classes), -10.0)
    logits[:, 0] = 10.0
    best = torch.argmin(
        (anchors[:, :2] - (target[:2] + target[2:]) / 2).norm(dim=1) + (anchors[:, 2:] - 0.3).abs().sum(1)
    )
    logits[best, 0], logits[best, 1] = -10.0, 10.0

    def forward(batch):
        n = batch.shape[0]
        return deltas.expand(n, -1, -1), logits.expand(n, -1, -1)

    return Detector(forward, model.config, ["cat", "dog", "bird"])


def test_boxes_come_back_in_original_pixels(small_model):
    detector = detector_that_sees([0.25, 0.5, 0.75, 1.0], small_model)
    image = np.zeros((480, 640, 3), np.uint8)
    (det,) = detector.predict(image, score_threshold=0.5)
    assert det["label"] == "cat" and det["class_id"] == 1
    np.testing.assert_allclose(det["box"], [160, 240, 480, 480], atol=1e-3)
    # Batches mix sizes; each image gets its own scale.
    small, large = detector.predict_batch([np.zeros((100, 50, 3), np.uint8), image], score_threshold=0.5)
    np.testing.assert_allclose(small[0]["box"], [12.5, 50, 37.5, 100], atol=1e-3)
    np.testing.assert_allclose(large[0]["box"], det["box"], atol=1e-3)


def test_class_filter(small_model):
    detector = detector_that_sees([0.1, 0.1, 0.5, 0.5], small_model)
    image = np.zeros((64, 64, 3), np.uint8)
    assert len(detector.predict(image, score_threshold=0.5, classes=["cat"])) == 1
    assert detector.predict(image, score_threshold=0.5, classes=["dog"]) == []
    with pytest.raises(ValueError, match="unknown class names"):
        detector.predict(image, classes=["zebra"])


def test_accepts_pil_grayscale_rgba_and_tensors(small_model):
    detector = Detector.from_model(small_model, ["cat", "dog", "bird"])
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    reference = detector.predict(rgb, score_threshold=0.0, max_detections=5)
    assert len(reference) == 5
    for variant in (
        Image.fromarray(rgb),
        np.dstack([rgb, np.full((90, 120), 255, np.uint8)]),
        torch.from_numpy(rgb).permute(2, 0, 1),
    ):
        got = detector.predict(variant, score_threshold=0.0, max_detections=5)
        np.testing.assert_allclose([d["box"] for d in got], [d["box"] for d in reference], atol=1e-4)
    gray = rng.integers(0, 256, (90, 120), dtype=np.uint8)
    same_as_rgb = detector.predict(np.dstack([gray] * 3), score_threshold=0.0, max_detections=3)
    assert [d["score"] for d in detector.predict(gray, score_threshold=0.0, max_detections=3)] == pytest.approx(
        [d["score"] for d in same_as_rgb]
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "H x W x 3"),
        (np.zeros((0, 10, 3), np.uint8), "H x W x 3"),
        ("image.jpg", "numpy array"),
    ],
)
def test_bad_images_raise_clear_errors(small_model, bad, message):
    detector = Detector.from_model(small_model, ["cat", "dog", "bird"])
    with pytest.raises((ValueError, TypeError), match=message):
        detector.predict(bad)


def test_empty_batch(small_model):
    assert Detector.from_model(small_model, ["cat", "dog", "bird"]).predict_batch([]) == []


def test_detect_cli_reports_bad_files_and_keeps_going(tmp_path, small_model, capsys):
    import json

    import cv2

    from ssdlite import save_checkpoint
    from ssdlite.cli.detect import main as detect_main

    checkpoint = save_checkpoint(tmp_path / "model.pt", small_model, ["cat", "dog", "bird"])
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((40, 60, 3), 128, np.uint8))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out_dir = tmp_path / "out"
    code = detect_main(
        [
            str(corrupt),
            str(good),
            str(tmp_path / "missing.jpg"),
            "--model",
            str(checkpoint),
            "--score-threshold",
            "0",
            "-o",
            str(out_dir),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "corrupt.jpg: not a readable image" in captured.err and "missing.jpg: no such file" in captured.err
    (line,) = captured.out.strip().splitlines()
    result = json.loads(line)
    assert result["width"] == 60 and result["height"] == 40 and len(result["detections"]) > 0
    assert cv2.imread(str(out_dir / "good.png")).shape == (40, 60, 3)


def test_detect_cli_rejects_a_bad_model(tmp_path, capsys):
    from ssdlite.cli.detect import main as detect_main

    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"nope")
    assert detect_main(["x.jpg", "--model", str(bogus)]) == 2
    assert "bogus.pt: not a readable checkpoint" in capsys.readouterr().err
