"""COCO evaluation with pycocotools: results JSON, the 12 standard numbers, per-class AP."""

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssdlite.core.postprocess import Detections

from . import distributed

# fmt: off
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)
# fmt: on


@dataclass
class EvalResult:
    stats: dict[str, float]  # STAT_NAMES -> value (-1 where COCO has no ground truth)
    per_class: list[dict] = field(default_factory=list)  # name, category_id, AP, AP50, gt
    summary: str = ""  # pycocotools' 12-line summary

    @property
    def map(self) -> float:
        return self.stats["AP"]

    def format(self) -> str:
        lines = [self.summary.rstrip(), "", f"{'class':24s} {'id':>5s} {'AP':>7s} {'AP50':>7s} {'gt boxes':>9s}"]
        for row in self.per_class:
            lines.append(
                f"{row['name'][:24]:24s} {row['category_id']:5d} {row['AP']:7.3f} {row['AP50']:7.3f} {row['gt']:9d}"
            )
        return "\n".join(lines)


class CocoEvaluator:
    """Collects detections (model labels, normalised boxes) and scores them with COCOeval.

    Args:
        coco_gt: the ground truth.
        label_to_category_id: model label (1..K-1) -> dataset category id; labels missing from it
            (classes the dataset does not have) are not scored.
    """

    def __init__(self, coco_gt: COCO, label_to_category_id: dict[int, int]):
        self.coco_gt = coco_gt
        self.label_to_category_id = dict(label_to_category_id)
        self.results: list[dict] = []

    def update(self, image_ids, sizes, detections: list[Detections]):
        """Adds one batch: ``sizes`` are the original ``(height, width)`` of each image."""
        for image_id, (height, width), det in zip(image_ids.tolist(), sizes.tolist(), detections, strict=True):
            boxes = det.boxes.float().cpu().numpy() * np.array([width, height, width, height], np.float32)
            for (x1, y1, x2, y2), score, label in zip(
                boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True
            ):
                category_id = self.label_to_category_id.get(label)
                if category_id is not None:
                    self.results.append(
                        {
                            "image_id": image_id,
                            "category_id": category_id,
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                            "score": round(score, 5),
                        }
                    )

    def synchronize_between_processes(self):
        """Gathers every rank's results (all ranks end up with all of them)."""
        self.results = [r for part in distributed.all_gather_object(self.results) for r in part]

    def summarize(self) -> EvalResult:
        category_ids = sorted(set(self.label_to_category_id.values()))
        if not self.results:
            stats = {name: 0.0 for name in STAT_NAMES}
            rows = [self._row(c, 0.0, 0.0) for c in category_ids]
            return EvalResult(stats, rows, "no detections: every COCO number is 0")
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self.coco_gt.loadRes(self.results)
            coco_eval = COCOeval(self.coco_gt, coco_dt, "bbox")
            coco_eval.params.catIds = category_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
        stats = dict(zip(STAT_NAMES, (float(v) for v in coco_eval.stats), strict=True))
        # precision: [IoU thresholds, recall points, categories, area ranges, max detections]
        precision = coco_eval.eval["precision"][:, :, :, 0, -1]
        rows = []
        for k, category_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k]
            ap = float(p[p > -1].mean()) if (p > -1).any() else -1.0
            p50 = precision[0, :, k]
            ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0
            rows.append(self._row(int(category_id), ap, ap50))
        return EvalResult(stats, rows, summary.getvalue())

    def _row(self, category_id: int, ap: float, ap50: float) -> dict:
        annotations = self.coco_gt.loadAnns(self.coco_gt.getAnnIds(catIds=[category_id]))
        gt = sum(not a.get("iscrowd", 0) for a in annotations)
        name = self.coco_gt.cats[category_id]["name"]
        return {"name": name, "category_id": category_id, "AP": ap, "AP50": ap50, "gt": gt}
