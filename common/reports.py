"""Run outputs: `metrics.json`, `predictions.csv`, plots as PNG bytes and one self-contained report.

Plots are drawn on a private `matplotlib.figure.Figure` with the Agg renderer (never `pyplot`), so
they leave no global state behind and are safe in threads and tests. Every plot function returns
the PNG file's bytes; `HTMLReport.add_image` embeds them, `save_png` writes them.

Reports and CSVs name images by file name or by `anonymize_id(...)`, never by a patient's name or
ID. Every writer is atomic: a temporary name in the same folder, then `os.replace`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
import json
import math
import os
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from common.errors import DataError
from common.fileio import atomic_write_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DPI = 100


# --------------------------------------------------------------------------- files


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
    return _atomic_write_bytes(path, text.encode("utf-8"))


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
    return _atomic_write_bytes(path, frame.to_csv(index=index).encode("utf-8"))


def save_png(path, png_bytes) -> Path:
    """Writes PNG bytes (from a plot function) to `path`, atomically.

    Args:
        path: destination file; parent folders are created.
        png_bytes: a complete PNG file's bytes.

    Returns:
        The path written.
    """
    _check_png(png_bytes)
    return _atomic_write_bytes(path, bytes(png_bytes))


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


# --------------------------------------------------------------------------- numbers behind plots


class ValueCI(NamedTuple):
    """A value with its confidence interval; a table shows it as `0.63 [0.58, 0.68]`."""

    value: float
    low: float
    high: float


def format_value(value) -> str:
    """Formats a table cell: floats with at most 4 significant digits, `ValueCI` with brackets.

    Args:
        value: None, bool, int, float, numpy scalar, `ValueCI`, a `(value, (low, high))` pair, or
            anything else (shown with `str`).

    Returns:
        The text (not yet HTML-escaped). Missing values (None, NaN) are shown as an en dash.
    """
    if isinstance(value, ValueCI):
        return (
            f"{format_value(value.value)} [{format_value(value.low)}, {format_value(value.high)}]"
        )
    if _is_value_with_ci(value):
        number, (low, high) = value
        return format_value(ValueCI(number, low, high))
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return "–"
        if math.isinf(number):
            return "∞" if number > 0 else "−∞"
        if number == 0:
            return "0"
        if abs(number) >= 1e4:
            return f"{number:.0f}"
        if abs(number) < 1e-3:
            return f"{number:.2e}"
        return f"{number:.4g}"
    return str(value)


def reliability_table(y_true, prob, n_bins=10) -> pd.DataFrame:
    """Bins predicted probabilities into `n_bins` equal bins on [0, 1] (a reliability diagram).

    Args:
        y_true: `(N,)` binary labels (0/1 or bool).
        prob: `(N,)` predicted probabilities of the positive class, in [0, 1].
        n_bins: number of equal-width bins, >= 1.

    Returns:
        One row per bin: `low`, `high`, `count`, `mean_prob` and `fraction_positive` (NaN for
        an empty bin).
    """
    y_true, prob = _binary_pair(y_true, prob)
    n_bins = int(n_bins)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    prob_sums = np.bincount(index, weights=prob, minlength=n_bins)
    positive_sums = np.bincount(index, weights=y_true, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(counts > 0, prob_sums / counts, np.nan)
        fraction = np.where(counts > 0, positive_sums / counts, np.nan)
    return pd.DataFrame(
        {
            "low": edges[:-1],
            "high": edges[1:],
            "count": counts.astype(np.int64),
            "mean_prob": mean_prob,
            "fraction_positive": fraction,
        }
    )


def expected_calibration_error(y_true, prob, n_bins=10) -> float:
    """Returns the expected calibration error: count-weighted mean |fraction positive - mean prob|.

    Args:
        y_true: `(N,)` binary labels.
        prob: `(N,)` probabilities of the positive class.
        n_bins: number of equal-width bins.

    Returns:
        The ECE in [0, 1].
    """
    table = reliability_table(y_true, prob, n_bins)
    used = table["count"] > 0
    gaps = (table.loc[used, "fraction_positive"] - table.loc[used, "mean_prob"]).abs()
    return float((gaps * table.loc[used, "count"]).sum() / table["count"].sum())


def bland_altman_stats(y_true, y_pred) -> dict:
    """Returns the Bland-Altman bias and limits of agreement of `y_pred - y_true`.

    Args:
        y_true: `(N,)` reference values.
        y_pred: `(N,)` predictions, N >= 2.

    Returns:
        `{"mean_difference", "sd_difference", "lower_limit", "upper_limit"}` with the limits at
        mean +- 1.96 SD (sample SD, ddof=1).
    """
    y_true, y_pred = _numeric_pair(y_true, y_pred, minimum=2)
    difference = y_pred - y_true
    mean = float(difference.mean())
    sd = float(difference.std(ddof=1))
    return {
        "mean_difference": mean,
        "sd_difference": sd,
        "lower_limit": mean - 1.96 * sd,
        "upper_limit": mean + 1.96 * sd,
    }


# --------------------------------------------------------------------------- plots


def plot_learning_curves(history_frame) -> bytes:
    """Plots one panel per metric (`x` with `val_x`) over epochs, and the learning rate apart.

    Args:
        history_frame: a DataFrame as `read_history` returns; `epoch` is the x axis when present.

    Returns:
        PNG bytes.
    """
    if not isinstance(history_frame, pd.DataFrame):
        raise ValueError(f"history_frame must be a DataFrame, got {type(history_frame).__name__}")
    frame = history_frame
    x = frame["epoch"].to_numpy() if "epoch" in frame.columns else np.arange(len(frame))
    names = []
    for column in frame.columns:
        if column in ("epoch", "lr", "learning_rate"):
            continue
        base = column[4:] if column.startswith("val_") else column
        if base not in names:
            names.append(base)
    lr_column = next((c for c in ("lr", "learning_rate") if c in frame.columns), None)
    panels = len(names) + (lr_column is not None)
    if panels == 0 or len(frame) == 0:
        return _message_png("No training history recorded")
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names, strict=False):
        for column, label, style in ((name, "train", "-o"), (f"val_{name}", "validation", "-s")):
            if column in frame.columns:
                axis.plot(x, frame[column].to_numpy(dtype=float), style, label=label, markersize=3)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if lr_column is not None:
        axis = axes[len(names)]
        values = frame[lr_column].to_numpy(dtype=float)
        axis.plot(x, values, "-o", color="tab:green", markersize=3)
        if np.all(values[np.isfinite(values)] > 0) and np.isfinite(values).any():
            axis.set_yscale("log")
        axis.set_title("learning rate")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    for axis in axes[panels:]:
        axis.set_visible(False)
    return _to_png(fig)


def plot_confusion_matrix(cm, class_names, normalize=True) -> bytes:
    """Plots a confusion matrix (rows: true class, columns: predicted class) with counts.

    Args:
        cm: `(C, C)` counts.
        class_names: C names.
        normalize: colour and label each row by its fraction of the true class (counts below).

    Returns:
        PNG bytes.
    """
    cm = np.asarray(cm, dtype=np.float64)
    names = [str(n) for n in class_names]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
        raise ValueError(
            f"cm must be square with one row per class name ({len(names)}), got shape {cm.shape}"
        )
    totals = cm.sum(axis=1, keepdims=True)
    fractions = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    shown = fractions if normalize else cm
    size = max(3.5, 0.7 * len(names) + 2.0)
    fig = Figure(figsize=(size + 0.8, size), dpi=_DPI, layout="constrained")
    axis = fig.subplots()
    image = axis.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=axis, fraction=0.046)
    threshold = (1.0 if normalize else max(shown.max(), 1e-12)) / 2.0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            count = int(round(cm[i, j]))
            text = f"{fractions[i, j]:.2f}\n({count})" if normalize else str(count)
            color = "white" if shown[i, j] > threshold else "black"
            axis.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ticks = np.arange(len(names))
    axis.set_xticks(ticks, names, rotation=45, ha="right")
    axis.set_yticks(ticks, names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    return _to_png(fig)


def plot_roc(curves) -> bytes:
    """Plots ROC curves, one per entry, with the AUC in the legend.

    Args:
        curves: `{name: (fpr, tpr, auc)}` with `fpr`, `tpr` arrays of equal length.

    Returns:
        PNG bytes.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {name: (fpr, tpr, auc)}")
    fig = Figure(figsize=(4.8, 4.5), dpi=_DPI, layout="constrained")
    axis = fig.subplots()
    axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="chance")
    for name, (fpr, tpr, auc) in curves.items():
        fpr, tpr = _numeric_pair(fpr, tpr, minimum=2)
        axis.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {format_value(float(auc))})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.set_xlabel("false positive rate (1 - specificity)")
    axis.set_ylabel("true positive rate (sensitivity)")
    axis.set_title("ROC")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    return _to_png(fig)


