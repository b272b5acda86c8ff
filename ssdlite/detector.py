"""``Detector``: images of any size in, detections in the original image's pixels out."""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from .backends import Backend, OnnxRuntimeBackend, TorchBackend
from .model import SSDLite, SSDLiteConfig
from .postprocess import postprocess

BACKENDS = ("torch", "onnxruntime")


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


def _stderr(message: str):
    print(message, file=sys.stderr)


class Detector:
    """Runs an SSDLite model end to end.

    Args:
        backend: raw forward (``[N, 3, S, S]`` float pixels -> box regression, class logits); one of
            :mod:`ssdlite.backends` or any callable.
        config: the model's config (input size, anchors, postprocessing defaults).
        class_names: names of labels 1..K-1.
        device: where pre- and postprocessing tensors live.
    """

    def __init__(self, backend: Backend, config: SSDLiteConfig, class_names: Sequence[str], device="cpu"):
        from .anchors import anchors_for

        self.backend = backend
        self.config = config
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.anchors = anchors_for(config).to(self.device)

    @classmethod
    def from_model(cls, model: SSDLite, class_names: Sequence[str], device: str | torch.device | None = None):
        device = device or next(model.parameters()).device
        return cls(TorchBackend(model, device), model.config, class_names, device)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str = "cpu", backend: str = "torch", threads: int | None = None
    ) -> "Detector":
        """Loads a checkpoint (``.pt``) or an exported ``.onnx`` file.

        Args:
            path: the model file.
            device: ``"cpu"`` or ``"cuda"`` (the torch backend only).
            backend: ``"torch"`` or ``"onnxruntime"``; ``.onnx`` files always use onnxruntime.
            threads: ONNX Runtime intra-op threads (default: all cores).
        """
        from .checkpoint import load_checkpoint
        from .export import export_onnx

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if Path(path).suffix == ".onnx":
            runtime = OnnxRuntimeBackend(path, threads)
            return cls(runtime, runtime.config, runtime.class_names)
        model, class_names = load_checkpoint(path)
        if backend == "onnxruntime":
            return cls(OnnxRuntimeBackend(export_onnx(model, class_names), threads), model.config, class_names)
        return cls(TorchBackend(model, device), model.config, class_names, device)

    @classmethod
    def load(cls, source: str | os.PathLike, **kwargs) -> "Detector":
        """Loads a model-zoo name (fetched and converted on first use) or a ``.pt``/``.onnx`` path.

        Keyword arguments are :meth:`from_checkpoint`'s.
        """
        from .zoo import resolve

        return cls.from_checkpoint(resolve(source, log=_stderr), **kwargs)

    def preprocess(self, images: Sequence) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Resizes RGB images to the model size; returns ``[N, 3, S, S]`` float and (H, W) sizes."""
        return preprocess(images, self.config.image_size, self.device)

    def predict(self, image, **options) -> list[dict]:
        """Detects objects in one image; see :meth:`predict_batch` for the options."""
        return self.predict_batch([image], **options)[0]

    def predict_batch(
        self,
        images: Sequence,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> list[list[dict]]:
        """Detects objects in a batch of images of any sizes.

        Args:
            images: RGB uint8 arrays ``[H, W, 3]``, PIL images or uint8 CHW tensors.
            score_threshold: minimum score (default: the model config's).
            max_detections: detections per image (default: the model config's).
            classes: class names to keep (default: all).

        Returns:
            Per image, a list of ``{"box": [x1, y1, x2, y2], "score", "class_id", "label"}``
            sorted by score, boxes in the original image's pixels.
        """
        if len(images) == 0:
            return []
        batch, sizes = self.preprocess(images)
        box_regression, class_logits = self.backend(batch)
        if classes is not None:
            class_logits = self._suppress_other_classes(class_logits.to(self.device), classes)
        config = self.config
        results = postprocess(
            box_regression.to(self.device),
            class_logits.to(self.device),
            self.anchors,
            box_weights=config.box_weights,
            score_function=config.score_function,
            score_threshold=config.score_threshold if score_threshold is None else score_threshold,
            nms_iou=config.nms_iou,
            max_detections=config.max_detections if max_detections is None else max_detections,
            candidates_per_image=config.candidates_per_image,
        )
        output = []
        for detections, (height, width) in zip(results, sizes):
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=detections.boxes.device)
            boxes = (detections.boxes * scale).tolist()
            output.append(
                [
                    {"box": box, "score": score, "class_id": label, "label": self.class_names[label - 1]}
                    for box, score, label in zip(boxes, detections.scores.tolist(), detections.labels.tolist())
                ]
            )
        return output

    def _suppress_other_classes(self, class_logits: torch.Tensor, classes: Sequence[str]) -> torch.Tensor:
        unknown = sorted(set(classes) - set(self.class_names))
        if unknown:
            raise ValueError(f"unknown class names {unknown}; this model knows {self.class_names}")
        drop = torch.tensor([name not in classes for name in self.class_names], device=class_logits.device)
        class_logits = class_logits.clone()
        # -inf logits give probability 0 under both softmax and sigmoid.
        class_logits[..., 1:][..., drop] = float("-inf")
        return class_logits
