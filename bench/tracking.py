"""Trackers on synthetic clips of real people: ID switches, IDF1, MOTA and line counts, and the cost of an update.

``python -m bench.tracking [--output-dir runs/bench_tracking] [--model tf-pedestrian-int8] [--seed 0]
[--score-threshold 0.5] [--threads T] [--lost-seconds S]``: the clips of ``bench.clips`` (clean,
occlusion, line_crossing, and pan when coco128 is present) are made with the people the detector
finds when pasted alone (:func:`people_seen`; the clips try the trackers, not the detector), each
written to an .mp4 in a temporary folder and run through ``ssdlite.video.track`` with the real
detector, once per tracker of ``ssdlite.video.TRACKERS`` (with the settings ``track`` gives a
tracker name; ``--lost-seconds`` changes how long a lost track is kept) and once without a tracker
for the detector's own recall and precision. Against the clip's ground truth, ``trackers.eval``
(TrackEval's CLEAR and identity metrics, a match being IoU 0.5 or more) gives ID switches, IDF1 and
MOTA; the table also shows how many track IDs were handed out against the number of people, on the
occlusion clip whether the hidden person came back with its ID (and for how many frames in a row
the detector missed it), and on line_crossing the line's counts against those expected. Then the
cost: milliseconds per frame of ``Tracker.update`` plus ``Counter.update`` (one line, one zone) on
20 synthetic boxes moving about a 640 x 480 frame, median over 300 frames, no detector (BoT-SORT
also gets pixels, the clean clip's frames in turn, for its camera-motion compensation, as ``track``
gives it each frame's). Prints markdown tables and verdicts on the occlusion; writes
``tracking.json`` to ``--output-dir``.

Findings (``python -m bench.tracking --threads 1``, tf-pedestrian-int8, 2-core x86_64 CPU shared
with other jobs, torch 2.14.1, 2026-12-06; seeds 0, 1 and 2):

* The occlusion: the detector misses the hidden person for 22 frames in a row (1.47 s; 19 and 25
  on seeds 1 and 2): the 11 wholly hidden frames, those where it is mostly hidden, and a few where
  it shows beside the nearer person. With lost tracks kept 1 s all four trackers handed it a new
  ID (IDSW 1 each, every seed); hence ``track``'s default of 2 s, with which OC-SORT, ByteTrack
  and SORT kept it on every seed and BoT-SORT switched on seeds 1 and 2.
* Clean and line crossing: no ID switches; OC-SORT, SORT and BoT-SORT count the line exactly on
  every seed. On seed 2 ByteTrack, whose second pass takes detections down to 0.1, made 7 tracks
  of 4 people and counted 3 in for 2 (and 4 tracks of 3 people on seed 1's clean clip). Pan: SORT
  switched 2 IDs on seed 0, the others none. Over all of it OC-SORT, the default, never switched
  an identity, never split a track and always counted exactly.
* Cost with 20 objects: SORT and ByteTrack 0.76-0.9 ms per frame, OC-SORT 1.08-1.3 ms (almost all
  in the library's per-track Kalman updates), BoT-SORT 8-29 ms (its camera-motion compensation on
  the 640 x 480 pixels).
"""

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from trackers.eval import box_iou, compute_clear_metrics, compute_identity_metrics

from ssdlite.runtime import Detector
from ssdlite.video import DEFAULT_TRACKER, TRACKERS, Counter, Tracker, TrackerOptions, parse_region, track

from . import clips
from .common import machine_description

DETECTOR_ONLY = "(detector)"
MATCH_IOU = 0.5
ZONE = "0.25,0.25,0.75,0.25,0.75,0.75,0.25,0.75"
COST_OBJECTS, COST_FRAMES, COST_WARMUP = 20, 300, 20
SEEN_HEIGHTS = (150, 175, 200)  # the pasted people's heights, but for the occlusion clip's nearer (taller) one
SEEN_IOU = 0.7  # a person whose detected box fits more loosely flickers about the 0.5 of a match

