"""``ssdlite convert tf-graph FROZEN.pb -o OUT.pt [--labels person ...]``: convert foreign weights."""

import argparse
from pathlib import Path

from ..weights import save_checkpoint
from ..weights.convert.tf_graph import ConversionError, convert_tf_graph
from .common import fail


def build_parser(prog: str = "ssdlite convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Convert foreign weights.")
    formats = parser.add_subparsers(dest="format", required=True)
    tf = formats.add_parser("tf-graph", help="a TF Object Detection API SSDLite-MobileNetV2 frozen graph (.pb)")
    tf.add_argument("graph", help="frozen_inference_graph.pb")
    tf.add_argument("-o", "--output", required=True, help="checkpoint file to write (.pt)")
    tf.add_argument("--labels", nargs="+", help="names of classes 1..K-1 (default: class1, class2, ...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.graph).is_file():
        return fail(f"{args.graph}: no such file")
    try:
        model, class_names = convert_tf_graph(args.graph, args.labels)
    except ConversionError as error:
        return fail(error)
    save_checkpoint(args.output, model, class_names, source=str(args.graph))
    print(
        f"{args.output}: {model.config.num_classes - 1} classes, {model.anchors.shape[0]} anchors, "
        f"input {model.config.image_size}x{model.config.image_size}"
    )
    return 0