def plot_calibration(y_true, prob, n_bins=10, class_index=None, class_names=None) -> bytes:
    """Plots a reliability diagram (binary, or one-vs-rest per class) with bin counts below.

    Args:
        y_true: `(N,)` labels: 0/1 for binary, class indices for multi-class.
        prob: `(N,)` positive-class probabilities, or `(N, C)` class probabilities.
        n_bins: number of equal-width probability bins.
        class_index: with `(N, C)` probabilities, the class to show one-vs-rest; None shows
            class 1 when C == 2, else every class.
        class_names: optional C names for the legend.

    Returns:
        PNG bytes.
    """
    labels = np.asarray(y_true)
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim == 1:
        series = {"positive": (labels, prob)}
    elif prob.ndim == 2:
        num_classes = prob.shape[1]
        names = [str(n) for n in class_names] if class_names is not None else None
        if names is not None and len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} names for {num_classes} classes")
        if class_index is not None:
            chosen = [int(class_index)]
        else:
            chosen = [1] if num_classes == 2 else list(range(num_classes))
        series = {}
        for k in chosen:
            if not 0 <= k < num_classes:
                raise ValueError(f"class_index {k} out of range for {num_classes} classes")
            name = names[k] if names is not None else f"class {k}"
            series[name] = ((labels == k).astype(np.float64), prob[:, k])
    else:
        raise ValueError(f"prob must be (N,) or (N, C), got shape {prob.shape}")
    fig = Figure(figsize=(5.0, 5.6), dpi=_DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfectly calibrated")
    width = 1.0 / int(n_bins)
    for offset, (name, (truth, p)) in enumerate(series.items()):
        table = reliability_table(truth, p, n_bins)
        ece = expected_calibration_error(truth, p, n_bins)
        used = table["count"] > 0
        top.plot(
            table.loc[used, "mean_prob"],
            table.loc[used, "fraction_positive"],
            "-o",
            markersize=4,
            label=f"{name} (ECE {format_value(ece)})",
        )
        shift = (offset + 0.5) / len(series) * width
        bottom.bar(
            table["low"] + shift, table["count"], width=width / len(series), alpha=0.7, label=name
        )
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("observed fraction positive")
    top.set_title("reliability diagram")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("count")
    return _to_png(fig)


def plot_scatter(y_true, y_pred, xlabel="true", ylabel="predicted", title=None) -> bytes:
    """Plots predictions against truth with the identity line, N and MAE in the corner.

    Args:
        y_true: `(N,)` reference values.
        y_pred: `(N,)` predictions.
        xlabel: x-axis label (with unit, e.g. "bone age (months)").
        ylabel: y-axis label.
        title: optional title.

    Returns:
        PNG bytes.
    """
    y_true, y_pred = _numeric_pair(y_true, y_pred, minimum=1)
    fig = Figure(figsize=(4.8, 4.6), dpi=_DPI, layout="constrained")
    axis = fig.subplots()
    low = float(min(y_true.min(), y_pred.min()))
    high = float(max(y_true.max(), y_pred.max()))
    pad = 0.05 * (high - low) if high > low else 1.0
    limits = (low - pad, high + pad)
    axis.plot(limits, limits, "--", color="gray", linewidth=1, label="identity")
    axis.scatter(y_true, y_pred, s=12, alpha=0.6, edgecolors="none")
    mae = float(np.abs(y_pred - y_true).mean())
    axis.text(
        0.03,
        0.97,
        f"N = {y_true.size}\nMAE = {format_value(mae)}",
        transform=axis.transAxes,
        va="top",
        fontsize=9,
    )
    axis.set_xlim(limits)
    axis.set_ylim(limits)
    axis.set_aspect("equal")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    return _to_png(fig)


def plot_bland_altman(y_true, y_pred, unit="") -> bytes:
    """Plots a Bland-Altman diagram: difference (pred - true) against the mean of the two.

    Args:
        y_true: `(N,)` reference values.
        y_pred: `(N,)` predictions, N >= 2.
        unit: unit for the axis labels, e.g. "months".

    Returns:
        PNG bytes.
    """
    stats = bland_altman_stats(y_true, y_pred)
    y_true, y_pred = _numeric_pair(y_true, y_pred, minimum=2)
    suffix = f" ({unit})" if unit else ""
    fig = Figure(figsize=(5.6, 4.2), dpi=_DPI, layout="constrained")
    axis = fig.subplots()
    axis.scatter((y_true + y_pred) / 2.0, y_pred - y_true, s=12, alpha=0.6, edgecolors="none")
    lines = (
        ("mean_difference", "-", "tab:blue", "mean"),
        ("upper_limit", "--", "tab:red", "+1.96 SD"),
        ("lower_limit", "--", "tab:red", "−1.96 SD"),
    )
    for key, style, color, label in lines:
        value = stats[key]
        axis.axhline(value, linestyle=style, color=color, linewidth=1.2)
        axis.annotate(
            f"{label}: {format_value(value)}",
            xy=(1.0, value),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            color=color,
        )
    axis.margins(y=0.12)  # room for the line labels
    axis.set_xlabel(f"mean of true and predicted{suffix}")
    axis.set_ylabel(f"predicted − true{suffix}")
    axis.set_title("Bland–Altman")
    axis.grid(alpha=0.3)
    return _to_png(fig)


def plot_error_by_group(groups, errors, ylabel="error") -> bytes:
    """Box plots of errors per group (sex, body part, KL grade, ...), with N per group.

    Args:
        groups: `(N,)` group labels.
        errors: `(N,)` errors (absolute or signed).
        ylabel: y-axis label.

    Returns:
        PNG bytes.
    """
    groups = np.asarray(groups)
    errors = np.asarray(errors, dtype=np.float64)
    if groups.shape != errors.shape or groups.ndim != 1 or groups.size == 0:
        raise ValueError(
            f"groups and errors must be 1-D of equal, non-zero length, got {groups.shape} "
            f"and {errors.shape}"
        )
    keys = sorted(set(groups.tolist()), key=lambda k: (str(type(k)), k))
    data = [errors[groups == key] for key in keys]
    fig = Figure(figsize=(max(4.0, 0.9 * len(keys) + 2.0), 4.0), dpi=_DPI, layout="constrained")
    axis = fig.subplots()
    axis.boxplot(data, showmeans=True)
    axis.set_xticks(
        np.arange(1, len(keys) + 1),
        [f"{key}\n(n={len(d)})" for key, d in zip(keys, data, strict=True)],
        fontsize=8,
    )
    axis.set_ylabel(ylabel)
    axis.set_title(f"{ylabel} by group")
    axis.grid(alpha=0.3, axis="y")
    return _to_png(fig)


def plot_bars(table, ylabel="", title=None) -> bytes:
    """Grouped bar chart of a two-level table, e.g. `{"att0": {"accuracy": .6, "kappa": .7}}`.

    Args:
        table: `{group: {series: value}}`; groups along x, series as coloured bars. Missing or
            NaN values leave a gap.
        ylabel: y-axis label.
        title: optional title.

    Returns:
        PNG bytes.
    """
    if not isinstance(table, Mapping) or not table:
        raise ValueError("table must be a non-empty dict {group: {series: value}}")
    groups = [str(g) for g in table]
    series = []
    for row in table.values():
        if not isinstance(row, Mapping):
            raise ValueError("every value of table must itself be a dict {series: value}")
        series.extend(str(s) for s in row if str(s) not in series)
    fig = Figure(
        figsize=(max(4.5, 0.5 * len(groups) * max(1, len(series)) + 2.0), 4.0),
        dpi=_DPI,
        layout="constrained",
    )
    axis = fig.subplots()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, name in enumerate(series):
        values = []
        for row in table.values():
            value = {str(s): v for s, v in row.items()}.get(name)
            values.append(np.nan if value is None else float(value))
        bars = axis.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name)
        labels = ["" if not np.isfinite(v) else format_value(v) for v in values]
        axis.bar_label(bars, labels=labels, fontsize=7, padding=2)
    axis.set_xticks(x, groups)
    axis.set_ylabel(ylabel)
    if title:
        axis.set_title(title)
    if len(series) > 1:
        axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    return _to_png(fig)


