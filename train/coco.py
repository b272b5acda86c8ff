"""``python -m train.coco``: train or evaluate SSDLite on COCO-format data.

With no data arguments it trains on the embedded generated shapes dataset (see
``train/synthetic.py``), with a recipe sized to finish in minutes on a 2-core CPU. With
``--data-dir`` (COCO 2017 layout) or ``--train-ann/--train-images/--val-ann/--val-images`` it
trains on your data with the SSDLite320 recipe. ``torchrun --nproc_per_node N -m train.coco``
runs DDP (NCCL on GPU, gloo on CPU).
"""

import argparse
import copy
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ssdlite import SSDLite, SSDLiteConfig, build_model, load_checkpoint, save_checkpoint, zoo
from ssdlite.checkpoint import CheckpointError, read_checkpoint
from ssdlite.loss import SSDLoss

from . import distributed, outputs
from .data import CocoDetection, DataError, collate, worker_init
from .engine import ModelEMA, evaluate, train_one_epoch, warmup_cosine
from .evaluation import CocoEvaluator, EvalResult
from .synthetic import SyntheticSpec, ensure_dataset
from .transforms import AUGMENTATIONS, build_transform

# Defaults that depend on the data: the embedded dataset gets a small, fast model and a short
# schedule; real data gets the SSDLite320 recipe. ``lr`` is for a global batch of 256 images
# and scales linearly with the actual global batch unless --lr is given.
RECIPES = {
    "embedded": {
        "model": "ssdlite320_mobilenet_v2",
        "image_size": 160,
        "width_mult": 0.5,
        "min_scale": None,
        "epochs": 11,
        "batch_size": 32,
        "optimizer": "adamw",
        "base_lr": 0.032,
        "weight_decay": 0.05,
        "warmup_epochs": 2,
        "augment": "light",
        "ema_decay": 0.999,
        "eval_every": 2,
    },
    "coco": {
        "model": "ssdlite320_mobilenet_v2",
        "image_size": None,
        "width_mult": None,
        "min_scale": None,
        "epochs": 600,
        "batch_size": 32,
        "optimizer": "sgd",
        "base_lr": 0.2,
        "weight_decay": 4e-5,
        "warmup_epochs": 5,
        "augment": "ssd",
        "ema_decay": 0.9998,
        "eval_every": 1,
    },
}
BATCH_FOR_BASE_LR = 256
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class UsageError(ValueError):
    """Command-line arguments that do not fit together."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.coco",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data (none given: the embedded generated dataset)")
    data.add_argument(
        "--data-dir", help="COCO 2017 layout: annotations/instances_{train,val}2017.json, {train,val}2017/"
    )
    data.add_argument("--train-ann", help="COCO-format training annotations (json)")
    data.add_argument("--train-images", help="directory of the training images")
    data.add_argument("--val-ann", help="COCO-format validation annotations (json)")
    data.add_argument("--val-images", help="directory of the validation images")
    data.add_argument("--synthetic-train", type=int, default=SyntheticSpec.num_train, help="embedded set: train images")
    data.add_argument("--synthetic-val", type=int, default=SyntheticSpec.num_val, help="embedded set: val images")
    data.add_argument(
        "--data-cache",
        help="where the embedded set is generated (default: $SSDLITE_DATA_DIR or ~/.cache/ssdlite/datasets)",
    )

    model = parser.add_argument_group("model (recipe-dependent defaults: see the RECIPES table in train/coco.py)")
    model.add_argument("--model", help="preset name, e.g. ssdlite320_mobilenet_v2")
    model.add_argument("--image-size", type=int, help="input size (square)")
    model.add_argument("--width-mult", type=float, help="backbone width multiplier")
    model.add_argument("--min-scale", type=float, help="anchor scale of the first feature map (preset: 0.2)")
    model.add_argument(
        "--init",
        help="start from these weights: a model-zoo name (e.g. tf-pedestrian) or a checkpoint "
        "path; backbone, extras and box head are loaded, class predictors re-initialised when the "
        "classes differ; the architecture comes from the checkpoint",
    )

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int, help="images per process and step")
    train.add_argument("--optimizer", choices=("sgd", "adamw"))
    train.add_argument(
        "--lr",
        type=float,
        help=f"peak learning rate (default: the recipe's rate for a global batch "
        f"of {BATCH_FOR_BASE_LR}, scaled linearly)",
    )
    train.add_argument("--weight-decay", type=float, help="not applied to biases and BatchNorm")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    train.add_argument("--warmup-epochs", type=float, help="linear warm-up, then cosine decay to 1%%")
    train.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm (0: off)")
    train.add_argument("--ema-decay", type=float, help="EMA of the weights (0: off); checkpoints hold the EMA weights")
    train.add_argument(
        "--augment", choices=AUGMENTATIONS, help="ssd: crop+zoom-out+photometric+flip; light: photometric+flip; none"
    )
    train.add_argument("--box-loss", choices=("smooth_l1", "giou"), default="smooth_l1")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--workers",
        type=int,
        help="DataLoader workers per process (default: cores per process - 1, at most 8; 0 with 2 cores or fewer)",
    )
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")
    train.add_argument(
        "--channels-last",
        choices=("on", "off"),
        default="on",
        help="channels-last memory format (faster on CPU and GPU)",
    )
    train.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP (CUDA only)")
    train.add_argument("--eval-every", type=int, help="evaluate every N epochs (and after the last)")

    out = parser.add_argument_group("outputs")
    out.add_argument("--output-dir", help="default: runs/train/<date-time> (runs/eval/<date-time> with --eval-only)")
    out.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_CKPT",
        help="continue a run from its last.pt; its settings are reused unless given again",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")

    ev = parser.add_argument_group("evaluation only")
    ev.add_argument("--eval-only", action="store_true", help="evaluate --weights on the validation set and exit")
    ev.add_argument("--weights", help="checkpoint to evaluate")
    return parser


def explicit_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Names of the options given on the command line (as opposed to defaults)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    args.explicit = explicit_args(parser, argv)
    if args.resume:
        stored = _resume_payload(args.resume)["train_state"]["args"]
        for key, value in stored.items():
            if key not in args.explicit and key not in ("resume", "explicit", "output_dir"):
                setattr(args, key, value)
    return args


def _resume_payload(resume: str) -> dict:
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    payload = read_checkpoint(path)
    if "train_state" not in payload:
        raise CheckpointError(f"{path}: has no training state to resume (is it a best.pt or an exported model?)")
    payload["path"] = str(path)
    return payload


def resolve_data(args, dist_info: distributed.DistInfo) -> tuple[dict[str, str | None], str]:
    """Annotation/image paths and the recipe name ("embedded" or "coco")."""
    pairs = {
        "train_ann": args.train_ann,
        "train_images": args.train_images,
        "val_ann": args.val_ann,
        "val_images": args.val_images,
    }
    if args.data_dir:
        if any(pairs.values()):
            raise UsageError("give either --data-dir or --train-ann/--train-images/--val-ann/--val-images, not both")
        root = Path(args.data_dir)
        if not root.is_dir():
            raise DataError(f"{root}: data directory not found")
        pairs = {
            "train_ann": str(root / "annotations" / "instances_train2017.json"),
            "train_images": str(root / "train2017"),
            "val_ann": str(root / "annotations" / "instances_val2017.json"),
            "val_images": str(root / "val2017"),
        }
        return pairs, "coco"
    needed = ("val_ann", "val_images") if args.eval_only else tuple(pairs)
    if any(pairs.values()):
        missing = [f"--{k.replace('_', '-')}" for k in needed if not pairs[k]]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or use --data-dir)")
        return pairs, "coco"
    spec = SyntheticSpec(num_train=args.synthetic_train, num_val=args.synthetic_val)
    if dist_info.local_rank == 0:
        paths = ensure_dataset(spec, args.data_cache, progress=not args.no_progress)
    distributed.barrier()
    paths = ensure_dataset(spec, args.data_cache)
    return {k: str(getattr(paths, k)) for k in pairs}, "embedded"


def apply_recipe(args, recipe_name: str):
    for key, value in RECIPES[recipe_name].items():
        if key == "base_lr":
            continue
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.recipe = recipe_name


def default_workers(world_size: int) -> int:
    # With two cores or fewer per process a worker only competes with torch's compute threads
    # (measured on 2 cores: 0 workers 74 img/s, 1 worker 71 img/s).
    cores = (os.cpu_count() or 1) // world_size
    return 0 if cores <= 2 else min(8, cores - 1)


def build_loaders(args, train_set, val_set, dist_info, device):
    workers = args.workers if args.workers is not None else default_workers(dist_info.world_size)
    common = {
        "collate_fn": collate,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": worker_init,
        "persistent_workers": workers > 0,
    }
    train_loader = None
    if train_set is not None:
        sampler = ResumableSampler(train_set, dist_info.world_size, dist_info.rank, args.seed)
        drop_last = len(sampler) >= args.batch_size
        train_loader = DataLoader(train_set, args.batch_size, sampler=sampler, drop_last=drop_last, **common)
    shard = list(range(dist_info.rank, len(val_set), dist_info.world_size))
    val_loader = DataLoader(val_set, args.batch_size, sampler=shard, **common)
    return train_loader, val_loader, workers


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch from ``seed``) that can start mid-epoch."""

    start_index = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return super().__len__() - self.start_index


