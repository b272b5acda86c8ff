"""Sliced inference: tile geometry, the option checks, merging, and a small person only tiles find."""

import types

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from ssdlite import Detector, SSDLiteError
from ssdlite.batch import slicing
from ssdlite.batch.slicing import SliceError, check_slice, predict_sliced, tile_windows
from ssdlite.images import SAMPLE_PHOTOS, read_image


def coverage(width: int, height: int, windows) -> np.ndarray:
    """How many windows cover each pixel."""
    counts = np.zeros((height, width), dtype=np.int64)
    for x1, y1, x2, y2 in windows:
        counts[y1:y2, x1:x2] += 1
    return counts


@pytest.mark.parametrize(
    ("width", "height", "size", "overlap"),
    [
        (2560, 1920, 640, 0.2),
        (2560, 1920, 512, 0.0),
        (1000, 700, 300, 0.5),
        (641, 640, 640, 0.2),
        (5000, 300, 300, 0.9),
    ],
)
def test_windows_are_full_size_inside_the_image_and_cover_every_pixel(width, height, size, overlap):
    windows = tile_windows(width, height, size, overlap)
    assert (coverage(width, height, windows) >= 1).all()
    assert len(set(windows)) == len(windows)
    for x1, y1, x2, y2 in windows:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert (x2 - x1, y2 - y1) == (min(size, width), min(size, height))


@pytest.mark.parametrize("overlap", [0.0, 0.2, 0.5])
def test_neighbouring_windows_overlap_by_at_least_the_fraction_and_regular_ones_by_exactly_it(overlap):
    size = 400
    windows = tile_windows(2000, 400, size, overlap)
    starts = [x1 for x1, _, _, _ in windows]
    shared = [size - (b - a) for a, b in zip(starts, starts[1:], strict=False)]
    assert all(s >= round(overlap * size) for s in shared)
    # Only the last window, moved back to end at the edge, may share more.
    assert set(shared[:-1]) == {round(overlap * size)}
    assert windows[-1][2] == 2000


def test_windows_are_listed_row_by_row():
    assert tile_windows(1000, 500, 400, 0.25) == [
        (0, 0, 400, 400),
        (300, 0, 700, 400),
        (600, 0, 1000, 400),
        (0, 100, 400, 500),
        (300, 100, 700, 500),
        (600, 100, 1000, 500),
    ]


@pytest.mark.parametrize(("width", "height"), [(500, 480), (512, 512), (512, 100), (1, 1)])
def test_an_image_no_larger_than_the_window_is_one_window(width, height):
    assert tile_windows(width, height, 512, 0.2) == [(0, 0, width, height)]


@pytest.mark.parametrize(
    ("width", "height", "size", "overlap", "message"),
    [
        (100, 100, 50, 1.0, "overlap"),
        (100, 100, 50, -0.1, "overlap"),
        (100, 100, 0, 0.2, "slice size"),
        (0, 100, 50, 0.2, "image size"),
    ],
)
def test_bad_window_arguments_are_slice_errors(width, height, size, overlap, message):
    with pytest.raises(SliceError, match=message) as raised:
        tile_windows(width, height, size, overlap)
    assert isinstance(raised.value, SSDLiteError) and isinstance(raised.value, ValueError)


class SquareDetector:
    """A fake ``Detector``: reports each blob of pixels above 200 in channel 0 (class 1, "red") and
    in channel 1 (class 2, "green"), scored by its brightest value in channel 2 / 255."""

    def __init__(self, image_size: int = 100, max_detections: int = 100):
        self.config = types.SimpleNamespace(
            image_size=image_size, postprocess=types.SimpleNamespace(max_detections=max_detections)
        )
        self.class_names = ["red", "green"]
        self.calls: list[list[tuple[int, int]]] = []

    def predict_batch(self, images, score_threshold=None, max_detections=None, classes=None):
        self.calls.append([image.shape[:2] for image in images])
        results = []
        for image in images:
            found = []
            for class_id, name in enumerate(self.class_names, start=1):
                if classes is not None and name not in classes:
                    continue
                mask = np.ascontiguousarray(image[:, :, class_id - 1] > 200).astype(np.uint8)
                count, blobs, stats, _ = cv2.connectedComponentsWithStats(mask)
                for blob in range(1, count):
                    x, y, w, h = (float(v) for v in stats[blob, :4])
                    score = float(image[:, :, 2][blobs == blob].max()) / 255
                    found.append({"box": [x, y, x + w, y + h], "score": score, "class_id": class_id, "label": name})
            results.append(sorted(found, key=lambda d: -d["score"])[:max_detections])
        return results


def test_an_object_seen_by_two_tiles_and_the_whole_image_comes_out_once():
    image = np.zeros((200, 360, 3), dtype=np.uint8)
    # Tiles of 200 with overlap 0.5 start at x = 0, 100, 160: the square lies in all three.
    image[50:90, 165:195] = (255, 0, 180)
    detector = SquareDetector()
    detections = predict_sliced(detector, image, 200, 0.5, batch_size=2)
    assert [len(call) for call in detector.calls] == [2, 2]  # 3 tiles + the whole image
    assert detections == [{"box": [165.0, 50.0, 195.0, 90.0], "score": 180 / 255, "class_id": 1, "label": "red"}]