def overlay_map(image01, heatmap, alpha=0.45, cmap="jet") -> np.ndarray:
    """Blends a colour-mapped heat map (attention, CAM, saliency) over a grayscale image.

    Args:
        image01: `(H, W)`, `(H, W, 1)` or `(H, W, 3)` image in [0, 1].
        heatmap: `(h, w)` or `(h, w, 1)` map of any range; resized bilinearly to `(H, W)`, then
            min-max normalised to [0, 1] (a constant map becomes 0).
        alpha: weight of the heat map, in [0, 1].
        cmap: a matplotlib colormap name.

    Returns:
        uint8 RGB `(H, W, 3)`.
    """
    image = np.asarray(image01, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image01 must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 3 and heat.shape[-1] == 1:
        heat = heat[..., 0]
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (h, w) or (h, w, 1), got shape {heat.shape}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if cmap not in colormaps:
        raise ValueError(f"Unknown cmap '{cmap}'. Available: see matplotlib.colormaps")
    height, width = image.shape[:2]
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colored = colormaps[cmap](heat)[..., :3].astype(np.float32)
    blended = (1.0 - alpha) * np.clip(image, 0.0, 1.0) + alpha * colored
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay_png(image01, heatmap, title=None, alpha=0.45, cmap="jet") -> bytes:
    """Returns a PNG of `overlay_map(image01, heatmap)` with an optional title.

    Args:
        image01: the image in [0, 1] (see `overlay_map`).
        heatmap: the map to overlay (see `overlay_map`).
        title: optional title above the image (a file name or hashed ID, never a patient name).
        alpha: weight of the heat map.
        cmap: matplotlib colormap name.

    Returns:
        PNG bytes.
    """
    rgb = overlay_map(image01, heatmap, alpha=alpha, cmap=cmap)
    height, width = rgb.shape[:2]
    scale = 4.0 / max(height, width)
    fig = Figure(
        figsize=(max(2.0, width * scale), max(2.0, height * scale) + (0.4 if title else 0.0)),
        dpi=_DPI,
        layout="constrained",
    )
    axis = fig.subplots()
    axis.imshow(rgb, interpolation="nearest")
    axis.set_axis_off()
    if title:
        axis.set_title(str(title), fontsize=9)
    return _to_png(fig)


# --------------------------------------------------------------------------- HTML report

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}
h2{margin-top:1.6em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:bottom;text-align:left;color:#555;font-size:.88em;padding-top:.3em}
figure{margin:1em 0;display:inline-block;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.88em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1em}
.grid figure{margin:0}
.meta{color:#777;font-size:.85em}
""".strip()


class HTMLReport:
    """Builds one self-contained HTML page: inline CSS, PNGs embedded as data URIs, no links out.

    Every `add_*` method returns the report, so calls chain. Text is HTML-escaped.

    Args:
        title: the page title and top heading.

    Example:
        report = HTMLReport("kneeoa: demo run")
        report.add_metrics({"accuracy": 0.61}, ci={"accuracy": (0.58, 0.64)},
                           reference={"accuracy": 0.647}, reference_note="Table 3, OAI test set")
        report.add_image(plot_learning_curves(read_history("run/history.csv")), "learning curves")
        report.write("run/report.html")
    """

    def __init__(self, title):
        self.title = str(title)
        self._parts = []

    def add_heading(self, text, level=2) -> HTMLReport:
        """Adds a section heading (`<h2>` by default; level 2..4)."""
        level = int(level)
        if not 2 <= level <= 4:
            raise ValueError(f"level must be 2, 3 or 4, got {level}")
        self._parts.append(f"<h{level}>{_esc(text)}</h{level}>")
        return self

    def add_paragraph(self, text) -> HTMLReport:
        """Adds a paragraph of plain text (escaped; line breaks kept)."""
        self._parts.append("<p>" + _esc(text).replace("\n", "<br>") + "</p>")
        return self

    def add_table(self, rows, caption=None) -> HTMLReport:
        """Adds a table from a list of dicts (columns in order of first appearance) or a DataFrame.

        Args:
            rows: `list[dict]` or `pandas.DataFrame` (its index is not shown). Cells are formatted
                by `format_value`: floats to at most 4 significant digits, `ValueCI` or
                `(value, (low, high))` as `0.63 [0.58, 0.68]`.
            caption: optional caption under the table.
        """
        if isinstance(rows, pd.DataFrame):
            columns = [str(c) for c in rows.columns]
            records = [dict(zip(columns, values, strict=True)) for values in rows.itertuples(False)]
        else:
            records = [dict(row) for row in rows]
            columns = []
            for row in records:
                columns.extend(str(k) for k in row if str(k) not in columns)
            records = [{str(k): v for k, v in row.items()} for row in records]
        lines = ["<table>"]
        if caption:
            lines.append(f"<caption>{_esc(caption)}</caption>")
        lines.append(
            "<thead><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr></thead>"
        )
        lines.append("<tbody>")
        for row in records:
            cells = []
            for column in columns:
                value = row.get(column)
                numeric = isinstance(value, (int, float, np.number, ValueCI)) and not isinstance(
                    value, bool
                )
                css = ' class="num"' if numeric or _is_value_with_ci(value) else ""
                cells.append(f"<td{css}>{_esc(format_value(value))}</td>")
            lines.append("<tr>" + "".join(cells) + "</tr>")
        lines.append("</tbody></table>")
        self._parts.append("\n".join(lines))
        return self

    def add_metrics(
        self, metrics, ci=None, reference=None, reference_note="", reference_label="paper"
    ) -> HTMLReport:
        """Adds a table of this run's metrics with 95% CIs, beside the paper's figures.

        Nested dicts (`{"per_branch_accuracy": {"att0": ...}}`) become rows named
        `per_branch_accuracy / att0`; `ci` and `reference` use the same keys and nesting.

        Args:
            metrics: `{name: value}` (values numbers, nested dicts allowed).
            ci: `{name: (low, high)}`, same nesting; None or a missing key shows no interval.
            reference: `{name: number or text}`, the paper's figures; None omits the column.
            reference_note: where the paper's figures come from, e.g. "Table 3, OAI/MOST test set".
            reference_label: the reference column's heading, e.g. "MURA paper (MURA test set)"
                when the figures are not the paper's own.
        """
        flat_metrics = _flatten(metrics)
        flat_ci = _flatten(ci or {})
        flat_reference = _flatten(reference or {})
        rows = []
        for name, value in flat_metrics.items():
            interval = flat_ci.get(name)
            if interval is not None and not _is_interval(interval):
                if isinstance(interval, (list, tuple)) and None in interval:
                    interval = None  # the bootstrap could not give an interval
                else:
                    raise ValueError(f"ci for '{name}' must be (low, high), got {interval!r}")
            shown = ValueCI(value, *interval) if interval is not None else value
            row = {"metric": name, "this run [95% CI]": shown}
            if reference is not None:
                row[reference_label] = flat_reference.get(name)
            rows.append(row)
        for name, value in flat_reference.items():
            if name not in flat_metrics:
                rows.append({"metric": name, "this run [95% CI]": None, reference_label: value})
        caption = None
        if reference is not None:
            caption = reference_label[:1].upper() + reference_label[1:] + ": "
            caption += reference_note or "figure as published"
        if ci:
            caption = (caption + ". " if caption else "") + "Brackets: 95% bootstrap interval."
        return self.add_table(rows, caption=caption)

    def add_image(self, png_bytes, caption=None) -> HTMLReport:
        """Embeds PNG bytes as a `data:` URI, with an optional caption."""
        self._parts.append(_figure(png_bytes, caption))
        return self

    def add_images_grid(self, items) -> HTMLReport:
        """Embeds several `(png_bytes, caption)` pairs in a responsive grid."""
        figures = [_figure(png, caption) for png, caption in items]
        self._parts.append('<div class="grid">\n' + "\n".join(figures) + "\n</div>")
        return self

    def to_html(self) -> str:
        """Returns the complete HTML document as text."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        body = "\n".join(self._parts)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(self.title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
            f"<h1>{_esc(self.title)}</h1>\n"
            f'<p class="meta">Generated {stamp}</p>\n{body}\n</body>\n</html>\n'
        )

    def write(self, path) -> Path:
        """Writes the report to `path` (UTF-8), atomically; parent folders are created."""
        return _atomic_write_bytes(path, self.to_html().encode("utf-8"))


# --------------------------------------------------------------------------- helpers


def _atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write_bytes(path, data)


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


def _flatten(tree, prefix=""):
    flat = {}
    if not isinstance(tree, Mapping):
        raise ValueError(f"expected a dict of metrics, got {type(tree).__name__}")
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name} / "))
        else:
            flat[name] = value
    return flat


