"""Albumentations pipelines for training and evaluation.

Boxes enter and leave in pixel (x1, y1, x2, y2) ("pascal_voc") with two label fields,
``labels`` and ``iscrowd``; every pipeline ends with a resize to the model's square input, the
same ``cv2.INTER_LINEAR`` resize that :class:`ssdlite.Detector` applies at inference.

``"ssd"`` is the SSD paper's recipe: photometric distortion, zoom-out onto the mean colour,
a random crop with an IoU constraint, horizontal flip. ``"light"`` drops the crop and zoom-out
(for short schedules), ``"none"`` only resizes.
"""

from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.transforms_interface import DualTransform

AUGMENTATIONS = ("ssd", "light", "none")
IMAGENET_MEAN_RGB = (124, 116, 104)
MIN_VISIBILITY = 0.3  # fraction of a box's area that must survive a crop for the box to be kept
MIN_BOX_SIDE = 2.0  # pixels at model resolution


class ZoomOut(DualTransform):
    """Places the image at a random position on a canvas up to ``max_ratio`` times its size.

    The canvas is filled with ``fill`` (the dataset mean colour), which makes objects smaller:
    the SSD paper's "expansion" for small-object training.
    """

    def __init__(self, max_ratio: float = 4.0, fill: tuple[int, int, int] = IMAGENET_MEAN_RGB, p: float = 0.5):
        super().__init__(p=p)
        self.max_ratio = max_ratio
        self.fill = fill

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(1.0, self.max_ratio)
        canvas_h, canvas_w = int(height * ratio), int(width * ratio)
        left = self.py_random.randint(0, canvas_w - width)
        top = self.py_random.randint(0, canvas_h - height)
        return {"canvas": (canvas_h, canvas_w), "offset": (left, top)}

    def apply(self, img: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int], **params) -> np.ndarray:
        left, top = offset
        out = np.empty((*canvas, img.shape[2]), img.dtype)
        out[...] = np.asarray(self.fill, img.dtype)[: img.shape[2]]
        out[top : top + img.shape[0], left : left + img.shape[1]] = img
        return out

    def apply_to_mask(self, mask: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int], **params):
        left, top = offset
        out = np.zeros((*canvas, *mask.shape[2:]), mask.dtype)
        out[top : top + mask.shape[0], left : left + mask.shape[1]] = mask
        return out

    def apply_to_bboxes(self, bboxes: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int], **params):
        # Boxes are normalised to the current image; renormalise them to the canvas.
        height, width = params["shape"][:2]
        (canvas_h, canvas_w), (left, top) = canvas, offset
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * width + left) / canvas_w
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * height + top) / canvas_h
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_ratio", "fill")


class SSDRandomCrop(BaseCrop):
    """The SSD paper's crop: a patch whose IoU with some box is at least a random threshold.

    Each call picks one option from ``min_ious`` (``None`` = keep the whole image), then tries
    up to ``max_attempts`` patches with side ratio in ``scale`` and aspect ratio in
    ``aspect_ratio``; a patch qualifies if its IoU with at least one box reaches the
    threshold and it contains some box's centre. Without a qualifying patch the image is kept.
    Boxes that lose too much area are then dropped by the pipeline's ``min_visibility``.
    """

    def __init__(
        self,
        min_ious: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
        scale: tuple[float, float] = (0.3, 1.0),
        aspect_ratio: tuple[float, float] = (0.5, 2.0),
        max_attempts: int = 50,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.min_ious = min_ious
        self.scale = scale
        self.aspect_ratio = aspect_ratio
        self.max_attempts = max_attempts

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = {"crop_coords": (0, 0, width, height)}
        min_iou = self.py_random.choice(self.min_ious)
        boxes = np.asarray(data.get("bboxes", np.zeros((0, 4))), dtype=np.float64)[:, :4]
        boxes = boxes * (width, height, width, height)
        if min_iou is None or len(boxes) == 0:
            return whole
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.max_attempts):
            w = self.py_random.uniform(*self.scale) * width
            h = self.py_random.uniform(*self.scale) * height
            if not self.aspect_ratio[0] <= h / w <= self.aspect_ratio[1]:
                continue
            x1 = self.py_random.uniform(0, width - w)
            y1 = self.py_random.uniform(0, height - h)
            patch = np.array([x1, y1, x1 + w, y1 + h])
            if _iou(patch, boxes).max() < min_iou:
                continue
            inside = (centres[:, 0] > patch[0]) & (centres[:, 0] < patch[2])
            inside &= (centres[:, 1] > patch[1]) & (centres[:, 1] < patch[3])
            if inside.any():
                x1, y1, x2, y2 = (int(round(v)) for v in patch)
                return {"crop_coords": (x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))}
        return whole

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "scale", "aspect_ratio", "max_attempts")


def _iou(patch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(patch[:2], boxes[:, :2])
    rb = np.minimum(patch[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + np.prod(patch[2:] - patch[:2]) - inter)


def _photometric() -> A.BasicTransform:
    return A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=0.125, contrast_limit=0.5, p=0.5),
            A.HueSaturationValue(hue_shift_limit=18, sat_shift_limit=40, val_shift_limit=0, p=0.5),
        ]
    )


def build_transform(image_size: int, augment: str = "ssd", train: bool = True) -> A.Compose:
    """The pipeline for ``train`` (with ``augment``) or evaluation (resize only).

    Call it as ``transform(image=rgb_uint8, bboxes=xyxy_pixels, labels=..., iscrowd=...)``.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    steps: list[A.BasicTransform] = []
    if train and augment != "none":
        steps.append(_photometric())
        if augment == "ssd":
            steps += [ZoomOut(p=0.5), SSDRandomCrop()]
        steps.append(A.HorizontalFlip(p=0.5))
    steps.append(A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR))
    return A.Compose(steps, bbox_params=bbox_params(train), seed=0)


def bbox_params(train: bool) -> A.BboxParams:
    """Pixel xyxy boxes with ``labels`` and ``iscrowd``; training drops boxes a crop mostly removed."""
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels", "iscrowd"],
        min_visibility=MIN_VISIBILITY if train else 0.0,
        min_width=MIN_BOX_SIDE if train else 0.0,
        min_height=MIN_BOX_SIDE if train else 0.0,
        clip=True,
    )
