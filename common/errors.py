"""Errors a user can cause, with the file, row and column at fault in their message."""

from __future__ import annotations

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
