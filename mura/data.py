"""Readers of the MURA-v1.1 archive as it is on disk, its splits, sample weights and `tf.data` input.

The layout (Rajpurkar et al. 2018; the archive `MURA-v1.1.zip`):

    MURA-v1.1/train_image_paths.csv      MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png
    MURA-v1.1/train_labeled_studies.csv  MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/,1
    MURA-v1.1/valid_image_paths.csv, MURA-v1.1/valid_labeled_studies.csv
    MURA-v1.1/{train,valid}/XR_<PART>/patient<NNNNN>/study<K>_{positive,negative}/image<J>.png

The CSVs have no header (a header row a user added is recognised and skipped), one image path per
row, or a study path (ending in `/`; read as well without it) and its label (1 = abnormal). Body part
and patient come from the path. The paths start with the archive's folder name; they are resolved
from the `train`/`valid` component on, inside the data set folder, so a renamed folder still works
(and CSVs a user moved one level up, beside the `MURA-v1.1` folder, too). The data set folder may be
one or two levels down (`MURA-v1.1/MURA-v1.1/` from unzipping into a folder of its own name).
macOS `._image1.png` files, `__MACOSX/` and `.DS_Store` are never read: only the listed images are.
A CSV label that disagrees with the study's `_positive`/`_negative` folder name is used, with a
warning naming the row. Without the CSVs (also MURA v1.0, whose `train.csv`/`valid.csv` list images
with labels), a split folder is scanned and the labels taken from the folder names.

`valid` is MURA's held-out split: it becomes our "test"; "val" is carved out of `train` by patient
(`common.splits.assign_validation`), so no patient is in two splits. The weighted binary cross-entropy
uses, per study type T, w1 = N_T / (A_T + N_T) on abnormal and w0 = A_T / (A_T + N_T) on normal images,
counted on our training split (`common.losses.binary_group_weights`).

Reference:
    Rajpurkar et al., "MURA: Large Dataset for Abnormality Detection in Musculoskeletal
    Radiographs", 2018, §2 (data), §3 (weighted loss). Paper 004 (slides), "MURA".
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common.augment import AugmentConfig
from common.augment import make_image_dataset
from common.errors import DataError
from common.errors import missing_listed_file
from common.image_io import ImageReadError
from common.image_io import list_images
from common.image_io import read_image
from common.losses import binary_group_weights
from common.losses import binary_sample_weights
from common.splits import assign_validation
from mura.model import OUTPUT_NAME
from mura.model import get_config

MURA_SPLITS = ("train", "valid")
IMAGE_CSV = "{split}_image_paths.csv"
STUDY_CSV = "{split}_labeled_studies.csv"
IMAGE_COLUMN = "image_path"
STUDY_COLUMNS = ("study_path", "label")
RECORD_COLUMNS = (
    "image_path",
    "image",
    "study",
    "mura_split",
    "body_part",
    "patient_id",
    "study_number",
    "view",
    "label",
)
VERIFY_MODES = ("none", "header", "decode")
# Split of a record: MURA's valid is our held-out test split.
SPLIT_OF_MURA = {"train": "train", "valid": "test"}
_PATH_PATTERN = re.compile(
    r"^(?P<split>train|valid)/xr_(?P<part>[a-z0-9_]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study(?P<number>\d+)_(?P<folder_label>positive|negative))"
    r"(?:/(?P<image>[^/]+))?$",
    re.IGNORECASE,
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_CACHE_LIMIT_BYTES = 2 * 1024**3


# --------------------------------------------------------------------------- locating the data set


def find_dataset_dir(root):
    """The MURA-v1.1 folder: `root` itself or a folder one or two levels inside it.

    Two levels cover the common copy `MURA-v1.1/MURA-v1.1/` (an archive unzipped into a folder of
    its own name). A folder named `MURA-v1.1` is preferred; hidden folders and `__MACOSX` are
    skipped.

    Args:
        root: the data set folder (`MURA-v1.1`, possibly renamed) or the folder that holds it.

    Returns:
        `pathlib.Path` of the folder holding `train_image_paths.csv` etc. (or the `train`/`valid`
        folders).

    Raises:
        DataError: no MURA data set is found there.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("data folder not found" if not root.exists() else "not a folder", path=root)
    if _looks_like_dataset(root):
        return root
    children = _subfolders(root)
    for child in children:
        if _looks_like_dataset(child):
            return child
    nested = [g for child in children for g in _subfolders(child) if _looks_like_dataset(g)]
    if len(nested) == 1:
        return nested[0]
    if nested:
        names = ", ".join(p.relative_to(root).as_posix() for p in nested[:3])
        raise DataError(
            f"several MURA data sets two folders down ({names}"
            f"{', ...' if len(nested) > 3 else ''}): name one of them",
            path=root,
        )
    raise DataError(
        "no MURA data set here: expected train_image_paths.csv / valid_image_paths.csv "
        "(or train/ and valid/ folders) in this folder or one or two folders down "
        "(e.g. MURA-v1.1/ or MURA-v1.1/MURA-v1.1/)",
        path=root,
    )


