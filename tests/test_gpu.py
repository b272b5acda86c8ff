"""What could break on CUDA: forward, Detector, training step, loading and postprocess, each against the CPU.

All skip without CUDA; ``python -m bench.gpu`` runs them (``pytest -m gpu tests``) on a GPU machine.
Parity tests turn TF32 off: cuDNN runs fp32 convolutions in TF32 by default on Ampere and later,
whose 10-bit mantissa moves outputs far more than the 1e-4 these comparisons allow.
"""

import copy

import numpy as np
import pytest
import torch

from ssdlite import Detector, PostprocessConfig, build_model, load_backend, save_checkpoint
from ssdlite.core.anchors import generate_anchors
from ssdlite.core.loss import SSDLoss, pad_targets
from ssdlite.core.postprocess import Detections, postprocess
from ssdlite.images import SAMPLE_PHOTOS, preprocess, read_image

from .test_backbones import calibrate_bn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def exact_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [read_image(path) for path in sorted(SAMPLE_PHOTOS.glob("*.jpg"))]


def calibrated(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """``model`` in eval mode with BatchNorm statistics measured on ``images``.

    With random statistics most deep activations vanish, so outputs are nearly the biases and
    many anchors get the very same logits: such exact ties make NMS keep an arbitrary one of them
    on each device, and a comparison of near-constant outputs would check little.
    """
    calibrate_bn(model, images)
    with torch.no_grad():
        model(images)
    return model.eval()


@pytest.fixture
def calibrated_model(photos):
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v2", num_classes=len(NAMES) + 1, width_mult=0.5, image_size=160)
    return calibrated(model, preprocess(photos, model.config.image_size)[0])


def unmatched(want: list[dict], got: list[dict], score_atol: float, box_atol: float) -> tuple[list, list]:
    """Detections of ``want`` with no counterpart in ``got`` (same class, close box and score), and the rest of ``got``.

    Order-free: scores that tie to float precision may come out in either order on two devices.
    """
    left, missing = list(got), []
    for d in want:
        match = next(
            (
                g
                for g in left
                if g["class_id"] == d["class_id"]
                and abs(g["score"] - d["score"]) <= score_atol
                and np.abs(np.subtract(g["box"], d["box"])).max() <= box_atol
            ),
            None,
        )
        if match is None:
            missing.append(d)
        else:
            left.remove(match)
    return missing, left


def as_dicts(detections: Detections) -> list[dict]:
    boxes, scores, labels = (t.tolist() for t in (detections.boxes, detections.scores, detections.labels))
    return [{"box": b, "score": s, "class_id": c} for b, s, c in zip(boxes, scores, labels, strict=True)]


@pytest.mark.parametrize(
    "preset, options",
    [
        ("ssdlite320_mobilenet_v2", {"num_classes": 4, "width_mult": 0.5, "image_size": 160}),
        ("ssdlite320_mobilenet_v2", {"num_classes": 91}),
        ("ssdlite300_mobilenet_v2_tf", {"num_classes": 91}),
    ],
)
def test_forward_on_cuda_equals_cpu(exact_fp32, preset, options):
    torch.manual_seed(0)
    model = build_model(preset, **options)
    size = model.config.image_size
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1)) * 255
    model = calibrated(model, images)
    with torch.no_grad():
        want = model(images)
        gpu_model = copy.deepcopy(model).cuda().to(memory_format=torch.channels_last)
        got = gpu_model(images.cuda().contiguous(memory_format=torch.channels_last))
    for g, w in zip(got, want, strict=True):
        assert g.is_cuda
        torch.testing.assert_close(g.cpu(), w, rtol=1e-4, atol=1e-4)


def test_default_precision_forward_stays_close(calibrated_model, photos):
    # TF32 is what users get on the GPU unless they turn it off: close, not equal.
    batch, _ = preprocess(photos, calibrated_model.config.image_size)
    with torch.no_grad():
        want = calibrated_model(batch)
        got = copy.deepcopy(calibrated_model).cuda()(batch.cuda())
    for g, w in zip(got, want, strict=True):
        assert ((g.cpu() - w).norm() / w.norm()).item() < 1e-2


def test_detector_on_cuda_gives_the_cpu_detections_on_the_sample_photos(exact_fp32, calibrated_model, photos):
    cpu = Detector.from_model(copy.deepcopy(calibrated_model), NAMES, "cpu")
    cuda = Detector.from_model(copy.deepcopy(calibrated_model), NAMES, "cuda")
    assert cuda.anchors.is_cuda and next(cuda.backend.model.parameters()).is_cuda
    for options in ({}, {"score_threshold": 0.35, "max_detections": 20}, {"classes": ["dog"]}):
        want, got = cpu.predict_batch(photos, **options), cuda.predict_batch(photos, **options)
        assert len(got) == len(photos)
        for w, g in zip(want, got, strict=True):
            assert len(g) == len(w) > 0
            assert [d["score"] for d in g] == sorted((d["score"] for d in g), reverse=True)
            missing, extra = unmatched(w, g, score_atol=1e-4, box_atol=0.05)
            assert (missing, extra) == ([], [])
            if "classes" in options:
                assert {d["label"] for d in g} == {"dog"}
    # One image at a time goes through the same path.
    assert unmatched(cpu.predict(photos[0]), cuda.predict(photos[0]), 1e-4, 0.05) == ([], [])