Boxes = list[list[tuple[int, list[float]]]]  # per frame, (id, box xyxy)


def _arrays(frame: list[tuple[int, list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([object_id for object_id, _ in frame], dtype=np.int64)
    return ids, np.array([box for _, box in frame], dtype=np.float64).reshape(-1, 4)


def evaluate(truth: Boxes, tracked: Boxes) -> dict:
    """CLEAR and identity metrics of a tracker's output against the ground truth, frame by frame.

    Returns:
        ``IDSW``, ``IDF1``, ``MOTA``, ``recall``, ``precision``, ``fragmentations``, ``ids`` (distinct
        track IDs) and ``objects`` (distinct ground-truth objects).
    """
    if len(truth) != len(tracked):
        raise ValueError(f"{len(truth)} frames of ground truth but {len(tracked)} of tracker output")
    gt_ids, tracker_ids, similarity = [], [], []
    for truth_frame, tracked_frame in zip(truth, tracked, strict=True):
        (ids, boxes), (track_ids, track_boxes) = _arrays(truth_frame), _arrays(tracked_frame)
        gt_ids.append(ids)
        tracker_ids.append(track_ids)
        similarity.append(box_iou(boxes, track_boxes))
    clear = compute_clear_metrics(gt_ids, tracker_ids, similarity, threshold=MATCH_IOU)
    identity = compute_identity_metrics(gt_ids, tracker_ids, similarity, threshold=MATCH_IOU)
    return {
        "IDSW": int(clear["IDSW"]),
        "IDF1": float(identity["IDF1"]),
        "MOTA": float(clear["MOTA"]),
        "recall": float(clear["CLR_Re"]),
        "precision": float(clear["CLR_Pr"]),
        "fragmentations": int(clear["Frag"]),
        "ids": len({i for frame in tracked for i, _ in frame}),
        "objects": len({i for frame in truth for i, _ in frame}),
    }


def _matches(truth_frame: list[tuple[int, list[float]]], tracked_frame: list[tuple[int, list[float]]]) -> dict:
    """Object id -> track id for the pairs of one frame that best overlap (IoU 0.5 or more)."""
    (ids, boxes), (track_ids, track_boxes) = _arrays(truth_frame), _arrays(tracked_frame)
    iou = box_iou(boxes, track_boxes)
    rows, columns = linear_sum_assignment(-iou)
    return {int(ids[r]): int(track_ids[c]) for r, c in zip(rows, columns, strict=True) if iou[r, c] >= MATCH_IOU}


def longest_miss(truth: Boxes, detected: Boxes) -> int:
    """The most frames in a row that an object went unmatched (hidden or missed) between two frames
    where it was matched, over all objects."""
    matches = [_matches(t, k) for t, k in zip(truth, detected, strict=True)]
    longest = 0
    for object_id in {i for frame in truth for i, _ in frame}:
        matched = [index for index, frame in enumerate(matches) if object_id in frame]
        longest = max([longest, *(b - a - 1 for a, b in itertools.pairwise(matched))])
    return longest


def hidden_returns(truth: Boxes, tracked: Boxes) -> tuple[int, int]:
    """How many of the objects' disappearances (frames missing from the ground truth between two
    where they show) ended with the object matched to the track ID it had before; and how many
    there were, among those where it was matched both before and after."""
    matches = [_matches(t, k) for t, k in zip(truth, tracked, strict=True)]
    kept = gaps = 0
    for object_id in sorted({i for frame in truth for i, _ in frame}):
        shown = [any(i == object_id for i, _ in frame) for frame in truth]
        last_id: int | None = None
        hidden = False
        for index, visible in enumerate(shown):
            if not visible:
                hidden = hidden or last_id is not None
                continue
            track_id = matches[index].get(object_id)
            if track_id is None:
                continue
            if hidden:
                gaps += 1
                kept += track_id == last_id
                hidden = False
            last_id = track_id
    return kept, gaps


def people_seen(detector: Detector, people: Sequence[np.ndarray], scene: np.ndarray, score_threshold: float) -> list:
    """The person crops the detector finds, pasted alone in the middle of ``scene`` at each of
    :data:`SEEN_HEIGHTS` px tall: a box of the score threshold or more at IoU :data:`SEEN_IOU` or
    more with the crop's. The clips are meant to try the trackers, not the detector."""
    seen = []
    for crop in people:
        found = True
        for height in SEEN_HEIGHTS:
            width = round(crop.shape[1] * height / crop.shape[0])
            x, y = (clips.WIDTH - width) // 2, (clips.HEIGHT - height) // 2
            image = scene.copy()
            image[y : y + height, x : x + width] = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
            boxes = [
                d["box"]
                for d in detector.predict(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), score_threshold=score_threshold)
            ]
            best = box_iou(np.array([[x, y, x + width, y + height]], float), np.array(boxes).reshape(-1, 4))
            found = found and best.size > 0 and best.max() >= SEEN_IOU
        if found:
            seen.append(crop)
    return seen


def run_clip(
    clip: clips.Clip,
    path: Path,
    detector: Detector,
    tracker: str | None,
    score_threshold: float,
    lost_seconds: float | None = None,
) -> dict:
    """Runs ``track`` over the written clip; returns the metrics, the final line counts and the seconds.

    Args:
        tracker: a tracker name, or ``None`` to detect only.
        lost_seconds: how long a lost track is kept (``None``: what ``track`` gives a tracker name).
    """
    if tracker is not None and lost_seconds is not None:
        options = TrackerOptions(tracker, clip.fps, lost_seconds, track_threshold=score_threshold)
        setting: str | TrackerOptions | None = options
    else:
        setting = tracker
    tracked: Boxes = [[] for _ in clip.frames]
    counts = None
    frames = 0
    start = time.perf_counter()
    lines = [clip.line] if clip.line and tracker else []
    for frame in track(str(path), detector, tracker=setting, lines=lines, score_threshold=score_threshold):
        people = [d for d in frame.detections if d["label"] == "person"]
        if tracker is None:  # every detection its own ID: only recall and precision mean anything
            tracked[frame.index] = [(frame.index * 1000 + n, d["box"]) for n, d in enumerate(people)]
        else:
            tracked[frame.index] = [(d["track_id"], d["box"]) for d in people]
        counts = frame.counts
        frames += 1
    seconds = time.perf_counter() - start
    if frames != len(clip.frames):
        raise RuntimeError(f"{path}: read {frames} frames of the {len(clip.frames)} written")
    row = {"clip": clip.name, "tracker": tracker or DETECTOR_ONLY, **evaluate(clip.truth, tracked)}
    if tracker is None:
        row.update(dict.fromkeys(("IDSW", "IDF1", "MOTA", "fragmentations", "ids")))
    row["seconds"] = round(seconds, 2)
    if clip.name == "occlusion":
        if tracker is None:
            row["longest_miss"] = longest_miss(clip.truth, tracked)
        else:
            row["hidden_kept"], row["hidden_gaps"] = hidden_returns(clip.truth, tracked)
    if counts is not None and clip.expected_counts is not None:
        line = {"in": counts["lines"][0]["in"], "out": counts["lines"][0]["out"]}
        row["line_counts"], row["expected_counts"] = line, clip.expected_counts
        row["counts_exact"] = line == clip.expected_counts
    return row


def update_cost(tracker: str, images: Sequence[np.ndarray], seed: int = 0) -> dict:
    """Milliseconds per frame of ``Tracker.update`` + ``Counter.update`` (one line, one zone) on
    :data:`COST_OBJECTS` 40 x 100 px boxes moving at constant speeds and bouncing off the frame's
    edges; ``images`` are the frames handed to the tracker, in turn."""
    rng = np.random.default_rng(seed)
    width, height = 40.0, 100.0
    room = np.array([clips.WIDTH - width, clips.HEIGHT - height])
    position = rng.uniform(0, room, size=(COST_OBJECTS, 2))
    velocity = rng.uniform(-6, 6, size=(COST_OBJECTS, 2))
    object_tracker = Tracker(TrackerOptions(tracker=tracker, frame_rate=clips.FPS))
    counter = Counter([parse_region("line", clips.LINE)], [parse_region("zone", ZONE)])
    times, tracked = [], []
    for index in range(COST_WARMUP + COST_FRAMES):
        position += velocity
        outside = (position < 0) | (position > room)
        velocity[outside] *= -1
        position = np.clip(position, 0, room)
        detections = [
            {"box": [x, y, x + width, y + height], "score": 0.9, "class_id": 1, "label": "person"}
            for x, y in position.tolist()
        ]
        timestamp = index / clips.FPS
        start = time.perf_counter()
        tracked = object_tracker.update(detections, timestamp, images[index % len(images)])
        counter.update(tracked, index, timestamp, clips.WIDTH, clips.HEIGHT)
        if index >= COST_WARMUP:
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[round(0.95 * (len(times) - 1))], 3),
        "tracked_last_frame": len(tracked),
    }


