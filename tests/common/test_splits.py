"""common.splits: groups stay whole, labels stay balanced, the same seed gives the same split."""

import numpy as np
import pandas as pd
import pytest

from common.errors import DataError
from common.splits import assign_validation
from common.splits import split_by_group

SEEDS = [0, 1, 2]


def _patients(seed, n_patients=400, max_rows=3, class_probs=(0.55, 0.25, 0.12, 0.05, 0.03)):
    """One label per patient (e.g. a KL grade), 1..max_rows images per patient."""
    rng = np.random.default_rng(seed)
    label = rng.choice(len(class_probs), size=n_patients, p=class_probs)
    rows = rng.integers(1, max_rows + 1, n_patients)
    pid = np.repeat(np.arange(n_patients), rows)
    frame = pd.DataFrame({"patient": [f"P{p:04d}" for p in pid], "grade": label[pid]})
    return frame.sample(frac=1.0, random_state=seed)  # rows in no particular order


def _splits_of_groups(frame, split, group_col="patient"):
    return split.groupby(frame[group_col]).nunique()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "fractions, val",
    [
        ({"train": 0.7, "test": 0.3}, 0.1),
        ({"train": 0.8, "test": 0.2}, 0.0),
        ({"train": 0.6, "val": 0.2, "test": 0.2}, 0.0),
    ],
)
def test_groups_whole_and_fractions_met(seed, fractions, val):
    frame = _patients(seed)
    split = split_by_group(
        frame,
        group_col="patient",
        stratify_col="grade",
        fractions=fractions,
        val_fraction_of_train=val,
        seed=seed,
    )
    assert split.name == "split"
    assert split.index.equals(frame.index)
    assert (_splits_of_groups(frame, split) == 1).all()
    expected = {k: v for k, v in fractions.items() if k != "train"}
    expected["train"] = fractions["train"] * (1 - val)
    if val:
        expected["val"] = fractions["train"] * val
    shares = split.value_counts(normalize=True)
    assert set(shares.index) == set(expected)
    for name, share in expected.items():
        assert shares[name] == pytest.approx(share, abs=0.01)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_stratum_follows_the_fractions(seed):
    # Stratified: in every grade, each split holds its share of the rows to within about one patient
    # (3 rows), even for the rare grades; a random split is off by ~10 rows on the common grade.
    frame = _patients(seed)
    split = split_by_group(frame, group_col="patient", stratify_col="grade", seed=seed)
    targets = {"train": 0.63, "val": 0.07, "test": 0.3}
    for grade in frame["grade"].unique():
        in_grade = frame["grade"] == grade
        for name, share in targets.items():
            assert abs((in_grade & (split == name)).sum() - share * in_grade.sum()) <= 4.0
    overall = frame["grade"].value_counts(normalize=True)
    for name in targets:
        within = frame.loc[split == name, "grade"].value_counts(normalize=True)
        assert (within.reindex(overall.index, fill_value=0) - overall).abs().max() < 0.04


def test_stratification_beats_random_on_rare_class():
    # 12 rare patients among 300 (one image each): every seed puts 3 or 4 (0.3 x 12) in test,
    # where a random split would put 0..8.
    rare_in_test = []
    for seed in range(10):
        frame = _patients(seed, n_patients=300, max_rows=1, class_probs=(0.96, 0.04))
        frame.loc[:, "grade"] = 0
        rare = frame["patient"].isin(sorted(frame["patient"].unique())[:12])
        frame.loc[rare, "grade"] = 1
        split = split_by_group(
            frame, group_col="patient", stratify_col="grade", val_fraction_of_train=0, seed=seed
        )
        rare_in_test.append(frame.loc[rare & (split == "test"), "patient"].nunique())
    assert set(rare_in_test) <= {3, 4}


@pytest.mark.parametrize("seed", SEEDS)
def test_group_label_max_stratifies_by_worst_row(seed):
    # Each patient: two knees of grade 0 and one of grade 0 or 1. The majority is always 0, the max
    # tells the patients apart; with "max" the grade-1 patients are spread by the fractions.
    rng = np.random.default_rng(seed)
    worst = (rng.random(200) < 0.2).astype(int)
    frame = pd.DataFrame(
        {
            "patient": np.repeat(np.arange(200), 3),
            "kl": np.stack([np.zeros(200, int), np.zeros(200, int), worst], axis=1).ravel(),
        }
    )
    split = split_by_group(
        frame,
        group_col="patient",
        stratify_col="kl",
        group_label="max",
        val_fraction_of_train=0,
        seed=seed,
    )
    test_patients = frame.loc[split == "test", "patient"].unique()
    assert abs(worst[test_patients].sum() - 0.3 * worst.sum()) <= 1.0


