"""Training throughput: our full SSDLite step vs torchvision's SSDLite320, in one run.

``python -m bench.train``: both models train on the same synthetic batches (320x320 images,
91 classes, a few boxes each) and report images/s for a complete optimisation step:

* ours: ``ssdlite320_mobilenet_v2`` forward, anchor matching + hard-negative-mined loss
  (``ssdlite.loss.SSDLoss``), backward, SGD step;
* torchvision: ``ssdlite320_mobilenet_v3_large`` through its normal ``model(images, targets)``
  call (its resize/normalise transform, matching and loss included), backward, SGD step.

On CUDA it runs batch sizes 64 and 256 in fp32 and bf16 autocast. Ours runs channels_last, as
the trainer does. It also measures the training data loader (embedded-set generator images at
480-640 px, JPEG decode + SSD augmentation + resize to 320) with N workers, and batched
evaluation throughput (640x480 uint8 images in, detections out, resize and postprocess included).
CPU defaults are small (batch 8, a few steps) so the whole run takes a few minutes on 2 cores.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from ssdlite import Detector, build_model
from ssdlite.core.loss import SSDLoss, pad_targets

from .common import machine_description, make_background_dominant, write_json

NUM_CLASSES = 91
IMAGE_SIZE = 320
BOXES_PER_IMAGE = 6


def synthetic_batch(batch_size: int, seed: int = 0):
    """Float RGB images in [0, 255] and per-image normalised xyxy boxes with labels 1..90."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 255
    boxes, labels = [], []
    for _ in range(batch_size):
        centre = torch.rand(BOXES_PER_IMAGE, 2, generator=generator) * 0.6 + 0.2
        size = torch.rand(BOXES_PER_IMAGE, 2, generator=generator) * 0.3 + 0.05
        boxes.append(torch.cat([centre - size / 2, centre + size / 2], dim=1).clamp(0, 1))
        labels.append(torch.randint(1, NUM_CLASSES, (BOXES_PER_IMAGE,), generator=generator))
    return images, boxes, labels


