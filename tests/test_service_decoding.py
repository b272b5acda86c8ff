"""Strict decoding of uploads: damaged or partially decoded image data is a 422, never a silent half-grey image.

Every damaged file is crafted here from the shipped photos or generated pixels. Each refusal test fails if decoding
goes back to being lenient (as with OpenCV's JPEG decoder, which returns the damaged JPEGs' partial pixels, or PIL's
with truncated images allowed). The files that must still decode are compared with PIL's decode of the same bytes
(or with the pixels they were made from).
"""

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from service import Settings, create_app
from service.decoding import ImageError, decode_image
from ssdlite.images import SAMPLE_PHOTOS

from .service_helpers import scripted_detector

LIMIT = 10_000_000
SOURCE = Image.open(SAMPLE_PHOTOS / "grace_hopper.jpg").convert("RGB")  # 512x600


def encode(image: Image.Image | np.ndarray, image_format: str = "JPEG", **options) -> bytes:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def pil_rgb(data: bytes) -> np.ndarray:
    """The reference decode: PIL, EXIF orientation applied."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def refused(data: bytes) -> str:
    """The 422 detail for ``data``; fails the test if it decodes."""
    with pytest.raises(ImageError) as error:
        decode_image(data, LIMIT)
    assert error.value.status == 422, error.value.detail
    return error.value.detail


# --- crafting damaged JPEGs -------------------------------------------------------------------------------------------


def jpegs() -> dict[str, bytes]:
    return {
        "astronaut": (SAMPLE_PHOTOS / "astronaut.jpg").read_bytes(),
        "grace_hopper": (SAMPLE_PHOTOS / "grace_hopper.jpg").read_bytes(),
        "progressive": encode(SOURCE, quality=90, progressive=True),
        "restart markers": encode(SOURCE, quality=90, restart_marker_rows=1),
    }


def scan_offset(jpeg: bytes, fraction: float) -> int:
    """An offset ``fraction`` of the way into the entropy-coded data after the first SOS marker."""
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", jpeg[sos + 2 : sos + 4])[0]
    return start + int((len(jpeg) - start) * fraction)


def replace_in_scan(jpeg: bytes, new: bytes, fraction: float = 0.5) -> bytes:
    at = scan_offset(jpeg, fraction)
    return jpeg[:at] + new + jpeg[at + len(new) :]


def cut_from_scan(jpeg: bytes, count: int, fraction: float = 0.5) -> bytes:
    at = scan_offset(jpeg, fraction)
    return jpeg[:at] + jpeg[at + count :]


# --- crafting damaged PNGs --------------------------------------------------------------------------------------------


def png_chunks(png: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(type, data, crc) of each chunk."""
    chunks, position = [], 8
    while position < len(png):
        length, kind = struct.unpack(">I4s", png[position : position + 8])
        end = position + 12 + length
        chunks.append((kind, png[position + 8 : end - 4], png[end - 4 : end]))
        position = end
    return chunks


def png_from(chunks: list[tuple[bytes, bytes, bytes | None]]) -> bytes:
    """A PNG of these chunks; a crc of None is computed (so the container stays well-formed)."""
    out = b"\x89PNG\r\n\x1a\n"
    for kind, data, crc in chunks:
        crc = struct.pack(">I", zlib.crc32(kind + data)) if crc is None else crc
        out += struct.pack(">I", len(data)) + kind + data + crc
    return out


def with_pixel_data(png: bytes, compressed: bytes) -> bytes:
    """``png`` with its IDAT chunks replaced by one well-formed IDAT holding ``compressed``."""
    head = [(kind, data, None) for kind, data, _ in png_chunks(png) if kind not in (b"IDAT", b"IEND")]
    return png_from([*head, (b"IDAT", compressed, None), (b"IEND", b"", None)])


def pixel_data(png: bytes) -> bytes:
    return b"".join(data for kind, data, _ in png_chunks(png) if kind == b"IDAT")


PHOTO = np.asarray(SOURCE.resize((160, 120)))
# Adam7 passes: (x0, y0, dx, dy)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png() -> bytes:
    return encode(PHOTO, "PNG")


# --- damaged JPEGs: 422 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(jpegs()))
def test_jpeg_with_a_zeroed_run_in_its_scan_is_refused(name):
    detail = refused(replace_in_scan(jpegs()[name], bytes(2000)))
    assert detail.startswith("corrupt JPEG image: Corrupt JPEG data: "), detail


def test_jpeg_with_zeroed_scan_names_libjpegs_warning():
    detail = refused(replace_in_scan(jpegs()["astronaut"], bytes(2000)))
    assert detail == "corrupt JPEG image: Corrupt JPEG data: premature end of data segment"


