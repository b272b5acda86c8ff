"""ImageNet backbone weights: torchvision's cache, files, the config they imply, and every refusal.

No network: torchvision's own weights API stays in use, its torch hub cache is pre-filled with a
randomly initialised torchvision classifier saved under the file name torchvision expects.
"""

import os
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from ssdlite.core.backbones.imagenet import (
    BackboneWeightsError,
    check_backbone_weights,
    load_backbone_weights,
)
from ssdlite.core.model import IMAGENET_MEAN, IMAGENET_STD, SSDLite, build_model, get_config

from .test_backbones import assert_nontrivial, calibrate_bn

# preset -> (torchvision classifier, its IMAGENET1K_V1 weights, BN eps, index of the stride-16 block)
CASES = {
    "ssdlite320_mobilenet_v2": ("mobilenet_v2", torchvision.models.MobileNet_V2_Weights, 1e-5, 14),
    "ssdlite320_mobilenet_v3_large": ("mobilenet_v3_large", torchvision.models.MobileNet_V3_Large_Weights, 1e-3, 13),
    "ssdlite320_mobilenet_v3_small": ("mobilenet_v3_small", torchvision.models.MobileNet_V3_Small_Weights, 1e-3, 9),
}


def torchvision_classifier(name: str, seed: int = 0) -> nn.Module:
    """A torchvision ImageNet classifier with random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)()
    calibrate_bn(model.features, torch.randn(2, 3, 64, 64))
    return model


def save_to_cache(model: nn.Module, weights, checkpoints) -> None:
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoints / os.path.basename(weights.IMAGENET1K_V1.url))


def assert_backbone_is(model: SSDLite, classifier: nn.Module) -> None:
    ours = model.backbone.features.state_dict()
    theirs = classifier.features.state_dict()
    assert len(ours) == len(theirs)
    for (our_key, our_value), (their_key, their_value) in zip(ours.items(), theirs.items(), strict=True):
        assert torch.equal(our_value, their_value), (our_key, their_key)


@pytest.mark.parametrize("preset", sorted(CASES))
def test_imagenet_weights_from_the_torch_hub_cache(preset, torch_home):
    name, weights, eps, tap = CASES[preset]
    classifier = torchvision_classifier(name).eval()
    save_to_cache(classifier, weights, torch_home)

    torch.manual_seed(1)
    scratch = build_model(preset, num_classes=5)
    torch.manual_seed(1)
    model = build_model(preset, num_classes=5, backbone_weights="imagenet").eval()

    assert_backbone_is(model, classifier)
    scratch_state = scratch.state_dict()
    outside = [k for k in model.state_dict() if not k.startswith("backbone.")]
    assert len(outside) > 100
    for key in outside:
        assert torch.equal(model.state_dict()[key], scratch_state[key]), key

    assert model.config.mean == IMAGENET_MEAN and model.config.std == IMAGENET_STD
    assert model.config.bn_eps == eps and model.config.padding == "torch"
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {eps}
    assert model.backbone_weights.startswith(f"torchvision {weights.__name__}.IMAGENET1K_V1 (")
    assert model.backbone_weights.endswith(" tensors")
    assert SSDLite(model.config).config == model.config  # a checkpoint's config rebuilds the same network

    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        stride16, stride32 = model.backbone(x)
        expected16 = classifier.features[tap].block[0] if name != "mobilenet_v2" else classifier.features[tap].conv[0]
        expected16 = expected16(classifier.features[:tap](x))
        expected32 = classifier.features(x)
    assert_nontrivial(expected16)
    assert_nontrivial(expected32)
    torch.testing.assert_close(stride16, expected16, atol=1e-5, rtol=0)
    torch.testing.assert_close(stride32, expected32, atol=1e-5, rtol=0)


def test_from_scratch_is_unchanged():
    torch.manual_seed(3)
    model = build_model("ssdlite320_mobilenet_v3_small", num_classes=5, backbone_weights=None)
    torch.manual_seed(3)
    reference = SSDLite(get_config("ssdlite320_mobilenet_v3_small", num_classes=5))
    assert model.backbone_weights is None and model.config == reference.config
    for (key, value), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(value, expected), key


@pytest.mark.parametrize("as_path", [str, os.fspath, lambda p: p])
def test_weights_from_a_file(tmp_path, as_path):
    classifier = torchvision_classifier("mobilenet_v3_small")
    path = tmp_path / "mnv3_small.pth"
    torch.save(classifier.state_dict(), path)  # classifier.* included: ignored
    model = build_model("ssdlite320_mobilenet_v3_small", num_classes=3, backbone_weights=as_path(path))
    assert_backbone_is(model, classifier)
    count = sum(not k.endswith("num_batches_tracked") for k in classifier.features.state_dict())
    assert model.backbone_weights == f"{path} (torchvision mobilenet_v3_small layout): {count} tensors"
    # Explicit settings that agree with the weights are fine.
    model = build_model(
        "ssdlite320_mobilenet_v3_small", backbone_weights=path, mean=list(IMAGENET_MEAN), bn_eps=0.001, padding="torch"
    )
    assert_backbone_is(model, classifier)


def test_tf_preset_takes_the_settings_of_the_weights(tmp_path):
    classifier = torchvision_classifier("mobilenet_v2")
    path = tmp_path / "mnv2.pth"
    torch.save({k: v for k, v in classifier.state_dict().items() if k.startswith("features.")}, path)
    model = build_model("ssdlite300_mobilenet_v2_tf", backbone_weights=path)
    assert_backbone_is(model, classifier)
    config = model.config
    assert (config.mean, config.std, config.bn_eps, config.padding) == (IMAGENET_MEAN, IMAGENET_STD, 1e-5, "torch")
    assert (config.anchor_style, config.image_size) == ("tf", 300)  # the rest of the preset stays


def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.parametrize(
    "preset, overrides, parts",
    [
        ("ssdlite320_mobilenet_v1", {}, ["mobilenet_v1", "no published ImageNet weights", "--backbone-weights none"]),
        ("ssdlite320_mobilenet_v2", {"width_mult": 0.5}, ["mobilenet_v2", "width_mult=0.5", "only 1.0"]),
        ("ssdlite320_mobilenet_v3_large_torchvision", {}, ["full tail", "ssdlite320_mobilenet_v3_large preset"]),
        ("ssdlite320_mobilenet_v2", {"mean": (127.5,) * 3}, ["mean=(127.5, 127.5, 127.5)", "drop the mean override"]),
        ("ssdlite320_mobilenet_v2", {"std": (1.0, 1.0, 1.0)}, ["std=", "drop the std override"]),
        ("ssdlite320_mobilenet_v2", {"bn_eps": 1e-3}, ["bn_eps=0.001", "bn_eps=1e-05"]),
        ("ssdlite320_mobilenet_v3_large", {"bn_eps": 1e-5}, ["bn_eps=1e-05", "bn_eps=0.001"]),
        ("ssdlite300_mobilenet_v2_tf", {"padding": "same"}, ["padding='same'", "padding='torch'"]),
    ],
)
def test_refusals_before_loading_anything(preset, overrides, parts, torch_home, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("must refuse before downloading")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(BackboneWeightsError) as error:
        build_model(preset, backbone_weights="imagenet", **overrides)
    assert_one_line(error, *parts)
    assert isinstance(error.value, ValueError)


def test_check_backbone_weights(tmp_path):
    check_backbone_weights("mobilenet_v2")
    check_backbone_weights(get_config("ssdlite320_mobilenet_v3_small"))
    check_backbone_weights("mobilenet_v1", weights=None)  # from scratch: anything goes
    with pytest.raises(BackboneWeightsError, match="mobilenet_v1"):
        check_backbone_weights(get_config("ssdlite320_mobilenet_v1"))
    with pytest.raises(BackboneWeightsError, match="width_mult=0.75"):
        check_backbone_weights(get_config("ssdlite320_mobilenet_v2", width_mult=0.75))
    with pytest.raises(BackboneWeightsError, match="width_mult=0.5"):
        check_backbone_weights("mobilenet_v3_large", 0.5)
    with pytest.raises(BackboneWeightsError, match="resnet"):
        check_backbone_weights("resnet50")
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        check_backbone_weights("mobilenet_v2", weights=tmp_path / "missing.pth")


def test_missing_unreadable_and_foreign_files(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(BackboneWeightsError) as error:
        build_model("ssdlite320_mobilenet_v2", backbone_weights=missing)
    assert_one_line(error, str(missing), "does not exist")

    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a state dict\n" * 10)
    with pytest.raises(BackboneWeightsError) as error:
        build_model("ssdlite320_mobilenet_v2", backbone_weights=garbage)
    assert_one_line(error, str(garbage), "not a loadable state dict")

    foreign = tmp_path / "foreign.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, foreign)
    with pytest.raises(BackboneWeightsError) as error:
        build_model("ssdlite320_mobilenet_v2", backbone_weights=foreign)
    assert_one_line(error, str(foreign), "no features.* tensors")


def test_mismatching_file_names_the_first_tensor_that_does_not_fit(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(torchvision_classifier("mobilenet_v3_small").state_dict(), path)
    torch.manual_seed(0)
    reference = build_model("ssdlite320_mobilenet_v3_large")
    with pytest.raises(BackboneWeightsError) as error:
        build_model("ssdlite320_mobilenet_v3_large", backbone_weights=path)
    # Small's first bneck has squeeze-excitation where Large's goes straight to the projection.
    expected = "tensor features.1.block.1.fc1.weight (8, 16, 1, 1) does not fit features.1.conv.1.weight (16, 16, 1, 1)"
    assert_one_line(error, str(path), expected)

    # Nothing is loaded on failure, even where the leading tensors fit.
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large")
    with pytest.raises(BackboneWeightsError):
        load_backbone_weights(model.backbone, "mobilenet_v3_large", path)
    for (key, value), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(value, expected), key

    # A truncated file: the first missing tensor is named.
    truncated = tmp_path / "truncated.pth"
    state = torchvision_classifier("mobilenet_v3_large").state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("features.16.")}, truncated)
    with pytest.raises(BackboneWeightsError) as error:
        build_model("ssdlite320_mobilenet_v3_large", backbone_weights=truncated)
    assert_one_line(error, str(truncated), "no tensor for features.16.0.weight")


def test_offline_says_where_to_put_the_file(torch_home, monkeypatch):
    url = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.url
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(BackboneWeightsError) as error:
        build_model("ssdlite320_mobilenet_v3_small", backbone_weights="imagenet")
    cache = os.path.join(torch_home, "mobilenet_v3_small-047dcff4.pth")
    assert calls == [url] == ["https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"]
    assert_one_line(error, url, f"place that file at {cache} by hand", "--backbone-weights none", "name resolution")
    assert not os.path.exists(cache)


def test_corrupt_cache_file_says_to_delete_it(torch_home):
    torch_home.mkdir(parents=True)
    cache = torch_home / os.path.basename(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url)
    cache.write_bytes(b"\x00" * 100)
    with pytest.raises(BackboneWeightsError) as error:
        build_model("ssdlite320_mobilenet_v2", backbone_weights="imagenet")
    assert_one_line(error, f"cannot load {cache}", "delete it")
