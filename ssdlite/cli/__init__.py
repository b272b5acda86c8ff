"""The ``ssdlite`` command: ``ssdlite detect|serve|train|export|zoo|convert ...``.

Each subcommand is a module with ``main(argv) -> exit code``; ``serve`` and ``train`` run the
service (``python -m service``) and the trainer (``python -m train.coco``), which need the
``serve`` and ``train`` extras.
"""

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

from .common import fail, show_library_logs

# name -> (module with main(argv), extra it needs, one-line help)
COMMANDS = {
    "detect": ("ssdlite.cli.detect", None, "detect objects in image files (JSON lines, annotated images)"),
    "serve": ("service.__main__", "serve", "run the HTTP/WebSocket detection service (python -m service)"),
    "train": ("train.coco", "train", "train or evaluate on COCO-format or YOLO data (python -m train.coco)"),
    "export": ("ssdlite.cli.export", None, "export a checkpoint to ONNX (float, INT8, end to end)"),
    "zoo": ("ssdlite.cli.zoo", None, "list or fetch the pretrained models"),
    "convert": ("ssdlite.cli.convert", None, "convert a TF Object Detection API SSDLite graph to a checkpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssdlite",
        description="SSDLite object detection: detect, serve, train, export.",
        epilog="`ssdlite COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints the help, the version or the usage error, and exits
    name, rest = argv[0], argv[1:]
    module_name, extra, _ = COMMANDS[name]
    try:
        # serve and train live in packages beside ssdlite and import their extras' libraries.
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        hint = f"; install the extra: pip install 'ssdlite[{extra}]'" if extra else ""
        return fail(f"`ssdlite {name}` needs {error.name}, which is not installed{hint}")
    show_library_logs()
    return module.main(rest)


def _version() -> str:
    try:
        return version("ssdlite")
    except PackageNotFoundError:
        return "unknown"


def run():
    """The console script's entry point."""
    sys.exit(main())