def _kept(row: dict) -> bool:
    """Whether a tracker's occlusion row shows every identity kept: no switch, and the hidden person
    matched again after it and with the ID it had before."""
    return row["IDSW"] == 0 and 0 < row["hidden_gaps"] == row["hidden_kept"]


def verdicts(rows: list[dict], lost_seconds: float) -> list[str]:
    """What the occlusion clip says about each tracker, and whether it backs the default tracker."""
    occlusion = {row["tracker"]: row for row in rows if row["clip"] == "occlusion"}
    detector = occlusion.pop(DETECTOR_ONLY, None)
    if not occlusion:
        return []
    lines = []
    if detector is not None:
        miss = detector["longest_miss"]
        lines.append(
            f"On the occlusion clip the detector missed a person for up to {miss} frames in a row "
            f"({miss / clips.FPS:.2f} s; {clips.HIDDEN_FRAMES} of them wholly hidden); a tracker keeps a "
            f"lost track for {lost_seconds:g} s."
        )
    for name, row in occlusion.items():
        returns = f"the hidden person came back with its ID in {row['hidden_kept']} of {row['hidden_gaps']} returns"
        if _kept(row):
            what = f"keeps every ID through the {clips.HIDDEN_FRAMES}-frame occlusion ({returns})"
        else:
            what = f"switches IDs through the {clips.HIDDEN_FRAMES}-frame occlusion (IDSW {row['IDSW']}; {returns})"
        lines.append(f"{name}, lost tracks kept {lost_seconds:g} s: {what}.")
    default = occlusion.get(DEFAULT_TRACKER)
    if default is not None:
        keepers = [name for name, row in occlusion.items() if _kept(row) and name != DEFAULT_TRACKER]
        switchers = [name for name, row in occlusion.items() if not _kept(row) and name != DEFAULT_TRACKER]
        if _kept(default) and switchers:
            verdict = f"supports it: it kept the identities where {', '.join(switchers)} switched"
        elif _kept(default):
            verdict = "agrees with it but does not single it out: every tracker kept the identities"
        elif keepers:
            verdict = f"does not support it: it switched where {', '.join(keepers)} kept the identities"
        else:
            verdict = "does not support it: it switched IDs, as every tracker did"
        lines.append(f"Default tracker {DEFAULT_TRACKER}: the occlusion clip {verdict}.")
    all_switches = {n: sum(r["IDSW"] for r in rows if r["tracker"] == n) for n in occlusion}
    lines.append("ID switches over all clips: " + ", ".join(f"{n} {s}" for n, s in all_switches.items()) + ".")
    return lines


