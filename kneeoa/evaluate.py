"""Evaluation, prediction and explanation of KL-grade models; `metrics.json`, `report.html`, overlays."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from common import metrics as M
from common import reports
from common.dicom_out import write_predict_dicoms
from common.export import load_model
from common.identifiers import InputNames
from common.identifiers import data_name
from common.identifiers import report_caption
from common.inference import collect_image_paths
from common.inference import compiled_forward
from common.inference import metrics_with_ci
from common.inference import output_path
from common.progress import progress
from common.run_config import read_run_config
from kneeoa.data import load_records
from kneeoa.data import make_dataset
from kneeoa.explain import MAP_NAME
from kneeoa.explain import localisation
from kneeoa.model import TABLE1_ACCURACY
from kneeoa.model import average_logits_probabilities
from kneeoa.model import explain_model
from kneeoa.model import logits_model

KL_NAMES = [f"KL{k}" for k in range(5)]
MASK_LABEL = "attention mask (scaled to its range)"
# Paper 000, Tables 1 and 2: VGG-16 multi-loss att0, OAI + MOST test set.
PAPER_REFERENCE = {"accuracy": 0.643, "kappa_quadratic": 0.63}
PAPER_NOTE = (
    "Górriz et al. 2019, Tables 1-2, VGG-16 multi-loss att0 on the OAI + MOST test set (the paper "
    "does not say which kappa weighting it uses). Ours are on the data set given to this run "
    "(phantoms by default), so the two are not the same measurement."
)
# The paper's best base (Table 1): its column is shown when the run's base is not in Table 1.
PAPER_BASE = "vgg16"


def model_config(model, model_path=None):
    """The preprocessing and test-time settings of a model: its run's `config.json` when beside
    the file, else what the model itself shows (input size, channels, outputs)."""
    config = dict(read_run_config(model_path))  # bad JSON: a DataError naming the file
    height, width, channels = model.input_shape[1:]
    names = list(model.output_names)
    config.update(
        {
            "image_size_hw": (int(height), int(width)),
            "channels": int(channels),
            "branches": tuple(n for n in names if n.startswith("att")) or tuple(names),
            "combination": "early-fusion"
            if names == ["fusion"]
            else config.get("combination", "multi-loss"),
        }
    )
    config.setdefault("histogram_equalization", True)
    config.setdefault("augment_flip", False)
    if config.get("test_branch") not in names:
        config["test_branch"] = names[0]
    return config


def _predict_all(model, dataset, verbose=0):
    """(probabilities per output, logits per output) over a dataset, batch by batch."""
    logits_fn = compiled_forward(logits_model(model))
    probs, logits = {}, {}
    for batch in progress(dataset, desc="evaluate", unit="batches", enabled=bool(verbose)):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        out = logits_fn(images)
        for name, value in out.items():
            value = np.asarray(value, dtype=np.float64)
            logits.setdefault(name, []).append(value)
            e = np.exp(value - value.max(-1, keepdims=True))
            probs.setdefault(name, []).append(e / e.sum(-1, keepdims=True))
    return (
        {k: np.concatenate(v) for k, v in probs.items()},
        {k: np.concatenate(v) for k, v in logits.items()},
    )


def kl_metrics(y_true, y_pred, groups=None, *, per_branch=None, seed=0):
    """The CONTRACT.md metrics of a KL grader with 95% bootstrap intervals (grouped by knee owner)."""
    fns = {
        "accuracy": M.accuracy,
        "kappa_quadratic": lambda t, p: M.cohen_kappa(t, p, weights="quadratic", num_classes=5),
        "kappa_linear": lambda t, p: M.cohen_kappa(t, p, weights="linear", num_classes=5),
        "mae_kl": M.mae,
    }
    values, ci = metrics_with_ci(fns, y_true, y_pred, groups=groups, seed=seed)
    values["per_branch_accuracy"] = {}
    ci["per_branch_accuracy"] = {}
    for branch, pred in (per_branch or {}).items():
        value, interval = metrics_with_ci({"a": M.accuracy}, y_true, pred, groups=groups, seed=seed)
        values["per_branch_accuracy"][branch] = value["a"]
        ci["per_branch_accuracy"][branch] = interval["a"]
    return values, ci


def _sample_overlays(model, records, config, count=6):
    """PNG overlays of every branch's attention mask over a few test knees (one per KL grade first)."""
    explainer = explain_model(model)
    picks = []
    for grade in range(5):
        rows = records[records["kl"] == grade]
        if len(rows):
            picks.append(rows.index[0])
    picks = (picks + [i for i in records.index if i not in picks])[:count]
    subset = records.loc[picks]
    ds = make_dataset(subset, config=config, training=False, batch_size=len(subset), cache=False)
    images, _ = next(iter(ds))
    out = explainer(images, training=False)
    items = []
    for i, (_, row) in enumerate(subset.iterrows()):
        image = np.asarray(images[i])[..., 0]
        for branch in config["branches"]:
            key = f"{branch}_mask"
            if key not in out:
                continue
            mask = np.asarray(out[key][i])[..., 0]
            title = (
                f"{report_caption(row['path'])} {row.get('side', '')} KL{int(row['kl'])} {branch}"
            )
            png = reports.overlay_png(image, mask, title=title, colorbar_label=MASK_LABEL)
            items.append((png, title))
    return items


