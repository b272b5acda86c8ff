"""Synthetic video clips with known trajectories, made at run time from real photos, for ``bench.tracking``.

People cut from real photos are pasted as rectangles onto a real photo without people and moved
along straight paths. The people are coco128's non-crowd person boxes of at least 60 x 120 px
that no other person overlaps (or, when coco128 is absent, the upper bodies of the two photos
ssdlite ships); the background is one of coco128's outdoor photos without people (or a shipped
photo blurred past recognition). Each scenario is a function of a seed and returns a
:class:`Clip`: BGR frames of 640 x 480, the ground truth per frame (object id and the box of the
part of its rectangle that shows; an object wholly hidden is left out) and the frame rate. The
scenarios that paste people also take ``people``, the crops to choose from (``bench.tracking``
gives those its detector finds).

* :func:`clean`: 3 people on paths that never meet.
* :func:`occlusion`: a nearer person walks across a farther one, hiding it wholly for
  :data:`HIDDEN_FRAMES` frames; both walk on.
* :func:`line_crossing`: 4 people crossing :data:`LINE` (mid-height), some down and some up, with
  the line counts expected.
* :func:`pan`: a camera pan across a coco128 photo of several people (``None`` without coco128).

:func:`write_clip` saves a clip as an .mp4 or a folder of JPEGs, a source ``ssdlite.video.track`` reads.
"""

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ssdlite.images import SAMPLE_PHOTOS

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"
WIDTH, HEIGHT = 640, 480
FPS = 15.0
HIDDEN_FRAMES = 11
LINE = "0,0.5,1,0.5"  # in: moving down the picture, out: moving up (ssdlite.video.counting)
PERSON = 1  # COCO's category id
MIN_PERSON = (60, 120)  # width, height in the photo
# Outdoor coco128 photos without people, one picked by the seed (kitchens and dinner plates make odd streets).
BACKGROUNDS = ("000000000307.jpg", "000000000349.jpg", "000000000508.jpg", "000000000595.jpg", "000000000626.jpg")
# The shipped photos' upper bodies (x1, y1, x2, y2), where the detector puts them.
SHIPPED_PEOPLE = {"astronaut.jpg": (5, 35, 373, 508), "grace_hopper.jpg": (2, 14, 503, 597)}

Box = list[float]  # x1, y1, x2, y2 in pixels


@dataclass
class Clip:
    """A synthetic clip and what it shows.

    Attributes:
        name: the scenario.
        frames: BGR uint8 images, all 640 x 480.
        truth: per frame, ``(object id, box)`` of each object that shows, the box of its visible part.
        fps: frames per second.
        line: the counting line (``"x1,y1,x2,y2"``, fractions) for ``expected_counts``, or ``None``.
        expected_counts: ``{"in": n, "out": n}`` over ``line`` for a tracker that keeps every identity.
    """

    name: str
    frames: list[np.ndarray]
    truth: list[list[tuple[int, Box]]]
    fps: float = FPS
    line: str | None = None
    expected_counts: dict[str, int] | None = None

    @property
    def objects(self) -> set[int]:
        """The ids of the objects that show at least once."""
        return {object_id for frame in self.truth for object_id, _ in frame}


@dataclass(frozen=True)
class Walker:
    """A pasted person: its pixels at their size in the clip, its top-left corner at frame 0 and its
    velocity in pixels per frame (whole numbers keep the hidden-frame count exact)."""

    image: np.ndarray
    start: tuple[int, int]
    velocity: tuple[int, int]

    def corner(self, frame: int) -> tuple[int, int]:
        return self.start[0] + self.velocity[0] * frame, self.start[1] + self.velocity[1] * frame


@functools.cache
def _annotations(coco128: Path) -> dict | None:
    path = coco128 / "annotations" / "instances_train2017.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read {path} as an image")
    return image


def _overlap(box: list[float], other: list[float]) -> float:
    """The share of ``box`` (COCO x, y, w, h) that ``other`` covers."""
    x, y, w, h = box
    ox, oy, ow, oh = other
    width = max(0.0, min(x + w, ox + ow) - max(x, ox))
    height = max(0.0, min(y + h, oy + oh) - max(y, oy))
    return width * height / (w * h)


