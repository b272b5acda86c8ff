"""The bad-input corpus: what the detection service must refuse with a 4xx, for the tests and ``bench.soak``.

- ``bad_inputs()``: upload bodies that decoding refuses, ``name -> (body, acceptable statuses)``;
  the tests send each through every path (multipart and raw, HTTP and in-process).
- ``BAD_PARAMETERS``: query strings refused whatever the body, ``name -> (query, acceptable statuses)``.
- ``oversize_body(limit)``: a body half as large again as the server's body limit (413).
- ``bad_requests(limit)``: all of the above as ``name -> BadRequest(query, body, statuses)``.
"""

import functools
import io
import random
from typing import NamedTuple

import numpy as np
from PIL import Image

from ssdlite.images import SAMPLE_PHOTOS

Corpus = dict[str, tuple[bytes, tuple[int, ...]]]

UNREADABLE = (415, 422)  # not a supported image / a corrupt one
OVERSIZE = (413,)

BAD_PARAMETERS: dict[str, tuple[str, tuple[int, ...]]] = {
    "score_threshold=2": ("score_threshold=2", (422,)),
    "max_detections=0": ("max_detections=0", (422,)),
    "unknown class": ("classes=no-such-class", (422,)),
}


class BadRequest(NamedTuple):
    """One kind of bad ``POST /detect``: its query string (may be empty), body and acceptable statuses."""

    query: str
    body: bytes
    statuses: tuple[int, ...]


def good_photo() -> bytes:
    """A real photo (512x512 JPEG) that every detector answers with 200."""
    return (SAMPLE_PHOTOS / "astronaut.jpg").read_bytes()


def _encode(image: np.ndarray | Image.Image, image_format: str) -> bytes:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


@functools.cache
def bad_inputs() -> Corpus:
    """name -> (body, acceptable statuses) for every kind of bad upload the service must refuse."""
    good = good_photo()
    # A 30000x30000 PNG: a few hundred KB on the wire, 2.7 GB once decoded.
    bomb = _encode(Image.new("1", (30000, 30000)), "PNG")
    middle = (good.index(b"\xff\xda") + len(good)) // 2  # halfway between the start of scan and the end
    return {
        "empty": (b"", UNREADABLE),
        "text": (b"hello, this is not an image at all", UNREADABLE),
        "truncated jpeg": (good[: len(good) // 2], UNREADABLE),
        "corrupt jpeg": (good[:200] + bytes(range(256)) * 40, UNREADABLE),
        "jpeg header only": (b"\xff\xd8\xff\xe0" + b"\x00" * 20, UNREADABLE),
        "gif": (_encode(np.zeros((8, 8, 3), np.uint8), "GIF"), (415,)),
        "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", (415,)),
        "decompression bomb": (bomb, (413, 422)),
        # Damage in the middle of the scan: the header is fine, and a lenient decoder fills the hole in
        # (libjpeg only warns "Corrupt JPEG data"); a strict one refuses it.
        "jpeg scan zeroed": (good[:middle] + bytes(4096) + good[middle + 4096 :], UNREADABLE),
        "jpeg scan replaced": (good[:middle] + random.Random(0).randbytes(4096) + good[middle + 4096 :], UNREADABLE),
    }


def oversize_body(limit: int) -> bytes:
    """A JPEG signature padded to 1.5 times ``limit`` bytes: refused (413) for its size alone."""
    return b"\xff\xd8\xff\xe0" + bytes(limit + limit // 2 - 4)


def bad_requests(limit: int) -> dict[str, BadRequest]:
    """Every bad kind: the bodies, the oversize body, and the bad parameters (with a good photo)."""
    corpus = {name: BadRequest("", body, statuses) for name, (body, statuses) in bad_inputs().items()}
    corpus["oversize body"] = BadRequest("", oversize_body(limit), OVERSIZE)
    photo = good_photo()
    corpus.update({name: BadRequest(query, photo, statuses) for name, (query, statuses) in BAD_PARAMETERS.items()})
    return corpus
