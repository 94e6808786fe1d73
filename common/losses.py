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

import math
import warnings

import keras
import numpy as np
import pandas as pd
from keras import ops

__all__ = [
    "MaskedMeanSquaredError",
    "MaskedSparseCategoricalCrossentropy",
    "WeightedBinaryCrossentropy",
    "binary_group_weights",
    "binary_sample_weights",
    "class_balanced_weights",
    "weighted_sum",
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


def _align_targets(y_true, y_pred):
    """Gives regression/binary targets the rank of the predictions; rank-1 inputs become (B, 1)."""
    if len(y_pred.shape) == 1:
        y_pred = ops.expand_dims(y_pred, -1)
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_true.shape) != len(y_pred.shape):
        raise ValueError(
            f"Targets of shape {y_true.shape} do not match predictions of shape {y_pred.shape}."
        )
    return y_true, y_pred


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


@keras.saving.register_keras_serializable(package="common")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with one weight on positive (abnormal) and one on negative terms.

    Per element: -(pos_weight * y * log(p) + neg_weight * (1 - y) * log(1 - p)), averaged over the
    non-batch axes (as Keras' binary cross-entropy averages the last axis). With both weights 1 it
    equals `keras.losses.binary_crossentropy`. For weights that differ by group (MURA's study types)
    keep the weights at 1 and pass `binary_sample_weights(...)` as `sample_weight`.

    Args:
        pos_weight: weight of positive examples (MURA's w1 = N / (A + N)).
        neg_weight: weight of negative examples (MURA's w0 = A / (A + N)).
        from_logits: whether `y_pred` are logits rather than probabilities.
        **kwargs: `name`, `reduction` ("none" for a per-example vector), `dtype`.

    Input shape:
        y_true (B,) or (B, 1) (or (B, K) multi-label), values in [0, 1]; y_pred the same shape.

    Output shape:
        (B,) with `reduction="none"`, else a scalar.

    Reference:
        Rajpurkar et al., MURA, §3 "Model".
    """

    def __init__(
        self,
        pos_weight=1.0,
        neg_weight=1.0,
        from_logits=False,
        name="weighted_binary_crossentropy",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for arg, value in (("pos_weight", pos_weight), ("neg_weight", neg_weight)):
            if not math.isfinite(float(value)) or float(value) < 0:
                raise ValueError(f"`{arg}` must be finite and non-negative, got {value!r}.")
        self.pos_weight = float(pos_weight)
        self.neg_weight = float(neg_weight)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        y_true, y_pred = _align_targets(y_true, y_pred)
        # -log(p) and -log(1 - p) through Keras' op, which clips probabilities and uses the logits
        # of a sigmoid output when it can, exactly as keras.losses.binary_crossentropy does.
        minus_log_p = ops.binary_crossentropy(ops.ones_like(y_pred), y_pred, self.from_logits)
        minus_log_q = ops.binary_crossentropy(ops.zeros_like(y_pred), y_pred, self.from_logits)
        losses = self.pos_weight * y_true * minus_log_p
        losses = losses + self.neg_weight * (1.0 - y_true) * minus_log_q
        return _per_example(losses)

    def get_config(self):
        return {
            **super().get_config(),
            "pos_weight": self.pos_weight,
            "neg_weight": self.neg_weight,
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="common")
class MaskedMeanSquaredError(keras.losses.Loss):
    """Mean squared error in which missing targets (NaN, or `mask_value`) contribute 0.

    Per example: the sum of squared errors over the labelled entries divided by the number of
    entries on the non-batch axes, so every labelled entry weighs the same whatever else is missing;
    with no missing target it equals `keras.losses.mean_squared_error`. The gradient of a missing
    entry is exactly 0 (never NaN).

    Args:
        mask_value: the target value that marks a missing label, in addition to NaN; default NaN
            (None means NaN too).
        **kwargs: `name`, `reduction` ("none" for a per-example vector), `dtype`.

    Input shape:
        y_true (B,) or (B, m); y_pred the same shape (or (B, 1) for (B,) targets).

    Output shape:
        (B,) with `reduction="none"`, else a scalar.

    Reference:
        DEEPR (paper 001), §4.3.1: MSE loss on joint scores, some of which are missing.
    """

    def __init__(self, mask_value=float("nan"), name="masked_mean_squared_error", **kwargs):
        super().__init__(name=name, **kwargs)
        if mask_value is not None and not isinstance(mask_value, (int, float, np.number)):
            raise ValueError(f"`mask_value` must be a number or NaN, got {mask_value!r}.")
        self.mask_value = (
            float("nan") if mask_value is None or math.isnan(mask_value) else float(mask_value)
        )

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        y_true, y_pred = _align_targets(y_true, y_pred)
        labelled = ops.logical_not(ops.isnan(y_true))
        if not math.isnan(self.mask_value):
            labelled = ops.logical_and(
                labelled, ops.not_equal(y_true, ops.cast(self.mask_value, y_true.dtype))
            )
        safe_true = ops.where(labelled, y_true, ops.zeros_like(y_true))
        squared = ops.where(labelled, ops.square(y_pred - safe_true), ops.zeros_like(y_pred))
        return _per_example(squared)

    def get_config(self):
        # NaN is written as None so that the config stays strict JSON.
        mask_value = None if math.isnan(self.mask_value) else self.mask_value
        return {**super().get_config(), "mask_value": mask_value}


def weighted_sum(losses, weights=None):
    """Weighted sum of named losses: sum_k weights[k] * losses[k] (missing weights count 1).

    Args:
        losses: dict {name: loss tensor}; scalars, or per-example vectors of one shape.
        weights: dict {name: weight}, e.g. {"att0": 1.0, "att1": 0.8}; every name must be a key of
            `losses`; a loss without a weight gets 1.0 (paper 002's omega_t = 1).

    Returns:
        tensor of the losses' (broadcast) shape.

    Reference:
        Gorriz et al. (paper 000), §3.2 multi-loss L = sum_b w_b L_b; SpineNet (paper 002), §2,
        L = sum_t omega_t L_t.
    """
    if not losses:
        raise ValueError("`losses` is empty: weighted_sum needs at least one loss.")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(losses), key=str)
    if unknown:
        raise ValueError(
            f"Unknown loss name(s) {unknown} in `weights`. Available: {sorted(losses, key=str)}"
        )
    for name, weight in weights.items():
        if not math.isfinite(float(weight)) or float(weight) < 0:
            raise ValueError(
                f"Weight of loss {name!r} must be finite and non-negative, got {weight!r}."
            )
    values = {}
    for name, loss in losses.items():
        value = ops.convert_to_tensor(loss)
        if not keras.backend.standardize_dtype(value.dtype).startswith("float"):
            value = ops.cast(value, keras.backend.floatx())
        values[name] = value
    dtype = keras.backend.result_type(*[v.dtype for v in values.values()])
    total = None
    for name, value in values.items():
        term = ops.cast(value, dtype) * ops.cast(float(weights.get(name, 1.0)), dtype)
        total = term if total is None else total + term
    return total
