"""Run artefacts: per-epoch metrics (CSV + JSON), loss/mAP curves and a grid of val detections."""

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

from ssdlite import Detector
from ssdlite.images import draw_detections, read_image, write_image

GRID_IMAGES = 8
GRID_TILE = 256
GRID_SCORE_THRESHOLD = 0.3


def write_metrics(output_dir: Path, history: list[dict]):
    """``metrics.json`` (a list, one dict per epoch) and ``metrics.csv`` (same, as a table)."""
    with open(output_dir / "metrics.json", "w") as f:
        json.dump(history, f, indent=1)
    columns = list(dict.fromkeys(key for row in history for key in row))
    with open(output_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def plot_curves(path: Path, history: list[dict]):
    """Training losses and validation AP against epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "loss_box", "loss_cls"):
        ax_loss.plot(epochs, [row.get(key, math.nan) for row in history], label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss")
    ax_loss.legend()
    evaluated = [row for row in history if "AP" in row]
    for key in ("AP", "AP50", "AP75"):
        ax_map.plot([row["epoch"] for row in evaluated], [row[key] for row in evaluated], marker=".", label=key)
    ax_map.set_xlabel("epoch")
    ax_map.set_title("validation (COCO)")
    ax_map.set_ylim(0, 1)
    ax_map.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def detection_grid(
    path: Path | None, model: torch.nn.Module, class_names: list[str], image_paths: list[Path]
) -> np.ndarray | None:
    """Draws the model's detections (score >= 0.3) on the first validation images, 4 per row.

    Returns the grid (RGB uint8, also what TensorBoard shows) and writes it to ``path`` if given;
    None if no image could be read.
    """
    images = []
    for image_path in image_paths[:GRID_IMAGES]:
        try:
            images.append(read_image(image_path))
        except (OSError, ValueError):
            continue
    if not images:
        return None
    detector = Detector.from_model(copy.deepcopy(model), class_names)
    predictions = detector.predict_batch(images, score_threshold=GRID_SCORE_THRESHOLD)
    tiles = [_tile(draw_detections(image, dets)) for image, dets in zip(images, predictions, strict=True)]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 4)
    rows = [np.hstack(tiles[i : i + 4]) for i in range(0, len(tiles), 4)]
    grid = np.vstack(rows)
    if path is not None:
        write_image(path, grid)
    return grid


def _tile(image: np.ndarray) -> np.ndarray:
    import cv2

    height, width = image.shape[:2]
    scale = GRID_TILE / max(height, width)
    resized = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))))
    tile = np.zeros((GRID_TILE, GRID_TILE, 3), np.uint8)
    tile[: resized.shape[0], : resized.shape[1]] = resized
    return tile
