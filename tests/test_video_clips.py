"""``bench.clips``: synthetic clips of real people with known trajectories, and ``bench.tracking``'s metrics.

Every clip is checked as made from coco128 (skipped when absent) and from the two shipped photos.
"""

import itertools
from pathlib import Path

import numpy as np
import pytest

from bench import clips
from bench.tracking import evaluate, hidden_returns, longest_miss
from ssdlite.video import Counter, FrameSource, parse_region

PASTED = ("clean", "occlusion", "line_crossing")


@pytest.fixture(scope="module", params=["coco128", "shipped photos"])
def source(request) -> Path | None:
    """The coco128 folder, or ``None`` for the shipped photos."""
    return request.getfixturevalue("coco128") if request.param == "coco128" else None


@pytest.fixture(scope="module")
def made(source) -> dict[str, clips.Clip]:
    """Seed 0's clips by name."""
    return {clip.name: clip for clip in clips.clips(0, source)}


def centre(box: list[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def inside(box: list[float]) -> bool:
    """Whether the box lies wholly inside the frame, touching no edge."""
    return box[0] > 0 and box[1] > 0 and box[2] < clips.WIDTH and box[3] < clips.HEIGHT


def track_of(clip: clips.Clip, object_id: int) -> list[tuple[int, list[float]]]:
    """(frame, box) of every frame where the object shows."""
    return [(index, box) for index, frame in enumerate(clip.truth) for i, box in frame if i == object_id]


def test_frames_and_ground_truth_boxes_lie_in_the_frame(made):
    assert set(PASTED) <= set(made)
    for clip in made.values():
        assert len(clip.frames) == len(clip.truth) >= 45 and clip.fps == clips.FPS
        assert all(f.shape == (clips.HEIGHT, clips.WIDTH, 3) and f.dtype == np.uint8 for f in clip.frames)
        assert len(clip.objects) >= 2, clip.name
        for frame in clip.truth:
            ids = [object_id for object_id, _ in frame]
            assert len(ids) == len(set(ids)), clip.name
            for _, (x1, y1, x2, y2) in frame:
                assert 0 <= x1 < x2 <= clips.WIDTH and 0 <= y1 < y2 <= clips.HEIGHT, (clip.name, x1, y1, x2, y2)


def test_the_pasted_people_are_real_pixels_on_a_real_photo(made, source):
    """Each person's box holds pixels of its own, not the background's, and varied (a photo, not a flat fill)."""
    scene = clips.background(0, source)
    assert scene.shape == (clips.HEIGHT, clips.WIDTH, 3) and scene.std() > 10
    for name in PASTED:
        clip = made[name]
        for object_id, box in clip.truth[0]:
            x1, y1, x2, y2 = (round(v) for v in box)
            pixels = clip.frames[0][y1:y2, x1:x2].astype(int)
            assert pixels.std() > 10, (name, object_id)
            assert np.abs(pixels - scene[y1:y2, x1:x2]).mean() > 10, (name, object_id)


def test_people_on_the_clean_and_line_crossing_paths_never_overlap(made):
    for name in ("clean", "line_crossing"):
        for frame in made[name].truth:
            assert len(frame) == len(made[name].objects), name
            for (_, a), (_, b) in itertools.combinations(frame, 2):
                assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (name, a, b)


def test_the_farther_person_is_wholly_hidden_for_11_frames_then_shows_again(made):
    clip = made["occlusion"]
    hidden = [index for index, frame in enumerate(clip.truth) if 1 not in {i for i, _ in frame}]
    assert len(hidden) == clips.HIDDEN_FRAMES == 11
    assert hidden == list(range(hidden[0], hidden[0] + 11)) and hidden[0] > 0 and hidden[-1] < len(clip.frames) - 1
    assert all(2 in {i for i, _ in frame} for frame in clip.truth), "the nearer person always shows"
    boxes = dict(track_of(clip, 1))
    width = boxes[0][2] - boxes[0][0]
    # Partly hidden just before and after; whole again by the end, right of where it started.
    assert boxes[hidden[0] - 1][2] - boxes[hidden[0] - 1][0] < width
    assert boxes[hidden[-1] + 1][2] - boxes[hidden[-1] + 1][0] < width
    last = boxes[len(clip.frames) - 1]
    assert last[2] - last[0] == width and last[0] > boxes[0][0]


def test_line_crossing_expected_counts_follow_the_paths_and_the_counter(made):
    """Each person crosses mid-height once; down is in and up is out, as ssdlite.video.Counter counts."""
    clip = made["line_crossing"]
    assert clip.line == clips.LINE == "0,0.5,1,0.5"
    downs = ups = 0
    for object_id in sorted(clip.objects):
        sides = [centre(box)[1] > clips.HEIGHT / 2 for _, box in track_of(clip, object_id)]
        assert sum(a != b for a, b in itertools.pairwise(sides)) == 1, object_id
        downs, ups = downs + (not sides[0]), ups + sides[0]
    assert clip.expected_counts == {"in": downs, "out": ups} and downs >= 1 and ups >= 1
    counter = Counter([parse_region("line", clip.line)])
    for index, frame in enumerate(clip.truth):
        tracked = [{"box": box, "track_id": object_id, "label": "person"} for object_id, box in frame]
        counter.update(tracked, index, index / clip.fps, clips.WIDTH, clips.HEIGHT)
    line = counter.counts()["lines"][0]
    assert {"in": line["in"], "out": line["out"]} == clip.expected_counts


def test_the_pan_moves_every_box_with_the_window(made):
    if "pan" not in made:
        assert clips.pan(0, None) is None
        return
    clip = made["pan"]
    steps = []
    for object_id in clip.objects:
        for (a, box_a), (b, box_b) in itertools.pairwise(track_of(clip, object_id)):
            if b == a + 1 and inside(box_a) and inside(box_b):
                assert box_b[2] - box_b[0] == pytest.approx(box_a[2] - box_a[0])
                steps.append((round(box_b[0] - box_a[0]), round(box_b[1] - box_a[1])))
    assert steps and all(dx < 0 and dy <= 0 for dx, dy in steps), steps


def test_the_same_seed_makes_the_same_clip():
    for scenario in (clips.clean, clips.occlusion, clips.line_crossing):
        a, b, other = scenario(3), scenario(3), scenario(4)
        assert a.truth == b.truth and all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
        assert a.truth != other.truth


@pytest.mark.parametrize("suffix", [".mp4", ""])
def test_a_written_clip_is_a_source_that_track_reads(tmp_path, suffix):
    clip = clips.occlusion(0, None)
    path = clips.write_clip(clip, tmp_path / f"occlusion{suffix}")
    with FrameSource(str(path)) as source:
        frames = list(source)
        assert source.fps == pytest.approx(clip.fps if suffix else 30.0)  # a folder has no frame rate of its own
    assert [f.index for f in frames] == list(range(len(clip.frames)))
    assert all(f.image.shape == clip.frames[0].shape for f in frames)
    # Lossy, but the same pictures.
    assert np.abs(frames[20].image.astype(int) - clip.frames[20]).mean() < 8


def test_metrics_of_a_perfect_tracker_and_of_one_id_switch():
    truth = [[(1, [10.0, 10, 50, 110]), (2, [200.0 + 5 * t, 10, 240 + 5 * t, 110])] for t in range(10)]
    perfect = [[(7, a), (9, b)] for (_, a), (_, b) in truth]
    scores = evaluate(truth, perfect)
    assert (scores["IDSW"], scores["IDF1"], scores["MOTA"], scores["ids"], scores["objects"]) == (0, 1.0, 1.0, 2, 2)
    switched = [[(7, a), (9 if t < 5 else 11, b)] for t, ((_, a), (_, b)) in enumerate(truth)]
    scores = evaluate(truth, switched)
    assert scores["IDSW"] == 1 and scores["ids"] == 3
    # The best one-to-one pairing keeps 15 of the 20 boxes: IDF1 = 2 * 15 / (20 + 20).
    assert scores["IDF1"] == pytest.approx(0.75) and scores["MOTA"] == pytest.approx(19 / 20)


def test_a_hidden_object_counts_as_kept_only_when_it_comes_back_with_its_id():
    box = [10.0, 10, 50, 110]
    truth = [[(1, box)] if t < 3 or t > 6 else [] for t in range(10)]
    same = [[(4, b) for _, b in frame] for frame in truth]
    new = [[(4 if t < 3 else 5, b) for _, b in frame] for t, frame in enumerate(truth)]
    assert hidden_returns(truth, same) == (1, 1) and hidden_returns(truth, new) == (0, 1)
    assert longest_miss(truth, same) == 4
    missed = [frame if t != 8 else [] for t, frame in enumerate(same)]
    assert longest_miss(truth, missed) == 4 and evaluate(truth, missed)["recall"] == pytest.approx(5 / 6)