def _subfolders(folder):
    """Sub-folders that may hold the data set, `MURA-v1.1` first; not hidden, `__MACOSX`, etc."""
    try:
        found = [
            p
            for p in folder.iterdir()
            if p.is_dir()
            and not p.name.startswith((".", "_"))
            and not re.match(r"(xr_|patient\d+$|study\d+)", p.name, re.IGNORECASE)
        ]
    except OSError:
        return []
    return sorted(found, key=lambda p: (p.name.lower() != "mura-v1.1", p.name))


def _entries(folder):
    """Lower-case name -> path of the entries of `folder` (case-insensitive lookup)."""
    return {p.name.lower(): p for p in folder.iterdir() if not p.name.startswith("._")}


def _looks_like_dataset(folder):
    names = _entries(folder)
    for split in MURA_SPLITS:
        if IMAGE_CSV.format(split=split) in names or STUDY_CSV.format(split=split) in names:
            return True
        if split in names and names[split].is_dir():
            sub = _entries(names[split])
            if any(name.startswith("xr_") for name in sub):
                return True
    return False


# --------------------------------------------------------------------------- CSV reading


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_header(fields):
    """A header row a user added: no field looks like a path and none is a number."""
    return not any(("/" in f or "\\" in f or _is_number(f)) for f in fields)


