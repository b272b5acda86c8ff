"""Untrusted image bytes -> RGB pixels, with the checks that keep a bad upload from hurting the server.

The bytes' own signature decides the format (never the client's Content-Type); the header's
dimensions are checked against a pixel limit before any pixel is decoded (decompression
bombs); OpenCV then decodes strictly (truncated files fail) and applies EXIF orientation.
"""

import io
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

SUPPORTED = "JPEG, PNG, WebP, BMP or TIFF"

# (prefix, offset, format name as PIL reports it)
_SIGNATURES = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WEBP"),  # after b"RIFF" + 4 size bytes
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
_UNSUPPORTED = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"%PDF", 0, "PDF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
)


class ImageError(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def sniff_format(data: bytes) -> str:
    """The image format named by the bytes' signature.

    Raises:
        ImageError: 422 for no bytes, 415 for anything that is not a supported image.
    """
    if not data:
        raise ImageError(422, "empty image: the request carried no bytes")
    for prefix, offset, name in _SIGNATURES:
        if data[offset : offset + len(prefix)] == prefix and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    for prefix, offset, name in _UNSUPPORTED:
        if data[offset : offset + len(prefix)] == prefix:
            raise ImageError(415, f"{name} images are not supported; send {SUPPORTED}")
    raise ImageError(415, f"not a supported image (unrecognised file signature); send {SUPPORTED}")


def image_size(data: bytes, image_format: str) -> tuple[int, int]:
    """(width, height) from the header alone: PIL's ``open`` is lazy and decodes no pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limit is checked next
            with Image.open(io.BytesIO(data), formats=[image_format]) as header:
                return header.size
    except Image.DecompressionBombError as error:
        raise ImageError(413, f"image too large: {error}") from None
    except UnidentifiedImageError:
        raise ImageError(422, f"corrupt {image_format} image: its header cannot be read") from None
    except Exception as error:  # PIL raises many types for corrupt headers
        raise ImageError(422, f"corrupt {image_format} image: its header cannot be read ({error})") from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decodes untrusted image bytes into an RGB uint8 ``[H, W, 3]`` array, EXIF orientation applied.

    Raises:
        ImageError: with the HTTP status (413, 415 or 422) and a message for the client.
    """
    image_format = sniff_format(data)
    width, height = image_size(data, image_format)
    if width * height > max_pixels:
        pixels = f"{width}x{height} is {width * height} pixels"
        raise ImageError(413, f"image too large: {pixels}, the limit is {max_pixels} (SSDLITE_MAX_PIXELS)")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if pixels is None:
        raise ImageError(422, f"corrupt or truncated {image_format} image: it cannot be decoded")
    return pixels


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 array -> JPEG bytes."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return encoded.tobytes()


def warm_up_decoder():
    """Decodes one small JPEG so that the first upload does not pay for codec start-up."""
    decode_image(encode_jpeg(np.zeros((64, 64, 3), np.uint8)), 64 * 64)
