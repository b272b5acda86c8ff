"""The files a corpus detection run ends with: one writer per output format, all from ``Record`` values.

``OUTPUT_FORMATS`` names them (``--format coco,yolo,...``):

* ``jsonl``: ``detections.jsonl``, one line per image as ``ssdlite detect`` prints them.
* ``coco``: ``coco_results.json`` (a COCO results list for ``COCO(ann).loadRes`` and COCOeval) when
  the run was given the images' COCO annotation file, else ``coco.json``, a COCO dataset that CVAT
  imports as "COCO 1.0" (and Datumaro reads), the detections as annotations with a ``score``.
* ``yolo``: an Ultralytics dataset, ``data.yaml`` + ``images/`` + ``labels/``, that
  ``python -m train.coco --data OUT/data.yaml`` and Ultralytics train on.
* ``labelstudio``: ``labelstudio.json``, Label Studio tasks with the detections as predictions
  (pre-annotations), for a project whose labeling config is :func:`labelstudio_config`'s:
  ``<Image name="image" value="$image"/>`` and ``<RectangleLabels name="label" toName="image">``
  with one ``<Label value=...>`` per class.
* ``images``: annotated images, which the runner writes while it runs (no writer here).

Every file is written whole or not at all: into ``NAME.tmp`` beside it, then renamed over it, so an
interrupted run leaves the previous file (or none), never half of one. Pixel coordinates are
rounded to 2 decimals, scores to 5, YOLO's normalised coordinates to 6 decimals and Label Studio's
percentages to 4, so the same records always give the same bytes.
"""

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import quoteattr

from ..errors import SSDLiteError
from .records import Record

logger = logging.getLogger(__name__)

PIXEL_DECIMALS = 2
SCORE_DECIMALS = 5
NORMALISED_DECIMALS = 6  # YOLO: 1e-6 of a 10k-pixel side is 0.01 px, the pixel rounding
PERCENT_DECIMALS = 4
MISSING_EXAMPLES = 5  # names listed in an error; the rest are counted


class FormatError(SSDLiteError, ValueError):
    """An output format option that cannot be used: an unknown name or an unusable COCO annotation file."""


@dataclass(frozen=True)
class CocoImages:
    """The image and category ids of a COCO annotation file, to write results that COCOeval scores against it.

    Input images are matched to the file's images by file name (the last path component of the
    input against that of ``file_name``), model classes to its categories by name.
    """

    path: Path
    image_ids: dict[str, int]  # basename of file_name -> image id (unambiguous basenames only)
    ambiguous: frozenset[str]  # basenames that more than one image of the file has
    category_ids: dict[str, int]  # category name -> id

    def check(self, keys: list[str]) -> None:
        """Checks that every input image has exactly one image in the file; call it before detecting.

        Args:
            keys: the inputs' ``Source.key`` values.

        Raises:
            FormatError: some inputs are not in the file, or their file name is not unique (in the
                file or among the inputs); the message lists up to 5 of them.
        """
        names = [os.path.basename(key) for key in keys]
        missing = [name for name in names if name not in self.image_ids and name not in self.ambiguous]
        if missing:
            raise FormatError(
                f"{self.path}: {len(missing)} of the {len(keys)} input images are not in this COCO file "
                f"({_examples(missing)}); give the annotation file of these images, or leave out --coco-images"
            )
        ambiguous = sorted({name for name in names if name in self.ambiguous})
        if ambiguous:
            raise FormatError(
                f"{self.path}: {len(ambiguous)} input file names belong to several images of this COCO file "
                f"({_examples(ambiguous)}); results are matched by file name, so give a file with unique names"
            )
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise FormatError(
                f"{self.path}: {len(repeated)} file names occur more than once among the inputs "
                f"({_examples(repeated)}); results are matched by file name, so detect on one of each"
            )

    def image_id(self, key: str) -> int:
        """The file's id of the image that input ``key`` is (matched by file name).

        Raises:
            FormatError: the file has no image, or several images, of that name.
        """
        name = os.path.basename(key)
        if name in self.image_ids:
            return self.image_ids[name]
        if name in self.ambiguous:
            raise FormatError(f"{self.path}: several images are named {name!r} (input {key}); give unique file names")
        raise FormatError(f"{self.path}: no image named {name!r} (input {key}); give the annotation file of the inputs")

    def category_id(self, name: str) -> int | None:
        """The file's id of the category called ``name``, or ``None`` when the file has none."""
        return self.category_ids.get(name)