def test_training_step_on_cuda_with_bf16_and_channels_last():
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v2", num_classes=4, width_mult=0.5, image_size=160)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 160, 160, generator=generator) * 255
    boxes, labels = [], []
    for _ in range(8):
        centre = torch.rand(3, 2, generator=generator) * 0.6 + 0.2
        half = torch.rand(3, 2, generator=generator) * 0.15 + 0.05
        boxes.append(torch.cat([centre - half, centre + half], dim=1).clamp(0, 1))
        labels.append(torch.randint(1, 4, (3,), generator=generator))

    def first_loss(device: str, amp: bool) -> torch.Tensor:
        replica = copy.deepcopy(model).to(device).train()
        criterion = SSDLoss(replica.anchors)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            outputs = replica(images.to(device))
        return criterion(*outputs, *pad_targets(boxes, labels, device=device))["loss"].detach().cpu()

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fp32 = first_loss("cuda", amp=False)
    reference = first_loss("cpu", amp=False)
    torch.testing.assert_close(fp32, reference, rtol=1e-4, atol=1e-5)
    assert first_loss("cuda", amp=True).item() == pytest.approx(reference.item(), rel=0.05)

    # As the trainer runs it: channels_last, bf16 autocast, SGD with momentum, clipped gradients.
    cuda_model = copy.deepcopy(model).cuda().train().to(memory_format=torch.channels_last)
    criterion = SSDLoss(cuda_model.anchors)
    optimizer = torch.optim.SGD(cuda_model.parameters(), lr=0.01, momentum=0.9)
    inputs = images.cuda().contiguous(memory_format=torch.channels_last)
    targets = pad_targets(boxes, labels, device="cuda")
    before = [p.detach().clone() for p in cuda_model.parameters()]
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs = cuda_model(inputs)
        assert outputs[1].dtype == torch.bfloat16
        loss = criterion(*outputs, *targets)["loss"]
        assert loss.dtype == torch.float32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in cuda_model.parameters() if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(cuda_model.parameters(), 10.0)
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # eight steps on one batch must fit it somewhat
    assert all(torch.isfinite(p).all() for p in cuda_model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(cuda_model.parameters(), before, strict=True))


def test_load_backend_on_cuda(tmp_path, exact_fp32, calibrated_model):
    checkpoint = save_checkpoint(tmp_path / "small.pt", calibrated_model, NAMES)
    images = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        want = calibrated_model(images)
    for backend, device in ((None, "cuda"), ("torch", "cuda:0"), ("auto", "auto")):
        runtime = load_backend(checkpoint, backend=backend, device=device)
        assert (runtime.name, runtime.device.type, runtime.class_names) == ("torch", "cuda", NAMES)
        got = runtime(images)
        for g, w in zip(got, want, strict=True):
            assert g.is_cuda
            torch.testing.assert_close(g.cpu(), w, rtol=1e-4, atol=1e-4)
    detector = Detector.load(checkpoint, device="cuda")
    assert detector.device.type == "cuda"
    assert len(detector.predict(np.zeros((120, 90, 3), np.uint8), score_threshold=0.0, max_detections=5)) == 5


@pytest.mark.parametrize("score_function", ["softmax", "sigmoid"])
def test_batched_postprocess_on_cuda_equals_cpu(score_function):
    generator = torch.Generator().manual_seed(0)
    anchors = generate_anchors("ssd", 160)
    box_regression = torch.randn(6, anchors.shape[0], 4, generator=generator) * 0.5
    class_logits = torch.randn(6, anchors.shape[0], 5, generator=generator) * 3
    class_logits[2] -= 100  # an image with nothing but background, for softmax and sigmoid alike
    class_logits[2, :, 0] += 200
    # No cut at candidates or max_detections, where a float-rounding tie could fall either way.
    settings = PostprocessConfig(
        score_function, score_threshold=0.6, nms_iou=0.45, max_detections=10**6, candidates_per_image=10**6
    )
    want = postprocess(box_regression, class_logits, anchors, settings)
    got = postprocess(box_regression.cuda(), class_logits.cuda(), anchors.cuda(), settings)
    assert len(got) == len(want) == 6
    assert len(want[2].scores) == 0 and len(got[2].scores) == 0
    assert sum(len(w.scores) for w in want) > 50
    for g, w in zip(got, want, strict=True):
        assert g.boxes.is_cuda and g.scores.is_cuda and g.labels.is_cuda
        assert unmatched(as_dicts(w), as_dicts(g), score_atol=1e-6, box_atol=1e-5) == ([], [])
        torch.testing.assert_close(g.scores.cpu(), w.scores, rtol=0, atol=1e-6)  # same order too
