"""DICOM results of `predict --dicom-out DIR`: a Secondary Capture and a Comprehensive SR per input.

For each DICOM input, `write_dicom_results` writes (with highdicom)

- `DIR/<name>_sc.dcm`: a Secondary Capture image (RGB) of the input's overlay (the explanation
  map the package draws with `--explain`, with the prediction), in the input's study, in a new
  series;
- `DIR/<name>_sr.dcm`: a Comprehensive SR (TID 1500 measurement report) with the prediction as
  numeric measurements and coded findings, whose measurement group references the source
  instance (SOP Class and Instance UID) as its source image, and which lists the input and the
  Secondary Capture as evidence.

`<name>` is the input's name in outputs (`common.identifiers.InputNames`: a salted hash, or the
SOP Instance UID with `--link-uids`). Both objects keep the input's Study Instance UID, so that the
archive files them beside the source, but none of its patient identifiers: patient name, ID,
birth date, sex, accession number and study dates are left empty (they are Type 2 attributes),
and nothing is copied from file or folder names. An archive that requires them can fill them by
reconciliation on the Study Instance UID. The SOP Class is Secondary Capture Image Storage and
Comprehensive SR Storage; both validate with dicom3tools' `dciodvfy` without errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

# A private coding scheme for the suite's concepts (DICOM PS3.16 8.2: 99 + a local designator).
CODING_SCHEME = "99MSK"
MANUFACTURER = "msk-radiology suite (research use only)"
_HEADER_TAGS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "PatientOrientation",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
    "Laterality",
)
# Type 2 attributes that DICOM requires present, left empty (no patient identifiers out).
_EMPTY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def _code(text):
    """A concept of the suite's private coding scheme: value from `text`, meaning `text`."""
    from highdicom.sr import CodedConcept

    value = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").upper()[:16] or "VALUE"
    return CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=str(text)[:64])


def _unit(ucum):
    from highdicom.sr import CodedConcept

    meanings = {"1": "no units", "mo": "months", "{grade}": "grade", "{score}": "score"}
    return CodedConcept(value=ucum, scheme_designator="UCUM", meaning=meanings.get(ucum, ucum))


def source_reference(path):
    """The source instance's UIDs and modality, without patient identifiers (a pydicom Dataset).

    Args:
        path: the DICOM input.

    Returns:
        pydicom Dataset with the study / series / SOP UIDs, SOP Class, Modality, and the Type 2
        patient and study attributes present but empty.

    Raises:
        DataError: the input has no SOP Instance UID or Study Instance UID to reference.
    """
    import warnings

    import pydicom

    from common.errors import DataError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001  (pydicom raises many kinds)
        raise DataError(f"--dicom-out: unreadable DICOM header ({type(exc).__name__})") from None
    missing = [
        t for t in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID") if not source.get(t)
    ]
    if missing:
        raise DataError(f"--dicom-out: the DICOM input has no {missing[0]} to reference")
    ds = pydicom.Dataset()
    for tag in _HEADER_TAGS:
        if tag in source:
            ds[tag] = source[tag]
    if not ds.get("SeriesInstanceUID"):
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = ds.get("Modality") or "OT"
    for tag in _EMPTY_TYPE2:
        setattr(ds, tag, "")
    return ds


def write_dicom_results(
    source_path,
    out_dir,
    *,
    name,
    overlay_rgb,
    measurements=(),
    findings=(),
    package="",
    version="",
):
    """Writes the Secondary Capture and the Comprehensive SR of one DICOM input.

    Args:
        source_path: the DICOM input.
        out_dir: the `--dicom-out` folder.
        name: the input's name in outputs (hash or SOP Instance UID), the files' stem.
        overlay_rgb: uint8 `(H, W, 3)`: the overlay with the prediction drawn in.
        measurements: `(label, value, ucum_unit)` triples, e.g. `("KL grade", 2, "{grade}")`,
            `("probability of abnormality", 0.83, "1")`, `("bone age", 131.2, "mo")`.
        findings: `(label, text)` pairs, coded findings, e.g. `("finding", "abnormal")`.
        package: the package that predicted (the SR's algorithm name).
        version: the suite's version.

    Returns:
        `(sc_path, sr_path)`.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from common.fileio import atomic_write_bytes

    ref = source_reference(source_path)
    rgb = np.ascontiguousarray(np.asarray(overlay_rgb, np.uint8))
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"overlay_rgb must be (H, W, 3), got {rgb.shape}")
    series_sc = hd.UID()
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_sc,
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # placeholder; replaced by the source's value below
    )
    sc.PatientOrientation = ref.get("PatientOrientation", "")
    sc.Laterality = ref.get("Laterality", "")  # Type 2C: present, empty when the source has none
    sc.SeriesDescription = f"{package} overlay (research use only)"[:64]
    sc.DerivationDescription = "overlay of the model's explanation map and prediction"
    _blank_identifiers(sc)

    algorithm = hd.sr.AlgorithmIdentification(name=package or "msk", version=str(version or "0"))
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=package or "msk", manufacturer_name=MANUFACTURER
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"{package} prediction"
        ),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=_code(label), value=float(value), unit=_unit(unit), algorithm_id=algorithm
            )
            for label, value, unit in measurements
        ]
        or None,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=_code(label), value=_code(text))
            for label, text in findings
        ]
        or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ref)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[ref, sc],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=9002,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = f"{package} prediction (research use only)"[:64]
    _blank_identifiers(sr)

    paths = []
    for dataset, suffix in ((sc, "sc"), (sr, "sr")):
        path = Path(out_dir) / f"{name}_{suffix}.dcm"
        from io import BytesIO

        buffer = BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(os.fspath(path))
    return tuple(paths)


def _blank_identifiers(ds):
    """Keeps the Type 2 patient / study attributes present but empty."""
    for tag in _EMPTY_TYPE2:
        setattr(ds, tag, "")


def suite_version():
    """The installed suite's version, or "0" when it is run from a source tree."""
    try:
        from importlib.metadata import version

        return version("msk-radiology-suite")
    except Exception:  # noqa: BLE001  (not installed: a source checkout)
        return "0"


def write_predict_dicoms(dicom_out, items, *, package, verbose=1):
    """The `--dicom-out` files of one `predict`: `write_dicom_results` per DICOM input.

    Args:
        dicom_out: the `--dicom-out` folder, or None (then nothing is written).
        items: dicts with `source` (the DICOM input), `name` (its name in outputs), `overlay`
            (the overlay PNG written by `--explain`), `measurements` and `findings` (see
            `write_dicom_results`). Non-DICOM inputs are not listed.
        package: the package's name.
        verbose: print where the files went.

    Returns:
        The paths written.
    """
    if dicom_out is None:
        return []
    import cv2

    written = []
    version = suite_version()
    for item in items:
        bgr = cv2.imread(os.fspath(item["overlay"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"could not read back the overlay {item['overlay']}")
        written.extend(
            write_dicom_results(
                item["source"],
                dicom_out,
                name=item["name"],
                overlay_rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                measurements=item.get("measurements", ()),
                findings=item.get("findings", ()),
                package=package,
                version=version,
            )
        )
    if verbose:
        print(
            f"{len(written) // 2} DICOM inputs: Secondary Capture + SR each in {dicom_out}",
            flush=True,
        )
    return written


__all__ = [
    "CODING_SCHEME",
    "MANUFACTURER",
    "source_reference",
    "suite_version",
    "write_dicom_results",
    "write_predict_dicoms",
]
