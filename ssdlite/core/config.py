"""``SSDLiteConfig``: everything that defines a model, its postprocessing, and the named presets."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .anchors import ANCHOR_STYLES, DEFAULT_ASPECT_RATIOS
from .backbones import BACKBONES
from .layers import PADDING_STYLES

SCORE_FUNCTIONS = ("softmax", "sigmoid")

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _check(checks: list[tuple[bool, str]], name: str):
    for ok, message in checks:
        if not ok:
            raise ValueError(f"invalid {name}: {message}")


@dataclass(frozen=True)
class PostprocessConfig:
    """How raw outputs become detections: score function, box decoding, thresholds and NMS.

    ``score_function`` and ``box_weights`` are fixed by training (the loss uses them too); the
    other four are defaults a caller may override per request.
    """

    score_function: str = "softmax"
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_threshold: float = 0.01
    nms_iou: float = 0.5
    max_detections: int = 100
    candidates_per_image: int = 400

    def __post_init__(self):
        _check(
            [
                (self.score_function in SCORE_FUNCTIONS, f"score_function must be one of {SCORE_FUNCTIONS}"),
                (len(self.box_weights) == 4, "box_weights needs four weights"),
                (0 <= self.score_threshold <= 1, "score_threshold must be in [0, 1]"),
                (0 < self.nms_iou <= 1, "nms_iou must be in (0, 1]"),
                (self.max_detections >= 1, "max_detections must be at least 1"),
                (self.candidates_per_image >= 1, "candidates_per_image must be at least 1"),
            ],
            "PostprocessConfig",
        )


POSTPROCESS_FIELDS = frozenset(f.name for f in dataclasses.fields(PostprocessConfig))


@dataclass(frozen=True)
class SSDLiteConfig:
    """Everything that defines a model; stored in checkpoints and exported files.

    ``num_classes`` counts the background class (index 0). ``mean``/``std`` apply to RGB
    pixel values in [0, 255]. ``aspect_ratios`` are the ``"ssd"`` anchor style's ratios r (each
    places an r and a 1/r box beside the two square ones, so they set the heads' size); the
    ``"tf"`` style's ratios are fixed and it refuses other values.
    """

    backbone: str = "mobilenet_v2"
    width_mult: float = 1.0
    image_size: int = 320
    num_classes: int = 91
    extra_depths: tuple[int, ...] = (512, 256, 256, 128)
    anchor_style: str = "ssd"
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = DEFAULT_ASPECT_RATIOS
    padding: str = "torch"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def __post_init__(self):
        try:
            ratios = tuple(float(r) for r in self.aspect_ratios)
        except (TypeError, ValueError):
            raise ValueError(
                f"invalid SSDLiteConfig: aspect_ratios must be numbers, got {self.aspect_ratios!r}"
            ) from None
        object.__setattr__(self, "aspect_ratios", ratios)  # a list or ints compare and serialise as this tuple
        _check(
            [
                (self.backbone in BACKBONES, f"backbone must be one of {sorted(BACKBONES)}"),
                (self.anchor_style in ANCHOR_STYLES, f"anchor_style must be one of {ANCHOR_STYLES}"),
                (self.padding in PADDING_STYLES, f"padding must be one of {PADDING_STYLES}"),
                (self.num_classes >= 2, "num_classes counts background and must be at least 2"),
                (self.image_size >= 32, "image_size must be at least 32"),
                (self.width_mult > 0, "width_mult must be positive"),
                (0 < self.min_scale < self.max_scale, "anchor scales need 0 < min_scale < max_scale"),
                (len(ratios) > 0, "aspect_ratios needs at least one ratio"),
                (all(0 < r < float("inf") for r in ratios), "aspect_ratios must be positive"),
                (
                    self.anchor_style == "ssd" or ratios == DEFAULT_ASPECT_RATIOS,
                    f"the 'tf' anchor style has fixed aspect ratios; aspect_ratios={ratios} needs anchor_style 'ssd'",
                ),
                (len(self.extra_depths) == 4, "extra_depths needs four depths"),
                (isinstance(self.postprocess, PostprocessConfig), "postprocess must be a PostprocessConfig"),
            ],
            "SSDLiteConfig",
        )

    def replace(self, **changes) -> "SSDLiteConfig":
        """A copy with ``changes`` applied; postprocessing fields may be given by name (``nms_iou=0.6``)."""
        postprocess = {k: changes.pop(k) for k in list(changes) if k in POSTPROCESS_FIELDS}
        if postprocess:
            changes["postprocess"] = dataclasses.replace(changes.get("postprocess", self.postprocess), **postprocess)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SSDLiteConfig":
        """The inverse of :meth:`to_dict`; also reads files written before postprocessing had its own
        section (its six fields flat beside the others)."""
        values = dict(values)
        postprocess = dict(values.pop("postprocess", None) or {})
        postprocess.update({k: values.pop(k) for k in list(values) if k in POSTPROCESS_FIELDS})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown SSDLiteConfig fields: {sorted(unknown)}")
        unknown = set(postprocess) - POSTPROCESS_FIELDS
        if unknown:
            raise ValueError(f"unknown PostprocessConfig fields: {sorted(unknown)}")
        return cls(
            **{k: _tuples(v) for k, v in values.items()},
            postprocess=PostprocessConfig(**{k: _tuples(v) for k, v in postprocess.items()}),
        )


def _tuples(value):
    return tuple(value) if isinstance(value, list) else value


_TF_POSTPROCESS = PostprocessConfig(score_function="sigmoid", score_threshold=1e-8, nms_iou=0.6)

PRESETS: dict[str, SSDLiteConfig] = {
    "ssdlite320_mobilenet_v2": SSDLiteConfig(),
    "ssdlite300_mobilenet_v2_tf": SSDLiteConfig(
        image_size=300,
        anchor_style="tf",
        padding="same",
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
        postprocess=_TF_POSTPROCESS,
    ),
    "ssdlite320_mobilenet_v1": SSDLiteConfig(backbone="mobilenet_v1"),
    "ssdlite320_mobilenet_v3_large": SSDLiteConfig(backbone="mobilenet_v3_large"),
    "ssdlite320_mobilenet_v3_small": SSDLiteConfig(backbone="mobilenet_v3_small"),
    # torchvision's ssdlite320_mobilenet_v3_large as it builds it without pretrained weights.
    "ssdlite320_mobilenet_v3_large_torchvision": SSDLiteConfig(
        backbone="mobilenet_v3_large_reduced_tail",
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
        postprocess=PostprocessConfig(
            score_threshold=0.001, nms_iou=0.55, max_detections=300, candidates_per_image=300
        ),
    ),
}


def get_config(name: str, **overrides) -> SSDLiteConfig:
    """Returns the preset ``name`` with ``overrides`` applied (see :meth:`SSDLiteConfig.replace`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
