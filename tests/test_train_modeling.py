"""The trainer's model setup (--init fine-tuning, backbone weights) and its frozen config."""

import dataclasses
import os
import urllib.error

import pytest
import torch
import torchvision

from ssdlite import build_model, load_checkpoint, save_checkpoint
from ssdlite.core.model import IMAGENET_MEAN
from train.config import TrainConfig, UsageError, parse_args, resolve_config
from train.modeling import build_train_model, load_eval_model, model_from_init


def _tf_style_checkpoint(path, class_names):
    torch.manual_seed(1)
    model = build_model("ssdlite300_mobilenet_v2_tf", num_classes=len(class_names) + 1, width_mult=0.35, image_size=96)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_checkpoint(path, model, class_names)
    return model


def test_init_loads_backbone_extras_and_box_head_and_resets_class_predictors(tmp_path):
    source = _tf_style_checkpoint(tmp_path / "person.pt", ["person"])
    built = model_from_init(str(tmp_path / "person.pt"), ["car", "bus", "bike"], None)
    model, reinitialised = built.model, built.reinitialised
    assert model.config.num_classes == 4 and model.config.anchor_style == "tf" and model.config.image_size == 96
    assert len(reinitialised) == 2 * len(model.class_head.predictors)
    ours, theirs = model.state_dict(), source.state_dict()
    for key, value in ours.items():
        if key in reinitialised:
            assert value.shape != theirs[key].shape or not torch.equal(value, theirs[key])
        else:
            assert torch.equal(value, theirs[key]), key  # backbone, extras, box head, class-head depthwise

    same = model_from_init(str(tmp_path / "person.pt"), ["person"], 128)
    assert same.reinitialised == [] and same.model.config.image_size == 128
    assert all(torch.equal(v, theirs[k]) for k, v in same.model.state_dict().items())


def test_init_by_zoo_name_fine_tunes_the_converted_person_detector(person_checkpoint):
    person = load_checkpoint(person_checkpoint)[0].state_dict()
    built = model_from_init("tf-pedestrian", ["cat", "dog"], None)
    model = built.model
    assert model.config.num_classes == 3 and model.config.anchor_style == "tf" and model.config.image_size == 300
    assert all(torch.equal(v, person[k]) for k, v in model.state_dict().items() if k not in built.reinitialised)

    kept = model_from_init("tf-pedestrian", ["person"], None)
    assert kept.reinitialised == [] and all(torch.equal(v, person[k]) for k, v in kept.model.state_dict().items())
    with pytest.raises(UsageError, match="no-such-model: no such model file, and not a model-zoo name"):
        model_from_init("no-such-model", ["a"], None)


def config_from(argv: list[str], world_size: int = 1) -> TrainConfig:
    args, explicit = parse_args(argv)
    return resolve_config(args, explicit, world_size)


def test_config_is_frozen_and_takes_the_recipe_of_the_data(tmp_path):
    embedded = config_from([])
    assert embedded.recipe == "embedded" and embedded.backbone_weights is None and embedded.data.kind == "embedded"
    assert embedded.image_size == 160 and embedded.optimizer == "adamw"
    with pytest.raises(dataclasses.FrozenInstanceError):
        embedded.epochs = 3

    (tmp_path / "annotations").mkdir()
    coco = config_from(["--data-dir", str(tmp_path), "--batch-size", "24"], world_size=8)
    assert coco.recipe == "coco" and coco.backbone_weights == "imagenet" and coco.optimizer == "sgd"
    assert coco.lr == pytest.approx(0.2 * 24 * 8 / 256)  # torchvision's 0.15 for 8 x 24
    assert coco.data.train_ann == str(tmp_path / "annotations" / "instances_train2017.json")
    assert config_from(["--data-dir", str(tmp_path), "--backbone-weights", "none"]).backbone_weights is None
    assert config_from(["--backbone-weights", "imagenet", "--width-mult", "1"]).backbone_weights == "imagenet"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--init", "tf-pedestrian", "--backbone-weights", "imagenet"], "drop --backbone-weights"),
        (["--init", "tf-pedestrian", "--model", "ssdlite320_mobilenet_v2"], "drop --model"),
        (["--backbone-weights", "/no/such/file.pth"], "not 'imagenet', 'none' or an existing file"),
        (["--data", "x.yaml", "--data-dir", "."], "give one kind of data, not --data-dir and --data"),
        (["--train-ann", "a.json"], "missing --train-images, --val-ann, --val-images"),
        # checked before any data is read or anything downloaded:
        (["--backbone-weights", "imagenet"], "no published ImageNet weights for mobilenet_v2 at width_mult=0.5"),
        (["--model", "ssdlite320_mobilenet_v1", "--width-mult", "1", "--backbone-weights", "imagenet"], "mobilenet_v1"),
        (["--model", "nonesuch", "--backbone-weights", "imagenet"], "unknown model preset 'nonesuch'"),
    ],
)
def test_arguments_that_do_not_fit_together_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):  # UsageError or BackboneWeightsError: one line in main
        config_from(argv)