def read_mura_csv(path, columns):
    """Rows of a headerless MURA CSV, checked for their column count.

    Args:
        path: the CSV file.
        columns: the column names it must have, e.g. `("image_path",)` or
            `("study_path", "label")` (used in error messages).

    Returns:
        list of `(row_number, fields)`, row numbers as a spreadsheet shows them (first line = 1),
        blank lines and a header row skipped.

    Raises:
        DataError: the file is missing or unreadable, or a row has the wrong number of columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            raw = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV ({e})", path=path) from None
    rows = []
    first = _first_nonblank(raw)
    for number, fields in enumerate(raw, start=1):
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if number == first and _is_header(fields):
            continue
        if len(fields) != len(columns):
            raise DataError(
                f"expected {len(columns)} column(s) ({', '.join(columns)}), found {len(fields)}",
                path=path,
                row=number,
            )
        rows.append((number, fields))
    return rows


def _first_nonblank(raw):
    for number, fields in enumerate(raw, start=1):
        if any(f.strip() for f in fields):
            return number
    return 0


def _parse_path(text, *, csv_path, row, column, split, want_image):
    """Splits a MURA path into its parts; the path from the split folder on, with `/` separators."""
    cleaned = text.replace("\\", "/").strip().rstrip("/")
    parts = [p for p in cleaned.split("/") if p and p != "."]
    # The split folder is the one followed by an XR_<PART> folder (a parent may be named "train").
    start = next(
        (
            i
            for i, p in enumerate(parts[:-1])
            if p.lower() in MURA_SPLITS and parts[i + 1].lower().startswith("xr_")
        ),
        None,
    )
    match = None if start is None else _PATH_PATTERN.match("/".join(parts[start:]))
    expected = "<split>/XR_<PART>/patient<N>/study<K>_<positive|negative>" + (
        "/image<J>.png" if want_image else "/"
    )
    if match is None or (match.group("image") is not None) != want_image:
        raise DataError(
            f"'{text}' is not a MURA path (.../{expected})", path=csv_path, row=row, column=column
        )
    if match.group("split").lower() != split:
        raise DataError(
            f"'{text}' is in the {match.group('split').lower()} split, not {split}",
            path=csv_path,
            row=row,
            column=column,
        )
    return match, "/".join(parts[start:])


def _parse_label(text, *, csv_path, row):
    value = text.strip().lower()
    mapping = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
    if value not in mapping:
        raise DataError(
            f"label must be 0 (normal) or 1 (abnormal), found '{text}'",
            path=csv_path,
            row=row,
            column=STUDY_COLUMNS[1],
        )
    return mapping[value]


# --------------------------------------------------------------------------- one split


def _find_file(dataset_dir, name):
    return _entries(dataset_dir).get(name.lower())


def read_split(dataset_dir, split, *, verify="header"):
    """The image records of one MURA split (`"train"` or `"valid"`).

    Args:
        dataset_dir: the MURA-v1.1 folder (see `find_dataset_dir`).
        split: `"train"` or `"valid"`.
        verify: `"header"` (default: every listed image must exist and start and end like a PNG or
            JPEG file, which finds truncated and non-image files), `"decode"` (decode every image;
            slow on the full archive) or `"none"` (existence only).

    Returns:
        DataFrame with `RECORD_COLUMNS`, one row per image, in CSV order; None when the split is
        absent (neither its CSVs nor its folder exist).

    Raises:
        DataError: wrong column count, bad path or label, duplicate rows, an image listed but absent
            or corrupt, a study without images or an image without a labelled study, no images.
    """
    if split not in MURA_SPLITS:
        raise ValueError(f"Unknown split '{split}'. Available: {list(MURA_SPLITS)}")
    if verify not in VERIFY_MODES:
        raise ValueError(f"Unknown verify '{verify}'. Available: {list(VERIFY_MODES)}")
    dataset_dir = Path(dataset_dir)
    image_csv = _find_file(dataset_dir, IMAGE_CSV.format(split=split))
    study_csv = _find_file(dataset_dir, STUDY_CSV.format(split=split))
    split_dir = _find_file(dataset_dir, split)
    if image_csv is None and study_csv is None and (split_dir is None or not split_dir.is_dir()):
        return None
    studies = _read_studies(study_csv, split) if study_csv is not None else None
    if image_csv is not None:
        images = _read_image_rows(image_csv, split, _image_root(dataset_dir, split))
    else:
        images = _scan_split_folder(split_dir, split, dataset_dir)
    if not images:
        where = image_csv if image_csv is not None else split_dir
        raise DataError(f"the {split} split lists no images", path=where)

    records = []
    listed_studies = set()
    for item in images:
        key = item["study"]
        if studies is not None:
            if key not in studies:
                raise DataError(
                    f"study '{key}' of this image is not in {study_csv.name}",
                    path=item["csv"],
                    row=item["row"],
                    column=IMAGE_COLUMN,
                )
            label = studies[key]["label"]
        else:
            label = item["folder_label"]
        listed_studies.add(key)
        _verify_image(item, verify)
        records.append(
            {
                "image_path": os.fspath(item["file"]),
                "image": item["image"],
                "study": key,
                "mura_split": split,
                "body_part": item["body_part"],
                "patient_id": item["patient_id"],
                "study_number": item["study_number"],
                "view": item["view"],
                "label": int(label),
            }
        )
    if studies is not None:
        for key, info in studies.items():
            if key not in listed_studies:
                raise DataError(
                    f"study '{info['text']}' has no images in {IMAGE_CSV.format(split=split)}",
                    path=study_csv,
                    row=info["row"],
                    column=STUDY_COLUMNS[0],
                )
    frame = pd.DataFrame.from_records(records, columns=list(RECORD_COLUMNS))
    frame["label"] = frame["label"].astype(np.int64)
    frame["study_number"] = frame["study_number"].astype(np.int64)
    frame["view"] = frame["view"].astype(np.int64)
    return frame


def _study_key(match):
    """`<split>/XR_<PART>/patient<N>/study<K>_<...>/`: a study's identity, as the archive spells it."""
    return "{}/XR_{}/{}/{}/".format(
        match.group("split").lower(),
        match.group("part").upper(),
        match.group("patient"),
        match.group("study"),
    )


