"""Readers of the RA2-DREAM layout, box annotations, crops and the `tf.data` pipelines of DeepRA.

The RA2-DREAM layout (Synapse syn20545111), `root` being the data set folder or the one holding it:

    <root>/train/training.csv     (also accepted at <root>/training.csv, or one folder deeper)
    <root>/train/<Patient_ID>-<LH|RH|LF|RF>.jpg
    <root>/test/template.csv      Patient_ID + the same columns as training.csv
    <root>/test/<Patient_ID>-<LH|RH|LF|RF>.jpg

`training.csv` is read by column name, never by position, names compared without case and
surrounding spaces (UTF-8 with or without BOM, else Windows-1252; CRLF or LF; blank trailing
fields of Excel exports tolerated): `Patient_ID`, `Overall_Tol`, `Overall_erosion`, `Overall_narrowing` and the 86
joint columns of `deepra.columns` (other columns are ignored). Scores must be numbers within their
SvH range (hand erosion 0-5, foot erosion 0-10, narrowing 0-4; the overall scores 0 to the sum of
their joints' maxima). Films are found by name (`.jpg`/`.jpeg`, any case) in the folder of the CSV
or below it; macOS `._*` files, hidden files and `_phantom_truth/` are ignored; some films are RGB
and some carry an EXIF orientation (`common.image_io.read_image` makes them gray and upright).

Box annotations for the detectors: Pascal VOC XML as labelImg writes them (one file per film,
beside it or in a sibling folder such as `annotations/`; `<filename>` with or without extension;
see `read_voc`) or a CSV `image,xmin,ymin,xmax,ymax,label` (with or without that header, as
keras-retinanet reads it; image paths relative to the CSV). Boxes are returned in pixels of the
upright film: labelImg ignores EXIF orientation, so a VOC file whose `<size>` is the stored size
of a film turned by its EXIF tag (5-8) is turned upright; CSV boxes are taken as upright. Labels are the detector classes (`thumb`, `finger1`..`finger4`, `wrist`; `toe`, ...); the
DeepRA code's names (`fin_ip`, `fin_1`..`fin_4`) are accepted too.

Every problem a user's files can cause raises `common.errors.DataError` naming the file, the row
(header = row 1; for XML the line of the `<object>`) and the column.

Records:
- `read_records(root)`: one row per training film: `patient_id, limb, kind, path, csv_row` and the
  patient's 89 score columns.
- `read_template(root)`: one row per test film: `patient_id, limb, kind, path, csv_row`.
- `read_boxes(source)`: one row per box: `image, label, xmin, ymin, xmax, ymax, source, row`.
- `joint_records(films, boxes, model_key)`: one row per crop for one joint model: `patient_id, limb,
  crop, path, xmin, ymin, xmax, ymax` (+ `split` if present), one column per model output holding
  the score, and `<output>__column` naming the RA2 column it comes from.
- `scores_table(crop_scores)`: crops' scores back to one row per patient in the `training.csv`
  (and `template.csv`) layout, with the overall sums.
"""

from __future__ import annotations

import io
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tensorflow as tf

from common.augment import AugmentConfig
from common.augment import make_volume_dataset
from common.errors import DataError
from common.errors import missing_listed_file
from common.fileio import read_text
from common.image_io import exif_orientation
from common.image_io import is_image_file
from common.image_io import read_image
from common.splits import split_by_group
from deepra.columns import EROSION_COLUMNS
from deepra.columns import FOOT_LIMBS
from deepra.columns import HAND_LIMBS
from deepra.columns import JOINT_COLUMNS
from deepra.columns import JOINT_MODELS
from deepra.columns import LIMBS
from deepra.columns import NARROWING_COLUMNS
from deepra.columns import PATIENT_COLUMN
from deepra.columns import SCORE_COLUMNS
from deepra.columns import TRAINING_COLUMNS
from deepra.columns import crop_targets
from deepra.columns import detector_classes
from deepra.columns import score_max
from deepra.detector import IMAGENET_MEAN
from deepra.detector import IMAGENET_STD
from deepra.detector import padded_size
from deepra.detector import resize_scale

TRUTH_DIR = "_phantom_truth"
TRAINING_CSV = "training.csv"
TEMPLATE_CSV = "template.csv"
FILM_PATTERN = re.compile(r"^(?P<pid>.+)-(?P<limb>LH|RH|LF|RF)\.(?:jpe?g)$", re.IGNORECASE)
BOX_COLUMNS = ("image", "xmin", "ymin", "xmax", "ymax", "label")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The DeepRA code's label names -> ours (its "fin_ip" is the thumb on hands, the big toe on feet).
LABEL_ALIASES = {"fin_1": "finger1", "fin_2": "finger2", "fin_3": "finger3", "fin_4": "finger4"}

__all__ = [
    "balance_zero_scores",
    "extract_crops",
    "find_layout",
    "inspect_dataset",
    "joint_records",
    "make_dataset",
    "make_detector_dataset",
    "read_box_csv",
    "read_boxes",
    "read_records",
    "read_template",
    "read_training_csv",
    "read_voc",
    "scores_table",
    "split_patients",
]


# ---------------------------------------------------------------------------------------------
# Finding the layout


def _skip(name):
    return name.startswith(".") or name == TRUTH_DIR or name == "__MACOSX"