def load_coco_images(path: Path) -> CocoImages:
    """Reads the image and category ids of a COCO annotation (instances) file.

    Raises:
        FormatError: the file is missing or not JSON, or has no ``images`` or ``categories`` list.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as file:
            dataset = json.load(file)
    except FileNotFoundError:
        raise FormatError(f"{path}: COCO annotation file not found (check the --coco-images path)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"{path}: not a readable COCO annotation file ({error})") from None
    fix = "give a COCO instances file (like instances_val2017.json)"
    if not isinstance(dataset, dict):
        raise FormatError(f"{path}: not a COCO annotation file (expected an object with images and categories); {fix}")
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list) or not dataset[key]:
            raise FormatError(f"{path}: no '{key}' list in this COCO file; {fix}")
    ids_by_name: dict[str, list[int]] = {}
    ids_by_category: dict[str, list[int]] = {}
    try:
        for image in dataset["images"]:
            ids_by_name.setdefault(os.path.basename(str(image["file_name"])), []).append(int(image["id"]))
        for category in dataset["categories"]:
            ids_by_category.setdefault(str(category["name"]), []).append(int(category["id"]))
    except KeyError as error:
        raise FormatError(f"{path}: an image or category has no {error} field; {fix}") from None
    except (TypeError, ValueError):
        raise FormatError(f"{path}: an image or category is not an object with an integer id; {fix}") from None
    repeated = sorted(name for name, ids in ids_by_category.items() if len(ids) > 1)
    if repeated:
        raise FormatError(
            f"{path}: category names {_examples(repeated)} have several ids; give a file with unique names"
        )
    category_ids = {name: ids[0] for name, ids in ids_by_category.items()}
    unique = {name: ids[0] for name, ids in ids_by_name.items() if len(ids) == 1}
    ambiguous = frozenset(name for name, ids in ids_by_name.items() if len(ids) > 1)
    return CocoImages(path, unique, ambiguous, category_ids)


@dataclass(frozen=True)
class OutputContext:
    """What the writers need besides the records.

    ``class_names`` are the model's classes: ``class_names[i]`` is class id ``i + 1`` (0 is the
    background). ``coco_images`` switches ``coco`` to a results file for that annotation file;
    ``image_url_prefix`` makes Label Studio's image URLs ``prefix + <name><suffix>`` (the files of
    ``images/``), else they are the inputs' paths; ``yolo_confidence`` adds a score column to the
    YOLO labels.
    """

    class_names: list[str]
    model_version: str
    coco_images: CocoImages | None = None
    image_url_prefix: str | None = None
    yolo_confidence: bool = False


Writer = Callable[[list[Record], Path, OutputContext], list[Path]]


@dataclass(frozen=True)
class OutputFormat:
    """One ``--format`` choice: what it writes, and its writer (``None``: the runner writes it as it goes)."""

    description: str
    write: Writer | None


def parse_formats(text: str) -> tuple[str, ...]:
    """Reads a ``--format`` value: comma-separated names, in order, each once.

    Example: ``"coco, yolo,coco"`` gives ``("coco", "yolo")``.

    Raises:
        FormatError: a name that is not in ``OUTPUT_FORMATS``, or no name at all.
    """
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    known = ", ".join(OUTPUT_FORMATS)
    if not names:
        raise FormatError(f"--format {text!r}: no format named; choose from {known}")
    unknown = [name for name in names if name not in OUTPUT_FORMATS]
    if unknown:
        raise FormatError(f"--format {text!r}: unknown format {', '.join(map(repr, unknown))}; choose from {known}")
    return tuple(dict.fromkeys(names))


def write_outputs(
    formats: Iterable[str], records: list[Record], output_dir: Path, context: OutputContext
) -> list[Path]:
    """Writes the final files of the requested formats (``images`` is written by the runner, and skipped here).

    Args:
        formats: names from ``OUTPUT_FORMATS`` (see :func:`parse_formats`).
        records: every record of the run, in input order.
        output_dir: the run's output directory (created if missing).
        context: the model's classes and the formats' options.

    Returns:
        The files and directories written, in the order of ``formats``.

    Raises:
        FormatError: an unknown format name, or (``coco`` with ``coco_images``) an input image that
            the annotation file does not have.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in dict.fromkeys(formats):
        if name not in OUTPUT_FORMATS:
            raise FormatError(f"unknown output format {name!r}; choose from {', '.join(OUTPUT_FORMATS)}")
        writer = OUTPUT_FORMATS[name].write
        if writer is not None:
            written += writer(records, output_dir, context)
    return written