def _read_studies(study_csv, split):
    studies = {}
    disagree = []
    for row, (text, label_text) in read_mura_csv(study_csv, STUDY_COLUMNS):
        match, _ = _parse_path(
            text,
            csv_path=study_csv,
            row=row,
            column=STUDY_COLUMNS[0],
            split=split,
            want_image=False,
        )
        label = _parse_label(label_text, csv_path=study_csv, row=row)
        key = _study_key(match)
        if key in studies:
            raise DataError(
                f"study '{text}' is listed twice (first at row {studies[key]['row']})",
                path=study_csv,
                row=row,
                column=STUDY_COLUMNS[0],
            )
        studies[key] = {"label": label, "row": row, "text": text}
        folder_label = int(match.group("folder_label").lower() == "positive")
        if folder_label != label:
            disagree.append((row, text, label, match.group("folder_label").lower()))
    if disagree:
        row, text, label, folder = disagree[0]
        others = f" (and {len(disagree) - 1} more studies)" if len(disagree) > 1 else ""
        warnings.warn(
            f"{study_csv}: row {row}, column '{STUDY_COLUMNS[1]}': study '{text}' is labelled "
            f"{label} but its folder name says {folder}{others}; the CSV label is used",
            UserWarning,
            stacklevel=2,
        )
    return studies


def _record_parts(match, relative, dataset_dir):
    image_name = match.group("image")
    view = re.search(r"(\d+)", image_name or "")
    return {
        "file": dataset_dir.joinpath(*relative.split("/")),
        "image": f"{dataset_dir.name}/{relative}",
        "study": _study_key(match),
        "body_part": match.group("part").lower(),
        "patient_id": match.group("patient").lower(),
        "study_number": int(match.group("number")),
        "view": int(view.group(1)) if view else 0,
        "folder_label": int(match.group("folder_label").lower() == "positive"),
    }


def _image_root(dataset_dir, split):
    """The folder that holds the split folder the CSV paths point into.

    The data set folder itself, as in the archive; or, when a user moved the CSVs one level up
    beside the archive folder (so that the paths `MURA-v1.1/train/...` resolve from there), the
    sub-folder that holds `<split>/XR_<PART>/`.
    """
    own = _find_file(dataset_dir, split)
    if own is not None and own.is_dir():
        return dataset_dir
    for child in _subfolders(dataset_dir):
        sub = _find_file(child, split)
        if sub is not None and sub.is_dir() and any(n.startswith("xr_") for n in _entries(sub)):
            return child
    return dataset_dir