def _child(folder, name):
    """The entry of `folder` called `name` (case-insensitive), or None."""
    if not folder.is_dir():
        return None
    for entry in sorted(folder.iterdir()):
        if entry.name.lower() == name.lower() and not entry.name.startswith("._"):
            return entry
    return None


def find_layout(root):
    """Locates `training.csv` and the test folder of an RA2-DREAM data set.

    Args:
        root: the data set folder, or the folder that holds it.

    Returns:
        dict with `root` (the data set folder), `training_csv` (Path) and `test_dir` (Path or None).

    Raises:
        DataError: `root` does not exist or holds no `training.csv`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("data folder not found" if not root.exists() else "not a folder", path=root)
    candidates = [root]
    candidates += [d for d in sorted(root.iterdir()) if d.is_dir() and not _skip(d.name)]
    for base in candidates:
        train = _child(base, "train")
        for folder in ([train] if train is not None and train.is_dir() else []) + [base]:
            csv = _child(folder, TRAINING_CSV)
            if csv is not None and csv.is_file():
                test = _child(base, "test")
                return {
                    "root": base,
                    "training_csv": csv,
                    "test_dir": test if test is not None and test.is_dir() else None,
                }
    raise DataError(
        "no training.csv found (expected <root>/train/training.csv or <root>/training.csv)",
        path=root,
    )


def _index_films(folder, exclude=()):
    """{(patient id, limb): path} of the films in `folder` and below, shallowest first."""
    folder = Path(folder)
    exclude = {Path(e).resolve() for e in exclude if e is not None}
    found = {}
    for current, dirs, files in os.walk(folder):
        current = Path(current)
        dirs[:] = sorted(d for d in dirs if not _skip(d) and (current / d).resolve() not in exclude)
        for name in sorted(files):
            match = FILM_PATTERN.match(name)
            if match is None or not is_image_file(current / name):
                continue
            key = (match["pid"].strip().lower(), match["limb"].upper())
            found.setdefault(key, current / name)
    return found


# ---------------------------------------------------------------------------------------------
# training.csv and template.csv


def _csv_lines(path):
    """The rows of a CSV file: UTF-8 (with or without BOM), else Windows-1252 as Excel saves it."""
    import csv

    text = read_text(path, fallback="cp1252")
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DataError(f"not a readable CSV: {' '.join(str(e).split())}", path=path) from None


def _fit_fields(fields, width, path, row):
    """A row's fields fitted to the header: blank trailing extras dropped, missing ones blank."""
    if len(fields) > width and not any(f.strip() for f in fields[width:]):
        fields = fields[:width]
    if len(fields) > width:
        raise DataError(f"{len(fields)} fields, the header has {width}", path=path, row=row)
    return list(fields) + [""] * (width - len(fields))


