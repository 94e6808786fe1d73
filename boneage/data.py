"""Readers of the RSNA 2017 pediatric bone-age set in both public layouts, splits, and tf.data.

Kaggle layout ("rsna-bone-age"):

    boneage-training-dataset.csv        id,boneage,male          male as True/False
    boneage-training-dataset/boneage-training-dataset/<id>.png
    boneage-test-dataset.csv            Case ID,Sex               Sex as M/F, no ages
    boneage-test-dataset/boneage-test-dataset/<id>.png

Official layout (Stanford AIMI / RSNA):

    Bone Age Training Set/train.csv                     id,boneage,male
    Bone Age Training Set/boneage-training-dataset/<id>.png
    Bone Age Validation Set/Validation Dataset.csv      Image ID,male,Bone Age (months)
    Bone Age Validation Set/boneage-validation-dataset-1/[boneage-validation-dataset-1/]<id>.png
    Bone Age Validation Set/boneage-validation-dataset-2/[boneage-validation-dataset-2/]<id>.png
    Bone Age Test Set/Bone age ground truth.xlsx        Case ID,Sex,Ground truth bone age (months)
    Bone Age Test Set/Test Set Images/<id>.png          Sex as M/F; fractional ages

The test set's labels are published only as an Excel workbook (read with openpyxl through
`pandas.read_excel`); a CSV saved from it under the same name (`Bone age ground truth.csv`) reads too.
Its name is distinctive, so it is also found where users often copy it: beside the Kaggle files,
whose `boneage-test-dataset/` holds the same 200 test images. An image listed by two
label files of the same split (both layouts in one folder) counts once, labelled rows first.

File and folder names and headers are matched without regard to case or surrounding spaces; the
sex is read from `male` (True/False, 1/0, yes/no, male/female, any case) or `Sex` (M/F, any case);
ages may be fractional; images are found by id anywhere under the split's image folder (after
unzipping they are often nested once more), skipping macOS `._*` files, `__MACOSX` and
`_phantom_truth/`. The root given may be the data set's folder or a folder up to two levels above.

Preprocessing and augmentation (§IV): gray 300 x 300 (the model's input size), intensities / 255
(read as [0, 1]), random zoom, random horizontal and vertical flips.

Reference:
    Paper 003 §IV; S. S. Halabi et al., "The RSNA Pediatric Bone Age Machine Learning Challenge",
    Radiology 290(2), 2019.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from boneage.model import get_config
from common.augment import AugmentConfig
from common.augment import make_image_dataset
from common.errors import DataError
from common.errors import missing_listed_file
from common.image_io import ImageReadError
from common.image_io import is_image_file
from common.image_io import read_image
from common.splits import assign_validation
from common.splits import split_by_group

SPLITS = ("train", "validation", "test")
RECORD_COLUMNS = (
    "image_path",
    "image_id",
    "patient_id",
    "age_months",
    "male",
    "split",
    "source",
    "csv_path",
    "csv_row",
)
MAX_AGE_MONTHS = 300.0  # 25 years; the atlas ends at 19 (228 months)

# Real file names (compared case-insensitively) -> (split, layout, image folder names).
_CSV_FILES = {
    "boneage-training-dataset.csv": ("train", "kaggle", ("boneage-training-dataset",)),
    "boneage-test-dataset.csv": ("test", "kaggle", ("boneage-test-dataset",)),
    "train.csv": ("train", "official", ("boneage-training-dataset",)),
    "validation dataset.csv": (
        "validation",
        "official",
        (
            "boneage-validation-dataset-1",
            "boneage-validation-dataset-2",
            "boneage-validation-dataset",
        ),
    ),
    "bone age ground truth.xlsx": ("test", "official", ("test set images", "boneage-test-dataset")),
    "bone age ground truth.csv": ("test", "official", ("test set images", "boneage-test-dataset")),
}
# Generic names that are RSNA files only inside an RSNA folder (see `_is_official_folder`).
_GUARDED_FILES = {"train.csv", "validation dataset.csv"}
_ID_COLUMNS = ("id", "image id", "case id", "image_id", "case_id")
_AGE_COLUMNS = (
    "boneage",
    "bone age (months)",
    "bone age",
    "boneage (months)",
    "bone_age",
    "ground truth bone age (months)",
)
_MALE_COLUMNS = ("male", "is male")
_SEX_COLUMNS = ("sex", "gender")
_TRUE = {"true", "t", "1", "1.0", "yes", "y", "male", "m"}
_FALSE = {"false", "f", "0", "0.0", "no", "n", "female"}
_SEX_MALE = {"m", "male", "1", "boy"}
_SEX_FEMALE = {"f", "female", "0", "girl"}
_SKIP_DIRS = {"_phantom_truth", "__macosx"}
_SEARCH_DEPTH = 3

# §IV: random zoom and random (horizontal and vertical) flips.
PAPER_AUGMENT = AugmentConfig(flip_lr=True, flip_ud=True, zoom_range=(0.9, 1.1))


def _norm(text):
    return " ".join(str(text).replace("\ufeff", "").strip().lower().split())


def _visible_dirs(names):
    return [d for d in names if not d.startswith(".") and _norm(d) not in _SKIP_DIRS]


def _is_official_folder(folder, kind):
    """`train.csv` is an RSNA file only in an RSNA folder (`Bone Age Training Set/`,
    `boneage-training-dataset/`, ...) or beside its image folder."""
    folder = Path(folder)
    if _norm(folder.name).startswith(("bone age", "boneage")):
        return True
    wanted = {_norm(n) for n in kind[2]}
    return any(p.is_dir() and _norm(p.name) in wanted for p in folder.iterdir())


def find_label_files(root):
    """Finds the RSNA label CSVs under `root` (itself or up to three folder levels below).

    Args:
        root: the data set folder or a folder that holds it.

    Returns:
        A list of `(csv_path, split, layout, image_folder_names)`, sorted by split then path.

    Raises:
        DataError: `root` is not a folder, or no known label CSV is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("data folder not found" if not root.exists() else "not a folder", path=root)
    found = []
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).parts) - base_depth
        for name in dirs:
            if not name.startswith(".") and _norm(name) in _CSV_FILES:
                raise DataError("a folder where the label file should be", path=Path(folder) / name)
        dirs[:] = sorted(_visible_dirs(dirs)) if depth < _SEARCH_DEPTH else []
        for name in files:
            if name.startswith("."):
                continue
            kind = _CSV_FILES.get(_norm(name))
            if kind is None:
                continue
            if _norm(name) in _GUARDED_FILES and not _is_official_folder(folder, kind):
                continue
            found.append((Path(folder) / name, *kind))
    if not found:
        raise DataError(
            "no RSNA bone-age label file found (looked for "
            + ", ".join(f"'{n}'" for n in _CSV_FILES)
            + ", case-insensitive)",
            path=root,
        )
    found.sort(key=lambda item: (SPLITS.index(item[1]), str(item[0])))
    return found


