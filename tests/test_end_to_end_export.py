"""``python -m ssdlite.export --end-to-end``: one ONNX file that returns final detections.

The graph is run by a separate Python process that imports onnxruntime and numpy only, as a user
in another stack would run it, and compared with ``Detector.predict`` on the same input.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

from ssdlite import Detector, load_checkpoint, save_checkpoint
from ssdlite.cli.export import main as export_main
from ssdlite.core.boxes import pairwise_iou
from ssdlite.deploy import export_onnx
from ssdlite.deploy.int8 import load_calibration_images
from ssdlite.images import SAMPLE_PHOTOS, read_image
from ssdlite.runtime.backends import OnnxRuntimeBackend

# Runs an end-to-end file on a saved batch with nothing but onnxruntime and numpy.
RUNNER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import onnxruntime as ort

    model, inputs, outputs = sys.argv[1:]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    boxes, scores, labels, count = session.run(None, {"images": np.load(inputs)})
    assert not any(name.startswith("ssdlite") for name in sys.modules), "imported ssdlite"
    np.savez(outputs, boxes=boxes, scores=scores, labels=labels, num_detections=count)
    """
)


def run_without_ssdlite(model_path, batch: np.ndarray, tmp_path) -> dict:
    np.save(tmp_path / "batch.npy", batch)
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    command = [sys.executable, str(script), str(model_path), str(tmp_path / "batch.npy"), str(tmp_path / "out.npz")]
    subprocess.run(command, check=True, cwd=tmp_path, timeout=120)
    return dict(np.load(tmp_path / "out.npz"))


def photos() -> list[np.ndarray]:
    astronaut, hopper = (read_image(SAMPLE_PHOTOS / name) for name in ("astronaut.jpg", "grace_hopper.jpg"))
    return [astronaut, hopper, np.ascontiguousarray(astronaut[:, ::-1])]


def assert_same_detections(got: dict, detector: Detector, images: list[np.ndarray], batch_sizes):
    expected = detector.predict_batch(images)
    max_detections = detector.config.postprocess.max_detections
    assert got["boxes"].shape == (len(images), max_detections, 4) and got["boxes"].dtype == np.float32
    assert got["scores"].shape == (len(images), max_detections)
    assert got["labels"].shape == (len(images), max_detections) and got["labels"].dtype == np.int64
    assert got["num_detections"].dtype == np.int64
    assert sum(len(e) for e in expected) > 0
    for i, (detections, (height, width)) in enumerate(zip(expected, batch_sizes, strict=True)):
        n = int(got["num_detections"][i])
        assert n == len(detections)
        scale = np.array([width, height, width, height])
        np.testing.assert_allclose(got["boxes"][i, :n], [np.array(d["box"]) / scale for d in detections], atol=1e-4)
        np.testing.assert_allclose(got["scores"][i, :n], [d["score"] for d in detections], atol=1e-5)
        assert got["labels"][i, :n].tolist() == [d["class_id"] for d in detections]
        # Padding rows are zeros.
        assert not got["boxes"][i, n:].any() and not got["scores"][i, n:].any() and not got["labels"][i, n:].any()


def test_person_detector_end_to_end_matches_detector_predict(person_checkpoint, tmp_path):
    output = tmp_path / "person_e2e.onnx"
    assert export_main([str(person_checkpoint), "-o", str(output), "--end-to-end"]) == 0
    proto = onnx.load(output)
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "num_detections"]
    assert "NonMaxSuppression" in {node.op_type for node in proto.graph.node}
    metadata = {p.key: p.value for p in proto.metadata_props}
    model, class_names = load_checkpoint(person_checkpoint)
    config = model.config.postprocess
    assert json.loads(metadata["postprocess"]) == {
        "score_threshold": config.score_threshold,
        "nms_iou": config.nms_iou,
        "max_detections": config.max_detections,
        "candidates_per_image": config.candidates_per_image,
        "score_function": "sigmoid",
    }
    assert json.loads(metadata["class_names"]) == ["person"] and metadata["end_to_end"] == "true"

    detector = Detector.from_checkpoint(person_checkpoint, backend="onnxruntime")
    images = photos()
    batch, sizes = detector.preprocess(images)
    got = run_without_ssdlite(output, batch.numpy(), tmp_path)
    assert_same_detections(got, detector, images, sizes)
    assert got["scores"][0, 0] > 0.9 and got["labels"][0, 0] == 1  # the astronaut, first and sure


