"""Tiny saved models of every package and DICOM files full of marker strings (identifier tests).

Every identifying place of a marked DICOM input holds a marker: its file name, its folder names
and its identifying tags (names, IDs, birth date, accession number, institution, descriptions).
A test then greps every output for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Markers, one per identifying place (upper case: case-insensitive greps find lower-case copies).
NAME = "PHINAMEZYXWVUT"
PATIENT_ID = "PHIID8675309"
BIRTH_DATE = "19010203"
ACCESSION = "PHIACCQWERTY"
OTHER = "PHIOTHERPLMOKN"  # institution, physicians, descriptions, other IDs
FOLDER = "Zyxwvut_PHIFOLDER"
FILE = "PHIFILE8675309"
MARKERS = (NAME, PATIENT_ID, BIRTH_DATE, ACCESSION, OTHER, FOLDER, FILE, "Zyxwvut")


def write_marked_dicom(path, *, seed=0, shape=(96, 96), sex="F", study_uid=None):
    """Writes a 16-bit MONOCHROME2 DX DICOM whose identifying tags all hold markers.

    Returns:
        The pydicom Dataset written (its UIDs).
    """
    from pydicom.dataset import FileDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.uid import generate_uid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = f"{NAME}^Zyxwvut"
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = sex
    ds.OtherPatientIDs = OTHER
    ds.AccessionNumber = ACCESSION
    ds.StudyID = OTHER[:16]
    ds.InstitutionName = OTHER
    ds.ReferringPhysicianName = f"{OTHER}^Dr"
    ds.StudyDescription = OTHER
    ds.SeriesDescription = OTHER
    ds.StudyDate = BIRTH_DATE
    ds.Modality = "DX"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = 1500 + 1000 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + rng.normal(0, 80, shape)
    ds.PixelData = np.clip(image, 0, 4095).astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return ds


def save_tiny_model(package_name, folder):
    """Builds and saves an untrained, small model of a package; returns its `.keras` path.

    deepra's run folder holds its six joint models (demo size, no detectors: prior boxes) and a
    `config.json` as `deepra.train` writes it.
    """
    import importlib

    from common.export import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    package = importlib.import_module(package_name)
    if package_name == "deepra":
        from deepra.columns import JOINT_MODELS
        from deepra.joints import build_joint_model
        from deepra.joints import joint_model_config
        from deepra.pipeline import MAIN_MODEL

        for key in JOINT_MODELS:
            config = joint_model_config(key, demo=True, image_size_hw=(32, 32))
            target = folder / ("model.keras" if key == MAIN_MODEL else f"models/{key}.keras")
            target.parent.mkdir(parents=True, exist_ok=True)
            save_model(build_joint_model(config), target)
        run = {"package": "deepra", "models": list(JOINT_MODELS), "main_model": MAIN_MODEL}
        (folder / "config.json").write_text(json.dumps(run))
        return folder / "model.keras"
    overrides = {
        "kneeoa": {},
        "boneage": {"image_size_hw": (80, 80)},
        "mura": {"input_shape": (64, 64, 3), "blocks": (1, 1, 1)},
    }[package_name]
    model = package.build_model("demo", **overrides)
    save_model(model, folder / "model.keras")
    return folder / "model.keras"


def grep_markers(root, *texts):
    """Markers found in every file name and file content under `root`, and in `texts`.

    Returns:
        list of `(where, marker)`; empty when nothing leaked.
    """
    found = []
    for path in sorted(Path(root).rglob("*")):
        for marker in MARKERS:
            if marker.lower() in str(path.relative_to(root)).lower():
                found.append((str(path), marker))
        if path.is_file():
            data = path.read_bytes().lower()
            for marker in MARKERS:
                if marker.lower().encode() in data:
                    found.append((f"{path} (content)", marker))
    for i, text in enumerate(texts):
        for marker in MARKERS:
            if marker.lower() in str(text).lower():
                found.append((f"text {i}", marker))
    return found
