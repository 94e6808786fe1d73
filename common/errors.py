"""Errors a user can cause, with the file, row and column at fault in their message."""

from __future__ import annotations

import contextlib
import contextvars
import os


class DataError(ValueError):
    """Bad input data: a missing file or column, a value out of range, an unreadable image.

    The message names the place at fault in one line, e.g.
    `training.csv: row 12, column 'LH_mcp_E__ip': value 7 outside 0..5`.
    Rows are counted as a spreadsheet shows them: the header is row 1, the first data row is row 2.

    Args:
        message: what is wrong.
        path: the file (or folder) at fault, if any.
        row: the 1-based row in that file (header = 1), if any.
        column: the column name, if any.
    """

    def __init__(self, message, *, path=None, row=None, column=None):
        self.reason = str(message)
        self.path = None if path is None else os.fspath(path)
        self.row = row
        self.column = column
        where = []
        if self.path is not None:
            where.append(self.path)
        loc = []
        if row is not None:
            loc.append(f"row {row}")
        if column is not None:
            loc.append(f"column '{column}'")
        if loc:
            where.append(", ".join(loc))
        prefix = ": ".join(where)
        text = f"{prefix}: {self.reason}" if prefix else self.reason
        super().__init__(" ".join(text.split("\n")))


_MISSING_FILES = contextvars.ContextVar("missing_listed_files", default=None)


@contextlib.contextmanager
def collect_missing_files():
    """Within the block, readers record listed-but-absent files instead of raising at the first.

    `inspect` reports such a data set (labels all there, films absent) with counts and a warning;
    `train` stops with the count and the first missing file.

    Returns:
        (as the `with` target) a list that fills with `(path, DataError)` pairs.
    """
    found = []
    token = _MISSING_FILES.set(found)
    try:
        yield found
    finally:
        _MISSING_FILES.reset(token)


def missing_listed_file(error, path):
    """A reader found a listed file absent: raises `error`, or records it inside
    `collect_missing_files` (the reader then goes on with the record).

    Args:
        error: the `DataError` naming the label file, row and column.
        path: the absent file.
    """
    found = _MISSING_FILES.get()
    if found is None:
        raise error
    found.append((os.fspath(path), error))
