"""Plots as PNG bytes: learning curves, classification and regression figures, image overlays.

Plots are drawn on a private `matplotlib.figure.Figure` with the Agg renderer (never `pyplot`), so
they leave no global state behind and are safe in threads and tests. Every function returns the
PNG file's bytes; `HTMLReport.add_image` embeds them, `save_png` writes them.

Overlays (attention, CAM, saliency, hotspots) all go through `overlay_map` (blend) and
`image_png` (draw with a title and a colour bar, encode), so every overlay of every package carries
a colour bar that says what its colours mean.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping

import cv2
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

from common.reports.stats import bland_altman_stats
from common.reports.stats import expected_calibration_error
from common.reports.stats import format_value
from common.reports.stats import interval_calibration_table
from common.reports.stats import numeric_pair
from common.reports.stats import reliability_table

_DPI = 100
_WORDS = {
    "mae": "MAE",
    "rmse": "RMSE",
    "auc": "AUC",
    "auroc": "AUROC",
    "kl": "KL",
    "map": "mAP",
    "ap": "AP",
    "lr": "learning rate",
    "ece": "ECE",
    "iou": "IoU",
}
_TAGS = re.compile(r"\(?\bpaper \d{3}\b[,;]?\s*\)?\s*", re.IGNORECASE)


def readable_label(key) -> str:
    """A human label for a metric key: `val_mean_per_class_accuracy` -> `mean per class accuracy`.

    Underscores become spaces, known abbreviations are capitalised (MAE, RMSE, AUC, KL, mAP) and
    internal tags such as "paper 003" are dropped.

    Args:
        key: a `history.csv` column or metric name.

    Returns:
        The label (without the `val_` prefix: the legend says train or validation).
    """
    text = str(key)
    text = text[4:] if text.startswith("val_") else text
    words = [_WORDS.get(word.lower(), word) for word in re.split(r"[_\s]+", text) if word]
    return _TAGS.sub("", " ".join(words)).strip()


def plot_learning_curves(history_frame, title=None) -> bytes:
    """Plots one panel per metric (training with validation) over epochs, the learning rate apart.

    The x axis shows whole epochs only and, with a single epoch, the range around it (not a
    -0.04..0.04 span); panel titles are readable labels (`readable_label`), not raw keys.

    Args:
        history_frame: a DataFrame as `read_history` returns; `epoch` is the x axis when present.
        title: optional title over all panels (e.g. which model of several).

    Returns:
        PNG bytes.
    """
    if not isinstance(history_frame, pd.DataFrame):
        raise ValueError(f"history_frame must be a DataFrame, got {type(history_frame).__name__}")
    frame = history_frame
    if "epoch" in frame.columns:
        x = frame["epoch"].to_numpy(dtype=float)
        # the engine counts from 0; people count epochs from 1
        x = x + 1 if len(x) and np.nanmin(x) == 0 else x
    else:
        x = np.arange(1, len(frame) + 1, dtype=float)
    names = []
    for column in frame.columns:
        if column in ("epoch", "lr", "learning_rate"):
            continue
        if not frame[column].notna().any():
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
    fig = Figure(figsize=(3.6 * columns, 2.9 * rows + (0.3 if title else 0)), dpi=_DPI)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names, strict=False):
        for column, label, style in ((name, "training", "-o"), (f"val_{name}", "validation", "-s")):
            if column in frame.columns and frame[column].notna().any():
                axis.plot(x, frame[column].to_numpy(dtype=float), style, label=label, markersize=4)
        axis.set_title(readable_label(name), fontsize=11)
        axis.legend(fontsize=9)
    if lr_column is not None:
        axis = axes[len(names)]
        values = frame[lr_column].to_numpy(dtype=float)
        axis.plot(x, values, "-o", color="tab:green", markersize=4)
        if np.all(values[np.isfinite(values)] > 0) and np.isfinite(values).any():
            axis.set_yscale("log")
        axis.set_title("learning rate", fontsize=11)
    for axis in axes[:panels]:
        _epoch_axis(axis, x)
    for axis in axes[panels:]:
        axis.set_visible(False)
    if title:
        fig.suptitle(readable_label(title), fontsize=12)
    return _to_png(fig)


def _epoch_axis(axis, x):
    finite = x[np.isfinite(x)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (1.0, 1.0)
    axis.set_xlim(low - 0.5, high + 0.5)
    step = max(1, int(math.ceil((high - low + 1) / 8)))
    axis.set_xticks(np.arange(low, high + 1, step))
    axis.set_xlabel("epoch")
    axis.tick_params(labelsize=9)
    axis.grid(alpha=0.3)


def plot_confusion_matrix(cm, class_names, normalize=True, title=None) -> bytes:
    """Plots a confusion matrix (rows: true class, columns: predicted class) with counts.

    Args:
        cm: `(C, C)` counts.
        class_names: C names.
        normalize: colour and label each row by its fraction of the true class (counts below).
        title: optional title (default "confusion matrix").

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
    # Small figures with large digits: the report shows them in a grid, scaled down.
    size = max(3.0, 0.55 * len(names) + 1.6)
    fig = Figure(figsize=(size + 0.6, size), dpi=_DPI, layout="constrained")
    axis = fig.subplots()
    image = axis.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=axis, fraction=0.046)
    fontsize = 12 if len(names) <= 5 else 10
    threshold = (1.0 if normalize else max(shown.max(), 1e-12)) / 2.0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            count = int(round(cm[i, j]))
            text = f"{fractions[i, j]:.2f}\n({count})" if normalize else str(count)
            color = "white" if shown[i, j] > threshold else "black"
            axis.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
    ticks = np.arange(len(names))
    axis.set_xticks(ticks, names, rotation=45 if len(names) > 3 else 0, ha="right", fontsize=10)
    axis.set_yticks(ticks, names, fontsize=10)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title or ("confusion matrix" + (" (row-normalised)" if normalize else "")))
    return _to_png(fig)


