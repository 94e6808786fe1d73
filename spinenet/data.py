"""Readers of the SPIDER lumbar MRI layout (and a plain array layout), disc-volume extraction, tf.data.

SPIDER layout (van der Graaf et al., Sci Data 2024), under a root folder (or one folder below it)::

    images/<patient>_<t1|t2|t2_SPACE>.mha     sagittal MRI series (MetaImage, read with SimpleITK)
    masks/<patient>_<t1|t2|t2_SPACE>.mha      label maps with the same geometry
    radiological_gradings.csv                 one row per graded disc

File names are matched case-insensitively (`12_T2_space.MHA` is patient 12's T2 SPACE series);
macOS `._*` companions and hidden files are ignored, as is the phantom writer's `_phantom_truth/`.
Mask labels: vertebrae 1-25 numbered from the bottom (L5 = 1 in the challenge's description;
with a transitional vertebra label 1 is simply the lowest one), 101-125 for partly visible
vertebrae, 100 the spinal canal, 201-225 the discs (L5/S1 = 201): `IVD label` N is mask label
200 + N. A disc's two vertebrae are found by position, not by label arithmetic. Series are stored in different orientations; every series is reoriented to `PIL`
(`SimpleITK.DICOMOrient`: array axes slice -> patient left, row -> inferior, column ->
posterior) before slicing, so a sagittal slice shows the head up and the face left.

Gradings columns (header matched ignoring case and spacing; `Pfirrmann grade` is accepted for
SPIDER's spelling `Pfirrman grade`) and the six tasks they give (Table 1 of paper 002):

| CSV column      | values | task (model output) | classes | mapping                        |
|-----------------|--------|---------------------|---------|--------------------------------|
| Pfirrman grade  | 1-5    | `pfirrmann`         | 5       | grade - 1                      |
| Disc narrowing  | 0-3    | `narrowing`         | config  | as is (SPIDER: 0/1, 2 classes) |
| UP endplate     | 0/1    | `upper_endplate`    | 2       | as is                          |
| LOW endplate    | 0/1    | `lower_endplate`    | 2       | as is                          |
| Modic           | 0-3    | `upper_marrow`      | 2       | Modic > 0                      |
| Modic           | 0-3    | `lower_marrow`      | 2       | Modic > 0 (one Modic per disc) |

Required columns: Patient, IVD label, and the five graded columns above; Spondylolisthesis, Disc
herniation and Disc bulging (0/1) are read when present and kept in the records. An empty cell is
a missing label (-1): that task is ignored for that disc (§2), never taken as 0. Binary cells may
be written 0/1, yes/no or true/false. Rows with `IVD label` 0 name no disc and are skipped with a
warning (SPIDER's own file has two, patients 107 and 152). Each disc is taken from the first
series of the patient, in the order of `sequences` (T2, then T2 SPACE, then T1 with a warning),
whose mask contains it. Patient ids need not be contiguous (SPIDER's run 1-257 over 218
patients); graded patients without any series in `images/` are skipped with a warning.

Storage orientation differs between series: SPIDER's 2-D TSE T1/T2 series are stored LPS
(`GetArrayFromImage` puts the sagittal slices on the LAST numpy axis), its 3-D T2 SPACE series
PIR (slices on the FIRST axis); direction cosines may be oblique. `read_series` reorients both
(and each mask on its own) to PIL by their direction cosines, never by axis position. Series
may also sit one folder deeper (`images/images/*.mha` after unzipping `images.zip` into a
folder named `images`).

Plain layout, for users with their own extraction: `volumes.npy` `(N, 112, 224, 9)` in [0, 1] and
`labels.csv` with one row per volume (same order) and the task columns above as class indices
(`pfirrmann` 0-4 for grades 1-5; empty or -1 = missing), optionally `patient` (group id for the
split) and `split` (train / val / test).

Disc volumes (§4, `extract_disc_volume`): from the masks, the disc's centroid, its AP axis (the
principal axis of its voxels in the sagittal plane) and its two vertebrae (the nearest labelled
vertebra above and below along the disc normal). The region is rotated so the disc is horizontal
and centred and cut 1:2 (112 x 224 pixels) so that 40% of the height of each vertebra shows
(`vertebra_fraction`). Nine slices about the disc's mid-sagittal slice (its centroid); slices
outside the series or beyond the disc's lateral extent are zeros (paper: "narrow discs with less
than 9 slices are zero-padded slice-wise"), with a warning. Series thinner than 2.5 mm per slice
(T2 SPACE) are resampled to 4 mm slices first. Each slice is divided by the median intensity of
the two vertebral bodies in it (the vertebra voxels within the disc's AP extent) and multiplied by
0.5, then clipped to [0, 1].

Test-time augmentation needs context around the volume: `load_volumes(..., context=True)`
extracts the same region with 16 more pixels on each side and one more slice on each side,
`(144, 256, 11)`, sampled on the same grid and normalised with the same medians, so its centre is
exactly the plain volume; `spinenet.explain.predict_tta` cuts its 54 views from it.

Extracted volumes are cached in memory (per series file and modification time), and optionally in
`.npz` files in `cache_dir`, so training epochs never extract twice.

Reference:
    Paper 002, §4 "Disc volume extraction", §5 (80:10:10 split by patient), Table 1.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.image_io import read_metaimage

GRADINGS_FILE = "radiological_gradings.csv"
PLAIN_VOLUMES = "volumes.npy"
PLAIN_LABELS = "labels.csv"
ORIENTATION = "PIL"
SEQUENCES = ("t2", "t2_space", "t1")
VOLUME_SHAPE = (112, 224, 9)
CONTEXT_MARGIN_PX = 16
CONTEXT_EXTRA_SLICES = 1
TASKS = (
    "pfirrmann",
    "narrowing",
    "upper_endplate",
    "lower_endplate",
    "upper_marrow",
    "lower_marrow",
)
#: Largest class index a task's label may take in any configuration (narrowing: 4 grades, §5).
TASK_MAX_CLASS = {
    "pfirrmann": 4,
    "narrowing": 3,
    "upper_endplate": 1,
    "lower_endplate": 1,
    "upper_marrow": 1,
    "lower_marrow": 1,
}

# canonical column -> (record column, low, high, required)
GRADING_COLUMNS = {
    "Patient": ("patient", None, None, True),
    "IVD label": ("ivd_label", 0, 25, True),
    "Modic": ("modic", 0, 3, True),
    "UP endplate": ("up_endplate", 0, 1, True),
    "LOW endplate": ("low_endplate", 0, 1, True),
    "Spondylolisthesis": ("spondylolisthesis", 0, 1, False),
    "Disc herniation": ("disc_herniation", 0, 1, False),
    "Disc narrowing": ("disc_narrowing", 0, 3, True),
    "Disc bulging": ("disc_bulging", 0, 1, False),
    "Pfirrman grade": ("pfirrmann_grade", 1, 5, True),
}
_COLUMN_ALIASES = {"pfirrmanngrade": "Pfirrman grade"}
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}
_SERIES_RE = re.compile(r"^(?P<patient>.+?)_(?P<sequence>t1|t2|t2_space)\.mha$", re.IGNORECASE)
_VERTEBRA_LABELS = set(range(1, 26)) | set(range(101, 126))
_VERTEBRAE_FROM_BOTTOM = (
    ["S1", "L5", "L4", "L3", "L2", "L1"]
    + [f"T{i}" for i in range(12, 0, -1)]
    + [f"C{i}" for i in range(7, 0, -1)]
)

_VOLUME_CACHE: dict = {}
_LABEL_CACHE: dict = {}


# ------------------------------------------------------------------------------ small helpers


def level_name(ivd_label) -> str:
    """Returns the level of SPIDER disc `ivd_label` (1 = "L5/S1", 2 = "L4/L5", ..., 6 = "T12/L1")."""
    n = int(ivd_label)
    if not 1 <= n < len(_VERTEBRAE_FROM_BOTTOM):
        return f"IVD{n}"
    return f"{_VERTEBRAE_FROM_BOTTOM[n]}/{_VERTEBRAE_FROM_BOTTOM[n - 1]}"


def _norm_header(text):
    return re.sub(r"[\s_]+", "", str(text).strip().lstrip("\ufeff")).lower()


def _patient_key(text):
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.0+)?", text):
        return str(int(float(text)))
    return text


def _is_junk(name):
    return name.startswith("._") or name.startswith(".")


def _parse_int(text, *, low, high, binary, path, row, column):
    """Parses one grading cell: an int in [low, high], or None when empty."""
    text = str(text).strip()
    if text == "" or text.lower() in ("nan", "na", "n/a", "none", "-1"):
        return None
    if binary and text.lower() in _TRUE:
        return 1
    if binary and text.lower() in _FALSE:
        return 0
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"not a number: {text!r}", path=path, row=row, column=column) from None
    if not np.isfinite(value) or value != int(value):
        raise DataError(f"not an integer: {text!r}", path=path, row=row, column=column)
    value = int(value)
    if low is not None and not low <= value <= high:
        raise DataError(f"value {value} outside {low}..{high}", path=path, row=row, column=column)
    return value


def _read_csv_text(path):
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except OSError as error:
        raise DataError(f"cannot read file: {error.strerror or error}", path=path) from None
    except UnicodeDecodeError:
        raise DataError("not a UTF-8 text file", path=path) from None
    if not text.strip():
        raise DataError("empty file", path=path)
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    return rows


# ------------------------------------------------------------------------------ layout discovery


def _find_child(folder, name, want_dir):
    folder = Path(folder)
    if not folder.is_dir():
        return None
    target = name.lower()
    for child in sorted(folder.iterdir()):
        if child.name.lower() == target and child.is_dir() == want_dir and not _is_junk(child.name):
            return child
    return None


def _layout_of(folder):
    if _find_child(folder, GRADINGS_FILE, False) is not None:
        return "spider"
    if _find_child(folder, PLAIN_VOLUMES, False) is not None:
        return "plain"
    if _find_child(folder, "images", True) is not None and _find_child(folder, "masks", True):
        return "spider"
    return None


def find_dataset_root(root) -> tuple[str, Path]:
    """Finds the data set folder: `root` itself or a folder up to two levels below it.

    Args:
        root: the data set folder or a folder that holds it.

    Returns:
        `(kind, folder)`: kind `"spider"` or `"plain"`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("data folder not found", path=root)
    queue = [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        kind = _layout_of(folder)
        if kind is not None:
            return kind, folder
        if depth < 2:
            queue.extend(
                (child, depth + 1)
                for child in sorted(folder.iterdir())
                if child.is_dir() and not _is_junk(child.name) and child.name != "_phantom_truth"
            )
    raise DataError(
        f"no SPIDER layout ({GRADINGS_FILE} with images/ and masks/) and no plain layout "
        f"({PLAIN_VOLUMES} + {PLAIN_LABELS}) here or two levels below",
        path=root,
    )


# ------------------------------------------------------------------------------ gradings CSV


def read_gradings(path) -> pd.DataFrame:
    """Reads and checks SPIDER's `radiological_gradings.csv`.

    Args:
        path: the CSV file.

    Returns:
        DataFrame with one row per graded disc: `patient` (str), `ivd_label` (int), `modic`,
        `up_endplate`, `low_endplate`, `disc_narrowing`, `pfirrmann_grade`, `spondylolisthesis`,
        `disc_herniation`, `disc_bulging` (ints, -1 = missing), `csv_path`, `csv_row` (the
        1-based line, header = 1). Rows with IVD label 0 are dropped with a warning.
    """
    path = Path(path)
    rows = _read_csv_text(path)
    header = rows[0]
    found = {}
    for index, name in enumerate(header):
        key = _norm_header(name)
        canonical = _COLUMN_ALIASES.get(key)
        if canonical is None:
            canonical = next((c for c in GRADING_COLUMNS if _norm_header(c) == key), None)
        if canonical is not None and canonical not in found:
            found[canonical] = index
    for canonical, (_, _, _, required) in GRADING_COLUMNS.items():
        if required and canonical not in found:
            raise DataError(
                f"missing column (header has {[h.strip() for h in header]})",
                path=path,
                row=1,
                column=canonical,
            )
    records = []
    seen = {}
    for line, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        record = {"csv_path": str(path), "csv_row": line}
        for canonical, (field, low, high, _) in GRADING_COLUMNS.items():
            index = found.get(canonical)
            cell = cells[index] if index is not None and index < len(cells) else ""
            if field == "patient":
                if not cell.strip():
                    raise DataError("empty patient id", path=path, row=line, column=canonical)
                record[field] = _patient_key(cell)
                continue
            value = _parse_int(
                cell,
                low=low,
                high=high,
                binary=high == 1,
                path=path,
                row=line,
                column=canonical,
            )
            if field == "ivd_label" and value is None:
                raise DataError("empty IVD label", path=path, row=line, column=canonical)
            record[field] = -1 if value is None else value
        if record["ivd_label"] == 0:
            warnings.warn(
                f"{path}: row {line}: IVD label 0 names no disc; row skipped", stacklevel=2
            )
            continue
        key = (record["patient"], record["ivd_label"])
        if key in seen:
            raise DataError(
                f"patient {key[0]} disc {key[1]} already graded in row {seen[key]}",
                path=path,
                row=line,
                column="IVD label",
            )
        seen[key] = line
        records.append(record)
    columns = [f for f, *_ in GRADING_COLUMNS.values()] + ["csv_path", "csv_row"]
    return pd.DataFrame(records, columns=columns)


def gradings_to_tasks(gradings) -> pd.DataFrame:
    """Adds the six task columns (class indices, -1 = missing) to a gradings frame (see table)."""
    out = gradings.copy()

    def keep(values):
        return np.where(values >= 0, values, -1).astype(np.int64)

    pfirrmann = out["pfirrmann_grade"].to_numpy(np.int64)
    out["pfirrmann"] = np.where(pfirrmann >= 1, pfirrmann - 1, -1)
    out["narrowing"] = keep(out["disc_narrowing"].to_numpy(np.int64))
    out["upper_endplate"] = keep(out["up_endplate"].to_numpy(np.int64))
    out["lower_endplate"] = keep(out["low_endplate"].to_numpy(np.int64))
    modic = out["modic"].to_numpy(np.int64)
    marrow = np.where(modic >= 0, (modic > 0).astype(np.int64), -1)
    out["upper_marrow"] = marrow
    out["lower_marrow"] = marrow.copy()
    return out


# ------------------------------------------------------------------------------ series


def _series_files(folder, depth=2):
    """The `.mha` files in `folder` and its subfolders up to `depth` levels below (sorted by path).

    Unzipping SPIDER's `images.zip` into a folder named `images` gives `images/images/*.mha`;
    macOS `__MACOSX/` copies, `._*` companions and hidden entries are skipped.
    """
    found = []
    for child in sorted(Path(folder).iterdir()):
        if _is_junk(child.name) or child.name == "__MACOSX":
            continue
        if child.is_file() and child.suffix.lower() == ".mha":
            found.append(child)
        elif child.is_dir() and depth > 0:
            found.extend(_series_files(child, depth - 1))
    return found


def list_series(folder) -> pd.DataFrame:
    """Lists the image series of a SPIDER folder with their masks.

    Series are found in `images/` and up to two folders below it (`images/images/*.mha` when
    `images.zip` was unzipped into a folder named `images`), masks likewise in `masks/`, matched
    by file name ignoring case.

    Args:
        folder: the SPIDER root (holding `images/` and `masks/`).

    Returns:
        DataFrame: `patient`, `sequence` (`t1`, `t2`, `t2_space`), `image_path`, `mask_path`
        (None when `masks/` lacks the file), sorted by patient and sequence.
    """
    folder = Path(folder)
    images = _find_child(folder, "images", True)
    if images is None:
        raise DataError("no images/ folder", path=folder)
    masks = _find_child(folder, "masks", True)
    mask_files = {}
    if masks is not None:
        for path in _series_files(masks):
            mask_files.setdefault(path.name.lower(), path)
    rows = []
    seen = {}
    for path in _series_files(images):
        match = _SERIES_RE.match(path.name)
        if match is None:
            continue
        if path.name.lower() in seen:
            warnings.warn(
                f"{path}: same series as {seen[path.name.lower()]}; the first is used",
                stacklevel=2,
            )
            continue
        seen[path.name.lower()] = path
        mask = mask_files.get(path.name.lower())
        rows.append(
            {
                "patient": _patient_key(match["patient"]),
                "sequence": match["sequence"].lower(),
                "image_path": str(path),
                "mask_path": None if mask is None else str(mask),
            }
        )
    frame = pd.DataFrame(rows, columns=["patient", "sequence", "image_path", "mask_path"])
    frame["mask_path"] = frame["mask_path"].astype(object)
    return frame.sort_values(["patient", "sequence"], kind="stable").reset_index(drop=True)


def _read_mha(path):

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    image = read_metaimage(path)  # header and size checked first, no ITK messages
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"expected a 3-D single-channel series, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components",
            path=path,
        )
    return image


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def mask_labels(mask_path) -> frozenset:
    """Returns the set of labels in a mask file (cached by path and modification time)."""
    import SimpleITK as sitk

    key = (str(mask_path), _mtime(mask_path))
    if key not in _LABEL_CACHE:
        # A view does not keep its image alive: hold the image while the view is read.
        image = _read_mha(mask_path)
        array = sitk.GetArrayViewFromImage(image)
        _LABEL_CACHE[key] = frozenset(int(v) for v in np.unique(array))
        del array, image
    return _LABEL_CACHE[key]


