"""Evaluation and prediction of the DeepRA pipeline: metrics of §4.3.2, Table 1/3 layouts, overlays.

Metrics (`metrics.json`, CONTRACT.md; rows are patients, 95% bootstrap intervals over patients
under "ci"):

- `weighted_rmse_narrowing`: sqrt((1/n) sum_i w_i (y_i - x_i)^2) over every (patient, narrowing
  column) pair of the held-out patients (42 columns), `weighted_rmse_erosion` the same over the 44
  erosion columns, `weighted_mae_overall`: (1/n) sum_i w_i |y_i - x_i| of `Overall_Tol` (§4.3.2).
  The weights w are configuration (`column_weights`, a dict or a CSV `column,weight`); the
  challenge never published its weights, so the default is 1 for every column.
- `baseline`: the same three for the challenge's baseline, "random draws from the training
  distribution" (§4.3.3): every column of every held-out patient drawn from the values of that
  column among the training patients (seeded; `Overall_Tol` drawn from the training totals),
  evaluated on the same patients.
- `detector_map`: {"hand", "foot"}: mAP at IoU 0.6 (Table 1) of each detector on the annotated
  films of the held-out patients (NaN when they have no annotations); intervals by bootstrap
  over films.

Extra keys: `patients`, `per_model_rmse` (RMSE of each joint model on its held-out crops, the
paper's validation measure), `detector_ap` (AP per class, Table 1's rows), `prior_boxes` (how
many crops came from the prior boxes because the detector missed the class), `paper`.

On phantoms (the data folder holds `_phantom_truth/`), `localisation`: the attention of the
erosion models per held-out joint crop scored against content-blind controls
(`deepra.explain.attention_localisation`, `common.localisation`; at most 96 crops, issue 15.1).
Real data sets have no lesion truth and get no such key.

`predictions.csv` is the challenge's `template.csv` layout: `Patient_ID` and the columns of
`training.csv` (the three overall sums, then the 86 joints), one row per patient.

Reference:
    Chaturvedi, "DeepRA", §4.2.2, §4.3.2, §4.3.3, §4.4, Tables 1-3, Fig. 4.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib import colormaps

from common import metrics as M
from common import reports
from common.dicom_out import write_predict_dicoms
from common.errors import DataError
from common.identifiers import InputNames
from common.identifiers import report_caption
from common.identifiers import salted_hash
from common.image_io import read_image
from common.inference import collect_image_paths
from common.inference import output_path
from common.metrics import bootstrap_ci
from common.phantom_truth import phantom_truth_root
from common.progress import progress
from common.progress import progress_callback
from deepra import data
from deepra import pipeline
from deepra.column_weights import read_column_weights
from deepra.columns import EROSION_COLUMNS
from deepra.columns import JOINT_COLUMNS
from deepra.columns import JOINT_MODELS
from deepra.columns import LIMBS
from deepra.columns import NARROWING_COLUMNS
from deepra.columns import PATIENT_COLUMN
from deepra.columns import SCORE_COLUMNS
from deepra.columns import TRAINING_COLUMNS
from deepra.columns import crop_targets
from deepra.columns import detector_classes
from deepra.detector import TABLE1_AP
from deepra.detector import _voc_ap
from deepra.detector import box_iou
from deepra.detector import table1
from deepra.explain import attention_localisation
from deepra.joints import TABLE2

METRIC_KEYS = ("weighted_rmse_narrowing", "weighted_rmse_erosion", "weighted_mae_overall")
# Table 3: "Final Performance (EfficientNet & Attention)" and "Baseline", RA2-DREAM final test set.
PAPER_TABLE3 = {
    "weighted_rmse_narrowing": 1.358,
    "weighted_rmse_erosion": 1.404,
    "weighted_mae_overall": 1.456,
    "baseline": {
        "weighted_rmse_narrowing": 1.96,
        "weighted_rmse_erosion": 1.728,
        "weighted_mae_overall": 7.023,
    },
    # Table 1: overall mAP at IoU 0.6 on 50 held-out films per detector
    "detector_map": {"hand": TABLE1_AP["hand"]["mAP"], "foot": TABLE1_AP["foot"]["mAP"]},
}
PAPER_NOTE = (
    "Chaturvedi (DeepRA), Table 3 (final row and baseline; RA2-DREAM final test set, 300 "
    "patients' real radiographs, the challenge's unpublished weights) and Table 1 (detector mAP "
    "at IoU 0.6 on 50 held-out films). Ours are this run's held-out patients (phantoms unless "
    "real data was given) with every weight 1: not the same measurement"
)
# Table 2's model names, by our joint model keys (the wrist row covers both wrist models).
TABLE2_ROW = {
    "hand-erosion": "hand-erosion",
    "hand-narrowing": "hand-narrowing",
    "foot-narrowing": "foot-narrowing",
    "foot-erosion": "foot-erosion",
    "wrist-erosion": "wrist",
    "wrist-narrowing": "wrist",
}


# ---------------------------------------------------------------------------------------------
# Metrics


def column_weight_vector(columns, weights=None):
    """The weights of `columns` (1 where `weights` does not name a column)."""
    weights = weights or {}
    return np.asarray([float(weights.get(c, 1.0)) for c in columns], np.float64)


def baseline_table(train_scores, patients, *, seed=0):
    """The challenge's baseline: random draws from the training distribution of every column.

    Args:
        train_scores: one row per training patient with the 89 score columns.
        patients: the patient ids to predict.
        seed: seed of the draws.

    Returns:
        pandas DataFrame in the `training.csv` layout (Patient_ID, 89 columns).
    """
    rng = np.random.default_rng([int(seed), 2019])
    table = pd.DataFrame({PATIENT_COLUMN: list(patients)})
    for column in SCORE_COLUMNS:
        values = train_scores[column].dropna().to_numpy(np.float64)
        table[column] = rng.choice(values, size=len(table), replace=True)
    return table[list(TRAINING_COLUMNS)]


def score_metrics(truth, predicted, *, weights=None, n_boot=1000, seed=0):
    """The three metrics of §4.3.2 with 95% bootstrap intervals over patients.

    Args:
        truth: `training.csv`-layout rows of the evaluated patients.
        predicted: the same patients (same order) predicted.
        weights: dict column -> weight (default 1).
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        `(values, ci)`: dicts keyed by `METRIC_KEYS`.
    """
    groups = {
        "weighted_rmse_narrowing": (list(NARROWING_COLUMNS), M.weighted_rmse),
        "weighted_rmse_erosion": (list(EROSION_COLUMNS), M.weighted_rmse),
        "weighted_mae_overall": (["Overall_Tol"], M.weighted_mae),
    }
    values, ci = {}, {}
    for key, (columns, fn) in groups.items():
        y_true = truth[columns].to_numpy(np.float64)
        y_pred = predicted[columns].to_numpy(np.float64)
        metric = functools.partial(fn, weights=column_weight_vector(columns, weights))
        values[key] = float(metric(y_true, y_pred))
        low, high = bootstrap_ci(metric, y_true, y_pred, n_boot=int(n_boot), seed=seed)
        ci[key] = [float(low), float(high)]
    return values, ci


def _matches(found, truth, class_names, iou_threshold):
    """Per class and image: detection scores, true-positive flags and the number of truths."""
    result = {}
    images = sorted(set(truth["image"]) | set(found["image"]), key=str)
    coords = ["xmin", "ymin", "xmax", "ymax"]
    for name in class_names:
        det_by = {k: g for k, g in found[found["label"] == name].groupby("image")}
        gt_by = {k: g for k, g in truth[truth["label"] == name].groupby("image")}
        per_image = {}
        for image in images:
            gts = gt_by[image][coords].to_numpy(np.float64) if image in gt_by else np.zeros((0, 4))
            if image in det_by:
                dets = det_by[image].sort_values("score", ascending=False, kind="stable")
                boxes, scores = dets[coords].to_numpy(np.float64), dets["score"].to_numpy()
            else:
                boxes, scores = np.zeros((0, 4)), np.zeros(0)
            matched = np.zeros(len(gts), bool)
            tp = np.zeros(len(scores))
            if len(gts):
                overlaps = box_iou(boxes, gts)
                for i in range(len(scores)):
                    best = int(np.argmax(overlaps[i]))
                    if overlaps[i, best] >= iou_threshold and not matched[best]:
                        matched[best] = True
                        tp[i] = 1.0
            per_image[image] = (scores, tp, len(gts))
        result[name] = per_image
    return images, result


def _map_of(images, matches, class_names):
    aps = {}
    for name in class_names:
        parts = [matches[name][image] for image in images]
        n_gt = sum(p[2] for p in parts)
        if n_gt == 0:
            continue
        scores = np.concatenate([p[0] for p in parts])
        tp = np.concatenate([p[1] for p in parts])
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(tp[order])
        fp = np.cumsum(1.0 - np.concatenate([p[1] for p in parts])[order])
        recall = tp / n_gt
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[name] = _voc_ap(recall, precision)
    return aps


def detector_metrics(found, truth, class_names, *, iou_threshold=0.6, n_boot=1000, seed=0):
    """AP per class and mAP at an IoU threshold (Table 1) with a bootstrap interval over films.

    Args:
        found: every detection (`image, label, score, xmin..ymax`).
        truth: the annotations of the same films.
        class_names: the detector's classes.
        iou_threshold: 0.6 (Table 1).
        n_boot: bootstrap resamples (films drawn with replacement).
        seed: bootstrap seed.

    Returns:
        `(ap, (low, high))`: dict class -> AP plus "mAP" (NaN without annotations), and the
        interval of the mAP.
    """
    if len(truth) == 0:
        return {"mAP": math.nan}, (math.nan, math.nan)
    images, matches = _matches(found, truth, class_names, iou_threshold)
    aps = _map_of(images, matches, class_names)
    result = {name: aps.get(name, 0.0) for name in class_names}
    result["mAP"] = float(np.mean(list(aps.values()))) if aps else math.nan
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(int(n_boot)):
        drawn = [images[i] for i in rng.integers(0, len(images), len(images))]
        values = list(_map_of(drawn, matches, class_names).values())
        if values:
            draws.append(float(np.mean(values)))
    if not draws:
        return result, (math.nan, math.nan)
    low, high = np.quantile(draws, [0.025, 0.975])
    return result, (float(low), float(high))


# ---------------------------------------------------------------------------------------------
# Report pieces


def _gray_rgb(image01):
    return np.repeat((np.clip(image01, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def detection_overlay(image01, boxes):
    """RGB uint8 of a film with its boxes (green: detected, orange: prior) and class names."""
    rgb = _gray_rgb(image01).copy()
    for record in boxes.to_dict("records"):
        color = (60, 220, 60) if record.get("source", "detector") == "detector" else (255, 150, 0)
        p0 = (int(round(record["xmin"])), int(round(record["ymin"])))
        p1 = (int(round(record["xmax"])), int(round(record["ymax"])))
        cv2.rectangle(rgb, p0, p1, color, 1)
        cv2.putText(
            rgb,
            f"{record['label']} {record.get('score', 1.0):.2f}",
            (p0[0] + 2, p0[1] + 10),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.3,
            color,
            1,
            cv2.LINE_AA,
        )
    return rgb


def attention_panel(image01, crops, title, height_px=384, alpha=0.6):
    """The film with each crop's attention weights blended into its box (jet), boxes outlined.

    Each pixel's colour weight is `alpha` times its attention weight, so low attention leaves the
    gray film (the anatomy) visible and only high attention is coloured.

    Args:
        image01: the film `(H, W)` in [0, 1].
        crops: list of `(box xyxy, attention (h, w) in [0, 1], label)`.
        title: text written at the top left.
        height_px: height of the panel.
        alpha: weight of the attention colours where the attention weight is 1.

    Returns:
        RGB uint8 `(height_px, W', 3)`.
    """
    h, w = image01.shape
    rgb = _gray_rgb(image01).astype(np.float32) / 255.0
    jet = colormaps["jet"]
    # the largest boxes first, so that a wrist box does not cover the fingers' weights
    crops = sorted(crops, key=lambda c: -(c[0][2] - c[0][0]) * (c[0][3] - c[0][1]))
    for (x0, y0, x1, y1), mask, _label in crops:
        xa, ya = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
        xb, yb = min(w, int(math.ceil(x1)) + 1), min(h, int(math.ceil(y1)) + 1)
        if xb - xa < 2 or yb - ya < 2:
            continue
        heat = cv2.resize(np.asarray(mask, np.float32), (xb - xa, yb - ya), cv2.INTER_LINEAR)
        heat = np.clip(heat, 0, 1)
        colour = jet(heat)[..., :3]
        region = rgb[ya:yb, xa:xb]
        weight = alpha * heat[..., None]
        rgb[ya:yb, xa:xb] = (1 - weight) * region + weight * colour
    out = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    for (x0, y0, x1, y1), _, label in crops:
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), (255, 255, 255), 1)
        cv2.putText(
            out, label, (int(x0) + 2, int(y0) + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255)
        )
    width = int(round(w * height_px / h))
    out = cv2.resize(out, (width, height_px), interpolation=cv2.INTER_LINEAR)
    cv2.putText(out, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _crop_overlays(joint_results, count=6):
    """Attention of the hand-erosion model over held-out crops, the most eroded first."""
    records = joint_results.get(pipeline.MAIN_MODEL)
    if records is None or "attention" not in records.attrs:
        return []
    truth = records[[c for c in records.columns if c.endswith("__true")]].to_numpy(np.float64)
    order = np.argsort(-np.nansum(truth, axis=1), kind="stable")[:count]
    items = []
    for i in order:
        record = records.iloc[int(i)]
        scores = ", ".join(
            f"{name.split('_')[0]} {record[f'{name}__true']:.0f}->{record[name]:.1f}"
            for name in ("distal_erosion", "proximal_erosion")
            if f"{name}__true" in record
        )
        title = f"{report_caption(record['path'])} {record['crop']} ({scores})"
        png = reports.overlay_png(
            records.attrs["crops"][int(i)],
            records.attrs["attention"][int(i)],
            title=title,
            alpha=0.6,
            colorbar_label="attention (min–max of this crop)",
            weight_by_value=True,
        )
        items.append((png, title))
    return items


def crop_mapping_rows(limbs=("LH", "LF")):
    """The crop -> RA2 column mapping (`deepra.columns.crop_targets`) as report table rows."""
    rows = []
    for limb in limbs:
        for crop in detector_classes(limb):
            for key, targets in crop_targets(limb, crop).items():
                rows.append(
                    {
                        "film": limb,
                        "detected crop": crop,
                        "joint model": key,
                        "columns (output: column)": ", ".join(
                            f"{output}: {column}" for output, column in targets.items()
                        ),
                    }
                )
    return rows


def _table2_rows(joint_results, config):
    rows = []
    counts = config.get("crop_counts") or {}
    settings = config.get("joint_settings") or {}
    for key in JOINT_MODELS:
        paper = TABLE2[TABLE2_ROW[key]]
        records = joint_results.get(key)
        known = counts.get(key, {})
        rows.append(
            {
                "model": key,
                "crops (paper)": paper["crops"],
                "backbone (paper)": paper["backbone"],
                "backbone (ours)": settings.get(key, {}).get("backbone", ""),
                "predictions": paper["predictions"],
                "training + validation crops (ours)": (
                    known.get("train", 0) + known.get("val", 0) if known else None
                ),
                "total joint images (paper)": paper["total_joint_images"],
                "held-out crops (ours)": 0 if records is None else len(records),
            }
        )
    return rows


def _per_model_rmse(joint_results):
    result = {}
    for key, records in joint_results.items():
        errors = []
        for column in records.columns:
            if column.endswith("__true"):
                name = column[: -len("__true")]
                truth = records[column].to_numpy(np.float64)
                keep = np.isfinite(truth)
                errors.append(
                    np.clip(records[name].to_numpy(np.float64), 0, None)[keep] - truth[keep]
                )
        flat = np.concatenate(errors) if errors else np.zeros(0)
        result[key] = float(np.sqrt(np.mean(flat**2))) if flat.size else math.nan
    return result


# ---------------------------------------------------------------------------------------------
# Evaluation


def build_report(
    metrics,
    *,
    values,
    base_values,
    detector_ap,
    truth,
    predicted,
    per_group,
    table2_rows,
    history_path=None,
    detection_items=(),
    crop_items=(),
    films=0,
    config=None,
    seed=0,
    data_path=None,
    localisation_panels=(),
):
    """The DeepRA evaluation report from its numbers (what `evaluate_pipeline` writes).

    Args:
        metrics: the metrics dict (with `ci`, `baseline`, `detector_map`, `patients`).
        values: the pipeline's scores (`score_metrics` values).
        base_values: the baseline's.
        detector_ap: {"hand", "foot"} per-class AP dicts (may be empty).
        truth: `(N,)` true Overall_Tol per held-out patient.
        predicted: `(N,)` predicted Overall_Tol.
        per_group: {joint model: {"DeepRA": rmse, "baseline": rmse}}.
        table2_rows: the rows of the Table 2 layout.
        history_path: the run's `history.csv` (column `model`), if any.
        detection_items: `(png, caption)` stage-1 pictures.
        crop_items: `(png, caption)` attention overlays on crops.
        films: the number of films evaluated.
        config: the run's configuration (`preset`, `seed`, `column_weights`).
        seed: the evaluation seed.
        data_path: the data set's path, shown in the header.
        localisation_panels: `(png, caption)` crops whose attention is drawn beside the controls
            (shown with `metrics["localisation"]`, phantoms only).

    Returns:
        The `common.reports.HTMLReport`.
    """
    config = config or {}
    weights = config.get("column_weights")
    patients = int(metrics["patients"])
    report = reports.HTMLReport(
        "DeepRA: RA joint damage from hand and foot films", data_path=data_path
    )
    report.add_paragraph(
        f"{reports.count_noun(patients, 'held-out patient')} "
        f"({reports.count_noun(films, 'film')}) through the whole pipeline: "
        "detection of fingers, toes and wrists, crops, the six joint models, sums. 95% intervals "
        f"by bootstrap over patients (detector mAP: over films). Preset {config.get('preset')}, "
        f"seed {config.get('seed', seed)}; metric weights: "
        + (
            "all 1 (the challenge never published its weights)."
            if not weights
            else "as configured."
        )
    )
    report.add_heading("Scores (§4.3.2), beside the paper's")
    report.add_metrics(
        {k: metrics[k] for k in (*METRIC_KEYS, "baseline", "detector_map")},
        ci={k: metrics["ci"][k] for k in (*METRIC_KEYS, "baseline", "detector_map")},
        reference={k: PAPER_TABLE3[k] for k in (*METRIC_KEYS, "baseline", "detector_map")},
        reference_note=PAPER_NOTE,
    )
    rows = []
    for label, source, ref in (
        ("Baseline (this run)", base_values, None),
        ("DeepRA pipeline (this run)", values, None),
        ("Baseline (paper, RA2-DREAM final test set)", None, PAPER_TABLE3["baseline"]),
        ("Final Performance, EfficientNet & Attention (paper)", None, PAPER_TABLE3),
    ):
        table = source or ref
        cell = reports.Published if source is None else float
        rows.append(
            {
                "experiment": label,
                "weighted abs. error (overall)": cell(table["weighted_mae_overall"]),
                "weighted RMSE (narrowing)": cell(table["weighted_rmse_narrowing"]),
                "weighted RMSE (erosion)": cell(table["weighted_rmse_erosion"]),
            }
        )
    report.add_table(rows, caption="Laid out like Table 3. Paper rows: the paper's data set.")
    if detector_ap:
        ours = table1(detector_ap.get("hand"), detector_ap.get("foot"))
        paper = table1(TABLE1_AP["hand"], TABLE1_AP["foot"])
        rows = [
            {
                "joint type": index,
                "hand AP (ours)": ours.loc[index, "Hand Model Joint Wise AP"],
                "feet AP (ours)": ours.loc[index, "Feet Model Joint Wise AP"],
                "hand AP (paper)": reports.Published(paper.loc[index, "Hand Model Joint Wise AP"]),
                "feet AP (paper)": reports.Published(paper.loc[index, "Feet Model Joint Wise AP"]),
            }
            for index in ours.index
        ]
        report.add_table(
            rows,
            caption="Laid out like Table 1: AP at IoU 0.6 per class. Paper columns: 50 held-out "
            "real films per detector.",
        )
    report.add_table(
        table2_rows,
        caption="Laid out like Table 2. Paper counts: crops of the 367 training patients.",
    )
    report.add_table(
        crop_mapping_rows(),
        caption="Which RA2 columns each detected crop gives, through which joint model "
        "(left limbs shown; RH and RF crops give the same columns with RH_ and RF_).",
    )
    report.add_image(
        reports.plot_bars(per_group, ylabel="RMSE (held-out joints)", title="RMSE per joint model"),
        "RMSE of each joint model's joints on the held-out patients, beside the baseline's",
    )
    report.add_heading("Overall damage per held-out patient (Overall_Tol)")
    report.add_regression(truth, predicted, what="Overall_Tol", unit="points")
    if history_path is not None and Path(history_path).is_file():
        report.add_heading("Learning curves, one model per figure")
        history = pd.read_csv(history_path)
        for name, frame in history.groupby("model", sort=False):
            frame = frame.drop(columns=["model"]).dropna(axis=1, how="all")
            report.add_image(
                reports.plot_learning_curves(frame, title=f"{name} model"),
                f"Learning curves of the {name} model",
            )
    if detection_items:
        report.add_images_grid(detection_items)
    crops = crop_items
    if crops:
        report.add_paragraph(
            "Attention weights of the hand-erosion model over held-out crops (§4.4; the paper's "
            "Fig. 4 shows the same kind of map for narrowing on real films), most eroded first; "
            "titles: file, crop, (distal/proximal) true -> predicted."
        )
        report.add_images_grid(crops)
    if metrics.get("localisation"):
        report.add_localisation(metrics["localisation"], localisation_panels, what="attention mask")
    return report


def evaluate_pipeline(
    detectors,
    joint_models,
    films,
    *,
    detections,
    annotations,
    config,
    train_films,
    out_dir,
    history_path=None,
    seed=0,
    verbose=1,
    data_path=None,
):
    """Runs the pipeline on held-out films and writes `metrics.json`, `predictions.csv`, `report.html`.

    Args:
        detectors: {"hand", "foot"} detectors.
        joint_models: {joint model key: model}.
        films: film records of the evaluated patients (with their scores).
        detections: stage-1 boxes of these films (`deepra.pipeline.detect_films`).
        annotations: box annotations of these films (for the detector mAP; may be empty).
        config: the run's configuration (`column_weights`, `n_boot`, `mirror_right_limbs`, ...).
        train_films: film records of the training patients (the baseline's distribution).
        out_dir: output folder.
        history_path: the run's `history.csv` for learning curves (optional).
        seed: seed of the baseline draws and the bootstrap.
        verbose: print a summary.
        data_path: the data set's path, named in the report's header.

    Returns:
        The metrics dict.
    """
    if len(films) == 0:
        raise DataError("no held-out patients to evaluate (empty test split)")
    patients = list(dict.fromkeys(films["patient_id"]))
    truth = films.drop_duplicates("patient_id").set_index("patient_id").loc[patients]
    truth = truth.reset_index().rename(columns={"patient_id": PATIENT_COLUMN})
    joint_results = pipeline.predict_joints(
        joint_models,
        films,
        detections,
        margin=float(config.get("crop_margin", 0.0)),
        explain=True,
    )
    predicted = data.scores_table(list(joint_results.values()), patients)
    train_scores = train_films.drop_duplicates("patient_id")
    baseline = baseline_table(train_scores, patients, seed=seed)
    weights = config.get("column_weights")
    n_boot = int(config.get("n_boot", 1000))
    values, ci = score_metrics(truth, predicted, weights=weights, n_boot=n_boot, seed=seed)
    base_values, base_ci = score_metrics(truth, baseline, weights=weights, n_boot=n_boot, seed=seed)

    sides = pipeline.detector_sides(config)
    detector_map, detector_ci, detector_ap = {}, {}, {}
    for kind, model in detectors.items():
        kind_films = films[[pipeline.limb_kind(limb) == kind for limb in films["limb"]]]
        names = list(detector_classes("LH" if kind == "hand" else "LF"))
        paths = {str(Path(p).resolve()) for p in kind_films["path"]}
        kind_truth = annotations[[str(Path(p).resolve()) in paths for p in annotations["image"]]]
        _, found = pipeline.detect_films(
            {kind: model},
            kind_films,
            priors=config.get("box_priors"),
            mirror_right_limbs=bool(config.get("mirror_right_limbs", True)),
            return_all=True,
            box_fusion=bool(config.get("box_fusion", False)),
            **sides,
        )
        found = found.assign(image=[str(Path(p).resolve()) for p in found["image"]])
        kind_truth = kind_truth.assign(image=[str(Path(p).resolve()) for p in kind_truth["image"]])
        ap, interval = detector_metrics(
            found, kind_truth, names, iou_threshold=0.6, n_boot=min(n_boot, 500), seed=seed
        )
        detector_map[kind] = ap["mAP"]
        detector_ci[kind] = list(interval)
        detector_ap[kind] = ap

    truth_root = phantom_truth_root(data_path)
    localisation, localisation_panels = (None, [])
    if truth_root is not None:  # phantoms: the attention against content-blind maps (issue 15.1)
        localisation, localisation_panels = attention_localisation(
            joint_models, joint_results, truth_root, seed=seed, n_boot=n_boot
        )
    metrics = {
        **values,
        "baseline": base_values,
        "detector_map": detector_map,
        "ci": {**ci, "baseline": base_ci, "detector_map": detector_ci},
        "patients": len(patients),
        "per_model_rmse": _per_model_rmse(joint_results),
        "detector_ap": detector_ap,
        "prior_boxes": int((detections["source"] == "prior").sum()),
        "column_weights": "all 1" if not weights else weights,
        "paper": PAPER_TABLE3,
    }
    if localisation is not None:
        metrics["localisation"] = localisation
    reports.write_json(output_path(out_dir, "metrics.json"), metrics)
    reports.write_csv(output_path(out_dir, "predictions.csv"), predicted[list(TRAINING_COLUMNS)])

    per_group = {}
    for key in joint_results:
        per_group[key] = {"DeepRA": metrics["per_model_rmse"][key]}
    for key, value in _baseline_rmse_by_model(joint_results, baseline).items():
        per_group.setdefault(key, {})["baseline"] = value
    shown = []
    for kind in ("hand", "foot"):
        kind_films = films[[pipeline.limb_kind(limb) == kind for limb in films["limb"]]]
        if len(kind_films):
            path = kind_films["path"].iloc[0]
            boxes = detections[detections["image"] == str(path)]
            shown.append(
                (
                    reports.encode_png(detection_overlay(read_image(path), boxes)),
                    f"Stage 1 on {report_caption(path)} (green: detected, orange: prior box)",
                )
            )
    report = build_report(
        metrics,
        values=values,
        base_values=base_values,
        detector_ap=detector_ap,
        truth=truth["Overall_Tol"].to_numpy(float),
        predicted=predicted["Overall_Tol"].to_numpy(float),
        per_group=per_group,
        table2_rows=_table2_rows(joint_results, config),
        history_path=history_path,
        detection_items=shown,
        crop_items=_crop_overlays(joint_results),
        films=len(films),
        config=config,
        seed=seed,
        data_path=data_path,
        localisation_panels=localisation_panels,
    )
    report.write(output_path(out_dir, "report.html"))
    if verbose:
        print(
            "Held-out patients: weighted RMSE narrowing "
            f"{values['weighted_rmse_narrowing']:.3f} (baseline "
            f"{base_values['weighted_rmse_narrowing']:.3f}), erosion "
            f"{values['weighted_rmse_erosion']:.3f} (baseline "
            f"{base_values['weighted_rmse_erosion']:.3f}), overall abs. error "
            f"{values['weighted_mae_overall']:.2f} (baseline "
            f"{base_values['weighted_mae_overall']:.2f}); detector mAP@0.6 "
            + ", ".join(f"{k} {v:.2f}" for k, v in detector_map.items())
            + f". Report: {os.path.join(out_dir, 'report.html')}",
            flush=True,
        )
    return metrics


def _baseline_rmse_by_model(joint_results, baseline):
    """RMSE of the baseline's draws on the joints of each joint model's held-out crops."""
    base = baseline.set_index(PATIENT_COLUMN)
    result = {}
    for key, records in joint_results.items():
        errors = []
        for column in records.columns:
            if column.endswith("__true"):
                name = column[: -len("__true")]
                for record in records[["patient_id", f"{name}__column", column]].itertuples(False):
                    pid, joint, truth = record
                    if np.isfinite(truth):
                        errors.append(base.loc[str(pid), joint] - truth)
        result[key] = float(np.sqrt(np.mean(np.square(errors)))) if errors else math.nan
    return result


def _run_films(config, data_dir, split):
    films = data.read_records(data_dir)
    films["split"] = data.split_patients(
        films,
        test_fraction=float(config.get("test_fraction", 0.2)),
        val_fraction_of_train=float(config.get("val_fraction_of_train", 0.15)),
        seed=int(config.get("seed", 0)),
    ).to_numpy()
    if split not in set(films["split"]):
        raise DataError(f"no patient in the '{split}' split of this data set", path=data_dir)
    return films


def evaluate(
    model, data_dir, out_dir, *, split="test", column_weights=None, batch_size=8, verbose=1
):
    """Evaluates a saved DeepRA run on a data set's held-out patients.

    Args:
        model: the run's `model.h5` or `model.keras` (the hand-erosion joint model); its run
            folder holds `config.json` and `models/` with the other eight models, which are read
            in the same format.
        data_dir: an RA2-DREAM data set (split with the run's seed and fractions).
        out_dir: where `metrics.json`, `report.html` and `predictions.csv` go.
        split: which split's patients to evaluate ("test": the held-out 20%).
        column_weights: weights of the weighted metrics (dict, or CSV `column,weight`; default
            the run's configuration, i.e. 1 for every column unless it was trained with others).
        verbose: print a summary.

    Returns:
        The metrics dict.
    """
    config, models = pipeline.load_run(model)
    if column_weights is not None:
        config["column_weights"] = read_column_weights(column_weights)
    detectors, joints = pipeline.split_models(models)
    films = _run_films(config, data_dir, split)
    test_films = films[films["split"] == split]
    layout = data.find_layout(data_dir)
    boxes = data.read_boxes(config.get("boxes") or layout["training_csv"].parent)
    wanted = {str(Path(p).resolve()) for p in test_films["path"]}
    annotations = boxes[[str(Path(p).resolve()) in wanted for p in boxes["image"]]]
    detections = _detect(detectors, test_films, config, batch_size, "evaluate" if verbose else None)
    return evaluate_pipeline(
        detectors,
        joints,
        test_films,
        detections=detections,
        annotations=annotations,
        config=config,
        train_films=films[films["split"] != split],
        out_dir=out_dir,
        history_path=pipeline.run_dir_of(model) / "history.csv",
        seed=int(config.get("seed", 0)),
        verbose=verbose,
        data_path=data_dir,
    )


# ---------------------------------------------------------------------------------------------
# Prediction


def _template_films(folder):
    """Films of a folder that holds `template.csv`, in the template's patient order."""
    csv = data._child(Path(folder), data.TEMPLATE_CSV)
    films = _index_any_films(folder)
    return [(pid, limb, path) for pid, limb, path, _ in data.template_films(csv, films, folder)]


def _prediction_columns(inputs):
    """`predictions.csv`'s columns: the order of the first input folder's `template.csv` (the
    challenge scores the file it handed out), else `training.csv`'s; columns the template lacks
    follow, columns we do not know are left out."""
    for path in [Path(p) for p in inputs]:
        csv = data._child(path, data.TEMPLATE_CSV) if path.is_dir() else None
        if csv is None or not csv.is_file():
            continue
        known = {c.lower(): c for c in TRAINING_COLUMNS}
        lines = data._csv_lines(csv)
        header = lines[0] if lines else []
        ordered = [known[c.strip().lower()] for c in header if c.strip().lower() in known]
        ordered = list(dict.fromkeys(ordered))
        return ordered + [c for c in TRAINING_COLUMNS if c not in ordered]
    return list(TRAINING_COLUMNS)


def _limb_match(path):
    stem = Path(path).stem
    match = data.FILM_PATTERN.match(f"{stem}.jpg")
    return None if match is None else (match["pid"].strip(), match["limb"].upper())


def _index_any_films(folder):
    found = {}
    for path in collect_image_paths([folder]):
        match = _limb_match(path)
        if match is not None and data.TRUTH_DIR not in Path(path).parts:
            found.setdefault((match[0].lower(), match[1]), path)
    return found


def films_from_inputs(inputs):
    """Groups the input films by patient and limb.

    Films are named `<Patient_ID>-<LH|RH|LF|RF>.<jpg|png|dcm>` (the challenge's names); a folder
    holding `template.csv` gives its patients in the template's order (every listed film must be
    there). Exactly four films with other names are taken as one patient's LH, RH, LF and RF in
    the order given (the patient is named after the first file).

    Returns:
        pandas DataFrame `patient_id, limb, path`.

    Raises:
        DataError: a film whose patient or limb cannot be told, an empty template, a listed film
            that is missing, the same patient and limb given twice.
    """
    rows, loose = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and data._child(path, data.TEMPLATE_CSV) is not None:
            rows.extend(_template_films(path))
            continue
        for film in collect_image_paths([path]):
            if data.TRUTH_DIR in Path(film).parts:
                continue
            match = _limb_match(film)
            if match is None:
                loose.append(film)
            else:
                rows.append((match[0], match[1], str(film)))
    if loose:
        if rows or len(loose) != 4:
            raise DataError(
                "cannot tell the patient and limb from the file name (expected "
                "<Patient_ID>-<LH|RH|LF|RF>.jpg, or exactly four films in the order LH RH LF RF)",
                path=loose[0],
            )
        rows = [(Path(loose[0]).stem, limb, str(p)) for limb, p in zip(LIMBS, loose, strict=True)]
    frame = pd.DataFrame(rows, columns=["patient_id", "limb", "path"])
    duplicated = frame.duplicated(["patient_id", "limb"], keep="first")
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise DataError(
            f"a second {first['limb']} film of patient {first['patient_id']}", path=first["path"]
        )
    return frame


def predict(
    model,
    inputs,
    out_dir,
    *,
    explain=False,
    batch_size=8,
    link_uids=False,
    dicom_out=None,
    verbose=1,
):
    """Scores patients' films: the 86 joints and the three sums, in the `template.csv` layout.

    Args:
        model: a run's `model.h5` / `model.keras` (see `evaluate`).
        inputs: films (JPEG, PNG, DICOM) named `<Patient_ID>-<LH|RH|LF|RF>.<ext>`, folders of
            them (a folder with `template.csv` is read in the template's order), or one
            patient's four films in the order LH, RH, LF, RF.
        out_dir: output folder: `predictions.csv` (Patient_ID + the columns of `training.csv`,
            in the order of the input folder's `template.csv` when there is one),
            `detections.csv` (the stage-1 boxes per film).
        explain: also write `<film>_attention.png` per film: the film with the attention weights
            of the erosion models (left) and of the narrowing models (right) painted into each
            crop's box, `<film>_attention.npz` with every crop's weights (`<model>__<crop>`), and
            per joint crop `<film>_attention/<model>__<crop>.png` (`crop_overlay`: the crop
            beside its attention weights, titled with the columns it predicts).
        batch_size: films per detector pass (the joint models take 8x as many crops).
        link_uids: name DICOM films by SOP Instance UID and add their Study, Series and SOP
            Instance UIDs (distinct ones `;`-joined per patient) to `predictions.csv`; a
            patient with a DICOM film is named by a salted hash of the ID its file names give,
            with or without it (`common.identifiers`).
        dicom_out: folder for a Secondary Capture (the film's attention overlay) and an SR (the
            film's joint scores) per DICOM film (needs `explain`).
        verbose: progress and a summary.

    Returns:
        pandas DataFrame as `predictions.csv`. A patient without all four films gets the joints
        of the films given and NaN elsewhere, and NaN overall sums.
    """
    films = films_from_inputs(inputs)
    names = InputNames(out_dir, link_uids=link_uids)
    explain = explain or dicom_out is not None
    films = _pseudonymous_patients(films, names)
    for path in progress(
        films["path"], desc="predict: reading films", unit="films", enabled=bool(verbose)
    ):
        read_image(path)  # an unreadable film fails here, before anything is written
    config, models = pipeline.load_run(model)
    detectors, joints = pipeline.split_models(models)
    detections = _detect(detectors, films, config, batch_size, "predict" if verbose else None)
    if verbose:
        print(f"predict: scoring the joints with {len(joints)} models", file=sys.stderr, flush=True)
    results = pipeline.predict_joints(
        joints,
        films,
        detections,
        margin=float(config.get("crop_margin", 0.0)),
        batch_size=8 * int(batch_size),
        explain=explain,
    )
    patients = list(dict.fromkeys(films["patient_id"]))
    table = data.scores_table(list(results.values()), patients)
    incomplete = table[list(JOINT_COLUMNS)].isna().any(axis=1)
    table.loc[incomplete, ["Overall_Tol", "Overall_erosion", "Overall_narrowing"]] = np.nan
    table = table[_prediction_columns(inputs)]
    for column, values in names.uid_columns(films["path"]).items():
        per_patient = (
            pd.Series(values, index=films.index)
            .groupby(films["patient_id"])
            .agg(lambda v: ";".join(dict.fromkeys(x for x in v if x)))
        )
        table[column] = [per_patient.get(p, "") for p in table["Patient_ID"]]
    if explain:
        _write_explanations(out_dir, films, detections, results, names)
    detections["film"] = [names.name(p) for p in detections["image"]]
    reports.write_csv(output_path(out_dir, "detections.csv"), detections.drop(columns=["image"]))
    reports.write_csv(output_path(out_dir, "predictions.csv"), table)
    write_predict_dicoms(
        dicom_out,
        (
            {
                "source": film["path"],
                "name": names.name(film["path"]),
                "overlay": os.path.join(out_dir, f"{names.stem(film['path'])}_attention.png"),
                "measurements": _film_scores(results, film["path"]),
                "findings": [("limb", film["limb"])],
            }
            for film in films.to_dict("records")
            if names.is_dicom(film["path"])
        ),
        package="deepra",
        verbose=verbose,
    )
    if verbose:
        note = f" ({int(incomplete.sum())} without all four films)" if incomplete.any() else ""
        print(
            f"{len(table)} patients scored{note}: {os.path.join(out_dir, 'predictions.csv')}",
            flush=True,
        )
    return table


def crop_overlay(crop01, mask, lines, side_px=160):
    """RGB uint8 of one joint crop (left) beside its attention weights painted over it (right).

    The weights are shown min-max scaled (jet: blue lowest, red highest of this crop); the last
    text line gives their range, so a flat map is told apart from a peaked one.

    Args:
        crop01: the crop `(h, w)` in [0, 1] as the joint model saw it.
        mask: the attention weights `(h', w')` of the model's locally connected sigmoid layer.
        lines: text lines above the images (film, crop, model, predictions).
        side_px: height of each half.

    Returns:
        RGB uint8 `(side_px + 15 * (len(lines) + 1) + 4, 2 * width, 3)`.
    """
    crop = np.asarray(crop01, np.float32)
    weights = np.asarray(mask, np.float32)
    width = int(round(side_px * crop.shape[1] / crop.shape[0]))
    plain = cv2.resize(_gray_rgb(crop), (width, side_px), interpolation=cv2.INTER_NEAREST)
    heat = reports.overlay_map(crop, weights, alpha=0.6, weight_by_value=True)
    heat = cv2.resize(heat, (width, side_px), interpolation=cv2.INTER_NEAREST)
    lines = [*lines, f"attention {weights.min():.2f}..{weights.max():.2f} (jet, scaled)"]
    top = 15 * len(lines) + 4
    out = np.zeros((side_px + top, 2 * width, 3), np.uint8)
    out[top:] = np.concatenate([plain, heat], axis=1)
    for k, line in enumerate(lines):
        cv2.putText(out, line, (3, 13 + 15 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1)
    return out


def _detect(detectors, films, config, batch_size, desc):
    """Stage 1 on `films` with the run's settings; progress under `desc` (None: quiet)."""
    bar = progress(
        desc=f"{desc}: detecting joints", total=len(films), unit="films", enabled=bool(desc)
    )
    return pipeline.detect_films(
        detectors,
        films,
        priors=config.get("box_priors"),
        mirror_right_limbs=bool(config.get("mirror_right_limbs", True)),
        box_fusion=bool(config.get("box_fusion", False)),
        cluster_digits=tuple(config.get("cluster_digits", ())),
        batch_size=batch_size,
        progress=progress_callback(bar),
        **pipeline.detector_sides(config),
    )


def _pseudonymous_patients(films, names):
    """`films` with the patient of any DICOM film renamed `pat-<salted hash>` of its ID.

    The ID comes from file names (`<Patient_ID>-LH.dcm`), which in real archives may hold a
    patient's name or ID (`common.identifiers`); non-DICOM patients keep theirs.
    """
    films = films.copy()
    dicom = films["path"].map(names.is_dicom)
    hidden = set(films.loc[dicom, "patient_id"])
    films["patient_id"] = [
        salted_hash(p, names.salt, prefix="pat-") if p in hidden else p for p in films["patient_id"]
    ]
    return films


def _film_scores(results, path):
    """The predicted scores of one film: `(column, value, "{score}")` for its SR."""
    scores = []
    for records in results.values():
        outputs = [c[: -len("__column")] for c in records.columns if c.endswith("__column")]
        for record in records.to_dict("records"):
            if str(record["path"]) == str(path):
                scores += [(record[f"{o}__column"], record[o], "{score}") for o in outputs]
    return scores


def _write_explanations(out_dir, films, detections, results, names):
    """One attention PNG (and NPZ of the weights) per film, and one PNG per joint crop."""
    per_film = {}
    for key, records in results.items():
        task = JOINT_MODELS[key][1]
        outputs = [c[: -len("__column")] for c in records.columns if c.endswith("__column")]
        for i, record in enumerate(records.to_dict("records")):
            box = (record["xmin"], record["ymin"], record["xmax"], record["ymax"])
            mask = records.attrs["attention"][i]
            per_film.setdefault(record["path"], {"erosion": [], "narrowing": [], "arrays": {}})
            per_film[record["path"]][task].append((box, mask, record["crop"]))
            per_film[record["path"]]["arrays"][f"{key}__{record['crop']}"] = mask
            stem = names.stem(record["path"])
            scores = [f"{record[f'{o}__column']} {record[o]:.1f}" for o in outputs]
            lines = [f"{stem} {record['crop']}, {key} model, predicted:"]
            lines += [", ".join(scores[k : k + 2]) for k in range(0, len(scores), 2)]
            png = reports.image_png(
                crop_overlay(records.attrs["crops"][i], mask, lines),
                cmap="jet",
                colorbar_label="attention (min–max of this crop)",
            )
            folder = output_path(out_dir, f"{stem}_attention")
            reports.save_png(os.path.join(folder, f"{key}__{record['crop']}.png"), png)
    for path in films["path"]:
        entry = per_film.get(str(path), {"erosion": [], "narrowing": [], "arrays": {}})
        image = read_image(path)
        panels = [
            attention_panel(image, entry["erosion"], "erosion models"),
            attention_panel(image, entry["narrowing"], "narrowing models"),
        ]
        stem = names.stem(path)
        png = reports.image_png(
            np.concatenate(panels, axis=1),
            cmap="jet",
            colorbar_label="attention weight (colour weight grows with it)",
            height_px=panels[0].shape[0],
        )
        reports.save_png(output_path(out_dir, f"{stem}_attention.png"), png)
        target = Path(output_path(out_dir, f"{stem}_attention.npz"))
        tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, **entry["arrays"])
        os.replace(tmp, target)
