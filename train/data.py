"""COCO-format detection data: annotation loading, category-id mapping, images, collate.

COCO's category ids are sparse (1..90 with gaps); the model wants contiguous labels 1..K
(0 is background). :class:`CategoryMap` converts both ways, so result files carry the
original ids. Annotation problems are repaired or dropped once, at load time, and counted;
an unreadable image is skipped when its batch is built and counted then (training goes on).
"""

import contextlib
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ssdlite.images import read_image
from ssdlite.loss import pad_targets


class DataError(ValueError):
    """A dataset file or directory that is missing or unusable; the message names it."""


@dataclass(frozen=True)
class CategoryMap:
    """Contiguous model labels (1..K) <-> dataset category ids, ordered by category id."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, coco: COCO) -> "CategoryMap":
        categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in categories), tuple(c["name"] for c in categories))

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
    notes: list[str] = field(default_factory=list)

    def summary(self, name: str) -> str:
        text = f"{name}: {self.images} images, {self.boxes} boxes ({self.crowd} crowd, ignored in matching)"
        if self.empty_images:
            text += f", {self.empty_images} images without boxes"
        problems = []
        if self.clipped:
            problems.append(f"{self.clipped} boxes clipped to their image")
        if self.dropped:
            problems.append(f"{self.dropped} degenerate boxes dropped (empty, non-finite or outside the image)")
        if self.unknown_category:
            problems.append(f"{self.unknown_category} boxes with an unknown category dropped")
        if problems:
            text += "; warning: " + ", ".join(problems)
        return text


_REQUIRED_FIELDS = {
    "images": ("id", "file_name"),
    "categories": ("id", "name"),
    "annotations": ("image_id", "category_id", "bbox"),
}


def load_coco(annotation_file: str | os.PathLike) -> COCO:
    """Loads a COCO instances json with pycocotools, turning any failure into a :class:`DataError`."""
    path = Path(annotation_file)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with open(path) as f:
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


def sanitize_boxes(annotations: list[dict], width: float, height: float, categories: CategoryMap, stats):
    """COCO ``[x, y, w, h]`` annotations -> (xyxy pixel boxes, labels, iscrowd), clipped to the image.

    Boxes that end up empty (or were non-finite, or lie outside the image) are dropped; boxes
    that had to be clipped are counted. Both counts go into ``stats``.
    """
    boxes, labels, crowd = [], [], []
    known = set(categories.category_ids)
    for ann in annotations:
        if ann["category_id"] not in known:
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
        annotation_file: COCO instances json.
        image_dir: directory the json's ``file_name`` entries are relative to.
        transform: a pipeline from :func:`train.transforms.build_transform`.
        seed: base of the per-sample augmentation seed (see :meth:`set_epoch`).
    """

    def __init__(self, annotation_file, image_dir, transform=None, seed: int = 0):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.coco = load_coco(annotation_file)
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image directory not found")
        self.categories = CategoryMap.from_coco(self.coco)
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
            boxes, labels, crowd = sanitize_boxes(anns, width, height, self.categories, self.stats)
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


@dataclass
class Batch:
    """A collated batch. ``images`` is uint8 ``[N, 3, S, S]`` (channels-last strides)."""

    images: torch.Tensor
    boxes: torch.Tensor  # [N, M, 4] normalised xyxy, padded
    labels: torch.Tensor  # [N, M], -1 = padding
    iscrowd: torch.Tensor  # [N, M]
    image_ids: torch.Tensor  # [N]
    sizes: torch.Tensor  # [N, 2] original (height, width)
    skipped: list[str]  # "path: reason" of images that could not be read

    def __len__(self) -> int:
        return len(self.images)

    def pin_memory(self) -> "Batch":
        for name in ("images", "boxes", "labels", "iscrowd"):
            setattr(self, name, getattr(self, name).pin_memory())
        return self


def collate(samples: list[dict]) -> Batch:
    skipped = [s["skipped"] for s in samples if "skipped" in s]
    samples = [s for s in samples if "skipped" not in s]
    if not samples:
        empty = torch.zeros(0, dtype=torch.int64)
        return Batch(
            torch.zeros((0, 3, 1, 1), dtype=torch.uint8),
            torch.zeros((0, 1, 4)),
            empty.view(0, 1),
            torch.zeros((0, 1), dtype=torch.bool),
            empty,
            empty.view(0, 2),
            skipped,
        )
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    boxes, labels, iscrowd = pad_targets(
        [torch.from_numpy(s["boxes"]) for s in samples],
        [torch.from_numpy(s["labels"]) for s in samples],
        [torch.from_numpy(s["iscrowd"]) for s in samples],
    )
    return Batch(
        images=images,
        boxes=boxes,
        labels=labels,
        iscrowd=iscrowd,
        image_ids=torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
        sizes=torch.tensor([s["size"] for s in samples], dtype=torch.int64).reshape(-1, 2),
        skipped=skipped,
    )


def worker_init(_worker_id: int):
    """DataLoader workers: single-threaded OpenCV and torch (the parent has the cores)."""
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
