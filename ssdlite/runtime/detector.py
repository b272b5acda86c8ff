"""``Detector``: images of any size in, detections in the original image's pixels out."""

import dataclasses
import os
from collections.abc import Sequence

import torch

from ..core import SSDLite, SSDLiteConfig, postprocess
from ..core.anchors import anchors_for
from ..errors import SSDLiteError
from ..images import preprocess
from .backends import Backend, TorchBackend
from .loading import load_backend


class UnknownClassError(SSDLiteError, ValueError):
    """Class names asked for that the model does not know."""


def check_classes(classes: Sequence[str], class_names: Sequence[str]):
    """Raises :class:`UnknownClassError` naming any of ``classes`` that is not in ``class_names``."""
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise UnknownClassError(f"unknown class names {unknown}; this model knows {list(class_names)}")


class Detector:
    """Runs an SSDLite model end to end.

    Args:
        backend: raw forward (``[N, 3, S, S]`` float pixels -> box regression, class logits); one of
            :mod:`ssdlite.runtime.backends` or any callable.
        config: the model's config (input size, anchors, postprocessing defaults).
        class_names: names of labels 1..K-1.
        device: where pre- and postprocessing tensors live.
    """

    def __init__(self, backend: Backend, config: SSDLiteConfig, class_names: Sequence[str], device="cpu"):
        self.backend = backend
        self.config = config
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.anchors = anchors_for(config).to(self.device)

    @classmethod
    def from_model(cls, model: SSDLite, class_names: Sequence[str], device: str | torch.device | None = None):
        device = device or next(model.parameters()).device
        return cls(TorchBackend(model, list(class_names), device), model.config, class_names, device)

    @classmethod
    def load(
        cls,
        source: str | os.PathLike,
        *,
        backend: str | None = None,
        device: str | torch.device = "cpu",
        threads: int | None = None,
    ) -> "Detector":
        """Loads a model-zoo name (fetched and converted on first use) or a ``.pt``/``.onnx`` file.

        Args:
            source: a zoo name or a model file.
            backend: ``"torch"``, ``"onnxruntime"``, ``"auto"``, or ``None`` for the file's own
                (see :func:`ssdlite.runtime.loading.load_backend`).
            device: ``"cpu"``, ``"cuda"``, ``"auto"`` (torch only runs on a GPU).
            threads: inference threads (default: all cores).
        """
        runtime = load_backend(source, backend=backend, device=device, threads=threads)
        return cls(runtime, runtime.config, runtime.class_names, runtime.device)

    from_checkpoint = load  # the name of earlier versions

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
        defaults = self.config.postprocess
        settings = dataclasses.replace(
            defaults,
            score_threshold=defaults.score_threshold if score_threshold is None else score_threshold,
            max_detections=defaults.max_detections if max_detections is None else max_detections,
        )
        results = postprocess(box_regression.to(self.device), class_logits.to(self.device), self.anchors, settings)
        output = []
        for detections, (height, width) in zip(results, sizes, strict=False):
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=detections.boxes.device)
            boxes = (detections.boxes * scale).tolist()
            output.append(
                [
                    {"box": box, "score": score, "class_id": label, "label": self.class_names[label - 1]}
                    for box, score, label in zip(
                        boxes, detections.scores.tolist(), detections.labels.tolist(), strict=False
                    )
                ]
            )
        return output

    def _suppress_other_classes(self, class_logits: torch.Tensor, classes: Sequence[str]) -> torch.Tensor:
        check_classes(classes, self.class_names)
        drop = torch.tensor([name not in classes for name in self.class_names], device=class_logits.device)
        class_logits = class_logits.clone()
        # -inf logits give probability 0 under both softmax and sigmoid.
        class_logits[..., 1:][..., drop] = float("-inf")
        return class_logits
