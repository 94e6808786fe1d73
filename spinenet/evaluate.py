"""Evaluation, prediction and evidence hotspots of SpineNet models; `metrics.json`, `report.html`.

`evaluate_model` predicts a split with the 54-view test-time augmentation of §4 (or the centre
view), computes the Table 2 / §5 metrics of `spinenet.metrics.spinenet_metrics` with 95%
intervals from a bootstrap over patients, and writes `metrics.json`, `predictions.csv` (one row
per disc) and `report.html` (Table 2 layout beside the paper's figures, confusion matrices, label
distribution beside Table 1, learning curves, Fig. 3-style evidence hotspots).

On phantoms (the data folder holds `_phantom_truth/`), `metrics.json` also gets `localisation`:
the evidence hotspots of every lesion slice of at most 16 discs scored against content-blind
controls (`spinenet.explain.hotspot_localisation`, `common.localisation`; issue 15.1).

`predict` grades the discs of segmented sagittal series or of extracted volumes (see its
docstring for the accepted inputs) and, with `explain=True`, writes one PNG per disc with the
evidence hotspots (§3) of every task over its slices.

Reference:
    Jamaludin, Kadir, Zisserman, "SpineNet", MICCAI 2016, §3, §4, §5, Tables 1-2, Fig. 3.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common import reports
from common.errors import DataError
from common.export import load_model
from common.inference import output_path
from common.phantom_truth import phantom_truth_root
from common.progress import progress
from common.run_config import read_run_config
from spinenet.augment import VolumeAugmentConfig
from spinenet.data import CONTEXT_EXTRA_SLICES
from spinenet.data import CONTEXT_MARGIN_PX
from spinenet.data import PLAIN_VOLUMES
from spinenet.data import SEQUENCES
from spinenet.data import VOLUME_SHAPE
from spinenet.data import find_dataset_root
from spinenet.data import level_name
from spinenet.data import list_series
from spinenet.data import load_volumes
from spinenet.data import mask_labels
from spinenet.data import read_dataset
from spinenet.data import task_targets
from spinenet.explain import default_explained_class
from spinenet.explain import hotspot_figure
from spinenet.explain import hotspot_localisation
from spinenet.explain import hotspot_overlay
from spinenet.explain import predict_tta
from spinenet.explain import task_hotspots
from spinenet.metrics import PAPER_COMPARISON
from spinenet.metrics import PAPER_TABLE2
from spinenet.metrics import spinenet_metrics
from spinenet.model import get_config
from spinenet.model import task_names

#: Table 1 of paper 002: label distribution (%) of the 12,018 discs of the paper's data set.
PAPER_TABLE1_PERCENT = {
    "pfirrmann": [32, 15, 23, 20, 10],
    "narrowing": [60, 12, 18, 10],
    "upper_endplate": [91, 9],
    "lower_endplate": [91, 9],
    "upper_marrow": [85, 15],
    "lower_marrow": [85, 15],
}
PAPER_NOTE = (
    "The paper's figures are on ITS data set (Genodisc: 2,009 patients, 12,018 discs from several "
    "centres, T2 sagittal; test split 203 patients / 1,217 discs; Table 2, mean of two models, "
    "branch point {branch}); the intra-rater agreement is one radiologist grading 121 patients "
    "twice. Ours are on the data set given to this run (phantoms by default): not the same "
    "measurement."
)
BINARY_TASKS = ("upper_endplate", "lower_endplate", "upper_marrow", "lower_marrow")
_TASK_TITLES = {
    "pfirrmann": "Pfirrmann grade",
    "narrowing": "disc narrowing",
    "upper_endplate": "upper endplate defect",
    "lower_endplate": "lower endplate defect",
    "upper_marrow": "upper marrow change",
    "lower_marrow": "lower marrow change",
}


def class_names(task, classes) -> list[str]:
    """Readable class names of a task (Pfirrmann grades 1-5, narrowing grades, normal/abnormal)."""
    if task == "pfirrmann":
        return [f"grade {k + 1}" for k in range(classes)]
    if classes == 2:
        return ["normal", "abnormal"]
    return [f"grade {k}" for k in range(classes)]


def model_config(model, model_path=None) -> dict:
    """The configuration a saved model was trained with (`config.json` beside the file) or, for a
    bare model file, the `paper` preset's test-time settings with the model's own tasks and input
    shape.

    Args:
        model: the loaded model.
        model_path: its file (the run's `config.json` is looked for in the same folder).

    Returns:
        A configuration dict (`spinenet.model.get_config` keys plus what `train` recorded).
    """
    config = get_config("paper")
    config.update(read_run_config(model_path))
    recorded = list(config.get("tasks") or {})
    names = sorted(
        task_names(model),
        key=lambda t: (t not in recorded, recorded.index(t) if t in recorded else 0),
    )
    config["tasks"] = {name: int(model.get_layer(name).output.shape[-1]) for name in names}
    config["input_shape"] = tuple(int(v) for v in model.input_shape[1:])
    return config


def _ordered_tasks(model, config):
    """The model's tasks in the configuration's (the paper's) order."""
    names = task_names(model)
    return [t for t in config.get("tasks", {}) if t in names] + [
        t for t in names if t not in config.get("tasks", {})
    ]


def _tta_settings(config, tta):
    use = bool(config.get("tta", True)) if tta is None else bool(tta)
    return (
        use,
        int(config.get("tta_shift_px", CONTEXT_MARGIN_PX)),
        int(config.get("tta_slice_shift", CONTEXT_EXTRA_SLICES)),
    )


def predict_records(model, records, *, config, tta=None, batch_size=None, verbose=1):
    """Class probabilities of the discs of `records` (test-time augmented unless switched off).

    Args:
        model: a SpineNet model.
        records: records from `spinenet.data.read_dataset` (or `collect_predict_inputs`).
        config: the model's configuration (`model_config`).
        tta: None (the configuration's `tta`), True (54 views) or False (centre view).
        batch_size: discs per forward pass (default: 2 with test-time augmentation, i.e. 108
            views, else 64).
        verbose: show a progress bar while extracting many discs.

    Returns:
        `(probabilities, volumes)`: dict task -> `(N, classes)`, and the `(N, 112, 224, 9)` centre
        volumes (float32) for explanations.
    """
    use, shift_px, slice_shift = _tta_settings(config, tta)
    height, width, slices = (int(v) for v in model.input_shape[1:])
    progress = None if verbose else False
    if use:
        context = load_volumes(
            records,
            context=True,
            margin_px=shift_px,
            extra_slices=slice_shift,
            progress=progress,
        )
    else:
        context = load_volumes(records, progress=progress)
    margin_y = (context.shape[1] - height) // 2
    margin_x = (context.shape[2] - width) // 2
    margin_z = (context.shape[3] - slices) // 2
    probabilities = predict_tta(
        model,
        context,
        tta=use,
        shift_px=shift_px,
        slice_shift=slice_shift,
        # the 54 views of two discs per forward pass by default
        batch_size=(54 if use else 1) * int(batch_size or (2 if use else 64)),
    )
    centre = np.asarray(
        context[
            :,
            margin_y : margin_y + height,
            margin_x : margin_x + width,
            margin_z : margin_z + slices,
        ],
        dtype=np.float32,
    )
    return probabilities, centre


def hotspot_augmentation(config):
    """The augmentation whose random copies are averaged into evidence hotspots: the run's own
    training augmentation (§3: "randomly augmented images using our training augmentation
    scheme"), the paper's ranges for a model without a run configuration."""
    values = {**config, "scale_range": tuple(config.get("scale_range", (0.9, 1.1)))}
    return VolumeAugmentConfig.from_config(values)


def _display_name(record):
    if isinstance(record.get("image_path"), str):
        return Path(record["image_path"]).name
    return Path(record["volume_path"]).name


def _hotspot_examples(model, records, volumes, probabilities, targets, config, count=4):
    """Fig. 3 of the paper on our test split: per binary task one randomly chosen disc graded
    abnormal, its slices over the task's evidence hotspot (class 'abnormal')."""
    items = []
    for task in BINARY_TASKS:
        if task not in targets:
            continue
        positives = np.flatnonzero(targets[task] == 1)
        if positives.size == 0:
            continue
        # A randomly chosen abnormal disc, as the paper's examples are (seeded: the same each run).
        index = int(np.random.default_rng(len(items)).choice(positives))
        heat = task_hotspots(
            model,
            volumes[index],
            {task: 1},
            n_augment=int(config.get("hotspot_copies", 16)),
            seed=index,
            augment=hotspot_augmentation(config),
        )[task]
        picture = hotspot_overlay(volumes[index], heat, slices=(1, 4, 7))
        predicted = int(np.argmax(probabilities[task][index]))
        names = class_names(task, probabilities[task].shape[1])
        record = records.iloc[index]
        level = record.get("level") if isinstance(record.get("level"), str) else ""
        caption = (
            f"{_TASK_TITLES.get(task, task)}: {_display_name(record)} {level} (graded abnormal; "
            f"predicted {names[predicted]}, p(abnormal) = {probabilities[task][index, 1]:.2f}); "
            "slices 2, 5, 8, evidence for 'abnormal' below"
        )
        items.append((_hotspot_png(picture), caption))
        if len(items) >= count:
            break
    return items


def _hotspot_png(picture, title=None, height_px=None):
    """PNG of a hotspot picture with the colour bar of its red blend (common overlay encoder)."""
    from matplotlib.colors import LinearSegmentedColormap

    # hotspot_overlay paints gray * (1 - 0.7 h) + 0.7 h red: on a mid-gray film, gray to red
    hotspot_colours = LinearSegmentedColormap.from_list(
        "hotspot", [(0.5, 0.5, 0.5), (0.5 * 0.3 + 0.7, 0.15, 0.15)]
    )
    return reports.image_png(
        picture,
        title,
        cmap=hotspot_colours,
        colorbar_label="evidence (scaled to the 99.5th percentile)",
        width_in=min(9.0, 1.5 + 0.012 * np.asarray(picture).shape[1]),
        height_px=height_px,
    )


def _hotspot_row_title(task, probabilities, explained):
    """A hotspot row's label: the prediction as `predictions.csv` has it (arg max) and its
    probability, then the class whose evidence the row shows."""
    names = class_names(task, len(probabilities))
    predicted = int(np.argmax(probabilities))
    text = f"{_TASK_TITLES.get(task, task)}: {names[predicted]} (p {probabilities[predicted]:.2f})"
    if explained != predicted:
        text += f"; map: evidence for {names[explained]}"
    return text


def _prediction_frame(records, probabilities, targets=None):
    frame = pd.DataFrame(
        {
            "image": [_display_name(r) for r in records.to_dict("records")],
            "ivd_label": [
                int(v) if pd.notna(v) else -1
                for v in records.get("ivd_label", pd.Series([-1] * len(records)))
            ],
            "level": [
                v if isinstance(v, str) else ""
                for v in records.get("level", pd.Series([""] * len(records)))
            ],
        }
    )
    if "volume_index" in records.columns:
        frame["volume_index"] = [
            int(v) if pd.notna(v) else -1 for v in records["volume_index"].to_numpy()
        ]
    for task, probs in probabilities.items():
        if targets is not None:
            frame[f"{task}_true"] = np.asarray(targets[task]).astype(int)
        frame[f"{task}_pred"] = probs.argmax(axis=1)
        if task == "pfirrmann":
            frame["pfirrmann_grade_pred"] = probs.argmax(axis=1) + 1
        for k in range(probs.shape[1]):
            frame[f"{task}_prob{k}"] = np.round(probs[:, k], 6)
    return frame


def build_report(
    metrics,
    targets,
    probabilities,
    config,
    history_path=None,
    hotspots=(),
    tta=True,
    data_path=None,
    localisation_panels=(),
):
    """The evaluation report of a SpineNet model from its numbers (what `evaluate_model` writes).

    Args:
        metrics: `spinenet_metrics`' dict with `discs` and `patients`.
        targets: dict task -> `(N,)` true classes (-1: unlabelled).
        probabilities: dict task -> `(N, C)` class probabilities.
        config: the model's configuration (`branch_point`).
        history_path: the run's `history.csv`, if any.
        hotspots: `(png, caption)` evidence-hotspot pictures.
        tta: whether predictions average the test-time views.
        data_path: the data set's path, shown in the header.
        localisation_panels: `(png, caption)` lesion slices whose hotspot is drawn beside the
            controls (shown with `metrics["localisation"]`, phantoms only).

    Returns:
        The `common.reports.HTMLReport`.
    """
    branch = str(config.get("branch_point", "conv5"))
    report = reports.HTMLReport("SpineNet: lumbar disc grading, evaluation", data_path=data_path)

    def _with_ci(value, interval):  # the bootstrap resamples patients: one patient, no interval
        cases = metrics.get("patients")
        return reports.value_with_ci(value, interval, cases=cases, unit="patient")

    patients = (
        reports.count_noun(metrics["patients"], "patient")
        if metrics.get("patients") is not None
        else "unknown patients"
    )
    report.add_paragraph(
        f"{reports.count_noun(metrics['discs'], 'disc')} of {patients}; predictions are the "
        + ("average of the 54 test-time views of §4" if tta else "centre view only (TTA off)")
        + "; 95% intervals by bootstrap over patients. Average per-class accuracy per task "
        "(the measure of Table 2), labelled discs only."
    )
    rows = []
    for task, value in metrics["per_class_accuracy"].items():
        paper = PAPER_TABLE2.get(task, {})
        mean_std = paper.get(branch)
        rows.append(
            {
                "task": _TASK_TITLES.get(task, task),
                "classes": int(probabilities[task].shape[1]),
                "labelled discs": metrics["labelled"].get(task),
                "average per-class accuracy [95% CI]": _with_ci(
                    value, metrics["ci"]["per_class_accuracy"].get(task)
                ),
                "kappa": metrics["kappa"].get(task),
                f"paper Table 2, {branch} (its data set)": (
                    None if mean_std is None else f"{mean_std[0]:.1f} ± {mean_std[1]:.1f} %"
                ),
                "paper intra-rater (its data set)": (
                    None if "intra_rater" not in paper else f"{paper['intra_rater']:.1f} %"
                ),
            }
        )
    report.add_heading("Table 2 layout: average per-class accuracy")
    report.add_table(rows, caption=PAPER_NOTE.format(branch=branch))
    report.add_metrics(
        {
            "mean_per_class_accuracy": _with_ci(
                metrics["mean_per_class_accuracy"], metrics["ci"].get("mean_per_class_accuracy")
            )
        },
        ci={"mean_per_class_accuracy": metrics["ci"].get("mean_per_class_accuracy")},
        reference={
            "mean_per_class_accuracy": float(
                np.mean(
                    [PAPER_TABLE2[t][branch][0] for t in PAPER_TABLE2 if branch in PAPER_TABLE2[t]]
                )
            )
            / 100.0
        },
        reference_note=f"mean of Table 2's six tasks, branch point {branch}, the paper's data set",
    )
    report.add_heading("§5: the protocol of Lootus et al.")
    comparison = []
    for key, label in (
        ("pfirrmann_within_1", "Pfirrmann within ±1 grade"),
        ("narrowing_binary_accuracy", "narrowing, normal vs abnormal"),
    ):
        paper_key = "pfirrmann_within_1" if key.startswith("pfirrmann") else "narrowing_binary"
        interval = metrics["ci"].get(key)
        value = metrics.get(key)
        comparison.append(
            {
                "measure (accuracy)": label,
                "this run [95% CI]": _with_ci(value, interval),
                "SpineNet, paper §5 (Lootus' test set)": PAPER_COMPARISON[paper_key]["spinenet"]
                / 100.0,
                "Lootus et al. [7] (same set)": PAPER_COMPARISON[paper_key]["lootus"] / 100.0,
            }
        )
    report.add_table(
        comparison,
        caption="§5 compares on Lootus' test set (not ours); with SPIDER's binary narrowing the "
        "binary accuracy is the plain accuracy.",
    )
    report.add_heading("Label distribution: this split beside Table 1")
    distribution = []
    for task, probs in probabilities.items():
        y = np.asarray(targets[task])
        labelled = y[y >= 0]
        counts = np.bincount(labelled, minlength=probs.shape[1])
        paper = PAPER_TABLE1_PERCENT.get(task, [])
        distribution.append(
            {
                "task": _TASK_TITLES.get(task, task),
                "this split (n, %)": ", ".join(
                    f"{name}: {int(c)} ({100.0 * c / max(len(labelled), 1):.0f}%)"
                    for name, c in zip(class_names(task, probs.shape[1]), counts)
                ),
                "paper Table 1 (its 12,018 discs)": ", ".join(
                    f"{name}: {v}%"
                    for name, v in zip(
                        ["normal", "abnormal"]
                        if len(paper) == 2
                        else [f"{k}" for k in range(1, len(paper) + 1)],
                        paper,
                    )
                )
                + (" (Table 1's rows 1-5)" if task == "pfirrmann" else "")
                + (" (Table 1's rows 1-4)" if task == "narrowing" else ""),
            }
        )
    report.add_table(distribution)
    report.add_heading("Per task: confusion matrix, ROC per class, reliability (labelled discs)")
    for task, probs in probabilities.items():
        y = np.asarray(targets[task]).astype(int)
        labelled = y >= 0
        title = _TASK_TITLES.get(task, task)
        report.add_heading(title, level=3)
        if not labelled.any():
            report.add_paragraph("n/a (no labelled disc)")
            continue
        report.add_classification(
            y[labelled], probs[labelled], class_names(task, probs.shape[1]), what=title
        )
    if history_path and os.path.exists(history_path):
        report.add_heading("Training")
        history = reports.read_history(history_path)
        shown = [c for c in ("epoch", "loss", "val_loss", "val_mean_per_class_accuracy", "lr")]
        report.add_image(
            reports.plot_learning_curves(history[[c for c in shown if c in history.columns]]),
            "Learning curves: the summed loss of the six tasks, the validation mean per-class "
            "accuracy, the learning rate (per-task losses: history.csv)",
        )
    report.add_heading("Evidence hotspots (Fig. 3 of the paper, on our test discs)")
    if hotspots:
        report.add_paragraph(
            "Per binary task, a randomly chosen test disc graded abnormal (whatever the model "
            "predicts, given in the caption): its 2nd, 5th and 8th slices (top) and the saliency "
            "|dy/dx| of the "
            "'abnormal' score per slice, averaged over randomly augmented copies mapped back (§3), "
            "in red (bottom). The paper's Fig. 3 shows the same for its test set."
        )
        report.add_images_grid(hotspots)
    else:
        report.add_paragraph("No test disc is graded abnormal for a binary task: no hotspot shown.")
    if metrics.get("localisation"):
        report.add_localisation(
            metrics["localisation"], localisation_panels, what="evidence hotspots"
        )
    return report


def evaluate_model(
    model,
    records,
    *,
    config,
    out_dir,
    history_path=None,
    tta=None,
    seed=0,
    n_boot=1000,
    batch_size=None,
    verbose=1,
    data_path=None,
):
    """Evaluates `model` on `records` (one split) and writes `metrics.json`, `predictions.csv` and
    `report.html` in `out_dir`.

    Args:
        model: a SpineNet model.
        records: the split's records (`spinenet.data.read_dataset`).
        config: the model's configuration (tasks, TTA settings, branch point).
        out_dir: output folder.
        history_path: the run's `history.csv` for the learning curves (optional).
        tta: None (the configuration's), True or False.
        seed: bootstrap seed.
        n_boot: bootstrap resamples.
        verbose: 0 quiet, 1 progress and a summary line.
        data_path: the data set's path, named in the report's header.

    Returns:
        The metrics dict: CONTRACT.md's `per_class_accuracy` ({task: value}) and
        `mean_per_class_accuracy`, with `confusion_matrices`, `kappa`, `labelled`,
        `pfirrmann_within_1`, `narrowing_binary_accuracy`, `ci` (95% intervals, same keys),
        `paper`, `discs`, `patients`, `tta`.
    """
    if len(records) == 0:
        raise DataError("no disc to evaluate (empty split)")
    records = records.reset_index(drop=True)
    tasks = _ordered_tasks(model, config)
    targets = task_targets(records, {**config, "tasks": {t: config["tasks"][t] for t in tasks}})
    use_tta = _tta_settings(config, tta)[0]
    probabilities, volumes = predict_records(
        model, records, config=config, tta=use_tta, batch_size=batch_size, verbose=verbose
    )
    probabilities = {t: probabilities[t] for t in tasks}
    groups = records["group"].astype(str).to_numpy() if "group" in records else None
    metrics = spinenet_metrics(
        targets,
        probabilities,
        n_boot=n_boot,
        seed=seed,
        groups=groups,
        branch=str(config.get("branch_point", "conv5")),
    )
    metrics["discs"] = int(len(records))
    metrics["patients"] = int(records["group"].nunique()) if "group" in records else None
    metrics["tta"] = bool(use_tta)
    hotspots = _hotspot_examples(model, records, volumes, probabilities, targets, config)
    truth_root = phantom_truth_root(data_path)
    localisation_panels = []
    if truth_root is not None:  # phantoms: the hotspots against content-blind maps (issue 15.1)
        block, localisation_panels = hotspot_localisation(
            model,
            records,
            truth_root,
            copies=int(config.get("hotspot_copies", 16)),
            augment=hotspot_augmentation(config),
            seed=seed,
            n_boot=n_boot,
        )
        if block is not None:
            metrics["localisation"] = block
    report = build_report(
        metrics,
        targets,
        probabilities,
        config,
        history_path=history_path,
        hotspots=hotspots,
        tta=use_tta,
        data_path=data_path,
        localisation_panels=localisation_panels,
    )
    reports.write_json(output_path(out_dir, "metrics.json"), metrics)
    reports.write_csv(
        output_path(out_dir, "predictions.csv"), _prediction_frame(records, probabilities, targets)
    )
    report.write(output_path(out_dir, "report.html"))
    if verbose:
        values = ", ".join(
            f"{t} {v:.3f}" for t, v in metrics["per_class_accuracy"].items() if v is not None
        )
        print(
            f"Test mean per-class accuracy {metrics['mean_per_class_accuracy']:.3f} ({values}; "
            f"{len(records)} discs, TTA {'on' if use_tta else 'off'}). "
            f"Report: {os.path.join(os.fspath(out_dir), 'report.html')}",
            flush=True,
        )
    return metrics


def evaluate(
    model, data_dir, out_dir, *, split="test", seed=None, tta=None, batch_size=None, verbose=1
):
    """Evaluates a saved `.h5` / `.keras` SpineNet model on a data set's held-out split.

    Args:
        model: the model file; the run's `config.json` beside it gives the tasks, the split seed
            and the test-time settings (without it: the paper's, seed 0).
        data_dir: a SPIDER folder or the plain layout (or a folder holding one).
        out_dir: where `metrics.json`, `report.html` and `predictions.csv` go.
        split: `test` (default), `val` or `train` of the 80:10:10 split by patient.
        seed: the split's seed (default: the run's).
        tta: None (the run's setting, on by default), True or False (`--no-tta`).
        batch_size: discs per forward pass (`predict_records`).
        verbose: 0 quiet, 1 progress.

    Returns:
        The metrics dict (see `evaluate_model`).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"Unknown split '{split}'. Available: ['test', 'train', 'val']")
    model_path = model
    model = load_model(model_path)
    config = model_config(model, model_path)
    seed = int(config.get("seed", 0)) if seed is None else int(seed)
    records = read_dataset(data_dir, seed=seed)
    chosen = records[records["split"] == split]
    if chosen.empty:
        raise DataError(f"no disc in the {split} split", path=data_dir)
    history = Path(model_path).with_name("history.csv")
    return evaluate_model(
        model,
        chosen,
        config=config,
        out_dir=out_dir,
        history_path=history if history.is_file() else None,
        tta=tta,
        seed=seed,
        batch_size=batch_size,
        verbose=verbose,
        data_path=data_dir,
    )


# ------------------------------------------------------------------------------ predict inputs

_NOT_SUPPORTED = (
    "not a .mha series or a .npy array: SpineNet grades disc volumes cut from a segmented "
    "sagittal series (a SPIDER folder, its images/ folder beside masks/, or one images/*.mha) "
    "or a volumes.npy of extracted (N, 112, 224, 9) volumes"
)


def _child(folder, name, want_dir):
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for child in sorted(folder.iterdir()):
        if child.name.lower() == name.lower() and child.is_dir() == want_dir:
            return child
    return None


def _series_rows(spider_root, *, only=None, series="preferred"):
    """Rows (image, mask) of the series of a SPIDER folder: every series, or per patient the
    first in the order of `SEQUENCES` (T2, T2 SPACE, T1)."""
    frame = list_series(spider_root)
    if only is not None:
        frame = frame[frame["image_path"].map(lambda p: Path(p).resolve() == Path(only).resolve())]
    if frame.empty:
        raise DataError("no <patient>_<t1|t2|t2_SPACE>.mha series in images/", path=spider_root)
    missing = frame[frame["mask_path"].isna()]
    if len(missing):
        name = Path(missing.iloc[0]["image_path"]).name
        raise DataError(
            f"no mask for series {name} (SpineNet finds the discs from the SPIDER mask)",
            path=Path(spider_root, "masks", name),
        )
    if series == "preferred" and only is None:
        rank = {s: i for i, s in enumerate(SEQUENCES)}
        frame = (
            frame.assign(_rank=frame["sequence"].map(rank))
            .sort_values(["patient", "_rank"], kind="stable")
            .groupby("patient", sort=False)
            .head(1)
            .drop(columns="_rank")
        )
    return frame


def _disc_records(frame):
    rows = []
    for row in frame.itertuples():
        discs = sorted(v - 200 for v in mask_labels(row.mask_path) if 201 <= v <= 225)
        if not discs:
            raise DataError("the mask has no disc (labels 201-225)", path=row.mask_path)
        for ivd in discs:
            rows.append(
                {
                    "patient": row.patient,
                    "sequence": row.sequence,
                    "image_path": row.image_path,
                    "mask_path": row.mask_path,
                    "ivd_label": int(ivd),
                    "level": level_name(ivd),
                }
            )
    return rows


def _volume_records(path, shape):
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read array: {error}", path=path) from None
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(shape):
        raise DataError(
            f"expected volumes of shape (N, {', '.join(map(str, shape))}), got {array.shape}",
            path=path,
        )
    if array.shape[0] == 0:
        raise DataError("no volume in the array", path=path)
    return [
        {"volume_path": os.fspath(path), "volume_index": i, "level": f"volume {i}"}
        for i in range(array.shape[0])
    ]


def collect_predict_inputs(inputs, *, volume_shape=VOLUME_SHAPE, series="preferred"):
    """The discs to grade, from the inputs `predict` accepts (see `predict`).

    Args:
        inputs: paths (see `predict`).
        volume_shape: the model's input shape (for `.npy` inputs).
        series: `preferred` (one series per patient for folder inputs: T2, then T2 SPACE, then
            T1) or `all`.

    Returns:
        A records DataFrame: series discs (`image_path`, `mask_path`, `ivd_label`, `level`,
        `patient`, `sequence`) and array volumes (`volume_path`, `volume_index`), in input order,
        duplicates removed.
    """
    if series not in ("preferred", "all"):
        raise ValueError(f"Unknown series choice '{series}'. Available: ['all', 'preferred']")
    rows = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            volumes = _child(path, PLAIN_VOLUMES, False)
            if volumes is not None:
                rows.extend(_volume_records(volumes, volume_shape))
                continue
            if path.name.lower() == "images" and _child(path.parent, "masks", True) is not None:
                rows.extend(_disc_records(_series_rows(path.parent, series=series)))
                continue
            try:
                kind, root = find_dataset_root(path)
            except DataError:
                raise DataError(
                    "no SPIDER series (images/ + masks/) and no volumes.npy here or two levels "
                    "below",
                    path=path,
                ) from None
            if kind == "plain":
                rows.extend(_volume_records(_child(root, PLAIN_VOLUMES, False), volume_shape))
            else:
                rows.extend(_disc_records(_series_rows(root, series=series)))
        elif path.is_file():
            suffix = path.name.lower()
            if suffix.endswith(".npy"):
                rows.extend(_volume_records(path, volume_shape))
            elif suffix.endswith(".mha"):
                if _child(path.parent.parent, "masks", True) is None:
                    raise DataError(
                        "no masks/ folder beside this series' folder (SpineNet finds the discs "
                        "from the SPIDER mask, masks/<same name>)",
                        path=path,
                    )
                rows.extend(_disc_records(_series_rows(path.parent.parent, only=path)))
            else:
                raise DataError(_NOT_SUPPORTED, path=path)
        else:
            raise DataError("no such file or folder", path=path)
    if not rows:
        raise DataError("no input discs")
    frame = pd.DataFrame(rows)
    keys = [c for c in ("image_path", "ivd_label", "volume_path", "volume_index") if c in frame]
    frame = frame.drop_duplicates(subset=keys).reset_index(drop=True)
    frame["group"] = frame.get("patient", pd.Series([None] * len(frame)))
    return frame


def _overlay_name(record, taken):
    if isinstance(record.get("image_path"), str):
        stem = f"{Path(record['image_path']).name.split('.')[0]}_ivd{int(record['ivd_label'])}"
    else:
        stem = f"{Path(record['volume_path']).stem}_{int(record['volume_index']):04d}"
    name, k = f"{stem}_hotspots.png", 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}_hotspots.png"
    taken.add(name)
    return name


def predict(
    model,
    inputs,
    out_dir,
    *,
    explain=False,
    tta=None,
    series="preferred",
    hotspot_copies=None,
    batch_size=None,
    link_uids=False,
    dicom_out=None,
    verbose=1,
):
    """Grades lumbar discs: one row per disc in `OUT/predictions.csv`.

    Inputs. SpineNet grades a disc VOLUME (112 x 224 pixels x 9 sagittal slices about the disc,
    §4), which is cut from a sagittal series with the series' segmentation (the SPIDER mask tells
    where the discs and their vertebrae are). A plain image, DICOM file or series without a mask
    cannot be graded (there is no disc detector in the paper's pipeline). Accepted, and mixed
    freely:

    - a SPIDER folder (holding `images/` and `masks/`, gradings not needed), or a folder up to two
      levels above one: every disc labelled in the masks (201-225) of one series per patient
      (T2, else T2 SPACE, else T1; `series="all"` for every series);
    - an `images/` folder whose sibling `masks/` holds the masks: the same;
    - one series `images/<patient>_<t1|t2|t2_SPACE>.mha` (its mask is `../masks/<same name>`);
    - a `.npy` array of extracted volumes `(N, 112, 224, 9)` in [0, 1],
      normalised as `spinenet.data` does (e.g. the plain layout's `volumes.npy`), or a folder
      holding `volumes.npy`.

    Args:
        model: model file (`.h5` or `.keras`); the run's `config.json` beside it is read.
        inputs: paths as above.
        out_dir: output folder.
        explain: also write `OUT/<series>_ivd<N>_hotspots.png` (or `<array>_<i>_hotspots.png`) per
            disc: its slices 2, 5 and 8 on top and, one row per task, the evidence hotspot (§3)
            of the class shown in the row label over them (binary tasks: 'abnormal', the
            evidence for the pathology as in Fig. 3; graded tasks: the predicted grade): the
            saliency |dy_c/dx| per slice, averaged over `hotspot_copies` copies augmented as the
            run was trained and mapped back.
        tta: None (the run's setting, default on: 54 views), True or False.
        series: `preferred` or `all` (folder inputs; see above).
        hotspot_copies: augmented copies averaged per hotspot map (default: the run's, 16).
        batch_size: discs per forward pass (`predict_records`).
        link_uids, dicom_out: the shared flags of `predict`; SpineNet's inputs are `.mha` series
            and `.npy` volumes, never DICOM, so there is nothing to link or to write as DICOM
            (`dicom_out` prints a note saying so).
        verbose: 0 quiet, 1 progress.

    Returns:
        The predictions DataFrame: `image` (series file or array file name), `ivd_label` (-1 for
        arrays), `level` (e.g. `L4/L5`, or `volume <i>`), `volume_index` (arrays), per task
        `<task>_pred` (class index; `pfirrmann_grade_pred` = grade 1-5) and `<task>_prob<k>`,
        and `overlay` with `explain`.
    """
    model_path = model
    model = load_model(model_path)
    config = model_config(model, model_path)
    shape = tuple(int(v) for v in model.input_shape[1:])
    records = collect_predict_inputs(inputs, volume_shape=shape, series=series)
    if "image_path" in records and records["image_path"].notna().any() and shape != VOLUME_SHAPE:
        raise DataError(
            f"this model takes {shape} volumes; discs are cut from series at {VOLUME_SHAPE}: "
            "pass extracted volumes (.npy) instead",
            path=model_path,
        )
    if dicom_out is not None:
        print(
            "--dicom-out: no DICOM input (SpineNet grades .mha series and .npy volumes); "
            "nothing written there",
            file=sys.stderr,
        )
    if verbose:
        print(f"Grading {len(records)} discs with {Path(model_path).name}", flush=True)
    probabilities, volumes = predict_records(
        model, records, config=config, tta=tta, batch_size=batch_size, verbose=verbose
    )
    _warn_range(volumes)
    probabilities = {t: probabilities[t] for t in _ordered_tasks(model, config)}
    frame = _prediction_frame(records, probabilities)
    if explain:
        copies = int(config.get("hotspot_copies", 16) if hotspot_copies is None else hotspot_copies)
        augment = hotspot_augmentation(config)
        taken, names = set(), []
        tasks = list(probabilities)
        for index in progress(
            range(len(records)), desc="hotspots", unit="discs", enabled=bool(verbose)
        ):
            classes = {t: default_explained_class(probabilities[t][index]) for t in tasks}
            maps = task_hotspots(
                model,
                volumes[index],
                classes,
                n_augment=copies,
                seed=index,
                augment=augment,
            )
            titles = {
                t: _hotspot_row_title(t, probabilities[t][index], c) for t, c in classes.items()
            }
            name = _overlay_name(records.iloc[index].to_dict(), taken)
            picture = hotspot_figure(volumes[index], maps, titles=titles)
            png = _hotspot_png(picture, height_px=picture.shape[0])
            reports.save_png(output_path(out_dir, name), png)
            names.append(name)
        frame["overlay"] = names
    reports.write_csv(output_path(out_dir, "predictions.csv"), frame)
    if verbose:
        print(
            f"{len(frame)} discs graded: {os.path.join(os.fspath(out_dir), 'predictions.csv')}",
            flush=True,
        )
    return frame


def _warn_range(volumes):
    high = float(np.nanmax(volumes)) if volumes.size else 0.0
    if high > 1.5:
        warnings.warn(
            f"volume values reach {high:.3g}: SpineNet expects volumes normalised to [0, 1] "
            "(vertebral median 0.5)",
            stacklevel=2,
        )
