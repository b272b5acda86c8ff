"""Object identities across frames, from Roboflow's ``trackers`` library (SORT, ByteTrack, OC-SORT, BoT-SORT).

:class:`Tracker` takes each frame's detections (the ``Detector`` dicts) and returns the tracked
ones with ``track_id`` added. The library's trackers match boxes whatever their class, so each
class gets its own tracker; the IDs handed out are this stream's own, counted from 1 across all
classes and never reused.

``trackers`` declares ``opencv-python`` as a dependency; this project uses ``opencv-python-headless``
(so does albumentations), and the two wheels overwrite each other's ``cv2``. The library runs on
either, so it is installed without its dependencies (``pip install --no-deps trackers``) beside
the ``track`` extra, which lists the rest of what it needs.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SSDLiteError

TRACKERS = ("ocsort", "bytetrack", "sort", "botsort")
DEFAULT_TRACKER = "ocsort"
# The person detector misses a person for up to 1.5 s around an 11-frame full occlusion (bench.tracking):
# at 1 s every tracker handed out a new ID there, at 2 s none of OC-SORT's did.
DEFAULT_LOST_SECONDS = 2.0
# ByteTrack and BoT-SORT match boxes down to this score to tracks they already follow.
LOW_SCORE = 0.1
INSTALL_HINT = "pip install 'ssdlite[track]' && pip install --no-deps trackers==2.6.1"


class TrackingError(SSDLiteError, ValueError):
    """A tracker that cannot be built: an unknown name, a bad threshold or the library missing."""


@dataclass(frozen=True)
class TrackerOptions:
    """Which tracker and its thresholds; ``None`` keeps the library's default for that tracker.

    Attributes:
        tracker: one of :data:`TRACKERS`. OC-SORT is the default: over ``bench.tracking``'s clips
            (three seeds) it switched no identity and counted every line exactly, where SORT and
            BoT-SORT switched and ByteTrack split tracks and miscounted (docs/video.md).
        frame_rate: the stream's nominal frames per second; gaps between frames come from timestamps.
        lost_seconds: how long a track that sees no detection is kept for re-identification.
        track_threshold: the score a detection needs to start or continue a track; ByteTrack and
            BoT-SORT also match lower-scored boxes to existing tracks in a second pass.
        match_iou: the least IoU between a track's predicted box and a detection to match them
            (BoT-SORT: its first association).
        confirm_frames: frames a new track must be matched in before it gets an ID.
    """

    tracker: str = DEFAULT_TRACKER
    frame_rate: float = 30.0
    lost_seconds: float = DEFAULT_LOST_SECONDS
    track_threshold: float = 0.5
    match_iou: float | None = None
    confirm_frames: int | None = None

    @property
    def detection_threshold(self) -> float:
        """The least score of the detections to give :meth:`Tracker.update`."""
        return (
            min(LOW_SCORE, self.track_threshold) if self.tracker in ("bytetrack", "botsort") else self.track_threshold
        )

    def __post_init__(self):
        if self.tracker not in TRACKERS:
            raise TrackingError(f"unknown tracker {self.tracker!r}: choose one of {', '.join(TRACKERS)}")
        if not self.frame_rate > 0:
            raise TrackingError(f"the frame rate must be positive, got {self.frame_rate}")
        if not self.lost_seconds >= 0:
            raise TrackingError(f"--lost-seconds must be 0 or more, got {self.lost_seconds}")
        for name, value in (("--track-threshold", self.track_threshold), ("--match-iou", self.match_iou)):
            if value is not None and not 0 <= value <= 1:
                raise TrackingError(f"{name} must be between 0 and 1, got {value}")
        if self.confirm_frames is not None and self.confirm_frames < 1:
            raise TrackingError(f"--confirm-frames must be at least 1, got {self.confirm_frames}")


def _library() -> Any:
    try:
        import supervision
        import trackers
    except ImportError as error:
        raise TrackingError(f"tracking needs the trackers package ({error.name} is missing): {INSTALL_HINT}") from None
    return trackers, supervision


def check_available():
    """Raises :class:`TrackingError` with the install line when the tracker library is missing."""
    _library()


class Tracker:
    """One stream's tracker: feed it every processed frame's detections in order.

    Args:
        options: which tracker and its thresholds.

    Raises:
        TrackingError: the ``trackers`` library is not installed.
    """

    def __init__(self, options: TrackerOptions | None = None):
        self.options = options or TrackerOptions()
        self._trackers_module, self._supervision = _library()
        self._per_class: dict[int, Any] = {}
        self._ids: dict[tuple[int, int], int] = {}  # (class id, the library's id) -> this stream's id
        self._last_timestamp: float | None = None

    def _new_library_tracker(self) -> Any:
        options, library = self.options, self._trackers_module
        # The library counts its lost-track buffer in frames at 30 FPS, whatever frame_rate says.
        settings: dict[str, Any] = {
            "lost_track_buffer": round(options.lost_seconds * 30),
            "frame_rate": options.frame_rate,
        }
        if options.confirm_frames is not None:
            settings["minimum_consecutive_frames"] = options.confirm_frames
        if options.match_iou is not None:
            key = "minimum_iou_threshold_first_assoc" if options.tracker == "botsort" else "minimum_iou_threshold"
            settings[key] = options.match_iou
        if options.tracker == "ocsort":
            return library.OCSORTTracker(**settings, high_conf_det_threshold=options.track_threshold)
        if options.tracker == "sort":
            return library.SORTTracker(**settings, track_activation_threshold=options.track_threshold)
        both = {
            "track_activation_threshold": options.track_threshold,
            "high_conf_det_threshold": options.track_threshold,
        }
        if options.tracker == "bytetrack":
            return library.ByteTrackTracker(**settings, **both)
        return library.BoTSORTTracker(**settings, **both)

    def update(
        self, detections: Sequence[dict], timestamp: float | None = None, frame: np.ndarray | None = None
    ) -> list[dict]:
        """Returns this frame's tracked detections: copies of the confirmed ones with ``track_id``.

        Args:
            detections: the frame's detections (``box``, ``score``, ``class_id``, ``label``). Give
                every detection down to the score the tracker may use (ByteTrack matches low-scored
                boxes to existing tracks): only tracked ones come back.
            timestamp: the frame's time in seconds (any origin, increasing). Frames skipped or
                dropped between two calls then count as the time that passed; ``None``: one
                nominal frame per call.
            frame: the image, used only by BoT-SORT to compensate camera motion.
        """
        if timestamp is not None and self._last_timestamp is not None and timestamp <= self._last_timestamp:
            raise TrackingError(f"frame timestamps must increase: {timestamp} after {self._last_timestamp}")
        self._last_timestamp = timestamp
        if self.options.tracker == "sort":  # SORT has no low-score pass: it would match anything given
            detections = [d for d in detections if d["score"] >= self.options.track_threshold]
        frame = frame if self.options.tracker == "botsort" else None
        by_class: dict[int, list[dict]] = {}
        for detection in detections:
            by_class.setdefault(int(detection["class_id"]), []).append(detection)
        tracked: list[dict] = []
        # Every class's tracker sees every frame, so its tracks age while its class is out of view.
        for class_id in sorted(set(self._per_class) | set(by_class)):
            tracker = self._per_class.get(class_id)
            if tracker is None:
                tracker = self._per_class[class_id] = self._new_library_tracker()
            tracked.extend(self._update_class(tracker, class_id, by_class.get(class_id, []), timestamp, frame))
        return tracked

    def _update_class(
        self, tracker: Any, class_id: int, detections: list[dict], timestamp: float | None, frame: np.ndarray | None
    ) -> list[dict]:
        boxes = np.array([d["box"] for d in detections], dtype=np.float32).reshape(-1, 4)
        scores = np.array([d["score"] for d in detections], dtype=np.float32)
        index = np.arange(len(detections))
        frame_detections = self._supervision.Detections(xyxy=boxes, confidence=scores, data={"index": index})
        result = tracker.update(frame_detections, frame=frame, timestamp=timestamp)
        if result.tracker_id is None:
            return []
        tracked = []
        for source_index, library_id in zip(result.data.get("index", ()), result.tracker_id, strict=True):
            if library_id < 0:
                continue
            key = (class_id, int(library_id))
            track_id = self._ids.setdefault(key, len(self._ids) + 1)
            tracked.append({**detections[int(source_index)], "track_id": track_id})
        return tracked
