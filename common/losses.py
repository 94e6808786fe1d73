"""Keras 3 losses of the five papers: class-balanced masked cross-entropy, weighted binary cross-entropy,
masked regression error, and the weighted sum of per-branch / per-task losses.

Every loss returns one value per example from `call` (shape (B,), non-batch axes averaged), so it
works with `reduction="none"` in a custom training loop that reduces the vector itself, and with
Keras' usual reductions in `Model.fit`. Missing labels (label -1, NaN target) contribute exactly 0
to the loss and 0 to its gradient.

The weight tables (`class_balanced_weights`, `binary_group_weights`) are computed with numpy from the
TRAINING split only and handed to the losses as plain numbers, so a saved model's config holds them.

Reference:
    000: Gorriz et al., knee OA attention (multi-loss L = sum_b w_b L_b, §3.2).
    002: Jamaludin et al., SpineNet, §2 (class-balanced loss alpha_c = 1/freq(c), missing labels
    ignored per task, L = sum_t omega_t L_t).
    MURA: Rajpurkar et al., 2017, §3 (w_T,1 = |N_T| / (|A_T| + |N_T|), w_T,0 = |A_T| / (|A_T| + |N_T|)).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pandas as pd
from keras import ops

__all__ = [
    "MaskedSparseCategoricalCrossentropy",
    "binary_group_weights",
    "binary_sample_weights",
    "class_balanced_weights",
]


# --------------------------------------------------------------------------------------------------
# Weight tables (numpy, from the training split)
# --------------------------------------------------------------------------------------------------
def class_balanced_weights(labels, num_classes, ignore_label=-1):
    """Class weights alpha_c proportional to 1 / freq(c), from the training labels of one task.

    The weights are scaled so that their mean over the labelled training examples is 1 (so the loss
    keeps the scale of the unweighted loss): alpha_c = N / (C * n_c), with n_c the count of class c,
    N the number of labelled examples and C the number of classes present. A class without any
    training example gets weight 0 and a warning.

    Args:
        labels: training labels of one task, integers 0..num_classes-1; `ignore_label` (and NaN)
            marks a missing label.
        num_classes: number of classes of the task.
        ignore_label: the value of a missing label; default -1.

    Returns:
        float64 array (num_classes,).

    Reference:
        Jamaludin et al., SpineNet (paper 002), §2 "Class-balanced loss per task".
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes}.")
    y = _float_labels(labels)
    labelled = ~np.isnan(y) & (y != ignore_label)
    values = y[labelled]
    if values.size == 0:
        raise ValueError(
            f"`labels` has no labelled example (all missing or equal to ignore_label={ignore_label})."
        )
    _check_class_indices(values, num_classes, ignore_label)
    counts = np.bincount(values.astype(np.int64), minlength=num_classes)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = values.size / (present.sum() * counts[present])
    if not present.all():
        warnings.warn(
            f"Classes {np.flatnonzero(~present).tolist()} have no training example; "
            "their class weight is 0.",
            UserWarning,
            stacklevel=2,
        )
    return weights


def binary_group_weights(labels, groups):
    """MURA's per-group weights (w0, w1) of the binary cross-entropy, from the training split.

    For a group T (a study type / body part) with |A_T| abnormal and |N_T| normal training examples:
    w1 = |N_T| / (|A_T| + |N_T|) on abnormal examples and w0 = |A_T| / (|A_T| + |N_T|) on normal ones.
    A group with a single class gives a zero weight to that class; this is warned about.

    Args:
        labels: binary training labels 0/1 (1 = abnormal), shape (n,).
        groups: group of each example (e.g. "XR_WRIST"), shape (n,).

    Returns:
        dict {group: (w0, w1)}, groups in sorted order.

    Reference:
        Rajpurkar et al., MURA, §3 "Model" (weighted binary cross-entropy).
    """
    y = _binary_labels(labels)
    g = _groups(groups, len(y))
    table = {}
    for group in _sorted_unique(g):
        member = g == group
        abnormal = int(y[member].sum())
        normal = int(member.sum()) - abnormal
        total = abnormal + normal
        if abnormal == 0 or normal == 0:
            warnings.warn(
                f"Group {group!r} has {abnormal} abnormal and {normal} normal training examples: "
                "one class gets weight 0.",
                UserWarning,
                stacklevel=2,
            )
        table[_python_scalar(group)] = (abnormal / total, normal / total)
    return table


def binary_sample_weights(labels, groups, table):
    """Per-example weights from a `binary_group_weights` table: w1 of the group if abnormal, else w0.

    Args:
        labels: binary labels 0/1, shape (n,).
        groups: group of each example, shape (n,).
        table: dict {group: (w0, w1)} from `binary_group_weights` on the training split.

    Returns:
        float32 array (n,), to pass as `sample_weight` with `WeightedBinaryCrossentropy()`.
    """
    y = _binary_labels(labels)
    g = _groups(groups, len(y))
    weights = np.empty(len(y), dtype=np.float32)
    for group in _sorted_unique(g):
        key = _python_scalar(group)
        if key not in table:
            raise ValueError(f"Unknown group {key!r}. Available: {sorted(table, key=str)}")
        w0, w1 = table[key]
        member = g == group
        weights[member] = np.where(y[member] == 1, w1, w0)
    return weights