def print_tables(rows: list[dict], cost: dict[str, dict]):
    columns = "IDSW | IDF1 | MOTA | recall | precision | IDs / people | hidden kept | line in/out (expected)"
    print(f"\n| clip | tracker | {columns} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for row in rows:
        detector_only = row["tracker"] == DETECTOR_ONLY
        identity = ("-", "-", "-") if detector_only else (row["IDSW"], f"{row['IDF1']:.3f}", f"{row['MOTA']:.3f}")
        ids = "-" if detector_only else f"{row['ids']} / {row['objects']}"
        hidden = f"{row['hidden_kept']}/{row['hidden_gaps']}" if "hidden_kept" in row else ""
        if "longest_miss" in row:
            hidden = f"missed {row['longest_miss']} frames"
        line = ""
        if "line_counts" in row:
            got, expected = row["line_counts"], row["expected_counts"]
            mark = "exact" if row["counts_exact"] else "WRONG"
            line = f"{got['in']}/{got['out']} ({expected['in']}/{expected['out']}) {mark}"
        print(
            f"| {row['clip']} | {row['tracker']} | {identity[0]} | {identity[1]} | {identity[2]} "
            f"| {row['recall']:.3f} | {row['precision']:.3f} | {ids} | {hidden} | {line} |"
        )
    print(f"\nTracker.update + Counter.update, {COST_OBJECTS} objects, 1 line + 1 zone, {COST_FRAMES} frames:")
    print("\n| tracker | p50 ms/frame | p95 ms/frame | tracked in the last frame |")
    print("|---|---:|---:|---:|")
    for name, figures in cost.items():
        print(f"| {name} | {figures['p50_ms']:.3f} | {figures['p95_ms']:.3f} | {figures['tracked_last_frame']} |")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bench_tracking"), help="where tracking.json goes")
    parser.add_argument("--model", default="tf-pedestrian-int8", help="a zoo name or a model file")
    parser.add_argument("--seed", type=int, default=0, help="the clips' seed")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="track()'s score threshold")
    parser.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    parser.add_argument("--lost-seconds", type=float, help="how long trackers keep a lost track (default: track's)")
    args = parser.parse_args(argv)
    detector = Detector.load(args.model, threads=args.threads)
    people = clips.person_crops()
    seen = people_seen(detector, people, clips.background(args.seed), args.score_threshold)
    if not seen:
        parser.error(f"{args.model} finds none of the {len(people)} people pasted alone at {SEEN_HEIGHTS} px")
    made = clips.clips(args.seed, people=seen)
    print(
        f"{machine_description()}; {args.model} ({detector.config.image_size} px input), score threshold "
        f"{args.score_threshold}; pasted people: the {len(seen)} of {len(people)} it finds alone; clips (seed "
        f"{args.seed}): "
        + ", ".join(f"{c.name} {len(c.frames)} frames at {c.fps:g} FPS, {len(c.objects)} people" for c in made),
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for clip in made:
            path = clips.write_clip(clip, Path(folder) / f"{clip.name}.mp4")
            for tracker in (None, *TRACKERS):
                rows.append(run_clip(clip, path, detector, tracker, args.score_threshold, args.lost_seconds))
                print(json.dumps(rows[-1]), flush=True)
    images = clips.clean(args.seed).frames
    cost = {name: update_cost(name, images, args.seed) for name in TRACKERS}
    print_tables(rows, cost)
    lost_seconds = TrackerOptions().lost_seconds if args.lost_seconds is None else args.lost_seconds
    findings = verdicts(rows, lost_seconds)
    print("\n" + "\n".join(findings))
    results = {
        "machine": machine_description(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "people_seen": f"{len(seen)} of {len(people)}",
        "clips": {
            c.name: {"frames": len(c.frames), "fps": c.fps, "people": len(c.objects), "expected": c.expected_counts}
            for c in made
        },
        "rows": rows,
        "update_cost": cost,
        "verdicts": findings,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "tracking.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.output_dir / 'tracking.json'}")
    return results


if __name__ == "__main__":
    main()
