"""Person AP of a ``.tflite`` export run by MediaPipe's ObjectDetector (its own resizing, decoding and NMS).

``python -m bench.mediapipe_coco model.tflite [--images DIR] [--annotations FILE]`` (default: the
shared coco128 set) runs ``bench/mediapipe_detect.py`` over the photos in a process importing only
mediapipe and numpy, then scores the detections with pycocotools for each label in the file, by
its COCO category name. Compare with ``python -m train.coco --eval-only --weights model.tflite``,
which runs the same file through ``Detector`` (our resizing, decoding and NMS).
"""

import argparse
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.mediapipe_coco", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", type=Path, default=COCO128 / "train2017")
    parser.add_argument("--annotations", type=Path, default=COCO128 / "annotations" / "instances_train2017.json")
    parser.add_argument("--score-threshold", type=float, default=0.01)
    parser.add_argument("--max-results", type=int, default=100)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(args.annotations))
    by_file = {image["file_name"]: image["id"] for image in truth.dataset["images"]}
    category_ids = {category["name"]: category["id"] for category in truth.dataset["categories"]}
    photos = sorted(p for p in args.images.iterdir() if p.name in by_file)
    script = Path(__file__).with_name("mediapipe_detect.py")
    command = [sys.executable, str(script), str(args.model), *map(str, photos)]
    command += ["--score-threshold", str(args.score_threshold), "--max-results", str(args.max_results)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    detections = []
    labels: set[str] = set()
    for line in done.stdout.splitlines():
        if not line.startswith("{"):
            continue
        result = json.loads(line)
        for d in result["detections"]:
            x1, y1, x2, y2 = d["box"]
            labels.add(d["label"])
            if d["label"] in category_ids:
                detections.append(
                    {
                        "image_id": by_file[Path(result["file"]).name],
                        "category_id": category_ids[d["label"]],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": d["score"],
                    }
                )
    scores = {}
    for label in sorted(labels & set(category_ids)):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
            evaluation.params.catIds = [category_ids[label]]
            evaluation.params.imgIds = [by_file[p.name] for p in photos]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        scores[label] = {"AP": round(float(evaluation.stats[0]), 4), "AP50": round(float(evaluation.stats[1]), 4)}
        print(f"{label}: AP {scores[label]['AP']:.3f} / AP50 {scores[label]['AP50']:.3f} on {len(photos)} photos")
    return scores


if __name__ == "__main__":
    main()
