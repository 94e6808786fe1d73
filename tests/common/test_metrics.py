"""common.metrics against scikit-learn, hand computations and the bootstrap's promises."""

import functools
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from common import metrics

SEEDS = [0, 1, 2]


def _classes(seed, n=300, num_classes=5):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, n)
    noise = rng.integers(-1, 2, n) * (rng.random(n) < 0.5)
    y_pred = np.clip(y_true + noise, 0, num_classes - 1)
    return y_true, y_pred


def _binary(seed, n=300, decimals=1):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    score = np.round(rng.normal(size=n) + 1.2 * y_true, decimals)  # rounding makes ties
    return y_true, score


# --------------------------------------------------------------------------------------------------
# Classification metrics against scikit-learn
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", [2, 5])
def test_classification_metrics_match_sklearn(seed, num_classes):
    y_true, y_pred = _classes(seed, num_classes=num_classes)
    labels = np.arange(num_classes)
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y_true, y_pred, num_classes),
        skm.confusion_matrix(y_true, y_pred, labels=labels),
    )
    recalls = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    per_class = metrics.per_class_accuracy(y_true, y_pred)
    assert per_class == pytest.approx({int(c): recalls[c] for c in np.unique(y_true)})
    assert metrics.average_per_class_accuracy(y_true, y_pred) == pytest.approx(
        skm.balanced_accuracy_score(y_true, y_pred)
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_cohen_kappa_matches_sklearn(seed, weights, num_classes):
    y_true, y_pred = _classes(seed, num_classes=num_classes)
    expected = skm.cohen_kappa_score(y_true, y_pred, weights=weights, labels=np.arange(num_classes))
    assert metrics.cohen_kappa(y_true, y_pred, weights=weights) == pytest.approx(expected)


def test_cohen_kappa_uses_grade_values_when_a_middle_grade_is_absent():
    # Grades 0, 2, 4 only: disagreement weights follow the grade values, like labels=range(5).
    y_true = [0, 2, 4, 4, 2, 0, 2]
    y_pred = [0, 4, 4, 2, 2, 2, 0]
    expected = skm.cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=range(5))
    assert metrics.cohen_kappa(y_true, y_pred, weights="quadratic", num_classes=5) == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        ([1, 1, 1], [1, 1, 1]),  # one class, perfect agreement: undefined
        ([2, 2], [2, 2]),
        ([1, 1, 1], [1, 1, 0]),  # one true class, predictions disagree: 0.0
        ([1, 1, 1], [0, 0, 0]),
        ([0, 0, 1, 1], [1, 1, 0, 0]),  # total disagreement: -1
    ],
)
@pytest.mark.parametrize("weights", [None, "quadratic"])
def test_cohen_kappa_degenerate_cases_match_sklearn(y_true, y_pred, weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.cohen_kappa_score(y_true, y_pred, weights=weights)
        got = metrics.cohen_kappa(y_true, y_pred, weights=weights)
    np.testing.assert_equal(got, expected)  # NaN equals NaN here


def test_cohen_kappa_undefined_warns_and_can_be_replaced():
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert np.isnan(metrics.cohen_kappa([3, 3], [3, 3]))
    with pytest.warns(RuntimeWarning):
        assert metrics.cohen_kappa([3, 3], [3, 3], replace_undefined_by=1.0) == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_sensitivity_specificity_match_sklearn(seed):
    y_true, score = _binary(seed)
    y_pred = (score > 0.6).astype(int)
    assert metrics.sensitivity(y_true, y_pred) == pytest.approx(
        skm.recall_score(y_true, y_pred, pos_label=1)
    )
    assert metrics.specificity(y_true, y_pred) == pytest.approx(
        skm.recall_score(y_true, y_pred, pos_label=0)
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [0, 1, 6])
def test_roc_auc_matches_sklearn_with_ties(seed, decimals):
    y_true, score = _binary(seed, decimals=decimals)
    assert metrics.roc_auc(y_true, score) == pytest.approx(skm.roc_auc_score(y_true, score))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("drop_intermediate", [True, False])
def test_roc_curve_matches_sklearn(seed, drop_intermediate):
    y_true, score = _binary(seed, decimals=1)
    got = metrics.roc_curve(y_true, score, drop_intermediate=drop_intermediate)
    expected = skm.roc_curve(y_true, score, drop_intermediate=drop_intermediate)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b)


