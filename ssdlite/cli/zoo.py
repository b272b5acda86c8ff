"""``ssdlite zoo list`` and ``ssdlite zoo fetch NAME``: the pretrained models."""

import argparse

from ..weights.zoo import MODELS, ZooError, checkpoint_path, fetch
from .common import fail


def build_parser(prog: str = "ssdlite zoo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Pretrained models.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the models and whether they are cached")
    fetch_parser = commands.add_parser("fetch", help="download, verify and convert a model; print its path")
    fetch_parser.add_argument("name", choices=sorted(MODELS))
    fetch_parser.add_argument("--force", action="store_true", help="fetch again even if cached")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name, entry in MODELS.items():
            state = "cached" if checkpoint_path(name).is_file() else "not fetched"
            print(f"{name:18s} {state:12s} {entry.description}")
        return 0
    try:
        path = fetch(args.name, force=args.force)
    except ZooError as error:
        return fail(error, code=1)
    print(path)
    return 0