def test_majority_label_breaks_ties_to_larger_label():
    frame = pd.DataFrame({"patient": [1, 1, 2, 2, 2], "kl": [0, 3, 1, 1, 4]})
    # Patient 1: tie 0/3 -> 3; patient 2: majority 1. Two strata, one patient each: both are dealt
    # first in their stratum, and the repair gives test one of them.
    split = split_by_group(frame, group_col="patient", stratify_col="kl", val_fraction_of_train=0)
    assert sorted(split.groupby(frame["patient"]).first()) == ["test", "train"]


@pytest.mark.parametrize("seed", SEEDS)
def test_deterministic_and_independent_of_row_order(seed):
    frame = _patients(seed)
    first = split_by_group(frame, group_col="patient", stratify_col="grade", seed=seed)
    again = split_by_group(frame, group_col="patient", stratify_col="grade", seed=seed)
    pd.testing.assert_series_equal(first, again)
    shuffled = frame.sample(frac=1.0, random_state=99)
    reordered = split_by_group(shuffled, group_col="patient", stratify_col="grade", seed=seed)
    pd.testing.assert_series_equal(reordered.loc[frame.index], first)
    other = split_by_group(frame, group_col="patient", stratify_col="grade", seed=seed + 10)
    assert not other.equals(first)


@pytest.mark.parametrize(
    "n_groups, val, expected",
    [
        (1, 0.1, {"train"}),
        (2, 0.1, {"train", "test"}),
        (3, 0.1, {"train", "val", "test"}),
        (3, 0.0, {"train", "test"}),
        (5, 0.1, {"train", "val", "test"}),
    ],
)
@pytest.mark.parametrize("stratify", [None, "label"])
def test_tiny_inputs(n_groups, val, expected, stratify):
    frame = pd.DataFrame({"g": np.arange(n_groups), "label": np.arange(n_groups) % 2})
    split = split_by_group(frame, group_col="g", stratify_col=stratify, val_fraction_of_train=val)
    assert set(split) == expected
    assert (split == "train").sum() >= 1


def test_tiny_input_with_small_train_fraction_still_has_train():
    frame = pd.DataFrame({"g": [0]})
    split = split_by_group(
        frame, group_col="g", fractions={"train": 0.2, "test": 0.8}, val_fraction_of_train=0
    )
    assert split.tolist() == ["train"]


def test_missing_labels_and_mixed_group_types():
    frame = pd.DataFrame(
        {"g": ["a", "a", "b", 3, 3, "c", "d"], "y": [1.0, np.nan, np.nan, 0.0, 1.0, 0.0, 1.0]}
    )
    split = split_by_group(frame, group_col="g", stratify_col="y", seed=4)
    assert (split.groupby(frame["g"].astype(str)).nunique() == 1).all()
    assert (split == "train").any()


@pytest.mark.parametrize("seed", SEEDS)
def test_assign_validation(seed):
    frame = _patients(seed)
    split = assign_validation(
        frame, group_col="patient", fraction=0.15, seed=seed, stratify_col="grade"
    )
    assert set(split) == {"train", "val"}
    assert (_splits_of_groups(frame, split) == 1).all()
    assert (split == "val").mean() == pytest.approx(0.15, abs=0.01)
    pd.testing.assert_series_equal(
        split,
        assign_validation(
            frame, group_col="patient", fraction=0.15, seed=seed, stratify_col="grade"
        ),
    )
    none = assign_validation(frame, group_col="patient", fraction=0.0, seed=seed)
    assert set(none) == {"train"}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"group_col": "nope"},
            ValueError,
            r"Unknown group column 'nope'. Available: \['g', 'y'\]",
        ),
        ({"group_col": "g", "stratify_col": "z"}, ValueError, "Unknown stratify column 'z'"),
        ({"group_col": "g", "fractions": {"train": 0.5, "test": 0.4}}, ValueError, "sum to 1"),
        ({"group_col": "g", "fractions": {"test": 1.0}}, ValueError, "'train'"),
        (
            {"group_col": "g", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}},
            ValueError,
            "val_fraction_of_train=0",
        ),
        ({"group_col": "g", "val_fraction_of_train": 1.0}, ValueError, r"\[0, 1\)"),
        ({"group_col": "g", "group_label": "mean"}, ValueError, "Unknown group_label 'mean'"),
        ({"group_col": "y"}, DataError, "column 'y'.*missing group id at index 2"),
    ],
)
def test_bad_input(kwargs, error, message):
    frame = pd.DataFrame({"g": [1, 2, 3], "y": [0.0, 1.0, np.nan]})
    with pytest.raises(error, match=message):
        split_by_group(frame, **kwargs)


def test_empty_frame_and_bad_validation_fraction():
    with pytest.raises(ValueError, match="empty"):
        split_by_group(pd.DataFrame({"g": []}), group_col="g")
    with pytest.raises(ValueError, match="fraction"):
        assign_validation(pd.DataFrame({"g": [1, 2]}), group_col="g", fraction=1.2, seed=0)
