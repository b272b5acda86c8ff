"""ImageNet-pretrained weights for the MobileNetV2 / V3 backbones, from torchvision.

We use torchvision's ``IMAGENET1K_V1`` weights: torchvision's detection reference
(``ssdlite320_mobilenet_v3_large``, 21.3 COCO AP) starts from them, while the ``IMAGENET1K_V2``
weights come from a heavy-regularisation recipe tuned for classification accuracy, not transfer.

``"imagenet"`` goes through torchvision's weights API, which downloads into the torch hub cache
(``$TORCH_HOME/hub/checkpoints/<file name of the URL>``) on first use; a path names a file with a
torchvision-format state dict (the ``features.*`` tensors of ``torchvision.models.mobilenet_v2()``,
``mobilenet_v3_large()`` or ``mobilenet_v3_small()``; ``classifier.*`` is ignored). Our ``features``
mirror torchvision's layer for layer, but MobileNetV3's bneck layers are ``block.*`` there and
``conv.*`` here (with the projection's conv and BN as separate modules), so tensors are paired in
order and every pair must agree on layer index, tensor kind and shape; any disagreement is an error
naming the file and the tensor, never a partial load.
"""

import os
import warnings
from collections.abc import Mapping
from itertools import zip_longest

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V2_Weights, MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights

from ...errors import SSDLiteError

IMAGENET = "imagenet"

# BatchNorm epsilon of torchvision's ImageNet classifiers; a model loading their weights must use it.
# MobileNetV2: nn.BatchNorm2d's default (torchvision/models/mobilenetv2.py, ``norm_layer = nn.BatchNorm2d``).
# MobileNetV3: torchvision/models/mobilenetv3.py, ``partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)``.
TORCHVISION_BN_EPS = {"mobilenet_v2": 1e-5, "mobilenet_v3_large": 1e-3, "mobilenet_v3_small": 1e-3}

_WEIGHTS = {
    "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V1,
    "mobilenet_v3_large": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "mobilenet_v3_small": MobileNet_V3_Small_Weights.IMAGENET1K_V1,
}

_FROM_SCRATCH = "pass backbone_weights=None / --backbone-weights none to train from scratch"
_NUM_BATCHES = "num_batches_tracked"


class BackboneWeightsError(SSDLiteError, ValueError):
    """Pretrained backbone weights that cannot be used: unsupported backbone, bad file, offline."""


def check_backbone_weights(backbone, width_mult: float = 1.0, weights: str | os.PathLike | None = IMAGENET) -> None:
    """Fails early (before any data loading) if ``weights`` cannot initialise this backbone.

    Checks the backbone and width, and that a weights file exists; it neither downloads nor reads
    anything, so a file can still fail to load later (``load_backbone_weights`` says why).

    Args:
        backbone: a backbone name (``SSDLiteConfig.backbone``) or an ``SSDLiteConfig``, whose
            ``backbone`` and ``width_mult`` are then checked (and the ``width_mult`` argument ignored).
        width_mult: the backbone's width multiplier; ImageNet weights exist at 1.0 only.
        weights: ``"imagenet"``, a path to a torchvision-format state dict, or ``None`` (from
            scratch: always fine).

    Raises:
        BackboneWeightsError: with a one-line reason.
    """
    if weights is None:
        return
    if not isinstance(backbone, str):
        backbone, width_mult = backbone.backbone, backbone.width_mult
    if backbone == "mobilenet_v1":
        raise BackboneWeightsError(
            f"mobilenet_v1 has no published ImageNet weights (torchvision has none); {_FROM_SCRATCH}"
        )
    if backbone == "mobilenet_v3_large_reduced_tail":
        raise BackboneWeightsError(
            "torchvision's ImageNet MobileNetV3-Large has the full tail, not the reduced one; "
            "use the ssdlite320_mobilenet_v3_large preset for ImageNet backbone weights"
        )
    if backbone not in _WEIGHTS:
        raise BackboneWeightsError(f"no ImageNet weights for backbone {backbone!r}; supported: {sorted(_WEIGHTS)}")
    if width_mult != 1.0:
        raise BackboneWeightsError(
            f"no published ImageNet weights for {backbone} at width_mult={width_mult} (only 1.0); {_FROM_SCRATCH}"
        )
    if os.fspath(weights) != IMAGENET and not os.path.isfile(weights):
        raise BackboneWeightsError(f"backbone weights file {os.fspath(weights)} does not exist")