def build_report(
    values,
    ci,
    *,
    y_true,
    probs,
    preds,
    config,
    model_name,
    history_path=None,
    overlays=(),
    data_path=None,
    localisation_panels=(),
):
    """The evaluation report of a KL grader from its numbers (what `evaluate_model` writes).

    Args:
        values: the metrics (`kl_metrics` values plus `confusion_matrix`).
        ci: their 95% intervals.
        y_true: `(N,)` true KL grades.
        probs: `(N, 5)` class probabilities of the test branch.
        preds: dict branch -> `(N,)` predicted grades (the test branch's as in predictions.csv).
        config: the model's configuration (`test_branch`, `base`).
        model_name: the model's name.
        history_path: the run's `history.csv`, if any.
        overlays: `(png, caption)` attention overlays, or a text saying why there are none.
        data_path: the data set's path, shown in the header.
        localisation_panels: `(png, caption)` panels of the `localisation` block (drawn when
            `values` holds one).

    Returns:
        The `common.reports.HTMLReport`.
    """
    test_branch = config["test_branch"]
    report = reports.HTMLReport("Knee OA KL grading: evaluation", data_path=data_path)
    report.add_paragraph(
        f"Model {model_name}, test branch {test_branch}, {len(y_true)} knees; 95% intervals by "
        "bootstrap over participants."
    )
    keys = ("accuracy", "kappa_quadratic", "kappa_linear", "mae_kl")
    report.add_metrics(
        {k: values[k] for k in keys},
        ci={k: ci[k] for k in keys},
        reference=PAPER_REFERENCE,
        reference_note=PAPER_NOTE,
    )
    base = config.get("base")
    shown_base = base if base in TABLE1_ACCURACY else PAPER_BASE
    paper = TABLE1_ACCURACY[shown_base]
    table = [
        {
            "branch": branch,
            "accuracy (ours) [95% CI]": reports.value_with_ci(
                values["per_branch_accuracy"].get(branch), ci["per_branch_accuracy"].get(branch)
            ),
            f"Table 1, {shown_base} multi-loss (paper)": (paper.get("multi-loss") or {}).get(
                branch
            ),
            f"Table 1, {shown_base} single branch (paper)": paper.get(
                "early-fusion" if branch == "fusion" else branch
            ),
        }
        for branch in preds
    ]
    caption = "Per-branch accuracy, laid out like Table 1 (paper figures: OAI + MOST test set)."
    if shown_base != base:
        caption += (
            f" This run's base ({base}) is not in Table 1: the paper columns show its best base, "
            f"{shown_base}. A dash: the paper reports no such model."
        )
    report.add_table(table, caption=caption)
    report.add_heading(f"KL grade of {test_branch}")
    report.add_classification(
        y_true, probs, KL_NAMES, what=f"KL grade ({test_branch})", y_pred=preds[test_branch]
    )
    if history_path and os.path.exists(history_path):
        report.add_image(
            reports.plot_learning_curves(reports.read_history(history_path)), "Learning curves"
        )
    if isinstance(overlays, str):
        report.add_paragraph(overlays)
    elif overlays:
        report.add_heading("Attention masks")
        report.add_images_grid(overlays)
    if "localisation" in values:
        block = values["localisation"]
        report.add_localisation(block, localisation_panels, what=f"{block['branch']} {MAP_NAME}")
    return report


