"""Frames from a camera, a video file, a stream URL or a folder of images, paced for real time.

``open_source(spec)`` picks the kind from the text: digits are a camera index; ``rtsp://``,
``rtmp://``, ``http://`` and ``https://`` are stream URLs; a folder is read as frames in name order;
anything else is a video file. Files and folders are read frame by frame in full (``vid_stride``
keeps every Nth frame) and end the iteration at their end. Live sources (cameras and URLs) are read
on their own thread, which keeps only the newest frame: when processing is slower than the camera,
older frames are dropped and the frame being processed is never more than one processing time old.
A live source that stops giving frames (or a stream that cannot be opened at the start) is reopened
with a doubling wait, ``reconnects`` times in a row at most, and then raises :class:`SourceError`
naming it; a camera that cannot be opened at the start is an error at once.
"""

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from ..errors import SSDLiteError
from ..images import IMAGE_SUFFIXES

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
NOMINAL_FPS = 30.0
STREAM_TIMEOUT_MS = 10_000
logger = logging.getLogger(__name__)


class SourceError(SSDLiteError, OSError):
    """A source that cannot be opened or read: its message names the source."""


@dataclass(frozen=True)
class Frame:
    """One frame to process: its number in the source (from 0), its time in seconds and its BGR pixels."""

    index: int
    time: float
    image: np.ndarray


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source.

    Attributes:
        vid_stride: process every Nth frame (of a file, or of what a live source delivers).
        max_fps: process at most this many frames per second (``None``: as fast as processing goes).
        reconnects: how many times in a row a live source is reopened before giving up.
        reconnect_delay: the first wait before reopening, in seconds; it doubles each try (at most 10 s).
    """

    vid_stride: int = 1
    max_fps: float | None = None
    reconnects: int = 5
    reconnect_delay: float = 0.5

    def __post_init__(self):
        if self.vid_stride < 1:
            raise SourceError(f"--vid-stride must be at least 1 (every Nth frame), got {self.vid_stride}")
        if self.max_fps is not None and not self.max_fps > 0:
            raise SourceError(f"--max-fps must be positive, got {self.max_fps}")
        if self.reconnects < 0:
            raise SourceError(f"--reconnects must be 0 or more, got {self.reconnects}")


def source_kind(spec: str) -> str:
    """``camera``, ``stream``, ``folder`` or ``file``.

    Raises:
        SourceError: a URL whose scheme is not a stream's, or a path that does not exist.
    """
    if spec.isdigit():
        return "camera"
    scheme = urlsplit(spec).scheme.lower()
    if "://" in spec:
        if scheme not in STREAM_SCHEMES:
            raise SourceError(
                f"unsupported URL scheme {scheme!r} in {spec!r}: use {', '.join(STREAM_SCHEMES)}, "
                "a camera index, a video file or a folder of images"
            )
        return "stream"
    if os.path.isdir(spec):
        return "folder"
    if not os.path.exists(spec):
        raise SourceError(f"cannot open {spec!r}: no such file or folder (or give a camera index or stream URL)")
    return "file"


class FrameSource:
    """Iterates a source's frames (see the module's description); use as a context manager or ``close()`` it.

    Args:
        spec: a camera index, stream URL, video file or folder of images.
        options: stride, pacing and reconnection.
        open_capture: how a camera or URL is opened (tests give a fake camera).

    Raises:
        SourceError: the source cannot be opened (a live one: after its reconnection tries).
    """

    def __init__(
        self,
        spec: str,
        options: SourceOptions | None = None,
        open_capture: Callable[[str], cv2.VideoCapture] | None = None,
    ):
        self.spec = spec
        self.options = options or SourceOptions()
        self.kind = source_kind(spec)
        self._open_capture = open_capture or _open_capture
        self.fps = NOMINAL_FPS
        self._capture: cv2.VideoCapture | None = None
        self._images: list[Path] = []
        self._live: _LiveReader | None = None
        if self.kind == "folder":
            self._images = sorted(p for p in Path(spec).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise SourceError(f"folder {spec!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif self.kind == "file":
            self._capture = cv2.VideoCapture(spec)
            if not self._capture.isOpened():
                raise SourceError(f"cannot read {spec!r} as a video (is it a video file OpenCV can decode?)")
            self.fps = _frame_rate(self._capture)
        else:
            self._live = _LiveReader(spec, self._open_capture, self.options)
            self.fps = self._live.fps

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self._live is not None:
            self._live.stop()
        if self._capture is not None:
            self._capture.release()

    def __iter__(self) -> Iterator[Frame]:
        frames = self._live_frames() if self._live else self._folder_frames() if self._images else self._file_frames()
        interval = 1 / self.options.max_fps if self.options.max_fps else 0.0
        next_due = time.monotonic()
        for frame in frames:
            if interval:
                wait = next_due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                next_due = max(next_due + interval, time.monotonic())
            yield frame

    def _file_frames(self) -> Iterator[Frame]:
        assert self._capture is not None
        stride, index = self.options.vid_stride, 0
        while True:
            ok, image = self._capture.read()
            if not ok:
                return
            yield Frame(index, index / self.fps, image)
            for _ in range(stride - 1):
                if not self._capture.grab():
                    return
            index += stride

    def _folder_frames(self) -> Iterator[Frame]:
        for index in range(0, len(self._images), self.options.vid_stride):
            path = self._images[index]
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                logger.warning("skipping %s: not a readable image", path)
                continue
            yield Frame(index, index / self.fps, image)

    def _live_frames(self) -> Iterator[Frame]:
        assert self._live is not None
        last = -1
        while True:
            frame = self._live.newest_after(last)
            if frame is None:
                return
            last = frame.index
            yield frame


def _frame_rate(capture: cv2.VideoCapture) -> float:
    """The rate a capture reports, or the nominal one where it reports none (or nonsense)."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    return fps if 1 <= fps <= 240 else NOMINAL_FPS


