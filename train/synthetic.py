"""The embedded dataset: a deterministic generator of a COCO-format shapes dataset.

Six classes differ in shape, colour and texture (a fifth of the instances get a random colour,
so colour alone is not enough). Objects range from small (about 10% of the shorter side) to
large (55%), may overlap (every object stays at least 60% visible; boxes are those of the
visible part, as in COCO), and sit on cluttered backgrounds: gradients, noise, lines and
shape-less blobs. Image sizes vary between 160 and 256 pixels a side.

The dataset is written once into a cache directory (``images/{train,val}/*.jpg`` and
``annotations/instances_{train,val}.json``) and reused; its name encodes the generator version
and parameters, so a change to either writes a new one.
"""

import json
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

GENERATOR_VERSION = 1
CLASSES = ("disc", "square", "triangle", "star", "ring", "cross")
# OpenCV hues (0..180) and textures, one per class.
CLASS_HUES = (0, 110, 60, 25, 150, 90)
CLASS_TEXTURES = ("shaded", "checker", "stripes", "speckle", "solid", "gradient")
RANDOM_COLOUR_FRACTION = 0.2
MIN_VISIBLE_FRACTION = 0.6
SUBPIXEL_BITS = 4


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generated dataset (part of its cache directory name)."""

    num_train: int = 4000
    num_val: int = 200
    min_side: int = 160
    max_side: int = 256
    max_objects: int = 6
    min_object: float = 0.10
    max_object: float = 0.55
    seed: int = 0

    @property
    def name(self) -> str:
        return (
            f"shapes-v{GENERATOR_VERSION}-{self.num_train}-{self.num_val}-{self.min_side}-{self.max_side}"
            f"-{self.max_objects}-{self.min_object:g}-{self.max_object:g}-s{self.seed}"
        )


@dataclass(frozen=True)
class SyntheticPaths:
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path


def default_cache_dir() -> Path:
    """``$SSDLITE_DATA_DIR``, else ``$XDG_CACHE_HOME/ssdlite/datasets`` (``~/.cache/...``)."""
    if os.environ.get("SSDLITE_DATA_DIR"):
        return Path(os.environ["SSDLITE_DATA_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ssdlite" / "datasets"


def dataset_root(spec: SyntheticSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``spec``'s dataset lives in the cache, generated or not."""
    return Path(cache_dir or default_cache_dir()) / spec.name


def dataset_paths(root: Path) -> SyntheticPaths:
    return SyntheticPaths(
        root / "annotations" / "instances_train.json",
        root / "images" / "train",
        root / "annotations" / "instances_val.json",
        root / "images" / "val",
    )


def ensure_dataset(
    spec: SyntheticSpec = SyntheticSpec(), cache_dir: str | os.PathLike | None = None, progress: bool = False
) -> SyntheticPaths:
    """Returns the paths of the generated dataset, generating it first if it is not cached.

    Generation writes into a temporary directory that is renamed into place at the end, so an
    interrupted run never leaves a half-written dataset behind.
    """
    root = dataset_root(spec, cache_dir)
    paths = dataset_paths(root)
    if paths.val_ann.is_file() and paths.train_ann.is_file():
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{spec.name}."))
    try:
        tmp_paths = dataset_paths(tmp)
        for split, count, ann, images in (
            ("train", spec.num_train, tmp_paths.train_ann, tmp_paths.train_images),
            ("val", spec.num_val, tmp_paths.val_ann, tmp_paths.val_images),
        ):
            write_split(spec, split, count, ann, images, progress)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            if not paths.val_ann.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def write_split(
    spec: SyntheticSpec, split: str, count: int, annotation_file: Path, image_dir: Path, progress: bool = False
):
    image_dir.mkdir(parents=True, exist_ok=True)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, split, index, image_dir) for index in range(count)]
    bar = {"total": count, "desc": f"generating embedded {split} set", "unit": "img", "disable": not progress}
    processes = min(os.cpu_count() or 1, 8)
    if processes > 1 and count >= 64:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            rendered = list(tqdm(pool.imap(_write_image, jobs, chunksize=16), leave=False, **bar))
    else:
        rendered = list(tqdm(map(_write_image, jobs), leave=False, **bar))
    images, annotations = [], []
    for image, objects in rendered:
        images.append(image)
        for label, (x, y, w, h), area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": label,
                    "bbox": [x, y, w, h],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    info = {"description": f"ssdlite embedded shapes dataset ({spec.name}, {split})", "version": GENERATOR_VERSION}
    with open(annotation_file, "w") as f:
        json.dump({"info": info, "images": images, "annotations": annotations, "categories": categories}, f)