def test_roc_auc_hand_example():
    # Positives 0.8, 0.4; negatives 0.4, 0.1: pairs won 1 + 1 + 0.5 (tie) + 1 of 4.
    assert metrics.roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_within_k_accuracy(k):
    y_true, y_pred = _classes(0)
    expected = np.mean(np.abs(y_true - y_pred) <= k)
    assert metrics.within_k_accuracy(y_true, y_pred, k=k) == pytest.approx(expected)
    if k == 0:
        assert metrics.within_k_accuracy(y_true, y_pred, k=0) == pytest.approx(
            skm.accuracy_score(y_true, y_pred)
        )
    assert metrics.within_k_accuracy([0, 1, 2, 4], [0, 2, 0, 1], k=k) == [0.25, 0.5, 0.75][k]


# --------------------------------------------------------------------------------------------------
# Regression metrics
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(50,), (50, 1), (40, 6)])
def test_mae_rmse_match_sklearn(seed, shape):
    rng = np.random.default_rng(seed)
    y_true = rng.normal(size=shape) * 10
    y_pred = y_true + rng.normal(size=shape)
    assert metrics.mae(y_true, y_pred) == pytest.approx(
        skm.mean_absolute_error(y_true.ravel(), y_pred.ravel())
    )
    assert metrics.rmse(y_true, y_pred) == pytest.approx(
        skm.root_mean_squared_error(y_true.ravel(), y_pred.ravel())
    )


def test_regression_metrics_ignore_nan_targets():
    rng = np.random.default_rng(3)
    y_true = rng.normal(size=(30, 4))
    y_pred = rng.normal(size=(30, 4))
    y_true[rng.random((30, 4)) < 0.3] = np.nan
    keep = ~np.isnan(y_true)
    assert metrics.mae(y_true, y_pred) == pytest.approx(
        skm.mean_absolute_error(y_true[keep], y_pred[keep])
    )
    assert metrics.rmse(y_true, y_pred) == pytest.approx(
        skm.root_mean_squared_error(y_true[keep], y_pred[keep])
    )


def test_rmse_accepts_column_predictions():
    assert metrics.rmse([1.0, 2.0, 3.0], [[1.0], [2.0], [5.0]]) == pytest.approx(np.sqrt(4 / 3))