def plot_roc(curves, title="ROC") -> bytes:
    """Plots ROC curves, one per entry, with the AUC in the legend.

    Args:
        curves: `{name: (fpr, tpr, auc)}` with `fpr`, `tpr` arrays of equal length (as
            `common.reports.stats.roc_curves` returns).
        title: the plot's title.

    Returns:
        PNG bytes.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {name: (fpr, tpr, auc)}")
    fig = Figure(figsize=(4.8, 4.5), dpi=_DPI, layout="constrained")
    axis = fig.subplots()
    axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="chance")
    for name, (fpr, tpr, auc) in curves.items():
        fpr, tpr = numeric_pair(fpr, tpr, minimum=2)
        axis.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {format_value(float(auc))})")
    axis.set_aspect("equal")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.set_xlabel("false positive rate (1 - specificity)")
    axis.set_ylabel("true positive rate (sensitivity)")
    axis.set_title(title)
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
    top.set_title("reliability (ECE: expected calibration error)")
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
    y_true, y_pred = numeric_pair(y_true, y_pred, minimum=1)
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
    y_true, y_pred = numeric_pair(y_true, y_pred, minimum=2)
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


def plot_interval_calibration(y_true, y_pred, unit="") -> bytes:
    """Plots the observed coverage of the implied prediction intervals against their nominal level.

    See `common.reports.stats.interval_calibration_table`: intervals `pred - bias +- z_q SD`;
    points on the diagonal mean the intervals hold what they promise.

    Args:
        y_true: `(N,)` reference values.
        y_pred: `(N,)` predictions, N >= 2.
        unit: unit of the half-widths shown beside the points, e.g. "months".

    Returns:
        PNG bytes.
    """
    table = interval_calibration_table(y_true, y_pred)
    fig = Figure(figsize=(4.8, 4.5), dpi=_DPI, layout="constrained")
    axis = fig.subplots()
    axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="calibrated")
    axis.plot(table["nominal"], table["observed"], "-o", markersize=5, label="this run")
    suffix = f" {unit}" if unit else ""
    widths = "\n".join(
        f"{row.nominal:.0%}: ±{format_value(row.half_width)}{suffix}" for row in table.itertuples()
    )
    axis.text(
        0.97, 0.03, "half-widths\n" + widths, transform=axis.transAxes, ha="right", va="bottom",
        fontsize=8, bbox={"facecolor": "white", "edgecolor": "#ccc", "alpha": 0.9},
    )  # fmt: skip
    axis.set_xlim(0.4, 1.0)
    axis.set_ylim(0.0, 1.02)
    axis.set_xlabel("nominal coverage of pred − bias ± z·SD")
    axis.set_ylabel("observed coverage")
    axis.set_title(f"interval calibration (N = {len(np.ravel(y_true))})")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    return _to_png(fig)


def overlay_map(image01, heatmap, alpha=0.45, cmap="jet", value_range=None, weight_by_value=False):
    """Blends a colour-mapped heat map (attention, CAM, saliency) over a grayscale image.

    Args:
        image01: `(H, W)`, `(H, W, 1)` or `(H, W, 3)` image in [0, 1].
        heatmap: `(h, w)` or `(h, w, 1)` map of any range; resized bilinearly to `(H, W)`, then
            scaled to [0, 1] by `value_range` (default: its own min and max; a constant map
            becomes 0).
        alpha: weight of the heat map, in [0, 1].
        cmap: a matplotlib colormap name.
        value_range: `(low, high)` mapped to the colour map's ends, or None (min-max).
        weight_by_value: scale the weight per pixel by the scaled map, so that low values leave
            the film visible (attention maps over anatomy).

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
    low, high = value_range if value_range is not None else (heat.min(), heat.max())
    span = float(high) - float(low)
    heat = np.clip((heat - low) / span, 0, 1) if span > 0 else np.zeros_like(heat)
    colored = colormaps[cmap](heat)[..., :3].astype(np.float32)
    weight = alpha * heat[..., None] if weight_by_value else alpha
    blended = (1.0 - weight) * np.clip(image, 0.0, 1.0) + weight * colored
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_png(
    rgb,
    title=None,
    *,
    cmap=None,
    value_range=(0.0, 1.0),
    colorbar_label=None,
    width_in=4.0,
    height_px=None,
) -> bytes:
    """Draws an RGB picture (an overlay, a panel of overlays) with a title and a colour bar; PNG.

    The one function every package's overlays go through (evaluate's reports and predict's
    `--explain` files alike), so each overlay says what its colours mean.

    Args:
        rgb: uint8 or [0, 1] float `(H, W, 3)` picture (or `(H, W)` grayscale).
        title: text above (a file name, hashed ID and prediction; never a patient name).
        cmap: the colour map the heat was painted with (a name or a `Colormap`); None draws no
            colour bar (a plain film).
        value_range: the values at the colour map's ends, as labelled on the colour bar.
        colorbar_label: the colour bar's label, e.g. "attention weight" or "relative |CAM|".
        width_in: width of the picture in inches at 100 dpi.
        height_px: the PNG's exact height in pixels (the width follows the picture's aspect);
            None: from `width_in`.

    Returns:
        PNG bytes.
    """
    picture = np.asarray(rgb)
    if picture.ndim == 2:
        picture = np.repeat(picture[..., None], 3, axis=-1)
    if picture.ndim != 3 or picture.shape[-1] != 3:
        raise ValueError(f"rgb must be (H, W, 3) or (H, W), got shape {picture.shape}")
    if picture.dtype != np.uint8:
        picture = np.round(np.clip(picture.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    height, width = picture.shape[:2]
    bar = 0.75 if cmap is not None else 0.0
    extra = (0.45 * (1 + str(title).count("\n"))) if title else 0.0
    if height_px is not None:
        total = float(height_px) / _DPI
        width_in = max(1.0, (total - extra) * width / height)
        size = (width_in + bar, total)
    else:
        size = (width_in + bar, max(1.5, width_in * height / width) + extra)
    fig = Figure(figsize=size, dpi=_DPI)
    fig.set_layout_engine("constrained")
    axis = fig.subplots()
    axis.imshow(picture, interpolation="antialiased")
    axis.set_axis_off()
    if title:
        axis.set_title(str(title), fontsize=10)
    if cmap is not None:
        low, high = value_range
        mappable = _scalar_mappable(cmap, low, high)
        colorbar = fig.colorbar(mappable, ax=axis, fraction=0.05, pad=0.02)
        colorbar.ax.tick_params(labelsize=8)
        if colorbar_label:
            colorbar.set_label(colorbar_label, fontsize=9)
    return _to_png(fig)


def overlay_png(
    image01,
    heatmap,
    title=None,
    alpha=0.45,
    cmap="jet",
    colorbar_label="relative weight (min–max of this map)",
    value_range=None,
    weight_by_value=False,
    height_px=None,
) -> bytes:
    """Returns a PNG of `overlay_map(image01, heatmap)` with an optional title and a colour bar.

    Args:
        image01: the image in [0, 1] (see `overlay_map`).
        heatmap: the map to overlay (see `overlay_map`).
        title: optional title above the image (a file name or hashed ID, never a patient name).
        alpha: weight of the heat map.
        cmap: matplotlib colormap name.
        colorbar_label: label of the colour bar.
        value_range: `(low, high)` of the map shown at the colour map's ends; None scales the
            map to its own min..max (the colour bar then reads 0..1 relative).
        weight_by_value: see `overlay_map`.
        height_px: the PNG's exact height in pixels, or None (see `image_png`).

    Returns:
        PNG bytes.
    """
    rgb = overlay_map(
        image01,
        heatmap,
        alpha=alpha,
        cmap=cmap,
        value_range=value_range,
        weight_by_value=weight_by_value,
    )
    return image_png(
        rgb,
        title,
        cmap=cmap,
        value_range=value_range if value_range is not None else (0.0, 1.0),
        colorbar_label=colorbar_label,
        height_px=height_px,
    )


def localisation_panel_png(image01, maps, mask=None, title=None, height_px=None) -> bytes:
    """One image's maps side by side: the model's and the content-blind controls' (issue 15.1).

    Args:
        image01: the image in [0, 1], `(H, W)` or `(H, W, 1)`.
        maps: `{label: map}` in the order to draw, e.g. `{"model": cam, "untrained": cam0,
            "centre prior": prior}`; each is min-max scaled on its own (the colour bar reads
            relative weight).
        mask: optional lesion mask `(H, W)`; its outline is drawn in white on every panel.
        title: text above the row (an identifier-free caption).
        height_px: the PNG's exact height in pixels, or None.

    Returns:
        PNG bytes.
    """
    image = np.asarray(image01, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    panels = []
    outline = None
    if mask is not None:
        mask_u8 = (np.asarray(mask, np.float32) > 0.5).astype(np.uint8)
        mask_u8 = cv2.resize(mask_u8, image.shape[::-1], interpolation=cv2.INTER_NEAREST)
        outline = cv2.morphologyEx(mask_u8, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    for label, heat in maps.items():
        rgb = overlay_map(image, heat, alpha=0.5)
        if outline is not None:
            rgb[outline] = 255
        cv2.putText(rgb, str(label), (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
        panels.append(rgb)
        panels.append(np.full((rgb.shape[0], 2, 3), 255, np.uint8))
    row = np.concatenate(panels[:-1], axis=1)
    return image_png(
        row,
        title,
        cmap="jet",
        colorbar_label="relative weight (min–max of each map)",
        height_px=height_px,
    )


def encode_png(rgb) -> bytes:
    """Encodes a uint8 RGB `(H, W, 3)` array as PNG bytes, as is (no title, no colour bar)."""
    picture = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a PNG")
    return encoded.tobytes()


def _scalar_mappable(cmap, low, high):
    from matplotlib.cm import ScalarMappable

    colormap = colormaps[cmap] if isinstance(cmap, str) else cmap
    return ScalarMappable(norm=mcolors.Normalize(vmin=low, vmax=high), cmap=colormap)


def figure_png(fig) -> bytes:
    """Encodes a `matplotlib.figure.Figure` (drawn by a package's own plot) as PNG bytes."""
    return _to_png(fig)


def _to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    fig.clear()
    return buffer.getvalue()


def _message_png(message) -> bytes:
    fig = Figure(figsize=(4.0, 1.5), dpi=_DPI)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555")
    return _to_png(fig)
