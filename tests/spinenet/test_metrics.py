"""SpineNet's evaluation: Table 2's average per-class accuracy and the §5 comparisons."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spinenet.metrics import PAPER_TABLE2
from spinenet.metrics import spinenet_metrics


def one_hot(labels, classes):
    return np.eye(classes)[np.asarray(labels)]


def test_per_class_accuracy_ignores_missing_labels():
    targets = {
        "pfirrmann": np.array([0, 1, 2, 3, 4, 4, -1]),
        "narrowing": np.array([0, 0, 0, 1, 1, 1, 1]),
        "upper_marrow": np.array([-1] * 7),
    }
    predicted = {
        "pfirrmann": one_hot([0, 1, 2, 4, 4, 0, 2], 5),
        "narrowing": one_hot([0, 0, 1, 1, 1, 1, 0], 2),
        "upper_marrow": one_hot([0] * 7, 2),
    }
    m = spinenet_metrics(targets, predicted, n_boot=50, seed=1, groups=list("aabbccd"))
    # Pfirrmann: classes 0, 1, 2 right, 3 wrong, 4 half right (the -1 disc is not counted).
    assert m["per_class_accuracy"]["pfirrmann"] == pytest.approx((1 + 1 + 1 + 0 + 0.5) / 5)
    assert m["per_class_accuracy"]["narrowing"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert m["per_class_accuracy"]["upper_marrow"] is None  # no label at all: not a zero
    assert m["mean_per_class_accuracy"] == pytest.approx((0.7 + (2 / 3 + 3 / 4) / 2) / 2)
    assert m["labelled"] == {"pfirrmann": 6, "narrowing": 7, "upper_marrow": 0}
    assert m["pfirrmann_within_1"] == pytest.approx(5 / 6)  # grade 5 read as 1 is off by 4
    assert m["narrowing_binary_accuracy"] == pytest.approx(5 / 7)
    assert m["confusion_matrices"]["narrowing"] == [[2, 1], [1, 3]]
    low, high = m["ci"]["mean_per_class_accuracy"]
    assert low <= m["mean_per_class_accuracy"] <= high and high - low > 0
    # Table 2 of paper 002, Conv5 column and intra-rater agreement, beside ours.
    assert m["paper"]["table2"]["pfirrmann"] == pytest.approx(
        {"intra_rater": 0.704, "conv5": 0.712}
    )
    assert m["paper"]["comparison"]["pfirrmann_within_1"]["spinenet"] == pytest.approx(0.961)
    json.dumps(m)


def test_perfect_predictions_and_table2():
    labels = np.array([0, 1, 1, 0])
    m = spinenet_metrics(
        {"lower_endplate": labels}, {"lower_endplate": one_hot(labels, 2)}, n_boot=0
    )
    assert m["per_class_accuracy"]["lower_endplate"] == 1.0 and m["kappa"]["lower_endplate"] == 1.0
    assert m["ci"] == {"per_class_accuracy": {}}
    assert PAPER_TABLE2["lower_endplate"]["conv5"] == (87.3, 2.3)  # Table 2
    assert PAPER_TABLE2["upper_marrow"]["intra_rater"] == 92.5  # Table 2
