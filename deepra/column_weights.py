"""The weights of the per-column (weighted) metrics, shared by `deepra.train` and `deepra.evaluate`.

Both stages read the same `column_weights` setting: `train` records it in `RUN/config.json` and
`evaluate` may replace it (`--column-weights`). Keeping the reader here lets the two modules share
it without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.errors import DataError
from deepra import data
from deepra.columns import SCORE_COLUMNS


def read_column_weights(spec):
    """Per-column weights of the weighted metrics.

    Args:
        spec: None (every column weighs 1), a dict `{score column: weight}`, or the path of a CSV
            file with the columns `column,weight`.

    Returns:
        None, or a dict `{score column: non-negative float}`.

    Raises:
        DataError: a CSV row names an unknown column or a weight that is not a non-negative
            number (file, row and column named).
        ValueError: a dict names an unknown score column.
    """
    if spec is None:
        return None
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        frame = data._read_csv_text(path, ("column", "weight"))
        weights = {}
        for column, weight, row in zip(frame["column"], frame["weight"], frame["_row"]):
            if column not in SCORE_COLUMNS:
                raise DataError(f"unknown score column '{column}'", path=path, row=int(row))
            try:
                value = float(weight)
            except ValueError:
                value = float("nan")
            if not np.isfinite(value) or value < 0:
                raise DataError(
                    f"weight '{weight}' is not a non-negative number",
                    path=path,
                    row=int(row),
                    column="weight",
                )
            weights[column] = value
        return weights
    weights = {str(k): float(v) for k, v in dict(spec).items()}
    unknown = sorted(set(weights) - set(SCORE_COLUMNS))
    if unknown:
        raise ValueError(f"Unknown score column '{unknown[0]}' in column_weights")
    return weights
