"""The one place that turns what a user names (a zoo name or a model file) into a running backend.

``MODEL_FORMATS`` says which file suffixes are models and which backends run them;
:func:`load_backend` picks and checks the backend and device; :func:`default_model` names the zoo
model to run where none is named. ``Detector.load``, the service,
``ssdlite detect``, ``python -m train.coco --eval-only/--init`` and the benchmarks all come here.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..deploy import export_onnx
from ..weights import load_checkpoint, resolve
from ..weights.zoo import MODELS, ZooError, checkpoint_path
from .backends import BACKENDS, Backend, ModelLoadError, OnnxRuntimeBackend, TorchBackend
from .pte import ExecuTorchBackend
from .tflite import LiteRTBackend

AUTO = "auto"
CPU_RUNTIMES = {"onnxruntime": "ONNX Runtime", "litert": "LiteRT", "executorch": "ExecuTorch"}
FLOAT_DEFAULT = "tf-pedestrian"  # the zoo's person detector, float32: torch on a GPU
INT8_DEFAULT = "tf-pedestrian-int8"  # its INT8 build (.onnx, ONNX Runtime on the CPU)


@dataclass(frozen=True)
class ModelFormat:
    name: str
    backends: tuple[str, ...]  # the first is the one it runs on unless told otherwise
    description: str


MODEL_FORMATS: dict[str, ModelFormat] = {
    ".pt": ModelFormat("checkpoint", ("torch", "onnxruntime"), "ssdlite checkpoint (weights, config, class names)"),
    ".pth": ModelFormat("checkpoint", ("torch", "onnxruntime"), "ssdlite checkpoint"),
    ".onnx": ModelFormat("onnx", ("onnxruntime",), "ONNX export (float32 or INT8) from `ssdlite export`"),
    ".tflite": ModelFormat("tflite", ("litert",), "LiteRT export (float32 or INT8) from `ssdlite export`"),
    ".pte": ModelFormat("pte", ("executorch",), "ExecuTorch export (float32 or INT8) from `ssdlite export`"),
}


def model_format(source: str | os.PathLike) -> ModelFormat:
    """The format of a zoo name or model path, told without fetching or reading anything.

    Raises:
        ZooError: not a zoo name, and no file of a model format's suffix nor any existing file.
        ModelLoadError: an existing file whose suffix is not a model format.
    """
    path = checkpoint_path(str(source)) if str(source) in MODELS else Path(source)
    found = MODEL_FORMATS.get(path.suffix.lower())
    if found is None:
        if not path.exists():
            raise ZooError(f"{source}: no such model file, and not a model-zoo name ({', '.join(MODELS)})")
        known = ", ".join(MODEL_FORMATS)
        raise ModelLoadError(f"{source}: not a model file this version can load (suffixes: {known})")
    return found


def model_file(source: str | os.PathLike) -> tuple[Path, ModelFormat]:
    """The local file for ``source`` (fetching a zoo model on first use) and its format.

    Raises:
        ZooError: neither an existing file nor a zoo name, or the fetch failed.
        ModelLoadError: the file's suffix is not a model format.
    """
    found = model_format(source)
    return resolve(source), found


def default_model(device: str | torch.device = AUTO, backend: str | None = None) -> str:
    """The zoo model to run when none is named, for where it will run.

    ``tf-pedestrian-int8`` where the model runs on the CPU (ONNX Runtime): on coco128 person AP 0.192
    against the float model's 0.195, and 1.9x the service's requests per second on 2 cores.
    ``tf-pedestrian`` (float) where it runs on CUDA: ``device`` ``"cuda"``/``"cuda:N"``, or ``"auto"``
    with a GPU that torch sees; and for ``backend="torch"`` on any device, since torch cannot run the
    INT8 ``.onnx`` file.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        backend: as for :func:`load_backend` (``None``/``"auto"``: decided by the device).
    """
    if backend == "torch":
        return FLOAT_DEFAULT
    if backend == "onnxruntime":
        return INT8_DEFAULT
    if str(device) == AUTO:
        on_cpu = not torch.cuda.is_available()
    else:
        try:
            on_cpu = torch.device(device).type == "cpu"
        except RuntimeError:
            on_cpu = False  # not a device: the float model, whose loader then says so
    return INT8_DEFAULT if on_cpu else FLOAT_DEFAULT


def load_backend(
    source: str | os.PathLike,
    *,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> Backend:
    """Loads a model-zoo name or a model file onto a backend.

    Args:
        source: a zoo name (see ``ssdlite zoo list``) or a ``.pt``/``.onnx``/``.tflite``/``.pte`` path.
        backend: one of ``BACKENDS``; ``None`` for the format's own (torch for a checkpoint, onnxruntime
            for ``.onnx``, litert for ``.tflite``, executorch for ``.pte``); ``"auto"`` for torch on CUDA
            when a GPU is there and allowed, else the format's CPU runtime (onnxruntime for a checkpoint).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``"auto"``: CUDA when torch runs there and it is
            available. ONNX Runtime, LiteRT and ExecuTorch run on the CPU only.
        threads: intra-op threads for ONNX Runtime (default: all cores); for torch it sets torch's
            process-wide thread count.

    Raises:
        ModelLoadError: a backend or device that cannot run this model, or an unreadable model file.
        ZooError, CheckpointError: the name or the checkpoint cannot be used.
    """
    backend, device = choose_backend(source, backend, str(device))  # before a fetch: a bad choice fails fast
    path, found = model_file(source)
    if backend == "litert":
        return LiteRTBackend(path, threads)
    if backend == "executorch":
        return ExecuTorchBackend(path, threads)
    if backend == "onnxruntime":
        if found.name == "onnx":
            return OnnxRuntimeBackend(path, threads)
        model, class_names = load_checkpoint(path)
        return OnnxRuntimeBackend(export_onnx(model, class_names), threads)
    if threads:
        torch.set_num_threads(threads)
    model, class_names = load_checkpoint(path)
    return TorchBackend(model, class_names, device)


def choose_backend(source: str | os.PathLike, backend: str | None = None, device: str = "cpu") -> tuple[str, str]:
    """The (backend, device) :func:`load_backend` uses for ``source``; its arguments are the same.

    Raises:
        ModelLoadError: a combination that cannot run, with the reason.
    """
    found = model_format(source)
    if backend is not None and backend != AUTO and backend not in BACKENDS:
        raise ModelLoadError(f"backend must be one of {(AUTO, *BACKENDS)}, got {backend!r}")
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = found.backends[0]
    elif backend == AUTO:
        wants_gpu = device != "cpu" and device != AUTO or (device == AUTO and cuda)
        on_cpu = next(name for name in (*found.backends, "onnxruntime") if name != "torch")
        backend = "torch" if wants_gpu and "torch" in found.backends else on_cpu
    if backend not in found.backends:
        raise ModelLoadError(
            f"{source}: the {found.name} format runs on {' or '.join(found.backends)}, not on {backend}"
        )
    if device == AUTO:
        device = "cuda" if backend == "torch" and cuda else "cpu"
    if backend != "torch" and device != "cpu":
        raise ModelLoadError(
            f"{source}: {CPU_RUNTIMES[backend]} runs on the CPU here, not {device}; "
            "use device cpu (or a .pt checkpoint on torch)"
        )
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        gpus = torch.cuda.device_count() if cuda else 0
        if gpus == 0 or (chosen.index or 0) >= gpus:
            seen = f"{gpus} CUDA GPU(s)" if gpus else "no CUDA GPU"
            raise ModelLoadError(f"device {device!r} asked for, but torch sees {seen}; use device cpu")
    return backend, device
