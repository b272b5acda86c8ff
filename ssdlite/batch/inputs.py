"""What a corpus run reads: files, folders, glob patterns, ``.txt`` lists of paths and video files.

:func:`collect_sources` turns the arguments into an ordered list of :class:`Source` values (one
per image, or per kept frame of a video) before any work starts; :class:`ImageReader` decodes
them, image files on a thread pool, video frames in order.
"""

import glob
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import SSDLiteError
from ..images import IMAGE_SUFFIXES, read_image
from .records import Problem, Source

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
GLOB_CHARACTERS = frozenset("*?[")


class InputError(SSDLiteError, ValueError):
    """Arguments that name no usable input (a pattern that matches nothing, a bad ``--vid-stride``)."""


@dataclass
class Inputs:
    """The run's inputs in order, and the named paths that do not exist (skipped and listed at the end)."""

    sources: list[Source]
    missing: list[Problem] = field(default_factory=list)


def collect_sources(arguments: Sequence[str], vid_stride: int = 1) -> Inputs:
    """Expands command-line inputs into :class:`Source` values, in the order given.

    Args:
        arguments: image or video files, folders (searched recursively for image and video
            suffixes), glob patterns (``**`` recursive) and ``.txt`` files listing one path per line
            (relative to the list's folder; blank lines and ``#`` comments ignored).
        vid_stride: keep every Nth frame of a video (1: every frame).

    Raises:
        InputError: ``vid_stride`` below 1, a glob pattern that matches no file, or an unreadable list.
    """
    if vid_stride < 1:
        raise InputError(f"--vid-stride must be at least 1 (every Nth frame), got {vid_stride}")
    files: list[tuple[Path, str]] = []  # (path, name stem before de-duplication)
    missing: list[str] = []
    for argument in arguments:
        files.extend(_expand(argument, missing))
    names = _unique_names([stem for _, stem in files])
    sources: list[Source] = []
    for (path, _), name in zip(files, names, strict=True):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            for frame in range(0, _frame_count(path), vid_stride):
                sources.append(Source(len(sources), path, f"{name}_{frame:06d}", frame))
        else:
            sources.append(Source(len(sources), path, name))
    problems = [Problem(-1, text, f"{text}: no such file") for text in missing]
    return Inputs(sources, problems)


def _expand(argument: str, missing: list[str]) -> list[tuple[Path, str]]:
    path = Path(argument)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if _is_media(p) and p.is_file())
        return [(p, "__".join(p.relative_to(path).with_suffix("").parts)) for p in found]
    if path.is_file() and path.suffix.lower() == ".txt":
        return [entry for line in _list_entries(path) for entry in _expand(line, missing)]
    if path.exists():
        return [(path, path.stem)]
    if GLOB_CHARACTERS & set(argument):
        matches = sorted(Path(p) for p in glob.glob(argument, recursive=True) if _is_media(Path(p)))
        if not matches:
            raise InputError(f"{argument}: the pattern matches no image or video file")
        return [(p, p.stem) for p in matches if p.is_file()]
    missing.append(argument)
    return []


def _list_entries(list_file: Path) -> list[str]:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{list_file}: cannot read the list of paths ({error})") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return [entry if os.path.isabs(entry) else str(list_file.parent / entry) for entry in entries]


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def _unique_names(stems: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        # An unreadable video yields no frames; the run lists it as a problem when it reads frame 0.
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 1) if capture.isOpened() else 1
    finally:
        capture.release()


class ImageReader:
    """Decodes sources ahead of the detector: image files on ``workers`` threads, video frames in order.

    Use as a context manager; :meth:`read` returns one batch's images (or the error per source).
    """

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode")
        self.video: tuple[Path, cv2.VideoCapture, int] | None = None  # (path, capture, next frame)

    def __enter__(self) -> "ImageReader":
        return self

    def __exit__(self, *_):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._close_video()

    def submit(self, sources: Sequence[Source]) -> list[Future]:
        """Starts decoding the image files of a batch; video frames are read by :meth:`read`."""
        return [self.pool.submit(read_image, s.path) if s.frame is None else _done(None) for s in sources]

    def read(self, sources: Sequence[Source], futures: list[Future]) -> Iterator[tuple[Source, np.ndarray | str]]:
        """Each source with its RGB image, or with the reason it could not be read."""
        for source, future in zip(sources, futures, strict=True):
            try:
                image = future.result() if source.frame is None else self._frame(source)
            except (OSError, ValueError) as error:
                yield source, str(error)
                continue
            yield source, image

    def _frame(self, source: Source) -> np.ndarray:
        assert source.frame is not None
        if self.video is None or self.video[0] != source.path or self.video[2] > source.frame:
            self._close_video()
            capture = cv2.VideoCapture(str(source.path))
            if not capture.isOpened():
                raise ValueError(f"{source.path}: not a readable video")
            self.video = (source.path, capture, 0)
        path, capture, position = self.video
        if source.frame - position > 30:  # far ahead (a resumed run): seek instead of decoding every frame
            capture.set(cv2.CAP_PROP_POS_FRAMES, source.frame)
            position = source.frame
        while position < source.frame:
            capture.grab()
            position += 1
        ok, frame = capture.read()
        self.video = (path, capture, position + 1)
        if not ok:
            raise ValueError(f"{source.key}: the video has no such frame (it ends earlier or is damaged)")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def _close_video(self):
        if self.video is not None:
            self.video[1].release()
            self.video = None


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