@pytest.mark.parametrize("markers", [True, False], ids=["with 0xFF bytes", "without 0xFF bytes"])
def test_jpeg_with_garbage_in_its_scan_is_refused(markers):
    rng = np.random.default_rng(1)
    garbage = rng.integers(0, 256 if markers else 255, 3000, dtype=np.uint8).tobytes()
    detail = refused(replace_in_scan(jpegs()["astronaut"], garbage))
    assert detail.startswith("corrupt JPEG image: "), detail
    if not markers:
        assert "Corrupt JPEG data: " in detail and "extraneous bytes before marker" in detail


@pytest.mark.parametrize(
    ("count", "message"),
    [(2000, "Corrupt JPEG data: premature end of data segment"), (100, "extraneous bytes before marker 0xd9")],
)
def test_jpeg_with_bytes_cut_from_its_middle_is_refused(count, message):
    detail = refused(cut_from_scan(jpegs()["grace_hopper"], count, 0.3))
    assert message in detail, detail


@pytest.mark.parametrize("name", ["astronaut", "progressive"])
@pytest.mark.parametrize("keep", [0.5, 0.9, -2], ids=["half", "90%", "all but EOI"])
def test_truncated_jpeg_is_refused(name, keep):
    jpeg = jpegs()[name]
    end = keep if keep < 0 else int(len(jpeg) * keep)
    assert refused(jpeg[:end]) == "corrupt JPEG image: Premature end of JPEG file"


# --- damaged PNGs: 422 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT"])
def test_png_with_a_crc_error_in_a_critical_chunk_is_refused(chunk):
    chunks = png_chunks(png())
    index = next(i for i, (kind, _, _) in enumerate(chunks) if kind == chunk)
    kind, data, crc = chunks[index]
    chunks[index] = (kind, data, bytes([crc[0] ^ 0xFF]) + crc[1:])
    assert refused(png_from(chunks)) == f"corrupt PNG image: CRC error in its {chunk.decode()} chunk"


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_png_whose_idat_is_cut_short_is_refused(keep):
    compressed = pixel_data(png())
    detail = refused(with_pixel_data(png(), compressed[: int(len(compressed) * keep)]))
    assert detail.startswith("corrupt PNG image: its compressed pixel data ends early ("), detail


