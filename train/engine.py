"""One training epoch and one evaluation pass (inference, gathering across ranks, COCO scores)."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from ssdlite.core.postprocess import postprocess

from . import distributed
from .data import Batch
from .evaluation import CocoEvaluator, EvalResult
from .optim import ModelEMA

LOG_EVERY = 10  # steps between host syncs for the progress bar


@dataclass
class EpochResult:
    loss: float = math.nan
    loss_box: float = math.nan
    loss_cls: float = math.nan
    images: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    completed_steps: int = 0  # steps of this epoch done (equals the loader length unless stopped)
    stopped: bool = False

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def to_model_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 ``[N, 3, S, S]`` -> float pixels on ``device`` (the model normalises them itself)."""
    images = images.to(device, non_blocking=True).float()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.contiguous(memory_format=memory_format)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader,
    device: torch.device,
    epoch: int,
    *,
    ema: ModelEMA | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    clip_grad: float | None = None,
    first_step: int = 0,
    frozen: list[nn.Module] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> EpochResult:
    """Trains for one pass over ``loader`` (which may start at ``first_step`` of the epoch).

    ``frozen`` modules stay in eval mode. Every ``LOG_EVERY`` steps the losses are synced to the
    host for the progress bar and checked for NaN/inf. Under DDP the ranks agree every step on whether to stop (a signal
    arrived on any rank) and whether to skip the step (a rank got a batch whose images were
    all unreadable), so no rank is left waiting in a collective. At each sync ``on_log`` gets the
    epoch's step count and the mean losses of the steps since the previous sync, with the lr.
    """
    model.train()
    for module in frozen or ():
        module.eval()  # frozen BatchNorm keeps its running statistics
    result = EpochResult(completed_steps=first_step)
    totals = torch.zeros(3, device=device)
    steps_in_totals = 0
    logged, logged_steps = [0.0, 0.0, 0.0], 0
    start = time.perf_counter()
    bar = tqdm(
        total=first_step + len(loader),
        initial=first_step,
        desc=f"epoch {epoch}",
        disable=not progress,
        dynamic_ncols=True,
        leave=True,
    )
    for batch in loader:
        batch: Batch
        result.skipped += batch.skipped
        flags = distributed.all_reduce_sum(torch.tensor([float(should_stop()), float(len(batch) == 0)]))
        if flags[0] > 0:
            result.stopped = True
            break
        result.completed_steps += 1
        bar.update(1)
        if flags[1] > 0:
            scheduler.step()  # keep the schedule aligned with the step count
            continue
        images = to_model_input(batch.images, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            box_regression, class_logits = model(images)
        losses = criterion(
            box_regression,
            class_logits,
            batch.boxes.to(device, non_blocking=True),
            batch.labels.to(device, non_blocking=True),
            batch.iscrowd.to(device, non_blocking=True),
        )
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model)

        totals += torch.stack([losses["loss"].detach(), losses["loss_box"].detach(), losses["loss_cls"].detach()])
        steps_in_totals += 1
        result.images += len(batch)
        if steps_in_totals % LOG_EVERY == 0 or result.completed_steps == first_step + len(loader):
            sums = totals.tolist()
            loss, loss_box, loss_cls = (value / steps_in_totals for value in sums)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss} at epoch {epoch}; try a lower --lr or --clip-grad")
            result.loss, result.loss_box, result.loss_cls = loss, loss_box, loss_cls
            result.seconds = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{loss:.3f}",
                box=f"{loss_box:.3f}",
                cls=f"{loss_cls:.3f}",
                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                img_s=f"{result.images_per_second:.1f}",
            )
            if on_log is not None:
                window = steps_in_totals - logged_steps
                means = [(now - before) / window for now, before in zip(sums, logged, strict=True)]
                lr = optimizer.param_groups[0]["lr"]
                on_log(result.completed_steps, dict(zip(("loss", "loss_box", "loss_cls"), means, strict=True), lr=lr))
                logged, logged_steps = sums, steps_in_totals
    bar.close()
    if steps_in_totals:
        loss, loss_box, loss_cls = (totals / steps_in_totals).tolist()
        result.loss, result.loss_box, result.loss_cls = loss, loss_box, loss_cls
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class Evaluation:
    """One evaluation pass: ``result`` (on the main process only; ``None`` elsewhere)."""

    result: EvalResult | None
    detections: list[dict]  # COCO results (original category ids, [x, y, w, h]), every rank's
    skipped: list[str]  # unreadable images, every rank's
    seconds: float
    images: int


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    evaluator: CocoEvaluator,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = True,
) -> Evaluation:
    """Runs batched inference over ``loader``, gathers every rank's detections and scores them.

    Under DDP each rank evaluates its own shard; the main process computes the COCO numbers.
    """
    model.eval()
    config = model.config
    anchors = model.anchors
    skipped, images = [], 0
    start = time.perf_counter()
    for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True, leave=False):
        skipped += batch.skipped
        if len(batch) == 0:
            continue
        images += len(batch)
        inputs = to_model_input(batch.images, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            box_regression, class_logits = model(inputs)
        detections = postprocess(box_regression.float(), class_logits.float(), anchors, config.postprocess)
        evaluator.update(batch.image_ids, batch.sizes, detections)
    evaluator.synchronize_between_processes()
    skipped = [s for part in distributed.all_gather_object(skipped) for s in part]
    images = sum(distributed.all_gather_object(images))
    result = evaluator.summarize() if distributed.is_main_process() else None
    return Evaluation(result, evaluator.results, skipped, time.perf_counter() - start, images)