def ours_step_fn(batch, device, amp_dtype):
    model = build_model("ssdlite320_mobilenet_v2", num_classes=NUM_CLASSES).to(device).train()
    model = model.to(memory_format=torch.channels_last)  # as the trainer runs it
    criterion = SSDLoss(model.anchors)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, boxes, labels = batch
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    gt_boxes, gt_labels, gt_crowd = pad_targets(boxes, labels, device=device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            box_regression, class_logits = model(images)
        loss = criterion(box_regression, class_logits, gt_boxes, gt_labels, gt_crowd)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def torchvision_step_fn(batch, device, amp_dtype):
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    )
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, boxes, labels = batch
    image_list = list((images / 255).to(device).unbind(0))
    targets = [
        {"boxes": (b * IMAGE_SIZE).to(device), "labels": lab.to(device)} for b, lab in zip(boxes, labels, strict=True)
    ]

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            losses = model(image_list, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(step, batch_size: int, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch_size * steps / (time.perf_counter() - start)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_training(device, batch_sizes, dtypes, steps, warmup) -> list[dict]:
    rows = []
    for batch_size in batch_sizes:
        batch = synthetic_batch(batch_size)
        for dtype_name in dtypes:
            amp_dtype = torch.bfloat16 if dtype_name == "bf16" else None
            row = {"batch_size": batch_size, "dtype": dtype_name}
            for name, make in (("ours", ours_step_fn), ("torchvision", torchvision_step_fn)):
                torch.manual_seed(0)
                step = make(batch, device, amp_dtype)
                row[name] = images_per_second(step, batch_size, steps, warmup, device)
                del step
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            row["speedup"] = row["ours"] / row["torchvision"]
            print(
                f"train step  bs {batch_size:4d} {dtype_name:5s}  ours {row['ours']:8.1f} img/s   "
                f"torchvision {row['torchvision']:8.1f} img/s   x{row['speedup']:.2f}",
                flush=True,
            )
            rows.append(row)
    return rows


def bench_loader(workers: int, batch_size: int, batches: int) -> dict:
    """The trainer's DataLoader on JPEGs of 480-640 px: decode, SSD augmentation, resize to 320."""
    import cv2

    from train.data import CocoDetection, collate, worker_init
    from train.synthetic import SyntheticSpec, ensure_dataset
    from train.transforms import build_transform

    cv2.setNumThreads(0)
    spec = SyntheticSpec(num_train=batch_size * (batches + 2), num_val=1, min_side=480, max_side=640)
    with tempfile.TemporaryDirectory() as cache:
        paths = ensure_dataset(spec, cache)
        dataset = CocoDetection(paths.train_ann, paths.train_images, build_transform(IMAGE_SIZE, "ssd"))
        loader = DataLoader(
            dataset, batch_size, shuffle=True, num_workers=workers, collate_fn=collate, worker_init_fn=worker_init
        )
        iterator = iter(loader)
        next(iterator)  # worker start-up and the first batch are not steady state
        start = time.perf_counter()
        count = sum(len(next(iterator)) for _ in range(batches))
        seconds = time.perf_counter() - start
    result = {"workers": workers, "batch_size": batch_size, "img_per_s": count / seconds}
    print(f"data loader {workers} worker(s), bs {batch_size}: {result['img_per_s']:.1f} img/s", flush=True)
    return result


def bench_eval(device, batch_size: int, iterations: int) -> dict:
    """640x480 uint8 RGB in -> detections out, batched; trained-like (background-dominant) scores."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(batch_size)]
    model = build_model("ssdlite320_mobilenet_v2", num_classes=NUM_CLASSES).eval()
    make_background_dominant([p[-1] for p in model.class_head.predictors], NUM_CLASSES)
    detector = Detector.from_model(model.to(device), [f"c{i}" for i in range(1, NUM_CLASSES)], device)
    tv_model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    ).eval()
    make_background_dominant([m[-1] for m in tv_model.head.classification_head.module_list], NUM_CLASSES)
    tv_model.to(device)

    @torch.inference_mode()
    def run_torchvision():
        tensors = [torch.from_numpy(image).to(device).permute(2, 0, 1).float().div_(255) for image in images]
        return tv_model(tensors)

    result = {"batch_size": batch_size}
    for name, fn in (("ours", lambda: detector.predict_batch(images)), ("torchvision", run_torchvision)):
        result[name] = images_per_second(fn, batch_size, iterations, 2, device)
    print(
        f"evaluation  bs {batch_size:4d} 640x480 -> detections: ours {result['ours']:.1f} img/s, "
        f"torchvision {result['torchvision']:.1f} img/s",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default: 8 on CPU, 64 256 on CUDA")
    parser.add_argument("--steps", type=int, help="timed steps per setting (default: 4 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 2 on CPU, 10 on CUDA)")
    parser.add_argument("--workers", type=int, nargs="+", help="data-loader workers to try (default: cores - 1)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    batch_sizes = args.batch_sizes or ([64, 256] if cuda else [8])
    dtypes = ["fp32", "bf16"] if cuda else ["fp32"]
    steps = args.steps or (30 if cuda else 4)
    warmup = args.warmup or (10 if cuda else 2)
    workers = args.workers or [max(0, (os.cpu_count() or 1) - 1)]
    description = machine_description()
    if cuda:
        description += f", {torch.cuda.get_device_name(device)}"
    print(f"{description}; device {device}; {steps} timed steps after {warmup} warm-up")
    results = {
        "machine": description,
        "device": str(device),
        "train": bench_training(device, batch_sizes, dtypes, steps, warmup),
        "loader": [bench_loader(w, batch_sizes[0] if cuda else 16, 8 if cuda else 4) for w in workers],
        "eval": bench_eval(device, 256 if cuda else 8, steps),
    }
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
