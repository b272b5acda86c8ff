"""``python -m train.coco``: train or evaluate SSDLite on COCO-format or YOLO-format data.

With no data arguments it trains on the embedded generated shapes dataset (see
``train/synthetic.py``), with a recipe sized to finish in minutes on a 2-core CPU. With
``--data-dir`` (COCO 2017 layout), ``--train-ann/--train-images/--val-ann/--val-images`` or
``--data data.yaml`` (YOLO layout) it trains on your data with the SSDLite320 recipe on an
ImageNet backbone (``train/recipes.py``). ``torchrun --nproc_per_node N -m train.coco`` runs DDP
(NCCL on GPU, gloo on CPU).
"""

import json
import signal
import sys
import time
from pathlib import Path

import cv2
import torch
from torch import nn

from ssdlite import save_checkpoint
from ssdlite.core.backbones.imagenet import BackboneWeightsError
from ssdlite.core.loss import SSDLoss
from ssdlite.weights import ZooError
from ssdlite.weights.checkpoint import CheckpointError

from . import anchor_fit, distributed, outputs, tracking
from .config import TrainConfig, UsageError, parse_args, resolve_config, resume_payload
from .data import CocoDetection, DataError, build_loaders, open_datasets
from .engine import evaluate, train_one_epoch
from .evaluation import CocoEvaluator
from .modeling import build_train_model, freeze_layers, init_class_prior, load_eval_model
from .optim import ModelEMA, build_optimizer, warmup_cosine
from .transforms import build_transform

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def amp_and_layout(config: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    if config.amp == "bf16" and device.type == "cpu":
        amp = torch.bfloat16
    else:
        amp = torch.bfloat16 if config.amp != "off" and device.type == "cuda" else None
    return amp, config.channels_last


def make_output_dir(config: TrainConfig, dist_info, kind: str) -> Path:
    path = Path(config.output_dir) if config.output_dir else Path("runs") / kind / time.strftime("%Y%m%d-%H%M%S")
    path = Path(distributed.broadcast_object(str(path)))
    if dist_info.is_main:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"--output-dir {path}: cannot create the directory ({error.strerror or error})") from None
    return path


def label_map_by_name(class_names: list[str], dataset: CocoDetection) -> dict[int, int]:
    """Model label -> dataset category id, matching class names (for evaluating a checkpoint)."""
    by_name = {}
    for category_id, name in zip(dataset.categories.category_ids, dataset.categories.names, strict=True):
        by_name.setdefault(name, category_id)
    mapping = {label: by_name[name] for label, name in enumerate(class_names, start=1) if name in by_name}
    if not mapping:
        raise UsageError(
            f"none of the model's classes {class_names} is a category of {dataset.annotation_file} "
            f"({list(dataset.categories.names)})"
        )
    return mapping


def run_eval_only(config: TrainConfig, dist_info, device):
    if not config.weights:
        raise UsageError("--eval-only needs --weights CHECKPOINT (or a model-zoo name)")
    _, val_set = open_datasets(config.data, dist_info, progress=config.progress, train=False)
    try:
        model, class_names = load_eval_model(config.weights, device)
    except ZooError as error:
        raise UsageError(f"--weights {config.weights}: {error}") from None
    val_set.transform = build_transform(model.config.image_size, train=False)
    output_dir = make_output_dir(config, dist_info, "eval")
    _, val_loader = build_loaders(None, val_set, config.batch_size, config.workers, dist_info, device, config.seed)
    amp, channels_last = amp_and_layout(config, device)
    model = model.to(memory_format=torch.channels_last) if channels_last else model
    evaluator = CocoEvaluator(val_set.coco, label_map_by_name(class_names, val_set))
    log = print if dist_info.is_main else _quiet
    log(val_set.stats.summary(f"val ({config.data.describe('val')})"))
    evaluation = evaluate(
        model,
        val_loader,
        device,
        evaluator,
        amp_dtype=amp,
        channels_last=channels_last,
        progress=dist_info.is_main and config.progress,
    )
    if dist_info.is_main:
        _warn_skipped(evaluation.skipped)
        print(
            f"evaluated {config.weights} on {evaluation.images} images in {evaluation.seconds:.1f} s "
            f"({evaluation.images / max(evaluation.seconds, 1e-9):.1f} img/s: decode, resize, forward, postprocess)\n"
        )
        print(evaluation.result.format())
        with open(output_dir / "detections.json", "w") as f:
            json.dump(evaluation.detections, f)
        with open(output_dir / "eval.json", "w") as f:
            stats = {"weights": str(config.weights), "stats": evaluation.result.stats}
            json.dump({**stats, "per_class": evaluation.result.per_class}, f, indent=1)
        print(f"\nwrote {output_dir / 'detections.json'} and {output_dir / 'eval.json'}")
    return evaluation.result


def _quiet(*_args, **_kwargs):
    pass


def _warn_skipped(skipped: list[str], when: str = ""):
    if skipped:
        shown = "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        print(f"warning: skipped {len(skipped)} unreadable image(s){when}: {shown}", file=sys.stderr)