def _is_interval(value):
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
        return False
    return len(value) == 2 and all(isinstance(v, (int, float, np.number)) for v in value)


def _is_value_with_ci(value):
    return (
        isinstance(value, tuple)
        and not isinstance(value, ValueCI)
        and len(value) == 2
        and isinstance(value[0], (int, float, np.number))
        and _is_interval(value[1])
    )


def _numeric_pair(a, b, minimum=1):
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"arrays differ in length: {a.size} and {b.size}")
    if a.size < minimum:
        raise ValueError(f"need at least {minimum} values, got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("values must be finite (no NaN or infinity)")
    return a, b


def _binary_pair(y_true, prob):
    y_true, prob = _numeric_pair(y_true, prob, minimum=1)
    if not np.all((y_true == 0) | (y_true == 1)):
        raise ValueError("y_true must be binary (0 or 1)")
    if prob.min() < 0 or prob.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    return y_true, prob


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _check_png(png_bytes):
    if not isinstance(png_bytes, (bytes, bytearray)) or not bytes(png_bytes[:8]) == PNG_SIGNATURE:
        raise ValueError("expected PNG bytes (from a plot_* function)")


def _figure(png_bytes, caption):
    _check_png(png_bytes)
    data = base64.b64encode(bytes(png_bytes)).decode("ascii")
    alt = _esc(caption or "figure")
    text = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">{text}</figure>'


def _to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    fig.clear()
    return buffer.getvalue()


def _message_png(message) -> bytes:
    fig = Figure(figsize=(4.0, 1.5), dpi=_DPI)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555")
    return _to_png(fig)
