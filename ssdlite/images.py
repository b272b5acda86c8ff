"""Pixels in and out: reading and writing image files, the model input (resize), drawing detections."""

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

# Two public-domain photos shipped with the package: NASA's portrait of astronaut Eileen Collins
# (scikit-image's `astronaut`) and the US Navy's of Grace Hopper (matplotlib's sample). The tests,
# the benchmarks and the INT8 person detector's calibration use them.
SAMPLE_PHOTOS = Path(__file__).parent / "photos"

# What the library reads as images from a folder (calibration, corpus detection).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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


def to_rgb_array(image) -> np.ndarray:
    """Accepts an RGB uint8 array (H, W[, 1|3|4]), a PIL image or a uint8 CHW tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"tensor images must be CHW with 1 or 3 channels, got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, PIL image or tensor, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def preprocess(
    images: Sequence, image_size: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resizes RGB images to ``image_size`` squared; returns ``[N, 3, S, S]`` float pixels and the (H, W) sizes.

    The one preprocessing of inference, INT8 calibration and (through the same cv2 resize) evaluation.
    """
    arrays = [to_rgb_array(image) for image in images]
    resized = np.stack([cv2.resize(a, (image_size, image_size), interpolation=cv2.INTER_LINEAR) for a in arrays])
    batch = torch.from_numpy(resized).to(device).permute(0, 3, 1, 2).float()
    return batch, [a.shape[:2] for a in arrays]


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
    bgr = cv2.cvtColor(np.array([[[hue, 220, 255]]], dtype=np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[2]), int(bgr[1]), int(bgr[0])


def draw_detections(image: np.ndarray, detections: list[dict]) -> np.ndarray:
    """Returns a copy of an RGB image with each detection's box, label and score (or track ID) drawn."""
    canvas = np.ascontiguousarray(image).copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    for det in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
        track_id = det.get("track_id")
        colour = _colour(det["class_id"] if track_id is None else track_id)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{det['label']} {det['score']:.2f}" if track_id is None else f"#{track_id} {det['label']}"
        scale = 0.4 * thickness
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - th - baseline - 2, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + baseline + 2), colour, -1)
        cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
