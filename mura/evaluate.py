"""Study-level evaluation and prediction of MURA classifiers: metrics.json, report.html, CAM overlays.

A study's probability of abnormality is the arithmetic mean of its images' probabilities (MURA §3);
it is called abnormal at 0.5. `metrics.json` holds, as CONTRACT.md says, `study_kappa`,
`study_auroc`, `study_accuracy` (the slides' metric), `study_sensitivity`, `study_specificity` and
`by_body_part` (`{part: {kappa, auroc, studies}}`), with 95% bootstrap intervals under `"ci"` (same
keys) drawn by patient: all studies of a patient are resampled together (MURA patients have studies
of several body parts). On phantoms it adds `localisation`: the CAM on the drawn lesions against
content-blind controls (`mura.explain.localisation`).

`predict` takes image files (PNG, JPEG, DICOM) and folders and writes one row per study to
`OUT/predictions.csv` (and one row per image to `OUT/image_predictions.csv`). A study is the set
of images in one folder: a MURA study folder (`.../patient00001/study1_positive/`) is one study, a
folder of study folders gives one study per sub-folder, and single files named on the command line
are one study each unless they share a folder (then they are one study together). DICOM files of
one folder are further split by their StudyInstanceUID (a PACS export may put several studies in
one folder); outputs name such a study by a hash of the UID, never by DICOM patient fields.

An ensemble of the k best epochs by validation loss (`--ensemble K`, see `mura.ensemble`) averages
the members' probabilities and class activation maps.

Reference:
    Rajpurkar et al., "MURA: Large Dataset for Abnormality Detection in Musculoskeletal
    Radiographs", 2018, §3 (study probability, ensemble), Table 2 (kappa per study type).
    Paper 004 (slides), "Performance evaluation" (the three radiologists' kappas).
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from common import metrics as M
from common import reports
from common.dicom_out import write_predict_dicoms
from common.errors import DataError
from common.export import load_model
from common.identifiers import InputNames
from common.image_io import is_dicom_file
from common.image_io import read_image
from common.inference import collect_image_paths
from common.inference import metrics_with_ci
from common.inference import output_path
from common.run_config import read_run_config
from mura.data import _header_problem
from mura.data import load_records
from mura.data import study_probabilities
from mura.ensemble import ensemble_members
from mura.explain import MAP_NAME
from mura.explain import localisation
from mura.forward import _cached_forward
from mura.forward import make_forward  # noqa: F401  (public here as before)
from mura.forward import run_forward
from mura.model import MURAConfig
from mura.model import get_config
from mura.synthetic import BODY_PARTS

THRESHOLD = 0.5
# Slides (paper 004), "Performance evaluation": Cohen's kappa of three Stanford radiologists with
# the gold standard on the MURA test set, per study type and overall (95% CI in the slides).
RADIOLOGIST_KAPPA = {
    "elbow": (0.850, 0.710, 0.719),
    "finger": (0.304, 0.403, 0.410),
    "forearm": (0.796, 0.802, 0.798),
    "hand": (0.661, 0.927, 0.789),
    "humerus": (0.867, 0.733, 0.933),
    "shoulder": (0.864, 0.791, 0.864),
    "wrist": (0.791, 0.931, 0.931),
    "overall": (0.731, 0.763, 0.778),
}
# Issue 8 / MURA paper (Rajpurkar et al. 2018, Table 2): the MURA model's overall kappa on the test set.
MURA_MODEL_KAPPA = 0.705
PAPER_REFERENCE = {"study_kappa": MURA_MODEL_KAPPA}
PAPER_NOTE = (
    "MURA test-set figures (Rajpurkar et al. 2018, Table 2: the MURA paper's DenseNet-169 "
    "ensemble, overall kappa 0.705), not a measurement on this run's data (phantoms by default)"
)
# The slides' (paper 004) own figure is accuracy; the MURA paper reports kappa, the ROC its AUROC.
METRIC_KEYS = (
    "study_kappa",
    "study_auroc",
    "study_accuracy",
    "study_sensitivity",
    "study_specificity",
)
_XR_PART = re.compile(r"^xr_([a-z]+)$", re.IGNORECASE)


# --------------------------------------------------------------------------- models


def model_config(model, model_path=None):
    """The configuration of a saved model: its run's `config.json` when beside the file.

    Args:
        model: the loaded model (its input shape always wins).
        model_path: the model file, or None.

    Returns:
        `(MURAConfig, run_info)`; `run_info` is the whole `config.json` (`{}` without one).
    """
    run_info = read_run_config(model_path)
    fields = {f.name for f in dataclasses.fields(MURAConfig)}
    known = {k: v for k, v in run_info.items() if k in fields and k != "weights"}
    known["input_shape"] = tuple(int(d) for d in model.input_shape[1:])
    backbone = known.get("backbone", "densenet")
    known["backbone"] = backbone
    config = get_config(MURAConfig(backbone=backbone, input_shape=known["input_shape"]), **known)
    return config, run_info


# --------------------------------------------------------------------------- metrics


def study_metrics(labels, probabilities, patients, body_parts, *, seed=0, n_boot=1000):
    """The CONTRACT.md metrics of a set of studies, with 95% bootstrap intervals by patient.

    Args:
        labels: study labels 0/1 (1 = abnormal), shape (n,).
        probabilities: study probabilities of abnormality, shape (n,).
        patients: patient of each study (the bootstrap resamples patients whole).
        body_parts: study type of each study.
        seed: bootstrap seed.
        n_boot: bootstrap resamples.

    Returns:
        `(values, ci)`: `values` with `study_kappa`, `study_auroc`, `study_accuracy` (share of
        studies called right at the threshold), `study_sensitivity`, `study_specificity`,
        `by_body_part` (`{part: {"kappa", "auroc", "studies"}}`); `ci` with the same keys
        (`[low, high]`; `by_body_part` without `studies`). Undefined values (a single class) are
        NaN (`null` in JSON).
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    prob = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    pred = (prob >= THRESHOLD).astype(np.int64)
    groups = np.asarray(patients).astype(str)
    parts = np.asarray(body_parts).astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values, ci = metrics_with_ci(
            {
                "study_kappa": M.cohen_kappa,
                "study_accuracy": M.accuracy,
                "study_sensitivity": M.sensitivity,
                "study_specificity": M.specificity,
            },
            y,
            pred,
            groups=groups,
            seed=seed,
            n_boot=n_boot,
        )
        auroc, auroc_ci = metrics_with_ci(
            {"study_auroc": M.roc_auc}, y, prob, groups=groups, seed=seed, n_boot=n_boot
        )
        values.update(auroc)
        ci.update(auroc_ci)
        values = {k: values[k] for k in METRIC_KEYS}
        ci = {k: ci[k] for k in METRIC_KEYS}
        values["by_body_part"], ci["by_body_part"] = {}, {}
        for part in sorted(set(parts)):
            member = parts == part
            kappa, kappa_ci = metrics_with_ci(
                {"kappa": M.cohen_kappa},
                y[member],
                pred[member],
                groups=groups[member],
                seed=seed,
                n_boot=n_boot,
            )
            part_auroc, part_auroc_ci = metrics_with_ci(
                {"auroc": M.roc_auc},
                y[member],
                prob[member],
                groups=groups[member],
                seed=seed,
                n_boot=n_boot,
            )
            values["by_body_part"][part] = {
                "kappa": kappa["kappa"],
                "auroc": part_auroc["auroc"],
                "studies": int(member.sum()),
            }
            ci["by_body_part"][part] = {"kappa": kappa_ci["kappa"], "auroc": part_auroc_ci["auroc"]}
    return values, ci


