"""Reading images from disk and drawing detections on them."""

import os
from pathlib import Path

import cv2
import numpy as np

# Two public-domain photos shipped with the package: NASA's portrait of astronaut Eileen Collins
# (scikit-image's `astronaut`) and the US Navy's of Grace Hopper (matplotlib's sample). The tests,
# the benchmarks and the INT8 person detector's calibration use them.
SAMPLE_PHOTOS = Path(__file__).parent / "photos"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB uint8 ``[H, W, 3]``, EXIF orientation applied.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a decodable image.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image (empty, truncated or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: str | os.PathLike, image: np.ndarray, jpeg_quality: int = 90):
    """Writes an RGB uint8 image; the format follows the file extension."""
    extension = os.path.splitext(str(path))[1].lower() or ".jpg"
    options = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if extension in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), options)
    if not ok:
        raise ValueError(f"{path}: cannot encode an image with this extension")
    encoded.tofile(str(path))


def _colour(class_id: int) -> tuple[int, int, int]:
    hue = (class_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[2]), int(bgr[1]), int(bgr[0])


def draw_detections(image: np.ndarray, detections: list[dict]) -> np.ndarray:
    """Returns a copy of an RGB image with each detection's box, label and score drawn."""
    canvas = np.ascontiguousarray(image).copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    for det in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
        colour = _colour(det["class_id"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{det['label']} {det['score']:.2f}"
        scale = 0.4 * thickness
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - th - baseline - 2, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + baseline + 2), colour, -1)
        cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