def person_crops(coco128: Path | None = COCO128) -> list[np.ndarray]:
    """Real people to paste, as BGR crops of their boxes: coco128's non-crowd person boxes of at least
    60 x 120 px, standing (1.6 to 4 times as tall as wide), not cut by the photo's edge and at most
    15% covered by another person's box; the shipped photos' upper bodies when coco128 is absent."""
    dataset = _annotations(coco128) if coco128 else None
    if dataset is None:
        return [_read(SAMPLE_PHOTOS / name)[y1:y2, x1:x2] for name, (x1, y1, x2, y2) in SHIPPED_PEOPLE.items()]
    assert coco128 is not None
    images = {image["id"]: image for image in dataset["images"]}
    people: dict[int, list[dict]] = {}
    for annotation in dataset["annotations"]:
        if annotation["category_id"] == PERSON:
            people.setdefault(annotation["image_id"], []).append(annotation)
    crops = []
    for image_id in sorted(people):
        image = images[image_id]
        for person in people[image_id]:
            x, y, w, h = person["bbox"]
            if person["iscrowd"] or w < MIN_PERSON[0] or h < MIN_PERSON[1] or not 1.6 <= h / w <= 4:
                continue
            if x < 2 or y < 2 or x + w > image["width"] - 2 or y + h > image["height"] - 2:
                continue
            if any(_overlap(person["bbox"], other["bbox"]) > 0.15 for other in people[image_id] if other is not person):
                continue
            photo = _read(coco128 / "train2017" / image["file_name"])
            crops.append(photo[round(y) : round(y + h), round(x) : round(x + w)])
    return crops


def background(seed: int = 0, coco128: Path | None = COCO128) -> np.ndarray:
    """A real photo without people, 640 x 480: one of :data:`BACKGROUNDS` chosen by the seed (its
    top-left 640 x 480, or the whole photo scaled), or the shipped Grace Hopper photo blurred."""
    folder = coco128 / "train2017" if coco128 else None
    names = [name for name in BACKGROUNDS if folder and (folder / name).is_file()]
    if not names:
        # Blurred this much the detector sees no one in it (its person score stays under 0.1).
        photo = cv2.resize(_read(SAMPLE_PHOTOS / "grace_hopper.jpg"), (WIDTH, HEIGHT))
        return cv2.GaussianBlur(photo, (0, 0), 25)
    assert folder is not None
    photo = _read(folder / names[seed % len(names)])
    if photo.shape[0] >= HEIGHT and photo.shape[1] >= WIDTH:
        return photo[:HEIGHT, :WIDTH].copy()
    return cv2.resize(photo, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def _sized(crop: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """The crop scaled to ``height`` (and ``width``; by default the crop's aspect ratio)."""
    if width is None:
        width = max(1, round(crop.shape[1] * height / crop.shape[0]))
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


def render(name: str, scene: np.ndarray, walkers: list[Walker], frames: int, **extra) -> Clip:
    """Pastes the walkers onto the scene in order (later ones in front) for each frame; the ground
    truth is, per walker (object id = its position from 1), the box of its pixels that show."""
    images, truth = [], []
    for index in range(frames):
        image, owner = scene.copy(), np.zeros(scene.shape[:2], dtype=np.int16)
        for object_id, walker in enumerate(walkers, start=1):
            x, y = walker.corner(index)
            height, width = walker.image.shape[:2]
            x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + width, WIDTH), min(y + height, HEIGHT)
            if x1 < x2 and y1 < y2:
                image[y1:y2, x1:x2] = walker.image[y1 - y : y2 - y, x1 - x : x2 - x]
                owner[y1:y2, x1:x2] = object_id
        visible = []
        for object_id in range(1, len(walkers) + 1):
            mask = owner == object_id
            rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if len(rows):
                box = [float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1)]
                visible.append((object_id, box))
        images.append(image)
        truth.append(visible)
    return Clip(name, images, truth, **extra)