def _image_index(folders):
    """Maps image id (file stem) -> path for every image under `folders`, recursively."""
    index = {}
    for folder in folders:
        for current, dirs, files in os.walk(folder):
            dirs[:] = sorted(_visible_dirs(dirs))
            for name in sorted(files):
                path = Path(current) / name
                if not is_image_file(path):
                    continue
                index.setdefault(_norm(path.stem), path)
    return index


def _image_folders(csv_path, folder_names):
    """The split's image folders: the named ones next to (or below) the CSV, else the CSV's folder."""
    parent = csv_path.parent
    wanted = {_norm(n) for n in folder_names}
    folders = []
    for current, dirs, _files in os.walk(parent):
        depth = len(Path(current).parts) - len(parent.parts)
        dirs[:] = sorted(_visible_dirs(dirs)) if depth < 2 else []
        for d in list(dirs):
            if _norm(d) in wanted:
                folders.append(Path(current) / d)
                dirs.remove(d)  # nested copies are searched recursively from here
    return folders or [parent]


def _find_column(header, candidates, csv_path, what, required=True):
    normalised = [_norm(h) for h in header]
    for name in candidates:
        if name in normalised:
            return normalised.index(name)
    if not required:
        return None
    raise DataError(
        f"missing {what} column (expected one of {list(candidates)}; header is {list(header)})",
        path=csv_path,
        column=candidates[0],
    )