def test_a_part_of_an_object_cut_by_a_tile_edge_is_dropped_for_the_whole_one(monkeypatch):
    image = np.zeros((200, 560, 3), dtype=np.uint8)
    # Tiles of 200 without overlap start at x = 0, 200 and 360; each sees a piece of the long bar
    # ending on an inner tile edge, and each piece's IoU with the whole bar is below 0.5, so NMS
    # alone would keep the pieces as extra detections.
    image[50:90, 20:540] = (255, 0, 180)
    whole = {"box": [20.0, 50.0, 540.0, 90.0], "score": 180 / 255, "class_id": 1, "label": "red"}
    assert predict_sliced(SquareDetector(), image, 200, 0.0) == [whole]
    pieces = predict_sliced(SquareDetector(), image, 200, 0.0, full_image=False)
    assert sorted(d["box"][0] for d in pieces) == [20.0, 200.0, 360.0]  # without the whole image, keep them

    monkeypatch.setattr(slicing, "_cut_by_tile", lambda *_: False)  # the rule off: the pieces come back
    assert len(predict_sliced(SquareDetector(), image, 200, 0.0)) == 4


def test_merging_is_per_class_sorted_by_score_and_capped():
    image = np.zeros((300, 600, 3), dtype=np.uint8)
    image[10:50, 10:50] = (255, 255, 100)  # one red and one green object on the same pixels
    image[200:260, 400:450] = (255, 0, 250)
    detector = SquareDetector()
    detections = predict_sliced(detector, image, 200, 0.2)
    found = [(d["label"], d["box"], d["score"]) for d in detections]
    assert found[0] == ("red", [400.0, 200.0, 450.0, 260.0], 250 / 255)
    assert sorted(found[1:]) == [
        ("green", [10.0, 10.0, 50.0, 50.0], 100 / 255),
        ("red", [10.0, 10.0, 50.0, 50.0], 100 / 255),
    ]

    assert predict_sliced(detector, image, 200, 0.2, max_detections=1) == detections[:1]
    assert [d["label"] for d in predict_sliced(detector, image, 200, 0.2, classes=["green"])] == ["green"]


def test_the_model_config_gives_the_default_number_of_detections():
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    image[10:20, 10:20] = (255, 255, 100)
    assert len(predict_sliced(SquareDetector(max_detections=1), image, 100)) == 1
    assert len(predict_sliced(SquareDetector(max_detections=5), image, 100)) == 2


def test_a_small_image_runs_once_and_full_image_false_runs_only_tiles():
    detector = SquareDetector()
    predict_sliced(detector, np.zeros((150, 180, 3), dtype=np.uint8), 200)
    assert detector.calls == [[(150, 180)]]

    detector = SquareDetector()
    predict_sliced(detector, np.zeros((200, 400, 3), dtype=np.uint8), 200, 0.0, full_image=False)
    assert detector.calls == [[(200, 200), (200, 200)]]


def test_nothing_found_is_an_empty_list():
    assert predict_sliced(SquareDetector(), np.zeros((300, 300, 3), dtype=np.uint8), 100) == []


def test_a_slice_smaller_than_the_model_input_is_refused_naming_both_sizes():
    with pytest.raises(SliceError, match=r"slice size 256 px is smaller than the model input 300 px.*upscaled"):
        predict_sliced(SquareDetector(image_size=300), np.zeros((1000, 1000, 3), dtype=np.uint8), 256)


def test_check_slice_accepts_the_model_input_size_and_refuses_less():
    check_slice(300, 0.0, 300)
    with pytest.raises(SliceError, match="slice size 299 px is smaller than the model input 300 px"):
        check_slice(299, 0.2, 300)
    with pytest.raises(SliceError, match="overlap"):
        check_slice(640, 1.0, 300)


@pytest.mark.parametrize("overlap", [1.0, 1.5, -0.2])
def test_an_overlap_outside_zero_to_one_is_refused(overlap):
    with pytest.raises(SliceError, match="overlap"):
        predict_sliced(SquareDetector(), np.zeros((500, 500, 3), dtype=np.uint8), 200, overlap)


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(SliceError, match="batch_size"):
        predict_sliced(SquareDetector(), np.zeros((500, 500, 3), dtype=np.uint8), 200, batch_size=0)


@pytest.fixture(scope="module")
def person_detector(person_checkpoint):
    return Detector.load(person_checkpoint)


@pytest.fixture(scope="module")
def small_person_scene(person_detector):
    """A plain 2560 x 1920 canvas with the astronaut pasted 180 px tall: about 21 px at the model's
    300 px input for the whole image, about 105 px in a 512 px tile."""
    person = read_image(SAMPLE_PHOTOS / "astronaut.jpg")[:, :384]  # 512 px tall, head to waist
    assert max(d["score"] for d in person_detector.predict(person)) > 0.5
    height = 180
    width = round(person.shape[1] * height / person.shape[0])
    canvas = np.full((1920, 2560, 3), 128, dtype=np.uint8)
    x, y = 1000, 900
    canvas[y : y + height, x : x + width] = cv2.resize(person, (width, height), interpolation=cv2.INTER_AREA)
    return canvas, torch.tensor([[x, y, x + width, y + height]], dtype=torch.float32)


def overlaps(detections: list[dict], box: torch.Tensor) -> list[float]:
    if not detections:
        return []
    return box_iou(torch.tensor([d["box"] for d in detections]), box)[:, 0].tolist()


def test_the_whole_image_pass_misses_the_small_person(person_detector, small_person_scene):
    canvas, pasted = small_person_scene
    detections = person_detector.predict(canvas, score_threshold=0.3)
    assert all(iou < 0.1 for iou in overlaps(detections, pasted))


@pytest.mark.parametrize("size", [512, 640])
def test_slicing_finds_the_small_person(person_detector, small_person_scene, size):
    canvas, pasted = small_person_scene
    detections = predict_sliced(person_detector, canvas, size, score_threshold=0.3)
    assert detections, "no person found"
    assert max(overlaps(detections, pasted)) > 0.5
    assert all(d["label"] == "person" for d in detections)
