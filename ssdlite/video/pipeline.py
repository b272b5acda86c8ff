"""``track()``: detections, track IDs and counts for every processed frame of a video source."""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..runtime import Detector
from .counting import Counter, CountEvent, CountingError, Region, parse_region
from .sources import FrameSource, SourceOptions
from .tracking import DEFAULT_LOST_SECONDS, Tracker, TrackerOptions


@dataclass
class VideoFrame:
    """One processed frame.

    Attributes:
        index: the frame's number in the source, from 0 (gaps: frames skipped or dropped).
        time: its time in seconds (files: from the frame rate; live sources: when it was captured).
        image: its BGR pixels.
        detections: ``box``, ``score``, ``class_id``, ``label`` and, when tracking, ``track_id``.
        counts: the line and zone counts so far (``None`` without lines or zones).
        events: this frame's count events.
    """

    index: int
    time: float
    image: np.ndarray
    detections: list[dict]
    counts: dict | None = None
    events: list[CountEvent] = field(default_factory=list)


def regions(
    lines: Sequence[str | Region] = (), zones: Sequence[str | Region] = ()
) -> tuple[list[Region], list[Region]]:
    """Parses lines and zones given as text (``"x1,y1,x2,y2"``), keeping those already parsed."""
    return (
        [r if isinstance(r, Region) else parse_region("line", r) for r in lines],
        [r if isinstance(r, Region) else parse_region("zone", r) for r in zones],
    )


def track(
    source: str | FrameSource,
    detector: Detector | Callable[[np.ndarray], list[dict]],
    *,
    tracker: str | TrackerOptions | None = "ocsort",
    lines: Sequence[str | Region] = (),
    zones: Sequence[str | Region] = (),
    score_threshold: float = 0.5,
    source_options: SourceOptions | None = None,
) -> Iterator[VideoFrame]:
    """Detects, tracks and counts over a camera, video file, stream URL or folder of images.

    Args:
        source: a camera index ("0"), video file, ``rtsp://``/``http(s)://`` URL, folder of images,
            or an open :class:`FrameSource`.
        detector: a :class:`Detector`, or a function from a BGR frame to its detections.
        tracker: a tracker name (``ocsort``, ``bytetrack``, ``sort``, ``botsort``), its
            :class:`TrackerOptions`, or ``None`` to detect only.
        lines, zones: where to count (``"x1,y1,x2,y2"``, pixels or 0-1 fractions); they need a tracker.
        score_threshold: the least score of a reported (and, tracking, a track-starting) detection.
        source_options: stride, pacing and reconnection of the source.

    Raises:
        CountingError, TrackingError, SourceError: bad lines or zones, tracker or source (before
            the first frame where it can be told then; a zone outside the frame at the first frame).
    """
    line_regions, zone_regions = regions(lines, zones)
    if (line_regions or zone_regions) and tracker is None:
        raise CountingError("counting over lines and zones needs tracking: give a tracker")
    frames = source if isinstance(source, FrameSource) else FrameSource(source, source_options)
    with frames:
        options = (
            TrackerOptions(tracker=tracker, track_threshold=score_threshold, frame_rate=frames.fps)
            if isinstance(tracker, str)
            else tracker
        )
        object_tracker = Tracker(options) if options is not None else None
        counter = Counter(line_regions, zone_regions, options.lost_seconds if options else DEFAULT_LOST_SECONDS)
        detect_at = options.detection_threshold if options is not None else score_threshold
        for frame in frames:
            if isinstance(detector, Detector):
                rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
                detections = detector.predict(rgb, score_threshold=detect_at)
            else:
                detections = detector(frame.image)
            result = VideoFrame(frame.index, frame.time, frame.image, detections)
            if object_tracker is not None:
                result.detections = object_tracker.update(detections, frame.time, frame.image)
                if counter:
                    height, width = frame.image.shape[:2]
                    result.events = counter.update(result.detections, frame.index, frame.time, width, height)
                    result.counts = counter.counts(frame.time)
            yield result