def test_weighted_rmse_and_mae_hand_computation():
    # Paper 001 §4.3.2: Weighted RMSE = sqrt((1/n) sum_i w_i (y_i - x_i)^2),
    # Weighted MAE = (1/n) sum_i w_i |y_i - x_i|; here weights per joint (column), one target missing.
    y_true = np.array([[0.0, 2.0, 1.0], [3.0, np.nan, 0.0]])
    y_pred = np.array([[1.0, 2.0, 3.0], [1.0, 5.0, 0.0]])
    weights = np.array([1.0, 2.0, 0.5])
    # Labelled entries (5): errors 1, 0, 2, 2, 0 with weights 1, 2, 0.5, 1, 0.5.
    squared = 1 * 1 + 2 * 0 + 0.5 * 4 + 1 * 4 + 0.5 * 0
    absolute = 1 * 1 + 2 * 0 + 0.5 * 2 + 1 * 2 + 0.5 * 0
    assert metrics.weighted_rmse(y_true, y_pred, weights) == pytest.approx(np.sqrt(squared / 5))
    assert metrics.weighted_mae(y_true, y_pred, weights) == pytest.approx(absolute / 5)


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_rmse_and_mae_against_sklearn(seed):
    # sklearn normalises by the sum of weights; the paper's formula divides by n.
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, size=(25, 4)).astype(float)
    y_pred = y_true + rng.normal(size=(25, 4))
    weights = rng.uniform(0.5, 3.0, size=4)
    full = np.broadcast_to(weights, y_true.shape).ravel()
    n = y_true.size
    mse = skm.mean_squared_error(y_true.ravel(), y_pred.ravel(), sample_weight=full)
    mae = skm.mean_absolute_error(y_true.ravel(), y_pred.ravel(), sample_weight=full)
    assert metrics.weighted_rmse(y_true, y_pred, weights) == pytest.approx(
        np.sqrt(mse * full.sum() / n)
    )
    assert metrics.weighted_mae(y_true, y_pred, weights) == pytest.approx(mae * full.sum() / n)
    # Weights of ones give the plain metrics; per-entry weights of the full shape are accepted.
    assert metrics.weighted_rmse(y_true, y_pred, np.ones(4)) == pytest.approx(
        metrics.rmse(y_true, y_pred)
    )
    assert metrics.weighted_mae(y_true, y_pred, full.reshape(y_true.shape)) == pytest.approx(
        mae * full.sum() / n
    )


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.accuracy([], []), "empty"),
        (lambda: metrics.accuracy([0, 1], [0, 1, 1]), "Mismatched lengths"),
        (lambda: metrics.rmse([0.0, 1.0], [0.0]), "Mismatched lengths"),
        (lambda: metrics.cohen_kappa([0, -1], [0, 1]), "negative label"),
        (lambda: metrics.confusion_matrix([0, 3], [0, 1], num_classes=3), "outside 0..2"),
        (lambda: metrics.accuracy([0.5, 1], [0, 1]), "integer class labels"),
        (lambda: metrics.accuracy([np.nan, 1], [0, 1]), "NaN"),
        (lambda: metrics.cohen_kappa([0, 1], [0, 1], weights="cubic"), "Unknown kappa weights"),
        (lambda: metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]), "single class"),
        (lambda: metrics.roc_curve([0, 0], [0.1, 0.2]), "single class"),
        (lambda: metrics.roc_auc([0, 2], [0.1, 0.2]), "binary"),
        (lambda: metrics.sensitivity([0, 0], [0, 1]), "no positive"),
        (lambda: metrics.specificity([1, 1], [0, 1]), "no negative"),
        (lambda: metrics.mae([np.nan, np.nan], [1.0, 2.0]), "missing"),
        (lambda: metrics.rmse([1.0, 2.0], [np.nan, 2.0]), "y_pred"),
        (lambda: metrics.weighted_rmse(np.zeros((3, 2)), np.zeros((3, 2)), [1, 2, 3]), "weights"),
        (lambda: metrics.weighted_mae([1.0, 2.0], [1.0, 2.0], [-1.0, 1.0]), "non-negative"),
        (lambda: metrics.within_k_accuracy([1, 2], [1, 2], k=-1), "non-negative"),
        (lambda: metrics.bootstrap_ci(metrics.accuracy, [0, 1], [0]), "Mismatched lengths"),
        (lambda: metrics.bootstrap_ci(metrics.accuracy, [0, 1], [0, 1], groups=[0]), "Mismatched"),
        (lambda: metrics.bootstrap_ci(metrics.accuracy, [0, 1], [0, 1], n_boot=0), "n_boot"),
        (lambda: metrics.bootstrap_ci(metrics.accuracy, [0, 1], [0, 1], alpha=1.5), "alpha"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_metric_values_are_python_floats():
    assert type(metrics.accuracy([0, 1], [0, 1])) is float
    assert type(metrics.weighted_rmse([0.0, 1.0], [0.0, 2.0], [1.0, 1.0])) is float


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------
def _sample(seed, n):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    score = rng.normal(size=n) + 1.5 * y_true
    return y_true, score, (score > 0.75).astype(int)


_BOOT_CASES = [
    ("accuracy", metrics.accuracy, "labels"),
    ("roc_auc", metrics.roc_auc, "scores"),
    ("kappa_quadratic", functools.partial(metrics.cohen_kappa, weights="quadratic"), "labels"),
    ("average_per_class_accuracy", metrics.average_per_class_accuracy, "labels"),
    ("sensitivity", metrics.sensitivity, "labels"),
    ("specificity", metrics.specificity, "labels"),
    ("rmse", metrics.rmse, "scores"),
    ("mae", metrics.mae, "scores"),
    ("within_1", functools.partial(metrics.within_k_accuracy, k=1), "scores"),
    ("weighted_rmse", functools.partial(metrics.weighted_rmse, weights=2.0), "scores"),
    ("weighted_mae", functools.partial(metrics.weighted_mae, weights=0.5), "scores"),
]


def _arrays(kind, seed, n):
    y_true, score, y_pred = _sample(seed, n)
    return (y_true, y_pred) if kind == "labels" else (y_true, score)


@pytest.mark.parametrize("name, fn, kind", _BOOT_CASES)
def test_bootstrap_vectorised_equals_per_resample_calls(name, fn, kind):
    arrays = _arrays(kind, 5, 150)
    groups = np.repeat(np.arange(50), 3)
    for g in (None, groups):
        fast = metrics.bootstrap_ci(fn, *arrays, n_boot=200, seed=3, groups=g)
        slow = metrics.bootstrap_ci(lambda *a, f=fn: f(*a), *arrays, n_boot=200, seed=3, groups=g)
        np.testing.assert_allclose(fast, slow, rtol=1e-10, err_msg=name)


@pytest.mark.parametrize("name, fn, kind", _BOOT_CASES)
def test_bootstrap_interval_contains_estimate_and_is_deterministic(name, fn, kind):
    arrays = _arrays(kind, 7, 400)
    value = fn(*arrays)
    low, high = metrics.bootstrap_ci(fn, *arrays, n_boot=300, seed=11)
    assert low < value < high, name
    assert metrics.bootstrap_ci(fn, *arrays, n_boot=300, seed=11) == (low, high)
    assert metrics.bootstrap_ci(fn, *arrays, n_boot=300, seed=12) != (low, high)


@pytest.mark.parametrize("name, fn, kind", _BOOT_CASES[:4])
def test_bootstrap_interval_narrows_with_more_data(name, fn, kind):
    small = metrics.bootstrap_ci(fn, *_arrays(kind, 1, 100), n_boot=300)
    large = metrics.bootstrap_ci(fn, *_arrays(kind, 1, 2000), n_boot=300)
    assert (large[1] - large[0]) < 0.6 * (small[1] - small[0]), name


def test_bootstrap_95_interval_width_matches_normal_theory():
    # Accuracy p on n rows: the 95% interval is about 2 * 1.96 * sqrt(p (1 - p) / n) wide.
    y_true = np.ones(1000, dtype=int)
    y_pred = (np.arange(1000) % 5 != 0).astype(int)  # p = 0.8
    low, high = metrics.bootstrap_ci(metrics.accuracy, y_true, y_pred, n_boot=2000, seed=0)
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 1000), rel=0.1)
    narrow = metrics.bootstrap_ci(metrics.accuracy, y_true, y_pred, n_boot=2000, alpha=0.5)
    assert (narrow[1] - narrow[0]) < 0.5 * (high - low)