class StopSignal:
    """SIGINT/SIGTERM set a flag; training saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.signum = None
        self._previous = {s: signal.signal(s, self._handle) for s in EXIT_CODES}

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def train(config: TrainConfig, dist_info, device) -> dict:
    log = print if dist_info.is_main else _quiet
    resume = resume_payload(config.resume) if config.resume else None
    tracking.require_backends(config)
    train_set, val_set = open_datasets(
        config.data, dist_info, classes=config.classes, seed=config.seed, progress=config.progress
    )
    categories = train_set.categories
    class_names = list(categories.names)

    built = build_train_model(config, class_names, resume)
    model, config_model = built.model, built.model.config
    classification = "focal" if config_model.postprocess.score_function == "sigmoid" else "softmax"
    if classification == "focal" and built.reinitialised:
        init_class_prior(model)
    train_set.transform = build_transform(config_model.image_size, config.augment, train=True)
    val_set.transform = build_transform(config_model.image_size, train=False)

    frozen = freeze_layers(model, config.freeze)
    model.to(device)
    criterion = SSDLoss(
        model.anchors, config_model.postprocess.box_weights, classification=classification, box_loss=config.box_loss
    )
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.weight_decay, config.momentum)
    train_loader, val_loader = build_loaders(
        train_set, val_set, config.batch_size, config.workers, dist_info, device, config.seed
    )
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise DataError(f"{config.data.describe('train')}: no training images")
    schedule = warmup_cosine(config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = ModelEMA(model, config.ema_decay) if config.ema_decay else None
    start_epoch, start_step, best_map, history = 0, 0, -1.0, []
    if resume:
        state = resume["train_state"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(resume["model"])
            ema.updates = state["ema_updates"]
        start_epoch, start_step = state["epoch"], state["step"]
        best_map, history = state["best_map"], list(state["history"])
        output_dir = Path(resume["path"]).parent
        log(f"resuming {resume['path']} at epoch {start_epoch + 1}" + (f", step {start_step}" if start_step else ""))
    else:
        output_dir = make_output_dir(config, dist_info, "train")

    amp, channels_last = amp_and_layout(config, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if ema is not None:
            ema.module.to(memory_format=torch.channels_last)
    train_model = model
    if dist_info.distributed:
        if config.sync_bn:
            if device.type != "cuda":
                raise UsageError("--sync-bn needs CUDA")
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    log(train_set.stats.summary(f"train ({config.data.describe('train')})"))
    log(val_set.stats.summary(f"val ({config.data.describe('val')})"))
    log(
        f"model {built.origin}: image {config_model.image_size}, width {config_model.width_mult}, "
        f"anchor scales {config_model.min_scale:g}-{config_model.max_scale:g}, "
        f"{len(class_names)} classes, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"({sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trained"
        f"{', --freeze ' + config.freeze if config.freeze else ''}), "
        f"{model.anchors.shape[0]} anchors, {classification} loss; "
        f"re-initialised: {', '.join(built.reinitialised) or 'nothing (same classes)'}"
    )
    log(
        f"{config.epochs} epochs x {steps_per_epoch} steps, batch {config.batch_size} x {dist_info.world_size} "
        f"process(es), {config.optimizer} lr {config.lr:.4g}, device {device}, amp {amp or 'off'}, "
        f"channels_last {channels_last}, {config.workers} workers/process; outputs in {output_dir}"
    )
    if dist_info.is_main and not (resume and (output_dir / anchor_fit.FILE).is_file()):  # once per run
        boxes = anchor_fit.training_boxes(train_set.records)
        fit = anchor_fit.measure(config_model, boxes, criterion.iou_threshold, model.anchors, bool(config.init))
        (output_dir / anchor_fit.FILE).write_text(json.dumps(fit.to_dict(), indent=1))
        log(fit.summary())
        if fit.warning:
            print(fit.warning, file=sys.stderr)
    checkpoint_extra = {"category_ids": list(categories.category_ids)}
    tracker = tracking.open_run_logger(
        config,
        output_dir,
        is_main=dist_info.is_main,
        start_step=start_epoch * steps_per_epoch + start_step,
        resumed=resume["train_state"].get("tracking", {}) if resume else None,
    )
    tracker.log_params(config)

    stop = StopSignal()
    started = time.perf_counter()
    status = "FAILED"
    try:
        for epoch in range(start_epoch, config.epochs):
            train_loader.sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            first_step = start_step if epoch == start_epoch else 0
            train_loader.sampler.start_index = first_step * config.batch_size
            result = train_one_epoch(
                train_model,
                criterion,
                optimizer,
                scheduler,
                train_loader,
                device,
                epoch + 1,
                ema=ema,
                amp_dtype=amp,
                channels_last=channels_last,
                clip_grad=config.clip_grad,
                first_step=first_step,
                frozen=frozen,
                should_stop=stop,
                progress=dist_info.is_main and config.progress,
                on_log=tracker.step_callback(epoch * steps_per_epoch),
            )
            skipped = [s for part in distributed.all_gather_object(result.skipped) for s in part]
            if dist_info.is_main:
                _warn_skipped(skipped, f" in epoch {epoch + 1}")
            eval_model = ema.module if ema is not None else model
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema_updates": ema.updates if ema is not None else 0,
                "best_map": best_map,
                "history": history,
                "args": config.cli,
                "tracking": tracker.state,
            }
            if result.stopped:
                status = "KILLED"
                state.update(epoch=epoch, step=result.completed_steps)
                if dist_info.is_main:
                    path = save_checkpoint(
                        output_dir / "last.pt", eval_model, class_names, train_state=state, **checkpoint_extra
                    )
                    log(
                        f"\nstopped by signal {stop.signum} at epoch {epoch + 1}, step {result.completed_steps}: "
                        f"saved {path}\nresume with: python -m train.coco --resume {output_dir}"
                    )
                distributed.barrier()
                return {"stopped": True, "exit_code": EXIT_CODES.get(stop.signum, 1)}

            row = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": result.loss,
                "loss_box": result.loss_box,
                "loss_cls": result.loss_cls,
                "img_per_s": result.images_per_second * dist_info.world_size,
                "epoch_s": result.seconds,
                "skipped_images": len(skipped),
            }
            last = epoch + 1 == config.epochs
            eval_result = None
            if last or (epoch + 1) % config.eval_every == 0:
                evaluation = evaluate(
                    eval_model,
                    val_loader,
                    device,
                    CocoEvaluator(val_set.coco, categories.label_to_category_id),
                    amp_dtype=amp,
                    channels_last=channels_last,
                    progress=dist_info.is_main and config.progress,
                )
                eval_result = evaluation.result
                if eval_result is not None:
                    row.update(eval_result.stats)
                    row["eval_s"] = evaluation.seconds
            history.append(row)
            improved = eval_result is not None and eval_result.map > best_map
            if improved:
                best_map = eval_result.map
            state.update(epoch=epoch + 1, step=0, best_map=best_map, history=history)
            if dist_info.is_main:
                step = (epoch + 1) * steps_per_epoch
                if eval_result is not None and (last or tracker.active):
                    grid = outputs.detection_grid(
                        output_dir / "val_detections.png" if last else None,
                        eval_model,
                        class_names,
                        [r.path for r in val_set.records],
                    )
                    tracker.log_images("val/detections", step, grid)
                tracker.log_epoch(epoch + 1, step, row, eval_result)
                save_checkpoint(output_dir / "last.pt", eval_model, class_names, train_state=state, **checkpoint_extra)
                if improved:
                    save_checkpoint(
                        output_dir / "best.pt",
                        eval_model,
                        class_names,
                        metrics={k: float(v) for k, v in eval_result.stats.items()},
                        epoch=epoch + 1,
                        **checkpoint_extra,
                    )
                outputs.write_metrics(output_dir, history)
                if eval_result is not None:
                    outputs.plot_curves(output_dir / "curves.png", history)
                line = (
                    f"epoch {epoch + 1}/{config.epochs}: loss {result.loss:.3f} (box {result.loss_box:.3f}, "
                    f"cls {result.loss_cls:.3f}), {row['img_per_s']:.1f} img/s, {result.seconds:.0f} s"
                )
                if eval_result is not None:
                    line += (
                        f" | val AP {eval_result.map:.3f} AP50 {eval_result.stats['AP50']:.3f} "
                        f"(best {best_map:.3f}), eval {row['eval_s']:.0f} s"
                    )
                log(line + f" | elapsed {_minutes(time.perf_counter() - started)}", flush=True)
                if last:
                    names = ("best.pt", "metrics.csv", "metrics.json", "curves.png", "val_detections.png")
                    tracker.log_artifacts(output_dir / name for name in names)
                    log("\n" + eval_result.format())
            distributed.barrier()
        status = "FINISHED"
    finally:
        stop.restore()
        tracker.close(status)
    elapsed = time.perf_counter() - started
    log(
        f"\ndone in {_minutes(elapsed)}: best val AP {best_map:.3f}; checkpoints, metrics.csv/json, curves.png and "
        f"val_detections.png in {output_dir}"
    )
    return {"stopped": False, "exit_code": 0, "best_map": best_map, "seconds": elapsed, "output_dir": str(output_dir)}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def main(argv: list[str] | None = None) -> int:
    cv2.setNumThreads(0)  # before any OpenCV use: forked DataLoader workers can deadlock otherwise
    try:
        args, explicit = parse_args(argv)
        try:
            dist_info, device = distributed.init_distributed(args.device)
        except ValueError as error:
            raise UsageError(str(error)) from None
        config = resolve_config(args, explicit, dist_info.world_size)
        if config.eval_only:
            run_eval_only(config, dist_info, device)
            return 0
        return train(config, dist_info, device)["exit_code"]
    except (DataError, CheckpointError, UsageError, BackboneWeightsError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
