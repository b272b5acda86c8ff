"""ExecuTorch (``.pte``) export and its runtime backend: float parity, INT8 (PT2E, XNNPACK), metadata, errors.

Each export lowers the whole graph (about 10-40 s on 2 cores), so the float and the INT8 program are
built once per module and shared by the tests.
"""

import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from service import Settings, create_app
from ssdlite import Detector, build_model
from ssdlite.cli.detect import main as detect_main
from ssdlite.cli.export import main as export_main
from ssdlite.core import SSDLiteConfig
from ssdlite.deploy import pte
from ssdlite.deploy.int8 import CalibrationError, load_calibration_images
from ssdlite.images import SAMPLE_PHOTOS, preprocess, read_image
from ssdlite.runtime.backends import ModelLoadError
from ssdlite.runtime.pte import ExecuTorchBackend

from .conftest import coco128_person_scores

pytest.importorskip("executorch", reason="ExecuTorch export needs: pip install 'ssdlite[edge]'")

NAMES = ["cat", "dog"]
QUANTIZE = "quantized_decomposed.quantize_per_tensor.default"  # the ops exist once ExecuTorch is imported
DEQUANTIZE = "quantized_decomposed.dequantize_per_tensor.default"
HARDTANH = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)


@pytest.fixture(scope="module")
def model():
    """A small model whose outputs depend on the image (the zoo's N(0, 0.03) init gives outputs near 1e-17)."""
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v2", num_classes=len(NAMES) + 1, width_mult=0.5, image_size=160)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.1, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def photos():
    """The two shipped photos, preprocessed: a channels-last batch, as ``preprocess`` returns it."""
    batch, _ = preprocess([read_image(path) for path in sorted(SAMPLE_PHOTOS.glob("*.jpg"))], 160)
    assert not batch.is_contiguous()
    return batch


@pytest.fixture(scope="module")
def float_program(model):
    return pte.export_pte(model, NAMES)


@pytest.fixture(scope="module")
def int8_export(model, photos):
    """(program bytes, the quantized graph it was lowered from, calibration images)."""
    calibration = load_calibration_images(SAMPLE_PHOTOS, model.config).images
    calibration = np.concatenate([calibration, calibration[..., ::-1]])  # and mirrored: 4 images
    graphs = []
    quantize = pte.quantize_pt2e

    def keep_graph(*args, **kwargs):
        graphs.append(quantize(*args, **kwargs))
        return graphs[0]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pte, "quantize_pt2e", keep_graph)
        data = pte.export_pte(model, NAMES, calibration=calibration)
    return data, graphs[0], calibration


@torch.no_grad()
def test_float_program_matches_torch_on_a_channels_last_batch(model, float_program, photos):
    backend = ExecuTorchBackend(float_program)
    boxes, logits = backend(photos)
    expected_boxes, expected_logits = model(photos)
    assert boxes.shape == expected_boxes.shape and logits.shape == expected_logits.shape
    assert expected_logits.std() > 0.5  # outputs that depend on the image, so the comparison means something
    assert torch.allclose(boxes, expected_boxes, atol=1e-4)
    assert torch.allclose(logits, expected_logits, atol=1e-4)


@torch.no_grad()
def test_non_contiguous_inputs_are_read_by_their_strides(model, float_program, photos):
    """The runtime reads an input's memory as contiguous NCHW: a channels-last image was read off by ~7."""
    backend = ExecuTorchBackend(float_program)
    for layout in (photos[:1], photos[:1].transpose(2, 3).contiguous().transpose(2, 3), photos[1:].flip(3)):
        assert not layout.is_contiguous()
        boxes, logits = backend(layout)
        expected_boxes, expected_logits = model(layout.contiguous())
        assert torch.allclose(boxes, expected_boxes, atol=1e-4)
        assert torch.allclose(logits, expected_logits, atol=1e-4)


