"""Run files: `metrics.json`, `predictions.csv`, PNGs, and the training engine's `history.csv`.

Every writer is atomic (`common.fileio`): a temporary name in the same folder, then `os.replace`.
Files name images by file name or by `anonymize_id(...)`, never by a patient's name or ID.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.fileio import atomic_write_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def anonymize_id(value, length=12, salt="") -> str:
    """Returns a short, stable pseudonym for anything that could identify a patient.

    Args:
        value: the identifier (PatientID, a study folder name, ...); converted with `str`.
        length: number of hex digits kept from the SHA-1 digest, 4..40.
        salt: optional secret mixed into the hash (short numeric IDs can be guessed otherwise).

    Returns:
        `length` lowercase hex digits.
    """
    if not 4 <= int(length) <= 40:
        raise ValueError(f"length must be in 4..40, got {length}")
    digest = hashlib.sha1(f"{salt}{value}".encode()).hexdigest()
    return digest[: int(length)]


def write_json(path, obj) -> Path:
    """Writes `obj` as indented JSON, atomically; NaN and infinities become `null`.

    numpy scalars and arrays, tuples, sets and paths are converted to plain JSON types; dict
    keys become strings.

    Args:
        path: destination file; parent folders are created.
        obj: a JSON-like structure.

    Returns:
        The path written.
    """
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path, frame, index=False) -> Path:
    """Writes a pandas DataFrame as CSV (UTF-8, header row), atomically.

    Args:
        path: destination file; parent folders are created.
        frame: the `pandas.DataFrame`.
        index: also write the frame's index as the first column.

    Returns:
        The path written.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    return atomic_write_bytes(path, frame.to_csv(index=index).encode("utf-8"))


def save_png(path, png_bytes) -> Path:
    """Writes PNG bytes (from a plot function) to `path`, atomically.

    Args:
        path: destination file; parent folders are created.
        png_bytes: a complete PNG file's bytes.

    Returns:
        The path written.
    """
    check_png(png_bytes)
    return atomic_write_bytes(path, bytes(png_bytes))


def read_history(path) -> pd.DataFrame:
    """Reads the training engine's `history.csv` (columns epoch, loss, val_loss, lr, ...).

    Args:
        path: the CSV file.

    Returns:
        A DataFrame with numeric columns, sorted by `epoch` when present. Empty cells are NaN.

    Raises:
        DataError: the file is missing or empty, or a cell is not a number (row and column named).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("history file not found", path=path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError("history file is empty", path=path) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"not a valid CSV file ({exc})", path=path) from None
    if frame.columns.size == 0:
        raise DataError("history file has no columns", path=path)
    columns = {}
    for column in frame.columns:
        values = []
        for position, cell in enumerate(frame[column]):
            text = str(cell).strip()
            if text == "" or text.lower() in ("nan", "none", "null"):
                values.append(math.nan)
                continue
            try:
                values.append(float(text))
            except ValueError:
                raise DataError(
                    f"expected a number, got {text!r}", path=path, row=position + 2, column=column
                ) from None
        columns[column] = values
    history = pd.DataFrame(columns, columns=list(frame.columns), dtype=np.float64)
    if "epoch" in history.columns:
        history = history.sort_values("epoch", kind="stable").reset_index(drop=True)
        if history["epoch"].notna().all() and (history["epoch"] % 1 == 0).all():
            history["epoch"] = history["epoch"].astype(np.int64)
    return history


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (pd.Timestamp, datetime.date)):
        return obj.isoformat()
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON")


def check_png(png_bytes):
    """Raises ValueError unless `png_bytes` starts with the PNG signature."""
    if not isinstance(png_bytes, (bytes, bytearray)) or not bytes(png_bytes[:8]) == PNG_SIGNATURE:
        raise ValueError("expected PNG bytes (from a plot_* function)")
