"""Numpy evaluation metrics of the five papers, each checked against scikit-learn, with bootstrap intervals.

Every metric takes array-likes (lists, numpy arrays, pandas Series) and returns a Python float (or a
dict / arrays where named). Bad input a user can cause (empty arrays, mismatched lengths, labels that
are not class indices) raises `ValueError` with a message that says what is wrong.

Classification metrics take integer class labels `0..num_classes-1`, shape `(n,)` or `(n, 1)`; drop
missing labels (e.g. -1) before calling them. Regression metrics take float arrays of any matching
shape `(n, ...)`; NaN targets are missing labels and are ignored, predictions must be finite.

`bootstrap_ci` resamples rows (or whole groups, e.g. patients) with a seeded generator. For the metrics
of this module it does not call the metric once per resample: each metric is reduced from per-row
statistics, so a resample is a vector of row counts and 1000 resamples are one matrix product.

Reference:
    000: Gorriz et al., "Assessing knee OA severity with CNN attention-based end-to-end architectures"
    (accuracy, Cohen's kappa). 001: "DEEPR: predicting joint damage from radiographs using CNN with
    attention", §4.3.2 (weighted RMSE and weighted absolute error). 002: Jamaludin et al., "SpineNet"
    (average per-class accuracy). MURA (Rajpurkar et al., 2017): kappa, AUROC, sensitivity, specificity.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd

__all__ = [
    "accuracy",
    "average_per_class_accuracy",
    "bootstrap_ci",
    "cohen_kappa",
    "confusion_matrix",
    "mae",
    "metric_with_ci",
    "per_class_accuracy",
    "rmse",
    "roc_auc",
    "roc_curve",
    "sensitivity",
    "specificity",
    "weighted_mae",
    "weighted_rmse",
    "within_k_accuracy",
]

# Elements of one (resamples x rows) block of the vectorised bootstrap: bounds its memory (~32 MB).
_BOOTSTRAP_BLOCK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------
def _as_array(name, x):
    """Returns `x` as a numpy array with at least one row, or raises a ValueError naming `name`."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` could not be read as an array: {e}") from e
    if a.ndim == 0:
        raise ValueError(f"`{name}` must be an array of values, got the scalar {a.item()!r}.")
    if a.shape[0] == 0:
        raise ValueError(f"`{name}` is empty: a metric needs at least one example.")
    return a


def _check_lengths(**arrays):
    """Raises a ValueError when the arrays do not have the same number of rows."""
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"`{name}` has {n}" for name, n in lengths.items())
        raise ValueError(f"Mismatched lengths: {described} rows; they must be equal.")


def _labels(name, x):
    """Integer class labels, shape (n,), from an array-like of shape (n,) or (n, 1)."""
    a = _as_array(name, x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be class labels of shape (n,) or (n, 1), got {a.shape}.")
    if a.dtype == bool:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        try:
            f = a.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"`{name}` must hold integer class labels 0..num_classes-1, got dtype {a.dtype}."
            ) from e
        if not np.all(np.isfinite(f)):
            raise ValueError(
                f"`{name}` contains NaN or infinite labels; drop missing labels before computing "
                "classification metrics."
            )
        if np.any(f != np.round(f)):
            bad = f[f != np.round(f)][0]
            raise ValueError(f"`{name}` must hold integer class labels, found {bad!r}.")
        a = f
    a = a.astype(np.int64)
    if a.min() < 0:
        raise ValueError(
            f"`{name}` contains the negative label {int(a.min())}: class labels are "
            "0..num_classes-1 (drop missing labels such as -1 first)."
        )
    return a


def _label_pair(y_true, y_pred, num_classes=None):
    """Checked integer labels (t, p) and the number of classes K."""
    t = _labels("y_true", y_true)
    p = _labels("y_pred", y_pred)
    _check_lengths(y_true=t, y_pred=p)
    largest = int(max(t.max(), p.max()))
    if num_classes is None:
        return t, p, largest + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes}.")
    if largest >= num_classes:
        raise ValueError(
            f"Label {largest} is outside 0..{num_classes - 1} (num_classes={num_classes})."
        )
    return t, p, int(num_classes)


def _binary(name, x):
    """Binary labels 0/1, shape (n,)."""
    a = _labels(name, x)
    if a.max() > 1:
        raise ValueError(f"`{name}` must hold binary labels 0/1, found {int(a.max())}.")
    return a


