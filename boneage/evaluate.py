"""Evaluation, prediction and class activation maps of BoneAgeNet; `metrics.json`, `report.html`.

Metrics (paper 003 §V): the mean absolute error in months, overall, by sex and by age band, beside
the MAE of predicting the training set's mean age for everyone (the mean predictor), each with a
95% bootstrap interval over subjects. Plots: predicted against true age (the paper's Fig. 3),
Bland–Altman, the error by age; class activation maps (§VI, Fig. 4) of a few test images.

Reference:
    J. Ma, "Designing a Bone Age Estimation CNN-Model using Hyperparameter Optimization" (paper
    003), §V (MAE), §VI (CAM), Table 1, Fig. 3, Fig. 4.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from boneage.data import load_records
from boneage.data import make_dataset
from boneage.explain import MAP_NAME
from boneage.explain import class_activation_map
from boneage.explain import localisation
from boneage.model import BoneAgeConfig
from boneage.model import get_config
from common import metrics as M
from common import reports
from common.dicom_out import write_predict_dicoms
from common.errors import DataError
from common.export import load_model
from common.identifiers import InputNames
from common.identifiers import data_name
from common.identifiers import dicom_sex
from common.identifiers import report_caption
from common.image_io import is_dicom_file
from common.image_io import read_image
from common.inference import collect_image_paths
from common.inference import compiled_forward
from common.inference import metrics_with_ci
from common.inference import output_path
from common.progress import progress
from common.run_config import read_run_config

# RSNA 2017 test set (200 images), not our data: BoneAgeNet's test MAE (paper 003, Table 1,
# "Final") and the challenge winner's, as the paper quotes it (§I: "mae= 5.6 months vs mae= 4.3").
RSNA_REFERENCE = {"mae_months": 5.6, "rsna_2017_winner_mae_months": 4.3}
RSNA_NOTE = (
    "RSNA 2017 test set figures, not ours: BoneAgeNet's test MAE (Ma 2021, Table 1, 'Final') "
    "and the RSNA 2017 challenge winner's 4.3 months as the paper quotes it (§I). Ours are "
    "measured on the data given to this run (phantoms by default), so the two are not the same "
    "measurement"
)
# Table 1 of paper 003 (RSNA 2017 train / validation / test MAE in months) for the Final model.
TABLE1_FINAL = {"train_mae_months": 6.85, "val_mae_months": 7.21, "test_mae_months": 5.6}

# Age bands for the MAE by age (months, lower bound inclusive; the last band is open).
AGE_BANDS_MONTHS = ((0, 24), (24, 72), (72, 120), (120, 168), (168, None))
SEXES = ("male", "female")
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(BoneAgeConfig)}


def age_band(age_months) -> str:
    """Returns the `AGE_BANDS_MONTHS` label of an age: "0-24", "24-72", ..., "168+"."""
    age = float(age_months)
    labels = band_labels()
    for label, (_, high) in zip(labels, AGE_BANDS_MONTHS):
        if high is not None and age < high:
            return label
    return labels[-1]  # the last band is open


def band_labels():
    """The age band labels in order."""
    return [f"{low}+" if high is None else f"{low}-{high}" for low, high in AGE_BANDS_MONTHS]


# --------------------------------------------------------------------------- configuration


def model_config(model, run_config=None) -> BoneAgeConfig:
    """The `BoneAgeConfig` a saved model needs for its input pipeline.

    Args:
        model: a loaded BoneAgeNet.
        run_config: the run's `config.json` as a dict (or None): its preset fields are used, and
            what the model itself shows (input size, channels, the sex input) wins over them.

    Returns:
        A `BoneAgeConfig`.
    """
    fields = {k: v for k, v in (run_config or {}).items() if k in _CONFIG_FIELDS}
    height, width, channels = (int(v) for v in model.inputs[0].shape[1:4])
    fields.update(
        image_size_hw=(height, width),
        channels=channels,
        use_sex="sex" in input_names(model),
    )
    return get_config(BoneAgeConfig(**fields))


def input_names(model):
    """The names of a model's inputs (`image`, and `sex` when it has one)."""
    return [t.name.split(":")[0] for t in model.inputs]


# --------------------------------------------------------------------------- metrics


