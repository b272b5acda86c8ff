"""``python -m ssdlite`` is the ``ssdlite`` command."""

from .cli import run

run()
