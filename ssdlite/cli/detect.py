"""``ssdlite detect IMAGE [IMAGE ...] [-o out.jpg] [--model NAME|PATH]``: detect objects in image files.

Prints one JSON line per image; ``-o`` writes the image with boxes drawn (one image), or into a
directory (several images).
"""

import argparse
import json
from pathlib import Path

from ..errors import SSDLiteError
from ..images import draw_detections, read_image, write_image
from ..runtime import BACKENDS, Detector
from .common import fail, stderr

DEFAULT_MODEL = "tf-pedestrian"


def build_parser(prog: str = "ssdlite detect") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Detect objects in image files.")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, WebP, TIFF)")
    parser.add_argument("-o", "--output", help="where to write the annotated image (a directory for several images)")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model-zoo name or checkpoint/.onnx path (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="auto (default): onnxruntime on the CPU, torch on a GPU device",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--max-detections", type=int, default=100)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        detector = Detector.load(args.model, backend=args.backend, device=args.device)
    except (SSDLiteError, OSError) as error:
        return fail(error)
    output = Path(args.output) if args.output else None
    if output and len(args.images) > 1:
        output.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            image = read_image(path)
        except (OSError, ValueError) as error:
            stderr(f"error: {error}")
            failures += 1
            continue
        detections = detector.predict(image, score_threshold=args.score_threshold, max_detections=args.max_detections)
        print(json.dumps({"image": path, "width": image.shape[1], "height": image.shape[0], "detections": detections}))
        if output:
            target = output / Path(path).name if len(args.images) > 1 else output
            write_image(target, draw_detections(image, detections))
    return 1 if failures else 0