def _read_image_rows(image_csv, split, dataset_dir):
    items = []
    seen = {}
    for row, (text,) in read_mura_csv(image_csv, (IMAGE_COLUMN,)):
        match, relative = _parse_path(
            text, csv_path=image_csv, row=row, column=IMAGE_COLUMN, split=split, want_image=True
        )
        if Path(match.group("image")).name.startswith("._"):
            raise DataError(
                f"'{text}' is a macOS AppleDouble file, not an image",
                path=image_csv,
                row=row,
                column=IMAGE_COLUMN,
            )
        key = relative.lower()
        if key in seen:
            raise DataError(
                f"image '{text}' is listed twice (first at row {seen[key]})",
                path=image_csv,
                row=row,
                column=IMAGE_COLUMN,
            )
        seen[key] = row
        item = _record_parts(match, relative, dataset_dir)
        item.update(csv=image_csv, row=row, text=text)
        if not item["file"].is_file():
            error = DataError(
                f"image listed but not found: {item['file']}",
                path=image_csv,
                row=row,
                column=IMAGE_COLUMN,
            )
            missing_listed_file(error, item["file"])
        items.append(item)
    return items


def _scan_split_folder(split_dir, split, dataset_dir):
    items = []
    for file in list_images(split_dir):
        relative = file.relative_to(dataset_dir).as_posix()
        parts = relative.split("/")
        parts[0] = split
        match = _PATH_PATTERN.match("/".join(parts))
        if match is None or match.group("image") is None:
            continue  # not a MURA image path (e.g. a stray file at another depth)
        item = _record_parts(match, relative, dataset_dir)
        item.update(csv=file, row=None, text=relative)
        items.append(item)
    return items


def _verify_image(item, verify):
    if verify == "none" or not item["file"].is_file():  # absent: already reported
        return
    where = {
        "path": item["csv"],
        "row": item["row"],
        "column": IMAGE_COLUMN if item["row"] else None,
    }
    file = item["file"]
    if verify == "decode":
        try:
            read_image(file)
        except ImageReadError as e:
            raise DataError(f"corrupt image {file}: {e.reason}", **where) from None
        return
    reason = _header_problem(file)
    if reason is not None:
        raise DataError(f"corrupt image {file}: {reason}", **where)


def _header_problem(file):
    """Why `file` is not a complete PNG/JPEG (None when it looks complete)."""
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as handle:
            head = handle.read(16)
            handle.seek(max(0, size - 12))
            tail = handle.read(12)
    except OSError as e:
        return f"cannot open ({e})"
    if size == 0:
        return "empty file"
    if head.startswith(_PNG_SIGNATURE):
        return None if tail.endswith(_PNG_END) else "truncated PNG (no IEND chunk at the end)"
    if head.startswith(b"\xff\xd8\xff"):
        return None if tail.rstrip(b"\x00").endswith(b"\xff\xd9") else "truncated JPEG"
    if file.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return f"not a {file.suffix[1:].upper()} file (bad signature)"
    return None


# --------------------------------------------------------------------------- records


def read_mura(root, *, verify="header"):
    """All image records of a MURA-v1.1 data set (both splits that are present).

    Args:
        root: the data set folder or the folder that holds it.
        verify: how the listed images are checked (see `read_split`).

    Returns:
        DataFrame with `RECORD_COLUMNS`: `image_path` (absolute file path), `image` (the path as
        in the CSVs), `study` (`<split>/XR_<PART>/patient<N>/study<K>_<...>/`), `mura_split`
        ("train"/"valid"), `body_part` ("elbow", ..., "wrist"), `patient_id` ("patient00001"),
        `study_number` (K), `view` (J), `label` (the study's label, 1 = abnormal).

    Raises:
        DataError: see `read_split`; or no split found.
    """
    dataset_dir = find_dataset_dir(root)
    frames = [read_split(dataset_dir, split, verify=verify) for split in MURA_SPLITS]
    frames = [f for f in frames if f is not None]
    if not frames:
        raise DataError("neither the train nor the valid split is present", path=dataset_dir)
    return pd.concat(frames, ignore_index=True)