def load_backbone_weights(backbone: nn.Module, name: str, weights: str | os.PathLike, *, progress: bool = False) -> str:
    """Overwrites ``backbone``'s tensors (parameters and BN statistics) with pretrained ones.

    Nothing else is touched: build the model as usual first (so everything outside the backbone
    draws the same random numbers as without pretrained weights), then call this.

    Args:
        backbone: the model's backbone (``SSDLite.backbone``), built at width 1.0.
        name: its name, e.g. ``"mobilenet_v2"``.
        weights: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``, downloaded to the torch hub cache
            on first use) or a path to a torchvision-format state dict.
        progress: show a download progress bar on stderr.

    Returns:
        What was loaded, for a log line, e.g.
        ``"torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (71.878% ImageNet top-1): 260 tensors"``.

    Raises:
        BackboneWeightsError: one line naming the file (and the URL and cache path when a download
            fails, or the first tensor that does not fit).
    """
    check_backbone_weights(name, 1.0, weights)
    if os.fspath(weights) == IMAGENET:
        source = _WEIGHTS[name]
        path = _cache_path(source.url)
        state = _download(source, path, progress)
        top1 = source.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        description = f"torchvision {source!r} ({top1}% ImageNet top-1)"
    else:
        path = os.fspath(weights)
        state = _read(path)
        description = f"{path} (torchvision {name} layout)"
    loaded = _pair(backbone.state_dict(), state, path)
    backbone.load_state_dict(loaded, strict=True)
    count = sum(not key.endswith(_NUM_BATCHES) for key in loaded)
    return f"{description}: {count} tensors"


def _cache_path(url: str) -> str:
    # Where torch.hub.load_state_dict_from_url keeps (and looks for) the file.
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _download(source, path: str, progress: bool) -> Mapping:
    was_cached = os.path.isfile(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return source.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as error:  # URLError, HTTPError, OSError, a bad hash, an unreadable file: one line each
        if was_cached or os.path.isfile(path):
            raise BackboneWeightsError(
                f"cannot load {path} ({_one_line(error)}); delete it to download {source.url} again"
            ) from error
        raise BackboneWeightsError(
            f"cannot download {source.url} ({_one_line(error)}); place that file at {path} by hand, or {_FROM_SCRATCH}"
        ) from error


def _read(path: str) -> Mapping:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneWeightsError(f"{path} is not a loadable state dict ({_one_line(error)})") from error
    if not isinstance(state, Mapping) or not any(isinstance(k, str) and k.startswith("features.") for k in state):
        raise BackboneWeightsError(f"{path} is not a torchvision MobileNet state dict: it has no features.* tensors")
    return state


def _same_slot(ours: str, theirs: str) -> bool:
    """Same layer (``features.<i>``) and same kind of tensor (``weight``, ``running_var``, ...)."""
    a, b = ours.split("."), theirs.split(".")
    return a[:2] == b[:2] and a[-1] == b[-1]


def _pair(ours: Mapping[str, Tensor], theirs: Mapping, path: str) -> dict[str, Tensor]:
    """Our state-dict keys -> the file's tensors; raises on the first one that does not fit."""
    theirs = {k: v for k, v in theirs.items() if isinstance(k, str) and k.startswith("features.")}
    for key, value in theirs.items():
        if not isinstance(value, Tensor):
            raise BackboneWeightsError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
    our_keys = [k for k in ours if not k.endswith(_NUM_BATCHES)]
    their_keys = [k for k in theirs if not k.endswith(_NUM_BATCHES)]
    if set(our_keys) == set(their_keys):  # torchvision's own names (MobileNetV2): pair by name
        their_keys = our_keys
    loaded = {}
    for our_key, their_key in zip_longest(our_keys, their_keys):
        if their_key is None:
            raise BackboneWeightsError(
                f"{path}: has no tensor for {our_key} {tuple(ours[our_key].shape)} "
                f"({len(their_keys)} backbone tensors, the model needs {len(our_keys)})"
            )
        if our_key is None:
            raise BackboneWeightsError(
                f"{path}: tensor {their_key} {tuple(theirs[their_key].shape)} has no place in the model "
                f"({len(their_keys)} backbone tensors, the model needs {len(our_keys)})"
            )
        mine, value = ours[our_key], theirs[their_key]
        if not _same_slot(our_key, their_key) or mine.shape != value.shape:
            raise BackboneWeightsError(
                f"{path}: tensor {their_key} {tuple(value.shape)} does not fit {our_key} {tuple(mine.shape)}"
            )
        loaded[our_key] = value
        if our_key.endswith("running_mean"):  # the BN's step count, kept as ours when the file has none
            count_key = our_key[: -len("running_mean")] + _NUM_BATCHES
            their_count = their_key[: -len("running_mean")] + _NUM_BATCHES
            if count_key in ours:
                loaded[count_key] = theirs.get(their_count, ours[count_key])
    return loaded
