"""SpineNet's evaluation: average per-class accuracy per task (Table 2), and the §5 comparisons.

`spinenet_metrics` turns the targets and predicted probabilities of the six tasks into the
`metrics.json` content of CONTRACT.md (`per_class_accuracy`, `mean_per_class_accuracy`, and their
95% bootstrap intervals under `ci`, resampling patients when `groups` is given) plus confusion
matrices, Cohen's kappa (quadratic for the graded tasks, unweighted for the binary ones),
Pfirrmann accuracy within +-1 grade and binary normal/abnormal narrowing accuracy (the protocol of
Lootus [7] in §5), and the paper's figures beside ours (`paper`).

Reference:
    Paper 002, §5 "Evaluation protocols", Table 2 and "Comparison to the state-of-the-art".
"""

from __future__ import annotations

import functools

import numpy as np

from common.metrics import accuracy
from common.metrics import average_per_class_accuracy
from common.metrics import bootstrap_ci
from common.metrics import cohen_kappa
from common.metrics import confusion_matrix
from common.metrics import mean_average_per_class_accuracy
from common.metrics import within_k_accuracy

#: Table 2 of paper 002 (test set, mean and std in %): the intra-rater agreement and SpineNet for
#: each branch point ("none" = six separate networks).
PAPER_TABLE2 = {
    "pfirrmann": {
        "intra_rater": 70.4,
        "none": (69.8, 0.4),
        "conv3": (71.2, 1.0),
        "conv4": (70.9, 0.1),
        "conv5": (71.2, 0.4),
        "fc6": (69.8, 0.4),
        "fc7": (70.9, 0.6),
    },
    "narrowing": {
        "intra_rater": 72.0,
        "none": (72.3, 2.1),
        "conv3": (74.4, 0.4),
        "conv4": (73.3, 1.9),
        "conv5": (73.9, 0.7),
        "fc6": (73.2, 0.1),
        "fc7": (74.5, 0.7),
    },
    "upper_endplate": {
        "intra_rater": 80.7,
        "none": (79.0, 0.5),
        "conv3": (83.0, 1.5),
        "conv4": (81.7, 2.5),
        "conv5": (84.8, 0.6),
        "fc6": (85.8, 0.3),
        "fc7": (85.7, 0.1),
    },
    "lower_endplate": {
        "intra_rater": 83.3,
        "none": (79.5, 1.2),
        "conv3": (82.8, 1.5),
        "conv4": (84.5, 1.2),
        "conv5": (87.3, 2.3),
        "fc6": (85.8, 2.0),
        "fc7": (86.4, 2.0),
    },
    "upper_marrow": {
        "intra_rater": 92.5,
        "none": (88.1, 0.6),
        "conv3": (89.1, 0.1),
        "conv4": (89.2, 0.2),
        "conv5": (90.1, 0.4),
        "fc6": (89.2, 0.3),
        "fc7": (89.2, 0.5),
    },
    "lower_marrow": {
        "intra_rater": 91.4,
        "none": (87.3, 0.3),
        "conv3": (88.2, 0.7),
        "conv4": (88.9, 0.2),
        "conv5": (89.0, 0.4),
        "fc6": (88.5, 0.8),
        "fc7": (88.2, 0.7),
    },
}
#: §5: accuracy (%) on Lootus' protocol, SpineNet and Lootus et al. [7].
PAPER_COMPARISON = {
    "pfirrmann_within_1": {"spinenet": 96.1, "lootus": 87.4},
    "narrowing_binary": {"spinenet": 87.8, "lootus": 83.7},
}
_GRADED = ("pfirrmann", "narrowing")


def _labels(probabilities):
    return {task: np.asarray(p).argmax(axis=1) for task, p in probabilities.items()}


def mean_per_class_accuracy(targets, probabilities) -> float:
    """The mean over tasks of the average per-class accuracy (labelled discs only).

    Args:
        targets: dict task -> int array (N,), -1 for a missing label.
        probabilities: dict task -> float array (N, classes) (or class scores).

    Returns:
        The mean over the tasks that have a label; NaN when none has.
    """
    tasks = [t for t in probabilities if t in targets]
    if not tasks:
        return float("nan")
    predicted = _labels({t: probabilities[t] for t in tasks})
    y_all = np.stack([np.asarray(targets[t]).astype(np.int64).ravel() for t in tasks], axis=1)
    p_all = np.stack([predicted[t] for t in tasks], axis=1)
    classes = [int(np.asarray(probabilities[t]).shape[1]) for t in tasks]
    return mean_average_per_class_accuracy(y_all, p_all, classes)


def _interval(metric_fn, *arrays, n_boot, seed, groups):
    low, high = bootstrap_ci(metric_fn, *arrays, n_boot=n_boot, seed=seed, groups=groups)
    return [
        None if not np.isfinite(low) else float(low),
        None if not np.isfinite(high) else float(high),
    ]


