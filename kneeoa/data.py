"""Readers for the knee-OA data sets' real on-disk layouts, the paper's split and the tf.data pipeline.

Three layouts are read (`find_dataset` tells them apart; `root` may be the data set's folder or a
folder above it, up to three levels; folders named `_phantom_truth`, `__MACOSX` or starting with a
dot are never looked into). OAI and MOST under one root are one data set, `oai+most` (the paper
trained on both); the kneeKL224 folders beside a release are refused with an error naming both,
unless `layout` (`--layout`) chooses: a root is never read as one of two data sets silently.

- kneeKL224-style folders (Chen et al. 2019, as most public knee-OA data is shared):
  `<root>/{train,val,test,auto_test}/<KL 0-4>/**/*.png` (`validation` is read as `val`; names are
  matched case-insensitively; images may sit in sub-folders), each image one knee already
  cropped. Files are named `<participant ID><R|L>.png` (e.g. `9003175R.png`): the leading digits
  are the participant (for grouping), the letter the side; other names are their own participant.
- OAI: the `kXR_SQ_BU00.txt` KL file (any letter case, anywhere under the root; without it the
  earliest `kXR_SQ_BU<NN>.txt` follow-up, whose KL column is `V<NN>XRKL`) is pipe-delimited
  with a header naming at least `ID`, `SIDE`, `READPRJ`, `V00XRKL` (any case, quoted or not:
  the release itself writes `readprj` and `id` in some files). `SIDE` is `1` (right) / `2`
  (left) or the text form `1: Right` / `2: Left`; `READPRJ` selects the reading project (15 by
  default; 37 and 42 are re-reads); `V00XRKL` is 0-4 (or `2: ...`), and a blank (or OAI's `.`
  missing codes: `.: Missing Form/Incomplete Workbook`, `.P: Prosthetic`, ...) drops the knee,
  counted in `records.attrs["dropped_missing_kl"]`. Images are matched to rows by file name
  (any case, any sub-folder; PNG, JPEG or DICOM) under the KL file's folder, or, when that
  holds none of them, under the nearest folder above it up to the root (the release keeps the
  KL file in `X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII/`):
  `<ID>R` / `<ID>_R` / `<ID>L` / `<ID>_L` is a knee image, `<ID>` a bilateral PA film that is
  split down the middle (§3.4). The OAI image release is read as it unpacks too: a visit's
  `contents.csv` (`Folder`, `ParticipantID`, `SeriesDescription`) points at each participant's
  `Bilateral PA Fixed Flexion Knee` film `<Folder>/001` (a DICOM file without suffix).
  Convention: a PA film is displayed as if facing the patient, so
  the image's LEFT half is the patient's RIGHT knee (`crop="left_half"`) and the right half the
  left knee (`crop="right_half"`). A per-knee image wins over a bilateral one.
- MOST (Multicenter Osteoarthritis Study): the X-ray reading file `mostv01235xray.sas7bdat`
  (read with `pandas.read_sas`; its `.txt` (pipe or tab) or `.csv` export too), one row per
  participant with `MOSTID` and `V{0,1,2,3,5}X{L,R}KL` (visits at 0, 15, 30, 60 and 84 months;
  baseline `V0` by default, as the paper), and the films as the release is laid out and as public
  readers of it document (Oulu-IMEDS KneeOARSIGrading `oarsigrading/dataset/metadata/most.py` and
  OAProgression, which parse the film list `MOST_names.csv`): `<MOSTID + 5-character suffix>/
  V<visit>.../<view>/<film>`. Only the posteroanterior 10° view (`PA10`) is kept, as the paper
  does; each film is a bilateral PA film, split like OAI's (see `read_most`).

Records (`read_records`, `load_records`) are a pandas DataFrame, one row per knee:
`path` (str), `crop` (`full`, `left_half`, `right_half`), `participant_id` (str), `side`
(`R`, `L` or empty when unknown), `kl` (int 0-4), `source` (`folders`, `oai` or `most`), `row` (the KL
file's row, header = 1; 0 for folders), and `split` (`train`, `val`, `test`, `auto_test`) when the
layout gives one or after `assign_splits`.

The paper's split (§3.4): 70/30 train/test, 10% of train for validation, stratified by KL grade,
both knees of a participant always in the same split (`common.splits.split_by_group`).

Reference:
    Górriz et al., MIDL 2019, §3.4 (data, preprocessing, split); OAI kXR_SQ_BU00 (BU KL readings);
    MOST mostv01235xray (baseline and follow-up X-ray readings).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from common.augment import CROPS
from common.augment import AugmentConfig
from common.augment import make_image_dataset
from common.errors import DataError
from common.errors import missing_listed_file
from common.fileio import read_text
from common.image_io import DICOM_SUFFIXES
from common.image_io import ImageReadError
from common.image_io import check_image_header
from common.image_io import list_images
from common.image_io import read_image
from common.splits import assign_validation
from common.splits import split_by_group
from kneeoa.model import output_names
from kneeoa.model import resolve_config

KL_FILE_NAME = "kxr_sq_bu00.txt"
KL_COLUMNS = ("ID", "SIDE", "READPRJ", "V00XRKL")
# kXR_SQ_BU<visit>.txt: 00 baseline, 01 12 months, ...; its KL column is V<visit>XRKL.
_KL_FILE = re.compile(r"^kxr_sq_bu(?P<visit>\d{2})\.txt$", re.IGNORECASE)
# The OAI image release: <visit folder>/contents.csv lists every series, the knee film is
# `<Folder>/001` of the rows with this SeriesDescription.
CONTENTS_FILE_NAME = "contents.csv"
PA_KNEE_SERIES = "bilateral pa fixed flexion knee"
# OAI visit code -> the image release's visit folder (`00m`, `OAI_12m`, ...).
_VISIT_MONTHS = {"00": "00m", "01": "12m", "03": "24m", "05": "36m", "06": "48m", "08": "72m"}
_VISIT_MONTHS["10"] = "96m"
# MOST (see `read_most`): the X-ray reading file, the films' list and the one view the paper keeps.
MOST_READING_STEM = "mostv01235xray"
MOST_READING_SUFFIXES = (".sas7bdat", ".txt", ".csv")  # the SAS file first, then its exports
MOST_FILM_LIST = "most_names.csv"
MOST_VISITS = {0: 0, 1: 15, 2: 30, 3: 60, 5: 84}  # visit code -> months after baseline
MOST_VIEW = "PA10"
_MOST_ID = re.compile(r"^(?P<id>M[A-Z]\d{5})", re.IGNORECASE)
_MOST_VISIT = re.compile(r"^V(?P<visit>\d)", re.IGNORECASE)
LAYOUTS = ("folders", "oai", "most", "oai+most")
SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "validation": "val",
    "test": "test",
    "auto_test": "auto_test",
}
RECORD_COLUMNS = ("path", "crop", "participant_id", "side", "kl", "source", "row", "split")
NUM_KL_GRADES = 5
_SKIP_DIRS = ("_phantom_truth", "__MACOSX")
_MAX_DEPTH = 3
_NAME = re.compile(r"^(?P<pid>\d+)(?:[_\- ]?(?P<side>[LR]))?$", re.IGNORECASE)
_LEADING_INT = re.compile(r"^\s*([+-]?\d+(?:\.0*)?)\s*(?::.*)?$")


# --------------------------------------------------------------------------- finding the data set


def _skipped(name):
    return name.startswith(".") or name in _SKIP_DIRS


def _subdirs(folder):
    try:
        return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not _skipped(p.name))
    except OSError:
        return []


def _kl_file_in(folder):
    """The KL file in `folder`: kXR_SQ_BU00.txt, else the earliest visit's kXR_SQ_BU<NN>.txt."""
    found = []
    try:
        for p in sorted(Path(folder).iterdir()):
            match = _KL_FILE.match(p.name)
            if match and p.is_file():
                found.append((int(match.group("visit")), p.name, p))
    except OSError:
        pass
    return min(found)[2] if found else None


