"""Serve SSDLite detection over HTTP and WebSocket with uvicorn.

``python -m service [--host H] [--port P] [--model NAME|PATH]``; every option defaults to its
``SSDLITE_*`` environment variable (see ``service/settings.py``), as do the other settings.
"""

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from ssdlite.runtime import BACKENDS

from .app import create_app
from .auth import ApiKeyConfigError, load_api_keys
from .model import load_detector
from .settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__.splitlines()[0],
        epilog="More settings (limits, queue, batching, thresholds, API keys, CORS): SSDLITE_* variables, "
        "see service/settings.py and docs/serving.md.",
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument(
        "--model",
        help="model-zoo name or checkpoint/.onnx path "
        "(default auto: tf-pedestrian-int8 on a CPU, tf-pedestrian on a GPU)",
    )
    parser.add_argument("--backend", choices=("auto", *BACKENDS))
    parser.add_argument("--threads", type=int, help="threads of each inference call (default: all cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings(**{k: v for k, v in vars(args).items() if v is not None})
    except ValidationError as error:
        print(f"error: invalid setting: {error}", file=sys.stderr)
        return 2
    try:
        load_api_keys(settings)  # checked before the model's (slow) load
    except ApiKeyConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    # Loaded here rather than in the lifespan so that a bad model is one clear line, not a traceback.
    try:
        detector = load_detector(settings)
    except Exception as error:  # noqa: BLE001 - any load failure ends the process with its reason
        print(f"error: cannot load model {settings.model!r}: {error}", file=sys.stderr)
        return 2
    app = create_app(settings, detector=detector)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        ws_max_size=settings.max_body_size,
        ws_per_message_deflate=False,  # JPEG frames do not compress; deflate would only burn CPU
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
