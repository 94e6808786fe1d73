"""Patient-level (group) splits into train / val / test, stratified by label, deterministic for a seed.

Every group (a patient, a study) lands wholly in one split, so no patient is seen in training and
testing. With a label column the groups are stratified by their majority (or max) label, so each
split's label distribution follows the whole's.

How it works: groups are ordered by stratum (their label), shuffled within each stratum with the
seeded generator, and dealt out one by one to the split that is furthest below its target share of
the rows dealt so far, counted both overall and within the group's stratum. The whole and every
stratum are then split in the target fractions to within a group or two. On tiny data a split that came out empty is given one group
from the largest split, train first: with one group everything is train; with two, train and test;
with three, train, test and val.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from common.errors import DataError

__all__ = ["assign_validation", "split_by_group"]

_GROUP_LABELS = ("majority", "max")


def split_by_group(
    frame,
    *,
    group_col,
    stratify_col=None,
    fractions=None,
    val_fraction_of_train=0.1,
    seed=0,
    group_label="majority",
):
    """Splits rows into "train", "val" and "test" with every group wholly in one split.

    Args:
        frame: pandas DataFrame, one row per example (image, knee, disc, study).
        group_col: column of the group id (e.g. patient id); no missing values.
        stratify_col: optional label column; groups are stratified by their `group_label`.
            Missing labels are ignored; a group without any label forms a stratum of its own.
        fractions: dict {split name: fraction of rows}, summing to 1 and naming "train"; default
            {"train": 0.7, "test": 0.3}.
        val_fraction_of_train: fraction of the train share carved out as "val" (0 gives no "val").
        seed: seed of the shuffle; the same seed and data give the same split (whatever the row
            order of `frame`).
        group_label: "majority" (most frequent label of the group, ties to the larger label) or
            "max" (largest label, e.g. the worse knee of a patient).

    Returns:
        pandas Series of split names, named "split", with `frame`'s index.
    """
    fractions = {"train": 0.7, "test": 0.3} if fractions is None else dict(fractions)
    _check_fractions(fractions)
    if not 0.0 <= val_fraction_of_train < 1.0:
        raise ValueError(
            f"`val_fraction_of_train` must be in [0, 1), got {val_fraction_of_train!r}."
        )
    if "val" in fractions and val_fraction_of_train > 0:
        raise ValueError(
            "'val' is given both in `fractions` and by `val_fraction_of_train`; pass "
            "val_fraction_of_train=0 to use the fractions as they are."
        )
    targets = {"train": fractions["train"] * (1.0 - val_fraction_of_train)}
    if val_fraction_of_train > 0:
        targets["val"] = fractions["train"] * val_fraction_of_train
    targets.update({name: f for name, f in fractions.items() if name != "train"})
    return _split(frame, group_col, stratify_col, targets, seed, group_label)


def assign_validation(
    frame, *, group_col, fraction, seed=0, stratify_col=None, group_label="majority"
):
    """Carves a validation split out of a given training split (MURA, bone age), by group.

    Args:
        frame: pandas DataFrame of the TRAINING rows only.
        group_col: column of the group id (e.g. patient id).
        fraction: fraction of the rows to put in "val", in [0, 1).
        seed: seed of the shuffle.
        stratify_col: optional label column to stratify by (see `split_by_group`).
        group_label: "majority" or "max" (see `split_by_group`).

    Returns:
        pandas Series of "train" / "val", named "split", with `frame`'s index.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction!r}.")
    targets = {"train": 1.0 - fraction}
    if fraction > 0:
        targets["val"] = fraction
    return _split(frame, group_col, stratify_col, targets, seed, group_label)


def _check_fractions(fractions):
    if "train" not in fractions:
        raise ValueError(f"`fractions` must name a 'train' split, got {fractions}.")
    for name, value in fractions.items():
        if not isinstance(name, str):
            raise ValueError(f"Split names must be strings, got {name!r}.")
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"Fraction of split {name!r} must be a non-negative number, got {value!r}."
            )
    if fractions["train"] <= 0:
        raise ValueError("The 'train' fraction must be positive.")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"`fractions` must sum to 1, got {total:g} ({fractions}).")