def model_from_init(init: str, class_names: list[str], image_size: int | None) -> tuple[SSDLite, list[str]]:
    """Builds a model from a zoo name or checkpoint path for fine-tuning on ``class_names``.

    Backbone, extras, box head and the class head's depthwise layers load as they are; the class
    head's final 1x1 predictors are re-initialised unless the checkpoint has the same classes.

    Returns:
        ``(model, names of the re-initialised parameters)``.
    """
    path = Path(init)
    if not path.exists():
        try:
            path = zoo.fetch(init)
        except Exception as error:  # the zoo's own message says what went wrong
            raise UsageError(
                f"--init {init}: not a checkpoint file, and the model zoo could not provide it "
                f"({type(error).__name__}: {error})"
            ) from None
    payload = read_checkpoint(path)
    try:
        config = SSDLiteConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: checkpoint does not describe a valid model ({error})") from None
    overrides = {"num_classes": len(class_names) + 1}
    if image_size:
        overrides["image_size"] = image_size
    model = SSDLite(dataclasses.replace(config, **overrides))
    state = dict(payload["model"])
    reinitialised = []
    if list(payload["class_names"]) != list(class_names):
        for i in range(len(model.class_head.predictors)):
            for name in ("weight", "bias"):
                key = f"class_head.predictors.{i}.1.{name}"
                state.pop(key, None)
                reinitialised.append(key)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != set(reinitialised) or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    return model, reinitialised