def spinenet_metrics(targets, probabilities, *, n_boot=1000, seed=0, groups=None, branch="conv5"):
    """The evaluation of §5 for the six tasks.

    Args:
        targets: dict task -> int array (N,), -1 for a missing label.
        probabilities: dict task -> float array (N, classes).
        n_boot: bootstrap resamples for the 95% intervals (0: none).
        seed: bootstrap seed.
        groups: optional patient id per disc: the bootstrap resamples patients.
        branch: the Table 2 column to put beside ours (`conv5`: the paper's preset).

    Returns:
        A JSON-ready dict: `per_class_accuracy` {task}, `mean_per_class_accuracy`,
        `confusion_matrices` {task: rows = true class}, `kappa` {task} (quadratic for Pfirrmann
        and narrowing with more than 2 classes, else unweighted), `labelled` (discs with a label),
        `pfirrmann_within_1` (accuracy within +-1 grade), `narrowing_binary_accuracy` (normal 0
        vs abnormal > 0; None when the task is absent), `ci` (95% intervals as [low, high] for
        every one of these numbers, under the same keys), and `paper` (Table 2's intra-rater and
        `branch` figures as fractions, and §5's comparison).
    """
    predicted = _labels(probabilities)
    tasks = [t for t in probabilities if t in targets]
    out = {
        "per_class_accuracy": {},
        "mean_per_class_accuracy": None,
        "ci": {"per_class_accuracy": {}, "kappa": {}} if n_boot else {"per_class_accuracy": {}},
        "confusion_matrices": {},
        "kappa": {},
        "labelled": {},
        "pfirrmann_within_1": None,
        "narrowing_binary_accuracy": None,
    }
    num_classes = []
    for task in tasks:
        k = int(np.asarray(probabilities[task]).shape[1])
        num_classes.append(k)
        y = np.asarray(targets[task]).astype(np.int64)
        p = predicted[task]
        labelled = y >= 0
        out["labelled"][task] = int(labelled.sum())
        if not labelled.any():
            out["per_class_accuracy"][task] = None
            continue
        y, p = y[labelled], p[labelled]
        out["per_class_accuracy"][task] = average_per_class_accuracy(y, p, num_classes=k)
        out["confusion_matrices"][task] = confusion_matrix(y, p, num_classes=k).tolist()
        kappa = cohen_kappa(
            y, p, weights="quadratic" if task in _GRADED and k > 2 else None, num_classes=k
        )
        out["kappa"][task] = None if not np.isfinite(kappa) else float(kappa)
        boot = functools.partial(
            _interval,
            n_boot=n_boot,
            seed=seed,
            groups=None if groups is None else np.asarray(groups)[labelled],
        )
        if n_boot:
            out["ci"]["per_class_accuracy"][task] = boot(
                functools.partial(average_per_class_accuracy, num_classes=k), y, p
            )
            out["ci"]["kappa"][task] = boot(
                functools.partial(
                    cohen_kappa,
                    weights="quadratic" if task in _GRADED and k > 2 else None,
                    num_classes=k,
                ),
                y,
                p,
            )
        if task == "pfirrmann":
            out["pfirrmann_within_1"] = within_k_accuracy(y, p, k=1)
            if n_boot:
                out["ci"]["pfirrmann_within_1"] = boot(
                    functools.partial(within_k_accuracy, k=1), y, p
                )
        if task == "narrowing":
            out["narrowing_binary_accuracy"] = float(np.mean((y > 0) == (p > 0)))
            if n_boot:
                out["ci"]["narrowing_binary_accuracy"] = boot(
                    accuracy, (y > 0).astype(np.int64), (p > 0).astype(np.int64)
                )
    y_all = np.stack([np.asarray(targets[t]).astype(np.int64) for t in tasks], axis=1)
    p_all = np.stack([predicted[t] for t in tasks], axis=1)
    out["mean_per_class_accuracy"] = mean_average_per_class_accuracy(y_all, p_all, num_classes)
    if n_boot:
        out["ci"]["mean_per_class_accuracy"] = _interval(
            functools.partial(mean_average_per_class_accuracy, num_classes=tuple(num_classes)),
            y_all,
            p_all,
            n_boot=n_boot,
            seed=seed,
            groups=groups,
        )
    out["paper"] = {
        "table2": {
            task: {
                "intra_rater": PAPER_TABLE2[task]["intra_rater"] / 100.0,
                branch: PAPER_TABLE2[task][branch][0] / 100.0,
            }
            for task in tasks
            if task in PAPER_TABLE2
        },
        "comparison": {
            k: {m: v / 100.0 for m, v in d.items()} for k, d in PAPER_COMPARISON.items()
        },
    }
    return out
