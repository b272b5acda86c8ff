"""COCO-format detection data: annotation loading, category-id mapping, images.

COCO's category ids are sparse (1..90 with gaps); the model wants contiguous labels 1..K
(0 is background). :class:`CategoryMap` converts both ways, so result files carry the
original ids. Annotation problems are repaired or dropped once, at load time, and counted;
an unreadable image is skipped when its batch is built and counted then (training goes on).
A dataset can be restricted to some of its categories by name (``classes``): boxes of the
others are dropped and their images stay, as negatives.
"""

import contextlib
import difflib
import io
import json
import os
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ssdlite.images import read_image

from .errors import ClassListError, DataError


def parse_class_list(text: str) -> list[str]:
    """Parses a comma-separated list of category names, e.g. ``"person, car"`` -> ``["person", "car"]``.

    Whitespace around each name is stripped and repeated names are kept once (first place).
    Usable as an argparse ``type=``.

    Raises:
        ClassListError: (a ``ValueError``) the list or one of its names is empty.
    """
    names = [name.strip() for name in str(text).split(",")]
    if not any(names):
        raise ClassListError(f"empty class list {text!r}: give category names separated by commas")
    if not all(names):
        raise ClassListError(f"empty class name in {text!r}: give category names separated by commas")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class CategoryMap:
    """Contiguous model labels (1..K) <-> dataset category ids, ordered by category id."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, coco: COCO) -> "CategoryMap":
        categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in categories), tuple(c["name"] for c in categories))

    def select(self, names: str | Sequence[str]) -> "CategoryMap":
        """The categories called ``names`` (kept in category-id order; repeated names count once).

        A string is read as a comma-separated list (see :func:`parse_class_list`).

        Raises:
            DataError: ``names`` is empty or names a category this map does not have (the message
                lists the available ones).
        """
        if isinstance(names, str):
            try:
                names = parse_class_list(names)
            except ClassListError as error:
                raise DataError(str(error)) from None
        wanted = list(dict.fromkeys(str(name) for name in names))
        if not wanted:
            raise DataError("empty class list: name at least one category")
        unknown = [name for name in wanted if name not in self.names]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, self.names, n=1) or [
                    n for n in self.names if n.lower() == name.lower()
                ]
                if close:
                    hints.append(f"{name!r} -> {close[0]!r}?")
            raise DataError(
                f"unknown {'category' if len(unknown) == 1 else 'categories'} {', '.join(map(repr, unknown))}"
                + (f" (did you mean {', '.join(hints)})" if hints else "")
                + f"; the dataset's categories: {', '.join(self.names)}"
            )
        chosen = set(wanted)
        pairs = [(c, n) for c, n in zip(self.category_ids, self.names, strict=True) if n in chosen]
        return CategoryMap(tuple(c for c, _ in pairs), tuple(n for _, n in pairs))

    def to_label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1

    def to_category_id(self, label: int) -> int:
        return self.category_ids[label - 1]

    @property
    def label_to_category_id(self) -> dict[int, int]:
        """Every model label -> its dataset category id (what ``CocoEvaluator`` takes)."""
        return dict(enumerate(self.category_ids, start=1))

    @property
    def num_classes(self) -> int:
        """Model classes including background."""
        return len(self.category_ids) + 1


@dataclass
class AnnotationStats:
    """What loading the annotations found and did (shown to the user once)."""

    images: int = 0
    boxes: int = 0
    crowd: int = 0
    empty_images: int = 0
    clipped: int = 0
    dropped: int = 0
    unknown_category: int = 0
    other_classes: int = 0  # boxes of categories left out by ``classes`` (not a problem)
    notes: list[str] = field(default_factory=list)  # whole messages (e.g. YOLO label-file warnings)

    def summary(self, name: str) -> str:
        """One line of counts (problems after "warning:"), then each note on its own line."""
        text = f"{name}: {self.images} images, {self.boxes} boxes ({self.crowd} crowd, ignored in matching)"
        if self.empty_images:
            text += f", {self.empty_images} images without boxes"
        if self.other_classes:
            text += f", {self.other_classes} boxes of other classes dropped (--classes)"
        problems = []
        if self.clipped:
            problems.append(f"{self.clipped} boxes clipped to their image")
        if self.dropped:
            problems.append(f"{self.dropped} degenerate boxes dropped (empty, non-finite or outside the image)")
        if self.unknown_category:
            problems.append(f"{self.unknown_category} boxes with an unknown category dropped")
        if problems:
            text += "; warning: " + ", ".join(problems)
        return "\n".join([text, *self.notes])


_REQUIRED_FIELDS = {
    "images": ("id", "file_name"),
    "categories": ("id", "name"),
    "annotations": ("image_id", "category_id", "bbox"),
}


def load_coco(annotations: str | os.PathLike | dict, source_name: str | None = None) -> COCO:
    """Loads COCO instances annotations with pycocotools, turning any failure into a :class:`DataError`.

    Args:
        annotations: a COCO instances json file, or such a dataset already in memory (a dict,
            e.g. from :func:`train.data.yolo.load_yolo`; it is completed in place, not copied). Both
            go through the same checks.
        source_name: what error messages name (default: the json path, or
            ``"<in-memory annotations>"`` for a dict), e.g. the ``data.yaml`` a dict came from.
    """
    if isinstance(annotations, dict):
        path = source_name or "<in-memory annotations>"
        dataset = annotations
    else:
        path = source_name or Path(annotations)
        if not Path(annotations).is_file():
            raise DataError(f"{path}: annotation file not found")
        try:
            with open(annotations) as f:
                dataset = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a readable JSON annotation file ({error})") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise DataError(f"{path}: not a COCO annotation file (no 'images' list)")
    if not isinstance(dataset.get("categories"), list) or not dataset["categories"]:
        raise DataError(f"{path}: not a COCO instances file (no 'categories')")
    dataset.setdefault("annotations", [])
    for section, keys in _REQUIRED_FIELDS.items():
        if not isinstance(dataset[section], list):
            raise DataError(f"{path}: malformed COCO annotations ('{section}' is not a list)")
        for i, entry in enumerate(dataset[section]):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DataError(f"{path}: malformed COCO annotations ({section}[{i}] lacks {', '.join(missing)})")
    used_ids = {a.get("id") for a in dataset["annotations"]}
    next_id = max((i for i in used_ids if isinstance(i, int)), default=0) + 1
    for annotation in dataset["annotations"]:  # fields COCOeval needs but some exporters omit
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            try:
                annotation["area"] = float(annotation["bbox"][2]) * float(annotation["bbox"][3])
            except (TypeError, ValueError, IndexError):
                annotation["area"] = 0.0
        if "id" not in annotation:
            annotation["id"], next_id = next_id, next_id + 1
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def sanitize_boxes(
    annotations: list[dict],
    width: float,
    height: float,
    categories: CategoryMap,
    stats,
    other_ids: Collection[int] = (),
):
    """COCO ``[x, y, w, h]`` annotations -> (xyxy pixel boxes, labels, iscrowd), clipped to the image.

    Boxes that end up empty (or were non-finite, or lie outside the image) are dropped; boxes
    that had to be clipped are counted. Both counts go into ``stats``. Boxes of ``other_ids``
    (categories left out on purpose) are dropped and counted as ``other_classes``; those of
    categories the dataset does not declare as ``unknown_category``.
    """
    boxes, labels, crowd = [], [], []
    known = set(categories.category_ids)
    for ann in annotations:
        if ann["category_id"] not in known:
            if ann["category_id"] in other_ids:
                stats.other_classes += 1
            else:
                stats.unknown_category += 1
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (TypeError, ValueError):
            stats.dropped += 1
            continue
        box = np.array([x, y, x + w, y + h])
        if not np.isfinite(box).all():
            stats.dropped += 1
            continue
        clipped = np.clip(box, 0, [width, height, width, height])
        if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
            stats.dropped += 1
            continue
        if not np.array_equal(clipped, box):
            stats.clipped += 1
        boxes.append(clipped)
        labels.append(categories.to_label(ann["category_id"]))
        crowd.append(bool(ann.get("iscrowd", 0)))
    stats.boxes += len(boxes)
    stats.crowd += sum(crowd)
    return (
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(labels, np.int64),
        np.array(crowd, bool),
    )


@dataclass
class Record:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # [M, 4] xyxy pixels
    labels: np.ndarray  # [M] 1..K
    iscrowd: np.ndarray  # [M] bool


class CocoDetection(Dataset):
    """A COCO-format detection dataset.

    Each item is a dict: ``image`` (uint8 ``[S, S, 3]`` RGB after ``transform``), ``boxes``
    (normalised xyxy float32 ``[M, 4]``), ``labels``, ``iscrowd``, ``image_id`` and ``size``
    (original ``(height, width)``); or ``None`` for an image that cannot be read (the collate
    function skips and counts those).

    Args:
        annotation_file: COCO instances json, or the same as a dict (see :func:`load_coco`).
        image_dir: directory the json's ``file_name`` entries are relative to.
        transform: a pipeline from :func:`train.transforms.build_transform`.
        seed: base of the per-sample augmentation seed (see :meth:`set_epoch`).
        classes: train on these categories only (dataset category names; see
            :meth:`CategoryMap.select`). Labels 1..K then follow the chosen categories' ids,
            boxes of the other categories are dropped (``stats.other_classes``) and their
            images stay, as negatives. ``None``: every category.
        source_name: what messages and ``annotation_file`` name instead of the json path
            (for a dict: the file it came from, e.g. a YOLO ``data.yaml``).
    """

    def __init__(
        self,
        annotation_file,
        image_dir,
        transform=None,
        seed: int = 0,
        classes: str | Sequence[str] | None = None,
        source_name: str | os.PathLike | None = None,
    ):
        in_memory = isinstance(annotation_file, dict)
        default_name = "<in-memory annotations>" if in_memory else annotation_file
        self.annotation_file = Path(source_name if source_name is not None else default_name)
        self.image_dir = Path(image_dir)
        self.coco = load_coco(annotation_file, None if source_name is None else str(source_name))
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image directory not found")
        every_category = CategoryMap.from_coco(self.coco)
        self.categories = every_category
        if classes is not None:
            try:
                self.categories = every_category.select(classes)
            except DataError as error:
                raise DataError(f"{self.annotation_file}: {error}") from None
        other_ids = set(every_category.category_ids) - set(self.categories.category_ids)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.stats = AnnotationStats()
        self.records = []
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            width, height = info.get("width"), info.get("height")
            anns = self.coco.imgToAnns.get(image_id, [])
            if not width or not height:  # unknown size: clip later, at read time
                width = height = float("inf")
            boxes, labels, crowd = sanitize_boxes(anns, width, height, self.categories, self.stats, other_ids)
            self.stats.empty_images += int(len(labels) == 0)
            self.records.append(
                Record(
                    image_id,
                    self.image_dir / info["file_name"],
                    info.get("width"),
                    info.get("height"),
                    boxes,
                    labels,
                    crowd,
                )
            )
        self.stats.images = len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int):
        """Augmentations are seeded per (seed, epoch, index): reproducible, whatever the workers."""
        self.epoch = epoch

    def load_image(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        """Decodes an image (EXIF orientation applied) and fits its boxes to the decoded size."""
        image = read_image(record.path)
        boxes = record.boxes
        height, width = image.shape[:2]
        if record.width and record.height and (width, height) != (record.width, record.height):
            if (height, width) == (record.width, record.height):
                # Annotated on the stored pixels, before EXIF rotation: use those.
                data = np.fromfile(record.path, dtype=np.uint8)
                raw = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                image = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
            else:
                scale = np.array([width / record.width, height / record.height] * 2, np.float32)
                boxes = boxes * scale
        height, width = image.shape[:2]
        boxes = np.clip(boxes, 0, [width, height, width, height])
        return image, boxes

    def __getitem__(self, index: int) -> dict | None:
        record = self.records[index]
        try:
            image, boxes = self.load_image(record)
        except (OSError, ValueError) as error:
            return {"skipped": f"{record.path}: {error}"}
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        labels, iscrowd = record.labels[keep], record.iscrowd[keep]
        boxes = boxes[keep]
        size = image.shape[:2]
        if self.transform is not None:
            self.transform.set_random_seed(_sample_seed(self.seed, self.epoch, index))
            out = self.transform(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"]).astype(np.int64)
            iscrowd = np.asarray(out["iscrowd"]).astype(bool)
        height, width = image.shape[:2]
        return {
            "image": image,
            "boxes": boxes / np.array([width, height, width, height], np.float32),
            "labels": labels,
            "iscrowd": iscrowd,
            "image_id": record.image_id,
            "size": size,
        }


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return zlib.crc32(f"{seed}/{epoch}/{index}".encode())