def _scores(name, x):
    """Finite float scores, shape (n,)."""
    a = _as_array(name, x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"`{name}` must have shape (n,) or (n, 1), got {a.shape}.")
    try:
        a = a.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be numeric, got dtype {a.dtype}.") from e
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return a


def _regression_pair(y_true, y_pred):
    """Float targets and predictions as (n, m) arrays; NaN targets are missing, predictions finite."""
    t = _as_array("y_true", y_true)
    p = _as_array("y_pred", y_pred)
    try:
        t = t.astype(np.float64)
        p = p.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`y_true` and `y_pred` must be numeric: {e}") from e
    _check_lengths(y_true=t, y_pred=p)
    if t.shape != p.shape:
        # Accept (n,) against (n, 1), the usual shapes of a target column and a model output.
        if t.reshape(len(t), -1).shape == p.reshape(len(p), -1).shape and t.size == p.size:
            p = p.reshape(t.shape)
        else:
            raise ValueError(
                f"`y_true` has shape {t.shape} but `y_pred` has shape {p.shape}; they must match."
            )
    if np.any(np.isinf(t)):
        raise ValueError("`y_true` contains infinite values (use NaN for a missing target).")
    valid = ~np.isnan(t)
    if not np.all(np.isfinite(p[valid])):
        raise ValueError("`y_pred` contains NaN or infinite values where a target is given.")
    return t, p, valid


def _weights_like(weights, shape):
    """Non-negative finite weights broadcast to `shape` (a 1-D vector is matched to the last axis)."""
    w = np.asarray(weights, dtype=np.float64)
    try:
        w = np.broadcast_to(w, shape)
    except ValueError as e:
        last = shape[-1] if len(shape) > 1 else shape[0]
        raise ValueError(
            f"`weights` of shape {w.shape} do not fit targets of shape {shape}: give one weight per "
            f"column ({last},) or one per entry {shape}."
        ) from e
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("`weights` must be finite and non-negative.")
    return w


