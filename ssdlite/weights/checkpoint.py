"""One checkpoint file: config + class names + weights (+ optional training state)."""

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..core import SSDLite, SSDLiteConfig
from ..errors import SSDLiteError

FORMAT = "ssdlite-checkpoint"
VERSION = 1


class CheckpointError(SSDLiteError, ValueError):
    """A file that is missing, corrupt or not an ssdlite checkpoint."""


def save_checkpoint(path: str | os.PathLike, model: SSDLite, class_names: list[str], **extra) -> Path:
    """Writes ``model`` atomically (temp file + rename), so a crash never leaves half a file.

    Args:
        path: destination file.
        model: the model; its ``config`` is stored beside the weights.
        class_names: names of labels 1..num_classes-1 (background excluded).
        **extra: more entries for training state (optimizer, epoch, ...): tensors, numbers,
            strings, and lists/dicts of those, so the file still loads with ``weights_only=True``.

    Returns:
        The path written.
    """
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    _check_class_names(model.config, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "class_names": list(class_names),
        "model": model.state_dict(),
        **extra,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Loads a checkpoint file's contents (``weights_only=True``) after checking its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ssdlite checkpoint (no '{FORMAT}' format marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')} is not supported (expected {VERSION})"
        )
    return payload


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SSDLite, list[str]]:
    """Rebuilds the model stored in ``path``.

    Returns:
        ``(model in eval mode on device, class_names)``.
    """
    payload = read_checkpoint(path)
    try:
        config = SSDLiteConfig.from_dict(payload["config"])
        class_names = list(payload["class_names"])
        _check_class_names(config, class_names)
        model = SSDLite(config)
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: checkpoint does not describe a valid model ({error})") from None
    return model.to(device).eval(), class_names


def _check_class_names(config: SSDLiteConfig, class_names: list[str]):
    if len(class_names) != config.num_classes - 1:
        raise ValueError(
            f"{len(class_names)} class names for a model with {config.num_classes - 1} classes (background excluded)"
        )