def test_png_whose_pixel_rows_end_early_is_refused():
    rows = zlib.decompress(pixel_data(png()))
    assert len(rows) == 120 * (1 + 160 * 3)
    half = zlib.compress(rows[: len(rows) // 2])  # a complete zlib stream, well-formed chunks: only rows are missing
    detail = refused(with_pixel_data(png(), half))
    assert detail == f"corrupt PNG image: its pixel data is short ({len(rows) // 2} of {len(rows)} bytes of pixel rows)"


def test_png_with_damaged_compressed_data_is_refused():
    # Stored (uncompressed) deflate blocks: a flipped pixel byte leaves the stream well-formed, with the
    # chunk CRC recomputed; only zlib's Adler-32 can tell.
    stored = encode(PHOTO, "PNG", compress_level=0)
    compressed = bytearray(pixel_data(stored))
    rows = zlib.decompress(bytes(compressed))
    at = bytes(compressed).index(rows[20_000:20_040])
    compressed[at] ^= 0x01
    detail = refused(with_pixel_data(stored, bytes(compressed)))
    assert detail.startswith("corrupt PNG image: its compressed pixel data is damaged (zlib: "), detail
    assert "incorrect data check" in detail


@pytest.mark.parametrize("extra", [0, 8_000_000], ids=["right size", "zlib bomb"])
def test_png_with_invalid_rows_is_refused_and_its_diagnosis_inflates_no_more_than_promised(extra):
    header = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)  # 16x16 8-bit grey: 16 rows of 1 + 16 bytes
    rows = b"\x05" + bytes(16) + (b"\x00" + bytes(16)) * 15 + bytes(extra)  # filter type 5 does not exist
    data = png_from([(b"IHDR", header, None), (b"IDAT", zlib.compress(rows), None), (b"IEND", b"", None)])
    detail = refused(data)
    if extra:
        assert detail == "corrupt PNG image: its pixel data cannot be decoded (more of it than its header promises)"
    else:
        assert detail == "corrupt PNG image: its pixel data cannot be decoded"


@pytest.mark.parametrize(
    ("cut", "message"),
    [(0.5, "truncated: the file ends inside its IDAT chunk"), (-12, "truncated: the file ends before its IEND chunk")],
    ids=["half", "without IEND"],
)
def test_truncated_png_is_refused(cut, message):
    data = png()
    end = cut if cut < 0 else int(len(data) * cut)
    assert refused(data[:end]) == f"corrupt PNG image: {message}"


def test_interlaced_png_decodes_and_its_short_rows_are_counted_by_pass():
    """PIL writes no interlaced PNG: one is made by hand (8-bit grey, Adam7), to check the diagnosis's sizes."""
    height, width = 13, 21
    grey = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    rows = b""
    for x0, y0, dx, dy in ADAM7:
        sub = grey[y0::dy, x0::dx]
        if sub.size:
            rows += b"".join(b"\x00" + row.tobytes() for row in sub)  # filter type 0
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    interlaced = png_from([(b"IHDR", header, None), (b"IDAT", zlib.compress(rows), None), (b"IEND", b"", None)])
    np.testing.assert_array_equal(decode_image(interlaced, LIMIT), np.repeat(grey[..., None], 3, axis=2))
    short = with_pixel_data(interlaced, zlib.compress(rows[:-30]))
    message = f"its pixel data is short ({len(rows) - 30} of {len(rows)} bytes of pixel rows)"
    assert refused(short) == f"corrupt PNG image: {message}"


# --- what must still decode, to the right pixels ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(jpegs()))
def test_undamaged_jpegs_decode_to_the_same_pixels_as_pil(name):
    data = jpegs()[name]
    pixels = decode_image(data, LIMIT)
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    np.testing.assert_allclose(pixels, pil_rgb(data), atol=2)


@pytest.mark.parametrize("adobe_marker", [True, False], ids=["Adobe APP14 (inverted)", "no Adobe marker"])
def test_cmyk_jpeg_decodes_to_rgb(adobe_marker):
    data = encode(SOURCE.convert("CMYK"), quality=95)
    app14 = data.index(b"Adobe") - 4  # PIL writes Adobe's inverted CMYK, marked so in an APP14 segment
    assert data[app14 : app14 + 2] == b"\xff\xee"
    if not adobe_marker:
        data = data[:app14] + data[app14 + 2 + struct.unpack(">H", data[app14 + 2 : app14 + 4])[0] :]
    pixels = decode_image(data, LIMIT)
    assert pixels.shape == (600, 512, 3)
    np.testing.assert_allclose(pixels, pil_rgb(data), atol=2)
    # and the photo's colours, not their inverse (PIL's CMYK round trip is naive: close on average)
    assert np.abs(pixels.astype(int) - np.asarray(SOURCE)).mean() < 12


def test_grayscale_jpeg_decodes_to_rgb():
    data = encode(SOURCE.convert("L"), quality=90)
    pixels = decode_image(data, LIMIT)
    assert pixels.shape == (600, 512, 3)
    np.testing.assert_allclose(pixels, pil_rgb(data), atol=2)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(SOURCE.resize((48, 32)), quality=95, exif=exif.tobytes())
    pixels = decode_image(data, LIMIT)
    expected = pil_rgb(data)  # PIL's exif_transpose
    assert pixels.shape == expected.shape == ((48, 32, 3) if orientation >= 5 else (32, 48, 3))
    np.testing.assert_allclose(pixels, expected, atol=2)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_exif_block_leaves_the_image_as_stored():
    data = encode(SOURCE.resize((48, 32)), quality=95, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    assert decode_image(data, LIMIT).shape == (32, 48, 3)


def test_16_bit_grey_png_decodes_to_8_bit_rgb():
    grey = np.linspace(0, 65535, 32 * 64).reshape(32, 64).astype(np.uint16)
    image = Image.fromarray(grey)
    assert image.mode == "I;16"
    pixels = decode_image(encode(image, "PNG"), LIMIT)
    assert pixels.shape == (32, 64, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels, np.repeat((grey >> 8)[..., None], 3, axis=2), atol=1)


def test_16_bit_rgb_png_decodes_to_8_bit_rgb():
    rgb = np.random.default_rng(0).integers(0, 65536, (32, 48, 3), dtype=np.uint16)
    ok, data = cv2.imencode(".png", rgb[..., ::-1])  # OpenCV writes BGR
    assert ok and data.tobytes()[24:26] == b"\x10\x02"  # IHDR: 16-bit truecolour
    pixels = decode_image(data.tobytes(), LIMIT)
    np.testing.assert_allclose(pixels, rgb >> 8, atol=1)


@pytest.mark.parametrize(("image_format", "options"), [("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})])
def test_webp_bmp_and_tiff_decode_exactly(image_format, options):
    pixels = decode_image(encode(PHOTO, image_format, **options), LIMIT)
    np.testing.assert_array_equal(pixels, PHOTO)


def test_lossy_webp_decodes():
    data = encode(PHOTO, "WEBP", quality=90)
    np.testing.assert_allclose(decode_image(data, LIMIT), pil_rgb(data), atol=3)


def test_jpeg_header_oddities_are_not_refused():
    """libjpeg warns about these too, but the pixels are intact: they decode (leniently), as before."""
    jpeg = jpegs()["astronaut"]
    expected = decode_image(jpeg, LIMIT)
    jfif = jpeg.index(b"JFIF\x00") + 5
    revision_2 = jpeg[:jfif] + b"\x02" + jpeg[jfif + 1 :]  # "Warning: unknown JFIF revision number 2.01"
    sos = jpeg.index(b"\xff\xda")
    end = sos + 2 + struct.unpack(">H", jpeg[sos + 2 : sos + 4])[0]
    zero_sos = jpeg[: end - 3] + b"\x00\x00\x00" + jpeg[end:]  # "Invalid SOS parameters for sequential JPEG"
    for data in (revision_2, zero_sos):
        np.testing.assert_array_equal(decode_image(data, LIMIT), expected)


# A 24x16 JPEG with chroma sampling 2x1,1x2,1x1 (``cjpeg -sample 2x1,1x2,1x1``): valid, decoded by libjpeg, but
# TurboJPEG's API knows no such subsampling level.
ODD_SUBSAMPLING_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYIDAoMDAsKCwsNDhIQDQ4RDgsLEBYQERMU"
    "FRUVDA8XGBYUGBIUFRT/2wBDAQMEBAUEBQkFBQkUDQsNFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU"
    "FBQUFBQUFBT/wAARCAAQABgDASEAAhIBAxEB/8QAFwAAAwEAAAAAAAAAAAAAAAAAAAUHCP/EACUQAAEDAwMDBQAAAAAAAAAAAAEC"
    "AwQFERIAByEGFDEIEzRBcf/EABcBAAMBAAAAAAAAAAAAAAAAAAMFBwb/xAAlEQABAgUDBAMAAAAAAAAAAAABAgMABAURIRJxwRMi"
    "MWFRkaH/2gAMAwEAAhEDEQA/AMbMV6j0rrKfHrDKHocLuI0hmizGGlKWSpNkPvKJcSQkJyQBx48nK3UXefb2Jt/Fn9xKxKPjqrEg"
    "zG5CUGzAay5uCAHbYAG2YN06FWKsuUmEdJR1WBweRzAVyjL5Drie42N+NvUPpVVPYSpEwgqP5f4853NtoT031CdA02JFaqFIq8VX"
    "A90vtSyL/alBzI/tr6NWyWmC6whaxkgH7EYFmrTDadJzvE+fpjgcJSBY5sD49R//2Q=="
)


def test_jpeg_with_unusual_chroma_subsampling_decodes():
    pixels = decode_image(ODD_SUBSAMPLING_JPEG, LIMIT)
    assert pixels.shape == (16, 24, 3)
    np.testing.assert_allclose(pixels, pil_rgb(ODD_SUBSAMPLING_JPEG), atol=2)


def test_jpeg_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError) as error:
        decode_image(jpegs()["astronaut"], 512 * 512 - 1)
    assert error.value.status == 413 and "512x512 is 262144 pixels" in error.value.detail


def test_strictness_holds_with_two_decoding_threads():
    """The service decodes on two threads: strictness is per call, not global state that one thread could change."""
    good = jpegs()["grace_hopper"]
    damaged = replace_in_scan(good, bytes(2000))
    expected = decode_image(good, LIMIT)

    def decode(data):
        try:
            return decode_image(data, LIMIT)
        except ImageError as error:
            return error

    bodies = [good, damaged] * 30
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(decode, bodies))
    for body, result in zip(bodies, results, strict=True):
        if body is good:
            np.testing.assert_array_equal(result, expected)
        else:
            assert isinstance(result, ImageError) and "Corrupt JPEG data" in result.detail


def test_service_answers_422_for_a_damaged_jpeg_not_200_without_detections():
    damaged = replace_in_scan(jpegs()["astronaut"], bytes(2000))
    with TestClient(create_app(Settings(), detector=scripted_detector())) as client:
        response = client.post("/detect", files={"file": ("photo.jpg", damaged, "image/jpeg")})
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == "corrupt JPEG image: Corrupt JPEG data: premature end of data segment"
        assert client.post("/detect", content=jpegs()["astronaut"]).status_code == 200
