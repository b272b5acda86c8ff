"""``python -m train.coco``'s arguments, resolved once into a frozen :class:`TrainConfig`.

Resolution order: the command line, then (with ``--resume``) the settings stored in the run's
checkpoint, then the recipe of the data (``train/recipes.py``). The rest of the trainer only
sees the frozen result.
"""

import argparse
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

from ssdlite.core.backbones.imagenet import check_backbone_weights
from ssdlite.core.model import get_config
from ssdlite.weights.checkpoint import CheckpointError, read_checkpoint

from .data import DataError, DataSource, parse_class_list
from .recipes import BATCH_FOR_BASE_LR, RECIPES
from .synthetic import SyntheticSpec
from .transforms import AUGMENTATIONS


class UsageError(ValueError):
    """Command-line arguments that do not fit together."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training (or ``--eval-only``) run, resolved."""

    data: DataSource
    recipe: str  # a key of RECIPES
    classes: tuple[str, ...] | None  # train on these dataset categories only
    # model
    model: str
    image_size: int | None  # None: the preset's (or the --init checkpoint's)
    width_mult: float | None
    min_scale: float | None
    init: str | None  # zoo name or checkpoint to fine-tune
    backbone_weights: str | None  # "imagenet", a state-dict path, or None (from scratch)
    # optimisation
    epochs: int
    batch_size: int  # per process
    optimizer: str
    lr: float  # peak, for the actual global batch
    weight_decay: float
    momentum: float
    warmup_epochs: float
    clip_grad: float
    ema_decay: float
    augment: str
    box_loss: str
    seed: int
    # execution
    workers: int
    device: str
    amp: str
    channels_last: bool
    sync_bn: bool
    eval_every: int
    progress: bool
    # outputs
    output_dir: str | None
    resume: str | None
    eval_only: bool
    weights: str | None
    # The command-line values behind this config, stored in checkpoints for --resume.
    cli: dict = field(default_factory=dict, compare=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.coco",
        description="Train or evaluate SSDLite on COCO-format or YOLO-format data.",
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
    data.add_argument(
        "--data",
        metavar="DATA_YAML",
        help="YOLO-format dataset (Ultralytics/Roboflow data.yaml with train, val, names)",
    )
    data.add_argument(
        "--classes",
        help="train (and evaluate) on these dataset categories only, by name, e.g. person,car; "
        "other boxes are dropped, their images stay as negatives",
    )
    data.add_argument("--synthetic-train", type=int, default=SyntheticSpec.num_train, help="embedded set: train images")
    data.add_argument("--synthetic-val", type=int, default=SyntheticSpec.num_val, help="embedded set: val images")
    data.add_argument(
        "--data-cache",
        help="where the embedded set is generated (default: $SSDLITE_DATA_DIR or ~/.cache/ssdlite/datasets)",
    )

    model = parser.add_argument_group("model (defaults depend on the data: see train/recipes.py)")
    model.add_argument("--model", help="preset name, e.g. ssdlite320_mobilenet_v2")
    model.add_argument("--image-size", type=int, help="input size (square)")
    model.add_argument("--width-mult", type=float, help="backbone width multiplier")
    model.add_argument("--min-scale", type=float, help="anchor scale of the first feature map (preset: 0.2)")
    model.add_argument(
        "--backbone-weights",
        metavar="imagenet|none|PATH",
        help="backbone initialisation: torchvision's ImageNet weights (downloaded once into the torch hub "
        "cache), none (from scratch), or a torchvision-format state dict file (default: imagenet on "
        "your data, none on the embedded set)",
    )
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
    ev.add_argument("--weights", help="checkpoint, .onnx export (float or INT8) or model-zoo name to evaluate")
    return parser


# Settings that belong to one invocation, not to the run (never stored, never restored).
_NOT_STORED = ("resume", "eval_only", "weights", "output_dir")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, frozenset[str]]:
    """The command line merged with a resumed run's stored settings, and the names given explicitly."""
    parser = build_parser()
    args = parser.parse_args(argv)
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    explicit = frozenset(vars(probe.parse_args(argv)))
    if args.resume:
        stored = resume_payload(args.resume)["train_state"]["args"]
        for key, value in stored.items():
            if key in vars(args) and key not in explicit and key not in _NOT_STORED:
                setattr(args, key, value)
    return args, explicit


def resume_payload(resume: str) -> dict:
    """The checkpoint ``--resume`` points at (a run directory means its last.pt), with its ``path``."""
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    payload = read_checkpoint(path)
    if "train_state" not in payload:
        raise CheckpointError(f"{path}: has no training state to resume (is it a best.pt or an exported model?)")
    payload["path"] = str(path)
    return payload