def assign_splits(records, *, val_fraction=0.1, seed=0):
    """Adds `split`: MURA's valid -> "test"; MURA's train -> "train"/"val", by patient.

    The validation patients are drawn by `common.splits.assign_validation`, stratified by the
    patient's majority label; a patient with studies of several body parts stays in one split.

    Args:
        records: DataFrame from `read_mura`.
        val_fraction: fraction of the training images put in "val", in [0, 1).
        seed: seed of the draw.

    Returns:
        A copy of `records` with a `split` column.
    """
    out = records.copy()
    out["split"] = out["mura_split"].map(SPLIT_OF_MURA)
    train = out["mura_split"] == "train"
    if train.any() and val_fraction > 0:
        out.loc[train, "split"] = assign_validation(
            out.loc[train],
            group_col="patient_id",
            fraction=float(val_fraction),
            seed=seed,
            stratify_col="label",
        )
    return out


def add_sample_weights(records, *, weights=None):
    """Adds `sample_weight`: MURA's per-study-type weights of the binary cross-entropy.

    Args:
        records: DataFrame with `label`, `body_part` and `split`.
        weights: a `{body_part: (w0, w1)}` table; None counts it on the rows whose split is "train"
            (`common.losses.binary_group_weights`).

    Returns:
        `(records copy with sample_weight, weights table)`. A body part absent from training gets
        weight 1 for both classes.

    Reference:
        Rajpurkar et al. 2018, §3: w_T,1 = |N_T| / (|A_T| + |N_T|), w_T,0 = |A_T| / (|A_T| + |N_T|).
    """
    out = records.copy()
    if weights is None:
        train = out[out["split"] == "train"]
        if train.empty:
            raise DataError("no training images to count the loss weights on")
        weights = binary_group_weights(train["label"].to_numpy(), train["body_part"].to_numpy())
    table = dict(weights)
    for part in out["body_part"].unique():
        table.setdefault(part, (1.0, 1.0))
    out["sample_weight"] = binary_sample_weights(
        out["label"].to_numpy(), out["body_part"].to_numpy(), table
    )
    return out, {k: (float(v[0]), float(v[1])) for k, v in table.items()}


def load_records(root, *, config="demo", seed=0, verify="header"):
    """Reads a MURA data set and prepares it for training: splits and loss weights.

    Args:
        root: the data set folder or the folder that holds it.
        config: a preset name, `MURAConfig` or dict; its `val_fraction` is used.
        seed: seed of the validation draw.
        verify: how the listed images are checked (see `read_split`).

    Returns:
        DataFrame: `read_mura`'s columns plus `split` ("train"/"val"/"test") and `sample_weight`.
    """
    config = get_config(config)
    records = assign_splits(
        read_mura(root, verify=verify), val_fraction=config.val_fraction, seed=seed
    )
    if (records["split"] == "train").any():
        records, _ = add_sample_weights(records)
    return records


def inspect_dataset(root):
    """Counts of a MURA data set per split present, as `python -m mura inspect` prints them.

    Args:
        root: the data set folder or the folder that holds it.

    Returns:
        `{"train": {"images", "studies", "abnormal_studies", "patients", "body_parts": [...]},
        "valid": {...}}` (only the splits present).

    Raises:
        DataError: see `read_split`.
    """
    records = read_mura(root)
    out = {}
    for split in MURA_SPLITS:
        part = records[records["mura_split"] == split]
        if part.empty:
            continue
        studies = part.drop_duplicates("study")
        out[split] = {
            "images": int(len(part)),
            "studies": int(len(studies)),
            "abnormal_studies": int(studies["label"].sum()),
            "patients": int(part["patient_id"].nunique()),
            "body_parts": sorted(part["body_part"].unique().tolist()),
        }
    return out