def predict_ages(model, records, config, batch_size=32, verbose=0):
    """Predicted ages (months, float64 `(N,)`) of `records` in order, without augmentation."""
    ds = make_dataset(records, config=config, training=False, batch_size=batch_size, cache=False)
    forward = compiled_forward(model)
    out = []
    for batch in progress(ds, desc="evaluate", unit="batches", enabled=bool(verbose)):
        inputs = batch[0] if isinstance(batch, tuple) else batch
        out.append(np.asarray(forward(inputs)["age_months"], np.float64)[:, 0])
    return np.concatenate(out)


def _with_ci(fns, y_true, y_pred, groups, seed):
    if len(y_true) == 0:
        return {k: None for k in fns}, {k: [None, None] for k in fns}
    return metrics_with_ci(fns, y_true, y_pred, groups=groups, seed=seed)


def age_metrics(y_true, y_pred, male, train_mean_months, *, groups=None, seed=0) -> dict:
    """The CONTRACT.md metrics of a bone-age regressor with 95% bootstrap intervals under "ci".

    Args:
        y_true: `(N,)` true bone ages in months.
        y_pred: `(N,)` predicted bone ages in months.
        male: `(N,)` 1 for boys, 0 for girls.
        train_mean_months: the training set's mean age: the mean predictor's constant answer.
        groups: `(N,)` subject ids; the bootstrap resamples subjects.
        seed: bootstrap seed.

    Returns:
        `{"mae_months", "baseline_mae_months", "mae_months_by_sex": {"male", "female"},
        "mae_months_by_age_band": {"0-24", ...}, "rmse_months", "mean_error_months",
        "mae_ratio_to_baseline", "images", "train_mean_age_months", "bland_altman": {...},
        "ci": {same keys as the values with intervals}}`; empty groups give None.
    """
    y_true = np.asarray(y_true, np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, np.float64).reshape(-1)
    male = np.asarray(male).reshape(-1).astype(int)
    groups = None if groups is None else np.asarray(groups).reshape(-1)
    baseline = np.full_like(y_true, float(train_mean_months))
    fns = {"mae_months": M.mae, "rmse_months": M.rmse}
    values, ci = _with_ci(fns, y_true, y_pred, groups, seed)
    value, interval = _with_ci({"b": M.mae}, y_true, baseline, groups, seed)
    values["baseline_mae_months"], ci["baseline_mae_months"] = value["b"], interval["b"]
    for key, masks in (
        ("mae_months_by_sex", {"male": male == 1, "female": male == 0}),
        (
            "mae_months_by_age_band",
            {b: np.array([age_band(a) == b for a in y_true]) for b in band_labels()},
        ),
    ):
        values[key], ci[key] = {}, {}
        for name, mask in masks.items():
            mask = mask.astype(bool) if mask.size else np.zeros(0, bool)
            sub_groups = None if groups is None else groups[mask]
            value, interval = _with_ci({"m": M.mae}, y_true[mask], y_pred[mask], sub_groups, seed)
            values[key][name], ci[key][name] = value["m"], interval["m"]
    values["mean_error_months"] = float(np.mean(y_pred - y_true))
    values["mae_ratio_to_baseline"] = (
        values["mae_months"] / values["baseline_mae_months"]
        if values["baseline_mae_months"]
        else None
    )
    values["images"] = int(len(y_true))
    values["images_by_sex"] = {"male": int((male == 1).sum()), "female": int((male == 0).sum())}
    values["train_mean_age_months"] = float(train_mean_months)
    if len(y_true) >= 2:
        values["bland_altman"] = reports.bland_altman_stats(y_true, y_pred)
    return {**values, "ci": ci}


# --------------------------------------------------------------------------- plots


def plot_error_by_age(y_true, y_pred) -> bytes:
    """Signed error (predicted - true) against the true age, with each age band's MAE.

    Args:
        y_true: `(N,)` true ages in months.
        y_pred: `(N,)` predicted ages in months.

    Returns:
        PNG bytes.
    """
    y_true = np.asarray(y_true, np.float64)
    error = np.asarray(y_pred, np.float64) - y_true
    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    axis = fig.subplots()
    axis.axhline(0.0, color="gray", linewidth=1)
    axis.scatter(y_true, error, s=12, alpha=0.6, edgecolors="none", label="image")
    top = max(float(y_true.max()), 228.0)
    for low, high in AGE_BANDS_MONTHS:
        upper = top if high is None else high
        mask = (y_true >= low) & (y_true < upper if high is not None else True)
        if not mask.any():
            continue
        mae = float(np.abs(error[mask]).mean())
        axis.hlines([mae, -mae], low, upper, colors="tab:red", linewidth=1.5)
        axis.text((low + upper) / 2, mae, f"±{mae:.1f}", ha="center", va="bottom", fontsize=8)
    axis.set_xlabel("true bone age (months)")
    axis.set_ylabel("predicted − true (months)")
    axis.set_title("Error by age (red: ± the band's MAE)")
    axis.grid(alpha=0.3)
    return reports.figure_png(fig)