def _pick(crops: Sequence[np.ndarray], rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` different people when there are enough, mirrored at random."""
    order = rng.permutation(len(crops))
    picked = [crops[order[i % len(crops)]] for i in range(count)]
    return [np.ascontiguousarray(crop[:, ::-1]) if rng.random() < 0.5 else crop for crop in picked]


def _walker(
    image: np.ndarray, region: tuple[int, int, int, int], axis: int, speed: int, frames: int, rng: np.random.Generator
) -> Walker:
    """A walker going ``speed`` px per frame (negative: left or up) along ``axis`` (0: x, 1: y), placed
    at random where its rectangle stays inside ``region`` (x1, y1, x2, y2) for all ``frames``."""
    size = (image.shape[1], image.shape[0])
    travel = abs(speed) * (frames - 1)
    corner = []
    for a in (0, 1):
        room = region[a + 2] - region[a] - size[a] - (travel if a == axis else 0)
        if room < 0:
            raise ValueError(f"a {size[0]} x {size[1]} walker going {travel} px does not fit in {region}")
        corner.append(region[a] + int(rng.integers(0, room + 1)) + (travel if a == axis and speed < 0 else 0))
    return Walker(image, (corner[0], corner[1]), (speed, 0) if axis == 0 else (0, speed))


# (region, axis) per walker of the clean clip: the top and bottom bands and the right-hand column never meet.
CLEAN_PATHS = (((4, 4, 470, 185), 0), ((485, 4, 636, 476), 1), ((4, 295, 470, 476), 0))


def clean(seed: int = 0, coco128: Path | None = COCO128, people: Sequence[np.ndarray] | None = None) -> Clip:
    """3 people walking for 3 s, each in its own part of the picture (two across, one up or down),
    never overlapping. ``people``: the crops to choose from (default :func:`person_crops`)."""
    rng = np.random.default_rng(seed)
    frames = round(3 * FPS)
    walkers = []
    for crop, (region, axis) in zip(_pick(people or person_crops(coco128), rng, 3), CLEAN_PATHS, strict=True):
        image = _sized(crop, int(rng.integers(150, 171)))[:, :150]  # the shipped upper bodies are wide
        speed = int(rng.integers(3, 6)) * (1 if rng.random() < 0.5 else -1)
        walkers.append(_walker(image, region, axis, speed, frames, rng))
    return render("clean", background(seed, coco128), walkers, frames)


def occlusion(seed: int = 0, coco128: Path | None = COCO128, people: Sequence[np.ndarray] | None = None) -> Clip:
    """A nearer person walks left across a farther one walking right (3 s), hiding it wholly for
    exactly :data:`HIDDEN_FRAMES` frames in the clip's middle; both walk on.

    The nearer person's rectangle is taller and exactly ``(HIDDEN_FRAMES - 1) * v`` px wider than
    the farther one's, ``v`` = 10 px being how far they close in per frame, so that it covers it
    for that many frames; closing that fast keeps the partly hidden frames on either side few
    (the farther person's width over 10 px, about 7).
    """
    rng = np.random.default_rng(seed)
    frames = round(3 * FPS)
    pair = _pick(people or person_crops(coco128), rng, 2)
    back_crop, front_crop = sorted(pair, key=lambda crop: crop.shape[0] / crop.shape[1], reverse=True)
    back = _sized(back_crop, 160)
    back_speed, front_speed = 3, 7
    closing = back_speed + front_speed
    front_width = back.shape[1] + (HIDDEN_FRAMES - 1) * closing
    front_height = int(np.clip(round(front_width * front_crop.shape[0] / front_crop.shape[1]), 200, 438))
    front = _sized(front_crop, front_height, front_width)
    back_bottom = 400 + int(rng.integers(-10, 11))
    front_bottom = back_bottom + 30 + int(rng.integers(0, 9))
    # The nearer person's left edge meets the farther one's at the first hidden frame.
    first_hidden = (frames - HIDDEN_FRAMES) // 2
    front_left = int(rng.integers(front_speed * (frames - 1), WIDTH - front_width + 1))
    back_left = front_left - closing * first_hidden
    walkers = [
        Walker(back, (back_left, back_bottom - back.shape[0]), (back_speed, 0)),
        Walker(front, (front_left, front_bottom - front.shape[0]), (-front_speed, 0)),
    ]
    return render("occlusion", background(seed, coco128), walkers, frames)


def line_crossing(seed: int = 0, coco128: Path | None = COCO128, people: Sequence[np.ndarray] | None = None) -> Clip:
    """4 people, each in its own quarter of the picture's width, walking straight down or up across
    :data:`LINE` for 4 s; at least one goes each way. ``expected_counts``: down is in, up is out."""
    rng = np.random.default_rng(seed)
    frames = round(4 * FPS)
    lane = WIDTH // 4
    downs = rng.permutation([True, True, False, False] if rng.random() < 0.5 else [True, False, False, False])
    walkers = []
    for index, (crop, down) in enumerate(zip(_pick(people or person_crops(coco128), rng, 4), downs, strict=True)):
        image = _sized(crop, int(rng.integers(150, 161)))[:, : lane - 8]
        speed = int(rng.integers(4, 6)) * (1 if down else -1)
        walkers.append(_walker(image, (index * lane + 4, 4, (index + 1) * lane - 4, HEIGHT - 4), 1, speed, frames, rng))
    counts = {"in": int(sum(downs)), "out": int(len(downs) - sum(downs))}
    return render("line_crossing", background(seed, coco128), walkers, frames, line=LINE, expected_counts=counts)


def pan(seed: int = 0, coco128: Path | None = COCO128) -> Clip | None:
    """A 3 s camera pan (a 640 x 480 window sliding diagonally) across a landscape coco128 photo of 2
    or more people (none in a crowd box, all at least 60 px and at most 60% of the photo tall), scaled
    to at least 960 x 720, so that the people stay under 90% of the window's height; the ground
    truth is the person boxes, moved with the window and cut to it. ``None`` without coco128."""
    dataset = _annotations(coco128) if coco128 else None
    if dataset is None:
        return None
    assert coco128 is not None
    people: dict[int, list[dict]] = {}
    for annotation in dataset["annotations"]:
        if annotation["category_id"] == PERSON:
            people.setdefault(annotation["image_id"], []).append(annotation)
    candidates = [
        image
        for image in sorted(dataset["images"], key=lambda image: image["id"])
        if image["width"] >= image["height"]
        and len(people.get(image["id"], [])) >= 2
        and all(not p["iscrowd"] and 60 <= p["bbox"][3] <= 0.6 * image["height"] for p in people[image["id"]])
    ]
    if not candidates:
        return None
    image = candidates[seed % len(candidates)]
    photo = _read(coco128 / "train2017" / image["file_name"])
    scale = max(1.5 * WIDTH / photo.shape[1], 1.5 * HEIGHT / photo.shape[0])
    photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    boxes = [[v * scale for v in p["bbox"]] for p in sorted(people[image["id"]], key=lambda p: p["id"])]
    frames = round(3 * FPS)
    end_x, end_y = photo.shape[1] - WIDTH, photo.shape[0] - HEIGHT
    images, truth = [], []
    for index in range(frames):
        left, top = round(end_x * index / (frames - 1)), round(end_y * index / (frames - 1))
        images.append(photo[top : top + HEIGHT, left : left + WIDTH].copy())
        visible = []
        for object_id, (x, y, w, h) in enumerate(boxes, start=1):
            x1, y1 = max(x - left, 0.0), max(y - top, 0.0)
            x2, y2 = min(x + w - left, float(WIDTH)), min(y + h - top, float(HEIGHT))
            if x1 < x2 and y1 < y2:
                visible.append((object_id, [x1, y1, x2, y2]))
        truth.append(visible)
    return Clip("pan", images, truth)


def clips(seed: int = 0, coco128: Path | None = COCO128, people: Sequence[np.ndarray] | None = None) -> list[Clip]:
    """Every scenario's clip: clean, occlusion, line_crossing and (with coco128) pan."""
    people = people or person_crops(coco128)
    made = [scenario(seed, coco128, people) for scenario in (clean, occlusion, line_crossing)]
    return made + [clip for clip in [pan(seed, coco128)] if clip is not None]


def write_clip(clip: Clip, path: str | Path) -> Path:
    """Writes the frames as an .mp4 (mp4v, at the clip's frame rate) when ``path`` ends in .mp4,
    else as ``000000.jpg``, ``000001.jpg``, ... in the folder ``path`` (a folder is read at 30 FPS,
    whatever the clip's rate)."""
    path = Path(path)
    if path.suffix.lower() == ".mp4":
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), clip.fps, (WIDTH, HEIGHT))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {path} with the mp4v codec")
        try:
            for frame in clip.frames:
                writer.write(frame)
        finally:
            writer.release()
        return path
    path.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(clip.frames):
        cv2.imwrite(str(path / f"{index:06d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path
