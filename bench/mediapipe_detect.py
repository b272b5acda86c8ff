"""Runs a ``.tflite`` export through MediaPipe Tasks' ObjectDetector and prints its detections as JSON.

Imports only mediapipe, numpy and the standard library, as an app using the file would; run with
an environment that has ``mediapipe`` (for example ``.venv-tflite``):
``python bench/mediapipe_detect.py model.tflite photo.jpg ... [--score-threshold 0.3] [--max-results 100]``.
Prints one JSON object per image: ``{"file", "width", "height", "detections": [{"box": [x1, y1, x2, y2],
"score", "label"}]}``.
"""

import argparse
import json

import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--max-results", type=int, default=100)
    args = parser.parse_args()
    options = vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_path=args.model),
        score_threshold=args.score_threshold,
        max_results=args.max_results,
    )
    with vision.ObjectDetector.create_from_options(options) as detector:
        for path in args.images:
            image = mp.Image.create_from_file(path)
            if image.image_format != mp.ImageFormat.SRGB:  # MediaPipe's detector crashes on 1-channel input
                gray = image.numpy_view()[..., :1]
                pixels = np.ascontiguousarray(np.broadcast_to(gray, (*gray.shape[:2], 3)))
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels)
            result = detector.detect(image)
            detections = [
                {
                    "box": [
                        d.bounding_box.origin_x,
                        d.bounding_box.origin_y,
                        d.bounding_box.origin_x + d.bounding_box.width,
                        d.bounding_box.origin_y + d.bounding_box.height,
                    ],
                    "score": d.categories[0].score,
                    "label": d.categories[0].category_name,
                }
                for d in result.detections
            ]
            print(json.dumps({"file": path, "width": image.width, "height": image.height, "detections": detections}))


if __name__ == "__main__":
    main()