def cam_overlay_png(image, cam, title):
    """PNG of a class activation map's magnitude over the image (any sizes; the map is resized),
    with a colour bar."""
    return reports.overlay_png(
        image, np.abs(cam), title=title, colorbar_label="|CAM| (scaled to its range)"
    )


def _sample_cams(model, records, config, count=6):
    """(png, caption) CAM overlays of up to `count` images spread over the age range."""
    ordered = records.sort_values("age_months")
    picks = np.unique(np.linspace(0, len(ordered) - 1, num=min(count, len(ordered))).astype(int))
    subset = ordered.iloc[picks]
    ds = make_dataset(subset, config=config, training=False, batch_size=len(subset), cache=False)
    inputs, _ = next(iter(ds))
    sex = np.asarray(inputs["sex"]) if "sex" in inputs else None
    cams, ages = class_activation_map(model, np.asarray(inputs["image"]), sex, upsample=False)
    items = []
    for i, (_, row) in enumerate(subset.iterrows()):
        image = read_image(row["image_path"])
        sex_text = "M" if int(row["male"]) else "F"
        title = (
            f"{report_caption(row['image_path'])} ({sex_text}): true {row['age_months']:.0f}, "
            f"predicted {ages[i]:.0f} months"
        )
        items.append((cam_overlay_png(image, cams[i], title), title))
    return items


# --------------------------------------------------------------------------- evaluation


def evaluate_model(
    model,
    records,
    *,
    config,
    train_mean_months,
    out_dir,
    history_path=None,
    verbose=1,
    seed=0,
    data_path=None,
):
    """Evaluates `model` on `records` (one labelled split) and writes the evaluation files.

    Writes `metrics.json` (CONTRACT.md keys and more, intervals under "ci", the RSNA figures under
    "rsna_reference"; on phantoms "localisation", the |CAM| on the hand against content-blind
    controls, `boneage.explain`), `predictions.csv` (one row per image: file name, sex, true and predicted
    age, error) and `report.html` (metrics beside the RSNA figures, Fig. 3-style scatter,
    Bland–Altman, error by age and by sex, learning curves, CAMs).

    Args:
        model: a BoneAgeNet.
        records: rows of `load_records` with ages (e.g. the "test" split).
        config: the model's `BoneAgeConfig` (input pipeline).
        train_mean_months: the training split's mean age (the mean predictor's answer).
        out_dir: output folder.
        history_path: the run's `history.csv` for the learning curves, if any.
        verbose: print a one-line summary.
        seed: bootstrap seed.
        data_path: the data set's path, named in the report's header.

    Returns:
        The metrics dict (as written to `metrics.json`).
    """
    if records is None or len(records) == 0:
        raise DataError("no labelled test images to evaluate")
    if records["age_months"].isna().any():
        first = records[records["age_months"].isna()].iloc[0]
        raise DataError("missing bone age", path=first["csv_path"], row=int(first["csv_row"]))
    y_true = records["age_months"].to_numpy(np.float64)
    male = records["male"].to_numpy().astype(int)
    y_pred = predict_ages(
        model, records, config, batch_size=int(config.batch_size), verbose=verbose
    )
    groups = records["patient_id"].astype(str).to_numpy()
    metrics = age_metrics(y_true, y_pred, male, train_mean_months, groups=groups, seed=seed)
    metrics["rsna_reference"] = dict(RSNA_REFERENCE)
    scored = localisation(model, records, config)  # phantoms only (boneage.explain)
    if scored is not None:
        metrics["localisation"] = scored[0]
    frame = pd.DataFrame(
        {
            "image": [data_name(p, out_dir) for p in records["image_path"]],
            "sex": np.where(male == 1, "M", "F"),
            "age_months": y_true,
            "predicted_age_months": np.round(y_pred, 3),
            "error_months": np.round(y_pred - y_true, 3),
            "age_band": [age_band(a) for a in y_true],
        }
    )
    report = build_report(
        metrics,
        y_true,
        y_pred,
        male,
        model_text=(
            f"Model {model.name} ({model.count_params():,} parameters, input "
            f"{config.image_size_hw[0]} x {config.image_size_hw[1]})"
        ),
        history_path=history_path,
        cams=_sample_cams(model, records, config),
        data_path=data_path,
        localisation_scores=scored,
    )
    reports.write_json(output_path(out_dir, "metrics.json"), metrics)
    reports.write_csv(output_path(out_dir, "predictions.csv"), frame)
    report.write(output_path(out_dir, "report.html"))
    if verbose:
        print(
            f"Test MAE {metrics['mae_months']:.2f} months (mean predictor "
            f"{metrics['baseline_mae_months']:.2f}; ratio {metrics['mae_ratio_to_baseline']:.2f}) "
            f"on {len(y_true)} images. Report: {os.path.join(out_dir, 'report.html')}",
            flush=True,
        )
    return metrics