def _read_csv_text(path, required):
    """Reads a CSV as text, columns renamed to the canonical spellings of `required`.

    Returns the frame (blank lines dropped) with a `_row` column: the line's row number in the
    file, the header being row 1.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    lines = _csv_lines(path)
    if not lines or not any(field.strip() for field in lines[0]):
        raise DataError("empty file (no header)", path=path, row=1)
    header = [field.strip() for field in lines[0]]
    wanted = {name.lower() for name in required}
    position = {}
    for i, name in enumerate(header):
        key = name.lower()
        if key in position and key in wanted:
            raise DataError("duplicate column", path=path, row=1, column=name)
        position.setdefault(key, i)
    columns = {}
    for name in required:
        if name.lower() not in position:
            raise DataError("missing column", path=path, row=1, column=name)
        columns[name] = position[name.lower()]
    records, rows = [], []
    for number, fields in enumerate(lines[1:], start=2):
        if not any(field.strip() for field in fields):
            continue  # a blank line
        fields = _fit_fields(fields, len(header), path, number)
        records.append([fields[i].strip() for i in columns.values()])
        rows.append(number)
    frame = pd.DataFrame(records, columns=list(columns), dtype=str)
    frame["_row"] = np.asarray(rows, dtype=np.int64)
    return frame


def _patient_ids(frame, path):
    ids = frame[PATIENT_COLUMN].astype(str).str.strip()
    seen = {}
    for pid, row in zip(ids, frame["_row"], strict=True):
        if not pid:
            raise DataError("empty patient id", path=path, row=int(row), column=PATIENT_COLUMN)
        if pid.lower() in seen:
            raise DataError(
                f"patient '{pid}' listed twice (also row {seen[pid.lower()]})",
                path=path,
                row=int(row),
                column=PATIENT_COLUMN,
            )
        seen[pid.lower()] = int(row)
    return ids


def read_training_csv(path):
    """Reads and checks an RA2-DREAM `training.csv`.

    Args:
        path: the CSV file.

    Returns:
        pandas DataFrame with `Patient_ID` (str), the 89 score columns (float) in the canonical
        order and spelling, and `csv_row` (the row number in the file, header = 1).

    Raises:
        DataError: a missing column, an empty or duplicated patient id, a score that is not a number
            or outside its range, or no rows at all.
    """
    path = Path(path)
    frame = _read_csv_text(path, TRAINING_COLUMNS)
    if len(frame) == 0:
        raise DataError("no patients (the file has a header only)", path=path, row=2)
    out = pd.DataFrame({PATIENT_COLUMN: _patient_ids(frame, path)})
    for column in SCORE_COLUMNS:
        text = frame[column].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
        top = score_max(column)
        bad = ~np.isfinite(values) | (values < 0) | (values > top)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            shown = text.iloc[i]
            reason = (
                f"value '{shown}' is not a number"
                if not np.isfinite(values[i])
                else f"value {shown} outside 0..{top}"
            )
            raise DataError(reason, path=path, row=int(frame["_row"].iloc[i]), column=column)
        out[column] = values
    out["csv_row"] = frame["_row"].to_numpy()
    return out


def read_records(root):
    """One record per training film, with the patient's scores.

    Args:
        root: the data set folder or the folder holding it.

    Returns:
        pandas DataFrame: `patient_id`, `limb` ("LH", "RH", "LF", "RF"), `kind` ("hand"/"foot"),
        `path` (str), `csv_row`, then the 89 score columns of `deepra.columns.SCORE_COLUMNS`.

    Raises:
        DataError: as `read_training_csv`, or a film listed in `training.csv` that is not on disk
            (naming the CSV, the patient's row and the missing file).
    """
    layout = find_layout(root)
    csv = layout["training_csv"]
    scores = read_training_csv(csv)
    films = _index_films(csv.parent, exclude=[layout["test_dir"]])
    rows = []
    for record in scores.to_dict("records"):
        pid = record[PATIENT_COLUMN]
        for limb in LIMBS:
            path = films.get((pid.lower(), limb))
            if path is None:
                path = csv.parent / f"{pid}-{limb}.jpg"
                error = DataError(
                    f"film {pid}-{limb}.jpg listed but not found in {csv.parent}",
                    path=csv,
                    row=record["csv_row"],
                    column=PATIENT_COLUMN,
                )
                missing_listed_file(error, path)
            rows.append(
                {
                    "patient_id": pid,
                    "limb": limb,
                    "kind": "hand" if limb in HAND_LIMBS else "foot",
                    "path": str(path),
                    "csv_row": record["csv_row"],
                    **{c: record[c] for c in SCORE_COLUMNS},
                }
            )
    return pd.DataFrame(
        rows, columns=["patient_id", "limb", "kind", "path", "csv_row", *SCORE_COLUMNS]
    )


def read_template(root):
    """The films of the challenge's test folder listed in its `template.csv`.

    Args:
        root: the data set folder or the folder holding it.

    Returns:
        pandas DataFrame: `patient_id, limb, kind, path, csv_row` (one row per film).

    Raises:
        DataError: no test folder or `template.csv`, a missing column, an empty template, or a
            listed film that is not on disk.
    """
    layout = find_layout(root)
    test_dir = layout["test_dir"]
    if test_dir is None:
        raise DataError("no test folder with template.csv", path=layout["root"])
    csv = _child(test_dir, TEMPLATE_CSV)
    if csv is None or not csv.is_file():
        raise DataError("template.csv not found", path=test_dir)
    rows = [
        (pid, limb, "hand" if limb in HAND_LIMBS else "foot", path, row)
        for pid, limb, path, row in template_films(
            csv, _index_films(test_dir), test_dir, required=TRAINING_COLUMNS
        )
    ]
    return pd.DataFrame(rows, columns=["patient_id", "limb", "kind", "path", "csv_row"])


def template_films(csv, films, folder, *, required=(PATIENT_COLUMN,)):
    """The films a `template.csv` lists, four per patient, in the template's order.

    Args:
        csv: the template file.
        films: `{(patient id lower-cased, limb): path}` of the films found in `folder`.
        folder: where the films were looked for (named in the error).
        required: columns the template must have.

    Returns:
        list of `(patient_id, limb, path, csv_row)`.

    Raises:
        DataError: a missing column, an empty template, or a listed film that is not on disk.
    """
    frame = _read_csv_text(csv, required)
    if len(frame) == 0:
        raise DataError("empty template (no patients)", path=csv, row=2)
    ids = _patient_ids(frame, csv)
    rows = []
    for pid, row in zip(ids, frame["_row"], strict=True):
        for limb in LIMBS:
            path = films.get((pid.lower(), limb))
            if path is None:
                raise DataError(
                    f"film {pid}-{limb}.jpg listed but not found in {folder}",
                    path=csv,
                    row=int(row),
                    column=PATIENT_COLUMN,
                )
            rows.append((pid, limb, str(path), int(row)))
    return rows


def split_patients(records, *, test_fraction=0.2, val_fraction_of_train=0.1, seed=0):
    """The paper's 80:20 split by patient (§4.3.1), with a validation share carved from train.

    Args:
        records: film or crop records with `patient_id`.
        test_fraction: held-out share of the rows (0.2 in the paper).
        val_fraction_of_train: share of the training rows used for checkpoint selection and the
            learning-rate schedule (0 for none).
        seed: seed of the split.

    Returns:
        pandas Series of "train" / "val" / "test" with the records' index; every patient in one
        split, stratified by whether the patient has any damage (`Overall_Tol` > 0) when known.
    """
    frame = pd.DataFrame({"patient_id": records["patient_id"].astype(str)})
    stratify = None
    if "Overall_Tol" in records:
        frame["damaged"] = (records["Overall_Tol"].to_numpy() > 0).astype(int)
        stratify = "damaged"
    return split_by_group(
        frame,
        group_col="patient_id",
        stratify_col=stratify,
        fractions={"train": 1.0 - test_fraction, "test": test_fraction},
        val_fraction_of_train=val_fraction_of_train,
        seed=seed,
    )


def inspect_dataset(root):
    """Summary of an RA2-DREAM data set, the JSON of CONTRACT.md.

    Args:
        root: the data set folder or the folder holding it.

    Returns:
        dict: `patients` (rows of training.csv), `films` (training films found, four per patient),
        `erosion_columns` (44), `narrowing_columns` (42), `overall_tol_sum` (the sum of
        `Overall_Tol` over patients), `max_foot_erosion` (largest foot erosion score present).
    """
    records = read_records(root)
    patients = records.drop_duplicates("patient_id")
    foot_erosion = [c for c in EROSION_COLUMNS if c[:2] in FOOT_LIMBS]
    total = float(patients["Overall_Tol"].sum())
    max_foot = float(patients[foot_erosion].to_numpy().max())
    return {
        "patients": int(len(patients)),
        "films": int(len(records)),
        "erosion_columns": len(EROSION_COLUMNS),
        "narrowing_columns": len(NARROWING_COLUMNS),
        "overall_tol_sum": int(total) if total.is_integer() else total,
        "max_foot_erosion": int(max_foot) if max_foot.is_integer() else max_foot,
    }


# ---------------------------------------------------------------------------------------------
# Boxes


def _stored_size_hw(path):
    """(height, width) of an image as stored (no EXIF orientation applied), from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001  (any unreadable image is the user's file at fault)
        raise DataError(f"cannot read the image size: {e}", path=path) from None
    return int(h), int(w)


def _image_size_hw(path):
    """(height, width) of an image as displayed (EXIF orientation applied), from its header."""
    h, w = _stored_size_hw(path)
    if exif_orientation(path) in (5, 6, 7, 8):
        h, w = w, h
    return h, w


def _upright_box(values, orientation, stored_hw):
    """A box in the stored pixel frame of a film -> the same box in its upright (EXIF) frame."""
    h, w = stored_hw
    x0, y0, x1, y1 = values
    corners = [(x0, y0), (x1, y1)]
    turn = {
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x),
        8: lambda x, y: (y, w - x),
    }.get(orientation)
    if turn is None:
        return list(values)
    xs, ys = zip(*(turn(x, y) for x, y in corners), strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


def _same_aspect(a_hw, b_hw, tolerance=0.01):
    return abs(a_hw[1] / a_hw[0] - b_hw[1] / b_hw[0]) <= tolerance * (b_hw[1] / b_hw[0])


def _voc_frame(xml_hw, image, path):
    """How the boxes of a VOC file map onto the upright film.

    labelImg shows a film's stored pixels (it ignores the EXIF orientation), so its `<size>` and
    boxes are in the stored frame; other tools write the upright frame. The `<size>` tells them
    apart when the orientation turns the film by 90 degrees (EXIF 5-8); with EXIF 2-4 the two
    frames have the same size and the boxes are taken as upright. A `<size>` with the film's
    aspect but another scale (annotated on a resized copy) scales the boxes.

    Returns:
        (size_hw the boxes are checked against, scale (sy, sx) into that frame, orientation to
        turn by afterwards (1 for none), upright (height, width) of the film).
    """
    stored = _stored_size_hw(image)
    orientation = exif_orientation(image)
    turned = orientation in (5, 6, 7, 8)
    upright = (stored[1], stored[0]) if turned else stored
    if xml_hw is None or xml_hw == upright:
        return upright, (1.0, 1.0), 1, upright
    if turned and xml_hw == stored:
        return stored, (1.0, 1.0), orientation, upright
    for frame, turn in ((upright, 1), (stored, orientation if turned else 1)):
        if _same_aspect(xml_hw, frame):
            scale = (frame[0] / xml_hw[0], frame[1] / xml_hw[1])
            return xml_hw, scale, turn, upright
    raise DataError(
        f"<size> {xml_hw[1]}x{xml_hw[0]} does not match the image {Path(image).name} "
        f"({stored[1]}x{stored[0]} stored"
        + (f", {upright[1]}x{upright[0]} upright" if turned else "")
        + ")",
        path=path,
        column="size",
    )


def _resolve_image(folder, name):
    """The image file `name` in `folder`: exact, else by name or by stem, in any case."""
    if not name or folder is None:
        return None
    folder = Path(folder)
    exact = folder / name
    if exact.is_file() and is_image_file(exact):
        return exact
    if not folder.is_dir():
        return None
    key = name.lower()
    stem_key = Path(name).stem.lower() if Path(name).suffix.lower() in _IMAGE_SUFFIXES else key
    by_stem = None
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or not is_image_file(entry):
            continue
        if entry.name.lower() == key:
            return entry
        if by_stem is None and entry.stem.lower() == stem_key:
            by_stem = entry
    return by_stem


def _label(name, limb, path, row, column):
    key = str(name).strip().lower()
    key = LABEL_ALIASES.get(key, key)
    if key == "fin_ip" and limb is not None:
        key = "thumb" if limb in HAND_LIMBS else "toe"
    if limb is not None:
        allowed = detector_classes(limb)
    else:
        allowed = sorted(set(detector_classes("LH")) | set(detector_classes("LF")))
    if key not in allowed:
        raise DataError(
            f"unknown label '{name}' (expected one of {list(allowed)})",
            path=path,
            row=row,
            column=column,
        )
    return key


def _limb_of_image(path):
    match = FILM_PATTERN.match(Path(path).name)
    return match["limb"].upper() if match else None


def _check_box(values, size_hw, path, row):
    h, w = size_hw
    x0, y0, x1, y1 = values
    limits = {"xmin": (x0, w), "ymin": (y0, h), "xmax": (x1, w), "ymax": (y1, h)}
    for column, (value, top) in limits.items():
        if not 0 <= value <= top:
            raise DataError(
                f"box outside the image: {column}={value:g} not in 0..{top} (image {w}x{h})",
                path=path,
                row=row,
                column=column,
            )
    if x1 <= x0:
        raise DataError(f"empty box: xmax={x1:g} <= xmin={x0:g}", path=path, row=row, column="xmax")
    if y1 <= y0:
        raise DataError(f"empty box: ymax={y1:g} <= ymin={y0:g}", path=path, row=row, column="ymax")


def _number(text, path, row, column):
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"value '{text}' is not a number", path=path, row=row, column=column)
    return value


def _voc_image(tree, path):
    """The film a VOC file annotates.

    Looked for by `<filename>` (with or without extension, any case), the file name of `<path>`
    and the XML's own name, first beside the XML, then in the sibling folder named by `<folder>`
    (labelImg's "Change Save Dir" layout: `annotations/` next to `train/`), then in the folder of
    `<path>` if that exists on this machine.
    """
    from pathlib import PureWindowsPath

    filename = (tree.findtext("filename") or "").strip()
    recorded = (tree.findtext("path") or "").strip()
    folder = (tree.findtext("folder") or "").strip()
    names = [filename, PureWindowsPath(recorded).name if recorded else "", path.stem]
    folders = [path.parent]
    if folder and PureWindowsPath(folder).name:
        folders.append(path.parent.parent / PureWindowsPath(folder).name)
    if recorded:
        folders.append(Path(recorded).parent)
    for base in folders:
        for name in dict.fromkeys(n for n in names if n):
            image = _resolve_image(base, name)
            if image is not None:
                return image
    raise DataError(
        f"image '{filename or recorded}' not found beside the annotation"
        + (f" nor in ../{folder}" if folder else ""),
        path=path,
        column="filename",
    )


def read_voc(path):
    """Reads one Pascal VOC XML file as labelImg writes it and checks its boxes.

    The image is found as `_voc_image` says. Boxes are returned in the upright film's pixels: a
    labelImg file of a film with an EXIF rotation (`<size>` = the stored size) is turned upright,
    one written for a resized copy of the film (`<size>` of the same aspect) is scaled. Boxes must
    lie within `<size>` (or the image itself when the size is missing or 0). `<difficult>`,
    `<truncated>`, `<pose>` and `<depth>` are not used; labels are compared without case.

    Args:
        path: the `.xml` file.

    Returns:
        pandas DataFrame: `image` (str path), `label`, `xmin, ymin, xmax, ymax`, `source`, `row`
        (the line of the `<object>` element).

    Raises:
        DataError: unreadable XML, an image that is not there, a `<size>` that does not fit the
            image, an unknown label, a missing or non-numeric coordinate, or a box outside the
            image.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        tree = ET.fromstring(raw)  # bytes: the XML declaration's encoding is honoured
    except (OSError, ET.ParseError) as e:
        raise DataError(f"not a readable XML file: {e}", path=path) from None
    lines = raw.decode("utf-8", errors="replace").splitlines()
    object_lines = [i + 1 for i, line in enumerate(lines) if "<object" in line]
    image = _voc_image(tree, path)
    size = tree.find("size")
    width = _number(size.findtext("width", "0"), path, None, "width") if size is not None else 0
    height = _number(size.findtext("height", "0"), path, None, "height") if size is not None else 0
    xml_hw = (int(round(height)), int(round(width))) if width > 0 and height > 0 else None
    size_hw, (sy, sx), turn, _ = _voc_frame(xml_hw, image, path)
    stored_hw = _stored_size_hw(image) if turn != 1 else None
    limb = _limb_of_image(image)
    rows = []
    for k, obj in enumerate(tree.findall("object")):
        line = object_lines[k] if k < len(object_lines) else None
        label = _label(obj.findtext("name", ""), limb, path, line, "name")
        box = obj.find("bndbox")
        if box is None:
            raise DataError("object without <bndbox>", path=path, row=line, column="bndbox")
        values = []
        for column in ("xmin", "ymin", "xmax", "ymax"):
            raw_value = box.findtext(column)
            if raw_value is None:
                raise DataError("missing coordinate", path=path, row=line, column=column)
            values.append(_number(raw_value, path, line, column))
        _check_box(values, size_hw, path, line)
        values = [values[0] * sx, values[1] * sy, values[2] * sx, values[3] * sy]
        if turn != 1:
            values = _upright_box(values, turn, stored_hw)
        rows.append((str(image), label, *values, str(path), line))
    return pd.DataFrame(
        rows, columns=["image", "label", "xmin", "ymin", "xmax", "ymax", "source", "row"]
    )


def read_box_csv(path):
    """Reads a box CSV `image,xmin,ymin,xmax,ymax,label` (header optional, as keras-retinanet).

    A row with an image and empty coordinates and label marks an image without boxes (skipped).
    Image paths are relative to the CSV's folder unless absolute; the file name is matched in any
    case (`UAB001-LH.jpg` finds `UAB001-LH.JPG`) and with any image extension.

    Args:
        path: the CSV file.

    Returns:
        pandas DataFrame as `read_voc` (`row` = the CSV row, header = 1 when there is one).

    Raises:
        DataError: a wrong number of fields, an image that is not there, an unknown label, a
            non-numeric coordinate, or a box outside the image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    lines = _csv_lines(path)
    if not lines:
        raise DataError("empty file", path=path, row=1)
    header = [c.strip().lower() for c in lines[0]]
    order = list(BOX_COLUMNS)
    start = 0
    if set(header) == set(BOX_COLUMNS):
        order, start = header, 1
    rows, sizes = [], {}
    for i in range(start, len(lines)):
        fields = lines[i]
        row = i + 1
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(BOX_COLUMNS):
            raise DataError(
                f"{len(fields)} fields, expected {len(BOX_COLUMNS)} ({','.join(BOX_COLUMNS)})",
                path=path,
                row=row,
            )
        record = dict(zip(order, (f.strip() for f in fields), strict=True))
        given = Path(record["image"])
        given = given if given.is_absolute() else path.parent / given
        image = _resolve_image(given.parent, given.name)
        if image is None:
            raise DataError(
                f"image '{record['image']}' not found", path=path, row=row, column="image"
            )
        if not any(record[c] for c in ("xmin", "ymin", "xmax", "ymax", "label")):
            continue  # an image without boxes
        values = [_number(record[c], path, row, c) for c in ("xmin", "ymin", "xmax", "ymax")]
        label = _label(record["label"], _limb_of_image(image), path, row, "label")
        if image not in sizes:
            sizes[image] = _image_size_hw(image)
        _check_box(values, sizes[image], path, row)
        rows.append((str(image), label, *values, str(path), row))
    return pd.DataFrame(
        rows, columns=["image", "label", "xmin", "ymin", "xmax", "ymax", "source", "row"]
    )


def read_boxes(source):
    """Box annotations from a CSV file, one VOC XML file, or every VOC XML file in a data set.

    Args:
        source: a `.csv`, an `.xml`, or a folder (searched recursively for `.xml` files, skipping
            `_phantom_truth/`; an RA2-DREAM root is searched from its training folder).

    Returns:
        pandas DataFrame as `read_voc` (possibly empty).
    """
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return read_box_csv(source)
        return read_voc(source)
    if not source.is_dir():
        raise DataError("annotation file or folder not found", path=source)
    try:
        folder = find_layout(source)["training_csv"].parent
    except DataError:
        folder = source
    frames = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _skip(d))
        for name in sorted(files):
            if name.lower().endswith(".xml") and not name.startswith("."):
                frames.append(read_voc(Path(current) / name))
    if not frames:
        return pd.DataFrame(
            columns=["image", "label", "xmin", "ymin", "xmax", "ymax", "source", "row"]
        )
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Crops for the joint models