def _write_image(job: tuple[SyntheticSpec, str, int, Path]) -> tuple[dict, list]:
    spec, split, index, image_dir = job
    rng = np.random.default_rng((spec.seed, {"train": 1, "val": 2}[split], index))
    image, objects = render_image(rng, spec)
    image_id = index + 1
    file_name = f"{image_id:06d}.jpg"
    cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]}, objects


def render_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, list]:
    """Draws one image; returns it (RGB uint8) and ``(category_id, [x, y, w, h], area)`` per object."""
    height, width = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, size=2))
    image = _background(rng, height, width)
    owner = np.zeros((height, width), np.int16)  # which object each pixel shows (0: none)
    objects = []
    num_objects = int(rng.integers(1, spec.max_objects + 1))
    for _ in range(num_objects):
        for _attempt in range(10):
            cls = int(rng.integers(len(CLASSES)))
            alpha = _shape_alpha(rng, cls, height, width, spec)
            covered = alpha > 127
            if _keeps_others_visible(owner, covered, objects):
                break
        else:
            continue
        colour_hue = CLASS_HUES[cls] if rng.random() > RANDOM_COLOUR_FRACTION else int(rng.integers(180))
        texture = _texture(rng, cls, colour_hue, height, width)
        weight = alpha[..., None].astype(np.float32) / 255
        image = (image * (1 - weight) + texture * weight).astype(np.uint8)
        owner[covered] = len(objects) + 1
        objects.append({"class": cls, "pixels": int(covered.sum())})

    results = []
    for index, obj in enumerate(objects, start=1):
        ys, xs = np.nonzero(owner == index)
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        results.append((obj["class"] + 1, [x1, y1, x2 - x1, y2 - y1], int(len(xs))))
    noise = rng.normal(0, 4, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image, results


def _keeps_others_visible(owner: np.ndarray, covered: np.ndarray, objects: list) -> bool:
    if covered.sum() < 16:
        return False
    hidden = np.bincount(owner[covered].ravel(), minlength=len(objects) + 1)
    visible = np.bincount(owner.ravel(), minlength=len(objects) + 1)
    for index, obj in enumerate(objects, start=1):
        if visible[index] - hidden[index] < MIN_VISIBLE_FRACTION * obj["pixels"]:
            return False
    return True


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    c1, c2 = (_hsv_to_rgb(int(rng.integers(180)), int(rng.integers(0, 90)), int(rng.integers(60, 230))) for _ in "ab")
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xs * math.cos(angle) + ys * math.sin(angle)) / max(height, width)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    image = c1 * (1 - t[..., None]) + c2 * t[..., None]
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(3, 10))):  # clutter: lines
        p1 = (int(rng.integers(width)), int(rng.integers(height)))
        p2 = (int(rng.integers(width)), int(rng.integers(height)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(image, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(2, 7))):  # clutter: irregular blobs that are not objects
        centre = rng.uniform(0, 1, 2) * (width, height)
        radius = rng.uniform(0.02, 0.08) * side
        angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(5, 9))))
        radii = radius * rng.uniform(0.4, 1.3, len(angles))
        points = centre + np.stack((np.cos(angles) * radii, np.sin(angles) * radii), 1)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.fillPoly(image, [np.round(points).astype(np.int32)], colour, cv2.LINE_AA)
    return image