def build_report(
    metrics,
    y_true,
    y_pred,
    male,
    *,
    model_text,
    history_path=None,
    cams=(),
    data_path=None,
    localisation_scores=None,
):
    """The evaluation report of a bone-age model from its numbers (what `evaluate_model` writes).

    Args:
        metrics: `age_metrics`' dict (with "ci").
        y_true: `(N,)` true ages in months.
        y_pred: `(N,)` predicted ages in months.
        male: `(N,)` 1 for boys.
        model_text: one phrase naming the model (name, parameters, input size).
        history_path: the run's `history.csv`, if any.
        cams: `(png, caption)` CAM overlays.
        data_path: the data set's path, shown in the header.
        localisation_scores: `(block, panels)` of `boneage.explain.localisation` (phantoms), or
            None.

    Returns:
        The `common.reports.HTMLReport`.
    """
    ci = metrics["ci"]
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    male = np.asarray(male).astype(int)
    report = reports.HTMLReport("Bone age (BoneAgeNet): evaluation", data_path=data_path)
    report.add_paragraph(
        f"{model_text}, {len(y_true)} held-out images ({int(male.sum())} boys). Mean predictor: "
        f"the training split's mean age, {metrics['train_mean_age_months']:.1f} months, for "
        "everyone. 95% intervals by bootstrap over subjects."
    )
    cases = {
        "mae_months_by_sex": {"male": int((male == 1).sum()), "female": int((male == 0).sum())},
        "mae_months_by_age_band": {
            band: sum(age_band(a) == band for a in y_true) for band in band_labels()
        },
    }
    shown = {}
    for key in ("mae_months", "baseline_mae_months", "rmse_months"):
        shown[key] = reports.value_with_ci(metrics[key], ci.get(key), cases=len(y_true))
    for key, counts in cases.items():
        shown[key] = {
            name: reports.value_with_ci(value, ci[key].get(name), cases=counts.get(name))
            for name, value in metrics[key].items()
        }
    shown["mean_error_months"] = metrics["mean_error_months"]
    shown["mae_ratio_to_baseline"] = metrics["mae_ratio_to_baseline"]
    report.add_metrics(
        shown,
        reference=RSNA_REFERENCE,
        reference_note=RSNA_NOTE + ". Brackets: 95% bootstrap interval",
        reference_label="RSNA 2017 test set",
    )
    report.add_table(
        [
            {"": "RSNA 2017 (Ma 2021, Table 1, Final)", **TABLE1_FINAL},
            {
                "": "this run (test split)",
                "train_mae_months": None,
                "val_mae_months": _best_val_mae(history_path),
                "test_mae_months": metrics["mae_months"],
            },
        ],
        caption="Table 1 of the paper (RSNA 2017 data) beside this run (best validation MAE from "
        "history.csv). Different data sets: the comparison shows scale, not rank.",
    )
    report.add_heading("Predicted against true age (as the paper's Fig. 3)")
    report.add_paragraph(
        "The paper's Fig. 3 shows the scatter for the RSNA 2017 validation and test sets (MAE "
        "5.6 months on the test set)."
    )
    report.add_regression(y_true, y_pred, what="bone age", unit="months")
    report.add_images_grid(
        [
            (plot_error_by_age(y_true, y_pred), "Error by true age"),
            (
                reports.plot_error_by_group(
                    np.where(male == 1, "male", "female"),
                    np.abs(y_pred - y_true),
                    ylabel="absolute error (months)",
                ),
                "Absolute error by sex",
            ),
        ]
    )
    if history_path and os.path.exists(history_path):
        report.add_image(
            reports.plot_learning_curves(reports.read_history(history_path)),
            "Learning curves (loss: MSE + α‖w‖²; MAE in months)",
        )
    report.add_heading("Class activation maps (§VI, Fig. 4)")
    report.add_paragraph(
        "|CAM| of the last convolutional block through GAP, relative to an empty film: where in "
        "the image the predicted age comes from (boneage.explain). The paper's Fig. 4 (RSNA "
        "images, Modified 3) highlights the hand, mostly the fingers."
    )
    if cams:
        report.add_images_grid(cams)
    if localisation_scores is not None:
        block, panels = localisation_scores
        report.add_localisation(block, panels, what=MAP_NAME)
    return report