def init_class_prior(model: SSDLite, prior: float = 0.01):
    """Focal-loss start: every class predictor says ``prior`` for each object class."""
    bias = -torch.log(torch.tensor((1 - prior) / prior))
    with torch.no_grad():
        for predictor in model.class_head.predictors:
            predictor[-1].bias.fill_(bias)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


def amp_and_layout(args, device: torch.device) -> tuple[torch.dtype | None, bool]:
    if args.amp == "bf16" and device.type == "cpu":
        amp = torch.bfloat16
    else:
        amp = torch.bfloat16 if args.amp != "off" and device.type == "cuda" else None
    channels_last = args.channels_last == "on"
    return amp, channels_last


def make_output_dir(args, dist_info, kind: str) -> Path:
    path = Path(args.output_dir) if args.output_dir else Path("runs") / kind / time.strftime("%Y%m%d-%H%M%S")
    path = Path(distributed.broadcast_object(str(path)))
    if dist_info.is_main:
        path.mkdir(parents=True, exist_ok=True)
    return path


def run_eval_only(args, dist_info, device, data_paths) -> EvalResult:
    if not args.weights:
        raise UsageError("--eval-only needs --weights CHECKPOINT")
    val_set = CocoDetection(data_paths["val_ann"], data_paths["val_images"])
    model, class_names = load_checkpoint(args.weights, device)
    val_set.transform = build_transform(model.config.image_size, train=False)
    output_dir = make_output_dir(args, dist_info, "eval")
    _, val_loader, _ = build_loaders(args, None, val_set, dist_info, device)
    amp, channels_last = amp_and_layout(args, device)
    model = model.to(memory_format=torch.channels_last) if channels_last else model
    evaluator = CocoEvaluator(val_set.coco, label_map_by_name(class_names, val_set))
    log = print if dist_info.is_main else _quiet
    log(val_set.stats.summary(f"val ({data_paths['val_ann']})"))
    start = time.perf_counter()
    skipped = evaluate(
        model,
        val_loader,
        device,
        evaluator,
        amp_dtype=amp,
        channels_last=channels_last,
        progress=dist_info.is_main and not args.no_progress,
    )
    evaluator.synchronize_between_processes()
    skipped = [s for part in distributed.all_gather_object(skipped) for s in part]
    seconds = time.perf_counter() - start
    result = evaluator.summarize() if dist_info.is_main else None
    if dist_info.is_main:
        _warn_skipped(skipped)
        print(
            f"evaluated {args.weights} on {len(val_set)} images in {seconds:.1f} s "
            f"({len(val_set) / seconds:.1f} img/s: decode, resize, forward, postprocess)\n"
        )
        print(result.format())
        with open(output_dir / "detections.json", "w") as f:
            json.dump(evaluator.results, f)
        with open(output_dir / "eval.json", "w") as f:
            json.dump({"weights": str(args.weights), "stats": result.stats, "per_class": result.per_class}, f, indent=1)
        print(f"\nwrote {output_dir / 'detections.json'} and {output_dir / 'eval.json'}")
    return result


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


