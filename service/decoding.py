"""Untrusted image bytes -> RGB pixels, with the checks that keep a bad upload from hurting the server.

The bytes' own signature decides the format (never the client's Content-Type); the header's
dimensions are checked against a pixel limit before any pixel is decoded (decompression bombs).

Decoding is strict: damaged or partially decoded image data is refused (422, the decoder's own
message in the detail) instead of being answered with detections on a half-grey picture.

JPEG: libjpeg only *warns* about damaged data ("Corrupt JPEG data: premature end of data segment",
"... extraneous bytes before marker", "Premature end of JPEG file"), and OpenCV and PIL then return
the partial image. So JPEGs are decoded by libjpeg-turbo through simplejpeg with ``strict=True``,
which turns those warnings into errors within the one decode (a per-call flag: thread-safe, no stderr
or warnings capture; the same pixels as OpenCV's decode, a little faster). simplejpeg applies no EXIF
orientation, so the orientation read with the header is applied here; it converts CMYK/YCCK to RGB as
OpenCV does (Adobe polarity). Refusals that are not about damaged data (libjpeg's warnings about an
unknown JFIF revision or Adobe transform or odd SOS parameters; TurboJPEG declining rare chroma
subsampling) fall back to OpenCV's lenient decode, as before.

PNG, WebP, BMP and TIFF go to OpenCV. Its libpng already refuses CRC errors in critical chunks, short
or damaged compressed data (zlib's Adler-32 included) and truncated files; for a PNG that fails, its
chunks and zlib stream are examined to say what is wrong.
"""

import io
import struct
import zlib

import cv2
import numpy as np
import simplejpeg
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin

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

# PIL's header parsers, called directly: Image.open would also run PIL's own decompression-bomb check,
# whose warning could only be silenced through the process-wide (not thread-safe) warnings filters.
# Our pixel limit is checked on the size they read.
_HEADER_PARSERS = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
}

# Refusals that are not about damaged data: libjpeg's warnings about header oddities, and TurboJPEG's API
# declining chroma subsampling other than 4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1 or grey (valid, but rare).
# Such a JPEG is decoded by OpenCV, leniently, as before strict decoding.
_NOT_DAMAGE = (
    "Warning: unknown JFIF revision number",
    "Unknown Adobe color transform code",
    "Invalid SOS parameters for sequential JPEG",
    "Corrupt JPEG data: bad ICC marker",
    "Could not determine subsampling level of JPEG image",
)

# EXIF orientation -> the transform that displays the stored pixels upright (as OpenCV and PIL's exif_transpose).
_ORIENT = {
    2: lambda pixels: cv2.flip(pixels, 1),
    3: lambda pixels: cv2.rotate(pixels, cv2.ROTATE_180),
    4: lambda pixels: cv2.flip(pixels, 0),
    5: cv2.transpose,
    6: lambda pixels: cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE),
    7: lambda pixels: cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180),
    8: lambda pixels: cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE),
}

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


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