def _best_val_mae(history_path):
    if not history_path or not os.path.exists(history_path):
        return None
    history = pd.read_csv(history_path)
    if "val_mae" not in history or history["val_mae"].isna().all():
        return None
    return float(history["val_mae"].min())


def evaluate(model, data_dir, out_dir, *, split="test", seed=None, batch_size=None, verbose=1):
    """Evaluates a saved `.h5` / `.keras` BoneAgeNet on a data set's held-out test split.

    Args:
        model: model file; the run's `config.json` beside it gives the split seed, the input
            pipeline and the training mean (else they come from the model and `data_dir`).
        data_dir: a data set in the Kaggle or official RSNA layout.
        out_dir: where `metrics.json`, `report.html`, `predictions.csv` go.
        split: "test" (default, the held-out split), "val" or "train".
        seed: split seed (default: the run's, else 0).
        batch_size: images per forward pass (default: the run's).
        verbose: print a summary.

    Returns:
        The metrics dict.
    """
    model_path = model
    model = load_model(model_path)
    run_config = read_run_config(model_path)
    config = model_config(model, run_config)
    if batch_size is not None:
        config = dataclasses.replace(config, batch_size=int(batch_size))
    split_seed = int(run_config.get("seed", 0) if seed is None else seed)
    records = load_records(data_dir, seed=split_seed)
    test = records[records["split"] == split]
    if test.empty:
        raise DataError(f"the data set has no {split} images", path=data_dir)
    train_mean = run_config.get("train_mean_age_months")
    if train_mean is None:
        train_mean = float(records.loc[records["split"] == "train", "age_months"].mean())
    return evaluate_model(
        model,
        test,
        config=config,
        train_mean_months=float(train_mean),
        out_dir=out_dir,
        history_path=Path(model_path).with_name("history.csv"),
        verbose=verbose,
        data_path=data_dir,
    )


# --------------------------------------------------------------------------- predict


_SEX_CSV_FILE_COLUMNS = ("file", "image", "filename", "file name", "id", "image id", "case id")
_SEX_CSV_SEX_COLUMNS = ("sex", "gender", "male")


def _norm(text):
    return " ".join(str(text).replace("\ufeff", "").strip().lower().split())


def parse_sex(value, *, path=None, row=None, column=None) -> int:
    """Returns 1 for male, 0 for female from "M"/"F", "male"/"female", 1/0, True/False.

    Raises:
        DataError: anything else (naming `path`, `row`, `column` when given).
    """
    if isinstance(value, bool):
        return int(value)
    text = _norm(value)
    if text in {"m", "male", "1", "true", "boy"}:
        return 1
    if text in {"f", "female", "0", "false", "girl"}:
        return 0
    where = {"path": path, "row": row, "column": column}
    raise DataError(f"sex '{str(value).strip()}' is neither M (male) nor F (female)", **where)


