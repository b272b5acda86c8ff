"""Fine-tuning: the --init recipe, --freeze (weights and BatchNorm statistics) and the EMA's ramp."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssdlite import build_model, save_checkpoint
from ssdlite.core.loss import SSDLoss, pad_targets
from ssdlite.weights.checkpoint import read_checkpoint
from train.config import UsageError
from train.data import Batch
from train.engine import train_one_epoch
from train.modeling import freeze_layers
from train.optim import ModelEMA, build_optimizer
from train.synthetic import CLASSES

from .test_train_modeling import config_from

REPO = Path(__file__).resolve().parents[1]


def tiny_model():
    torch.manual_seed(0)
    return build_model("ssdlite320_mobilenet_v2", num_classes=3, width_mult=0.35, image_size=96)


def batches(count=3, size=4):
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        boxes = [torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.5, 0.1, 0.9, 0.5]]) for _ in range(size)]
        labels = [torch.tensor([1, 2]) for _ in range(size)]
        gt_boxes, gt_labels, gt_crowd = pad_targets(boxes, labels)
        images = torch.randint(0, 256, (size, 3, 96, 96), dtype=torch.uint8, generator=generator)
        out.append(Batch(images, gt_boxes, gt_labels, gt_crowd, torch.arange(size), torch.full((size, 2), 96), []))
    return out


def train_steps(model, frozen):
    optimizer = build_optimizer(model, "sgd", 0.05, 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    train_one_epoch(
        model, SSDLoss(model.anchors), optimizer, scheduler, batches(), torch.device("cpu"), 1, frozen=frozen,
        progress=False,
    )  # fmt: skip


def snapshot(module):
    return {name: value.clone() for name, value in module.state_dict().items()}


def changed(before, module):
    return {name for name, value in module.state_dict().items() if not torch.equal(before[name], value)}


@pytest.mark.parametrize("spec", ["backbone", "features", "4"])
def test_frozen_layers_keep_weights_and_batchnorm_statistics(spec):
    model = tiny_model()
    frozen = freeze_layers(model, spec)
    before = snapshot(model)
    train_steps(model, frozen)
    moved = changed(before, model)
    frozen_names = {
        "backbone": ("backbone.",),
        "features": ("backbone.", "extras."),
        "4": tuple(f"backbone.features.{i}." for i in range(4)),
    }[spec]
    assert not {name for name in moved if name.startswith(frozen_names)}, "a frozen layer changed"
    assert any("running_mean" in name for name in before if name.startswith(frozen_names))
    # what is not frozen trains, BatchNorm statistics included
    assert any(name.startswith("class_head.") for name in moved)
    assert any(name.startswith("box_head.") and "running_mean" in name for name in moved)
    if spec == "4":
        assert any(name.startswith("backbone.features.4.") for name in moved)
    if spec == "backbone":
        assert any(name.startswith("extras.") for name in moved)


def test_without_freeze_every_part_trains():
    model = tiny_model()
    assert freeze_layers(model, None) == []
    before = snapshot(model)
    train_steps(model, [])
    moved = changed(before, model)
    assert any(name.startswith("backbone.features.0.") for name in moved)


@pytest.mark.parametrize(
    "value, message",
    [
        ("head", "--freeze head: not 'backbone', 'features' or a positive number"),
        ("0", "--freeze 0: not"),
        ("-2", "--freeze -2: not"),
    ],
)
def test_bad_freeze_values_are_one_line_errors(value, message):
    with pytest.raises(UsageError, match=message):
        config_from(["--freeze", value])


def test_freeze_past_the_backbone_names_its_layer_count():
    with pytest.raises(UsageError, match=r"--freeze 40: the mobilenet_v2 backbone has 19 layers"):
        freeze_layers(tiny_model(), "40")


def test_init_selects_the_fine_tune_recipe_unless_overridden(tmp_path):
    tuned = config_from(["--init", "some.pt"])
    assert tuned.recipe == "finetune" and tuned.epochs == 10 and tuned.warmup_epochs == 1
    assert tuned.lr == pytest.approx(0.008 * 16 / 256) and tuned.augment == "ssd"
    overridden = config_from(["--init", "some.pt", "--epochs", "3", "--lr", "0.001", "--freeze", "backbone"])
    assert (overridden.epochs, overridden.lr, overridden.freeze) == (3, 0.001, "backbone")
    assert config_from([]).recipe == "embedded"


def test_ema_ramp_tracks_a_short_run_and_reaches_the_full_decay_on_a_long_one():
    model = torch.nn.Linear(4, 4)
    start = model.weight.detach().clone()
    ema = ModelEMA(model, decay=0.9998)
    for _ in range(50):  # a 50-step fine-tune moving the weights steadily
        with torch.no_grad():
            model.weight.add_(0.01)
        ema.update(model)
    travelled = (model.weight - start).norm()
    assert (ema.module.weight - model.weight).norm() < 0.15 * travelled
    ema.updates = 100_000
    assert ema.current_decay() == 0.9998
    ema.updates = 1000
    assert 0.99 < ema.current_decay() < 0.9998


def test_a_short_fine_tune_with_default_ema_moves_like_one_without(tmp_path):
    """The saved weights of a 6-step --init run move as far with the default EMA as with none,
    and --freeze backbone leaves the backbone exactly as the checkpoint had it."""
    torch.manual_seed(3)
    source = build_model("ssdlite320_mobilenet_v2", num_classes=len(CLASSES) + 1, width_mult=0.35, image_size=96)
    save_checkpoint(tmp_path / "start.pt", source, list(CLASSES))
    env = {**os.environ, "SSDLITE_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ["--init", str(tmp_path / "start.pt"), "--synthetic-train", "24", "--synthetic-val", "8"]
    common += ["--epochs", "2", "--batch-size", "8", "--lr", "0.02", "--workers", "0", "--no-progress"]
    moved = {}
    for name, extra in (("default", []), ("no-ema", ["--ema-decay", "0"]), ("frozen", ["--freeze", "backbone"])):
        run = subprocess.run(
            [sys.executable, "-m", "train.coco", *common, *extra, "--output-dir", str(tmp_path / name)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        saved = read_checkpoint(tmp_path / name / "last.pt")["model"]
        start = source.state_dict()
        weights = [name for name, _ in source.named_parameters()]
        moved[name] = sum(float((saved[k] - start[k]).norm()) for k in weights)
        if name == "frozen":
            assert all(torch.equal(saved[k], start[k]) for k in start if k.startswith("backbone."))
            assert "--freeze backbone" in run.stdout
    assert moved["default"] > 0.7 * moved["no-ema"], moved