def labelstudio_config(class_names: list[str]) -> str:
    """The Label Studio labeling config that ``labelstudio.json``'s predictions are written for."""
    labels = "".join(f"\n    <Label value={quoteattr(name)}/>" for name in class_names)
    return (
        '<View>\n  <Image name="image" value="$image"/>\n'
        f'  <RectangleLabels name="label" toName="image">{labels}\n  </RectangleLabels>\n</View>\n'
    )


# Writers


def write_jsonl(records: list[Record], output_dir: Path, context: OutputContext) -> list[Path]:
    """``detections.jsonl``: ``{"image", "width", "height", "detections"}`` per record, ``ssdlite detect``'s lines."""
    path = output_dir / "detections.jsonl"
    with _atomic_file(path) as file:
        for record in records:
            line = {
                "image": record.image,
                "width": record.width,
                "height": record.height,
                "detections": [_rounded(detection) for detection in record.detections],
            }
            file.write(json.dumps(line) + "\n")
    return [path]


def write_coco(records: list[Record], output_dir: Path, context: OutputContext) -> list[Path]:
    """``coco_results.json`` when ``context.coco_images`` is set, else the ``coco.json`` dataset.

    The results file uses the annotation file's image ids (matched by file name) and category ids
    (matched by class name); detections of classes that the file has no category for are left out
    (a warning names them), as COCOeval could not score them.
    """
    if context.coco_images is not None:
        return [_write_coco_results(records, output_dir, context, context.coco_images)]
    return [_write_coco_dataset(records, output_dir, context)]


def _write_coco_results(records: list[Record], output_dir: Path, context: OutputContext, coco: CocoImages) -> Path:
    coco.check([record.image for record in records])
    category_ids = {index + 1: coco.category_id(name) for index, name in enumerate(context.class_names)}
    results: list[dict[str, Any]] = []
    left_out: dict[str, int] = {}
    for record in records:
        image_id = coco.image_id(record.image)
        for detection in record.detections:
            category_id = category_ids.get(detection["class_id"])
            if category_id is None:
                left_out[detection["label"]] = left_out.get(detection["label"], 0) + 1
                continue
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": _xywh(detection["box"]),
                    "score": round(detection["score"], SCORE_DECIMALS),
                }
            )
    if left_out:
        logger.warning(
            "%s has no category for the model's classes %s: their %d detections are left out of coco_results.json",
            coco.path,
            ", ".join(map(repr, sorted(left_out))),
            sum(left_out.values()),
        )
    path = output_dir / "coco_results.json"
    _write_json(path, results)
    return path


def _write_coco_dataset(records: list[Record], output_dir: Path, context: OutputContext) -> Path:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, record in enumerate(records, start=1):
        images.append(
            {"id": image_id, "file_name": _coco_file_name(record), "width": record.width, "height": record.height}
        )
        for detection in record.detections:
            bbox = _xywh(detection["box"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": detection["class_id"],
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], PIXEL_DECIMALS),
                    "iscrowd": 0,
                    "segmentation": [],
                    "score": round(detection["score"], SCORE_DECIMALS),
                }
            )
    repeated = len(images) - len({image["file_name"] for image in images})
    if repeated:
        logger.warning(
            "coco.json: %d images share a file name with another input; tools that match by name mix them", repeated
        )
    dataset = {
        "info": {"description": "ssdlite detections", "version": context.model_version},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": class_id, "name": name, "supercategory": ""} for class_id, name in enumerate(context.class_names, 1)
        ],
    }
    path = output_dir / "coco.json"
    _write_json(path, dataset)
    return path