def read_sex_csv(path) -> dict:
    """Reads a CSV of `file,sex` (header row; sex M/F) into {file name or stem: 1/0}.

    The file column may also be `image`, `id` or `Case ID`, the sex column `gender` or `male`
    (True/False), so the Kaggle `boneage-test-dataset.csv` (`Case ID,Sex`) serves as it is.

    Raises:
        DataError: an unreadable file, a missing column, a bad sex (file, row and column named).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError("sex CSV not found", path=path) from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"unreadable CSV: {error}", path=path) from None
    if not rows or not any(c.strip() for c in rows[0]):
        raise DataError("empty sex CSV (expected a header 'file,sex')", path=path, row=1)
    header = [_norm(h) for h in rows[0]]
    columns = []
    for candidates, what in ((_SEX_CSV_FILE_COLUMNS, "file"), (_SEX_CSV_SEX_COLUMNS, "sex")):
        found = next((header.index(c) for c in candidates if c in header), None)
        if found is None:
            raise DataError(
                f"missing '{what}' column (header is {rows[0]})", path=path, row=1, column=what
            )
        columns.append(found)
    file_col, sex_col = columns
    sexes = {}
    for number, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        cells = cells + [""] * (len(header) - len(cells))
        name = cells[file_col].strip()
        if not name:
            raise DataError("missing file name", path=path, row=number, column=rows[0][file_col])
        value = parse_sex(cells[sex_col], path=path, row=number, column=rows[0][sex_col])
        sexes[Path(name).name] = value
    return sexes


def _lookup_sex(image_path, table):
    name = Path(image_path).name
    for key in (name, Path(name).stem):
        if key in table:
            return table[key]
    lowered = {k.lower(): v for k, v in table.items()}
    for key in (name.lower(), Path(name).stem.lower()):
        if key in lowered:
            return lowered[key]
    return None


def resolve_sexes(paths, *, sex=None, sex_csv=None, required=True):
    """One sex (1 male, 0 female) per input: `sex_csv` by file name or stem, else `sex`, else
    the DICOM header's `PatientSex` (M or F) for DICOM inputs.

    Raises:
        DataError: an input without a sex when `required` (the file is named).
    """
    default = None if sex is None else parse_sex(sex, column="--sex")
    table = read_sex_csv(sex_csv) if sex_csv is not None else {}
    out = []
    for index, path in enumerate(paths):
        value = _lookup_sex(path, table)
        if value is None:
            value = default
        if value is None:
            value = dicom_sex(path)
        if value is None and required:
            source = f"not listed in {Path(sex_csv).name}" if sex_csv else "no --sex given"
            where = f"DICOM input {index + 1} of {len(paths)}: " if is_dicom_file(path) else ""
            raise DataError(  # a DICOM input is not named by its file name (common.identifiers)
                f"{where}no sex for this image ({source}, no PatientSex M/F in a DICOM header); "
                "the model needs one: pass --sex M|F or --sex-csv FILE with columns file,sex",
                path=None if where else path,
            )
        out.append(value)
    return out


def _overlay_names(paths, names):
    """Unique overlay file names: `<stem>_cam.png`, with a hash of the path when stems repeat.

    `names` (`common.identifiers.InputNames`) gives the stems: DICOM inputs are never named by
    their file names.
    """
    stems = [names.stem(p) for p in paths]
    names = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) > 1:
            stem = f"{stem}_{reports.anonymize_id(os.path.abspath(path), 8)}"
        names.append(f"{stem}_cam.png")
    return names


def predict(
    model,
    inputs,
    out_dir,
    *,
    explain=False,
    sex=None,
    sex_csv=None,
    batch_size=16,
    link_uids=False,
    dicom_out=None,
    verbose=1,
):
    """Predicts the bone age of image files: one row per image in `OUT/predictions.csv`.

    Args:
        model: model file (`.h5` or `.keras`).
        inputs: image files (PNG, JPEG, DICOM) or folders of them.
        out_dir: output folder.
        explain: also write `OUT/<image>_cam.png`: the class activation map over the image.
        sex: "M" or "F" for every input (the model's sex input).
        sex_csv: a CSV with columns `file,sex` giving each input's sex by file name (or stem);
            it wins over `sex` for the files it lists. Without either, a DICOM input's
            `PatientSex` (M or F) is used.
        batch_size: images per forward pass.
        link_uids: name DICOM inputs by SOP Instance UID and add their UID columns (else a
            salted hash; `common.identifiers`).
        dicom_out: folder for a Secondary Capture and an SR per DICOM input (needs `explain`).
        verbose: progress and a summary line.

    Returns:
        The predictions as a DataFrame (`image`, `sex`, `predicted_age_months`[, `overlay`]).

    Raises:
        DataError: a missing or unreadable input, a missing sex for an input, a bad sex CSV;
            nothing is written then.
    """
    model_path = model
    paths = collect_image_paths(inputs)
    if not os.path.isfile(os.fspath(model_path)):
        raise DataError("no such model file", path=model_path)
    # Check the sexes and the images before the (slow) model load when the run's config.json
    # says whether the model has a sex input; the loaded model is checked again below.
    run_config = read_run_config(model_path)
    model = None
    if "use_sex" not in run_config:
        model = load_model(model_path)
        run_config = {**run_config, "use_sex": "sex" in input_names(model)}
    sexes = resolve_sexes(paths, sex=sex, sex_csv=sex_csv, required=bool(run_config["use_sex"]))
    for path in paths:  # a corrupt file stops everything before anything is written
        read_image(path)
    if model is None:
        model = load_model(model_path)
    config = model_config(model, run_config)
    if config.use_sex and None in sexes:
        sexes = resolve_sexes(paths, sex=sex, sex_csv=sex_csv, required=True)  # raises
    records = pd.DataFrame(
        {
            "image_path": [os.fspath(p) for p in paths],
            "male": [0 if s is None else s for s in sexes],
            "age_months": np.nan,
            "csv_path": "",
            "csv_row": 0,
        }
    )
    names = InputNames(out_dir, link_uids=link_uids)
    explain = explain or dicom_out is not None
    overlay_names = _overlay_names(paths, names) if explain else []
    ds = make_dataset(records, config=config, training=False, batch_size=batch_size, cache=False)
    predictions, overlays = [], []
    offset = 0
    forward = compiled_forward(model)
    for inputs_batch in progress(ds, desc="predict", unit="batches", enabled=bool(verbose)):
        if explain:
            images = np.asarray(inputs_batch["image"])
            sex_batch = np.asarray(inputs_batch["sex"]) if "sex" in inputs_batch else None
            cams, ages = class_activation_map(model, images, sex_batch, upsample=False)
            for i in range(len(ages)):  # each overlay is complete once renamed into place
                path = paths[offset + i]
                sex_text = (
                    "" if sexes[offset + i] is None else " (M)" if sexes[offset + i] else " (F)"
                )
                title = f"{names.name(path)}{sex_text}: {ages[i]:.0f} months"
                png = cam_overlay_png(read_image(path), cams[i], title)
                reports.save_png(output_path(out_dir, overlay_names[offset + i]), png)
                overlays.append(overlay_names[offset + i])
        else:
            ages = np.asarray(forward(inputs_batch)["age_months"])[:, 0]
        predictions.extend(float(a) for a in ages)
        offset += len(ages)
    frame = pd.DataFrame(
        {
            "image": [names.name(p) for p in paths],
            "sex": ["" if s is None else ("M" if s else "F") for s in sexes],
            "predicted_age_months": np.round(predictions, 3),
        }
    )
    if explain:
        frame["overlay"] = overlay_names
    for column, values in names.uid_columns(paths).items():
        frame[column] = values
    reports.write_csv(output_path(out_dir, "predictions.csv"), frame)
    write_predict_dicoms(
        dicom_out,
        (
            {
                "source": path,
                "name": names.name(path),
                "overlay": os.path.join(out_dir, overlay),
                "measurements": [("bone age", age, "mo")],
                "findings": [("sex used", {None: "unknown", 1: "M", 0: "F"}[s])],
            }
            for path, overlay, age, s in zip(paths, overlay_names, predictions, sexes, strict=True)
            if names.is_dicom(path)
        ),
        package="boneage",
        verbose=verbose,
    )
    if verbose:
        print(
            f"{len(frame)} images: {os.path.join(out_dir, 'predictions.csv')}"
            + (f" and {len(overlays)} CAM overlays" if explain else ""),
            flush=True,
        )
    return frame


__all__ = [
    "AGE_BANDS_MONTHS",
    "RSNA_REFERENCE",
    "age_band",
    "age_metrics",
    "evaluate",
    "evaluate_model",
    "model_config",
    "predict",
    "predict_ages",
    "read_sex_csv",
    "resolve_sexes",
]
