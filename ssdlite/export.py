"""``python -m ssdlite.export`` is ``ssdlite export``; kept for the scripts that use the old name."""

if __name__ == "__main__":
    import sys

    from .cli import main

    sys.exit(main(["export", *sys.argv[1:]]))