def write_yolo(records: list[Record], output_dir: Path, context: OutputContext) -> list[Path]:
    """An Ultralytics dataset: ``labels/<name>.txt``, ``images/<name><suffix>`` and ``data.yaml``.

    Each label line is ``class cx cy w h`` (class = class id - 1; normalised to the image, boxes
    clipped to it); an image without detections gets an empty file. ``images/`` links to the
    input files (copies where links cannot be made); video frames are the runner's JPEGs there.
    Both ``train`` and ``val`` are ``images``.

    With ``context.yolo_confidence`` a 6th column holds the score, for review tools: the trainer
    (and Ultralytics) refuse 6-column lines, so train on labels written without it.
    """
    labels_dir, images_dir, yaml_path = output_dir / "labels", output_dir / "images", output_dir / "data.yaml"
    staging = output_dir / "labels.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for record in records:
            label_file = staging / f"{record.name}.txt"
            label_file.parent.mkdir(parents=True, exist_ok=True)
            label_file.write_text("".join(_yolo_lines(record, context.yolo_confidence)), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    images_dir.mkdir(exist_ok=True)
    for record in records:
        _place_image(record, images_dir)
    expected = {record.file_name for record in records}
    others = [
        path
        for path in images_dir.rglob("*")
        if path.is_file() and path.relative_to(images_dir).as_posix() not in expected
    ]
    if others:
        logger.warning(
            "%s holds %d images that are not from this run (e.g. %s): they would train as images without objects",
            images_dir,
            len(others),
            others[0].name,
        )
    # No 'path' key: the trainer and Ultralytics then both take the yaml's folder as the root
    # (Ultralytics resolves a relative 'path' such as '.' against the working directory instead).
    names = "".join(f"  {index}: {_yaml_string(name)}\n" for index, name in enumerate(context.class_names))
    with _atomic_file(yaml_path) as file:
        model = " ".join(context.model_version.split())  # one comment line whatever the version string holds
        file.write(f"# {len(records)} images detected by {model}; paths relative to this file\n")
        file.write(f"train: images\nval: images\nnc: {len(context.class_names)}\nnames:\n{names}")
    _swap_directory(staging, labels_dir)
    return [yaml_path, images_dir, labels_dir]


def write_labelstudio(records: list[Record], output_dir: Path, context: OutputContext) -> list[Path]:
    """``labelstudio.json``: one task per image, its detections as one prediction (see :func:`labelstudio_config`).

    Box values are percentages of the image (clipped to 0..100); the prediction's score is the
    mean of its detections' scores (0 without detections), which Label Studio sorts tasks by.
    """
    tasks = []
    for record in records:
        url = record.image if context.image_url_prefix is None else context.image_url_prefix + record.file_name
        results = [_labelstudio_region(record, index, detection) for index, detection in enumerate(record.detections)]
        scores = [detection["score"] for detection in record.detections]
        prediction = {
            "model_version": context.model_version,
            "score": round(sum(scores) / len(scores), SCORE_DECIMALS) if scores else 0,
            "result": results,
        }
        tasks.append({"data": {"image": url}, "predictions": [prediction]})
    path = output_dir / "labelstudio.json"
    _write_json(path, tasks)
    return [path]


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "jsonl": OutputFormat("detections.jsonl: one JSON line per image (ssdlite detect's output)", write_jsonl),
    "coco": OutputFormat(
        "coco.json dataset (CVAT 'COCO 1.0'), or coco_results.json for COCOeval with --coco-images", write_coco
    ),
    "yolo": OutputFormat("data.yaml + images/ + labels/: an Ultralytics dataset to train on", write_yolo),
    "labelstudio": OutputFormat("labelstudio.json: tasks with the detections as pre-annotations", write_labelstudio),
    "images": OutputFormat("annotated/: the images with their boxes drawn", None),
}