def _shape_alpha(rng: np.random.Generator, cls: int, height: int, width: int, spec: SyntheticSpec) -> np.ndarray:
    """An anti-aliased coverage mask (uint8) of one object, placed at random."""
    side = min(height, width)
    size = side * math.exp(rng.uniform(math.log(spec.min_object), math.log(spec.max_object)))
    aspect = math.exp(rng.uniform(-0.25, 0.25))
    half_w, half_h = size * aspect / 2, size / aspect / 2
    cx = rng.uniform(half_w * 0.7, width - half_w * 0.7)
    cy = rng.uniform(half_h * 0.7, height - half_h * 0.7)
    angle = rng.uniform(0, 2 * math.pi)
    mask = np.zeros((height, width), np.uint8)
    name = CLASSES[cls]
    scale = 1 << SUBPIXEL_BITS
    if name in ("disc", "ring"):
        centre = (round(cx * scale), round(cy * scale))
        axes = (round(half_w * scale), round(half_h * scale))
        cv2.ellipse(mask, centre, axes, math.degrees(angle), 0, 360, 255, -1, cv2.LINE_AA, SUBPIXEL_BITS)
        if name == "ring":
            inner = (round(axes[0] * 0.55), round(axes[1] * 0.55))
            cv2.ellipse(mask, centre, inner, math.degrees(angle), 0, 360, 0, -1, cv2.LINE_AA, SUBPIXEL_BITS)
        return mask
    points = _polygon(name)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (points * (half_w, half_h)) @ rotation.T + (cx, cy)
    cv2.fillPoly(mask, [np.round(points * scale).astype(np.int32)], 255, cv2.LINE_AA, SUBPIXEL_BITS)
    return mask


def _polygon(name: str) -> np.ndarray:
    """Vertices in [-1, 1]^2."""
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * 0.75
    if name == "triangle":
        a = np.deg2rad([90, 210, 330])
        return np.stack((np.cos(a), -np.sin(a)), 1)
    if name == "star":
        a = np.deg2rad(np.arange(10) * 36 + 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack((np.cos(a) * r, -np.sin(a) * r), 1)
    if name == "cross":
        t = 0.33
        return np.array(
            [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]]
        )
    raise ValueError(name)


def _texture(rng: np.random.Generator, cls: int, hue: int, height: int, width: int) -> np.ndarray:
    hue = (hue + int(rng.integers(-8, 9))) % 180
    saturation, value = int(rng.integers(150, 256)), int(rng.integers(150, 256))
    base = _hsv_to_rgb(hue, saturation, value)
    dark = base * 0.45
    kind = CLASS_TEXTURES[cls]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        return np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    if kind == "checker":
        period = rng.uniform(4, 9)
        t = ((np.floor(xs / period) + np.floor(ys / period)) % 2)[..., None]
    elif kind == "stripes":
        period, angle = rng.uniform(4, 8), rng.uniform(0, math.pi)
        t = ((xs * math.cos(angle) + ys * math.sin(angle)) // period % 2)[..., None]
    elif kind == "speckle":
        t = (rng.random((height, width)) < 0.25)[..., None].astype(np.float32)
    elif kind == "shaded":
        t = (np.sin(xs / rng.uniform(6, 12)) * np.sin(ys / rng.uniform(6, 12)) * 0.5 + 0.5)[..., None] * 0.6
    else:  # gradient
        angle = rng.uniform(0, 2 * math.pi)
        t = (xs * math.cos(angle) + ys * math.sin(angle)) / max(height, width)
        t = ((t - t.min()) / max(float(np.ptp(t)), 1e-6))[..., None]
    return base * (1 - t) + dark * t


def _hsv_to_rgb(hue: int, saturation: int, value: int) -> np.ndarray:
    hsv = np.array([[[hue, saturation, value]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