def test_build_train_model_puts_imagenet_weights_only_into_the_backbone(monkeypatch):
    """The trainer passes --backbone-weights through to ssdlite's build_model."""
    seen = {}

    def fake_build_model(name, *, num_classes, backbone_weights=None, **overrides):
        seen.update(name=name, num_classes=num_classes, backbone_weights=backbone_weights, **overrides)
        model = build_model(name, num_classes=num_classes, **overrides)
        model.backbone_weights = f"loaded {backbone_weights}"
        return model

    monkeypatch.setattr("train.modeling.build_model", fake_build_model)
    config = dataclasses.replace(config_from(["--width-mult", "0.35", "--image-size", "96"]), backbone_weights="x.pth")
    built = build_train_model(config, ["a", "b"])
    assert seen == {
        "name": "ssdlite320_mobilenet_v2",
        "num_classes": 3,
        "backbone_weights": "x.pth",
        "image_size": 96,
        "width_mult": 0.35,
    }
    assert built.reinitialised == ["class_head"] and "backbone loaded x.pth" in built.origin


def tiny_coco(tmp_path) -> list[str]:
    """A COCO-format dataset of 8 random 64x48 images with one box each; its --train/--val arguments."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in range(1, 9)]
    for image in images:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            tmp_path / "images" / image["file_name"]
        )
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 30, 20]} for i in range(1, 9)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    images_dir = str(tmp_path / "images")
    return ["--train-ann", str(ann), "--train-images", images_dir, "--val-ann", str(ann), "--val-images", images_dir]


SMALL_RUN = ["--model", "ssdlite320_mobilenet_v3_small", "--image-size", "96", "--epochs", "1", "--batch-size", "4"]
SMALL_RUN += ["--workers", "0", "--no-progress", "--augment", "none"]


def test_train_cli_starts_from_imagenet_weights_in_the_torch_hub_cache(tmp_path, torch_home, capsys):
    """Real data defaults to --backbone-weights imagenet; the checkpoint records ImageNet's mean/std and eps."""
    from tests.test_backbone_weights import save_to_cache, torchvision_classifier
    from train import coco as train_coco

    classifier = torchvision_classifier("mobilenet_v3_small")
    save_to_cache(classifier, torchvision.models.MobileNet_V3_Small_Weights, torch_home)
    out_dir = tmp_path / "out"
    assert train_coco.main([*tiny_coco(tmp_path), *SMALL_RUN, "--output-dir", str(out_dir)]) == 0
    log = capsys.readouterr().out
    assert "backbone torchvision MobileNet_V3_Small_Weights.IMAGENET1K_V1 (67.668% ImageNet top-1)" in log
    model, _ = load_checkpoint(out_dir / "last.pt")
    assert model.config.mean == IMAGENET_MEAN and model.config.bn_eps == 1e-3


def test_train_cli_offline_names_the_url_and_the_cache_file_in_one_line(tmp_path, torch_home, monkeypatch, capsys):
    from train import coco as train_coco

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert train_coco.main([*tiny_coco(tmp_path), *SMALL_RUN, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    url = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.url
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: cannot download {url}") and "Traceback" not in err
    assert str(torch_home / os.path.basename(url)) in line and "--backbone-weights none" in line


def test_eval_model_from_an_onnx_export_and_its_refusals(tmp_path):
    from ssdlite import export_onnx

    model = build_model("ssdlite320_mobilenet_v2", num_classes=3, width_mult=0.35, image_size=96).eval()
    export_onnx(model, ["a", "b"], tmp_path / "model.onnx")
    loaded, class_names = load_eval_model(tmp_path / "model.onnx", torch.device("cpu"))
    assert class_names == ["a", "b"] and loaded.config == model.config
    torch.testing.assert_close(loaded.anchors, model.anchors)
    images = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        for got, expected in zip(loaded(images), model(images), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    with pytest.raises(UsageError, match=r"model.onnx: ONNX Runtime runs on the CPU here"):
        load_eval_model(tmp_path / "model.onnx", torch.device("cuda"))
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(UsageError, match="text.onnx: not a loadable ONNX model"):
        load_eval_model(tmp_path / "text.onnx", torch.device("cpu"))
