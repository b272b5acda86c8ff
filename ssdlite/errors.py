"""The base class of every error ssdlite raises for a user to read."""


class SSDLiteError(Exception):
    """A problem with what a user gave (a file, a name, an option): its message says what and how to fix it.

    Command-line tools print the message on one line and exit non-zero instead of showing a traceback.
    Subclasses also derive from the built-in error they refine (``ValueError``, ``RuntimeError``), so
    code that caught those before keeps working.
    """
