"""What every subcommand shares: messages on stderr, one-line failures, the library's log lines."""

import logging
import sys


def stderr(message: str):
    print(message, file=sys.stderr)


def fail(error: object, code: int = 2) -> int:
    """Prints ``error: MESSAGE`` on one line and returns the exit code."""
    stderr(f"error: {error}")
    return code


def show_library_logs():
    """The library logs its progress (zoo downloads, conversions) at INFO; a command shows it on stderr."""
    logger = logging.getLogger("ssdlite")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