def test_metadata_round_trip(model, float_program, tmp_path):
    path = tmp_path / "model.pte"
    path.write_bytes(float_program)
    for source in (float_program, path, str(path)):
        metadata = pte.read_pte_metadata(source)
        assert SSDLiteConfig.from_dict(metadata.pop("ssdlite_config")) == model.config
        assert metadata == {"class_names": NAMES, "precision": "float32"}
    backend = ExecuTorchBackend(path)
    assert (backend.name, backend.precision, backend.class_names) == ("executorch", "float32", NAMES)
    assert backend.config == model.config
    assert backend.device == torch.device("cpu")


@torch.no_grad()
def test_int8_program_stays_close_to_float(model, int8_export, photos):
    data, _, calibration = int8_export
    metadata = pte.read_pte_metadata(data)
    assert metadata["precision"] == "int8"
    assert metadata["calibration"] == {"method": "average-minmax", "images": 4}
    backend = ExecuTorchBackend(data)
    assert backend.precision == "int8"
    images = torch.from_numpy(calibration.copy())
    boxes, logits = backend(images)
    expected_boxes, expected_logits = model(images)
    # A random network at int8 has no training that keeps its activations in tame ranges, so the
    # bound is loose: errors a fraction of the outputs' spread (measured about 0.1), where a broken
    # graph (clipped outputs, wrong scales, misread input) lands near 1.
    for output, expected in ((boxes, expected_boxes), (logits, expected_logits)):
        assert (output - expected).abs().mean() < 0.25 * expected.std()
        assert np.corrcoef(output.flatten(), expected.flatten())[0, 1] > 0.95
    # Every feature map keeps its own range: the largest box offsets are not clipped to another map's.
    assert boxes.abs().amax() > 0.8 * expected_boxes.abs().amax()


def test_int8_graph_fuses_relu6_into_its_convolution_and_keeps_the_concatenations_float(int8_export):
    _, graph, _ = int8_export
    nodes = [node for node in graph.graph.nodes if node.op == "call_function"]
    relu6 = [node for node in nodes if node.target in HARDTANH]
    assert relu6, "the graph has no ReLU6"
    # No quantize/dequantize pair between a convolution and its ReLU6: the clamp is part of the conv.
    assert all(node.args[0].target == torch.ops.aten.conv2d.default for node in relu6)
    assert all(any(str(user.target) == QUANTIZE for user in node.users) for node in relu6)
    concatenations = [node for node in nodes if node.target == torch.ops.aten.cat.default]
    assert len(concatenations) == 2
    for cat in concatenations:
        assert not any(str(user.target) == QUANTIZE for user in cat.users)
        assert all(source.target == torch.ops.aten.reshape.default for source in cat.args[0])
        assert all(str(source.args[0].target) == DEQUANTIZE for source in cat.args[0])


def test_a_batch_runs_image_by_image(float_program, photos):
    backend = ExecuTorchBackend(float_program)
    boxes, logits = backend(photos)
    for i in range(len(photos)):
        single_boxes, single_logits = backend(photos[i : i + 1])
        assert torch.equal(boxes[i : i + 1], single_boxes) and torch.equal(logits[i : i + 1], single_logits)
    with pytest.raises(ValueError, match=r"\[N, 3, 160, 160\]"):
        backend(photos[:, :, :100])


@pytest.mark.parametrize("method", ["entropy", "percentile", "kl"])
def test_calibration_methods_xnnpack_cannot_express_are_refused(model, method):
    with pytest.raises(CalibrationError, match="average-minmax or minmax") as error:
        pte.export_pte(model, NAMES, calibration=np.zeros((1, 3, 160, 160), np.float32), calibration_method=method)
    assert "\n" not in str(error.value)