def kl_column_for(path):
    """The KL column of a KL file: `V<NN>XRKL` for `kXR_SQ_BU<NN>.txt`, else `V00XRKL`."""
    match = _KL_FILE.match(Path(path).name)
    return f"V{match.group('visit')}XRKL" if match else KL_COLUMNS[-1]


def _split_dirs(folder):
    """`{split: path}` for the kneeKL224 split folders directly in `folder` (any letter case)."""
    found = {}
    for sub in _subdirs(folder):
        split = SPLIT_NAMES.get(sub.name.lower())
        if split is not None and any(d.name.isdigit() for d in _subdirs(sub)):
            if split in found:
                raise DataError(f"two folders for split '{split}'", path=sub)
            found[split] = sub
    return found


def _most_file_in(folder):
    """The MOST reading file in `folder` (`mostv01235xray.sas7bdat`, else its .txt/.csv export)."""
    found = {}
    try:
        for p in Path(folder).iterdir():
            name = p.name.lower()
            for rank, suffix in enumerate(MOST_READING_SUFFIXES):
                if name == MOST_READING_STEM + suffix and p.is_file():
                    found.setdefault(rank, p)
    except OSError:
        pass
    return found[min(found)] if found else None


_LAYOUT_TEXT = {
    "oai": "the OAI KL file (kXR_SQ_BU00.txt) in {}",
    "most": "the MOST reading file (mostv01235xray) in {}",
    "folders": "kneeKL224-style split folders in {}",
}


def find_layouts(root, layout=None):
    """Every knee layout under `root`: `{kind: folder}` for `oai`, `most` and `folders`.

    Each kind is looked for down to three levels; the shallowest folder of each kind is kept
    (for split folders, one named `kneeKL224` first).

    Args:
        root: the data set's folder or a folder holding it.
        layout: None (all kinds) or one of `LAYOUTS` (only the kinds it names).

    Returns:
        dict `{kind: pathlib.Path}` (possibly empty).
    """
    wanted = {"oai", "most", "folders"} if layout is None else set(layout.split("+"))
    found = {}
    folders = []
    level = [Path(root)]
    for _ in range(_MAX_DEPTH + 1):
        for folder in level:
            if "oai" in wanted and "oai" not in found and _kl_file_in(folder) is not None:
                found["oai"] = folder
            if "most" in wanted and "most" not in found and _most_file_in(folder) is not None:
                found["most"] = folder
            if "folders" in wanted and "folders" not in found and _split_dirs(folder):
                folders.append(folder)
        if folders and "folders" not in found:
            named = [f for f in folders if f.name.lower() == "kneekl224"]
            found["folders"] = (named or folders)[0]
        if wanted <= set(found):
            break
        level = [sub for folder in level for sub in _subdirs(folder)]
    return found


