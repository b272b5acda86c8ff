"""Counting tracked objects over lines (in and out, by direction) and in polygon zones (occupancy, entries, exits).

A tracked object is counted by its box's centre. A line ``x1,y1,x2,y2`` counts an object when the
path of its centre between two observations crosses the segment: **in** when it crosses from the
left of the direction ``(x1,y1) -> (x2,y2)`` to its right (image coordinates, y down: for a line
drawn left to right, moving down the picture is in), **out** the other way. A zone
``x1,y1,x2,y2,x3,y3,...`` (at least 3 points) counts the objects inside it, each entry and exit, and
how long each object has been inside; an object whose track is lost inside a zone has exited.
Coordinates are pixels, or fractions of the frame when every value is between 0 and 1.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..errors import SSDLiteError
from .tracking import DEFAULT_LOST_SECONDS


class CountingError(SSDLiteError, ValueError):
    """A line or zone that cannot count: bad numbers, equal points, too few points, outside the frame."""


@dataclass(frozen=True)
class Region:
    """A line (2 points) or zone (3 or more) as given: pixels, or fractions of the frame."""

    kind: str  # "line" or "zone"
    text: str
    points: tuple[tuple[float, float], ...]
    fractional: bool

    def resolve(self, width: int, height: int) -> np.ndarray:
        """The points in pixels of a ``width`` x ``height`` frame, as a ``[N, 2]`` float array.

        Raises:
            CountingError: a point outside the frame.
        """
        points = np.array(self.points, dtype=np.float64)
        if self.fractional:
            points = points * (width, height)
        inside = (points >= 0).all() and (points[:, 0] <= width).all() and (points[:, 1] <= height).all()
        if not inside:
            raise CountingError(f"{self.kind} {self.text!r} lies outside the {width}x{height} frame")
        return points


def parse_region(kind: str, text: str) -> Region:
    """Parses ``--line x1,y1,x2,y2`` or ``--zone x1,y1,x2,y2,x3,y3,...``.

    Raises:
        CountingError: not numbers, an odd count, the wrong number of points, equal line ends.
    """
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise CountingError(f"{kind} {text!r}: give comma-separated numbers (x1,y1,x2,y2,...)") from None
    if not all(math.isfinite(v) for v in values) or len(values) % 2:
        raise CountingError(f"{kind} {text!r}: give x,y pairs of finite numbers")
    points = tuple(zip(values[::2], values[1::2], strict=True))
    if kind == "line":
        if len(points) != 2:
            raise CountingError(f"line {text!r}: give exactly two points, x1,y1,x2,y2")
        if points[0] == points[1]:
            raise CountingError(f"line {text!r}: its two points are equal")
    elif len(points) < 3:
        raise CountingError(f"zone {text!r}: give at least 3 points, x1,y1,x2,y2,x3,y3,...")
    return Region(kind, text, points, fractional=all(0 <= v <= 1 for v in values))


@dataclass(frozen=True)
class CountEvent:
    """One count: a line crossed (``in``/``out``) or a zone entered or exited (``enter``/``exit``)."""

    time: float  # the frame's time in seconds
    frame: int
    track_id: int
    label: str
    kind: str  # "line" or "zone"
    index: int  # the line's or zone's position in the order given, from 0
    direction: str
    seconds_inside: float | None = None  # a zone exit: how long the object was inside

    CSV_HEADER = ("time", "frame", "track_id", "label", "kind", "index", "direction", "seconds_inside")

    def csv_row(self) -> tuple:
        inside = "" if self.seconds_inside is None else round(self.seconds_inside, 3)
        return (
            round(self.time, 3),
            self.frame,
            self.track_id,
            self.label,
            self.kind,
            self.index,
            self.direction,
            inside,
        )


def _side(start: np.ndarray, end: np.ndarray, point: np.ndarray) -> float:
    """Positive right of start -> end (y down), negative left, 0 on the line."""
    return float((end[0] - start[0]) * (point[1] - start[1]) - (end[1] - start[1]) * (point[0] - start[0]))


@dataclass
class _LineState:
    points: np.ndarray
    counts: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0})
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    last: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)  # track -> (side, centre) off the line


@dataclass
class _ZoneState:
    points: np.ndarray
    entered: int = 0
    exited: int = 0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    inside: dict[int, tuple[str, float]] = field(default_factory=dict)  # track -> (label, time it entered)


class Counter:
    """Line and zone counts of one tracked stream.

    Args:
        lines, zones: the regions, in the order their counts are reported.
        lost_seconds: a track unseen this long is forgotten (and exits the zones it was in).
    """

    def __init__(
        self, lines: Sequence[Region] = (), zones: Sequence[Region] = (), lost_seconds: float = DEFAULT_LOST_SECONDS
    ):
        self.lines, self.zones, self.lost_seconds = list(lines), list(zones), lost_seconds
        self._size: tuple[int, int] | None = None
        self._line_states: list[_LineState] = []
        self._zone_states: list[_ZoneState] = []
        self._last_seen: dict[int, float] = {}

    def __bool__(self) -> bool:
        return bool(self.lines or self.zones)

    def resolve(self, width: int, height: int):
        """Places the regions on a frame of this size (again only when the size changes).

        Raises:
            CountingError: a region outside the frame.
        """
        if self._size == (width, height):
            return
        line_points = [line.resolve(width, height) for line in self.lines]
        zone_points = [zone.resolve(width, height) for zone in self.zones]
        if self._size is None:
            self._line_states = [_LineState(points) for points in line_points]
            self._zone_states = [_ZoneState(points) for points in zone_points]
        else:  # keep the counts, move the regions
            for state, points in zip(self._line_states, line_points, strict=True):
                state.points = points
            for zone_state, points in zip(self._zone_states, zone_points, strict=True):
                zone_state.points = points
        self._size = (width, height)

    def update(self, tracked: Sequence[dict], frame: int, time: float, width: int, height: int) -> list[CountEvent]:
        """Counts one frame's tracked detections; returns the frame's count events."""
        self.resolve(width, height)
        events: list[CountEvent] = []
        for detection in tracked:
            track_id, label = int(detection["track_id"]), str(detection["label"])
            x1, y1, x2, y2 = detection["box"]
            centre = np.array(((x1 + x2) / 2, (y1 + y2) / 2))
            self._last_seen[track_id] = time
            for index, line in enumerate(self._line_states):
                direction = self._crossing(line, track_id, centre)
                if direction:
                    line.counts[direction] += 1
                    per_class = line.classes.setdefault(label, {"in": 0, "out": 0})
                    per_class[direction] += 1
                    events.append(CountEvent(time, frame, track_id, label, "line", index, direction))
            for index, zone in enumerate(self._zone_states):
                inside = cv2.pointPolygonTest(zone.points.astype(np.float32), tuple(centre), False) >= 0
                if inside and track_id not in zone.inside:
                    zone.inside[track_id] = (label, time)
                    zone.entered += 1
                    zone.classes.setdefault(label, {"entered": 0, "exited": 0})["entered"] += 1
                    events.append(CountEvent(time, frame, track_id, label, "zone", index, "enter"))
                elif not inside and track_id in zone.inside:
                    events.append(self._exit(zone, index, track_id, frame, time))
        for track_id in [t for t, seen in self._last_seen.items() if time - seen > self.lost_seconds]:
            del self._last_seen[track_id]
            for line in self._line_states:
                line.last.pop(track_id, None)
            for index, zone in enumerate(self._zone_states):
                if track_id in zone.inside:
                    events.append(self._exit(zone, index, track_id, frame, time))
        return events

    @staticmethod
    def _crossing(line: _LineState, track_id: int, centre: np.ndarray) -> str | None:
        start, end = line.points
        side = _side(start, end, centre)
        if side == 0:
            return None
        previous = line.last.get(track_id)
        line.last[track_id] = (side, centre)
        if previous is None or (previous[0] > 0) == (side > 0):
            return None
        # The path crossed the infinite line; it counts only where it meets the segment itself.
        before = previous[1]
        path_start, path_end = _side(before, centre, start), _side(before, centre, end)
        if (path_start > 0) == (path_end > 0) and path_start != 0 and path_end != 0:
            return None
        return "in" if side > 0 else "out"

    @staticmethod
    def _exit(zone: _ZoneState, index: int, track_id: int, frame: int, time: float) -> CountEvent:
        label, entered_at = zone.inside.pop(track_id)
        zone.exited += 1
        zone.classes.setdefault(label, {"entered": 0, "exited": 0})["exited"] += 1
        return CountEvent(time, frame, track_id, label, "zone", index, "exit", time - entered_at)

    def counts(self, time: float | None = None) -> dict:
        """The counts so far: ``{"lines": [...], "zones": [...]}`` in the order given.

        Args:
            time: the current frame's time, for each object's time in zone (seconds).
        """
        lines = [
            {**line.counts, "classes": {label: dict(c) for label, c in sorted(line.classes.items())}}
            for line in self._line_states
        ]
        zones = []
        for zone in self._zone_states:
            classes: dict[str, dict[str, int]] = {}
            for label, counts in sorted(zone.classes.items()):
                classes[label] = {"inside": 0, **counts}
            for label, _ in zone.inside.values():
                classes.setdefault(label, {"inside": 0, "entered": 0, "exited": 0})["inside"] += 1
            seconds = {
                str(track): round(max(0.0, (time if time is not None else entered) - entered), 3)
                for track, (_, entered) in zone.inside.items()
            }
            zone_counts = {"inside": len(zone.inside), "entered": zone.entered, "exited": zone.exited}
            zones.append({**zone_counts, "classes": classes, "seconds_inside": seconds})
        return {"lines": lines, "zones": zones}


def draw_counts(image: np.ndarray, lines: Sequence[Region], zones: Sequence[Region], counts: dict) -> np.ndarray:
    """Draws the lines and zones with their counts (from :meth:`Counter.counts`) on an image, in place."""
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    scale = 0.5 * thickness
    for line, line_counts in zip(lines, counts.get("lines", ()), strict=False):
        start, end = (tuple(int(round(v)) for v in p) for p in line.resolve(width, height))
        cv2.arrowedLine(image, start, end, (255, 255, 0), thickness + 1, cv2.LINE_AA, tipLength=0.03)
        _label(image, f"in {line_counts['in']}  out {line_counts['out']}", start, scale)
    for zone, zone_counts in zip(zones, counts.get("zones", ()), strict=False):
        polygon = zone.resolve(width, height).round().astype(np.int32)
        cv2.polylines(image, [polygon], True, (255, 0, 255), thickness + 1, cv2.LINE_AA)
        text = f"inside {zone_counts['inside']}  entered {zone_counts['entered']}  exited {zone_counts['exited']}"
        _label(image, text, tuple(int(v) for v in polygon[polygon[:, 1].argmin()]), scale)
    return image


def _label(image: np.ndarray, text: str, origin: tuple[int, ...], scale: float):
    x, y = origin
    y = max(y - 6, 14)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
