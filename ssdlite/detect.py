"""``python -m ssdlite.detect`` is ``ssdlite detect``; kept for the scripts that use the old name."""

if __name__ == "__main__":
    import sys

    from .cli import main

    sys.exit(main(["detect", *sys.argv[1:]]))