def find_dataset(root, layout=None):
    """Finds the data set under `root`: its layout and folder.

    A root holding the kneeKL224-style folders and a release (OAI or MOST) is refused unless
    `layout` chooses: the two hold different knees, and picking one silently would train on the
    wrong data. OAI and MOST together are one data set, `oai+most`, as the paper trained on both.

    Args:
        root: the data set's folder or a folder holding it (searched three levels deep).
        layout: None (whichever `root` holds), `"oai"`, `"most"`, `"oai+most"` or `"folders"`.

    Returns:
        `(layout, folder)`: `("oai", folder holding kXR_SQ_BU00.txt)`, `("most", folder holding
        mostv01235xray.*)`, `("oai+most", root)` or `("folders", folder holding train/val/test)`.

    Raises:
        DataError: `root` is missing, holds no such layout, or holds two (naming both).
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"Unknown layout '{layout}'. Available: {list(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError("data folder not found", path=root)
    found = find_layouts(root, layout)
    if layout is not None:
        missing = [k for k in layout.split("+") if k not in found]
        if missing:
            wanted = {
                "oai": "no kXR_SQ_BU00.txt KL file",
                "most": "no MOST reading file (mostv01235xray.sas7bdat, .txt or .csv)",
                "folders": "no kneeKL224-style split folders (train/val/test/<KL>/)",
            }[missing[0]]
            raise DataError(f"{wanted} found", path=root)
        return layout, found[layout] if layout in found else root
    if "folders" in found and len(found) > 1:
        releases = [k for k in ("oai", "most") if k in found]
        both = " and ".join(_LAYOUT_TEXT[k].format(found[k]) for k in ("folders", *releases))
        choices = "|".join(["folders", *releases, *(["oai+most"] if len(releases) == 2 else [])])
        raise DataError(
            f"two data sets here: {both}; choose one with --layout {choices}", path=root
        )
    if "oai" in found and "most" in found:
        return "oai+most", root
    if not found:
        raise DataError(
            "no kneeKL224-style split folders (train/val/test/<KL>/), no kXR_SQ_BU00.txt and no "
            "MOST reading file (mostv01235xray.sas7bdat) found",
            path=root,
        )
    ((kind, folder),) = found.items()
    return kind, folder


# --------------------------------------------------------------------------- kneeKL224 folders


def parse_knee_name(stem):
    """Splits a knee file name (without suffix) into participant id and side.

    Args:
        stem: e.g. `"9003175R"`, `"9003175_l"`, `"9003175"`, `"knee_017"`.

    Returns:
        `(participant_id, side)`: side `"R"`, `"L"` or `""`; names that do not start with the
        digits of an ID are their own participant.
    """
    match = _NAME.match(stem.strip())
    if match is None:
        return stem, ""
    return match.group("pid"), (match.group("side") or "").upper()


def read_kl_folders(root):
    """Reads kneeKL224-style folders `<root>/<split>/<KL>/**/*.png` into records.

    Args:
        root: the folder holding the split folders (or a folder above it).

    Returns:
        DataFrame of records (see the module docstring) with `split` from the folders.

    Raises:
        DataError: no split folders, a grade folder outside 0-4, a split without images.
    """
    _, folder = find_dataset(root, "folders")
    rows = []
    for split, split_dir in _split_dirs(folder).items():
        count = 0
        seen = {}  # file name -> path: the same knee in two KL folders has conflicting grades
        for grade_dir in _subdirs(split_dir):
            if not grade_dir.name.isdigit():
                raise DataError(
                    f"unknown label folder '{grade_dir.name}' in split '{split}' (KL grade "
                    "folders are named 0..4)",
                    path=grade_dir,
                )
            kl = int(grade_dir.name)
            if not 0 <= kl < NUM_KL_GRADES:
                raise DataError(f"KL grade folder '{grade_dir.name}' outside 0..4", path=grade_dir)
            for path in list_images(grade_dir):
                if any(_skipped(part) for part in path.relative_to(grade_dir).parts[:-1]):
                    continue
                if path.name.lower() in seen:
                    raise DataError(
                        f"the same knee file is in two KL folders: {seen[path.name.lower()]}",
                        path=path,
                    )
                seen[path.name.lower()] = path
                pid, side = parse_knee_name(path.stem)
                rows.append(
                    {
                        "path": os.fspath(path),
                        "crop": "full",
                        "participant_id": pid,
                        "side": side,
                        "kl": kl,
                        "source": "folders",
                        "row": 0,
                        "split": split,
                    }
                )
                count += 1
        if count == 0:
            raise DataError(f"split '{split}' holds no images", path=split_dir)
    records = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    records["kl"] = records["kl"].astype(int)
    records["row"] = records["row"].astype(int)
    records = records.sort_values(["split", "path"], kind="stable").reset_index(drop=True)
    records.attrs.update({"source": "folders", "root": os.fspath(folder), "dropped_missing_kl": 0})
    return records


# --------------------------------------------------------------------------- OAI


def _release_records(rows, attrs):
    """Records of a release (OAI, MOST) from row dicts, sorted by participant and side."""
    records = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    records = records.astype({"kl": int, "row": int})
    records = records.sort_values(["participant_id", "side"], kind="stable").reset_index(drop=True)
    records.attrs.update(attrs)
    return records


def _text_lines(path, what):
    """The lines of a text table (UTF-8 with or without BOM, else Latin-1); its header must be there."""
    text = read_text(path, fallback="latin-1", unreadable=f"cannot read {what}")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"empty {what} (no header)", path=path, row=1)
    return lines


def _leading_int(text):
    match = _LEADING_INT.match(text)
    return None if match is None else int(float(match.group(1)))


def _parse_side(text):
    value = text.strip().lower()
    code = _leading_int(value)
    if code in (1, 2):
        return "R" if code == 1 else "L"
    if value in ("r", "right"):
        return "R"
    if value in ("l", "left"):
        return "L"
    return None


def _add_grade(knees, who, key, value, *, path, row, column):
    """Adds one knee's KL grade to `knees` (`{(id, side): (kl, row)}`); False when it is missing.

    Raises:
        DataError: a grade outside 0..4, or another grade for the same knee (naming both rows).
    """
    if _is_missing(value):
        return False
    kl = _leading_int(value)
    if kl is None or not 0 <= kl < NUM_KL_GRADES:
        raise DataError(f"KL grade '{value}' outside 0..4", path=path, row=row, column=column)
    if key in knees and knees[key][0] != kl:
        raise DataError(
            f"{who} side {key[1]} has two KL grades ({knees[key][0]} in row {knees[key][1]}, "
            f"{kl} here)",
            path=path,
            row=row,
            column=column,
        )
    knees.setdefault(key, (kl, row))
    return True


def _knees_frame(knees):
    frame = pd.DataFrame(
        [
            {"participant_id": pid, "side": side, "kl": kl, "row": row}
            for (pid, side), (kl, row) in knees.items()
        ],
        columns=["participant_id", "side", "kl", "row"],
    )
    return frame.astype({"kl": int, "row": int})


def _is_missing(text):
    value = text.strip()
    return value == "" or value.startswith(".") or value.upper() in ("NA", "NAN")


def read_kl_file(path, *, readprj=15):
    """Reads an OAI `kXR_SQ_BU00.txt` KL file: one row per knee of reading project `readprj`.

    Args:
        path: the pipe-delimited KL file.
        readprj: the reading project to keep (15 = the BU baseline reading the paper uses).

    Returns:
        `(knees, dropped)`: a DataFrame with `participant_id`, `side` (R/L), `kl` (int) and
        `row` (the file's row, header = 1), and the number of knees dropped for a blank KL.

    Raises:
        DataError: unreadable file, missing column, bad SIDE/READPRJ/KL value, no row of
            `readprj`, two different grades for one knee.
    """
    path = Path(path)
    lines = _text_lines(path, "KL file")
    header = [h.strip().strip('"').strip() for h in lines[0].split("|")]
    index = {}
    for i, h in enumerate(header):
        index.setdefault(h.upper(), i)
    kl_column = kl_column_for(path)
    for column in (*KL_COLUMNS[:-1], kl_column):
        if column not in index:
            raise DataError(
                f"missing column (header: {'|'.join(header)})", path=path, row=1, column=column
            )
    knees = {}
    dropped = 0
    seen_readprj = set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [c.strip().strip('"') for c in line.split("|")]
        if len(cells) < len(header):
            cells += [""] * (len(header) - len(cells))

        def cell(column, cells=cells):
            return cells[index[column]]

        pid = cell("ID")
        if not pid:
            raise DataError("empty participant ID", path=path, row=number, column="ID")
        project = _leading_int(cell("READPRJ"))
        if project is None:
            raise DataError(
                f"READPRJ '{cell('READPRJ')}' is not a number",
                path=path,
                row=number,
                column="READPRJ",
            )
        seen_readprj.add(project)
        if project != int(readprj):
            continue
        side = _parse_side(cell("SIDE"))
        if side is None:
            raise DataError(
                f"SIDE '{cell('SIDE')}' is not 1 (right) or 2 (left)",
                path=path,
                row=number,
                column="SIDE",
            )
        where = {"path": path, "row": number, "column": kl_column}
        if not _add_grade(knees, f"participant {pid}", (pid, side), cell(kl_column), **where):
            dropped += 1
    if not knees and not dropped:
        found = sorted(seen_readprj)
        raise DataError(
            f"no rows with READPRJ {readprj} (found {found})", path=path, column="READPRJ"
        )
    return _knees_frame(knees), dropped


def _image_index(folder):
    """Lower-case file stem -> image paths (sorted), for every image under `folder`."""
    index = {}
    for path in list_images(folder):
        if any(_skipped(part) for part in path.relative_to(folder).parts[:-1]):
            continue
        stem = path.name.lower()
        for suffix in (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        index.setdefault(stem, []).append(path)
    return index


def _read_contents(path):
    """Participant ID -> knee film of one OAI image-release `contents.csv` (PA knee rows only)."""
    import csv

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    reader = csv.reader(text.splitlines())
    header = [h.strip().upper() for h in next(reader, [])]
    wanted = ("FOLDER", "PARTICIPANTID", "SERIESDESCRIPTION")
    if not all(w in header for w in wanted):
        return {}
    folder_i, pid_i, series_i = (header.index(w) for w in wanted)
    films = {}
    for row, cells in enumerate(reader, start=2):  # the header is row 1
        if len(cells) <= max(folder_i, pid_i, series_i):
            continue
        if cells[series_i].strip().lower() != PA_KNEE_SERIES:
            continue
        pid = cells[pid_i].strip()
        if pid.endswith(".0"):
            pid = pid[:-2]
        series_dir = path.parent / Path(cells[folder_i].strip().replace("\\", "/"))
        film = series_dir / "001"
        if not film.is_file() and series_dir.is_dir():
            found = [p for p in sorted(series_dir.iterdir()) if p.is_file() and p.name[0] != "."]
            film = found[0] if found else film
        if not film.is_file():
            # a listed film that is absent: inspect counts it, train stops (common.errors)
            missing_listed_file(
                DataError("listed film not found", path=path, row=row, column="Folder"), film
            )
            continue
        films.setdefault(pid.lower(), []).append(film)
    return films


def _contents_index(folder):
    """Participant ID -> PA knee films listed by the `contents.csv` files under `folder`."""
    films = {}
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        for name in sorted(files):
            if name.lower() == CONTENTS_FILE_NAME:
                try:
                    found = _read_contents(Path(top) / name)
                except (OSError, StopIteration):
                    continue
                for pid, paths in found.items():
                    films.setdefault(pid, []).extend(paths)
    return films


def _within(paths, folder):
    for path in paths:
        if path.is_relative_to(folder):
            return path
    return None


def read_oai(root, *, readprj=15):
    """Reads the OAI layout: the KL file and the images of the knees it grades.

    Images are looked for under the KL file's folder, and when none of the graded participants
    has an image there, under each folder above it up to `root` (the OAI release keeps the KL
    file in `X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII/`, away from the films).
    Besides files named by participant ID, the OAI image release itself is read: a
    `contents.csv` (columns `Folder`, `ParticipantID`, `SeriesDescription`) whose
    `Bilateral PA Fixed Flexion Knee` rows point at the bilateral film `<Folder>/001`.

    Args:
        root: the folder holding `kXR_SQ_BU00.txt` (or a folder above it) and the images.
        readprj: the reading project to keep (default 15).

    Returns:
        DataFrame of records (module docstring), without `split` values (see `assign_splits`);
        `records.attrs["dropped_missing_kl"]` counts knees dropped for a blank KL.

    Raises:
        DataError: as `read_kl_file`, or a graded knee without an image (naming the KL file's
            row and the `ID` column).
    """
    top = Path(root)
    _, folder = find_dataset(top, "oai")
    kl_file = _kl_file_in(folder)
    knees, dropped = read_kl_file(kl_file, readprj=readprj)
    if not top.is_dir() or not folder.is_relative_to(top):
        top = folder
    images = _image_index(top)
    films = _contents_index(top)
    month = _VISIT_MONTHS.get(kl_column_for(kl_file)[1:3])
    if month:  # several visits' image releases: the KL file's visit first (00m, 12m, ...)
        for paths in films.values():
            paths.sort(key=lambda p: not any(part.lower().endswith(month) for part in p.parts))
    wanted = set()
    for knee in knees.itertuples(index=False):
        lower = knee.participant_id.lower()
        wanted.update((lower, f"{lower}{knee.side.lower()}", f"{lower}_{knee.side.lower()}"))

    def holds_images(scope):
        return any(
            _within(images.get(stem, ()), scope) or _within(films.get(stem, ()), scope)
            for stem in wanted
        )

    scope = folder
    while scope != top and not holds_images(scope):
        scope = scope.parent
    rows = []
    for knee in knees.itertuples(index=False):
        pid, side = knee.participant_id, knee.side
        lower = pid.lower()
        path = _within(images.get(f"{lower}{side.lower()}", ()), scope) or _within(
            images.get(f"{lower}_{side.lower()}", ()), scope
        )
        crop = "full"
        if path is None:
            path = _within(images.get(lower, ()), scope) or _within(films.get(lower, ()), scope)
            crop = "left_half" if side == "R" else "right_half"
        if path is None:
            raise DataError(
                f"no image for participant {pid} ({pid}.png/.dcm, {pid}{side} or {pid}_{side}, "
                f"or a contents.csv '{PA_KNEE_SERIES}' row) under {scope}",
                path=kl_file,
                row=knee.row,
                column="ID",
            )
        rows.append(
            {
                "path": os.fspath(path),
                "crop": crop,
                "participant_id": pid,
                "side": side,
                "kl": knee.kl,
                "source": "oai",
                "row": knee.row,
                "split": "",
            }
        )
    return _release_records(
        rows,
        {
            "source": "oai",
            "root": os.fspath(folder),
            "kl_file": os.fspath(kl_file),
            "kl_column": kl_column_for(kl_file),
            "readprj": int(readprj),
            "dropped_missing_kl": int(dropped),
        },
    )


# --------------------------------------------------------------------------- MOST


def _most_cell_text(value):
    """A reading file's cell as text: SAS numbers (2.0) as "2", NaN and bytes handled."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, float):
        if np.isnan(value):
            return ""
        return str(int(value)) if value == int(value) else str(value)
    return str(value).strip().strip('"').strip()


def _read_most_table(path):
    """`(header, rows)` of the reading file: the SAS file through pandas, its exports as text."""
    path = Path(path)
    if path.suffix.lower() == ".sas7bdat":
        try:
            frame = pd.read_sas(path, format="sas7bdat", encoding="latin-1")
        except Exception as e:  # pandas raises many types for a broken SAS file
            raise DataError(f"cannot read the SAS file: {e}", path=path) from None
        header = [str(c) for c in frame.columns]
        return header, [[_most_cell_text(v) for v in row] for row in frame.itertuples(index=False)]
    lines = _text_lines(path, "reading file")
    first = lines[0]
    delimiter = "|" if "|" in first else "\t" if "\t" in first else ","
    import csv

    table = list(csv.reader(lines, delimiter=delimiter))
    header = [h.strip().strip('"').strip() for h in table[0]]
    return header, [[_most_cell_text(c) for c in cells] for cells in table[1:]]


def read_most_readings(path, *, visit=0):
    """Reads the MOST X-ray reading file: one row per knee graded at `visit`.

    Args:
        path: `mostv01235xray.sas7bdat`, or its `.txt` (pipe or tab) / `.csv` export.
        visit: MOST visit code (0 baseline, 1, 2, 3, 5 = 15, 30, 60, 84 months); its KL columns
            are `V<visit>XLKL` (left knee) and `V<visit>XRKL` (right knee).

    Returns:
        `(knees, dropped)`: a DataFrame with `participant_id` (MOSTID), `side` (R/L), `kl` (int)
        and `row` (data rows from 2, the header being row 1, also for the SAS file), and the
        number of knees dropped for a missing KL (blank, NaN or a SAS missing code `.`/`.A`).

    Raises:
        DataError: unreadable file, a missing column, an empty MOSTID, a KL grade outside 0..4,
            two grades for one knee, no graded knee.
    """
    if int(visit) not in MOST_VISITS:
        raise ValueError(f"Unknown MOST visit {visit}. Available: {sorted(MOST_VISITS)}")
    path = Path(path)
    header, rows = _read_most_table(path)
    index = {}
    for i, h in enumerate(header):
        index.setdefault(h.upper(), i)
    columns = {"R": f"V{int(visit)}XRKL", "L": f"V{int(visit)}XLKL"}
    for column in ("MOSTID", *columns.values()):
        if column not in index:
            shown = "|".join(header[:8]) + ("|..." if len(header) > 8 else "")
            raise DataError(f"missing column (header: {shown})", path=path, row=1, column=column)
    knees = {}
    dropped = 0
    for number, cells in enumerate(rows, start=2):
        if not any(cells):
            continue
        cells = list(cells) + [""] * (len(header) - len(cells))
        pid = cells[index["MOSTID"]].upper()
        if not pid:
            raise DataError("empty MOSTID", path=path, row=number, column="MOSTID")
        for side, column in columns.items():
            where = {"path": path, "row": number, "column": column}
            if not _add_grade(knees, f"MOSTID {pid}", (pid, side), cells[index[column]], **where):
                dropped += 1
    if not knees:
        raise DataError(
            f"no knee graded at visit {visit} ({'/'.join(columns.values())} all missing)",
            path=path,
        )
    return _knees_frame(knees), dropped


def parse_most_film(parts, known_ids):
    """Subject, visit and view of one MOST film from its path's parts, or None.

    The layout public readers of the release follow (Oulu's KneeOARSIGrading `most.py` and
    OAProgression, which read the same `MOST_names.csv`): `<subject folder>/<visit folder>/.../
    <view>/<film>`, where the subject folder is the MOSTID followed by a 5-character suffix (the
    readers cut `[:-5]`), the visit folder's second character is the visit code (`V0`, `V1`, ...)
    and the view is the film's parent folder (`PA05`, `PA10`, `PA15`, lateral, ...).

    Args:
        parts: the path's parts, relative to the image root.
        known_ids: upper-case MOSTIDs of the reading file (a folder named by one is accepted
            with or without the suffix).

    Returns:
        `(mostid, visit code, view)` (view in upper case), or None when the path is no film of a
        graded subject.
    """
    if len(parts) < 4:
        return None
    folder = parts[0].upper()
    pid = next((c for c in (folder, folder[:-5]) if c in known_ids), None)
    if pid is None:
        match = _MOST_ID.match(folder)
        pid = (
            match.group("id").upper() if match and match.group("id").upper() in known_ids else None
        )
    visit = _MOST_VISIT.match(parts[1])
    if pid is None or visit is None:
        return None
    return pid, int(visit.group("visit")), parts[-2].upper()


def _most_films(top, kl_file, known_ids):
    """`(films, list_file)`: `{(MOSTID, visit, view): [paths]}` from MOST_names.csv or the folders."""
    films = {}
    list_file = None
    scope = kl_file.parent
    while True:
        list_file = next(
            (p for p in sorted(scope.iterdir()) if p.name.lower() == MOST_FILM_LIST), None
        )
        if list_file is not None or scope == top or not scope.is_relative_to(top):
            break
        scope = scope.parent
    if list_file is not None:
        raw = list_file.read_bytes().decode("latin-1")
        for number, line in enumerate(raw.splitlines(), start=1):
            entry = line.split(",")[0].strip().strip('"').replace("\\", "/").strip("/")
            if not entry:
                continue
            parts = tuple(p for p in entry.split("/") if p)
            parsed = parse_most_film(parts, known_ids)
            if parsed is None or parsed[2] != MOST_VIEW:
                continue
            # paths are relative to the list's folder, or to the data root when kept apart
            path = list_file.parent.joinpath(*parts)
            if not path.is_file() and top.joinpath(*parts).is_file():
                path = top.joinpath(*parts)
            if not path.is_file():
                error = DataError(
                    f"listed film not found: {path}", path=list_file, row=number, column=1
                )
                missing_listed_file(error, path)  # inspect counts it, train stops
                continue
            films.setdefault(parsed, []).append(path)
        return films, list_file
    for path in _all_files(top):
        parsed = parse_most_film(path.relative_to(top).parts, known_ids)
        if parsed is None:
            # the films may sit one or two folders down (e.g. `MOST_images/<subject>/...`)
            rel = path.relative_to(top).parts
            parsed = next(
                (
                    p
                    for p in (
                        parse_most_film(rel[i:], known_ids) for i in range(1, min(3, len(rel)))
                    )
                    if p is not None
                ),
                None,
            )
        if parsed is not None and parsed[2] == MOST_VIEW:
            films.setdefault(parsed, []).append(path)
    return films, None


def _all_files(folder):
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(top) / name


def read_most(root, *, visit=0):
    """Reads the MOST release: the X-ray reading file and the PA10 films of the knees it grades.

    Layout (as MOST distributes it, and as public readers of it document; see
    `parse_most_film`): `mostv01235xray.sas7bdat` (or its `.txt`/`.csv` export) with `MOSTID`
    and `V{0,1,2,3,5}X{L,R}KL`; the films as `<MOSTID + 5-char suffix>/V<visit>.../<view>/<film>`
    (DICOM, any name, with or without suffix; PNG/JPEG exports too), listed one per line in
    `MOST_names.csv` (no header; paths relative to the list's folder) when the list is there, else
    found by walking the folders under `root`. Only the posteroanterior 10° view (`PA10`) is kept,
    as the paper does (Górriz et al. §3.4: bilateral PA films, split in the middle); graded
    subjects without a PA10 film at that visit are left out and counted in
    `records.attrs["without_pa10"]` (MOST took PA films at 5°, 10° or 15°).

    Args:
        root: the folder holding the reading file (or a folder above it) and the films.
        visit: MOST visit code (default 0, the baseline the paper used).

    Returns:
        DataFrame of records (module docstring) with `source` `"most"`, both knees of each PA10
        film (`crop` `left_half` for the right knee, `right_half` for the left).

    Raises:
        DataError: as `read_most_readings`, a film the list names that is absent (naming the
            list's row), or no PA10 film for any graded knee.
    """
    top = Path(root)
    _, folder = find_dataset(top, "most")
    kl_file = _most_file_in(folder)
    knees, dropped = read_most_readings(kl_file, visit=visit)
    if not folder.is_relative_to(top):
        top = folder
    known = set(knees["participant_id"])
    films, list_file = _most_films(top, kl_file, known)
    rows = []
    without = 0
    for knee in knees.itertuples(index=False):
        paths = sorted(films.get((knee.participant_id, int(visit), MOST_VIEW), ()))
        if not paths:
            without += 1
            continue
        rows.append(
            {
                "path": os.fspath(paths[0]),
                "crop": "left_half" if knee.side == "R" else "right_half",
                "participant_id": knee.participant_id,
                "side": knee.side,
                "kl": knee.kl,
                "source": "most",
                "row": knee.row,
                "split": "",
            }
        )
    if not rows:
        where = list_file if list_file is not None else top
        raise DataError(
            f"no {MOST_VIEW} film at visit V{visit} for any of the {len(knees)} knees graded in "
            f"{kl_file.name} (films: <MOSTID+suffix>/V{visit}/.../{MOST_VIEW}/<file>)",
            path=where,
        )
    return _release_records(
        rows,
        {
            "source": "most",
            "root": os.fspath(folder),
            "kl_file": os.fspath(kl_file),
            "film_list": None if list_file is None else os.fspath(list_file),
            "visit": int(visit),
            "dropped_missing_kl": int(dropped),
            "without_pa10": int(without),
        },
    )


def read_records(root, *, readprj=15, layout=None):
    """Reads whichever layout `root` holds (see `find_dataset`) into records.

    Args:
        root: data set folder or a folder above it.
        readprj: OAI reading project (ignored for folders and MOST).
        layout: None (whichever `root` holds; two of them is an error) or one of `LAYOUTS`.

    Returns:
        DataFrame of records; `attrs["source"]` is `"oai"`, `"most"`, `"oai+most"` or `"folders"`.
    """
    layout, folder = find_dataset(root, layout)
    if layout == "oai":
        return read_oai(root, readprj=readprj)
    if layout == "most":
        return read_most(root)
    if layout == "oai+most":
        oai = read_oai(root, readprj=readprj)
        most = read_most(root)
        records = pd.concat([oai, most], ignore_index=True)
        records.attrs.update(
            {
                "source": "oai+most",
                "root": os.fspath(root),
                "oai": dict(oai.attrs),
                "most": dict(most.attrs),
                "dropped_missing_kl": oai.attrs["dropped_missing_kl"]
                + most.attrs["dropped_missing_kl"],
            }
        )
        return records
    return read_kl_folders(folder)


# --------------------------------------------------------------------------- splits


def assign_splits(records, *, seed=0, test_fraction=0.3, val_fraction_of_train=0.1):
    """The paper's split (§3.4): train/test 70/30 and 10% of train for validation.

    Stratified by KL grade; every participant (both knees) in exactly one split.

    Args:
        records: DataFrame with `participant_id` and `kl`.
        seed: seed of the split.
        test_fraction: share of knees in test (0.3).
        val_fraction_of_train: share of the train knees kept for validation (0.1).

    Returns:
        A copy of `records` with its `split` column set.
    """
    if len(records) == 0:
        raise DataError("no knees to split")
    out = records.copy()
    out["split"] = split_by_group(
        out,
        group_col="participant_id",
        stratify_col="kl",
        fractions={"train": 1.0 - test_fraction, "test": test_fraction},
        val_fraction_of_train=val_fraction_of_train,
        seed=seed,
    ).to_numpy()
    return out


def load_records(root, *, seed=0, readprj=15, val_fraction_of_train=0.1, layout=None):
    """Reads `root` and gives every record a split, as training needs.

    OAI and MOST records (and both together) get the paper's split (`assign_splits`, by
    participant: no subject in two splits); folder records keep their folders' split and, when
    there is no `val` folder, 10% of train (by participant) become `val`.

    Args:
        root: data set folder or a folder above it.
        seed: seed of any split drawn here.
        readprj: OAI reading project.
        val_fraction_of_train: validation share of train when it is drawn here.
        layout: None (whichever `root` holds) or one of `LAYOUTS`.

    Returns:
        DataFrame of records with `split` set.

    Raises:
        DataError: as the readers, or an empty `train`, `val` or `test` split.
    """
    records = read_records(root, readprj=readprj, layout=layout)
    attrs = dict(records.attrs)
    if attrs["source"] != "folders":
        records = assign_splits(records, seed=seed, val_fraction_of_train=val_fraction_of_train)
    elif not (records["split"] == "val").any():
        train = records["split"] == "train"
        if train.any():
            records.loc[train, "split"] = assign_validation(
                records[train],
                group_col="participant_id",
                fraction=val_fraction_of_train,
                seed=seed,
                stratify_col="kl",
            ).to_numpy()
    for split in ("train", "val", "test"):
        if not (records["split"] == split).any():
            raise DataError(f"split '{split}' is empty", path=attrs["root"])
    records.attrs.update(attrs)
    return records


# --------------------------------------------------------------------------- inspect


def inspect_dataset(root, layout=None):
    """Summarises a data set as the `inspect` command's JSON (CONTRACT.md).

    Args:
        root: data set folder or a folder above it.
        layout: None (whichever `root` holds; two of them is an error) or one of `LAYOUTS`.

    Returns:
        OAI or MOST: `{"source": "oai" | "most", "knees": N, "kl_counts": {"0": n, ..., "4": n}}`;
        both: the same with `"source": "oai+most"` and `"knees_by_source": {"oai": n, "most": n}`;
        folders: `{"source": "folders", "splits": {"train": n, ...}, "kl_counts": {...}}`.
    """
    records = read_records(root, layout=layout)
    counts = records["kl"].value_counts()
    kl_counts = {str(k): int(counts.get(k, 0)) for k in range(NUM_KL_GRADES)}
    source = records.attrs["source"]
    if source != "folders":
        summary = {"source": source, "knees": int(len(records)), "kl_counts": kl_counts}
        if source == "oai+most":
            summary["knees_by_source"] = {
                k: int((records["source"] == k).sum()) for k in ("oai", "most")
            }
        return summary
    order = [s for s in ("train", "val", "test", "auto_test") if (records["split"] == s).any()]
    splits = {s: int((records["split"] == s).sum()) for s in order}
    return {"source": "folders", "splits": splits, "kl_counts": kl_counts}


# --------------------------------------------------------------------------- tf.data


def check_image_file(path):
    """Checks cheaply that `path` looks like a whole image; reads it fully only when in doubt.

    Args:
        path: an image file.

    Raises:
        ImageReadError: missing, empty, truncated or not an image (naming the path).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError("file not found", path=path)
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError("empty file", path=path)
    with open(path, "rb") as handle:
        head = handle.read(132)
        handle.seek(max(0, size - 12))
        tail = handle.read(12)
    if path.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM":
        whole = head[128:132] == b"DICM"
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        whole = tail.endswith(b"IEND\xaeB`\x82")
    elif head.startswith(b"\xff\xd8\xff"):
        whole = tail.endswith(b"\xff\xd9")
    else:
        whole = False
    check_image_header(path, head)  # a header claiming too many pixels stops before decoding
    if not whole:
        read_image(path)  # raises ImageReadError naming the file if it is broken


def load_knee(path, crop):
    """Reads one knee: the whole image, or the left/right half of a bilateral film.

    Args:
        path: image file.
        crop: `"full"`, `"left_half"` or `"right_half"`.

    Returns:
        float32 `(H, W)` in [0, 1].
    """
    image = read_image(path)
    width = image.shape[1]
    if crop == "left_half":
        return np.ascontiguousarray(image[:, : width // 2])
    if crop == "right_half":
        return np.ascontiguousarray(image[:, width - width // 2 :])
    if crop != "full":
        raise ValueError(f"Unknown crop '{crop}'. Available: {list(CROPS)}")
    return image


def make_dataset(records, *, config, training, batch_size, seed=0, cache="auto"):
    """Builds the `tf.data` pipeline of §3.4 for a model configuration.

    Per knee, through the shared builder `common.augment.make_image_dataset`: read (PNG and JPEG
    decoded with `tf.io` in the graph, DICOM through `common.image_io.read_image`), cut the
    bilateral film in the middle when the record says so (a tensor slice), resize to
    `config["image_size_hw"]` (stretching, as the paper resizes every half to the mean size; the
    cast to float happens after the resize), histogram equalisation
    (`config["histogram_equalization"]`), round to uint8 (uint16 for 16-bit PNG and DICOM sources)
    and cache at the input size; when `training`: shuffle and random horizontal flip
    (`config["augment_flip"]`, seeded per example and epoch); gray repeated to
    `config["channels"]`; batch; prefetch. The values fed to the model equal the former PIL reader's
    (`load_knee`, resize, equalise) within half a gray level of the cached type.

    Args:
        records: DataFrame with `path`, `crop` and `kl` (e.g. one split of `load_records`).
        config: a preset name or a configuration dict from `kneeoa.model.resolve_config`.
        training: shuffle and augment.
        batch_size: examples per batch.
        seed: seed of shuffling and augmentation.
        cache: cache decoded, preprocessed knees in memory (True), in a file (a path), not at all
            (False), or "auto" (default: in memory below 2 GB of uint8/uint16 images, about 29 000
            knees at 320 x 224, else in a temporary file removed at exit).

    Returns:
        `tf.data.Dataset` of `(images (B, H, W, C) float32 in [0, 1], {output name: (B,) int32
        KL grades})`, one target per model output (`att0`, `att1`, ... or `fusion`).

    Raises:
        DataError: no records, a missing column, a KL grade outside 0..4, a bad crop, a missing,
            empty or broken image file (naming it).
    """
    if isinstance(config, str):
        config = resolve_config(config)
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(records) == 0:
        raise DataError("no records: the split is empty")
    for column in ("path", "crop", "kl"):
        if column not in records.columns:
            raise DataError("missing record column", column=column)
    kl = pd.to_numeric(records["kl"], errors="coerce").to_numpy()
    bad = ~np.isfinite(kl) | (kl < 0) | (kl >= NUM_KL_GRADES) | (kl != np.round(kl))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"KL grade {records['kl'].iloc[i]} outside 0..4",
            path=records["path"].iloc[i],
            column="kl",
        )
    unknown = ~records["crop"].isin(CROPS)
    if unknown.any():
        i = int(np.argmax(unknown.to_numpy()))
        raise DataError(
            f"unknown crop '{records['crop'].iloc[i]}', expected one of {list(CROPS)}",
            path=records["path"].iloc[i],
            column="crop",
        )
    paths = [os.fspath(p) for p in records["path"]]
    for path in paths:
        check_image_file(path)
    labels = kl.astype(np.int32)
    augment = None
    if training and bool(config["augment_flip"]):
        augment = AugmentConfig(flip_lr=True, seed=seed)
    return make_image_dataset(
        paths,
        {name: labels for name in output_names(config)},
        image_size_hw=tuple(config["image_size_hw"]),
        batch_size=int(batch_size),
        training=training,
        seed=seed,
        augment=augment,
        cache=cache,
        preprocess="equalize" if bool(config["histogram_equalization"]) else None,
        channels=int(config["channels"]),
        crops=list(records["crop"]),
    )
