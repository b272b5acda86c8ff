"""The ExecuTorch backend: runs a ``.pte`` program written by :func:`ssdlite.deploy.pte.export_pte` on the CPU."""

import os

import torch

from ..core import SSDLiteConfig
from ..deploy.pte import ExecuTorchError, load_program, program_metadata
from .backends import ModelLoadError


class ExecuTorchBackend:
    """Runs an ExecuTorch program (float or INT8, XNNPACK-delegated) with the ExecuTorch runtime.

    Args:
        model: path to a ``.pte`` file or its bytes.
        threads: XNNPACK threads (default: the runtime's, one per core). The runtime has one thread
            pool per process, which can only be resized before the first program runs: resizing it
            under a loaded program hung that program in executorch 1.5.1.

    Raises:
        ModelLoadError: executorch is not installed, not an ExecuTorch program, no ssdlite metadata,
            or ``threads`` differs from the thread count programs already loaded in this process run with.
    """

    name = "executorch"
    device = torch.device("cpu")

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        if threads is not None:
            _set_threads(threads)
        label = "program bytes" if isinstance(model, bytes) else str(model)
        try:
            program = load_program(model)
            metadata = program_metadata(program, label)
            self.config = SSDLiteConfig.from_dict(metadata["ssdlite_config"])
            self.class_names = list(metadata["class_names"])
            self.precision = metadata.get("precision", "float32")
            self.method = program.load_method("forward")
        except ExecuTorchError as error:
            raise ModelLoadError(str(error)) from None
        except (RuntimeError, KeyError, TypeError, ValueError) as error:
            raise ModelLoadError(f"{label}: the ExecuTorch program cannot run here ({error})") from None
        _thread_pool["in_use"] = True
        self.program = program  # owns the method's memory

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images [N, 3, {size}, {size}], got {list(images.shape)}")
        # The program takes one image; it reads its input's memory as contiguous NCHW whatever the
        # strides say, so a channels-last batch (what preprocess() returns) must be copied first.
        images = images.detach().to("cpu", torch.float32)
        outputs = [self.method.execute([images[i : i + 1].contiguous()]) for i in range(len(images))]
        boxes = torch.cat([box for box, _ in outputs])
        logits = torch.cat([logit for _, logit in outputs])
        return boxes, logits


_thread_pool = {"in_use": False}  # whether a backend has loaded a program (the pool is then fixed)


def _set_threads(threads: int):
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return  # load_program names the missing package
    current = portable_lib._threadpool_get_thread_count()
    if current == threads:
        return
    if _thread_pool["in_use"]:
        raise ModelLoadError(
            f"ExecuTorch runs this process's programs on {current} threads and cannot change to {threads}; "
            "give every .pte backend in a process the same threads"
        )
    portable_lib._unsafe_reset_threadpool(threads)