# --------------------------------------------------------------------------- report


def _body_part_table(values, ci, classes=None):
    """Rows of the per-study-type table; `classes` ({part: classes present}) marks a part with one
    class as `n/a (1 class)` (kappa and AUROC are undefined there)."""
    classes = classes or {}
    rows = []
    parts = list(values["by_body_part"]) + ["overall"]
    for part in parts:
        if part == "overall":
            ours = {
                "kappa": values["study_kappa"],
                "auroc": values["study_auroc"],
                "studies": sum(v["studies"] for v in values["by_body_part"].values()),
            }
            interval = {"kappa": ci["study_kappa"], "auroc": ci["study_auroc"]}
        else:
            ours = values["by_body_part"][part]
            interval = ci["by_body_part"][part]
        radiologists = RADIOLOGIST_KAPPA.get(part, (None, None, None))
        present = classes.get(part)
        rows.append(
            {
                "study type": part,
                "studies (ours)": ours["studies"],
                "kappa (ours) [95% CI]": reports.value_with_ci(
                    ours["kappa"], interval["kappa"], cases=ours["studies"], classes=present
                ),
                "AUROC (ours) [95% CI]": reports.value_with_ci(
                    ours["auroc"], interval["auroc"], cases=ours["studies"], classes=present
                ),
                "radiologist 1 (MURA test set)": reports.Published(radiologists[0]),
                "radiologist 2 (MURA test set)": reports.Published(radiologists[1]),
                "radiologist 3 (MURA test set)": reports.Published(radiologists[2]),
                "MURA model (MURA test set)": (
                    reports.Published(MURA_MODEL_KAPPA) if part == "overall" else None
                ),
            }
        )
    return rows