def _physical_box(image):
    """The axis-aligned box (min, max corners in mm) that an image's voxels cover."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint(
            [(-0.5 if bit == 0 else n - 0.5) for bit, n in zip(bits, size)]
        )
        for bits in np.ndindex(*(2,) * len(size))
    ]
    corners = np.asarray(corners)
    return corners.min(axis=0), corners.max(axis=0)


def _mask_on_image_grid(mask, image, mask_path):
    """The mask on the image's voxel grid: as it is when the geometry agrees; resampled (nearest
    label, with a warning) when its direction, spacing or origin differ; an error when the two
    do not overlap in space."""
    import SimpleITK as sitk

    if not _differs_in_geometry(mask, image):
        return mask  # a size that differs is the caller's error
    low_m, high_m = _physical_box(mask)
    low_i, high_i = _physical_box(image)
    if np.any(np.minimum(high_m, high_i) <= np.maximum(low_m, low_i)):
        raise DataError(
            "mask and image do not overlap in space (origin, spacing or direction)", path=mask_path
        )
    warnings.warn(
        f"{mask_path}: the mask's direction, spacing or origin differs from its image's; "
        "resampled onto the image's grid (nearest label)",
        stacklevel=3,
    )
    return sitk.Resample(
        mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID()
    )


def _differs_in_geometry(mask, image):
    return not (
        np.allclose(mask.GetSpacing(), image.GetSpacing(), rtol=1e-4, atol=1e-4)
        and np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
        and np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-4)
    )


def read_series(image_path, mask_path=None, orientation=ORIENTATION):
    """Reads a series (and its mask), reoriented so that array axes are (slice, row, column).

    Args:
        image_path: the `.mha` image.
        mask_path: its `.mha` label map, or None.
        orientation: the DICOM orientation code to reorient to (default `PIL`: slices toward the
            patient's left, rows toward inferior, columns toward posterior).

    Returns:
        `(image, mask, spacing_xyz)`: float32 `(Z, Y, X)`, int32 `(Z, Y, X)` or None, and the voxel
        size `(column, row, slice)` in mm.
    """
    import SimpleITK as sitk

    image = sitk.DICOMOrient(_read_mha(image_path), orientation)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(float(v) for v in image.GetSpacing())
    mask_array = None
    if mask_path is not None:
        mask = sitk.DICOMOrient(
            _mask_on_image_grid(_read_mha(mask_path), image, mask_path), orientation
        )
        mask_array = sitk.GetArrayFromImage(mask).astype(np.int32)
        if mask_array.shape != array.shape:
            raise DataError(
                f"mask size {mask.GetSize()} differs from image size {image.GetSize()} "
                f"({Path(image_path).name})",
                path=mask_path,
            )
    return array, mask_array, spacing


# ------------------------------------------------------------------------------ records


def read_spider(root, *, sequences=SEQUENCES, check_masks=True) -> pd.DataFrame:
    """Reads a SPIDER data set into one record per graded disc.

    Args:
        root: the SPIDER folder (or a folder holding it).
        sequences: sequence preference (`t2`, `t2_space`, `t1`); each disc comes from the first
            of the patient's series, in this order, whose mask contains it.
        check_masks: read the masks to choose the series and to check that every graded disc is
            segmented (a disc found in no mask raises DataError naming the CSV row).

    Graded patients without any series in `images/` are skipped with one warning (DataError
    when no graded patient has a series); a series without its mask is passed over for the
    patient's next one (DataError when none of the patient's series has a mask).

    Returns:
        DataFrame, one row per disc: `patient`, `ivd_label`, `level`, `sequence`, `image_path`,
        `mask_path`, the six task columns, `modic`, `pfirrmann_grade`, `spondylolisthesis`,
        `disc_herniation`, `disc_bulging` (raw grades, -1 missing), `csv_path`, `csv_row`,
        `group` (= patient).
    """
    kind, folder = find_dataset_root(root)
    if kind != "spider":
        raise DataError("not a SPIDER layout", path=folder)
    sequences = tuple(s.lower() for s in sequences)
    unknown = [s for s in sequences if s not in SEQUENCES]
    if unknown:
        raise ValueError(f"Unknown sequence '{unknown[0]}'. Available: {list(SEQUENCES)}")
    csv_path = _find_child(folder, GRADINGS_FILE, False)
    if csv_path is None:
        raise DataError(f"missing {GRADINGS_FILE}", path=folder)
    gradings = gradings_to_tasks(read_gradings(csv_path))
    if gradings.empty:
        raise DataError("no graded disc", path=csv_path)
    series = list_series(folder)
    by_patient = {
        patient: {row.sequence: row for row in group.itertuples()}
        for patient, group in series.groupby("patient")
    }
    chosen = []
    keep = []
    no_series = {}
    no_mask = {}
    on_t1 = {}
    for row in gradings.itertuples():
        available = by_patient.get(row.patient, {})
        candidates = [available[s] for s in sequences if s in available]
        if not candidates:
            # A graded patient without any series (a partial download, or a copy of the CSV
            # beside a subset of the images): skipped, with one warning for all of them.
            no_series.setdefault(row.patient, row.csv_row)
            keep.append(False)
            continue
        with_mask = [c for c in candidates if isinstance(c.mask_path, str)]
        for candidate in candidates:
            if not isinstance(candidate.mask_path, str):
                no_mask[Path(candidate.image_path).name] = candidate.image_path
        if not with_mask:
            name = Path(candidates[0].image_path).name
            raise DataError(
                f"mask missing for {name} (patient {row.patient}, graded in "
                f"{Path(row.csv_path).name} row {row.csv_row})",
                path=Path(folder, "masks", name),
            )
        pick = None
        for candidate in with_mask:
            if not check_masks or 200 + row.ivd_label in mask_labels(candidate.mask_path):
                pick = candidate
                break
        if pick is None:
            raise DataError(
                f"disc {row.ivd_label} ({level_name(row.ivd_label)}, mask label "
                f"{200 + row.ivd_label}) of patient {row.patient} is in no mask "
                f"(first: {Path(with_mask[0].mask_path).name})",
                path=row.csv_path,
                row=row.csv_row,
                column="IVD label",
            )
        if pick.sequence == "t1":
            on_t1.setdefault(row.patient, []).append(int(row.ivd_label))
        chosen.append((pick.sequence, pick.image_path, pick.mask_path))
        keep.append(True)
    if no_mask:
        warnings.warn(
            f"{len(no_mask)} series in images/ without a mask in masks/ (not used): "
            f"{', '.join(sorted(no_mask)[:5])}{' ...' if len(no_mask) > 5 else ''}",
            stacklevel=2,
        )
    if on_t1:
        warnings.warn(
            "no T2 series (or none whose mask has the disc); T1 used for "
            + "; ".join(f"patient {p} discs {d}" for p, d in sorted(on_t1.items())[:5])
            + (" ..." if len(on_t1) > 5 else ""),
            stacklevel=2,
        )
    if no_series:
        listed = ", ".join(f"{p} (row {r})" for p, r in list(no_series.items())[:5])
        more = " ..." if len(no_series) > 5 else ""
        if len(no_series) == gradings["patient"].nunique():
            raise DataError(
                f"no {'/'.join(sequences)} series in images/ for any graded patient "
                f"(first: patient {listed.split(',')[0]})",
                path=csv_path,
                row=next(iter(no_series.values())),
                column="Patient",
            )
        warnings.warn(
            f"{csv_path}: {len(no_series)} graded patient(s) have no {'/'.join(sequences)} "
            f"series in images/ and are skipped: {listed}{more}",
            stacklevel=2,
        )
    gradings = gradings[np.asarray(keep, dtype=bool)]
    records = gradings.copy()
    records["sequence"] = [c[0] for c in chosen]
    records["image_path"] = [c[1] for c in chosen]
    records["mask_path"] = [c[2] for c in chosen]
    records["level"] = [level_name(n) for n in records["ivd_label"]]
    records["group"] = records["patient"]
    columns = [
        "patient",
        "ivd_label",
        "level",
        "sequence",
        "image_path",
        "mask_path",
        *TASKS,
        "modic",
        "pfirrmann_grade",
        "spondylolisthesis",
        "disc_herniation",
        "disc_bulging",
        "csv_path",
        "csv_row",
        "group",
    ]
    return records[columns].reset_index(drop=True)


def read_plain(root) -> pd.DataFrame:
    """Reads the plain layout (`volumes.npy` + `labels.csv`) into one record per volume.

    Returns:
        DataFrame: `volume_path`, `volume_index`, `patient`, the six task columns (class indices,
        -1 missing), `csv_path`, `csv_row`, `group`, and `split` when `labels.csv` has one.
    """
    kind, folder = find_dataset_root(root)
    if kind != "plain":
        raise DataError("not a plain layout", path=folder)
    volumes_path = _find_child(folder, PLAIN_VOLUMES, False)
    labels_path = _find_child(folder, PLAIN_LABELS, False)
    if labels_path is None:
        raise DataError(f"missing {PLAIN_LABELS} beside {PLAIN_VOLUMES}", path=folder)
    try:
        volumes = np.load(volumes_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read array: {error}", path=volumes_path) from None
    if volumes.ndim != 4:
        raise DataError(
            f"expected (N, height, width, slices), got shape {volumes.shape}", path=volumes_path
        )
    rows = _read_csv_text(labels_path)
    header = [_norm_header(h) for h in rows[0]]
    columns = {name: header.index(name) for name in header}
    tasks_present = [t for t in TASKS if _norm_header(t) in columns]
    if not tasks_present:
        raise DataError(f"no task column (expected some of {list(TASKS)})", path=labels_path, row=1)
    data = [cells for cells in rows[1:] if any(c.strip() for c in cells)]
    if len(data) != volumes.shape[0]:
        raise DataError(
            f"{len(data)} label rows for {volumes.shape[0]} volumes in {volumes_path.name}",
            path=labels_path,
        )
    records = []
    for index, cells in enumerate(data):
        line = index + 2
        record = {
            "volume_path": str(volumes_path),
            "volume_index": index,
            "csv_path": str(labels_path),
            "csv_row": line,
        }
        for task in TASKS:
            if task not in tasks_present:
                record[task] = -1
                continue
            cell = (
                cells[columns[_norm_header(task)]]
                if columns[_norm_header(task)] < len(cells)
                else ""
            )
            value = _parse_int(
                cell,
                low=0,
                high=TASK_MAX_CLASS[task],
                binary=TASK_MAX_CLASS[task] == 1,
                path=labels_path,
                row=line,
                column=task,
            )
            record[task] = -1 if value is None else value
        patient = cells[columns["patient"]].strip() if "patient" in columns else ""
        record["patient"] = _patient_key(patient) if patient else f"volume{index}"
        if "split" in columns:
            split = cells[columns["split"]].strip().lower()
            split = {"validation": "val", "valid": "val"}.get(split, split)
            if split not in ("train", "val", "test"):
                raise DataError(
                    f"unknown split {split!r} (train, val, test)",
                    path=labels_path,
                    row=line,
                    column="split",
                )
            record["split"] = split
        records.append(record)
    frame = pd.DataFrame(records)
    frame["group"] = frame["patient"]
    return frame


def assign_splits(records, *, seed=0) -> pd.DataFrame:
    """Adds the paper's 80:10:10 train/val/test split by patient (§5), stratified by Pfirrmann.

    Args:
        records: records from `read_spider` / `read_plain` (with a `group` column).
        seed: seed of the split.

    Returns:
        A copy of `records` with a `split` column ("train", "val", "test").
    """
    from common.splits import split_by_group

    out = records.copy()
    strata = out["pfirrmann"].where(out["pfirrmann"] >= 0)
    out["_stratum"] = strata
    out["split"] = split_by_group(
        out,
        group_col="group",
        stratify_col="_stratum",
        fractions={"train": 0.9, "test": 0.1},
        val_fraction_of_train=1.0 / 9.0,
        seed=seed,
    )
    return out.drop(columns="_stratum")


def read_dataset(root, *, seed=0, sequences=SEQUENCES, check_masks=True) -> pd.DataFrame:
    """Reads either layout into records with a `split` column (the file's, or 80:10:10 by patient).

    Args:
        root: the data set folder or a folder holding it.
        seed: seed of the patient split.
        sequences: SPIDER sequence preference (see `read_spider`).
        check_masks: SPIDER: check that every graded disc is in a mask.

    Returns:
        The records DataFrame (see `read_spider` and `read_plain`) with `split`.
    """
    kind, folder = find_dataset_root(root)
    if kind == "spider":
        records = read_spider(folder, sequences=sequences, check_masks=check_masks)
    else:
        records = read_plain(folder)
    if "split" not in records.columns:
        records = assign_splits(records, seed=seed)
    return records


def inspect_dataset(root) -> dict:
    """Summarises a data set as the JSON object of CONTRACT.md (no volume is read).

    Args:
        root: the data set folder or a folder holding it.

    Returns:
        `{"patients", "discs", "series", "modic_counts": {"0".."3"}, "pfirrmann_counts":
        {"1".."5"}}`: graded patients and discs of the gradings CSV, image series found in
        `images/`, and the label counts (missing labels not counted). The plain layout gives the
        same keys (series 0; Modic unknown there, counted as 0).
    """
    kind, folder = find_dataset_root(root)
    if kind == "spider":
        csv_path = _find_child(folder, GRADINGS_FILE, False)
        if csv_path is None:
            raise DataError(f"missing {GRADINGS_FILE}", path=folder)
        gradings = read_gradings(csv_path)
        series = list_series(folder)
        modic = gradings["modic"]
        grades = gradings["pfirrmann_grade"]
        patients = gradings["patient"].nunique()
        discs = len(gradings)
        n_series = len(series)
    else:
        records = read_plain(folder)
        modic = pd.Series([], dtype=np.int64)
        grades = records["pfirrmann"].where(records["pfirrmann"] < 0, records["pfirrmann"] + 1)
        patients = records["patient"].nunique()
        discs = len(records)
        n_series = 0
    if discs == 0:
        where = csv_path if kind == "spider" else folder
        raise DataError("no graded discs: the data set is empty", path=where)
    return {
        "patients": int(patients),
        "discs": int(discs),
        "series": int(n_series),
        "modic_counts": {str(k): int((modic == k).sum()) for k in range(4)},
        "pfirrmann_counts": {str(k): int((grades == k).sum()) for k in range(1, 6)},
    }


# ------------------------------------------------------------------------------ disc volumes


def _project(points_mm, centre, axis):
    return (points_mm - centre) @ axis


def label_index(mask) -> dict:
    """Returns `{label: (zz, yy, xx)}` voxel indices of every non-zero label, in one pass."""
    flat = mask.ravel()
    where = np.flatnonzero(flat)
    values = flat[where]
    order = np.argsort(values, kind="stable")
    where, values = where[order], values[order]
    labels, starts = np.unique(values, return_index=True)
    bounds = list(starts[1:]) + [len(values)]
    out = {}
    for value, start, stop in zip(labels, starts, bounds):
        out[int(value)] = np.unravel_index(where[start:stop], mask.shape)
    return out


def extract_disc_volume(
    image,
    mask,
    spacing_xyz,
    ivd_label,
    *,
    shape_hw=VOLUME_SHAPE[:2],
    slices=VOLUME_SHAPE[2],
    margin_px=0,
    extra_slices=0,
    vertebra_fraction=0.4,
    slice_spacing_mm=4.0,
    resample_below_mm=2.5,
    label_volumes=(),
    source=None,
    labels_by_value=None,
):
    """Cuts the normalised disc volume of §4 out of a reoriented series.

    Args:
        image: float32 `(Z, Y, X)` from `read_series` (slices, rows superior->inferior, columns
            anterior->posterior).
        mask: int `(Z, Y, X)` SPIDER label map of the same series.
        spacing_xyz: voxel size `(column, row, slice)` in mm.
        ivd_label: SPIDER `IVD label` N (mask label 200 + N).
        shape_hw: `(height, width)` of a slice of the volume, default (112, 224).
        slices: number of slices, default 9.
        margin_px: extra pixels of context on each side (same grid, same normalisation).
        extra_slices: extra slices of context on each side.
        vertebra_fraction: fraction of each vertebra's height inside the crop (0.4, §4).
        slice_spacing_mm: slice spacing to resample thin-slice series to (4 mm, the paper's median).
        resample_below_mm: series with slices thinner than this are resampled.
        label_volumes: further `(Z, Y, X)` label arrays (e.g. lesion masks) to cut with the same
            geometry (nearest neighbour).
        source: file name used in messages.
        labels_by_value: optional `label_index(mask)`, to share its work between the discs of
            one series.

    Returns:
        `(volume, info)`: float32 `(H + 2m, W + 2m, slices + 2e)` in [0, 1], and a dict with
        `regions` (uint8 same shape: 1 upper vertebra, 2 disc, 3 lower vertebra, 0 else),
        `labels` (the cut `label_volumes`), `pixel_mm`, `angle_deg` (of the disc's AP axis),
        `centre_mm`, `slice_positions`, `real_slices` (bool per slice), `upper_label`,
        `lower_label`, `padded` (slices of the 9 that are zeros).
    """
    import cv2

    height, width = (int(v) for v in shape_hw)
    sx, sy, sz = (float(v) for v in spacing_xyz)
    disc_value = 200 + int(ivd_label)
    if labels_by_value is None:
        labels_by_value = label_index(mask)
    empty = (np.zeros(0, int),) * 3
    zz, yy, xx = labels_by_value.get(disc_value, empty)
    if zz.size == 0:
        raise DataError(
            f"mask has no disc {ivd_label} (label {disc_value})", path=source, column="IVD label"
        )
    points = np.stack([xx * sx, yy * sy], axis=1)
    centre = points.mean(axis=0)
    if zz.size >= 3:
        evals, evecs = np.linalg.eigh(np.cov((points - centre).T) + 1e-9 * np.eye(2))
        u = evecs[:, int(np.argmax(evals))]
    else:
        u = np.array([1.0, 0.0])
    if u[0] < 0:
        u = -u
    n = np.array([u[1], -u[0]])  # perpendicular to the disc, pointing superior (up)
    along = _project(points, centre, u)
    half_length = max(0.5 * float(np.percentile(along, 98) - np.percentile(along, 2)), 1.0)
    z_centre = float(zz.mean())
    z_lo, z_hi = int(zz.min()), int(zz.max())

    # The two vertebrae: nearest labelled vertebra centroid above and below along the normal.
    step = slice_spacing_mm / sz if sz < resample_below_mm else 1.0
    reach = max(2.0, (slices / 2.0 + extra_slices) * step)
    upper = lower = None
    best_up = best_low = np.inf
    vertebra_points = {}
    for value, (vz, vy, vx) in labels_by_value.items():
        if value not in _VERTEBRA_LABELS:
            continue
        near = np.abs(vz - z_centre) <= reach
        if near.sum() < 3:
            continue
        vp = np.stack([vx[near] * sx, vy[near] * sy], axis=1)
        in_band = np.abs(_project(vp, centre, u)) <= half_length
        if in_band.sum() < 3:
            continue
        vp = vp[in_band]
        d = float(np.median(_project(vp, centre, n)))
        vertebra_points[value] = vp
        if 0 < d < best_up:
            best_up, upper = d, value
        if d < 0 and -d < best_low:
            best_low, lower = -d, value
    reaches = []
    if upper is not None:
        proj = _project(vertebra_points[upper], centre, n)
        near, far = np.percentile(proj, 2), np.percentile(proj, 98)
        reaches.append(near + vertebra_fraction * (far - near))
    if lower is not None:
        proj = -_project(vertebra_points[lower], centre, n)
        near, far = np.percentile(proj, 2), np.percentile(proj, 98)
        reaches.append(near + vertebra_fraction * (far - near))
    if reaches:
        half_height = float(np.mean(reaches))
    else:
        half_height = half_length
        warnings.warn(
            f"{source}: disc {ivd_label} has no labelled vertebra above or below; crop height "
            "set to the disc's AP length",
            stacklevel=2,
        )
    pixel_mm = 2.0 * half_height / height

    out_h, out_w = height + 2 * margin_px, width + 2 * margin_px
    a_col = u[0] * pixel_mm / sx
    b_col = -n[0] * pixel_mm / sx
    a_row = u[1] * pixel_mm / sy
    b_row = -n[1] * pixel_mm / sy
    j0, i0 = (out_w - 1) / 2.0, (out_h - 1) / 2.0
    matrix = np.array(
        [
            [a_col, b_col, centre[0] / sx - a_col * j0 - b_col * i0],
            [a_row, b_row, centre[1] / sy - a_row * j0 - b_row * i0],
        ],
        dtype=np.float64,
    )

    z_mid = z_centre if step != 1.0 else float(np.round(z_centre))
    total = slices + 2 * extra_slices
    positions = z_mid + (np.arange(total) - (total - 1) / 2.0) * step
    real = (positions >= z_lo - 0.5) & (positions <= z_hi + 0.5)
    real &= (positions >= 0) & (positions <= mask.shape[0] - 1)

    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    nearest = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    warp_kw = dict(dsize=(out_w, out_h), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    codes = np.zeros(mask.shape[1:], dtype=np.uint8)
    image_cache, code_cache, label_cache = {}, {}, {}

    def warped(z):
        if z not in image_cache:
            image_cache[z] = cv2.warpAffine(image[z], matrix, flags=flags, **warp_kw)
            codes[:] = 0
            if upper is not None:
                codes[mask[z] == upper] = 1
            codes[mask[z] == disc_value] = 2
            if lower is not None:
                codes[mask[z] == lower] = 3
            code_cache[z] = cv2.warpAffine(codes, matrix, flags=nearest, **warp_kw)
            label_cache[z] = [
                cv2.warpAffine(
                    np.ascontiguousarray(lv[z], dtype=np.float32), matrix, flags=nearest, **warp_kw
                )
                for lv in label_volumes
            ]
        return image_cache[z], code_cache[z], label_cache[z]

    volume = np.zeros((out_h, out_w, total), dtype=np.float32)
    regions = np.zeros((out_h, out_w, total), dtype=np.uint8)
    labels = [np.zeros((out_h, out_w, total), dtype=np.float32) for _ in label_volumes]
    for k in np.flatnonzero(real):
        z0 = int(np.floor(positions[k]))
        z1 = min(z0 + 1, mask.shape[0] - 1)
        w1 = float(positions[k] - z0)
        img0, code0, lab0 = warped(z0)
        if w1 > 1e-6 and z1 != z0:
            img1, code1, lab1 = warped(z1)
            volume[..., k] = (1.0 - w1) * img0 + w1 * img1
            pick = w1 >= 0.5
            regions[..., k] = code1 if pick else code0
            for idx in range(len(labels)):
                labels[idx][..., k] = (lab1 if pick else lab0)[idx]
        else:
            volume[..., k] = img0
            regions[..., k] = code0
            for idx in range(len(labels)):
                labels[idx][..., k] = lab0[idx]

    # Normalisation: median of the two vertebral bodies (inside the 112 x 224 crop and the disc's
    # AP extent) is 0.5 in every slice.
    cols = (np.arange(out_w) - j0) * pixel_mm
    band = np.abs(cols) <= half_length
    inner = np.zeros((out_h, out_w), dtype=bool)
    inner[margin_px : margin_px + height, margin_px : margin_px + width] = True
    inner &= band[None, :]
    body = ((regions == 1) | (regions == 3)) & inner[..., None]
    all_body = volume[body]
    if all_body.size:
        fallback = float(np.median(all_body))
    else:
        crop = volume[inner][volume[inner] > 0]
        fallback = float(np.median(crop)) if crop.size else 1.0
        warnings.warn(
            f"{source}: disc {ivd_label}: no vertebral body in the crop; slices normalised by "
            "the crop's median",
            stacklevel=2,
        )
    for k in np.flatnonzero(real):
        values = volume[..., k][body[..., k]]
        median = float(np.median(values)) if values.size >= 20 else fallback
        if median <= 0:
            median = fallback if fallback > 0 else 1.0
        volume[..., k] = volume[..., k] * (0.5 / median)
    np.clip(volume, 0.0, 1.0, out=volume)

    inner_real = real[extra_slices : extra_slices + slices]
    padded = int((~inner_real).sum())
    if padded:
        warnings.warn(
            f"{source}: disc {ivd_label} spans {slices - padded} of {slices} slices; "
            f"{padded} zero-padded",
            stacklevel=2,
        )
    info = {
        "regions": regions,
        "labels": labels,
        "pixel_mm": pixel_mm,
        "angle_deg": float(np.degrees(np.arctan2(u[1], u[0]))),
        "centre_mm": tuple(float(v) for v in centre),
        "slice_positions": positions,
        "real_slices": real,
        "upper_label": upper,
        "lower_label": lower,
        "padded": padded,
    }
    return volume, info


def _cache_key(record, context, margin_px, extra_slices):
    if "volume_path" in record and isinstance(record.get("volume_path"), str):
        return (
            "plain",
            record["volume_path"],
            _mtime(record["volume_path"]),
            int(record["volume_index"]),
            bool(context),
            int(margin_px),
            int(extra_slices),
        )
    return (
        record["image_path"],
        record["mask_path"],
        _mtime(record["image_path"]),
        _mtime(record["mask_path"]),
        int(record["ivd_label"]),
        bool(context),
        int(margin_px),
        int(extra_slices),
    )


def clear_cache():
    """Empties the in-memory caches of extracted volumes and mask labels."""
    _VOLUME_CACHE.clear()
    _LABEL_CACHE.clear()


def load_volumes(
    records,
    *,
    context=False,
    margin_px=CONTEXT_MARGIN_PX,
    extra_slices=CONTEXT_EXTRA_SLICES,
    cache=True,
    cache_dir=None,
    dtype=np.float16,
    progress=None,
) -> np.ndarray:
    """Extracts (or fetches from the cache) the disc volume of every record.

    Args:
        records: records from `read_dataset`.
        context: also cut `margin_px` pixels and `extra_slices` slices of context on each side
            (for test-time augmentation); plain-layout volumes are zero-padded instead.
        margin_px: context pixels on each side (16: the TTA patches' offset).
        extra_slices: context slices on each side (1: the TTA slice shift).
        cache: keep extracted volumes in memory for the next call.
        cache_dir: optional folder for `.npz` files of extracted volumes (kept across processes).
        dtype: dtype of the returned array (float16 halves the memory; values are in [0, 1]).
        progress: show a progress bar (default: when more than 200 discs are extracted).

    Returns:
        Array `(N, 112, 224, 9)`, or `(N, 144, 256, 11)` with context.
    """
    from common.progress import progress as _progress

    records = records.reset_index(drop=True)
    if len(records) == 0:
        raise DataError("no records to load (empty split?)")
    out = [None] * len(records)
    todo = {}
    for index, record in enumerate(records.to_dict("records")):
        key = _cache_key(record, context, margin_px, extra_slices)
        if cache and key in _VOLUME_CACHE:
            out[index] = _VOLUME_CACHE[key]
            continue
        if key[0] == "plain":
            volume = np.asarray(
                np.load(record["volume_path"], mmap_mode="r")[int(record["volume_index"])],
                dtype=np.float32,
            )
            if context:
                volume = np.pad(
                    volume, [(margin_px, margin_px), (margin_px, margin_px), (extra_slices,) * 2]
                )
            out[index] = volume.astype(dtype)
            if cache:
                _VOLUME_CACHE[key] = out[index]
            continue
        disk = None
        if cache_dir is not None:
            digest = hashlib.sha1(repr(key).encode()).hexdigest()[:20]
            disk = Path(cache_dir, f"disc_{digest}.npz")
            if disk.is_file():
                with np.load(disk) as stored:
                    out[index] = stored["volume"].astype(dtype)
                if cache:
                    _VOLUME_CACHE[key] = out[index]
                continue
        todo.setdefault((record["image_path"], record["mask_path"]), []).append(
            (index, record, key, disk)
        )
    total = sum(len(v) for v in todo.values())
    show = total > 200 if progress is None else bool(progress)
    bar = _progress(total=total, desc="extracting disc volumes", unit="discs", enabled=show)
    for (image_path, mask_path), items in todo.items():
        image, mask, spacing = read_series(image_path, mask_path)
        by_value = label_index(mask)
        for index, record, key, disk in items:
            try:
                volume, _ = extract_disc_volume(
                    image,
                    mask,
                    spacing,
                    record["ivd_label"],
                    margin_px=margin_px if context else 0,
                    extra_slices=extra_slices if context else 0,
                    source=Path(image_path).name,
                    labels_by_value=by_value,
                )
            except DataError as error:
                raise DataError(
                    error.reason,
                    path=mask_path,
                    row=record.get("csv_row"),
                    column=error.column,
                ) from None
            volume = volume.astype(dtype)
            out[index] = volume
            if cache:
                _VOLUME_CACHE[key] = volume
            if disk is not None:
                disk.parent.mkdir(parents=True, exist_ok=True)
                tmp = disk.with_name(f".{disk.stem}.{os.getpid()}.tmp.npz")
                np.savez_compressed(tmp, volume=volume)
                os.replace(tmp, disk)
            bar.update(1)
    bar.close()
    return np.stack(out)


# ------------------------------------------------------------------------------ tf.data


def _config(config):
    from spinenet.model import get_config

    if isinstance(config, str):
        return get_config(config)
    return config


def task_targets(records, config) -> dict:
    """The integer targets of the model's tasks (`-1` = missing), checked against their classes.

    Args:
        records: records DataFrame.
        config: model configuration (dict from `spinenet.model.get_config`) or preset name.

    Returns:
        dict task -> int32 array (N,). A task the data set lacks is all -1 (missing, not 0).
    """
    config = _config(config)
    targets = {}
    for task, classes in config["tasks"].items():
        if task not in records.columns:
            targets[task] = np.full(len(records), -1, dtype=np.int32)
            continue
        values = records[task].to_numpy(np.int64)
        bad = np.flatnonzero(values >= classes)
        if bad.size:
            row = records.iloc[int(bad[0])]
            raise DataError(
                f"label {values[bad[0]]} outside 0..{classes - 1} for task '{task}' "
                f"({classes} classes in this configuration)",
                path=row.get("csv_path"),
                row=row.get("csv_row"),
                column=task,
            )
        targets[task] = values.astype(np.int32)
    return targets


def augment_config(config):
    """The paper's training augmentation (§4) as a `common.augment.AugmentConfig`."""
    from common.augment import AugmentConfig

    config = _config(config)
    return AugmentConfig(
        rotation_deg=float(config["rotation_deg"]),
        translate_px=(float(config["shift_x_px"]), float(config["shift_y_px"])),
        zoom_range=tuple(float(v) for v in config["scale_range"]),
        intensity_delta=float(config["intensity_delta"]),
        flip_slices=bool(config["slice_flip"]),
        shift_slices=int(config["shift_slices"]),
    )


def class_weights(records, config) -> dict:
    """Class-balanced weights alpha_c = 1/freq(c) per task from (training) records (§2).

    Returns:
        dict task -> float array (classes,), from `common.losses.class_balanced_weights`; a task
        without any label gets weights of 1.
    """
    from common.losses import class_balanced_weights

    config = _config(config)
    targets = task_targets(records, config)
    weights = {}
    for task, classes in config["tasks"].items():
        labels = targets[task]
        if (labels >= 0).any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                weights[task] = class_balanced_weights(labels, classes)
        else:
            weights[task] = np.ones(classes)
    return weights


def make_dataset(records, *, config, training, batch_size, seed=0, volumes=None):
    """A batched tf.data pipeline of disc volumes and their task labels.

    Volumes are extracted once (`load_volumes`, cached), then `common.augment.make_volume_dataset`
    shuffles and applies the paper's augmentation (§4) when `training`. The per-channel mean is
    subtracted inside the model (`mean_subtraction`).

    Args:
        records: records of one split (`read_dataset(...)` filtered by `split`).
        config: model configuration dict (`spinenet.model.get_config`) or preset name.
        training: shuffle and augment.
        batch_size: examples per batch.
        seed: seed of shuffling and augmentation (pass a new one per epoch for fresh draws).
        volumes: optional pre-loaded array `(N, 112, 224, 9)` for `records`.

    Returns:
        `tf.data.Dataset` of `(volume (B, 112, 224, 9) float32, {task: (B,) int32})`; a missing
        label is -1 (use `common.losses.MaskedSparseCategoricalCrossentropy`, which ignores it).
    """
    from common.augment import make_volume_dataset

    config = _config(config)
    if len(records) == 0:
        raise DataError("empty split: no records")
    targets = task_targets(records, config)
    if volumes is None:
        volumes = load_volumes(records)
    expected = tuple(config["input_shape"])
    if tuple(volumes.shape[1:]) != expected:
        source = records.iloc[0].get("volume_path") or records.iloc[0].get("image_path")
        raise DataError(
            f"volumes have shape {tuple(volumes.shape[1:])}, the model expects {expected}",
            path=source,
        )
    return make_volume_dataset(
        volumes,
        targets,
        batch_size=batch_size,
        training=training,
        seed=seed,
        augment=augment_config(config) if training else None,
        cache=False,
    )
