"""Errors of the data package: unusable dataset files and malformed class lists."""

import argparse


class DataError(ValueError):
    """A dataset file or directory that is missing or unusable; the message names it."""


class ClassListError(argparse.ArgumentTypeError, ValueError):
    """A malformed ``--classes`` value (argparse shows the message as it is)."""