def joint_records(films, boxes, model_key):
    """The crops one joint model trains on: film records joined with their boxes.

    Args:
        films: film records (`read_records`; a `split` column is carried along).
        boxes: box records (`read_boxes`, or detections with `image, label, xmin..ymax`).
        model_key: one of `deepra.columns.JOINT_MODELS` ("hand-erosion", ..., "wrist-narrowing").

    Returns:
        pandas DataFrame, one row per crop: `patient_id, limb, crop, path, xmin, ymin, xmax, ymax`,
        [`split`], one column per output of the model (the score) and `<output>__column` (the RA2
        column). Films without a box of a class are left out for that class.
    """
    if model_key not in JOINT_MODELS:
        raise ValueError(f"Unknown joint model '{model_key}'. Available: {sorted(JOINT_MODELS)}")
    by_image = {}
    for record in boxes.to_dict("records"):
        key = (os.path.normcase(os.path.abspath(record["image"])), record["label"])
        by_image.setdefault(key, record)
    rows = []
    for film in films.to_dict("records"):
        image = os.path.normcase(os.path.abspath(film["path"]))
        for crop in detector_classes(film["limb"]):
            targets = crop_targets(film["limb"], crop).get(model_key)
            box = by_image.get((image, crop))
            if targets is None or box is None:
                continue
            row = {
                "patient_id": film["patient_id"],
                "limb": film["limb"],
                "crop": crop,
                "path": film["path"],
                **{c: float(box[c]) for c in ("xmin", "ymin", "xmax", "ymax")},
            }
            if "split" in film:
                row["split"] = film["split"]
            for output, column in targets.items():
                row[output] = float(film[column]) if column in film else math.nan
                row[f"{output}__column"] = column
            rows.append(row)
    return pd.DataFrame(rows)