# Helpers


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:MISSING_EXAMPLES])
    return shown + (f" and {len(names) - MISSING_EXAMPLES} more" if len(names) > MISSING_EXAMPLES else "")


def _rounded(detection: dict[str, Any]) -> dict[str, Any]:
    return {
        **detection,
        "box": [round(value, PIXEL_DECIMALS) for value in detection["box"]],
        "score": round(detection["score"], SCORE_DECIMALS),
    }


def _xywh(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [
        round(x1, PIXEL_DECIMALS),
        round(y1, PIXEL_DECIMALS),
        round(x2 - x1, PIXEL_DECIMALS),
        round(y2 - y1, PIXEL_DECIMALS),
    ]


def _clipped(box: list[float], width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def _yaml_string(text: str) -> str:
    """``text`` as an ASCII-only double-quoted YAML scalar, so readers that assume a locale encoding get it right."""
    characters = []
    for char in json.dumps(text, ensure_ascii=False):  # JSON's escapes are YAML's too
        if char.isascii():
            characters.append(char)
        else:  # above U+FFFF YAML wants one \U escape where JSON writes a surrogate pair
            characters.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(characters)


def _coco_file_name(record: Record) -> str:
    # CVAT matches annotations to the task's images by their original file names.
    return record.file_name if record.frame is not None else os.path.basename(record.image)


def _yolo_lines(record: Record, confidence: bool) -> Iterator[str]:
    for detection in record.detections:
        x1, y1, x2, y2 = _clipped(detection["box"], record.width, record.height)
        if x2 <= x1 or y2 <= y1:
            continue  # outside the image: the trainer would refuse the line
        values = (
            (x1 + x2) / 2 / record.width,
            (y1 + y2) / 2 / record.height,
            (x2 - x1) / record.width,
            (y2 - y1) / record.height,
        )
        line = f"{detection['class_id'] - 1} " + " ".join(f"{value:.{NORMALISED_DECIMALS}f}" for value in values)
        if confidence:
            line += f" {detection['score']:.{SCORE_DECIMALS}f}"
        yield line + "\n"


def _place_image(record: Record, images_dir: Path) -> None:
    target = images_dir / record.file_name
    if record.frame is not None:
        if not target.is_file():
            logger.warning(
                "%s: the frame of %s is missing, so its labels have no image to train on", target, record.image
            )
        return
    source = os.path.abspath(record.image)
    if target.is_symlink() and os.readlink(target) == source:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".tmp")
    staging.unlink(missing_ok=True)
    try:
        os.symlink(source, staging)
    except OSError:  # no symlinks here (Windows without the privilege, some network file systems)
        shutil.copy2(source, staging)
    os.replace(staging, target)


def _swap_directory(staging: Path, target: Path) -> None:
    """Puts the fully written ``staging`` directory in place of ``target``, whose old contents go."""
    previous = target.with_name(target.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def _labelstudio_region(record: Record, index: int, detection: dict[str, Any]) -> dict[str, Any]:
    x1, y1, x2, y2 = _clipped(detection["box"], record.width, record.height)
    width, height = record.width, record.height

    def percent(value: float, size: int) -> float:
        return round(value / size * 100, PERCENT_DECIMALS)  # within 0..100: the box is clipped

    return {
        "id": f"{record.index}_{index}",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": percent(x1, width),
            "y": percent(y1, height),
            "width": percent(x2 - x1, width),
            "height": percent(y2 - y1, height),
            "rotation": 0,
            "rectanglelabels": [detection["label"]],
        },
        "score": round(detection["score"], SCORE_DECIMALS),
    }


def _write_json(path: Path, value: Any) -> None:
    with _atomic_file(path) as file:
        json.dump(value, file)


@contextmanager
def _atomic_file(path: Path) -> Iterator[TextIO]:
    """A text file that appears at ``path`` only once it is completely written (and synced)."""
    staging = path.with_name(path.name + ".tmp")
    try:
        with open(staging, "w", encoding="utf-8", newline="\n") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
