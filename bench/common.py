"""Timing and model-setup helpers shared by the benchmarks."""

import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# With this bias on background and 0 elsewhere, softmax gives every object class about
# 3e-4, as a trained detector does on most anchors; random weights instead give every class
# ~1/91 and flood NMS with candidates no real model produces.
BACKGROUND_BIAS = 8.0


def make_background_dominant(final_convs: list[nn.Conv2d], num_classes: int, sigmoid: bool = False):
    """Sets the class-logit biases of the given 1x1 convs (outputs laid out anchor-major).

    With sigmoid scoring every class logit gets ``-BACKGROUND_BIAS`` instead, which gives the
    same ~3e-4 object scores.
    """
    with torch.no_grad():
        for conv in final_convs:
            bias = conv.bias.view(-1, num_classes)
            if sigmoid:
                bias.fill_(-BACKGROUND_BIAS)
            else:
                bias.zero_()
                bias[:, 0] = BACKGROUND_BIAS


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def multiply_adds(model: nn.Module, size: int) -> float:
    """Multiply-adds of one forward pass on a ``size`` x ``size`` image (torch.utils.flop_counter)."""
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2


def time_call(fn: Callable[[], object], iterations: int, warmup: int = 5) -> dict[str, float]:
    """Runs ``fn`` and returns p50/p95/mean wall time in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50": statistics.median(times),
        "p95": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
        "mean": statistics.fmean(times),
    }


def write_json(path: str | None, results: dict):
    """Saves a benchmark's results where ``--json`` asked (nothing when it was not given)."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


def machine_description() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