def scores_table(crop_scores, patients=None, *, clip=True):
    """Joint-level predictions of crops -> one row per patient in the `training.csv` layout.

    Args:
        crop_scores: one or more frames (e.g. `joint_records` output with the predictions written
            into the output columns) with `patient_id`, the outputs and `<output>__column`.
        patients: patient ids in the order of the result (default: as they first appear).
        clip: clip every score into its SvH range (0..5, 0..10, 0..4).

    Returns:
        pandas DataFrame with `Patient_ID`, `Overall_Tol`, `Overall_erosion`, `Overall_narrowing`
        (the sums of the joints) and the 86 joint columns; a joint no crop predicted is NaN (and
        left out of the sums).
    """
    frames = [crop_scores] if isinstance(crop_scores, pd.DataFrame) else list(crop_scores)
    values = {}
    order = []
    for frame in frames:
        outputs = [c[: -len("__column")] for c in frame.columns if c.endswith("__column")]
        for record in frame.to_dict("records"):
            pid = str(record["patient_id"])
            if pid not in values:
                values[pid] = {}
                order.append(pid)
            for output in outputs:
                column = record[f"{output}__column"]
                if isinstance(column, str) and column:
                    value = float(record[output])
                    if clip:
                        value = min(max(value, 0.0), float(score_max(column)))
                    values[pid][column] = value
    ids = list(patients) if patients is not None else order
    table = pd.DataFrame(
        [[values.get(pid, {}).get(c, math.nan) for c in JOINT_COLUMNS] for pid in ids],
        columns=list(JOINT_COLUMNS),
    )
    erosion = table[list(EROSION_COLUMNS)].sum(axis=1, min_count=1)
    narrowing = table[list(NARROWING_COLUMNS)].sum(axis=1, min_count=1)
    table.insert(0, "Overall_narrowing", narrowing)
    table.insert(0, "Overall_erosion", erosion)
    table.insert(0, "Overall_Tol", erosion + narrowing)
    table.insert(0, PATIENT_COLUMN, ids)
    return table