def test_files_that_are_not_ssdlite_programs_are_refused(tmp_path):
    not_a_program = tmp_path / "model.pte"
    not_a_program.write_bytes(b"PK\x03\x04 not an ExecuTorch program")
    with pytest.raises(ModelLoadError, match="not a loadable ExecuTorch program") as error:
        ExecuTorchBackend(not_a_program)
    assert "\n" not in str(error.value) and str(not_a_program) in str(error.value)
    with pytest.raises(ModelLoadError, match="no such file"):
        ExecuTorchBackend(tmp_path / "missing.pte")

    from executorch.exir import to_edge_transform_and_lower

    class AddOne(nn.Module):
        def forward(self, x):
            return x + 1

    foreign = to_edge_transform_and_lower(torch.export.export(AddOne(), (torch.zeros(2),))).to_executorch().buffer
    with pytest.raises(ModelLoadError, match="no ssdlite metadata"):
        ExecuTorchBackend(foreign)
    with pytest.raises(pte.ExecuTorchError, match="no ssdlite metadata"):
        pte.read_pte_metadata(foreign)


def test_a_missing_executorch_names_the_extra(model, float_program, monkeypatch):
    for module in ("executorch.exir", "executorch.runtime"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(pte.ExecuTorchError, match=r"pip install 'ssdlite\[edge\]'") as error:
        pte.export_pte(model, NAMES)
    assert "\n" not in str(error.value)
    with pytest.raises(ModelLoadError, match=r"pip install 'ssdlite\[edge\]'"):
        ExecuTorchBackend(float_program)


def test_the_thread_pool_cannot_change_under_loaded_programs(float_program):
    from executorch.extension.pybindings import portable_lib

    ExecuTorchBackend(float_program)
    threads = portable_lib._threadpool_get_thread_count()
    ExecuTorchBackend(float_program, threads=threads)  # the same count is fine
    with pytest.raises(ModelLoadError, match="same threads"):
        ExecuTorchBackend(float_program, threads=threads + 1)


@pytest.fixture(scope="module")
def person_pte(person_checkpoint, tmp_path_factory):
    """The zoo's person detector exported to .pte (float32) through the CLI."""
    path = tmp_path_factory.mktemp("pte") / "person.pte"
    assert export_main([str(person_checkpoint), "-o", str(path)]) == 0
    return path


def test_the_person_detector_runs_as_pte_everywhere_a_model_runs(person_pte, person_checkpoint, capsys):
    exported, reference = Detector.load(person_pte), Detector.from_checkpoint(person_checkpoint)
    assert exported.backend.name == "executorch" and exported.backend.precision == "float32"
    for photo in sorted(SAMPLE_PHOTOS.glob("*.jpg")):
        (expected,) = reference.predict(read_image(photo), score_threshold=0.3)
        (found,) = exported.predict(read_image(photo), score_threshold=0.3)
        assert np.abs(np.subtract(found["box"], expected["box"])).max() < 1e-2
        assert abs(found["score"] - expected["score"]) < 1e-4

    with TestClient(create_app(Settings(model=str(person_pte)))) as client:
        model = client.get("/model").json()
        assert model["backend"] == "executorch" and model["precision"] == "float32"
        with (SAMPLE_PHOTOS / "astronaut.jpg").open("rb") as photo:
            reply = client.post("/detect", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert reply.status_code == 200 and reply.json()["detections"][0]["label"] == "person"

    capsys.readouterr()
    assert detect_main(["--model", str(person_pte), str(SAMPLE_PHOTOS / "grace_hopper.jpg")]) == 0
    assert '"label": "person"' in capsys.readouterr().out


def test_evaluation_scores_the_pte_file_itself(person_pte, coco128, tmp_path):
    # The export itself scored on 128 real photos: the float checkpoint's person AP 0.195 / AP50 0.390.
    result = coco128_person_scores(person_pte, coco128, tmp_path)
    assert result["AP"] == pytest.approx(0.195, abs=0.002) and result["AP50"] == pytest.approx(0.390, abs=0.003)


@pytest.mark.slow
def test_int8_pte_person_ap_on_coco128_within_a_hundredth_of_float(person_checkpoint, coco128, tmp_path):
    """Measured: float 0.195, INT8 0.191 (64 coco128 photos, average-minmax)."""
    output = tmp_path / "person_int8.pte"
    photos = coco128 / "train2017"
    assert export_main([str(person_checkpoint), "-o", str(output), "--int8", "--calibration", str(photos)]) == 0
    assert coco128_person_scores(output, coco128, tmp_path)["AP"] > 0.195 - 0.01
