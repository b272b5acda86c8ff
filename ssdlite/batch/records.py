"""What corpus detection passes around: an input (``Source``), its result (``Record``) or its failure (``Problem``).

Every output format is written from ``Record`` values, and the resume journal stores them as JSON
lines, so a resumed run ends with the same outputs as an uninterrupted one.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FRAME_SUFFIX = ".jpg"  # a video frame's image outputs (annotated, YOLO images/) are JPEG files


def output_file_name(name: str, path: str | Path, frame: int | None) -> str:
    """The file name of an input's image outputs: its unique name plus the input's suffix, or ``.jpg`` for a frame."""
    return name + (FRAME_SUFFIX if frame is not None else Path(path).suffix)


@dataclass(frozen=True)
class Source:
    """One image to detect on: an image file, or one frame of a video file.

    ``index`` is its position in the run's input order; ``name`` is unique within the run and
    names its outputs (``labels/<name>.txt``, ``annotated/<name>.jpg``), without suffix.
    """

    index: int
    path: Path
    name: str
    frame: int | None = None  # 0-based frame number of a video; None for an image file

    @property
    def file_name(self) -> str:
        return output_file_name(self.name, self.path, self.frame)

    @property
    def key(self) -> str:
        """How the outputs name this input: the path as given, ``#frame`` appended for a video frame."""
        return str(self.path) if self.frame is None else f"{self.path}#{self.frame}"


@dataclass(frozen=True)
class Record:
    """The detections of one input. ``detections`` are ``Detector.predict``'s dicts: ``box``
    ``[x1, y1, x2, y2]`` in the original image's pixels, ``score``, ``class_id`` (1-based), ``label``."""

    index: int
    image: str  # Source.key
    name: str  # Source.name
    width: int
    height: int
    detections: list[dict[str, Any]]
    frame: int | None = None  # Source.frame

    @property
    def file_name(self) -> str:
        return output_file_name(self.name, self.image, self.frame)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "Record":
        return cls(**values)


@dataclass(frozen=True)
class Problem:
    """An input that could not be read: skipped, counted and listed at the end."""

    index: int
    image: str
    error: str
