"""`--dicom-out`'s Secondary Capture and Comprehensive SR: valid DICOM, read back, no identifiers."""

import subprocess

import numpy as np
import pydicom
import pytest

from common.dicom_out import write_dicom_results
from tests.identifier_helpers import MARKERS
from tests.identifier_helpers import write_marked_dicom


def _dciodvfy(path):
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return (result.stdout + result.stderr).splitlines()


def _content_items(items):
    for item in items:
        yield item
        yield from _content_items(item.get("ContentSequence", []))


@pytest.fixture
def written(tmp_path):
    source = write_marked_dicom(tmp_path / "in" / "PHIFILE8675309.dcm", shape=(48, 40))
    rng = np.random.default_rng(0)
    overlay = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    sc_path, sr_path = write_dicom_results(
        tmp_path / "in" / "PHIFILE8675309.dcm",
        tmp_path / "out",
        name="dcm-0123456789abcdef",
        overlay_rgb=overlay,
        measurements=[("KL grade", 3, "{grade}"), ("probability of KL 3", 0.61, "1")],
        findings=[("KL grade", "KL 3")],
        package="kneeoa",
        version="0.1.0",
    )
    return source, overlay, pydicom.dcmread(sc_path), pydicom.dcmread(sr_path), (sc_path, sr_path)


def test_both_objects_pass_dciodvfy_without_errors(written):
    for path in written[4]:
        lines = _dciodvfy(path)
        assert any(line.strip() in ("SCImage", "ComprehensiveSR") for line in lines), lines
        # Warnings read: the empty Type 2 patient/study attributes (DICOMDIR keys) and the
        # private coding scheme 99MSK; no line of type "Error".
        assert [line for line in lines if line.startswith("Error")] == []


def test_a_broken_object_fails_dciodvfy(written, tmp_path):
    """The control: dciodvfy does report errors, so the check above can fail."""
    sc = written[2]
    del sc.Laterality  # Type 2C in the General Series module
    del sc.PatientID  # Type 2
    sc.save_as(tmp_path / "broken.dcm")
    assert [line for line in _dciodvfy(tmp_path / "broken.dcm") if line.startswith("Error")]


def test_secondary_capture_holds_the_overlay_in_the_source_study(written):
    source, overlay, sc, _, _ = written
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(sc.pixel_array, overlay)


def test_sr_carries_the_prediction_and_references_the_source(written):
    source, _, sc, sr, _ = written
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    items = list(_content_items(sr.ContentSequence))
    numbers = {
        i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.ValueType == "NUM"
    }
    assert numbers == {"KL grade": 3.0, "probability of KL 3": pytest.approx(0.61)}
    codes = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning
        for i in items
        if i.ValueType == "CODE" and "ConceptCodeSequence" in i
    }
    assert codes["KL grade"] == "KL 3"
    referenced = [
        ref.ReferencedSOPInstanceUID
        for i in items
        if i.ValueType == "IMAGE"
        for ref in i.ReferencedSOPSequence
    ]
    assert referenced == [source.SOPInstanceUID]
    evidence = {
        inst.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, sc.SOPInstanceUID}


def test_no_patient_identifier_is_copied(written):
    _, _, sc, sr, paths = written
    for dataset in (sc, sr):
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            assert str(dataset.get(keyword, "")) == ""
    for path in paths:
        data = open(path, "rb").read().lower()
        assert [m for m in MARKERS if m.lower().encode() in data] == []