def study_probabilities(image_frame, image_probs):
    """Study-level probabilities: the mean of the probabilities of a study's images.

    Args:
        image_frame: image records with a `study` column (and any of `label`, `body_part`,
            `patient_id`, `mura_split`, `split`, kept per study).
        image_probs: probability of abnormality of each image, shape (n,) or (n, 1).

    Returns:
        DataFrame, one row per study in order of first appearance: `study`, the kept columns,
        `num_images`, `probability`.

    Reference:
        Rajpurkar et al. 2018, §3: "we compute the overall probability of abnormality for the study
        by taking the arithmetic mean of the abnormality probabilities output by the network for
        each image".
    """
    probs = np.asarray(image_probs, dtype=np.float64).reshape(-1)
    if len(probs) != len(image_frame):
        raise ValueError(f"{len(probs)} probabilities for {len(image_frame)} images")
    if "study" not in image_frame.columns:
        raise ValueError(
            f"image_frame needs a 'study' column. Available: {list(image_frame.columns)}"
        )
    frame = image_frame.reset_index(drop=True).copy()
    frame["probability"] = probs
    keep = [c for c in ("mura_split", "split", "body_part", "patient_id", "label") if c in frame]
    grouped = frame.groupby("study", sort=False)
    out = grouped[keep].first() if keep else pd.DataFrame(index=grouped.size().index)
    out["num_images"] = grouped.size()
    out["probability"] = grouped["probability"].mean()
    return out.reset_index()


# --------------------------------------------------------------------------- tf.data


def make_dataset(
    records, *, config, training, batch_size=None, seed=0, cache="auto", cache_dir=None
):
    """A batched `tf.data.Dataset` of the records' images for the model of `config`.

    Images are read as gray, stretched to the model's input size (as the slides: "images were
    scaled to 224x224" / "320x320"), repeated over three channels when the model takes three, and
    when training shuffled, flipped left-right and rotated up to `config.rotation_deg` degrees.

    Args:
        records: image records (`image_path`; `label` for targets; `sample_weight` for weights).
        config: a preset name, `MURAConfig` or dict (input shape, augmentation, batch size).
        training: shuffle and augment (True) or keep the order (False).
        batch_size: images per batch; None takes `config.batch_size`.
        seed: seed of shuffling and augmentation.
        cache: True (decoded images kept in memory), False, a file path, or "auto": in memory
            when they take less than 2 GB, else in a file (`Dataset.cache(filename)` under
            `cache_dir`, or a temporary folder removed at exit), never off. The cache holds gray
            uint8 images (uint16 for deeper sources) at the input size, so 2 GB is about 40 000
            images at 224 x 224 (a float32 cache of three channels held 12 times fewer).
        cache_dir: folder of the file cache of "auto" (e.g. under the run folder); None for a
            temporary one.

    Returns:
        tf.data.Dataset of `(images (B, H, W, C) float32 in [0, 1], {"abnormal": (B, 1) float32},
        sample_weight (B,))`; without a `sample_weight` column, `(images, targets)`; without a
        `label` column, images only.

    Raises:
        DataError: no records, or a file missing or empty.
    """
    config = get_config(config)
    if len(records) == 0:
        raise DataError("no images to make a dataset of")
    height, width, channels = config.input_shape
    targets = None
    if "label" in records.columns:
        targets = {OUTPUT_NAME: records["label"].to_numpy(np.float32).reshape(-1, 1)}
    weights = None
    if targets is not None and "sample_weight" in records.columns:
        weights = records["sample_weight"].to_numpy(np.float32)
    augment = None
    if training and (config.horizontal_flip or config.rotation_deg):
        augment = AugmentConfig(flip_lr=config.horizontal_flip, rotation_deg=config.rotation_deg)
    return make_image_dataset(
        records["image_path"].tolist(),
        targets,
        image_size_hw=(height, width),
        batch_size=int(batch_size or config.batch_size),
        training=training,
        seed=seed,
        augment=augment,
        cache=cache,
        channels=channels,
        sample_weights=weights,
        cache_dir=cache_dir,
        cache_limit_bytes=_CACHE_LIMIT_BYTES,
    )
