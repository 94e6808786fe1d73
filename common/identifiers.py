"""How outputs name their inputs, so that no patient identifier reaches any output.

Real DICOM archives put patients' names and IDs into file and folder names
(`PHIID8675309_knee.dcm`, `Zyxwvut_Phiqlmn/`) as well as into the tags. So every `predict`
names a DICOM input only by

- a salted hash, `dcm-<16 hex>` (the default): HMAC-SHA-256 of the input's SOP Instance UID
  (the absolute path when it has none) under a secret salt. The salt is per output folder: a
  random one is written to `OUT/.identifier-salt` (mode 0600) by the first `predict` into that
  folder and reused by later ones, so names are stable within a folder and cannot be linked
  across folders, nor reversed by hashing a guessed UID. Set `MSK_IDENTIFIER_SALT` to use one salt
  of your own for every folder (per user), e.g. to link results across runs;
- or, with `--link-uids`, its SOP Instance UID, and `predictions.csv` then also carries the
  `study_instance_uid`, `series_instance_uid` and `sop_instance_uid` of every DICOM input, so
  that results can be linked back inside the user's own archive.

Non-DICOM inputs (PNG, JPEG, ...) keep their file names. Names, IDs, birth dates, and file or
folder names of DICOM inputs never appear in `predictions.csv`, overlay file names, DICOM
outputs, logs, stdout or stderr; reports carry neither the hashes nor the UIDs of DICOM inputs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import warnings
from pathlib import Path

from common.image_io import is_dicom_file

SALT_FILE = ".identifier-salt"
SALT_ENV = "MSK_IDENTIFIER_SALT"
UID_COLUMNS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")
_UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def output_salt(out_dir):
    """The salt of the hashes written into `out_dir`: `$MSK_IDENTIFIER_SALT`, else the folder's own.

    Args:
        out_dir: the output folder; its `.identifier-salt` is created (random, mode 0600) when
            absent.

    Returns:
        str.
    """
    salt = os.environ.get(SALT_ENV)
    if salt:
        return salt
    path = Path(out_dir) / SALT_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    os.makedirs(out_dir, exist_ok=True)
    salt = secrets.token_hex(16)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another predict into the same folder was first
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(salt + "\n")
    return salt


def salted_hash(value, salt, *, prefix="dcm-", length=16):
    """`prefix` + the first `length` hex digits of HMAC-SHA-256(salt, value)."""
    digest = hmac.new(str(salt).encode(), str(value).encode(), hashlib.sha256).hexdigest()
    return prefix + digest[:length]


def read_dicom_header(path, tags):
    """Selected tags of a DICOM file's header (no pixels), or {} when it cannot be read.

    Args:
        path: a DICOM file.
        tags: keywords, e.g. `("SOPInstanceUID", "PatientSex")`.

    Returns:
        dict keyword -> str for the tags present and non-empty.
    """
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=list(tags), force=True
            )
    except Exception:  # noqa: BLE001  (unreadable headers fail later, when the pixels are read)
        return {}
    found = {}
    for tag in tags:
        value = ds.get(tag)
        if value is not None and str(value).strip():
            found[tag] = str(value).strip()
    return found


def dicom_sex(path):
    """A DICOM file's `PatientSex` as 1 (M), 0 (F), or None (absent, `O`, or not DICOM)."""
    if not is_dicom_file(path):
        return None
    sex = read_dicom_header(path, ("PatientSex",)).get("PatientSex", "").upper()
    return {"M": 1, "F": 0}.get(sex)


def report_caption(path):
    """An image's name in report captions: its file name, or "DICOM image" for DICOM files.

    Reports carry neither the hashes nor the UIDs of DICOM inputs, and never their file names.
    """
    return "DICOM image" if is_dicom_file(path) else Path(path).name


def data_name(path, out_dir):
    """An image's name in an evaluation's `predictions.csv`: its file name, or for DICOM files
    the salted hash of `InputNames` (salt of `out_dir`)."""
    if not is_dicom_file(path):
        return Path(path).name
    return InputNames(out_dir).name(path)


class InputNames:
    """The names of a `predict`'s inputs in its outputs (see the module docstring).

    Args:
        out_dir: the output folder (its salt).
        link_uids: name DICOM inputs by SOP Instance UID and add the UID columns.
    """

    def __init__(self, out_dir, *, link_uids=False):
        self.out_dir = os.fspath(out_dir)
        self.link_uids = bool(link_uids)
        self._salt = None
        self._uids = {}

    @property
    def salt(self):
        if self._salt is None:
            self._salt = output_salt(self.out_dir)
        return self._salt

    def is_dicom(self, path):
        """Whether the input is a DICOM file (by suffix or content)."""
        return is_dicom_file(path)

    def uids(self, path):
        """The Study, Series and SOP Instance UIDs of a DICOM input (`UID_COLUMNS` keys, '' if absent)."""
        key = os.path.abspath(os.fspath(path))
        if key not in self._uids:
            header = read_dicom_header(path, _UID_TAGS) if self.is_dicom(path) else {}
            self._uids[key] = {
                column: header.get(tag, "") for column, tag in zip(UID_COLUMNS, _UID_TAGS)
            }
        return self._uids[key]

    def name(self, path):
        """The input's name in outputs: its file name, or for DICOM its hash / SOP Instance UID."""
        if not self.is_dicom(path):
            return Path(path).name
        sop = self.uids(path)["sop_instance_uid"]
        if self.link_uids and sop:
            return sop
        return salted_hash(sop or os.path.abspath(os.fspath(path)), self.salt)

    def stem(self, path):
        """The input's name without suffix, for overlay file names (`<stem>_cam.png`)."""
        return Path(path).stem if not self.is_dicom(path) else self.name(path)

    def group(self, path, value, *, tag="StudyInstanceUID"):
        """The name of a group an input belongs to (a study, a patient), free of identifiers.

        Non-DICOM inputs keep `value` (e.g. their study folder); DICOM inputs get the group's
        UID with `link_uids` (the `tag` of the header, e.g. the StudyInstanceUID), else a salted
        hash of that UID, or of `value` when the header lacks it.
        """
        if not self.is_dicom(path):
            return value
        uid = read_dicom_header(path, (tag,)).get(tag, "")
        if self.link_uids and uid:
            return uid
        return salted_hash(uid or value, self.salt, prefix="grp-")

    def uid_columns(self, paths):
        """The UID columns of `predictions.csv` (dict column -> list) with `link_uids`, else {}."""
        if not self.link_uids:
            return {}
        rows = [self.uids(p) for p in paths]
        return {column: [row[column] for row in rows] for column in UID_COLUMNS}


__all__ = [
    "InputNames",
    "SALT_ENV",
    "SALT_FILE",
    "UID_COLUMNS",
    "data_name",
    "dicom_sex",
    "output_salt",
    "read_dicom_header",
    "report_caption",
    "salted_hash",
]
