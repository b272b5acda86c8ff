"""Batches and DataLoaders: collating samples into a :class:`Batch`, training and validation loaders."""

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssdlite.core.loss import pad_targets

from .sampler import ResumableSampler


@dataclass
class Batch:
    """A collated batch. ``images`` is uint8 ``[N, 3, S, S]`` (channels-last strides)."""

    images: torch.Tensor
    boxes: torch.Tensor  # [N, M, 4] normalised xyxy, padded
    labels: torch.Tensor  # [N, M], -1 = padding
    iscrowd: torch.Tensor  # [N, M]
    image_ids: torch.Tensor  # [N]
    sizes: torch.Tensor  # [N, 2] original (height, width)
    skipped: list[str]  # "path: reason" of images that could not be read

    def __len__(self) -> int:
        return len(self.images)

    def pin_memory(self) -> "Batch":
        for name in ("images", "boxes", "labels", "iscrowd"):
            setattr(self, name, getattr(self, name).pin_memory())
        return self


def collate(samples: list[dict]) -> Batch:
    skipped = [s["skipped"] for s in samples if "skipped" in s]
    samples = [s for s in samples if "skipped" not in s]
    if not samples:
        empty = torch.zeros(0, dtype=torch.int64)
        return Batch(
            torch.zeros((0, 3, 1, 1), dtype=torch.uint8),
            torch.zeros((0, 1, 4)),
            empty.view(0, 1),
            torch.zeros((0, 1), dtype=torch.bool),
            empty,
            empty.view(0, 2),
            skipped,
        )
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    boxes, labels, iscrowd = pad_targets(
        [torch.from_numpy(s["boxes"]) for s in samples],
        [torch.from_numpy(s["labels"]) for s in samples],
        [torch.from_numpy(s["iscrowd"]) for s in samples],
    )
    return Batch(
        images=images,
        boxes=boxes,
        labels=labels,
        iscrowd=iscrowd,
        image_ids=torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
        sizes=torch.tensor([s["size"] for s in samples], dtype=torch.int64).reshape(-1, 2),
        skipped=skipped,
    )


def build_loaders(
    train_set: Dataset | None,
    val_set: Dataset,
    batch_size: int,
    workers: int,
    dist_info,
    device: torch.device,
    seed: int = 0,
) -> tuple[DataLoader | None, DataLoader]:
    """DataLoaders: training shuffled per epoch across ranks (:class:`ResumableSampler`, its
    ``set_epoch`` and ``start_index`` for resuming mid-epoch), validation sharded by rank in order.
    """
    common = {
        "collate_fn": collate,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": worker_init,
        "persistent_workers": workers > 0,
    }
    train_loader = None
    if train_set is not None:
        sampler = ResumableSampler(train_set, dist_info.world_size, dist_info.rank, seed=seed)
        drop_last = len(sampler) >= batch_size
        train_loader = DataLoader(train_set, batch_size, sampler=sampler, drop_last=drop_last, **common)
    shard = list(range(dist_info.rank, len(val_set), dist_info.world_size))
    val_loader = DataLoader(val_set, batch_size, sampler=shard, **common)
    return train_loader, val_loader


def worker_init(_worker_id: int):
    """DataLoader workers: single-threaded OpenCV and torch (the parent has the cores)."""
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