def _parse_id(text, csv_path, row, column):
    value = str(text).strip()
    if not value:
        raise DataError("missing image id", path=csv_path, row=row, column=column)
    try:
        number = float(value)
        if math.isfinite(number) and number == int(number):
            value = str(int(number))  # "1377.0" from a spreadsheet
    except ValueError:
        pass
    return value


def _parse_age(text, csv_path, row, column):
    value = str(text).strip()
    if not value:
        raise DataError("missing bone age", path=csv_path, row=row, column=column)
    try:
        age = float(value)
    except ValueError:
        raise DataError(
            f"bone age '{value}' is not a number", path=csv_path, row=row, column=column
        ) from None
    if not math.isfinite(age) or age < 0 or age > MAX_AGE_MONTHS:
        raise DataError(
            f"bone age {value} months outside 0..{MAX_AGE_MONTHS:g}",
            path=csv_path,
            row=row,
            column=column,
        )
    return age


def _parse_sex(text, csv_path, row, column, *, male_column):
    value = _norm(text)
    males, females = (_TRUE, _FALSE) if male_column else (_SEX_MALE, _SEX_FEMALE)
    if value in males:
        return 1
    if value in females:
        return 0
    expected = "True/False" if male_column else "M/F"
    raise DataError(
        f"sex '{str(text).strip()}' is neither male nor female (expected {expected})",
        path=csv_path,
        row=row,
        column=column,
    )


