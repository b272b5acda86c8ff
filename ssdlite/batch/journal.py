"""Resume: a run's finished results, one JSON line each, in its output directory.

The first line records the arguments that decide the results. A run started again with the same
arguments reads the journal, skips the batches it holds and ends with the same outputs as an
uninterrupted run; other arguments are refused rather than mixed in. Each batch is appended with
one write and flushed, so a killed run loses at most the batch it was writing (a torn last line is
cut off when the journal is opened again).
"""

import json
import os
from pathlib import Path
from typing import Any, TextIO

from ..errors import SSDLiteError
from .records import Problem, Record

JOURNAL_NAME = ".ssdlite-progress.jsonl"


class JournalError(SSDLiteError, ValueError):
    """An output directory that holds another run's journal, or one that cannot be read or written."""


class Journal:
    """The results a run has finished, by input index; :meth:`append` adds a batch durably.

    Args:
        directory: the run's output directory.
        arguments: what decides the results (model, thresholds, inputs...); JSON-serialisable.
    """

    def __init__(self, directory: Path, arguments: dict[str, Any]):
        self.path = directory / JOURNAL_NAME
        self.arguments = json.loads(json.dumps(arguments))  # as it reads back from the file
        self.done: dict[int, Record | Problem] = {}
        self._file: TextIO | None = None

    def open(self) -> "Journal":
        """Reads what an earlier run of the same arguments finished, then opens for appending.

        Raises:
            JournalError: the directory holds a run of other arguments, or the file cannot be used.
        """
        try:
            if self.path.is_file():
                self._read()
            else:
                self.path.write_text(json.dumps({"arguments": self.arguments}) + "\n")
            self._file = open(self.path, "a")  # noqa: SIM115 - appended to until close()
        except OSError as error:
            raise JournalError(f"{self.path}: cannot use the resume journal ({error.strerror or error})") from None
        return self

    def _read(self):
        text = self.path.read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the part after the last newline is a torn write, or empty
        try:
            header = json.loads(complete[0])["arguments"] if complete else None
        except (json.JSONDecodeError, KeyError, TypeError):
            header = None
        if header != self.arguments:
            changed = sorted(k for k in self.arguments if not header or header.get(k) != self.arguments[k])
            raise JournalError(
                f"{self.path.parent} holds a run with other arguments ({', '.join(changed) or 'unreadable journal'}); "
                f"use another output directory, or delete {self.path.name} there to start over"
            )
        for number, line in enumerate(complete[1:], start=2):
            try:
                entry = json.loads(line)
                item = Record.from_json(entry["record"]) if "record" in entry else Problem(**entry["problem"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise JournalError(
                    f"{self.path}: line {number} is damaged; delete the file to start the run over"
                ) from None
            self.done[item.index] = item
        if lines[-1]:
            with open(self.path, "r+") as f:
                f.truncate(len(text) - len(lines[-1]))

    def append(self, items: list[Record | Problem]):
        """Adds a finished batch with one write, flushed to disk."""
        assert self._file is not None, "open() the journal first"
        lines = [
            json.dumps({"record": item.to_json()} if isinstance(item, Record) else {"problem": item.__dict__})
            for item in items
        ]
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())
        for item in items:
            self.done[item.index] = item

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
