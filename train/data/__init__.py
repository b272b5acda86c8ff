"""Training data: COCO-format datasets, YOLO conversion, sampling, batching and loaders.

- :mod:`~train.data.errors`: :class:`DataError` and :class:`ClassListError`.
- :mod:`~train.data.coco`: COCO annotations -> :class:`CocoDetection` (category mapping, box repair, images).
- :mod:`~train.data.yolo`: an Ultralytics ``data.yaml`` split -> a COCO-format dict (pure conversion).
- :mod:`~train.data.sampler`: :class:`ResumableSampler`, shuffled per epoch and resumable mid-epoch.
- :mod:`~train.data.loaders`: :class:`Batch`, :func:`collate` and the training/validation DataLoaders.
- :mod:`~train.data.sources`: :class:`DataSource` and :func:`open_datasets` (COCO, YOLO or embedded).

Imports flow one way: errors <- coco, yolo <- sources; sampler <- loaders.
"""

from .coco import AnnotationStats, CategoryMap, CocoDetection, Record, load_coco, parse_class_list, sanitize_boxes
from .errors import ClassListError, DataError
from .loaders import Batch, build_loaders, collate, worker_init
from .sampler import ResumableSampler
from .sources import DataSource, open_datasets, yolo_detection

__all__ = [
    "AnnotationStats",
    "Batch",
    "CategoryMap",
    "ClassListError",
    "CocoDetection",
    "DataError",
    "DataSource",
    "Record",
    "ResumableSampler",
    "build_loaders",
    "collate",
    "load_coco",
    "open_datasets",
    "parse_class_list",
    "sanitize_boxes",
    "worker_init",
    "yolo_detection",
]