def _float_labels(labels):
    y = np.asarray(labels)
    if y.size == 0:
        raise ValueError("`labels` is empty.")
    try:
        return y.astype(np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise ValueError(f"`labels` must be numeric class labels, got dtype {y.dtype}.") from e


def _check_class_indices(values, num_classes, ignore_label):
    bad = values[(values != np.round(values)) | (values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(
            f"Label {bad[0]:g} is outside 0..{num_classes - 1} (num_classes={num_classes}); "
            f"a missing label must equal ignore_label={ignore_label}."
        )


def _binary_labels(labels):
    y = _float_labels(labels)
    if not np.all(np.isin(y, (0.0, 1.0))):
        bad = y[~np.isin(y, (0.0, 1.0))][0]
        raise ValueError(f"`labels` must be binary 0/1, found {bad!r}.")
    return y.astype(np.int64)


def _groups(groups, n):
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"`groups` must have one entry per label ({n}), got shape {g.shape}.")
    if np.any(pd.isna(g)):
        raise ValueError("`groups` contains missing (None/NaN) entries.")
    return g


def _sorted_unique(g):
    unique = pd.unique(g)
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=str)


def _python_scalar(value):
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------------------------------
# Keras losses
# --------------------------------------------------------------------------------------------------
def _per_example(values):
    """Averages every non-batch axis: (B, ...) -> (B,)."""
    if len(values.shape) <= 1:
        return values
    return ops.mean(values, axis=tuple(range(1, len(values.shape))))


@keras.saving.register_keras_serializable(package="common")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy weighted by class, with missing labels ignored.

    Per example: alpha_y * CE(y, p), and exactly 0 (with a zero gradient) when the label equals
    `ignore_label` or is NaN. With `class_weights=None` and no missing label it equals
    `keras.losses.sparse_categorical_crossentropy`. With Keras' default reduction the per-example
    values are summed and divided by the batch size (missing labels included in the count); a
    training loop that wants the mean over labelled examples uses `reduction="none"`.

    Args:
        class_weights: optional alpha_c per class, shape (num_classes,), e.g. from
            `class_balanced_weights` on the training labels.
        ignore_label: label value of a missing label; default -1.
        from_logits: whether `y_pred` are logits rather than probabilities.
        **kwargs: `name`, `reduction` ("none" for a per-example vector), `dtype`.

    Input shape:
        y_true (B,) or (B, 1) integer labels; y_pred (B, num_classes).

    Output shape:
        (B,) with `reduction="none"`, else a scalar.

    Reference:
        Jamaludin et al., SpineNet (paper 002), §2: class-balanced loss, missing labels ignored.
    """

    def __init__(
        self,
        class_weights=None,
        ignore_label=-1,
        from_logits=False,
        name="masked_sparse_categorical_crossentropy",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if class_weights is not None:
            weights = np.asarray(class_weights, dtype=np.float64)
            if weights.ndim != 1 or weights.size == 0:
                raise ValueError(
                    f"`class_weights` must be a vector (num_classes,), got shape {weights.shape}."
                )
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError("`class_weights` must be finite and non-negative.")
            class_weights = [float(w) for w in weights]
        self.class_weights = class_weights
        self.ignore_label = int(ignore_label)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape):
            if y_true.shape[-1] not in (None, 1):
                raise ValueError(
                    "MaskedSparseCategoricalCrossentropy expects integer labels of shape (B,) or "
                    f"(B, 1), got {y_true.shape} (one-hot targets need a categorical loss)."
                )
            y_true = ops.squeeze(y_true, axis=-1)
        num_classes = y_pred.shape[-1]
        if self.class_weights is not None and num_classes is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(
                    f"`class_weights` has {len(self.class_weights)} entries but the predictions "
                    f"have {num_classes} classes."
                )
        labelled = ops.not_equal(y_true, ops.cast(self.ignore_label, y_true.dtype))
        if keras.backend.standardize_dtype(y_true.dtype).startswith("float"):
            labelled = ops.logical_and(labelled, ops.logical_not(ops.isnan(y_true)))
        # Missing labels are replaced by class 0 before any lookup, so no -1 is ever used as an
        # index; their (finite) loss is then zeroed, which also zeroes their gradient.
        labels = ops.cast(ops.where(labelled, y_true, ops.zeros_like(y_true)), "int32")
        losses = ops.sparse_categorical_crossentropy(labels, y_pred, from_logits=self.from_logits)
        if self.class_weights is not None:
            alpha = ops.convert_to_tensor(self.class_weights, dtype=losses.dtype)
            losses = losses * ops.take(alpha, labels)
        return _per_example(ops.where(labelled, losses, ops.zeros_like(losses)))

    def get_config(self):
        return {
            **super().get_config(),
            "class_weights": self.class_weights,
            "ignore_label": self.ignore_label,
            "from_logits": self.from_logits,
        }
