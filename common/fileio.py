"""Atomic file writes: a temporary file in the same folder, flushed, then renamed over the target.

A reader never sees a half-written file, and an interrupted write leaves the old file in place.
Files get the mode an ordinary `open(path, "w")` would give them (0666 less the umask), not the
0600 of the temporary file.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read from /proc on Linux, else set and restored under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes, *, durable=True) -> Path:
    """Writes `data` to `path` atomically (parent folders created); returns the path.

    `durable=False` skips the fsync: still atomic (no reader sees half a file), but a power cut may
    lose the file. For files that are cheap to write again, such as thousands of phantom images.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path, text: str, encoding="utf-8", *, durable=True) -> Path:
    """Writes `text` to `path` atomically (no newline translation); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding), durable=durable)


def csv_text(header, rows) -> str:
    """A CSV document (`\\n` line ends) from a header and rows, as the standard `csv` module quotes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def read_text(path, *, fallback="cp1252", unreadable="not a readable file"):
    """A text file's contents: UTF-8 (with or without BOM), else `fallback` as older tools save it.

    Args:
        path: the file.
        fallback: the encoding tried when the bytes are not UTF-8 (`cp1252` as Excel saves CSVs,
            `latin-1` for the OAI release's tables); undecodable bytes are replaced.
        unreadable: the start of the message when the file cannot be read.

    Raises:
        DataError naming the file when it cannot be read.
    """
    from common.errors import DataError

    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{unreadable}: {e.strerror or e}", path=path) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode(fallback, errors="replace")
