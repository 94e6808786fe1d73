"""The numbers behind the report: one number format, intervals, calibration and agreement statistics.

One format for every table and plot label: `format_value` rounds to significant figures (3 by
default), and a value with its interval shares one number of decimals (`26.1 [8.3, 48.3]`, never
`26.06 [8.254, 48.33]`). An interval that cannot be estimated (one case, one class) prints as
`n/a (1 case)`, never as a degenerate `[x, x]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn import metrics as skm

DEFAULT_DIGITS = 3


class ValueCI(NamedTuple):
    """A value with its confidence interval; a table shows it as `0.630 [0.580, 0.680]`.

    `note` replaces the bracketed interval with `n/a (note)` when the interval is undefined.
    """

    value: float
    low: float
    high: float
    note: str | None = None


class NotAvailable(NamedTuple):
    """A value that is undefined for a reason (`n/a (1 class)`), shown as such in tables."""

    reason: str


class Published(NamedTuple):
    """A figure quoted from a paper: shown as published (never re-rounded, which misquotes it)."""

    value: float


def value_with_ci(value, interval, *, cases=None, classes=None, unit="case"):
    """Returns a table cell for `value` with its 95% interval, or the reason there is none.

    Args:
        value: the point estimate (None or NaN: missing).
        interval: `(low, high)`, or None when the bootstrap gave none.
        cases: the number of cases the value rests on; 1 makes the interval `n/a (1 case)`.
        unit: what a case is (the bootstrap's unit: "case", "patient", ...).
        classes: the number of classes present in the truth; 1 makes the value itself
            `n/a (1 class)` (kappa, AUROC and friends are undefined on one class).

    Returns:
        `ValueCI`, `NotAvailable`, a float or None.
    """
    if classes is not None and int(classes) < 2:
        return NotAvailable(f"{int(classes)} class")
    if value is None or not _finite(value):
        return None
    value = float(value)
    if cases is not None and int(cases) < 2:
        return ValueCI(value, math.nan, math.nan, count_noun(cases, unit))
    if interval is None or not _is_interval(interval) or not all(_finite(v) for v in interval):
        return ValueCI(value, math.nan, math.nan, "no interval")
    return ValueCI(value, float(interval[0]), float(interval[1]))


def count_noun(count, singular, plural=None) -> str:
    """Returns "1 patient", "6 patients": a count with its noun in the right number."""
    count = int(count)
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def decimals_for(value, digits=DEFAULT_DIGITS) -> int:
    """Returns the number of decimals that shows `value` to `digits` significant figures (>= 0)."""
    value = abs(float(value))
    if value == 0 or not math.isfinite(value):
        return max(0, digits - 1)
    return max(0, digits - 1 - math.floor(math.log10(value)))


def format_value(value, digits=DEFAULT_DIGITS) -> str:
    """Formats a table cell or a plot label: the suite's one number format.

    Args:
        value: None, bool, int, float, numpy scalar, `ValueCI`, `NotAvailable`, a
            `(value, (low, high))` pair, or anything else (shown with `str`).
        digits: significant figures of a float (3 suits accuracies, kappas, AUCs and errors in
            months alike); a value and its interval share the decimals of the value.

    Returns:
        The text (not yet HTML-escaped). Missing values (None, NaN) are an en dash.
    """
    if isinstance(value, NotAvailable):
        return f"n/a ({value.reason})"
    if isinstance(value, Published):
        number = value.value
        if isinstance(number, (float, np.floating)) and math.isfinite(float(number)):
            # as printed in the paper; a figure derived from it (a mean) to 4 significant digits
            text = repr(float(number)).removesuffix(".0")
            short = f"{float(number):.4g}"
            return text if len(text) <= len(short) else short
        return format_value(number, digits)
    if isinstance(value, ValueCI):
        return _format_ci(value, digits)
    if _is_value_with_ci(value):
        number, (low, high) = value
        return _format_ci(value_with_ci(number, (low, high)) or ValueCI(number, low, high), digits)
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
        if abs(number) >= 10 ** (digits + 1):
            return f"{number:.0f}"
        if abs(number) < 1e-3:
            return f"{number:.{max(digits - 1, 0)}e}"
        text = f"{number:.{decimals_for(number, digits)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def _format_ci(cell, digits):
    if not _finite(cell.value):
        return "–"
    if cell.note is not None:
        return f"{format_value(float(cell.value), digits)} [n/a ({cell.note})]"
    if abs(cell.value) >= 10 ** (digits + 1) or (cell.value != 0 and abs(cell.value) < 1e-3):
        parts = [format_value(float(v), digits) for v in (cell.value, cell.low, cell.high)]
        return f"{parts[0]} [{parts[1]}, {parts[2]}]"
    places = decimals_for(cell.value, digits)
    value, low, high = (f"{float(v):.{places}f}" for v in (cell.value, cell.low, cell.high))
    return f"{value} [{low}, {high}]"


# --------------------------------------------------------------------------- classification


def reliability_table(y_true, prob, n_bins=10) -> pd.DataFrame:
    """Bins predicted probabilities into `n_bins` equal bins on [0, 1] (a reliability diagram).

    `sklearn.calibration.calibration_curve` drops empty bins and gives no counts, which the
    expected calibration error and the count panel need; hence this table.

    Args:
        y_true: `(N,)` binary labels (0/1 or bool).
        prob: `(N,)` predicted probabilities of the positive class, in [0, 1].
        n_bins: number of equal-width bins, >= 1.

    Returns:
        One row per bin: `low`, `high`, `count`, `mean_prob` and `fraction_positive` (NaN for
        an empty bin).
    """
    y_true, prob = binary_pair(y_true, prob)
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


def roc_curves(y_true, prob, class_names=None, groups=None) -> dict:
    """ROC curves (scikit-learn's `roc_curve` and `roc_auc_score`) per class or per group.

    Args:
        y_true: `(N,)` labels: 0/1 with `(N,)` probabilities, or class indices with `(N, C)`.
        prob: `(N,)` positive-class probabilities or `(N, C)` class probabilities.
        class_names: C names (multi-class: one one-vs-rest curve per class).
        groups: optional `(N,)` group labels (binary only): one curve overall and one per group.

    Returns:
        `{name: (fpr, tpr, auc)}`; a class or group with one class present gets no curve (its
        AUC is undefined), so the dict may be empty.
    """
    labels = np.asarray(y_true).reshape(-1)
    prob = np.asarray(prob, dtype=np.float64)
    series = {}
    if prob.ndim == 1:
        series["overall" if groups is not None else "positive"] = (labels, prob)
        if groups is not None:
            groups = np.asarray(groups).reshape(-1)
            for group in sorted(set(groups.tolist()), key=str):
                mask = groups == group
                series[str(group)] = (labels[mask], prob[mask])
    elif prob.ndim == 2:
        names = _class_names(class_names, prob.shape[1])
        chosen = [1] if prob.shape[1] == 2 else range(prob.shape[1])
        for k in chosen:
            series[names[k]] = ((labels == k).astype(int), prob[:, k])
    else:
        raise ValueError(f"prob must be (N,) or (N, C), got shape {prob.shape}")
    curves = {}
    for name, (truth, p) in series.items():
        if len(np.unique(truth)) < 2:
            continue
        fpr, tpr, _ = skm.roc_curve(truth, p)
        curves[name] = (fpr, tpr, float(skm.roc_auc_score(truth, p)))
    return curves


def confusion_counts(y_true, y_pred, num_classes) -> np.ndarray:
    """Returns the `(C, C)` confusion matrix (rows: true class) through scikit-learn."""
    return skm.confusion_matrix(
        np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1), labels=range(num_classes)
    )


# --------------------------------------------------------------------------- regression


def bland_altman_stats(y_true, y_pred) -> dict:
    """Returns the Bland-Altman bias and limits of agreement of `y_pred - y_true`.

    Args:
        y_true: `(N,)` reference values.
        y_pred: `(N,)` predictions, N >= 2.

    Returns:
        `{"mean_difference", "sd_difference", "lower_limit", "upper_limit"}` with the limits at
        mean +- 1.96 SD (sample SD, ddof=1).
    """
    y_true, y_pred = numeric_pair(y_true, y_pred, minimum=2)
    difference = y_pred - y_true
    mean = float(difference.mean())
    sd = float(difference.std(ddof=1))
    return {
        "mean_difference": mean,
        "sd_difference": sd,
        "lower_limit": mean - 1.96 * sd,
        "upper_limit": mean + 1.96 * sd,
    }


def interval_calibration_table(y_true, y_pred, levels=(0.5, 0.68, 0.8, 0.9, 0.95)):
    """Coverage of the prediction intervals that the Bland-Altman bias and SD imply.

    A regression model here gives point predictions; its interval at level q is
    `pred - bias +- z_q * sd` (the Bland-Altman limits of agreement are the 95% one). If the
    errors are as Gaussian as those intervals assume, a fraction q of the cases falls inside;
    heavy tails or a drift with age show as observed coverage off the diagonal.

    Args:
        y_true: `(N,)` reference values.
        y_pred: `(N,)` predictions, N >= 2.
        levels: nominal coverages in (0, 1).

    Returns:
        One row per level: `nominal`, `half_width`, `observed` (fraction of cases inside).
    """
    stats = bland_altman_stats(y_true, y_pred)
    y_true, y_pred = numeric_pair(y_true, y_pred, minimum=2)
    residual = (y_pred - stats["mean_difference"]) - y_true
    rows = []
    for level in levels:
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"levels must lie in (0, 1), got {level}")
        half = NormalDist().inv_cdf(0.5 + float(level) / 2.0) * stats["sd_difference"]
        rows.append(
            {
                "nominal": float(level),
                "half_width": half,
                "observed": float(np.mean(np.abs(residual) <= half)),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- helpers


def _finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _class_names(class_names, count):
    names = [str(n) for n in class_names] if class_names is not None else None
    if names is not None and len(names) != count:
        raise ValueError(f"class_names has {len(names)} names for {count} classes")
    return names or [f"class {k}" for k in range(count)]


def _is_interval(value):
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
        return False
    return len(value) == 2 and all(isinstance(v, (int, float, np.number)) for v in value)


def _is_value_with_ci(value):
    return (
        isinstance(value, tuple)
        and not isinstance(value, (ValueCI, NotAvailable, Published))
        and len(value) == 2
        and isinstance(value[0], (int, float, np.number))
        and _is_interval(value[1])
    )


def numeric_pair(a, b, minimum=1):
    """Returns `a` and `b` as finite float64 vectors of equal length >= `minimum`."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"arrays differ in length: {a.size} and {b.size}")
    if a.size < minimum:
        raise ValueError(f"need at least {minimum} values, got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("values must be finite (no NaN or infinity)")
    return a, b


def binary_pair(y_true, prob):
    """Returns binary labels and probabilities in [0, 1] as float64 vectors (ValueError else)."""
    y_true, prob = numeric_pair(y_true, prob, minimum=1)
    if not np.all((y_true == 0) | (y_true == 1)):
        raise ValueError("y_true must be binary (0 or 1)")
    if prob.min() < 0 or prob.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    return y_true, prob
