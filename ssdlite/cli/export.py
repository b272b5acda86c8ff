"""``ssdlite export CHECKPOINT -o model.onnx [--int8 --calibration DIR] [--end-to-end]``: export a model.

The format follows the output's suffix (see ``ssdlite.deploy.EXPORT_FORMATS``); the file's metadata
carries the config, class names and precision, so it is self-contained.
"""

import argparse
import sys
from pathlib import Path

from ..deploy import EXPORT_FORMATS, export_model
from ..deploy.export import export_format
from ..deploy.int8 import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CALIBRATION_METHOD,
    load_calibration_images,
)
from ..errors import SSDLiteError
from ..runtime import model_file
from ..weights import load_checkpoint
from .common import fail, stderr


def build_parser(prog: str = "ssdlite export") -> argparse.ArgumentParser:
    formats = ", ".join(f"{suffix} ({row.description})" for suffix, row in EXPORT_FORMATS.items())
    parser = argparse.ArgumentParser(prog=prog, description=f"Export a model. Formats by output suffix: {formats}.")
    parser.add_argument("checkpoint", help="checkpoint file (.pt) written by ssdlite, or a model-zoo name")
    parser.add_argument("-o", "--output", help="file to write; its suffix picks the format (default: CHECKPOINT.onnx)")
    parser.add_argument("--int8", action="store_true", help="static INT8 quantization (needs --calibration)")
    parser.add_argument("--calibration", metavar="DIR", help="folder of images like those the model will see")
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help=f"use at most N, sorted by name (default {DEFAULT_CALIBRATION_IMAGES}; memory grows with N)",
    )
    parser.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default=DEFAULT_CALIBRATION_METHOD,
        help=f"how activation ranges are chosen (default {DEFAULT_CALIBRATION_METHOD})",
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="decode, threshold and NMS in the graph: outputs boxes, scores, labels, num_detections",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.int8 and not args.calibration:
        parser.error(
            "--int8 needs --calibration DIR: a folder of images like those the model will see "
            "(a few dozen real photos are enough)"
        )
    if args.calibration and not args.int8:
        parser.error("--calibration is only used with --int8")
    output = Path(args.output or Path(args.checkpoint).with_suffix(".onnx"))
    try:
        export_format(output)
        path, model_format = model_file(args.checkpoint)
        if model_format.name != "checkpoint":
            return fail(f"{path}: export reads a checkpoint (.pt), not a file of the {model_format.name} format")
        model, class_names = load_checkpoint(path)
        calibration = None
        if args.int8:
            calibration_set = load_calibration_images(args.calibration, model.config, args.calibration_images)
            if calibration_set.skipped:
                stderr(f"warning: skipped {len(calibration_set.skipped)} unreadable image(s) in {args.calibration}:")
                for problem in calibration_set.skipped:
                    stderr(f"  {problem}")
            stderr(f"calibrating on {len(calibration_set.files)} image(s) from {args.calibration}")
            calibration = calibration_set.images
        export_model(
            model,
            class_names,
            output,
            calibration=calibration,
            calibration_method=args.calibration_method,
            end_to_end=args.end_to_end,
            progress=sys.stderr.isatty(),
        )
    except SSDLiteError as error:
        return fail(error)
    except OSError as error:
        return fail(f"{output}: cannot write ({error.strerror or error})")
    print(output)
    return 0
