"""Video: sources paced for real time, object tracking, and counting over lines and zones.

>>> for frame in track("people.mp4", Detector.load("tf-pedestrian-int8"), lines=["0,0.5,1,0.5"]):
...     print(frame.index, [d["track_id"] for d in frame.detections], frame.counts)
"""

from .counting import Counter, CountEvent, CountingError, Region, draw_counts, parse_region
from .pipeline import VideoFrame, regions, track
from .sources import Frame, FrameSource, SourceError, SourceOptions, source_kind
from .tracking import (
    DEFAULT_LOST_SECONDS,
    DEFAULT_TRACKER,
    TRACKERS,
    Tracker,
    TrackerOptions,
    TrackingError,
    check_available,
)

__all__ = [
    "DEFAULT_LOST_SECONDS",
    "DEFAULT_TRACKER",
    "TRACKERS",
    "CountEvent",
    "Counter",
    "CountingError",
    "Frame",
    "FrameSource",
    "Region",
    "SourceError",
    "SourceOptions",
    "Tracker",
    "TrackerOptions",
    "TrackingError",
    "VideoFrame",
    "check_available",
    "draw_counts",
    "parse_region",
    "regions",
    "source_kind",
    "track",
]