def _read_header(data: bytes, image_format: str) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) from the header alone: PIL's parsers are lazy and decode no pixels.

    The orientation is read for JPEG only (the other formats go to OpenCV, which applies it itself), from the
    EXIF block alone, as OpenCV does (PIL's ``getexif`` would also take one from XMP).
    """
    try:
        with _HEADER_PARSERS[image_format](io.BytesIO(data)) as header:
            width, height = header.size
            exif = header.info.get("exif") if image_format == "JPEG" else None
    except Image.DecompressionBombError as error:  # WebP's parser checks PIL's own (larger) limit as it reads
        raise ImageError(413, f"image too large: {error}") from None
    except Exception as error:  # PIL raises many types (SyntaxError, OSError, struct.error, ...) for corrupt headers
        problem = _png_problem(data, check_pixels=False) if image_format == "PNG" else None
        if problem:
            raise ImageError(422, f"corrupt PNG image: {problem}") from None
        raise ImageError(422, f"corrupt {image_format} image: its header cannot be read ({error})") from None
    orientation = 1
    if exif:
        try:
            tags = Image.Exif()
            tags.load(exif)
            orientation = int(tags.get(0x0112, 1))
        except Exception:  # a malformed EXIF block does not make the pixels unusable: shown as stored
            orientation = 1
    return width, height, orientation


def image_size(data: bytes, image_format: str) -> tuple[int, int]:
    """(width, height) from the header alone, before any orientation; 422 if the header cannot be read."""
    width, height, _ = _read_header(data, image_format)
    return width, height


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decodes untrusted image bytes into an RGB uint8 ``[H, W, 3]`` array, EXIF orientation applied.

    Raises:
        ImageError: with the HTTP status (413, 415 or 422) and a message for the client.
    """
    image_format = sniff_format(data)
    width, height, orientation = _read_header(data, image_format)
    _check_pixel_limit(width, height, max_pixels)
    if image_format == "JPEG":
        return _decode_jpeg(data, max_pixels, orientation)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if pixels is None:
        if image_format == "PNG":
            raise ImageError(422, f"corrupt PNG image: {_png_problem(data, check_pixels=True)}")
        raise ImageError(422, f"corrupt or truncated {image_format} image: it cannot be decoded")
    return pixels


def _check_pixel_limit(width: int, height: int, max_pixels: int):
    if width * height > max_pixels:
        pixels = f"{width}x{height} is {width * height} pixels"
        raise ImageError(413, f"image too large: {pixels}, the limit is {max_pixels} (SSDLITE_MAX_PIXELS)")


def _decode_jpeg(data: bytes, max_pixels: int, orientation: int) -> np.ndarray:
    """One strict libjpeg-turbo decode; libjpeg's warnings about damaged data become 422s."""
    try:
        # The size libjpeg itself allocates for (microseconds to read): the limit must hold for it too.
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, KeyError) as error:
        return _decode_jpeg_leniently(data, error)
    _check_pixel_limit(width, height, max_pixels)
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", strict=True)
    except (ValueError, KeyError) as error:
        return _decode_jpeg_leniently(data, error)
    transform = _ORIENT.get(orientation)
    return transform(pixels) if transform else pixels


def _decode_jpeg_leniently(data: bytes, error: Exception) -> np.ndarray:
    """OpenCV's decode (as before strict decoding) if libjpeg's refusal was not about damaged data; else 422."""
    if any(message in str(error) for message in _NOT_DAMAGE):
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)  # EXIF orientation applied
        if pixels is not None:
            return pixels
    raise ImageError(422, f"corrupt JPEG image: {error}") from None


def _png_problem(data: bytes, check_pixels: bool) -> str | None:
    """What is wrong with a PNG that failed to decode (OpenCV only says that it failed).

    Walks the chunks (truncation, CRCs, missing IHDR/IDAT); with ``check_pixels``, also inflates the IDAT
    stream, counting bytes without keeping them, against the size the header promises. None if nothing is found
    (and, with ``check_pixels``, a general message).
    """
    position, header, compressed = 8, None, []
    while True:
        if position + 12 > len(data):
            return "truncated: the file ends before its IEND chunk"
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        name = kind.decode("latin-1")
        end = position + 12 + length
        if end > len(data):
            return f"truncated: the file ends inside its {name} chunk"
        if zlib.crc32(data[position + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return f"CRC error in its {name} chunk"
        if kind == b"IHDR":
            header = data[position + 8 : end - 4]
        elif kind == b"IDAT":
            compressed.append(data[position + 8 : end - 4])
        elif kind == b"IEND":
            break
        position = end
    if not check_pixels:
        return None
    if header is None or len(header) != 13 or header[9] not in _PNG_CHANNELS:
        return "its IHDR chunk is missing or invalid"
    if not compressed:
        return "it has no IDAT chunk (no pixel data)"
    expected = _png_data_size(header)
    inflate, received = zlib.decompressobj(), 0
    try:
        for block in compressed:
            while block and received <= expected:  # no more than the header promises: a zlib bomb stops here
                received += len(inflate.decompress(block, 1 << 20))
                block = inflate.unconsumed_tail
        if received <= expected:
            received += len(inflate.flush())
    except zlib.error as error:
        return f"its compressed pixel data is damaged (zlib: {error})"
    if received > expected:
        return "its pixel data cannot be decoded (more of it than its header promises)"
    if not inflate.eof:
        return f"its compressed pixel data ends early ({received} of {expected} bytes of pixel rows)"
    if received < expected:
        return f"its pixel data is short ({received} of {expected} bytes of pixel rows)"
    return "its pixel data cannot be decoded"


def _png_data_size(header: bytes) -> int:
    """Bytes of filtered pixel rows (a filter byte before each row) that a PNG's IHDR promises."""
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    bits = _PNG_CHANNELS[colour_type] * bit_depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    size = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            size += rows * (1 + (columns * bits + 7) // 8)
    return size


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
