"""The model a run trains: a preset (from scratch or on an ImageNet backbone), a checkpoint to
fine-tune with its class predictors re-initialised when the classes differ, or a resumed run's
architecture."""

import dataclasses

import torch

from ssdlite import SSDLite, SSDLiteConfig, build_model
from ssdlite.core.anchors import anchors_for
from ssdlite.runtime import Backend, ModelLoadError, TorchBackend, load_backend
from ssdlite.weights import CheckpointError

from .config import TrainConfig, UsageError, read_init_checkpoint

ANCHOR_FIELDS = ("min_scale", "max_scale", "aspect_ratios")  # TrainConfig fields that override the model's


@dataclasses.dataclass
class TrainModel:
    model: SSDLite
    reinitialised: list[str]  # parameters that start fresh ("class_head" for a whole new model)
    origin: str  # what the weights start from, for the log


def build_train_model(config: TrainConfig, class_names: list[str], resume: dict | None = None) -> TrainModel:
    """The model for ``config`` predicting ``class_names`` (plus background)."""
    torch.manual_seed(config.seed)
    if resume:  # the architecture as trained (an --init checkpoint need not exist any more)
        return TrainModel(SSDLite(SSDLiteConfig.from_dict(resume["config"])), [], f"resumed {resume['path']}")
    anchors = {k: getattr(config, k) for k in ANCHOR_FIELDS if getattr(config, k) is not None}
    if config.init:
        return model_from_init(config.init, class_names, config.image_size, anchors)
    names = ("image_size", "width_mult")
    overrides = {k: getattr(config, k) for k in names if getattr(config, k) is not None} | anchors
    model = build_model(
        config.model, num_classes=len(class_names) + 1, backbone_weights=config.backbone_weights, **overrides
    )
    origin = f"{config.model}, backbone {model.backbone_weights or 'from scratch'}"
    return TrainModel(model, ["class_head"], origin)


def model_from_init(
    init: str, class_names: list[str], image_size: int | None, anchors: dict | None = None
) -> TrainModel:
    """Builds a model from a zoo name or checkpoint path for fine-tuning on ``class_names``.

    Backbone, extras, box head and the class head's depthwise layers load as they are; the class
    head's final 1x1 predictors are re-initialised unless the checkpoint has the same classes.
    ``anchors`` overrides anchor fields (``ANCHOR_FIELDS``) that keep the heads' size.
    """
    path, payload, config = read_init_checkpoint(init)
    overrides = {"num_classes": len(class_names) + 1}
    if image_size:
        overrides["image_size"] = image_size
    overrides |= anchors or {}
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
    return TrainModel(model, reinitialised, f"{init} ({path})")


def freeze_layers(model: SSDLite, spec: str | None) -> list[torch.nn.Module]:
    """Stops training the layers ``spec`` names (see ``--freeze``) and returns them.

    Their parameters stop requiring gradients; the caller keeps the returned modules in eval
    mode while training (:func:`train.engine.train_one_epoch`) so their BatchNorm statistics stay too.

    Raises:
        UsageError: ``spec`` counts more layers than the backbone has.
    """
    if spec is None:
        return []
    if spec == "backbone":
        frozen = [model.backbone]
    elif spec == "features":
        frozen = [model.backbone, model.extras]
    else:
        layers = model.backbone.features
        if int(spec) > len(layers):
            raise UsageError(f"--freeze {spec}: the {model.config.backbone} backbone has {len(layers)} layers")
        frozen = list(layers[: int(spec)])
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def init_class_prior(model: SSDLite, prior: float = 0.01):
    """Focal-loss start: every class predictor says ``prior`` for each object class."""
    bias = -torch.log(torch.tensor((1 - prior) / prior))
    with torch.no_grad():
        for predictor in model.class_head.predictors:
            predictor[-1].bias.fill_(bias)


class ExportedEvalModel(torch.nn.Module):
    """An export (``.onnx``, ``.tflite``, ``.pte``; float or INT8) behind the interface ``engine.evaluate`` uses.

    Evaluating the export itself measures what quantization costs in AP.
    """

    def __init__(self, backend: Backend):
        super().__init__()
        self.backend = backend
        self.config = backend.config
        self.class_names = backend.class_names
        self.register_buffer("anchors", anchors_for(self.config))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backend(images)


def load_eval_model(source, device: torch.device) -> tuple[torch.nn.Module, list[str]]:
    """A zoo name, checkpoint or export (``.onnx``, ``.tflite``, ``.pte``: CPU only), ready for ``engine.evaluate``.

    Raises:
        ZooError, CheckpointError, UsageError: the model cannot be loaded, or not on ``device``.
    """
    try:
        backend = load_backend(source, device=device)
    except ModelLoadError as error:
        raise UsageError(str(error)) from None
    if isinstance(backend, TorchBackend):
        return backend.model, backend.class_names
    model = ExportedEvalModel(backend)
    return model, model.class_names