@pytest.mark.parametrize("score_function", ["softmax", "sigmoid"])
def test_postprocess_graph_matches_the_torch_postprocess(score_function):
    """Random raw outputs (continuous, so no two scores tie): several classes compete on the same
    anchors, so class-aware NMS, the candidate top-k and the per-image cut are all exercised."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ssdlite.core.anchors import anchors_for
    from ssdlite.core.model import get_config
    from ssdlite.core.postprocess import postprocess
    from ssdlite.deploy.end_to_end import append_postprocess

    config = get_config(
        "ssdlite320_mobilenet_v2",
        num_classes=5,
        image_size=160,
        score_function=score_function,
        max_detections=50,
        candidates_per_image=200,
    )
    anchors = anchors_for(config)
    shapes = {"box_regression": [None, anchors.shape[0], 4], "class_logits": [None, anchors.shape[0], 5]}
    raw = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", [f"raw_{name}"], [name]) for name in shapes],
            "raw",
            [helper.make_tensor_value_info(f"raw_{name}", TensorProto.FLOAT, shape) for name, shape in shapes.items()],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    session = ort.InferenceSession(append_postprocess(raw, config).SerializeToString())
    generator = torch.Generator().manual_seed(0)
    deltas = torch.randn(3, anchors.shape[0], 4, generator=generator) * 2
    logits = torch.randn(3, anchors.shape[0], 5, generator=generator) * 3
    logits[2, :, 0] += 30  # an image with nothing above the threshold under either score function
    logits[2, :, 1:] -= 30
    boxes, scores, labels, count = session.run(
        None, {"raw_box_regression": deltas.numpy(), "raw_class_logits": logits.numpy()}
    )
    expected = postprocess(deltas, logits, anchors, config.postprocess)
    assert count.tolist() == [len(d.scores) for d in expected] and count[0] == 50 and count[2] == 0
    for i, detections in enumerate(expected):
        n = count[i]
        np.testing.assert_allclose(boxes[i, :n], detections.boxes.numpy(), atol=1e-5)
        np.testing.assert_allclose(scores[i, :n], detections.scores.numpy(), atol=1e-6)
        assert labels[i, :n].tolist() == detections.labels.tolist()
    assert len(set(labels[0, : count[0]].tolist())) == 4  # every class competes


def test_int8_end_to_end_matches_the_int8_detector(person_checkpoint, tmp_path):
    model, names = load_checkpoint(person_checkpoint)
    calibration = load_calibration_images(SAMPLE_PHOTOS, model.config).images
    path = tmp_path / "person_int8_e2e.onnx"
    export_onnx(model, names, path, calibration=calibration, end_to_end=True)
    detector = Detector(OnnxRuntimeBackend(export_onnx(model, names, calibration=calibration)), model.config, names)
    assert detector.backend.precision == "int8"
    images = photos()
    batch, sizes = detector.preprocess(images)
    got = run_without_ssdlite(path, batch.numpy(), tmp_path)
    # Quantized logits give many low scores that tie, whose order is arbitrary, so compare the
    # confident detections. ONNX Runtime also drops the Quantize/Dequantize pair at the end of
    # the network when float postprocessing follows, so the end-to-end graph decodes unrounded
    # box offsets: boxes may differ by about one output quantization step times the anchor size.
    for i, (detections, (height, width)) in enumerate(zip(detector.predict_batch(images), sizes, strict=True)):
        confident = [d for d in detections if d["score"] > 0.3]
        n = len(confident)
        assert n >= 1 and got["scores"][i, n] <= 0.3
        np.testing.assert_allclose(got["scores"][i, :n], [d["score"] for d in confident], atol=1e-3)
        scale = torch.tensor([width, height, width, height])
        expected_boxes = torch.tensor([d["box"] for d in confident]) / scale
        assert pairwise_iou(torch.from_numpy(got["boxes"][i, :n]), expected_boxes).diagonal().min() > 0.8


def test_detector_refuses_an_end_to_end_file_with_a_clear_message(small_model, tmp_path):
    path = tmp_path / "e2e.onnx"
    save_checkpoint(tmp_path / "small.pt", small_model, ["cat", "dog", "bird"])
    assert export_main([str(tmp_path / "small.pt"), "-o", str(path), "--end-to-end"]) == 0
    with pytest.raises(ValueError, match="an end-to-end export .* run it with onnxruntime directly"):
        Detector.from_checkpoint(path)
