"""Optimizer, learning-rate schedule and the EMA of the weights."""

import copy
import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only, not on biases and BatchNorm."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    """``"sgd"`` (Nesterov momentum) or ``"adamw"`` over :func:`param_groups`."""
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")


class ModelEMA:
    """Exponential moving average of a model's weights (and BatchNorm statistics).

    The decay after ``updates`` steps is ``min(decay, (1 + updates) / (10 + updates))``: the
    average spans about the last tenth of the steps taken so far, until that reaches the horizon
    of ``decay`` itself (0.9998: about 5000 steps, after ~45k steps). So a 50-step fine-tune
    averages its last few steps and a 600-epoch run gets the full decay, with one default.
    ``updates`` is saved with the checkpoint for an exact resume.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module):
        self.updates += 1
        decay = self.current_decay()
        current = model.state_dict()
        floats, targets = [], []
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                floats.append(value)
                targets.append(current[name].detach())
            else:
                value.copy_(current[name])
        torch._foreach_lerp_(floats, targets, 1 - decay)


def warmup_cosine(total_steps: int, warmup_steps: int, warmup_factor: float = 0.001, final_factor: float = 0.01):
    """LR multiplier per step: linear warm-up from ``warmup_factor``, then cosine to ``final_factor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_factor + (1 - warmup_factor) * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