def _sample_studies(studies, count=4):
    """A few studies for CAM overlays: abnormal then normal ones, of different body parts."""
    picks, used = [], set()
    for label, wanted in ((1, (count + 1) // 2), (0, count // 2)):
        rows = studies[studies["label"] == label].sort_values("study")
        fresh = rows[~rows["body_part"].isin(used)].drop_duplicates("body_part")
        chosen = list(fresh["study"].head(wanted))
        chosen += [s for s in rows["study"] if s not in chosen][: wanted - len(chosen)]
        picks.extend(chosen)
        used |= set(rows.loc[rows["study"].isin(chosen), "body_part"])
    return picks


def _cam_overlays(records, studies, probs, cams, count=4, views_per_study=2):
    """`(png, caption)` per image of a few studies: the CAM over the radiograph, in its own shape."""
    study_prob = studies.set_index("study")["probability"]
    items = []
    for study in _sample_studies(studies, count):
        for i in np.flatnonzero(records["study"].to_numpy() == study)[:views_per_study]:
            row = records.iloc[i]
            name = "/".join(study.rstrip("/").split("/")[1:])
            label = "abnormal" if row["label"] == 1 else "normal"
            caption = (
                f"{name} view {row['view']} ({label}); image p={probs[i]:.2f}, "
                f"study p={study_prob[study]:.2f}"
            )
            png = cam_overlay_png(read_image(row["image_path"]), cams[i], f"p = {probs[i]:.2f}")
            items.append((png, caption))
    return items


def build_report(
    values,
    ci,
    studies,
    *,
    images,
    members=1,
    history_path=None,
    overlays=(),
    title="MURA abnormality detection: evaluation",
    data_path=None,
    localisation_scores=None,
):
    """The evaluation report of a MURA model from its study-level numbers (`evaluate_model`'s).

    Args:
        values: `study_metrics` values.
        ci: their 95% intervals.
        studies: one row per study: `label`, `probability`, `body_part`, `patient_id`.
        images: the number of images behind the studies.
        members: models averaged.
        history_path: the run's `history.csv`, if any.
        overlays: `(png, caption)` CAM overlays.
        title: the report's title.
        data_path: the data set's path, shown in the header.
        localisation_scores: `(block, panels)` of `mura.explain.localisation` (phantoms), or
            None.

    Returns:
        The `common.reports.HTMLReport`.
    """
    labels = studies["label"].to_numpy().astype(int)
    probability = studies["probability"].to_numpy(np.float64)
    parts = studies["body_part"].astype(str).to_numpy()
    patients = int(studies["patient_id"].nunique())
    report = reports.HTMLReport(title, data_path=data_path)
    report.add_paragraph(
        f"{reports.count_noun(len(studies), 'study', 'studies')} "
        f"({reports.count_noun(images, 'image')}, {reports.count_noun(patients, 'patient')}); "
        f"{reports.count_noun(members, 'model')} averaged; a study's probability is the mean of "
        f"its images', abnormal at {THRESHOLD}. 95% intervals: bootstrap over patients (1000 "
        "resamples)."
    )
    report.add_heading("Study-level metrics")
    report.add_metrics(
        {k: values[k] for k in METRIC_KEYS},
        ci={k: ci[k] for k in METRIC_KEYS},
        reference=PAPER_REFERENCE,
        reference_note=PAPER_NOTE,
        reference_label="MURA paper (MURA test set)",
    )
    report.add_heading("Cohen's kappa per study type")
    classes = {part: len(set(labels[parts == part].tolist())) for part in set(parts.tolist())}
    report.add_table(
        _body_part_table(values, ci, classes),
        caption=(
            "Ours: this run's data; n/a (1 class): the study type has only normal or only "
            "abnormal studies here, so kappa and AUROC are undefined. Radiologists 1-3: the "
            "slides' table ('Performance evaluation'), MURA test set; MURA model: Rajpurkar et "
            "al. 2018, Table 2, MURA test set (overall only). The MURA columns are not measured "
            "on this run's data."
        ),
    )
    report.add_heading("Study-level abnormality: confusion matrix, ROC per body part, reliability")
    single = sorted(part for part, count in classes.items() if count < 2)
    if single:
        report.add_paragraph(
            "No ROC curve for " + ", ".join(single) + ": n/a (1 class) in this split."
        )
    report.add_classification(
        labels,
        probability,
        ["normal", "abnormal"],
        what="study abnormality",
        y_pred=(probability >= THRESHOLD).astype(int),
        groups=parts,
    )
    if history_path is not None and os.path.exists(history_path):
        report.add_image(
            reports.plot_learning_curves(reports.read_history(history_path)), "Learning curves"
        )
    if overlays:
        report.add_heading("Class activation maps (last dense block through GAP) on sample studies")
        report.add_images_grid(overlays)
    if localisation_scores is not None:
        block, panels = localisation_scores
        report.add_localisation(block, panels, what=MAP_NAME)
    return report


def evaluate_model(
    members,
    records,
    *,
    config,
    out_dir,
    history_path=None,
    verbose=1,
    seed=0,
    batch_size=32,
    title="MURA abnormality detection: evaluation",
    data_path=None,
):
    """Evaluates a model (or an ensemble) on image records and writes the run's evaluation files.

    Writes `OUT/metrics.json` (see the module docstring; plus `studies`, `images`, `patients`,
    `ensemble_members`, `threshold`, `paper`), `OUT/predictions.csv` (one row per study: `study`,
    `body_part`, `patient`, `label`, `num_images`, `probability`, `prediction`) and
    `OUT/report.html` (metrics beside the MURA test-set figures, the per-body-part table beside the
    three radiologists' kappas, ROC curves per body part, learning curves, CAM overlays).

    Args:
        members: list of models (an ensemble; one model = `[model]`).
        records: image records of one split (`read_mura` columns).
        config: the models' `MURAConfig`.
        out_dir: output folder.
        history_path: the run's `history.csv` for learning curves, or None.
        verbose: print a one-line summary.
        seed: bootstrap seed.
        batch_size: images per forward pass.
        title: the report's title.
        data_path: the data set's path, named in the report's header.

    Returns:
        The metrics dict (as `metrics.json`).
    """
    if len(records) == 0:
        raise DataError("no images to evaluate: the split is empty")
    records = records.reset_index(drop=True)
    forward = make_forward(members, with_cam=True)
    probs, cams = run_forward(
        forward,
        records,
        config,
        batch_size=batch_size,
        with_cam=True,
        desc="evaluate" if verbose else None,
    )
    scored = localisation(members, records, config, cams)  # phantoms only (mura.explain)
    studies = study_probabilities(records, probs)
    values, ci = study_metrics(
        studies["label"], studies["probability"], studies["patient_id"], studies["body_part"],
        seed=seed,
    )  # fmt: skip
    metrics = {
        **values,
        "ci": ci,
        "studies": int(len(studies)),
        "images": int(len(records)),
        "patients": int(studies["patient_id"].nunique()),
        "ensemble_members": len(members),
        "threshold": THRESHOLD,
        "paper": {
            "mura_model_kappa": MURA_MODEL_KAPPA,
            "radiologist_kappa": {k: list(v) for k, v in RADIOLOGIST_KAPPA.items()},
            "note": PAPER_NOTE,
        },
    }
    if scored is not None:
        metrics["localisation"] = scored[0]
    reports.write_json(output_path(out_dir, "metrics.json"), metrics)

    table = pd.DataFrame(
        {
            "study": studies["study"],
            "body_part": studies["body_part"],
            "patient": studies["patient_id"],
            "label": studies["label"].astype(int),
            "num_images": studies["num_images"].astype(int),
            "probability": studies["probability"].round(6),
            "prediction": (studies["probability"] >= THRESHOLD).astype(int),
        }
    )
    reports.write_csv(output_path(out_dir, "predictions.csv"), table)

    report = build_report(
        values,
        ci,
        studies,
        images=len(records),
        members=len(members),
        history_path=history_path,
        overlays=_cam_overlays(records, studies, probs, cams),
        title=title,
        data_path=data_path,
        localisation_scores=scored,
    )
    report.write(output_path(out_dir, "report.html"))
    if verbose:
        print(
            f"Study AUROC {values['study_auroc']:.3f}, kappa {values['study_kappa']:.3f} "
            f"({len(studies)} studies, {len(members)} model(s)). "
            f"Report: {os.path.join(out_dir, 'report.html')}",
            flush=True,
        )
    return metrics


def evaluate(model, data_dir, out_dir, *, ensemble=None, split="test", batch_size=32, verbose=1):
    """Evaluates a saved `.h5` / `.keras` model (or its run's top-k ensemble) on a MURA data set.

    Args:
        model: model file; its run's `config.json` beside it gives the preprocessing and the
            validation seed, its `checkpoints/topk/` the ensemble members.
        data_dir: a MURA-v1.1 data set (or the folder holding it).
        out_dir: where `metrics.json`, `report.html`, `predictions.csv` go.
        ensemble: average the run's K best epochs by validation loss (default: the run's
            `ensemble_size`, 1).
        split: `"test"` (MURA's valid, the default) or `"val"` (carved out of train by patient).
        batch_size: images per forward pass.
        verbose: print a summary.

    Returns:
        The metrics dict.
    """
    if split not in ("test", "val", "train"):
        raise ValueError(f"Unknown split '{split}'. Available: ['test', 'train', 'val']")
    model_path = model
    loaded = load_model(model_path)
    config, run_info = model_config(loaded, model_path)
    k = int(ensemble or config.ensemble_size)
    members = ensemble_members(loaded, model_path, k)
    records = load_records(data_dir, config=config, seed=int(run_info.get("seed", 0)))
    records = records[records["split"] == split]
    if records.empty:
        raise DataError(f"the data set has no {split} images", path=data_dir)
    return evaluate_model(
        members,
        records,
        config=config,
        out_dir=out_dir,
        history_path=Path(model_path).with_name("history.csv"),
        verbose=verbose,
        batch_size=batch_size,
        data_path=data_dir,
    )


# --------------------------------------------------------------------------- predict


def _check_input(path):
    """Cheap completeness check of an input image; decodes it only when in doubt."""
    if is_dicom_file(path):
        return
    if _header_problem(Path(path)) is not None:
        read_image(path)  # raises ImageReadError naming the file


def _dicom_study_uid(path):
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "")) or None
    except Exception:  # noqa: BLE001  (an unreadable header is reported when the pixels are read)
        return None


