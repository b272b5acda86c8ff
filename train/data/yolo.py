"""YOLO-format datasets (the Ultralytics / Roboflow export layout) as in-memory COCO annotations.

A ``data.yaml`` names a dataset root (``path``; relative to the yaml's directory, default that
directory), the splits (``train``, ``val``, ``test``: each an image directory, a ``.txt`` list of
image paths, or a list of these, relative to the root) and the classes (``names``: a list, or a
dict ``{index: name}``; ``nc`` alone gives ``class_0``...). Each image ``.../images/.../x.jpg`` has
its labels in ``.../labels/.../x.txt`` (the last ``/images/`` path component becomes ``/labels/``,
Ultralytics' rule), one box a line: ``class cx cy w h``, normalised to the image (a polygon
``class x1 y1 x2 y2 x3 y3 ...``, as segmentation exports write, stands for its bounding box). No
label file, or an empty one, means an image without boxes.

:func:`load_yolo` turns one split into a COCO-format dict (boxes ``[x, y, w, h]`` in pixels of the
image as decoded, EXIF orientation applied), plus what it skipped; nothing here builds a dataset.
:func:`train.data.sources.yolo_detection` wraps the dict in the same
:class:`~train.data.coco.CocoDetection` as any COCO json, and pycocotools scores it alike. YOLO
classes have no ids: category id = class index + 1 (COCO ids must be positive).

Bad label lines are skipped and reported in one message per split (``notes``); a missing or
unreadable yaml, split, list or an empty split raises :class:`~train.data.errors.DataError`.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from .errors import DataError

IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"})
SPLIT_ALIASES = {"val": ("val", "validation", "valid")}
PROGRESS_THRESHOLD = 1000  # images: show a progress bar above this
NOTE_EXAMPLES = 5  # problems named one by one in a note; the rest are counted
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 display the image transposed


@dataclass
class YoloConfig:
    """A parsed ``data.yaml``."""

    path: Path  # the yaml itself
    root: Path  # the dataset root the split entries are relative to
    names: list[str]  # class index -> name
    splits: dict[str, object]  # split name -> entry as written (str or list of str)


@dataclass
class YoloSplit:
    """One split of a YOLO dataset in COCO format."""

    dataset: dict  # COCO instances dict: images, annotations, categories
    image_root: Path  # the images' file_name entries are relative to it (or absolute)
    source: Path  # the data.yaml
    notes: list[str] = field(default_factory=list)  # warnings, each a whole message


def read_data_yaml(data_yaml: str | os.PathLike) -> YoloConfig:
    """Reads and checks an Ultralytics ``data.yaml`` (see the module docstring).

    Raises:
        DataError: missing or unreadable file, no usable ``names``/``nc``, missing dataset root.
    """
    path = Path(data_yaml)
    if not path.is_file():
        raise DataError(f"{path}: dataset yaml not found")
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{path}: not a readable YAML file ({error})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: not a YOLO dataset yaml (expected keys path, train, val, names)")
    root = path.parent
    if config.get("path"):
        root = Path(os.path.expanduser(str(config["path"])))
        if not root.is_absolute():
            root = path.parent / root
        if not root.is_dir():
            raise DataError(f"{path}: dataset root {config['path']!r} not found (looked for {root})")
    return YoloConfig(path, Path(os.path.normpath(root)), _class_names(config, path), config)


def _class_names(config: dict, path: Path) -> list[str]:
    names, nc = config.get("names"), config.get("nc")
    if names is None:
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise DataError(f"{path}: no class names (give 'names' as a list or a dict {{index: name}})")
        return [f"class_{i}" for i in range(nc)]
    if isinstance(names, dict):
        try:
            by_index = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be class indices 0, 1, ...") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise DataError(f"{path}: 'names' keys must be the class indices 0..{len(by_index) - 1} without gaps")
        names = [by_index[i] for i in range(len(by_index))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must be a non-empty list or dict {{index: name}}")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: 'nc' is {nc} but 'names' has {len(names)} classes")
    return [str(name) for name in names]


def label_path(image_path: str | os.PathLike) -> Path:
    """The label file of an image: the last ``/images/`` component becomes ``/labels/``, suffix ``.txt``."""
    text = str(image_path)
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = text.rpartition(images)
    if sep:
        text = head + labels + tail
    return Path(os.path.splitext(text)[0] + ".txt")


def parse_label_file(path: str | os.PathLike, num_classes: int) -> tuple[np.ndarray, list[str], bool]:
    """Reads one YOLO label file.

    Returns:
        ``(rows, problems, found)``: ``rows`` float64 ``[M, 5]`` (class, cx, cy, w, h; normalised),
        ``problems`` one ``"file:line: reason"`` per skipped line (repeated lines are skipped too),
        and whether the file exists (a missing file is an image without boxes, not a problem).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return np.zeros((0, 5)), [], False
    except (OSError, UnicodeDecodeError) as error:
        return np.zeros((0, 5)), [f"{path}: unreadable label file ({error})"], True
    rows, problems, seen = [], [], {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        row, reason = _parse_line(fields, num_classes)
        if reason is None and tuple(row) in seen:
            reason = f"duplicate of line {seen[tuple(row)]}"
        if reason:
            problems.append(f"{path}:{number}: {reason}")
        else:
            seen[tuple(row)] = number
            rows.append(row)
    return np.array(rows, np.float64).reshape(-1, 5), problems, True


def _parse_line(fields: list[str], num_classes: int) -> tuple[list[float] | None, str | None]:
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        return None, f"expected 'class cx cy w h', got {n} fields"
    try:
        values = [float(v) for v in fields]
    except ValueError:
        bad = next(v for v in fields if not _is_float(v))
        return None, f"not a number: {bad!r}"
    if not np.isfinite(values).all():
        return None, "non-finite value"
    index = values[0]
    if index != int(index) or not 0 <= index < num_classes:
        return None, f"class index {fields[0]} is not one of 0..{num_classes - 1}"
    if n == 5:
        cx, cy, w, h = values[1:]
    else:  # a polygon: its bounding box
        xs, ys = values[1::2], values[2::2]
        cx, cy, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
        if min(xs + ys) < -0.01 or max(xs + ys) > 1.01:
            return None, "coordinates outside 0..1 (labels must be normalised to the image size)"
    if w <= 0 or h <= 0:
        return None, "width or height <= 0"
    if not (-0.01 <= cx <= 1.01 and -0.01 <= cy <= 1.01 and w <= 1.01 and h <= 1.01):
        return None, "coordinates outside 0..1 (labels must be normalised to the image size)"
    return [index, cx, cy, w, h], None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`ssdlite.images.read_image` decodes it (EXIF applied).

    Reads only the header. OpenCV applies all eight EXIF orientations (JPEG, PNG and WebP
    checked); 5-8 swap width and height.
    """
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(_ORIENTATION, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _split_images(config: YoloConfig, split: str) -> list[Path]:
    key = next((k for k in SPLIT_ALIASES.get(split, (split,)) if config.splits.get(k)), None)
    if key is None:
        present = [k for k in ("train", "val", "validation", "valid", "test") if config.splits.get(k)]
        raise DataError(f"{config.path}: no '{split}' split (it has: {', '.join(present) or 'none'})")
    entries = config.splits[key]
    entries = entries if isinstance(entries, list) else [entries]
    images = []
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise DataError(f"{config.path}: '{key}' entries must be directories or .txt files, got {entry!r}")
        images += _entry_images(config, key, entry)
    if not images:
        raise DataError(f"{config.path}: no images found for the '{key}' split ({', '.join(map(str, entries))})")
    return sorted(set(images))


def _resolve(base: Path, entry: str) -> Path:
    return Path(os.path.normpath(base / os.path.expanduser(entry)))  # keeps symlinks (labels sit by the link)


def _entry_images(config: YoloConfig, key: str, entry: str) -> list[Path]:
    path = _resolve(config.root, entry)
    if not path.exists() and entry.startswith("../"):  # Roboflow exports: "../train/images" next to the yaml
        path = _resolve(config.root, entry[3:])
    if path.is_dir():
        return [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if path.is_file() and path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: unreadable image list of {config.path}'s '{key}' split ({error})") from None
        images = []
        for line in filter(None, (line.strip() for line in lines)):
            image = _resolve(path.parent, line)  # relative to the list ("./images/..."), else to the root
            if not image.exists() and _resolve(config.root, line).exists():
                image = _resolve(config.root, line)
            if image.suffix.lower() in IMAGE_SUFFIXES:
                images.append(image)
        return images
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [path]
    raise DataError(f"{config.path}: '{key}' split {entry!r} not found (looked for {path})")


def _read_image(args: tuple[Path, int]) -> tuple[tuple[int, int] | None, str | None, tuple]:
    image, num_classes = args
    try:
        size = image_size(image)
    except Exception as error:  # PIL raises many kinds (OSError, SyntaxError, DecompressionBombError...)
        return None, f"{image}: {type(error).__name__}: {error}", (np.zeros((0, 5)), [], False)
    return size, None, parse_label_file(label_path(image), num_classes)


def load_yolo(data_yaml: str | os.PathLike, split: str, progress: bool = True, workers: int | None = None) -> YoloSplit:
    """Reads one split of a YOLO dataset as a COCO-format dict (see the module docstring).

    Images get ids 1..N in path order; boxes are clipped to their image. Image sizes come from
    the file headers (EXIF orientation applied, as training decodes them); images that cannot be
    opened are left out, and bad label lines are skipped: both are reported in ``notes``.

    Args:
        data_yaml: the Ultralytics ``data.yaml``.
        split: ``"train"``, ``"val"`` (also found as ``validation``/``valid``) or ``"test"``.
        progress: show a progress bar when the split has more than 1000 images.
        workers: threads reading image headers and label files (default: the CPU count, at most 8;
            they help on cold or network storage).

    Raises:
        DataError: the yaml, split or an image list is missing or unusable, or no images are found.
    """
    config = read_data_yaml(data_yaml)
    images = _split_images(config, split)
    num_classes = len(config.names)
    jobs = [(image, num_classes) for image in images]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(_read_image, jobs, chunksize=64)
        if progress and len(images) > PROGRESS_THRESHOLD:
            results = tqdm(results, total=len(images), desc=f"{config.path.name} {split}", unit="img")
        results = list(results)

    entries, annotations, unreadable, problems, labelled = [], [], [], [], 0
    for image, (size, error, (rows, bad_lines, found)) in zip(images, results, strict=True):
        if size is None:
            unreadable.append(error)
            continue
        problems += bad_lines
        labelled += found
        width, height = size
        image_id = len(entries) + 1
        try:
            file_name = str(image.relative_to(config.root))
        except ValueError:
            file_name = str(image)  # outside the root: absolute (root / absolute = absolute)
        entries.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for index, cx, cy, w, h in rows.tolist():
            x1, y1 = max((cx - w / 2) * width, 0.0), max((cy - h / 2) * height, 0.0)
            x2, y2 = min((cx + w / 2) * width, width), min((cy + h / 2) * height, height)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(index) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    where = f"{config.path}'s {split} split"
    notes = []
    if problems:
        notes.append(_note(f"skipped {len(problems)} bad label lines in {where}", problems))
    if unreadable:
        notes.append(_note(f"skipped {len(unreadable)} unreadable images in {where}", unreadable))
    if entries and not labelled:
        notes.append(
            f"warning: no label files found for any of the {len(entries)} images of {where} "
            f"(looked for e.g. {label_path(images[0])})"
        )
    if not entries:
        raise DataError(f"{config.path}: none of the {len(images)} images of the '{split}' split can be read")
    categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(config.names)]
    dataset = {"images": entries, "annotations": annotations, "categories": categories}
    return YoloSplit(dataset, config.root, config.path, notes)


def _note(headline: str, items: list[str]) -> str:
    shown = "; ".join(items[:NOTE_EXAMPLES])
    more = f"; and {len(items) - NOTE_EXAMPLES} more" if len(items) > NOTE_EXAMPLES else ""
    return f"warning: {headline}: {shown}{more}"
