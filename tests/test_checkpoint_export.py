import numpy as np
import pytest
import torch

from ssdlite import CheckpointError, Detector, build_model, load_checkpoint, save_checkpoint
from ssdlite.cli.export import main as export_main
from ssdlite.deploy import export_onnx
from ssdlite.runtime.backends import OnnxRuntimeBackend

from .conftest import randomize_batchnorm

NAMES = ["cat", "dog", "bird"]


def test_checkpoint_round_trip(tmp_path, small_model):
    path = save_checkpoint(tmp_path / "model.pt", small_model, NAMES, epoch=3)
    model, names = load_checkpoint(path)
    assert names == NAMES and model.config == small_model.config
    x = torch.rand(1, 3, 160, 160) * 255
    for a, b in zip(model(x), small_model(x), strict=False):
        torch.testing.assert_close(a, b)
    # Loads with weights_only=True, i.e. nothing but tensors and plain containers inside.
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_class_names_must_match_the_model(tmp_path, small_model):
    with pytest.raises(ValueError, match="2 class names for a model with 3 classes"):
        save_checkpoint(tmp_path / "m.pt", small_model, ["cat", "dog"])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such checkpoint"),
        (b"", "not a readable checkpoint"),
        (b"\x00garbage" * 100, "not a readable checkpoint"),
    ],
)
def test_bad_checkpoint_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_and_foreign_checkpoints(tmp_path, small_model):
    good = save_checkpoint(tmp_path / "good.pt", small_model, NAMES)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an ssdlite checkpoint"):
        load_checkpoint(foreign)


@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v2", "ssdlite300_mobilenet_v2_tf"])
def test_onnxruntime_matches_torch(name):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(name, num_classes=4)).eval()
    runtime = OnnxRuntimeBackend(export_onnx(model, NAMES), threads=2)
    size = model.config.image_size
    x = torch.rand(3, 3, size, size) * 255  # batch 3: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x)
    got = runtime(x)
    for a, b in zip(got, expected, strict=False):
        assert a.shape == b.shape
        assert b.abs().max() > 0.1  # outputs are not trivially small
        assert (a - b).abs().max() <= 1e-4


def test_onnx_file_is_self_contained(tmp_path, small_model, photo_like_image):
    ckpt = save_checkpoint(tmp_path / "model.pt", small_model, NAMES)
    assert export_main([str(ckpt), "-o", str(tmp_path / "model.onnx")]) == 0
    from_onnx = Detector.from_checkpoint(tmp_path / "model.onnx")
    from_torch = Detector.from_checkpoint(ckpt, backend="torch")
    assert from_onnx.class_names == NAMES and from_onnx.config == small_model.config
    a = from_onnx.predict(photo_like_image, score_threshold=0.0, max_detections=20)
    b = from_torch.predict(photo_like_image, score_threshold=0.0, max_detections=20)
    assert len(a) == 20
    np.testing.assert_allclose([d["box"] for d in a], [d["box"] for d in b], atol=1e-2)
    assert [d["label"] for d in a] == [d["label"] for d in b]


def test_export_cli_reports_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    assert export_main([str(bad)]) == 2
    assert "broken.pt: not a readable checkpoint" in capsys.readouterr().err