def evaluate_model(
    model, records, *, config, out_dir, history_path=None, verbose=1, seed=0, data_path=None
):
    """Evaluates `model` on `records` (one split) and writes the run's evaluation files.

    Writes `metrics.json` (CONTRACT.md keys, `ci`, the averaged-logits ensemble of §4 under
    `ensemble_accuracy`; on phantoms `localisation`, the test branch's attention mask on the joint
    space against content-blind controls, `kneeoa.explain`), `predictions.csv` (one row per knee: file, side, true KL, predicted KL
    of the test branch and of every branch, class probabilities) and `report.html`.

    Returns:
        The metrics dict.
    """
    ds = make_dataset(
        records, config=config, training=False, batch_size=int(config.get("batch_size", 32))
    )
    probs, logits = _predict_all(model, ds, verbose)
    y_true = records["kl"].to_numpy().astype(int)
    groups = (
        records["participant_id"].astype(str).to_numpy() if "participant_id" in records else None
    )
    test_branch = config["test_branch"]
    preds = {name: p.argmax(-1) for name, p in probs.items()}
    values, ci = kl_metrics(
        y_true, preds[test_branch], groups, per_branch=preds if len(preds) > 1 else preds, seed=seed
    )
    values["test_branch"] = test_branch
    values["knees"] = int(len(y_true))
    if len(logits) > 1:
        ensemble = average_logits_probabilities(logits).argmax(-1)
        value, interval = metrics_with_ci(
            {"a": M.accuracy}, y_true, ensemble, groups=groups, seed=seed
        )
        values["ensemble_accuracy"] = value["a"]
        ci["ensemble_accuracy"] = interval["a"]
    values["confusion_matrix"] = M.confusion_matrix(
        y_true, preds[test_branch], num_classes=5
    ).tolist()
    scored = localisation(model, records, config)  # phantoms only (kneeoa.explain)
    panels = ()
    if scored is not None:
        values["localisation"], panels = scored
    metrics = {**values, "ci": ci, "paper": PAPER_REFERENCE}
    reports.write_json(output_path(out_dir, "metrics.json"), metrics)

    frame = pd.DataFrame(
        {
            "image": [data_name(p, out_dir) for p in records["path"]],
            "side": records.get("side", pd.Series([""] * len(records))).to_numpy(),
            "kl_true": y_true,
            "kl_pred": preds[test_branch],
        }
    )
    for name, pred in preds.items():
        frame[f"{name}_pred"] = pred
    for k in range(5):
        frame[f"prob_kl{k}"] = probs[test_branch][:, k]
    reports.write_csv(output_path(out_dir, "predictions.csv"), frame)

    try:
        overlays = _sample_overlays(model, records, config)
    except (ValueError, KeyError) as exc:  # a model without attention branches
        overlays = f"No attention maps: {exc}"
    report = build_report(
        values,
        ci,
        y_true=y_true,
        probs=probs[test_branch],
        preds=preds,
        config=config,
        model_name=model.name,
        history_path=history_path,
        overlays=overlays,
        data_path=data_path or config.get("data_dir"),
        localisation_panels=panels,
    )
    report.write(output_path(out_dir, "report.html"))
    if verbose:
        print(
            f"Test accuracy {values['accuracy']:.3f}, quadratic kappa {values['kappa_quadratic']:.3f} "
            f"({test_branch}, {len(y_true)} knees). Report: {os.path.join(out_dir, 'report.html')}",
            flush=True,
        )
    return metrics


def evaluate(
    model, data_dir, out_dir, *, split="test", seed=0, batch_size=None, verbose=1, layout=None
):
    """Evaluates a saved `.h5` / `.keras` model on a data set's held-out split.

    Args:
        model: model file (its run's `config.json` beside it gives the preprocessing; else it is
            read off the model).
        data_dir: data set (either layout).
        out_dir: where `metrics.json`, `report.html`, `predictions.csv` go.
        split: which split to evaluate (default `test`, the paper's 30%).
        seed: the split's seed (the one the model was trained with).
        batch_size: knees per forward pass (default: the run's).
        layout: which data set `data_dir` holds when it holds several (`kneeoa.data.LAYOUTS`).
    """
    model_path = model
    model = load_model(model_path)
    config = model_config(model, model_path)
    if batch_size is not None:
        config = {**config, "batch_size": int(batch_size)}
    records = load_records(data_dir, seed=int(config.get("seed", seed)), layout=layout)
    records = records[records["split"] == split]
    history = Path(model_path).with_name("history.csv")
    return evaluate_model(
        model,
        records,
        config=config,
        out_dir=out_dir,
        history_path=history,
        verbose=verbose,
        data_path=data_dir,
    )


