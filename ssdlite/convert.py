"""``python -m ssdlite.convert`` is ``ssdlite convert``; kept for the scripts that use the old name."""

if __name__ == "__main__":
    import sys

    from .cli import main

    sys.exit(main(["convert", *sys.argv[1:]]))