def _sniff_image(path, csv_path, row, column):
    """Raises DataError for an empty, truncated or non-image file (cheap: first and last bytes)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(132)
            f.seek(max(0, size - 12))
            tail = f.read(12)
    except OSError as error:
        raise DataError(f"cannot open image: {error.strerror}", path=path) from None
    where = f"(listed in {csv_path.name}, row {row}, column '{column}')"
    if size == 0:
        raise DataError(f"corrupt image: empty file {where}", path=path)
    ok = (
        (head.startswith(b"\x89PNG\r\n\x1a\n") and tail.endswith(b"IEND\xaeB`\x82"))
        or (head.startswith(b"\xff\xd8\xff") and b"\xff\xd9" in tail)
        or head[128:132] == b"DICM"
    )
    if ok:
        return
    try:  # unusual but maybe valid (trailing bytes, other format): let the decoder decide
        read_image(path)
    except ImageReadError as error:
        raise DataError(f"corrupt image: {error.reason} {where}", path=path) from None


def read_xlsx_rows(path):
    """The first worksheet's rows as `(row_number, [cell text, ...])`, 1-based like Excel.

    Read with `pandas.read_excel` (openpyxl). Numbers read as written (integers without `.0`),
    booleans as `TRUE`/`FALSE`, empty cells as "".

    Args:
        path: an `.xlsx` file.

    Returns:
        A list of `(row_number, cells)` for every row that has a cell.

    Raises:
        DataError: the file is missing or not a readable workbook (named).
    """
    import zipfile

    try:
        frame = pd.read_excel(path, sheet_name=0, header=None, dtype=object, engine="openpyxl")
    except FileNotFoundError:
        raise DataError("label file not found", path=path) from None
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
        raise DataError(f"not a readable .xlsx workbook ({error})", path=path) from None

    def text(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, (bool, np.bool_)):
            return "TRUE" if value else "FALSE"
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        if isinstance(value, (float, np.floating)):
            value = float(value)
            return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
        return str(value)

    rows = []
    for position, values in enumerate(frame.itertuples(index=False), start=1):
        cells = [text(v) for v in values]
        while cells and cells[-1] == "":
            cells.pop()
        if cells:
            rows.append((position, cells))
    return rows


def _read_rows(path):
    """`(row_number, cells)` of a label file: CSV (UTF-8, BOM and CRLF allowed) or `.xlsx`."""
    if path.suffix.lower() == ".xlsx":
        return read_xlsx_rows(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            rows = []
            for cells in reader:
                rows.append((len(rows) + 1, cells))
            return rows
    except FileNotFoundError:
        raise DataError("label file not found", path=path) from None
    except UnicodeDecodeError:
        raise DataError("not a UTF-8 text (CSV) file", path=path) from None
    except csv.Error as error:
        raise DataError(f"unreadable CSV: {error}", path=path) from None


def read_label_csv(csv_path, split, *, source="kaggle", image_folders=None, check_images=True):
    """Reads one RSNA label CSV and finds its images.

    Args:
        csv_path: the CSV (`boneage-training-dataset.csv`, `train.csv`, `Validation Dataset.csv`,
            `boneage-test-dataset.csv`) or the test set's `Bone age ground truth.xlsx`.
        split: "train", "validation" or "test" (ages are optional only for "test").
        source: "kaggle" or "official" (recorded in the `source` column).
        image_folders: folders searched recursively for `<id>.<ext>`; default: the CSV's folder.
        check_images: also check every image's first and last bytes (catches empty, truncated
            and non-image files early, naming them).

    Returns:
        A DataFrame with `RECORD_COLUMNS` (see `read_records`).

    Raises:
        DataError: a missing column, a missing or bad id, age or sex, a duplicate id, a listed
            image that is absent or corrupt; the message names the file, row and column.
    """
    csv_path = Path(csv_path)
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'. Available: {list(SPLITS)}")
    rows = _read_rows(csv_path)
    if not rows or not any(cell.strip() for cell in rows[0][1]):
        raise DataError("empty label file (no header)", path=csv_path, row=1)
    header = [h.strip() for h in rows[0][1]]
    id_col = _find_column(header, _ID_COLUMNS, csv_path, "image id")
    age_col = _find_column(header, _AGE_COLUMNS, csv_path, "bone age", required=split != "test")
    male_col = _find_column(header, _MALE_COLUMNS, csv_path, "sex", required=False)
    sex_col = None
    if male_col is None:
        candidates = (
            _SEX_COLUMNS + _MALE_COLUMNS if split == "test" else _MALE_COLUMNS + _SEX_COLUMNS
        )
        sex_col = _find_column(header, candidates, csv_path, "sex ('male' or 'Sex')")
    folders = [Path(p) for p in (image_folders or [csv_path.parent])]
    index = _image_index(folders)

    records, seen = [], {}
    for row_number, cells in rows[1:]:
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        cells = cells + [""] * (len(header) - len(cells))
        image_id = _parse_id(cells[id_col], csv_path, row_number, header[id_col])
        if image_id in seen:
            raise DataError(
                f"duplicate image id '{image_id}' (first in row {seen[image_id]})",
                path=csv_path,
                row=row_number,
                column=header[id_col],
            )
        seen[image_id] = row_number
        age = math.nan
        if age_col is not None:
            age = _parse_age(cells[age_col], csv_path, row_number, header[age_col])
        if male_col is not None:
            male = _parse_sex(
                cells[male_col], csv_path, row_number, header[male_col], male_column=True
            )
        else:
            male = _parse_sex(
                cells[sex_col], csv_path, row_number, header[sex_col], male_column=False
            )
        path = index.get(_norm(image_id))
        if path is None:
            error = DataError(
                f"image '{image_id}' listed but not found under "
                + ", ".join(str(p) for p in folders),
                path=csv_path,
                row=row_number,
                column=header[id_col],
            )
            path = (Path(folders[0]) if folders else csv_path.parent) / f"{image_id}.png"
            missing_listed_file(error, path)
        elif check_images:
            _sniff_image(path, csv_path, row_number, header[id_col])
        records.append(
            {
                "image_path": str(path),
                "image_id": image_id,
                "patient_id": f"{source}-{split}-{image_id}",
                "age_months": age,
                "male": male,
                "split": split,
                "source": source,
                "csv_path": str(csv_path),
                "csv_row": row_number,
            }
        )
    if not records:
        raise DataError(f"no examples in the {split} label file", path=csv_path, row=2)
    frame = pd.DataFrame.from_records(records, columns=list(RECORD_COLUMNS))
    frame["age_months"] = frame["age_months"].astype(np.float64)
    frame["male"] = frame["male"].astype(np.int64)
    return frame


def read_records(root, *, check_images=True) -> pd.DataFrame:
    """Reads every split found under `root` (Kaggle or official layout, or both) into one frame.

    Args:
        root: the data set folder or a folder that holds it.
        check_images: check each image file's first and last bytes (see `read_label_csv`).

    Returns:
        DataFrame, one row per image, columns `RECORD_COLUMNS`: `image_path` (str), `image_id`
        (str, the file stem), `patient_id` (str; RSNA has one image per subject, so the image),
        `age_months` (float, NaN for the unlabelled Kaggle test set), `male` (int 1/0), `split`
        ("train", "validation", "test" as the layout gives it), `source` ("kaggle"/"official"),
        `csv_path`, `csv_row` (1-based, header = 1).

    Raises:
        DataError: no label file, or any bad row, column or image (named).
    """
    frames = []
    for csv_path, split, source, names in find_label_files(root):
        folders = _image_folders(csv_path, names)
        frames.append(
            read_label_csv(
                csv_path, split, source=source, image_folders=folders, check_images=check_images
            )
        )
    records = pd.concat(frames, ignore_index=True)
    # Both layouts in one folder list the same images twice (e.g. the Kaggle test CSV without ages
    # and the official ground truth with them): keep one row per image and split, labelled first.
    order = records.assign(_unlabelled=records["age_months"].isna()).sort_values(
        ["_unlabelled"], kind="stable"
    )
    keep = ~order.duplicated(["split", "image_id"], keep="first")
    return records.loc[sorted(order.index[keep.to_numpy()])].reset_index(drop=True)


def inspect_dataset(root) -> dict:
    """Summarises a data set in its real layout as CONTRACT.md's `inspect` JSON.

    Args:
        root: the data set folder or a folder that holds it.

    Returns:
        One entry per split found: `{"train": {"images", "males", "mean_age_months"},
        "validation": {...}, "test": {"images", "males"}}`, exactly CONTRACT.md's keys: the
        test entry has no `mean_age_months` even when the official test set's ground truth
        gives its ages (the Kaggle test CSV has none). Means are rounded to 0.01.
    """
    records = read_records(root)
    out = {}
    for split in SPLITS:
        part = records[records["split"] == split]
        if part.empty:
            continue
        entry = {"images": int(len(part)), "males": int(part["male"].sum())}
        if split != "test" and part["age_months"].notna().all():
            entry["mean_age_months"] = round(float(part["age_months"].mean()), 2)
        out[split] = entry
    return out


def _strata(frame):
    bands = np.clip(frame["age_months"].to_numpy() // 36, 0, 7).astype(np.int64)
    return frame["male"].to_numpy().astype(np.int64) * 10 + bands


def split_records(records, *, seed=0, test_fraction=0.1, val_fraction=0.1) -> pd.Series:
    """Assigns each record to "train", "val", "test" or "unlabeled" as the paper does.

    The official layout's validation set is "val" (§IV: 1,425 images) and its training set
    "train". A test split with ages is "test"; the Kaggle test CSV has none, so its rows are
    "unlabeled" (for `predict`), and `test_fraction` of the labelled training subjects are held out
    as "test" instead. Without a validation set, `val_fraction` of the remaining training subjects
    become "val". Splits are by subject, stratified by sex and 3-year age band, deterministic.

    Args:
        records: DataFrame from `read_records`.
        seed: split seed.
        test_fraction: share of training subjects held out when no labelled test set exists.
        val_fraction: share of training subjects for "val" when no validation set exists.

    Returns:
        pandas Series of split names with `records`' index.
    """
    if records.empty:
        raise DataError("no records to split")
    out = pd.Series("train", index=records.index, name="split", dtype=object)
    labelled = records["age_months"].notna()
    given = records["split"]
    out[given == "validation"] = "val"
    out[(given == "test") & labelled] = "test"
    out[~labelled] = "unlabeled"
    train = records[(given == "train") & labelled].copy()
    if train.empty:
        raise DataError("no labelled training images")
    train["stratum"] = _strata(train)
    has_test = bool(((given == "test") & labelled).any())
    has_val = bool((given == "validation").any())
    if not has_test:
        fractions = {"train": 1.0 - test_fraction, "test": test_fraction}
        parts = split_by_group(
            train,
            group_col="patient_id",
            stratify_col="stratum",
            fractions=fractions,
            val_fraction_of_train=0.0 if has_val else val_fraction,
            seed=seed,
        )
    elif not has_val:
        parts = assign_validation(
            train, group_col="patient_id", fraction=val_fraction, seed=seed, stratify_col="stratum"
        )
    else:
        parts = pd.Series("train", index=train.index)
    out[train.index] = parts.to_numpy()
    return out


def make_dataset(
    records,
    *,
    config="demo",
    training,
    batch_size,
    seed=0,
    augment=None,
    cache=True,
    drop_remainder=False,
) -> tf.data.Dataset:
    """Builds the tf.data pipeline of (inputs, targets) for a BoneAgeNet.

    Images are read as gray [0, 1] (the paper's /255), resized to the model's input size (300 x 300
    in the paper) and, when training, shuffled and augmented with random zoom and random
    horizontal and vertical flips (§IV, `PAPER_AUGMENT`).

    Args:
        records: DataFrame from `read_records` (one split, e.g. `records[split == "train"]`).
        config: the model's preset name, `BoneAgeConfig` or dict (input size, channels, sex input).
        training: shuffle and augment (True) or keep the order (False).
        batch_size: examples per batch.
        seed: shuffle and augmentation seed.
        augment: an `AugmentConfig` replacing `PAPER_AUGMENT` (training only).
        cache: cache decoded, resized images in memory (True), in a file (a path) or not (False).
        drop_remainder: drop the last incomplete batch (training: every step then has the same
            shape, so the training step is traced once).

    Returns:
        tf.data.Dataset of `({"image": (B, H, W, C) float32, "sex": (B, 1) float32},
        {"age_months": (B, 1) float32})`; without ages (Kaggle test set, `training=False`) only the
        inputs dict. `sex` is absent for a model without the sex input.

    Raises:
        DataError: no records, or a missing age when training.
    """
    config = get_config(config)
    if records is None or len(records) == 0:
        raise DataError("empty split: no images to read")
    missing = records["age_months"].isna().to_numpy()
    with_targets = not missing.any()
    if missing.any() and (training or not missing.all()):
        first = records[missing].iloc[0]
        raise DataError(
            "missing bone age for a labelled split",
            path=first.get("csv_path"),
            row=first.get("csv_row"),
        )
    columns = {"sex": records["male"].to_numpy(np.float32).reshape(-1, 1)}
    if with_targets:
        columns["age_months"] = records["age_months"].to_numpy(np.float32).reshape(-1, 1)
    ds = make_image_dataset(
        records["image_path"].tolist(),
        columns,
        image_size_hw=config.image_size_hw,
        batch_size=batch_size,
        training=training,
        seed=seed,
        augment=PAPER_AUGMENT if augment is None else augment,
        cache=cache,
        channels=config.channels,
        drop_remainder=drop_remainder,
    )
    use_sex = config.use_sex

    def to_model(image, columns):
        inputs = {"image": image}
        if use_sex:
            inputs["sex"] = columns["sex"]
        if not with_targets:
            return inputs
        return inputs, {"age_months": columns["age_months"]}

    return ds.map(to_model, num_parallel_calls=tf.data.AUTOTUNE)


def load_records(root, *, seed=0, check_images=True) -> pd.DataFrame:
    """Reads a data set and assigns the paper's splits: `read_records` then `split_records`.

    Args:
        root: the data set folder or a folder that holds it (either layout).
        seed: split seed (a run's `seed`, so `evaluate` finds the same held-out subjects).
        check_images: check each image file's first and last bytes.

    Returns:
        `read_records`' frame with `split` replaced by "train", "val", "test" or "unlabeled"
        (see `split_records`) and the layout's own split kept in `layout_split`.
    """
    records = read_records(root, check_images=check_images)
    records = records.rename(columns={"split": "layout_split"})
    records["split"] = split_records(records.rename(columns={"layout_split": "split"}), seed=seed)
    return records