def test_bootstrap_group_resampling_keeps_groups_together():
    sizes = np.array([1, 2, 3, 4, 5, 2, 3])
    groups = np.repeat(np.array(list("abcdefg")), sizes)
    row_id = np.arange(len(groups))
    seen = []

    def record(resampled_groups, resampled_rows):
        seen.append((resampled_groups.copy(), resampled_rows.copy()))
        return 0.0

    metrics.bootstrap_ci(record, groups, row_id, n_boot=50, seed=0, groups=groups)
    assert len(seen) == 50
    size_of = dict(zip("abcdefg", sizes, strict=True))
    for resampled_groups, resampled_rows in seen:
        assert sum(1 for _ in resampled_groups) == len(resampled_rows)
        np.testing.assert_array_equal(groups[resampled_rows], resampled_groups)
        # Every drawn group appears with all of its rows, as whole blocks.
        labels, counts = np.unique(resampled_groups, return_counts=True)
        for label, count in zip(labels, counts, strict=True):
            assert count % size_of[label] == 0
            rows = resampled_rows[resampled_groups == label]
            np.testing.assert_array_equal(
                np.sort(rows), np.sort(np.tile(row_id[groups == label], count // size_of[label]))
            )
        # Resamples draw as many groups as there are.
        assert sum(counts[i] // size_of[g] for i, g in enumerate(labels)) == len(sizes)


def test_bootstrap_by_group_is_wider_for_clustered_data():
    # 40 patients x 10 studies, each patient entirely right or entirely wrong: the row bootstrap
    # pretends there are 400 independent studies, the group bootstrap knows there are 40.
    patients = np.repeat(np.arange(40), 10)
    correct = np.random.default_rng(0).random(40) < 0.7
    y_true = np.ones(400, dtype=int)
    y_pred = correct[patients].astype(int)
    rows = metrics.bootstrap_ci(metrics.accuracy, y_true, y_pred, n_boot=500)
    by_patient = metrics.bootstrap_ci(metrics.accuracy, y_true, y_pred, n_boot=500, groups=patients)
    assert (by_patient[1] - by_patient[0]) > 2.5 * (rows[1] - rows[0])


def test_bootstrap_skips_undefined_resamples():
    # One positive among 20: many resamples miss it, where AUROC is undefined.
    y_true = np.zeros(20, dtype=int)
    y_true[3] = 1
    score = np.linspace(0, 1, 20)
    with pytest.warns(RuntimeWarning, match="skipped"):
        low, high = metrics.bootstrap_ci(metrics.roc_auc, y_true, score, n_boot=200)
    assert 0.0 <= low <= high <= 1.0
    with pytest.warns(RuntimeWarning, match="skipped"):
        slow = metrics.bootstrap_ci(lambda t, s: metrics.roc_auc(t, s), y_true, score, n_boot=200)
    assert slow == pytest.approx((low, high))


def test_bootstrap_all_undefined_gives_nan():
    with pytest.warns(RuntimeWarning, match="undefined on all"):
        low, high = metrics.bootstrap_ci(metrics.roc_auc, [1, 1, 1], [0.1, 0.2, 0.3], n_boot=20)
    assert np.isnan(low) and np.isnan(high)

    def always_undefined(y):
        raise ValueError("undefined")

    with pytest.warns(RuntimeWarning):
        assert np.isnan(metrics.bootstrap_ci(always_undefined, [1, 2], n_boot=5)).all()


def test_bootstrap_positional_partial_falls_back_to_calls():
    y_true, score, y_pred = _sample(2, 200)
    fixed_true = functools.partial(metrics.accuracy, y_true)
    low, high = metrics.bootstrap_ci(fixed_true, y_pred, n_boot=100)
    # y_true is fixed while y_pred is resampled: the accuracy of shuffled pairs is lower.
    assert high < metrics.accuracy(y_true, y_pred)


def test_metric_with_ci():
    y_true, score, _ = _sample(4, 300)
    value, (low, high) = metrics.metric_with_ci("auroc", metrics.roc_auc, y_true, score, n_boot=200)
    assert value == pytest.approx(skm.roc_auc_score(y_true, score))
    assert (low, high) == metrics.bootstrap_ci(metrics.roc_auc, y_true, score, n_boot=200)
    assert low < value < high
    with pytest.raises(ValueError, match="study_auroc: roc_auc is undefined"):
        metrics.metric_with_ci("study_auroc", metrics.roc_auc, [0, 0], [0.1, 0.2])


def test_mean_average_per_class_accuracy_matches_a_loop_over_tasks():
    rng = np.random.default_rng(3)
    y_true = np.stack([rng.integers(-1, 5, 200), rng.integers(-1, 2, 200)], axis=1)
    y_pred = np.stack([rng.integers(0, 5, 200), rng.integers(0, 2, 200)], axis=1)
    expected = np.mean(
        [
            skm.balanced_accuracy_score(y_true[y_true[:, t] >= 0, t], y_pred[y_true[:, t] >= 0, t])
            for t in range(2)
        ]
    )
    got = metrics.mean_average_per_class_accuracy(y_true, y_pred, num_classes=(5, 2))
    assert got == pytest.approx(expected)
    # The vectorised bootstrap draws the same resamples as the per-resample path.
    fn = functools.partial(metrics.mean_average_per_class_accuracy, num_classes=(5, 2))
    groups = np.arange(200) // 3
    fast = metrics.bootstrap_ci(fn, y_true, y_pred, n_boot=200, groups=groups)
    slow = metrics.bootstrap_ci(lambda a, b: fn(a, b), y_true, y_pred, n_boot=200, groups=groups)
    assert fast == pytest.approx(slow)
    assert fast[0] < got < fast[1]