def train(args, dist_info, device, data_paths) -> dict:
    log = print if dist_info.is_main else _quiet
    resume = _resume_payload(args.resume) if args.resume else None
    train_set = CocoDetection(data_paths["train_ann"], data_paths["train_images"], seed=args.seed)
    val_set = CocoDetection(data_paths["val_ann"], data_paths["val_images"])
    if train_set.categories != val_set.categories:
        raise DataError(f"{data_paths['train_ann']} and {data_paths['val_ann']} have different categories")
    categories = train_set.categories
    class_names = list(categories.names)

    torch.manual_seed(args.seed)
    if resume:  # the architecture as trained (an --init checkpoint need not exist any more)
        model, reinitialised = SSDLite(SSDLiteConfig.from_dict(resume["config"])), []
    elif args.init:
        conflicting = {"model", "width_mult", "min_scale"} & args.explicit
        if conflicting:
            flags = "/".join(f"--{name.replace('_', '-')}" for name in sorted(conflicting))
            raise UsageError(f"--init takes the architecture from its checkpoint; drop {flags}")
        image_size = args.image_size if "image_size" in args.explicit else None
        model, reinitialised = model_from_init(args.init, class_names, image_size)
        log(f"initialised from {args.init}; re-initialised: {', '.join(reinitialised) or 'nothing (same classes)'}")
    else:
        names = ("image_size", "width_mult", "min_scale")
        overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
        model = build_model(args.model, num_classes=categories.num_classes, **overrides)
        reinitialised = ["class_head"]
    config = model.config
    classification = "focal" if config.score_function == "sigmoid" else "softmax"
    if classification == "focal" and reinitialised:
        init_class_prior(model)
    train_set.transform = build_transform(config.image_size, args.augment, train=True)
    val_set.transform = build_transform(config.image_size, train=False)

    model.to(device)
    criterion = SSDLoss(model.anchors, config.box_weights, classification=classification, box_loss=args.box_loss)
    global_batch = args.batch_size * dist_info.world_size
    lr = args.lr if args.lr is not None else RECIPES[args.recipe]["base_lr"] * global_batch / BATCH_FOR_BASE_LR
    groups = param_groups(model, args.weight_decay)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=args.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr)

    train_loader, val_loader, workers = build_loaders(args, train_set, val_set, dist_info, device)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise DataError(f"{data_paths['train_ann']}: no training images")
    schedule = warmup_cosine(args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # The EMA's decay ramps up over a tenth of a short run (at most 2000 steps).
    ema = (
        ModelEMA(model, args.ema_decay, warmup=max(1, min(2000, args.epochs * steps_per_epoch // 10)))
        if args.ema_decay
        else None
    )
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
        output_dir = make_output_dir(args, dist_info, "train")

    amp, channels_last = amp_and_layout(args, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if ema is not None:
            ema.module.to(memory_format=torch.channels_last)
    train_model = model
    if dist_info.distributed:
        if args.sync_bn:
            if device.type != "cuda":
                raise UsageError("--sync-bn needs CUDA")
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    log(train_set.stats.summary(f"train ({data_paths['train_ann']})"))
    log(val_set.stats.summary(f"val ({data_paths['val_ann']})"))
    log(
        f"model {args.model if not args.init else args.init}: image {config.image_size}, width {config.width_mult}, "
        f"anchor scales {config.min_scale:g}-{config.max_scale:g}, "
        f"{len(class_names)} classes, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{model.anchors.shape[0]} anchors, {classification} loss"
    )
    log(
        f"{args.epochs} epochs x {steps_per_epoch} steps, batch {args.batch_size} x {dist_info.world_size} "
        f"process(es), {args.optimizer} lr {lr:.4g}, device {device}, amp {amp or 'off'}, "
        f"channels_last {channels_last}, {workers} workers/process; outputs in {output_dir}"
    )

    stop = StopSignal()
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, args.epochs):
            train_loader.sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            first_step = start_step if epoch == start_epoch else 0
            train_loader.sampler.start_index = first_step * args.batch_size
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
                clip_grad=args.clip_grad,
                first_step=first_step,
                should_stop=stop,
                progress=dist_info.is_main and not args.no_progress,
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
                "args": _storable_args(args),
            }
            if result.stopped:
                state.update(epoch=epoch, step=result.completed_steps)
                if dist_info.is_main:
                    path = save_checkpoint(
                        output_dir / "last.pt",
                        eval_model,
                        class_names,
                        category_ids=list(categories.category_ids),
                        train_state=state,
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
            last = epoch + 1 == args.epochs
            eval_result = None
            if last or (epoch + 1) % args.eval_every == 0:
                evaluator = CocoEvaluator(val_set.coco, categories.label_to_category_id)
                eval_start = time.perf_counter()
                evaluate(
                    eval_model,
                    val_loader,
                    device,
                    evaluator,
                    amp_dtype=amp,
                    channels_last=channels_last,
                    progress=dist_info.is_main and not args.no_progress,
                )
                evaluator.synchronize_between_processes()
                if dist_info.is_main:
                    eval_result = evaluator.summarize()
                    row.update(eval_result.stats)
                    row["eval_s"] = time.perf_counter() - eval_start
            history.append(row)
            improved = eval_result is not None and eval_result.map > best_map
            if improved:
                best_map = eval_result.map
            state.update(epoch=epoch + 1, step=0, best_map=best_map, history=history)
            if dist_info.is_main:
                extra = {"category_ids": list(categories.category_ids)}
                save_checkpoint(output_dir / "last.pt", eval_model, class_names, train_state=state, **extra)
                if improved:
                    save_checkpoint(
                        output_dir / "best.pt",
                        eval_model,
                        class_names,
                        metrics={k: float(v) for k, v in eval_result.stats.items()},
                        epoch=epoch + 1,
                        **extra,
                    )
                outputs.write_metrics(output_dir, history)
                if eval_result is not None:
                    outputs.plot_curves(output_dir / "curves.png", history)
                line = (
                    f"epoch {epoch + 1}/{args.epochs}: loss {result.loss:.3f} (box {result.loss_box:.3f}, "
                    f"cls {result.loss_cls:.3f}), {row['img_per_s']:.1f} img/s, {result.seconds:.0f} s"
                )
                if eval_result is not None:
                    line += (
                        f" | val AP {eval_result.map:.3f} AP50 {eval_result.stats['AP50']:.3f} "
                        f"(best {best_map:.3f}), eval {row['eval_s']:.0f} s"
                    )
                log(line + f" | elapsed {_minutes(time.perf_counter() - started)}", flush=True)
                if last:
                    outputs.detection_grid(
                        output_dir / "val_detections.png", eval_model, class_names, [r.path for r in val_set.records]
                    )
                    log("\n" + eval_result.format())
            distributed.barrier()
    finally:
        stop.restore()
    elapsed = time.perf_counter() - started
    log(
        f"\ndone in {_minutes(elapsed)}: best val AP {best_map:.3f}; checkpoints, metrics.csv/json, curves.png and "
        f"val_detections.png in {output_dir}"
    )
    return {"stopped": False, "exit_code": 0, "best_map": best_map, "seconds": elapsed, "output_dir": str(output_dir)}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _storable_args(args) -> dict:
    """The run's settings as plain values (checkpoints load with weights_only=True)."""
    skip = {"explicit", "resume", "eval_only", "weights"}
    return {k: v for k, v in vars(args).items() if k not in skip and (v is None or isinstance(v, (str, int, float)))}


def main(argv: list[str] | None = None) -> int:
    cv2.setNumThreads(0)  # before any OpenCV use: forked DataLoader workers can deadlock otherwise
    dist_info = None
    try:
        args = parse_args(argv)
        dist_info, device = init_distributed_from(args)
        data_paths, recipe = resolve_data(args, dist_info)
        apply_recipe(args, recipe)
        if args.eval_only:
            run_eval_only(args, dist_info, device, data_paths)
            return 0
        return train(args, dist_info, device, data_paths)["exit_code"]
    except (DataError, CheckpointError, UsageError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()


def init_distributed_from(args):
    try:
        return distributed.init_distributed(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