# --------------------------------------------------------------------------------------------------
# Row-count reductions: a metric is computed from per-row statistics weighted by row counts, which
# gives the metric itself (counts = 1) and any bootstrap resample (counts = multiplicities) alike.
# --------------------------------------------------------------------------------------------------
def _ratio(numerator, denominator):
    """numerator / denominator, NaN where the denominator is 0 (the metric is undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


class _CodeSums:
    """Sums the columns of a (B, n) count matrix per integer code of the n rows, giving (B, n_codes)."""

    def __init__(self, codes, n_codes):
        self.order = np.argsort(codes, kind="stable")
        sorted_codes = codes[self.order]
        self.starts = np.flatnonzero(np.diff(sorted_codes, prepend=-1) != 0)
        self.present = sorted_codes[self.starts]
        self.n_codes = n_codes

    def __call__(self, counts):
        out = np.zeros((counts.shape[0], self.n_codes))
        if len(self.order):
            out[:, self.present] = np.add.reduceat(counts[:, self.order], self.starts, axis=1)
        return out


def _accuracy_rows(y_true, y_pred):
    t, p, _ = _label_pair(y_true, y_pred)
    correct = (t == p).astype(np.float64)
    return len(t), lambda counts: _ratio(counts @ correct, counts.sum(axis=1))


def _confusion_rows(y_true, y_pred, num_classes=None):
    """(n, K, reducer) where reducer(counts) gives confusion matrices of shape (B, K, K)."""
    t, p, k = _label_pair(y_true, y_pred, num_classes)
    sums = _CodeSums(t * k + p, k * k)
    return len(t), k, lambda counts: sums(counts).reshape(-1, k, k)


def _average_per_class_accuracy_rows(y_true, y_pred, num_classes=None):
    n, _, confusion = _confusion_rows(y_true, y_pred, num_classes)

    def reduce(counts):
        c = confusion(counts)
        per_class = _ratio(np.diagonal(c, axis1=1, axis2=2), c.sum(axis=2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN row: undefined resample
            return np.nanmean(per_class, axis=1)

    return n, reduce


def _kappa_weight_matrix(k, weights):
    if weights is None:
        return 1.0 - np.eye(k)
    if weights not in ("linear", "quadratic"):
        raise ValueError(
            f"Unknown kappa weights {weights!r}. Available: [None, 'linear', 'quadratic']"
        )
    grid = np.arange(k, dtype=np.float64)
    diff = grid[:, None] - grid[None, :]
    return np.abs(diff) if weights == "linear" else diff**2


def _cohen_kappa_rows(y_true, y_pred, weights=None, num_classes=None, replace_undefined_by=np.nan):
    n, k, confusion = _confusion_rows(y_true, y_pred, num_classes)
    w = _kappa_weight_matrix(k, weights)

    def reduce(counts):
        c = confusion(counts)
        total = c.sum(axis=(1, 2))
        expected = c.sum(axis=2)[:, :, None] * c.sum(axis=1)[:, None, :] / total[:, None, None]
        observed = (w * c).sum(axis=(1, 2))
        chance = (w * expected).sum(axis=(1, 2))
        return np.where(chance > 0, 1.0 - _ratio(observed, chance), replace_undefined_by)

    return n, reduce


def _rate_rows(y_true, y_pred, positive):
    t = _binary("y_true", y_true)
    p = _binary("y_pred", y_pred)
    _check_lengths(y_true=t, y_pred=p)
    relevant = (t == positive).astype(np.float64)
    hit = ((t == positive) & (p == positive)).astype(np.float64)
    return len(t), lambda counts: _ratio(counts @ hit, counts @ relevant)


def _sensitivity_rows(y_true, y_pred):
    return _rate_rows(y_true, y_pred, 1)


def _specificity_rows(y_true, y_pred):
    return _rate_rows(y_true, y_pred, 0)


def _within_k_rows(y_true, y_pred, k=1):
    t = _scores("y_true", y_true)
    p = _scores("y_pred", y_pred)
    _check_lengths(y_true=t, y_pred=p)
    if not np.isfinite(k) or k < 0:
        raise ValueError(f"`k` must be a non-negative number, got {k!r}.")
    hit = (np.abs(t - p) <= k).astype(np.float64)
    return len(t), lambda counts: _ratio(counts @ hit, counts.sum(axis=1))


def _roc_auc_rows(y_true, score):
    t = _binary("y_true", y_true)
    s = _scores("score", score)
    _check_lengths(y_true=t, score=s)
    # Rows with equal scores form one group; a positive scores 1 against every lower negative and
    # 1/2 against every tied one (the trapezoidal area, as scikit-learn's roc_auc_score).
    _, group = np.unique(s, return_inverse=True)
    n_groups = int(group.max()) + 1
    positives = _CodeSums(group[t == 1], n_groups)
    negatives = _CodeSums(group[t == 0], n_groups)
    pos_rows = t == 1

    def reduce(counts):
        pos = positives(counts[:, pos_rows])
        neg = negatives(counts[:, ~pos_rows])
        below = np.cumsum(neg, axis=1) - neg
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)
        return _ratio(wins, pos.sum(axis=1) * neg.sum(axis=1))

    return len(t), reduce


def _error_rows(y_true, y_pred, weights, power):
    t, p, valid = _regression_pair(y_true, y_pred)
    w = np.ones(t.shape) if weights is None else _weights_like(weights, t.shape)
    err = np.abs(np.where(valid, p - np.where(valid, t, 0.0), 0.0)) ** power
    n = len(t)
    per_row = (w * err).reshape(n, -1).sum(axis=1)
    labelled = valid.reshape(n, -1).sum(axis=1).astype(np.float64)
    if power == 2:
        return n, lambda counts: np.sqrt(_ratio(counts @ per_row, counts @ labelled))
    return n, lambda counts: _ratio(counts @ per_row, counts @ labelled)


def _mae_rows(y_true, y_pred):
    return _error_rows(y_true, y_pred, None, 1)


def _rmse_rows(y_true, y_pred):
    return _error_rows(y_true, y_pred, None, 2)


def _weighted_mae_rows(y_true, y_pred, weights):
    return _error_rows(y_true, y_pred, weights, 1)


def _weighted_rmse_rows(y_true, y_pred, weights):
    return _error_rows(y_true, y_pred, weights, 2)


def _mean_average_per_class_accuracy_rows(y_true, y_pred, num_classes):
    """(n, reducer): per task, the average per-class accuracy over its labelled rows; then the mean."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    reducers = []
    for t, k in enumerate(num_classes):
        labelled = y_true[:, t] >= 0
        if labelled.any():
            _, reduce_task = _average_per_class_accuracy_rows(
                y_true[labelled, t], y_pred[labelled, t], num_classes=k
            )
            reducers.append((labelled, reduce_task))

    def reduce(counts):
        if not reducers:
            return np.full(len(counts), np.nan)
        values = np.stack([r(counts[:, labelled]) for labelled, r in reducers], axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # every task undefined in a resample
            return np.nanmean(values, axis=1)

    return y_true.shape[0], reduce


def _row_statistics(rows_fn):
    """Marks a metric as computable from row statistics (`rows_fn`), for the vectorised bootstrap."""

    def mark(metric):
        metric._rows_fn = rows_fn
        return metric

    return mark


def _value(rows):
    """The metric on the data itself: every row counted once."""
    n, reduce = rows
    return float(reduce(np.ones((1, n)))[0])


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------
@_row_statistics(_mean_average_per_class_accuracy_rows)
def mean_average_per_class_accuracy(y_true, y_pred, num_classes):
    """Mean over tasks of each task's average per-class accuracy, for multi-task labels with gaps.

    Args:
        y_true: int array (n, tasks) of true classes; -1 where a row has no label for a task.
        y_pred: int array (n, tasks) of predicted classes.
        num_classes: sequence of the class count of every task.

    Returns:
        The mean over the tasks that have at least one label; NaN when none has. `bootstrap_ci`
        evaluates it for all resamples at once (rows without a label weigh nothing in a task).

    Reference: SpineNet (paper 002) §5 averages the per-class accuracy of its six tasks.
    """
    return _value(_mean_average_per_class_accuracy_rows(y_true, y_pred, num_classes))


@_row_statistics(_accuracy_rows)
def accuracy(y_true, y_pred):
    """Fraction of examples whose predicted class equals the true class.

    Args:
        y_true: true class labels, shape (n,) or (n, 1), integers 0..K-1.
        y_pred: predicted class labels, same shape.

    Returns:
        float in [0, 1].
    """
    return _value(_accuracy_rows(y_true, y_pred))


def confusion_matrix(y_true, y_pred, num_classes=None):
    """Confusion matrix with true classes on the rows and predicted classes on the columns.

    Args:
        y_true: true class labels, shape (n,) or (n, 1), integers 0..K-1.
        y_pred: predicted class labels, same shape.
        num_classes: K; defaults to the largest label seen plus one.

    Returns:
        int64 array (K, K); entry [i, j] counts examples of class i predicted as j.
    """
    t, p, k = _label_pair(y_true, y_pred, num_classes)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def per_class_accuracy(y_true, y_pred, num_classes=None):
    """Accuracy within each true class (the recall of that class).

    Args:
        y_true: true class labels, shape (n,) or (n, 1), integers 0..K-1.
        y_pred: predicted class labels, same shape.
        num_classes: K; defaults to the largest label seen plus one.

    Returns:
        dict {class: recall} over the classes present in `y_true` (absent classes are skipped).
    """
    c = confusion_matrix(y_true, y_pred, num_classes)
    support = c.sum(axis=1)
    return {int(k): float(c[k, k] / support[k]) for k in np.flatnonzero(support)}


@_row_statistics(_average_per_class_accuracy_rows)
def average_per_class_accuracy(y_true, y_pred, num_classes=None):
    """Mean of the per-class accuracies over the classes present in `y_true` (balanced accuracy).

    Args:
        y_true: true class labels, shape (n,) or (n, 1), integers 0..K-1.
        y_pred: predicted class labels, same shape.
        num_classes: K; defaults to the largest label seen plus one.

    Returns:
        float in [0, 1].

    Reference:
        Jamaludin et al., SpineNet (paper 002), "Evaluation protocols": average per-class accuracy.
    """
    return _value(_average_per_class_accuracy_rows(y_true, y_pred, num_classes))


@_row_statistics(_cohen_kappa_rows)
def cohen_kappa(y_true, y_pred, weights=None, num_classes=None, replace_undefined_by=np.nan):
    """Cohen's kappa: agreement beyond chance, unweighted or with linear/quadratic disagreement weights.

    Disagreement weights are computed from the label values 0..K-1 (for ordinal grades such as KL
    0-4), i.e. as scikit-learn's `cohen_kappa_score(..., labels=range(K))`.
    When chance disagreement is zero (a single class in both `y_true` and `y_pred`), kappa is
    undefined: like scikit-learn (1.9) it returns `replace_undefined_by` (NaN by default) with a
    RuntimeWarning. A single class in `y_true` with other predicted classes gives 0.0, as scikit-learn.

    Args:
        y_true: true class labels, shape (n,) or (n, 1), integers 0..K-1.
        y_pred: predicted class labels, same shape.
        weights: None (unweighted), "linear" or "quadratic".
        num_classes: K; defaults to the largest label seen plus one.
        replace_undefined_by: value returned when kappa is undefined.

    Returns:
        float in [-1, 1].
    """
    value = _value(_cohen_kappa_rows(y_true, y_pred, weights, num_classes, replace_undefined_by))
    t, p, _ = _label_pair(y_true, y_pred, num_classes)
    if len(np.union1d(t, p)) == 1:
        warnings.warn(
            "cohen_kappa is undefined when `y_true` and `y_pred` hold one and the same single "
            f"class; returning replace_undefined_by={replace_undefined_by}.",
            RuntimeWarning,
            stacklevel=2,
        )
    return value


@_row_statistics(_sensitivity_rows)
def sensitivity(y_true, y_pred):
    """Sensitivity (recall, true positive rate) of binary predictions: TP / (TP + FN).

    Args:
        y_true: binary labels 0/1 (1 = abnormal), shape (n,) or (n, 1).
        y_pred: binary predictions 0/1, same shape.

    Returns:
        float in [0, 1]. Raises ValueError when `y_true` has no positive example.
    """
    value = _value(_sensitivity_rows(y_true, y_pred))
    if np.isnan(value):
        raise ValueError("sensitivity is undefined: `y_true` has no positive (1) example.")
    return value


@_row_statistics(_specificity_rows)
def specificity(y_true, y_pred):
    """Specificity (true negative rate) of binary predictions: TN / (TN + FP).

    Args:
        y_true: binary labels 0/1 (0 = normal), shape (n,) or (n, 1).
        y_pred: binary predictions 0/1, same shape.

    Returns:
        float in [0, 1]. Raises ValueError when `y_true` has no negative example.
    """
    value = _value(_specificity_rows(y_true, y_pred))
    if np.isnan(value):
        raise ValueError("specificity is undefined: `y_true` has no negative (0) example.")
    return value


@_row_statistics(_within_k_rows)
def within_k_accuracy(y_true, y_pred, k=1):
    """Fraction of examples whose prediction is within `k` of the target (|y_true - y_pred| <= k).

    Args:
        y_true: true grades or values, shape (n,) or (n, 1).
        y_pred: predicted grades or values, same shape.
        k: tolerance, same unit as the values (grades, months); default 1.

    Returns:
        float in [0, 1].
    """
    return _value(_within_k_rows(y_true, y_pred, k))


def roc_curve(y_true, score, drop_intermediate=True):
    """Receiver operating characteristic curve, the same points as scikit-learn's `roc_curve`.

    Args:
        y_true: binary labels 0/1, shape (n,) or (n, 1); both classes must be present.
        score: scores, higher meaning more likely positive, same shape.
        drop_intermediate: drop thresholds that lie on a straight segment of the curve.

    Returns:
        (fpr, tpr, thresholds): float arrays; thresholds decrease and start at +inf (fpr = tpr = 0).
    """
    t = _binary("y_true", y_true)
    s = _scores("score", score)
    _check_lengths(y_true=t, score=s)
    if t.min() == t.max():
        raise ValueError("roc_curve is undefined when `y_true` holds a single class.")
    order = np.argsort(s, kind="mergesort")[::-1]
    s, t = s[order], t[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[last_of_value].astype(np.float64)
    fps = 1.0 + last_of_value - tps
    thresholds = s[last_of_value]
    if drop_intermediate and len(fps) > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


@_row_statistics(_roc_auc_rows)
def roc_auc(y_true, score):
    """Area under the ROC curve; tied scores count one half (trapezoidal area, as scikit-learn).

    Args:
        y_true: binary labels 0/1, shape (n,) or (n, 1); both classes must be present.
        score: scores, higher meaning more likely positive, same shape.

    Returns:
        float in [0, 1]. Raises ValueError when `y_true` holds a single class.
    """
    value = _value(_roc_auc_rows(y_true, score))
    if np.isnan(value):
        raise ValueError("roc_auc is undefined when `y_true` holds a single class.")
    return value


# --------------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------------
def _regression_value(rows, name):
    value = _value(rows)
    if np.isnan(value):
        raise ValueError(f"{name} is undefined: every target in `y_true` is missing (NaN).")
    return value


@_row_statistics(_mae_rows)
def mae(y_true, y_pred):
    """Mean absolute error over the labelled entries (NaN targets are ignored).

    Args:
        y_true: targets, shape (n,) or (n, m); NaN marks a missing target.
        y_pred: predictions, same shape, finite where a target is given.

    Returns:
        float, in the unit of the targets.
    """
    return _regression_value(_mae_rows(y_true, y_pred), "mae")


@_row_statistics(_rmse_rows)
def rmse(y_true, y_pred):
    """Root mean squared error over the labelled entries (NaN targets are ignored).

    Args:
        y_true: targets, shape (n,) or (n, m); NaN marks a missing target.
        y_pred: predictions, same shape, finite where a target is given.

    Returns:
        float, in the unit of the targets.
    """
    return _regression_value(_rmse_rows(y_true, y_pred), "rmse")


@_row_statistics(_weighted_rmse_rows)
def weighted_rmse(y_true, y_pred, weights):
    """Weighted RMSE of the RA2-DREAM challenge: sqrt((1/n) * sum_i w_i (y_i - x_i)^2).

    n counts the labelled entries (NaN targets are ignored); the weights are not normalised, as in
    the paper's formula. With 2-D arrays (patients x joints) `weights` gives one weight per joint
    (column); a weights array of the targets' shape gives one weight per entry.

    Args:
        y_true: targets, shape (n,) or (n, joints); NaN marks a missing score.
        y_pred: predictions, same shape.
        weights: non-negative weights, shape (joints,) (matched to the last axis) or y_true's shape.

    Returns:
        float, in the unit of the scores.

    Reference:
        DEEPR (paper 001), §4.3.2 "Evaluation Metrics", Weighted RMSE.
    """
    return _regression_value(_weighted_rmse_rows(y_true, y_pred, weights), "weighted_rmse")


@_row_statistics(_weighted_mae_rows)
def weighted_mae(y_true, y_pred, weights):
    """Weighted absolute error of the RA2-DREAM challenge: (1/n) * sum_i w_i |y_i - x_i|.

    n counts the labelled entries (NaN targets are ignored); the weights are not normalised, as in
    the paper's formula. With 2-D arrays (patients x columns) `weights` gives one weight per column.

    Args:
        y_true: targets, shape (n,) or (n, columns); NaN marks a missing score.
        y_pred: predictions, same shape.
        weights: non-negative weights, shape (columns,) (matched to the last axis) or y_true's shape.

    Returns:
        float, in the unit of the scores.

    Reference:
        DEEPR (paper 001), §4.3.2 "Evaluation Metrics", Weighted MAE.
    """
    return _regression_value(_weighted_mae_rows(y_true, y_pred, weights), "weighted_mae")


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------
def _unwrap(metric_fn):
    """(function, keyword arguments) behind nested functools.partial, or None if not vectorisable."""
    keywords = {}
    fn = metric_fn
    while isinstance(fn, functools.partial):
        if fn.args:
            return None
        keywords = {**fn.keywords, **keywords}
        fn = fn.func
    rows_fn = getattr(fn, "_rows_fn", None)
    return None if rows_fn is None else (rows_fn, keywords)


def _resample_draws(rng, n_boot, n_units, block):
    """Yields blocks of resamples, each an int array (resamples, n_units) of drawn unit indices."""
    done = 0
    while done < n_boot:
        size = min(block, n_boot - done)
        yield rng.integers(0, n_units, size=(size, n_units))
        done += size


def bootstrap_ci(metric_fn, *arrays, n_boot=1000, seed=0, alpha=0.05, groups=None):
    """Seeded percentile bootstrap interval of a metric, resampling rows or whole groups.

    Each resample draws, with replacement, as many rows as there are (or, with `groups`, as many
    groups as there are, keeping every row of a drawn group, e.g. all studies of a patient).
    Resamples on which the metric is undefined (a single class for AUROC, NaN, a ValueError) are
    skipped with a RuntimeWarning; if none is defined the interval is (nan, nan). The metrics of
    this module (also wrapped in `functools.partial` with keyword arguments) are evaluated for all
    resamples at once from per-row statistics; any other callable is called once per resample.

    Args:
        metric_fn: callable(*arrays) -> float, e.g. `roc_auc` or
            `functools.partial(cohen_kappa, weights="quadratic")`.
        *arrays: the metric's array arguments, all with the same number of rows (first axis).
        n_boot: number of resamples.
        seed: seed of the numpy generator; the same seed gives the same interval.
        alpha: 1 - confidence level (0.05 gives the 95% interval).
        groups: optional group id per row (e.g. patient IDs); groups are resampled as units.

    Returns:
        (low, high): the alpha/2 and 1 - alpha/2 percentiles of the defined resampled values.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"`n_boot` must be a positive integer, got {n_boot!r}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha!r}.")
    data = [_as_array(f"arrays[{i}]", a) for i, a in enumerate(arrays)]
    _check_lengths(**{f"arrays[{i}]": a for i, a in enumerate(data)})
    n = data[0].shape[0]

    if groups is None:
        unit_of_row = np.arange(n)
        n_units = n
    else:
        g = _as_array("groups", groups)
        if g.ndim != 1:
            raise ValueError(f"`groups` must have shape (n,), got {g.shape}.")
        _check_lengths(arrays_0=data[0], groups=g)
        unit_of_row, _ = pd.factorize(g)
        if np.any(unit_of_row < 0):
            raise ValueError("`groups` contains missing (None/NaN) group ids.")
        n_units = int(unit_of_row.max()) + 1

    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK_ELEMENTS // max(n, n_units))
    values = []
    vectorised = _unwrap(metric_fn)
    if vectorised is not None:
        rows_fn, keywords = vectorised
        _, reduce = rows_fn(*data, **keywords)
        for draws in _resample_draws(rng, n_boot, n_units, block):
            size = len(draws)
            offsets = (np.arange(size) * n_units)[:, None]
            unit_counts = np.bincount((draws + offsets).ravel(), minlength=size * n_units)
            counts = unit_counts.reshape(size, n_units).astype(np.float64)
            if groups is not None:
                counts = counts[:, unit_of_row]
            values.append(np.asarray(reduce(counts), dtype=np.float64))
    else:
        order = np.argsort(unit_of_row, kind="stable")
        sizes = np.bincount(unit_of_row, minlength=n_units)
        starts = np.cumsum(sizes) - sizes
        for draws in _resample_draws(rng, n_boot, n_units, block):
            block_values = np.empty(len(draws))
            for b, drawn in enumerate(draws):
                drawn_sizes = sizes[drawn]
                ends = np.cumsum(drawn_sizes)
                within = np.arange(ends[-1]) - np.repeat(ends - drawn_sizes, drawn_sizes)
                rows = order[np.repeat(starts[drawn], drawn_sizes) + within]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        block_values[b] = float(metric_fn(*[a[rows] for a in data]))
                    except (ValueError, ZeroDivisionError, FloatingPointError):
                        block_values[b] = np.nan
            values.append(block_values)
    values = np.concatenate(values)
    defined = np.isfinite(values)
    if not defined.any():
        warnings.warn(
            f"bootstrap_ci: the metric is undefined on all {n_boot} resamples; returning (nan, nan).",
            RuntimeWarning,
            stacklevel=2,
        )
        return (float("nan"), float("nan"))
    if not defined.all():
        warnings.warn(
            f"bootstrap_ci: {int((~defined).sum())} of {n_boot} resamples left the metric undefined "
            "and were skipped.",
            RuntimeWarning,
            stacklevel=2,
        )
    low, high = np.quantile(values[defined], [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(low), float(high))


def metric_with_ci(name, metric_fn, *arrays, **kwargs):
    """A metric's value on the data and its bootstrap interval, e.g. for `metrics.json`.

    Args:
        name: the metric's name, used in error messages (e.g. "study_auroc").
        metric_fn: callable(*arrays) -> float.
        *arrays: the metric's array arguments.
        **kwargs: `n_boot`, `seed`, `alpha`, `groups`, passed to `bootstrap_ci`.

    Returns:
        (value, (low, high)).
    """
    try:
        value = float(metric_fn(*arrays))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e
    return value, bootstrap_ci(metric_fn, *arrays, **kwargs)