def _open_capture(spec: str) -> cv2.VideoCapture:
    if spec.isdigit():
        return cv2.VideoCapture(int(spec))
    # Without timeouts a stream that accepts the connection but sends nothing blocks forever.
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
    return cv2.VideoCapture(spec, cv2.CAP_FFMPEG, timeouts)


class _LiveReader:
    """Reads a live source on a thread, keeping only the newest frame; reopens it when it stops."""

    def __init__(self, spec: str, open_capture: Callable[[str], cv2.VideoCapture], options: SourceOptions):
        self.spec, self.open_capture, self.options = spec, open_capture, options
        self._condition = threading.Condition()
        self._newest: Frame | None = None
        self._error: SourceError | None = None
        self._stopped = False
        self._capture = self._connect(first=True)
        self.fps = _frame_rate(self._capture)
        self._thread = threading.Thread(target=self._read, name=f"source {spec}", daemon=True)
        self._thread.start()

    def _connect(self, first: bool) -> cv2.VideoCapture:
        delay = self.options.reconnect_delay
        tries = 0
        # A camera that is not there at the start will not appear by waiting; a stream's server may be restarting.
        patience = 0 if first and self.spec.isdigit() else self.options.reconnects
        while True:
            capture = self.open_capture(self.spec)
            if capture.isOpened():
                return capture
            capture.release()
            if tries >= patience or self._stopped:
                if first and self.spec.isdigit():
                    raise SourceError(f"cannot open camera {self.spec} (is one connected, and free?)")
                what = "cannot open" if first else "lost"
                raise SourceError(
                    f"{what} {self.spec!r}" + (f" and could not reconnect in {tries} tries" if tries else "")
                )
            tries += 1
            logger.warning(
                "cannot open %s; trying again in %.1f s (%d/%d)", self.spec, delay, tries, self.options.reconnects
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _read(self):
        index = 0
        stride = self.options.vid_stride
        try:
            while not self._stopped:
                ok, image = self._capture.read()
                if not ok:
                    self._capture.release()
                    if self._stopped:
                        return
                    logger.warning("%s stopped giving frames; reconnecting", self.spec)
                    self._capture = self._connect(first=False)
                    continue
                captured = time.monotonic()
                index += 1
                if (index - 1) % stride:
                    continue
                with self._condition:
                    self._newest = Frame(index - 1, captured, image)
                    self._condition.notify_all()
        except SourceError as error:
            with self._condition:
                self._error = error
                self._condition.notify_all()
        finally:
            self._capture.release()

    def newest_after(self, index: int) -> Frame | None:
        """Waits for a frame newer than ``index``; ``None`` once stopped.

        Raises:
            SourceError: the source was lost and could not be reopened.
        """
        with self._condition:
            while not self._stopped and self._error is None and (self._newest is None or self._newest.index <= index):
                self._condition.wait()
            if self._newest is not None and self._newest.index > index:
                return self._newest
            if self._error is not None:
                raise self._error
            return None

    def stop(self):
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        self._thread.join(timeout=5)