def balance_zero_scores(records, output_names, *, seed=0):
    """The paper's balancing (§4.3.1): as many zero-score crops as crops with any non-zero score.

    Args:
        records: crop records with one column per output.
        output_names: the score columns to look at.
        seed: seed of the sampling of the zero-score crops.

    Returns:
        pandas DataFrame: every crop with a non-zero score plus an equal number (or all, if fewer)
        of randomly chosen all-zero crops, in the original order. With no non-zero crop at all the
        records are returned unchanged.
    """
    values = records[list(output_names)].to_numpy(np.float64)
    nonzero = np.any(values != 0, axis=1)
    n_nonzero = int(nonzero.sum())
    if n_nonzero == 0:
        return records
    zero_index = np.flatnonzero(~nonzero)
    rng = np.random.default_rng(seed)
    keep_zero = rng.choice(zero_index, size=min(n_nonzero, len(zero_index)), replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(nonzero), keep_zero]))
    return records.iloc[keep]


def extract_crops(records, image_size_hw, dtype=np.float16):
    """Cuts every record's box out of its film and resizes it (stretching, as the paper's cv2.resize).

    Args:
        records: crop records (`path, xmin, ymin, xmax, ymax`).
        image_size_hw: (height, width) of the crops.
        dtype: storage type of the array (float16 halves the memory of float32).

    Returns:
        array `(N, H, W, 1)` of `dtype`, values in [0, 1].

    Raises:
        DataError: an unreadable film (`ImageReadError`) or a box outside its film.
    """
    h, w = (int(v) for v in image_size_hw)
    out = np.zeros((len(records), h, w, 1), dtype)
    films = {}
    for i, record in enumerate(records.to_dict("records")):
        path = record["path"]
        if path not in films:
            films.clear()  # records come grouped by film; keep one decoded film at a time
            films[path] = read_image(path)
        film = films[path]
        fh, fw = film.shape
        x0, y0 = int(math.floor(record["xmin"])), int(math.floor(record["ymin"]))
        x1, y1 = int(math.ceil(record["xmax"])), int(math.ceil(record["ymax"]))
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(fw, x1 + 1), min(fh, y1 + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise DataError(
                f"box ({record['xmin']:g}, {record['ymin']:g}, {record['xmax']:g}, "
                f"{record['ymax']:g}) is outside the {fw}x{fh} film",
                path=path,
            )
        crop = film[y0:y1, x0:x1]
        interpolation = cv2.INTER_AREA if (y1 - y0) > h or (x1 - x0) > w else cv2.INTER_LINEAR
        out[i, :, :, 0] = cv2.resize(crop, (w, h), interpolation=interpolation)
    return out


def _resolve_config(config):
    if isinstance(config, str):
        from deepra.joints import joint_config

        return joint_config(config)
    return config


def make_dataset(records, *, config, training, batch_size, seed=0):
    """A `tf.data.Dataset` of joint crops and their scores for one joint model.

    Pipeline: (training, `balance_zero_scores` in the config) the paper's zero/non-zero balancing
    -> crops cut from the films and resized to `config["image_size_hw"]` (kept in memory) ->
    `common.augment.make_volume_dataset` (shuffle and, when training, horizontal flips as §4.3.1)
    -> batches.

    Args:
        records: crop records from `joint_records` (one column per output of the model).
        config: a joint-model configuration dict (or preset name), e.g. `joint_model_config(...)`.
        training: shuffle, balance and augment (True) or keep the order (False).
        batch_size: examples per batch.
        seed: seed of balancing, shuffling and augmentation.

    Returns:
        tf.data.Dataset of `(crops (B, H, W, channels) float32 in [0, 1], {output: (B, 1)})`.

    Raises:
        DataError: no records, a missing or non-finite score, an unreadable film.
    """
    config = _resolve_config(config)
    outputs = list(config["output_names"])
    if len(records) == 0:
        raise DataError("no crops to make a dataset from (empty split?)")
    for name in outputs:
        if name not in records:
            raise DataError(f"records lack the score column of output '{name}'", column=name)
        values = records[name].to_numpy(np.float64)
        if not np.all(np.isfinite(values)):
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            rec = records.iloc[i]
            raise DataError(
                f"no score for output '{name}' of crop {rec.get('crop', '?')}",
                path=rec.get("path"),
                column=rec.get(f"{name}__column", name),
            )
    if training and config.get("balance_zero_scores", False):
        records = balance_zero_scores(records, outputs, seed=seed)
    crops = extract_crops(records, config["image_size_hw"])
    if config.get("channels", 1) == 3:
        crops = np.repeat(crops, 3, axis=-1)
    targets = {name: records[name].to_numpy(np.float32)[:, None] for name in outputs}
    augment = AugmentConfig(flip_lr=bool(config.get("flip_lr", False)), seed=seed)
    return make_volume_dataset(
        crops,
        targets,
        batch_size=batch_size,
        training=training,
        seed=seed,
        augment=augment if training else None,
    )


# ---------------------------------------------------------------------------------------------
# Films and boxes for the detectors


def make_detector_dataset(
    boxes, *, config, batch_size, training=False, seed=0, mirror_right_limbs=False
):
    """A `tf.data.Dataset` of prepared films and padded boxes for a detector (keras-hub format).

    Films are read once, resized as keras-retinanet does (`image_min_side`/`image_max_side`), kept
    as 8-bit gray, zero-padded (bottom, right) to the largest film rounded up to a multiple of
    2^max_level, then normalised (ImageNet mean/std, three
    channels) per batch. Boxes are scaled to the resized film; labels are class indices.

    Args:
        boxes: box records (`read_boxes`), restricted to one detector's films (hands or feet).
        config: a detector configuration (`deepra.detector.detector_config`).
        batch_size: films per batch (8 in the paper).
        training: shuffle (True) or keep the order.
        seed: shuffle seed.
        mirror_right_limbs: mirror the films of right limbs (`-RH`, `-RF` in the file name) and
            their boxes (x -> W - 1 - x), so that every film shows the left-limb orientation
            (see `deepra.pipeline`).

    Returns:
        tf.data.Dataset of `(images (B, H, W, 3) float32, {"boxes": (B, N, 4), "labels": (B, N)})`,
        padding -1 in both.
    """
    if len(boxes) == 0:
        raise DataError("no boxes to make a detector dataset from")
    names = list(config["class_names"])
    grouped = list(boxes.groupby("image", sort=True))
    films, all_boxes, all_labels = [], [], []
    for image_path, group in grouped:
        unknown = sorted(set(group["label"]) - set(names))
        if unknown:
            rec = group[group["label"] == unknown[0]].iloc[0]
            raise DataError(
                f"label '{unknown[0]}' is not a class of this detector ({names})",
                path=rec.get("source", image_path),
                row=rec.get("row"),
                column="label",
            )
        film = read_image(image_path)
        group_boxes = group[["xmin", "ymin", "xmax", "ymax"]].to_numpy(np.float32)
        if mirror_right_limbs and _limb_of_image(image_path) in ("RH", "RF"):
            film = film[:, ::-1]
            width = film.shape[1]
            group_boxes = group_boxes.copy()
            group_boxes[:, [0, 2]] = width - 1.0 - group_boxes[:, [2, 0]]
        scale = resize_scale(*film.shape, config["image_min_side"], config["image_max_side"])
        new_h, new_w = max(1, round(film.shape[0] * scale)), max(1, round(film.shape[1] * scale))
        resized = cv2.resize(film, (new_w, new_h), interpolation=cv2.INTER_AREA)
        films.append(np.round(resized * 255.0).astype(np.uint8))
        all_boxes.append(group_boxes * scale)
        all_labels.append(np.array([names.index(lab) for lab in group["label"]], np.float32))
    height, width = padded_size(
        max(f.shape[0] for f in films), max(f.shape[1] for f in films), config
    )
    images = np.zeros((len(films), height, width), np.uint8)
    for i, film in enumerate(films):
        images[i, : film.shape[0], : film.shape[1]] = film
    width_boxes = max(len(b) for b in all_boxes)
    padded_boxes = -np.ones((len(films), width_boxes, 4), np.float32)
    padded_labels = -np.ones((len(films), width_boxes), np.float32)
    for i, (b, lab) in enumerate(zip(all_boxes, all_labels, strict=True)):
        padded_boxes[i, : len(b)] = b
        padded_labels[i, : len(lab)] = lab
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)

    def normalise(image, target):
        image = tf.cast(image, tf.float32)[..., None] / 255.0
        image = (tf.repeat(image, 3, axis=-1) - mean) / std
        return image, target

    ds = tf.data.Dataset.from_tensor_slices(
        (images, {"boxes": padded_boxes, "labels": padded_labels})
    )
    if training:
        ds = ds.shuffle(len(films), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(normalise, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
