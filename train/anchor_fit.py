"""Anchor fit: how many training boxes can match an anchor, and what would match more.

An SSD anchor becomes a positive for a box when their IoU reaches the matcher's threshold
(:func:`ssdlite.core.loss.match_anchors`, 0.5). A box no anchor reaches still claims its best
anchor, but that one pair is all it trains through, so tiny or very elongated objects the
anchors cannot match are the usual cause of "mAP near 0 on my data". The trainer prints this
report once per run, before the first epoch, and writes its figures to ``anchor_fit.json``.

The boxes are the dataset records' annotations (crowd boxes left out, as the matcher leaves them
out), normalised to their image: the trainer resizes every image to the square input without
keeping its aspect, so these are the boxes the model sees before augmentation.

Every anchor map is a regular grid with the same box shapes at every location, and the overlap
with a box only shrinks as an anchor's centre moves away from the box's along either axis, so a
box's best IoU on a map is reached at the grid centre nearest to its own: one IoU per box and
box shape, not per box and anchor.
"""

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ssdlite import SSDLiteConfig
from ssdlite.core.anchors import anchors_for, feature_map_sizes, num_anchors_per_location

FILE = "anchor_fit.json"  # in the run directory
# Below this share of boxes the report comes with a warning and measured alternatives.
WARN_BELOW = 0.9
# Boxes beyond this many are sampled (the same sample every run): a share within about half a
# point is enough here, and a dozen alternatives are measured on them in well under a second.
MAX_BOXES = 10_000


@dataclass(frozen=True)
class TrainingBoxes:
    """The boxes the report measures: normalised (x1, y1, x2, y2) and the size of their image."""

    boxes: np.ndarray  # [M, 4] float64 in [0, 1]
    image_sizes: np.ndarray  # [M, 2] (width, height) pixels of the box's image
    total: int  # boxes before sampling

    def __len__(self) -> int:
        return len(self.boxes)


def training_boxes(records, max_boxes: int = MAX_BOXES) -> TrainingBoxes:
    """The non-crowd boxes of dataset records (:class:`train.data.Record`), normalised to their image.

    Records of images whose size the annotations do not give are left out (their boxes are
    clipped only when the image is read).
    """
    boxes, sizes = [], []
    for record in records:
        if not record.width or not record.height:
            continue
        keep = ~np.asarray(record.iscrowd, bool)
        wh = np.array([record.width, record.height], np.float64)
        boxes.append(np.asarray(record.boxes, np.float64)[keep] / np.tile(wh, 2))
        sizes.append(np.broadcast_to(wh, (int(keep.sum()), 2)))
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    all_sizes = np.concatenate(sizes) if sizes else np.zeros((0, 2))
    total = len(all_boxes)
    if total > max_boxes:
        chosen = np.sort(np.random.default_rng(0).choice(total, max_boxes, replace=False))
        all_boxes, all_sizes = all_boxes[chosen], all_sizes[chosen]
    return TrainingBoxes(all_boxes, all_sizes, total)


def anchor_layout(config: SSDLiteConfig) -> list[tuple[int, int]]:
    """Per feature map, (grid side, boxes per location), in the order of ``anchors_for(config)``."""
    sizes = feature_map_sizes(config.image_size)
    return list(
        zip(sizes, num_anchors_per_location(config.anchor_style, len(sizes), config.aspect_ratios), strict=True)
    )