def _column(frame, name, role):
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"`frame` must be a pandas DataFrame, got {type(frame).__name__}.")
    if name not in frame.columns:
        raise ValueError(f"Unknown {role} column '{name}'. Available: {list(frame.columns)}")
    return frame[name]


def _split(frame, group_col, stratify_col, targets, seed, group_label):
    groups = _column(frame, group_col, "group")
    if len(frame) == 0:
        raise ValueError("`frame` is empty: there is nothing to split.")
    if group_label not in _GROUP_LABELS:
        raise ValueError(f"Unknown group_label '{group_label}'. Available: {list(_GROUP_LABELS)}")
    missing = groups.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"missing group id at index {frame.index[np.argmax(missing)]!r}", column=group_col
        )
    try:
        unit_of_row, _ = pd.factorize(groups, sort=True)
    except TypeError:  # group ids of mixed types: order by their text
        unit_of_row, _ = pd.factorize(groups.astype(str), sort=True)
    n_units = int(unit_of_row.max()) + 1
    sizes = np.bincount(unit_of_row, minlength=n_units)
    if stratify_col is None:
        strata = np.zeros(n_units, dtype=np.int64)
    else:
        labels = _column(frame, stratify_col, "stratify")
        strata = _group_strata(unit_of_row, labels, n_units, group_label)

    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)]
    )
    names = list(targets)
    share = np.array([targets[name] for name in names], dtype=np.float64)
    assigned = np.zeros(len(names))
    assigned_in_stratum = np.zeros((int(strata.max()) + 2, len(names)))
    dealt_in_stratum = np.zeros(len(assigned_in_stratum))
    split_of_unit = np.empty(n_units, dtype=np.int64)
    dealt = 0
    for unit in order:
        size, stratum = sizes[unit], strata[unit]  # stratum -1 (no label) uses the last row
        dealt += size
        dealt_in_stratum[stratum] += size
        # Deficit of each split, below its share of the rows dealt so far, overall and in this
        # stratum; ties go to the earlier name (train first).
        deficit = share * dealt - assigned
        deficit += share * dealt_in_stratum[stratum] - assigned_in_stratum[stratum]
        k = int(np.argmax(deficit))
        split_of_unit[unit] = k
        assigned[k] += size
        assigned_in_stratum[stratum, k] += size
    _fill_empty_splits(split_of_unit, order, names, share)
    return pd.Series(
        np.asarray(names, dtype=object)[split_of_unit[unit_of_row]],
        index=frame.index,
        name="split",
    )


def _group_strata(unit_of_row, labels, n_units, group_label):
    """Integer stratum per group: its majority or max label; -1 for a group without labels."""
    rows = pd.DataFrame({"unit": unit_of_row, "label": labels.to_numpy()}).dropna()
    strata = np.full(n_units, -1, dtype=np.int64)
    if rows.empty:
        return strata
    if group_label == "max":
        per_unit = rows.groupby("unit")["label"].max()
    else:
        counts = rows.groupby(["unit", "label"]).size().rename("count").reset_index()
        counts = counts.sort_values(["unit", "count", "label"], ascending=[True, False, False])
        per_unit = counts.drop_duplicates("unit").set_index("unit")["label"]
    codes, _ = pd.factorize(per_unit.to_numpy(), sort=True)
    strata[per_unit.index.to_numpy()] = codes
    return strata


def _fill_empty_splits(split_of_unit, order, names, share):
    """Gives each empty split of positive share one group, train first, then the others by share."""
    priority = sorted(
        range(len(names)), key=lambda k: (names[k] != "train", names[k] != "test", -share[k])
    )
    for k in priority:
        if share[k] <= 0 or np.any(split_of_unit == k):
            continue
        counts = np.bincount(split_of_unit, minlength=len(names))
        # Train may take the last group of another split; other splits only take from a split
        # that keeps at least one group.
        donors = [d for d in range(len(names)) if counts[d] >= (1 if names[k] == "train" else 2)]
        if not donors:
            continue
        donor = max(donors, key=lambda d: (counts[d], -d))
        # Move the donor's last-dealt group: the one its target share needed least.
        unit = next(u for u in order[::-1] if split_of_unit[u] == donor)
        split_of_unit[unit] = k