def resolve_config(args: argparse.Namespace, explicit: frozenset[str], world_size: int = 1) -> TrainConfig:
    """Checks that the arguments fit together and fills every default; see the module docstring."""
    data = resolve_data_source(args)
    recipe_name = "embedded" if data.kind == "embedded" else "coco"
    recipe = RECIPES[recipe_name]

    def pick(name: str):
        value = getattr(args, name)
        return getattr(recipe, name) if value is None else value

    if args.init:
        conflicting = {"model", "width_mult", "min_scale", "backbone_weights"} & explicit
        if conflicting:
            flags = "/".join(f"--{name.replace('_', '-')}" for name in sorted(conflicting))
            raise UsageError(f"--init takes the architecture and weights from its checkpoint; drop {flags}")
    try:
        classes = tuple(parse_class_list(args.classes)) if args.classes is not None else None
    except ValueError as error:
        raise UsageError(f"--classes: {error}") from None
    if args.eval_only and classes:
        raise UsageError("--classes applies to training; --eval-only scores the classes the model and data share")
    batch_size = pick("batch_size")
    # A resumed run's weights come from its checkpoint, an --init run's from its source model.
    backbone_weights = None if args.init or args.resume else parse_backbone_weights(pick("backbone_weights"))
    if backbone_weights:  # refuse v1, other widths... before any data is read
        try:
            preset = get_config(pick("model"))
        except ValueError as error:
            raise UsageError(str(error)) from None
        check_backbone_weights(preset.backbone, pick("width_mult") or preset.width_mult, backbone_weights)
    return TrainConfig(
        data=data,
        recipe=recipe_name,
        classes=classes,
        model=pick("model"),
        image_size=(args.image_size if "image_size" in explicit else None) if args.init else pick("image_size"),
        width_mult=pick("width_mult"),
        min_scale=pick("min_scale"),
        init=args.init,
        backbone_weights=backbone_weights,
        epochs=pick("epochs"),
        batch_size=batch_size,
        optimizer=pick("optimizer"),
        lr=args.lr if args.lr is not None else recipe.lr_for(batch_size * world_size),
        weight_decay=pick("weight_decay"),
        momentum=args.momentum,
        warmup_epochs=pick("warmup_epochs"),
        clip_grad=args.clip_grad,
        ema_decay=pick("ema_decay"),
        augment=pick("augment"),
        box_loss=args.box_loss,
        seed=args.seed,
        workers=args.workers if args.workers is not None else default_workers(world_size),
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last == "on",
        sync_bn=args.sync_bn,
        eval_every=pick("eval_every"),
        progress=not args.no_progress,
        output_dir=args.output_dir,
        resume=args.resume,
        eval_only=args.eval_only,
        weights=args.weights,
        cli={
            k: v
            for k, v in vars(args).items()
            if k not in _NOT_STORED and (v is None or isinstance(v, (str, int, float)))
        },
    )


def parse_backbone_weights(value: str | None) -> str | None:
    """``imagenet`` | ``none`` | a file path -> ``"imagenet"``, ``None`` or the path."""
    if value is None or value.lower() == "none":
        return None
    if value.lower() == "imagenet":
        return "imagenet"
    if not Path(value).is_file():
        raise UsageError(f"--backbone-weights {value}: not 'imagenet', 'none' or an existing file")
    return value


def resolve_data_source(args: argparse.Namespace) -> DataSource:
    pairs = {
        "train_ann": args.train_ann,
        "train_images": args.train_images,
        "val_ann": args.val_ann,
        "val_images": args.val_images,
    }
    given = [flag for flag, value in (("--data-dir", args.data_dir), ("--data", args.data)) if value]
    if any(pairs.values()):
        given.append("--train-ann/--train-images/--val-ann/--val-images")
    if len(given) > 1:
        raise UsageError(f"give one kind of data, not {' and '.join(given)}")
    if args.data:
        if not Path(args.data).is_file():
            raise DataError(f"{args.data}: data.yaml not found")
        return DataSource("yolo", yaml=args.data)
    if args.data_dir:
        root = Path(args.data_dir)
        if not root.is_dir():
            raise DataError(f"{root}: data directory not found")
        return DataSource(
            "coco",
            train_ann=str(root / "annotations" / "instances_train2017.json"),
            train_images=str(root / "train2017"),
            val_ann=str(root / "annotations" / "instances_val2017.json"),
            val_images=str(root / "val2017"),
        )
    if any(pairs.values()):
        needed = ("val_ann", "val_images") if args.eval_only else tuple(pairs)
        missing = [f"--{k.replace('_', '-')}" for k in needed if not pairs[k]]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or use --data-dir)")
        return DataSource("coco", **pairs)
    spec = SyntheticSpec(num_train=args.synthetic_train, num_val=args.synthetic_val)
    return DataSource("embedded", synthetic=spec, cache=args.data_cache)


def default_workers(world_size: int) -> int:
    # With two cores or fewer per process a worker only competes with torch's compute threads
    # (measured on 2 cores: 0 workers 74 img/s, 1 worker 71 img/s).
    cores = (os.cpu_count() or 1) // world_size
    return 0 if cores <= 2 else min(8, cores - 1)