def best_anchor_iou(anchors, boxes: np.ndarray, layout: list[tuple[int, int]]) -> np.ndarray:
    """Each box's highest IoU with any anchor.

    Args:
        anchors: ``[A, 4]`` normalised (cx, cy, w, h), laid out as ``layout`` says (a model's ``anchors``).
        boxes: ``[M, 4]`` normalised (x1, y1, x2, y2).
        layout: per feature map, (grid side, boxes per location), see :func:`anchor_layout`.

    Returns:
        ``[M]`` float64.
    """
    anchors = _as_array(anchors)
    if sum(n * n * b for n, b in layout) != len(anchors):
        raise ValueError(f"{len(anchors)} anchors do not follow the layout {layout}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = (boxes[:, i : i + 1] for i in range(4))
    box_area = (x2 - x1) * (y2 - y1)
    best = np.zeros(len(boxes))
    start = 0
    for n, b in layout:
        grid = anchors[start : start + n * n * b].reshape(n, n, b, 4)  # y, x, box
        start += n * n * b
        xs, ys, shapes = grid[0, :, 0, 0], grid[:, 0, 0, 1], grid[0, 0, :, 2:]
        cx = xs[np.abs((x1 + x2) / 2 - xs).argmin(axis=1)][:, None]
        cy = ys[np.abs((y1 + y2) / 2 - ys).argmin(axis=1)][:, None]
        w, h = shapes[:, 0], shapes[:, 1]
        overlap_x = np.clip(np.minimum(x2, cx + w / 2) - np.maximum(x1, cx - w / 2), 0, None)
        overlap_y = np.clip(np.minimum(y2, cy + h / 2) - np.maximum(y1, cy - h / 2), 0, None)
        inter = overlap_x * overlap_y
        iou = inter / (box_area + w * h - inter)
        best = np.maximum(best, iou.max(axis=1, initial=0.0))
    return best


@dataclass(frozen=True)
class Alternative:
    """A measured change of settings: its flags and the share of boxes it would match."""

    flags: str
    share: float


@dataclass
class AnchorFit:
    """The figures of one report; :meth:`summary` and :attr:`warning` are its text."""

    boxes: int  # measured (sampled down to MAX_BOXES)
    total_boxes: int
    iou_threshold: float
    matched: int
    share: float
    median_best_iou: float
    image_size: int
    anchor_style: str
    anchor_scales: tuple[float, float]
    aspect_ratios: tuple[float, ...]
    smallest_anchor_px: float  # the side of the smallest anchor's area, at the model input
    largest_anchor_ratio: float  # long side / short side of the most elongated anchor
    below: int
    # Median (short side, long side) of the boxes below, at the model input and in the original images:
    # per axis, a mix of wide and tall boxes would give a median of neither.
    below_median_input_px: tuple[float, float] | None
    below_median_image_px: tuple[float, float] | None
    below_small: int  # too small for the smallest anchor at the threshold, wherever it sits
    below_elongated: int  # side ratio beyond the most elongated anchor's
    below_max_ratio: float | None
    alternatives: list[Alternative] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        if self.boxes == 0 or self.share >= WARN_BELOW:
            return None
        text = f"warning: anchor fit: only {self.share:.1%} of the training boxes can match an anchor"
        if not self.alternatives:
            return text + "; no smaller first scale, larger input or added aspect ratio tried matches more"
        shown = "; ".join(f"{a.flags} -> {a.share:.1%}" for a in self.alternatives)
        return text + f"; measured on the same boxes: {shown}"

    def summary(self) -> str:
        if self.boxes == 0:
            return "anchor fit: no training boxes to measure"
        measured = f"{self.boxes} training boxes"
        if self.total_boxes > self.boxes:
            measured = f"a sample of {self.boxes} of the {self.total_boxes} training boxes"
        if self.below == 0:
            return (
                f"anchor fit: 100% of {measured} match an anchor at IoU {self.iou_threshold:g} "
                f"(median best IoU {self.median_best_iou:.2f})"
            )
        parts = []
        if self.below_median_input_px and self.below_median_image_px:
            (short, long), (image_short, image_long) = self.below_median_input_px, self.below_median_image_px
            parts.append(
                f"median sides {short:.0f} and {long:.0f} px at the {self.image_size} px input "
                f"({image_short:.0f} and {image_long:.0f} in the images)"
            )
        if self.below_small:
            parts.append(f"{self.below_small} too small (anchors start at {self.smallest_anchor_px:.0f} px)")
        if self.below_elongated:
            parts.append(
                f"{self.below_elongated} elongated (side ratio over {self.largest_anchor_ratio:.3g}, "
                f"up to {self.below_max_ratio:.3g})"
            )
        return (
            f"anchor fit: {self.share:.1%} of {measured} match an anchor at IoU "
            f"{self.iou_threshold:g} (median best IoU {self.median_best_iou:.2f}); {self.below} match none: "
            f"{', '.join(parts)}; they still train through their best anchor, but weakly"
        )

    def to_dict(self) -> dict:
        values = asdict(self)
        values["warning"] = self.warning
        return values


def measure(
    config: SSDLiteConfig,
    boxes: TrainingBoxes,
    iou_threshold: float = 0.5,
    anchors=None,
    ratios_fixed: bool = False,
) -> AnchorFit:
    """The anchor fit of ``config``'s anchors (or ``anchors``, laid out as the config's) on ``boxes``.

    Under :data:`WARN_BELOW` it also measures alternatives (see :func:`alternatives`); an added aspect
    ratio only when ``ratios_fixed`` is false (fine-tuning keeps the heads' size) and the anchor style
    is ``"ssd"``.
    """
    a = _as_array(anchors_for(config) if anchors is None else anchors)
    ious = best_anchor_iou(a, boxes.boxes, anchor_layout(config))
    below = ious < iou_threshold
    anchor_sides = np.sqrt(a[:, 2] * a[:, 3])
    anchor_ratio = float(np.max(np.maximum(a[:, 2] / a[:, 3], a[:, 3] / a[:, 2]))) if len(a) else 1.0
    smallest = float(anchor_sides.min()) if len(a) else 0.0

    wh = boxes.boxes[:, 2:] - boxes.boxes[:, :2]
    side_ratio = np.maximum(wh[:, 0] / wh[:, 1], wh[:, 1] / wh[:, 0]) if len(wh) else np.zeros(0)
    # A box of less than threshold x the smallest anchor's area reaches the threshold with no anchor.
    small = np.sqrt(wh[:, 0] * wh[:, 1]) < smallest * math.sqrt(iou_threshold)
    elongated = side_ratio > anchor_ratio * (1 + 1e-6)
    below_wh = wh[below]
    fit = AnchorFit(
        boxes=len(boxes),
        total_boxes=boxes.total,
        iou_threshold=iou_threshold,
        matched=int((~below).sum()),
        share=float((~below).mean()) if len(boxes) else 1.0,
        median_best_iou=float(np.median(ious)) if len(boxes) else 0.0,
        image_size=config.image_size,
        anchor_style=config.anchor_style,
        anchor_scales=(config.min_scale, config.max_scale),
        aspect_ratios=config.aspect_ratios,
        smallest_anchor_px=smallest * config.image_size,
        largest_anchor_ratio=anchor_ratio,
        below=int(below.sum()),
        below_median_input_px=_median_sides(below_wh * config.image_size),
        below_median_image_px=_median_sides(below_wh * boxes.image_sizes[below]),
        below_small=int((below & small).sum()),
        below_elongated=int((below & elongated).sum()),
        below_max_ratio=float(side_ratio[below].max()) if below.any() else None,
    )
    if fit.boxes and fit.share < WARN_BELOW:
        fit.alternatives = alternatives(
            config, boxes, iou_threshold, below & small, below & elongated, ratios_fixed, fit.share
        )
    return fit


def alternatives(
    config: SSDLiteConfig,
    boxes: TrainingBoxes,
    iou_threshold: float,
    small: np.ndarray,
    elongated: np.ndarray,
    ratios_fixed: bool,
    share_now: float,
) -> list[Alternative]:
    """Measured changes for the boxes below the threshold (masks ``small``/``elongated``).

    Tries every combination of a smaller first scale, twice the input size (a denser grid: scales
    are fractions of the input, so it does not shrink the anchors) and an added aspect ratio, and
    returns the best change of one flag, then of two, then of three, each kept only when it
    matches at least a point more than the one before.
    """
    wh = boxes.boxes[:, 2:] - boxes.boxes[:, :2]

    def share(changes: dict) -> float:
        candidate = config.replace(**changes)
        ious = best_anchor_iou(anchors_for(candidate), boxes.boxes, anchor_layout(candidate))
        return float((ious >= iou_threshold).mean())

    scales = {round(config.min_scale / 2, 3), round(config.min_scale / 4, 3)}
    if small.any():  # a first scale about the size of the typical small box
        scales.add(max(0.01, round(float(np.median(np.sqrt(wh[small, 0] * wh[small, 1]))), 2)))
    options: list[list[dict]] = [[{}, *({"min_scale": s} for s in sorted(scales) if 0.005 <= s < config.min_scale)]]
    options.append([{}, {"image_size": config.image_size * 2}])
    if elongated.any() and config.anchor_style == "ssd" and not ratios_fixed:
        side_ratio = np.maximum(wh[elongated, 0] / wh[elongated, 1], wh[elongated, 1] / wh[elongated, 0])
        widest = max(max(r, 1 / r) for r in config.aspect_ratios)
        ratio = float(max(round(float(np.median(side_ratio))), math.floor(widest) + 1))
        options.append([{}, {"aspect_ratios": (*config.aspect_ratios, ratio)}])
    best: dict[int, tuple[float, dict]] = {}
    for parts in itertools.product(*options):
        changes = {k: v for part in parts for k, v in part.items()}
        if changes:
            measured = share(changes)
            if len(changes) not in best or measured > best[len(changes)][0]:
                best[len(changes)] = (measured, changes)
    chosen, floor = [], share_now + 0.01
    for count in sorted(best):
        measured, changes = best[count]
        if measured >= floor:
            chosen.append(Alternative(_flags(config, changes), measured))
            floor = measured + 0.01
    return chosen


def _flags(config: SSDLiteConfig, changes: dict) -> str:
    flags = []
    if "min_scale" in changes:
        flags.append(f"--anchor-scales {changes['min_scale']:g},{config.max_scale:g}")
    if "aspect_ratios" in changes:
        flags.append(f"--aspect-ratios {','.join(f'{r:g}' for r in changes['aspect_ratios'])}")
    if "image_size" in changes:
        flags.append(f"--image-size {changes['image_size']}")
    return " ".join(flags)


def _as_array(anchors) -> np.ndarray:
    return anchors.detach().cpu().double().numpy() if isinstance(anchors, torch.Tensor) else np.asarray(anchors)


def _median_sides(wh: np.ndarray) -> tuple[float, float] | None:
    if not len(wh):
        return None
    return float(np.median(wh.min(axis=1))), float(np.median(wh.max(axis=1)))
