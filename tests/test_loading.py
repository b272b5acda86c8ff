"""The one loader (zoo name | .pt | .onnx -> backend) and the config's postprocess section."""

import dataclasses

import pytest
import torch

from ssdlite import PRESETS, Detector, PostprocessConfig, SSDLiteConfig, export_onnx, get_config, save_checkpoint
from ssdlite.runtime import ModelLoadError, default_model, load_backend
from ssdlite.runtime.loading import choose_backend, model_format
from ssdlite.weights import ZooError, load_checkpoint

NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def files(tmp_path, small_model):
    checkpoint = save_checkpoint(tmp_path / "small.pt", small_model, NAMES)
    onnx_file = tmp_path / "small.onnx"
    export_onnx(small_model, NAMES, onnx_file)
    return checkpoint, onnx_file


def test_each_format_loads_on_its_own_backend_and_checkpoints_on_both(files, small_model):
    checkpoint, onnx_file = files
    image = torch.rand(1, 3, 160, 160) * 255
    with torch.no_grad():
        expected = small_model(image)
    for source, backend, name in [
        (checkpoint, None, "torch"),
        (checkpoint, "onnxruntime", "onnxruntime"),
        (checkpoint, "auto", "onnxruntime"),  # the CPU: ONNX Runtime is the faster there
        (onnx_file, None, "onnxruntime"),
        (onnx_file, "auto", "onnxruntime"),
    ]:
        runtime = load_backend(source, backend=backend)
        assert (runtime.name, runtime.class_names, runtime.config) == (name, NAMES, small_model.config)
        for got, want in zip(runtime(image), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


def test_combinations_it_cannot_honour_are_refused_before_any_loading(files, tmp_path):
    checkpoint, onnx_file = files
    with pytest.raises(ModelLoadError, match="small.onnx: the onnx format runs on onnxruntime, not on torch"):
        Detector.load(onnx_file, backend="torch")
    with pytest.raises(ModelLoadError, match="ONNX Runtime runs on the CPU here, not cuda"):
        load_backend(onnx_file, device="cuda")
    with pytest.raises(ModelLoadError, match="backend must be one of"):
        load_backend(checkpoint, backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="torch sees no CUDA GPU"):
            load_backend(checkpoint, backend="torch", device="cuda")
    with pytest.raises(ModelLoadError, match="unknown device 'gpu'"):
        load_backend(checkpoint, backend="torch", device="gpu")
    other = tmp_path / "model.engine"
    other.write_bytes(b"not ours")
    with pytest.raises(ModelLoadError, match=r"model.engine: not a model file this version can load \(suffixes"):
        load_backend(other)
    with pytest.raises(ZooError, match="no-such-model: no such model file, and not a model-zoo name"):
        load_backend("no-such-model")
    with pytest.raises(ZooError, match="missing.pt: no such model file"):
        load_backend(tmp_path / "missing.pt")


def test_zoo_names_have_a_format_without_fetching(monkeypatch, tmp_path):
    monkeypatch.setenv("SSDLITE_HOME", str(tmp_path))  # an empty cache: nothing fetched
    assert model_format("tf-pedestrian").name == "checkpoint"
    assert model_format("tf-pedestrian-int8").name == "onnx"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_backend("tf-pedestrian-int8", "auto", "auto") == ("onnxruntime", "cpu")
    assert choose_backend("tf-pedestrian", "auto", "auto") == ("torch", "cuda")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("device", "backend", "cuda", "expected"),
    [
        ("auto", None, False, "tf-pedestrian-int8"),  # a CPU: the INT8 build on ONNX Runtime
        ("auto", "auto", False, "tf-pedestrian-int8"),
        ("cpu", "auto", True, "tf-pedestrian-int8"),
        ("auto", "auto", True, "tf-pedestrian"),  # a GPU: float on torch
        ("cuda:1", None, True, "tf-pedestrian"),
        ("cpu", "torch", False, "tf-pedestrian"),  # torch cannot run the INT8 .onnx file
        ("auto", "onnxruntime", True, "tf-pedestrian-int8"),
    ],
)
def test_default_model_follows_where_it_runs(monkeypatch, tmp_path, device, backend, cuda, expected):
    monkeypatch.setenv("SSDLITE_HOME", str(tmp_path))  # nothing fetched
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    assert default_model(device, backend) == expected
    chosen = choose_backend(expected, backend, device)  # and the loader can run it there
    assert chosen[0] == ("onnxruntime" if expected.endswith("int8") else "torch")
    assert list(tmp_path.iterdir()) == []


def test_postprocess_settings_live_in_one_section_and_old_flat_configs_still_load(tmp_path, small_model):
    config = get_config("ssdlite320_mobilenet_v2", nms_iou=0.6, image_size=160)
    assert config.postprocess == PostprocessConfig(nms_iou=0.6) and config.image_size == 160
    assert SSDLiteConfig.from_dict(config.to_dict()) == config
    assert PRESETS["ssdlite300_mobilenet_v2_tf"].postprocess.score_function == "sigmoid"

    flat = {k: v for k, v in small_model.config.to_dict().items() if k != "postprocess"}
    flat.update(dataclasses.asdict(small_model.config.postprocess) | {"score_threshold": 0.2})
    assert SSDLiteConfig.from_dict(flat).postprocess.score_threshold == 0.2

    checkpoint = save_checkpoint(tmp_path / "old.pt", small_model, NAMES)
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"] = flat  # as version 1 files were written before the postprocess section
    torch.save(payload, checkpoint)
    model, _ = load_checkpoint(checkpoint)
    assert model.config == dataclasses.replace(small_model.config, postprocess=PostprocessConfig(score_threshold=0.2))

    with pytest.raises(ValueError, match="unknown PostprocessConfig fields"):
        SSDLiteConfig.from_dict({"postprocess": {"nms": 0.5}})
    with pytest.raises(ValueError, match="nms_iou must be in"):
        PostprocessConfig(nms_iou=0)
