"""What every subcommand shares: messages on stderr, one-line failures, the library's log lines."""

import logging
import sys


def stderr(message: str):
    print(message, file=sys.stderr)


def fail(error: object, code: int = 2) -> int:
    """Prints ``error: MESSAGE`` on one line and returns the exit code."""
    stderr(f"error: {error}")
    return code


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a command run in-process under a test's capture
    must not keep writing to a capture that has since closed)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def show_library_logs():
    """The library logs its progress (zoo downloads, conversions, reconnections) at INFO; a command shows it."""
    logger = logging.getLogger("ssdlite")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
