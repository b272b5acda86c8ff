"""``python -m ssdlite.zoo`` is ``ssdlite zoo``; kept for the scripts that use the old name."""

if __name__ == "__main__":
    import sys

    from .cli import main

    sys.exit(main(["zoo", *sys.argv[1:]]))