def _write_attention_overlay(out_dir, stem, image, outputs, index, branches, title, height_px=320):
    """One PNG per knee: each branch's attention mask over the knee, side by side, with the
    predicted grade in the title and a colour bar."""
    panels = []
    for branch in branches:
        if f"{branch}_mask" not in outputs:
            continue
        panel = reports.overlay_map(image, np.asarray(outputs[f"{branch}_mask"][index])[..., 0])
        cv2.putText(
            panel, branch, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )
        panels.append(panel)
    name = f"{stem}_attention.png"
    png = reports.image_png(
        np.concatenate(panels, axis=1),
        title,
        cmap="jet",
        colorbar_label=MASK_LABEL,
        height_px=height_px,
    )
    reports.save_png(output_path(out_dir, name), png)
    return name


def predict(
    model,
    inputs,
    out_dir,
    *,
    explain=False,
    bilateral=False,
    batch_size=16,
    link_uids=False,
    dicom_out=None,
    verbose=1,
):
    """Grades knee images: one row per knee in `OUT/predictions.csv`.

    Args:
        model: model file (`.h5` or `.keras`).
        inputs: image files (PNG, JPEG, DICOM) or folders of them.
        out_dir: output folder.
        explain: also write `OUT/<image>_attention.png`: every branch's attention mask over the knee.
        bilateral: inputs are bilateral PA films: split each down the middle into two knees
            (image left half = the patient's right knee).
        batch_size: knees per forward pass.
        link_uids: name DICOM inputs by SOP Instance UID and add their UID columns (else a
            salted hash; `common.identifiers`).
        dicom_out: folder for a Secondary Capture and an SR per DICOM input (needs `explain`).
        verbose: progress and a summary line.
    """
    model_path = model
    model = load_model(model_path)
    config = model_config(model, model_path)
    paths = collect_image_paths(inputs)
    crops = [("right", "left_half"), ("left", "right_half")] if bilateral else [("", "full")]
    records = pd.DataFrame(
        [
            {"path": os.fspath(p), "crop": crop, "side": side, "kl": 0}
            for p in paths
            for side, crop in crops
        ]
    )
    ds = make_dataset(records, config=config, training=False, batch_size=batch_size, cache=False)
    explainer = explain_model(model) if explain or dicom_out else None
    forward = compiled_forward(explainer or model)
    names = InputNames(out_dir, link_uids=link_uids)
    test_branch = config["test_branch"]
    rows = []
    offset = 0
    for images, _ in progress(ds, desc="predict", unit="batches", enabled=bool(verbose)):
        out = forward(images)
        probs = np.asarray(out[test_branch])
        for i in range(len(probs)):
            record = records.iloc[offset + i]
            row = {
                "image": names.name(record["path"]),
                "side": record["side"],
                "kl_pred": int(probs[i].argmax()),
            }
            row.update({f"prob_kl{k}": float(probs[i, k]) for k in range(probs.shape[1])})
            for name in model.output_names:
                row[f"{name}_pred"] = int(np.asarray(out[name][i]).argmax())
            if explainer is not None:
                stem = names.stem(record["path"]) + (f"_{record['side']}" if record["side"] else "")
                title = (
                    f"{row['image']} {record['side']}: predicted KL{row['kl_pred']} "
                    f"(p {probs[i].max():.2f}, {test_branch})"
                ).replace("  ", " ")
                row["overlay"] = _write_attention_overlay(
                    out_dir, stem, np.asarray(images[i])[..., 0], out, i, config["branches"], title
                )
            rows.append(row)
        offset += len(probs)
    frame = pd.DataFrame(rows)
    for column, values in names.uid_columns(records["path"]).items():
        frame[column] = values
    reports.write_csv(output_path(out_dir, "predictions.csv"), frame)
    write_predict_dicoms(
        dicom_out,
        (
            {
                "source": record["path"],
                "name": names.name(record["path"])
                + (f"_{record['side']}" if record["side"] else ""),
                "overlay": os.path.join(out_dir, row["overlay"]),
                "measurements": [("KL grade", row["kl_pred"], "{grade}")]
                + [
                    (f"probability of KL {c[7:]}", row[c], "1")
                    for c in row
                    if c.startswith("prob_kl")
                ],
                "findings": [("KL grade", f"KL {row['kl_pred']}")],
            }
            for record, row in zip(records.to_dict("records"), rows, strict=True)
            if names.is_dicom(record["path"])
        ),
        package="kneeoa",
        verbose=verbose,
    )
    if verbose:
        print(f"{len(frame)} knees graded: {os.path.join(out_dir, 'predictions.csv')}", flush=True)
    return frame