def _study_of(path):
    """A study key: the image's folder, plus a hash of the StudyInstanceUID for DICOM files."""
    folder = Path(path).parent.as_posix().rstrip("/") + "/"
    if is_dicom_file(path):
        uid = _dicom_study_uid(path)
        if uid:
            return f"{folder}#{reports.anonymize_id(uid)}"
    return folder


def _body_part_of(path):
    for part in Path(path).parts:
        match = _XR_PART.match(part)
        if match and match.group(1).lower() in BODY_PARTS:
            return match.group(1).lower()
    return ""


def _slug(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def _overlay_name(path, used, names):
    folder = Path(path).parent
    parts = (folder.parent.name, folder.name, Path(path).stem)
    if names.is_dicom(path):  # never a DICOM input's file or folder names (common.identifiers)
        parts = (names.stem(path),)
    stem = "_".join(_slug(p) for p in parts if p)
    name, n = f"{stem}_cam.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}_cam.png"
    used.add(name)
    return name


def cam_overlay_png(image01, cam, caption):
    """PNG bytes of the CAM (resized to the image) over the radiograph, a caption and a colour bar.

    Args:
        image01: the radiograph `(H, W)` in [0, 1] at its own resolution (the model reads it
            stretched to its input, so the map is stretched back the same way).
        cam: the class activation map on the feature grid `(h, w)`.
        caption: the title (a file name and probability, no patient data).

    Returns:
        PNG bytes.
    """
    return reports.overlay_png(
        image01, cam, title=caption, colorbar_label="CAM (scaled to its range)", height_px=320
    )


def predict(
    model,
    inputs,
    out_dir,
    *,
    explain=False,
    ensemble=None,
    batch_size=32,
    link_uids=False,
    dicom_out=None,
    verbose=1,
):
    """Probability of abnormality per study for image files, DICOM files or study folders.

    Args:
        model: a model file (`.h5` / `.keras`), or an already loaded `keras.Model` (then without
            ensembles; used by the benchmark to time prediction without the model's loading).
        inputs: image files and folders (see the module docstring for how studies are formed).
        out_dir: output folder: `predictions.csv` (one row per study: `study`, `body_part` (from an
            `XR_<PART>` folder, else empty), `num_images`, `images`, `probability`, `prediction`
            (1 = abnormal at 0.5), `finding`), `image_predictions.csv` (one row per image), and with
            `explain` one `<folder>_<image>_cam.png` per image.
        explain: write class activation map overlays.
        ensemble: average the run's K best epochs by validation loss (default: the run's
            `ensemble_size`, 1).
        batch_size: images per forward pass.
        link_uids: name DICOM inputs (and their studies) by their UIDs and add the Study, Series
            and SOP Instance UID columns (else salted hashes; `common.identifiers`).
        dicom_out: folder for a Secondary Capture and an SR per DICOM input (needs `explain`).
        verbose: print a summary.

    Returns:
        The per-study DataFrame (as `predictions.csv`).
    """
    if isinstance(model, keras.Model):
        loaded, model_path = model, None
    else:
        model_path = model
        loaded = load_model(model_path)
    config, _ = model_config(loaded, model_path)
    k = int(ensemble or (config.ensemble_size if model_path is not None else 1))
    if model_path is None and k > 1:
        raise ValueError("an ensemble needs the model file (its run's checkpoints/topk)")
    members = ensemble_members(loaded, model_path, k)
    paths = [os.fspath(p) for p in collect_image_paths(inputs)]
    for path in paths:
        _check_input(path)
    names = InputNames(out_dir, link_uids=link_uids)
    explain = explain or dicom_out is not None
    images = pd.DataFrame({"image_path": paths})
    images["study"] = [names.group(p, _study_of(p)) for p in paths]
    images["body_part"] = [_body_part_of(p) for p in paths]
    forward = _cached_forward(members, explain)
    if verbose:
        print(f"Predicting {len(paths)} images with {len(members)} model(s)...", flush=True)
    probs, cams = run_forward(
        forward,
        images,
        config,
        batch_size=batch_size,
        with_cam=explain,
        desc="predict" if verbose else None,
    )
    images["image"] = [names.name(p) for p in paths]
    images["probability"] = probs
    if explain:
        used, overlays = set(), []
        for path, prob, cam in zip(paths, probs, cams, strict=True):
            name = _overlay_name(path, used, names)
            png = cam_overlay_png(read_image(path), cam, f"{names.name(path)} p={prob:.2f}")
            reports.save_png(output_path(out_dir, name), png)
            overlays.append(name)
        images["overlay"] = overlays
    aggregations = {
        "body_part": ("body_part", "first"),
        "num_images": ("image", "size"),
        "images": ("image", ";".join),
        "probability": ("probability", "mean"),
    }
    if explain:
        aggregations["overlays"] = ("overlay", ";".join)
    studies = images.groupby("study", sort=False).agg(**aggregations).reset_index()
    uid_columns = names.uid_columns(paths)
    for column, values in uid_columns.items():
        images[column] = values
        studies[column] = (
            images.groupby("study", sort=False)[column]
            .agg(lambda v: ";".join(dict.fromkeys(x for x in v if x)))
            .to_numpy()
        )
    studies["prediction"] = (studies["probability"] >= THRESHOLD).astype(int)
    studies["finding"] = np.where(studies["prediction"] == 1, "abnormal", "normal")
    studies["probability"] = studies["probability"].round(6)
    images["probability"] = images["probability"].round(6)
    columns = ["study", "body_part", "num_images", "images", "probability", "prediction", "finding"]
    studies = studies[columns + (["overlays"] if explain else []) + list(uid_columns)]
    image_columns = ["study", "image", "probability"] + (["overlay"] if explain else [])
    image_columns += list(uid_columns)
    reports.write_csv(output_path(out_dir, "image_predictions.csv"), images[image_columns])
    reports.write_csv(output_path(out_dir, "predictions.csv"), studies)
    by_study = studies.set_index("study")
    write_predict_dicoms(
        dicom_out,
        (
            {
                "source": row["image_path"],
                "name": row["image"],
                "overlay": os.path.join(out_dir, row["overlay"]),
                "measurements": [
                    ("image probability of abnormality", row["probability"], "1"),
                    (
                        "study probability of abnormality",
                        by_study.at[row["study"], "probability"],
                        "1",
                    ),
                ],
                "findings": [("study finding", by_study.at[row["study"], "finding"])],
            }
            for row in images.to_dict("records")
            if names.is_dicom(row["image_path"])
        ),
        package="mura",
        verbose=verbose,
    )
    if verbose:
        abnormal = int(studies["prediction"].sum())
        print(
            f"{len(studies)} studies ({abnormal} abnormal): "
            f"{os.path.join(out_dir, 'predictions.csv')}",
            flush=True,
        )
    return studies
