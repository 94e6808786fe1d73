"""kneeoa.data against hand-built copies of the real OAI release's layout and quirks.

Facts these samples copy (looked up in public code that reads the release):
- the ASCII release keeps the KL file in `X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII/`
  next to the other visits (`kxr_sq_bu01.txt`, ...) and the reliability re-reads
  (`kxr_sq_rel_bu00.txt`), with the file name in either case;
- headers are pipe-delimited, some in lower case (`readprj`, `id`); cells use OAI's missing
  codes (`.: Missing Form/Incomplete Workbook`, `.P: Prosthetic`) and a single space as blank;
- the image release unpacks to `<visit>/contents.csv` (Folder, ParticipantID, StudyDate,
  Barcode, StudyDescription, SeriesDescription) and `<Folder>/001`, a suffix-less DICOM file;
  the knee film is the `Bilateral PA Fixed Flexion Knee` series.
"""

import numpy as np
import pytest

from common import phantoms
from common.errors import DataError
from kneeoa import data

ASCII = "OAICompleteData_ASCII/X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII"


def _write(path, text, newline="\r\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode("latin-1"))
    return path


def _film(path, left, right, shape=(40, 60)):
    img = np.zeros(shape, dtype=np.float32)
    img[:, : shape[1] // 2] = left
    img[:, shape[1] // 2 :] = right
    return phantoms.write_png(path, img, bits=16)


def _dicom(path, left, right, shape=(40, 60)):
    """A 16-bit MONOCHROME1 bilateral film with preamble and no window, as a CR device writes."""
    from pydicom.dataset import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.uid import generate_uid

    img = np.zeros(shape, dtype=np.float64)
    img[:, : shape[1] // 2] = left
    img[:, shape[1] // 2 :] = right
    stored = (65535 - np.round(img * 65535)).astype(np.uint16)  # MONOCHROME1: low is bright
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.SeriesDescription = "Bilateral PA Fixed Flexion Knee"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


KL00 = """ID|SIDE|READPRJ|VERSION|V00BARCDBU|V00XRKL|V00XRJSM|V00XRJSL
9000001|1: Right|15|0.9|016610000001|2|1: 1|0: 0
9000001|2: Left|15|0.9|016610000001|.P: Prosthetic|.P: Prosthetic|.P: Prosthetic
9000002|1: Right|15|0.9|016610000002|0|0: 0|0: 0
9000002|2: Left|15|0.9|016610000002|.: Missing Form/Incomplete Workbook|.|.
9000002|2: Left|37|0.9|016610000002|3|2: 2|0: 0
9000003|1: Right|15|0.9|016610000003| | |
9000003|2: Left|15|0.9|016610000003|4|3: 3|1: 1
"""


def test_release_folders_with_images_outside_the_ascii_folder(tmp_path):
    """As unpacked: the KL file three folders down, the films in a folder of their own."""
    ascii_dir = tmp_path / ASCII
    _write(ascii_dir / "kxr_sq_bu00.txt", KL00)
    _write(ascii_dir / "kxr_sq_bu01.txt", KL00.replace("V00", "V01"))
    _write(ascii_dir / "kxr_sq_rel_bu00.txt", KL00)
    _write(tmp_path / "OAICompleteData_ASCII" / "AllClinical00.txt", "ID|VERSION\n9000001|2.1\n")
    _film(tmp_path / "knee_xrays" / "9000001.png", 0.9, 0.1)
    _film(tmp_path / "knee_xrays" / "9000002.png", 0.7, 0.2)
    _film(tmp_path / "knee_xrays" / "9000003.png", 0.6, 0.3)
    records = data.read_records(tmp_path)
    got = {(r.participant_id, r.side): (r.kl, r.crop, r.row) for r in records.itertuples()}
    assert got == {
        ("9000001", "R"): (2, "left_half", 2),
        ("9000002", "R"): (0, "left_half", 4),
        ("9000003", "L"): (4, "right_half", 8),
    }
    assert records.attrs["dropped_missing_kl"] == 3  # prosthetic, missing form, blank space
    assert records.attrs["kl_file"].endswith("kxr_sq_bu00.txt")
    assert data.inspect_dataset(tmp_path)["knees"] == 3


def test_image_release_contents_csv(tmp_path):
    """The OAI image release as unpacked: contents.csv and suffix-less `001` DICOM films."""
    _write(tmp_path / "kXR_SQ_BU00.txt", KL00)
    visit = tmp_path / "00m"
    rows = ["Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription"]
    for i, pid in enumerate(("9000001", "9000002", "9000003")):
        knee = f"0.C.2/{pid}/20040624/0166100{i}"
        hand = f"0.C.2/{pid}/20040624/0166200{i}"
        rows.append(f"{knee},{pid},20040624,0166100{i},OAI^XRAY,Bilateral PA Fixed Flexion Knee")
        rows.append(f"{hand},{pid},20040624,0166200{i},OAI^XRAY,PA Right Hand")
        _dicom(visit / knee / "001", 0.8, 0.3)
        _dicom(visit / hand / "001", 0.1, 0.1)
    _write(visit / "contents.csv", "\n".join(rows) + "\n")
    records = data.read_records(tmp_path).set_index(["participant_id", "side"])
    assert len(records) == 3
    right = records.loc[("9000001", "R")]
    assert right["crop"] == "left_half" and "01661000" in right["path"]
    knee = data.load_knee(right["path"], right["crop"])
    other = data.load_knee(*records.loc[("9000003", "L"), ["path", "crop"]])
    # MONOCHROME1 inverted: the brighter (0.8) half is the image's left, the patient's right
    assert knee.shape == (40, 30) and knee.mean() > other.mean() + 0.5


def test_follow_up_kl_file_and_lower_case_header(tmp_path):
    """Only a follow-up file: kXR_SQ_BU01.txt grades in V01XRKL; `id`/`readprj` in lower case."""
    _write(
        tmp_path / "kXR_SQ_BU01.txt",
        "id|SIDE|readprj|VERSION|V01XRKL\n9000001|1: Right|15|0.9|3\n9000001|2: Left|15|0.9|1\n",
    )
    _film(tmp_path / "9000001.png", 0.9, 0.1)
    records = data.read_records(tmp_path)
    assert records["kl"].tolist() == [1, 3] and records.attrs["kl_column"] == "V01XRKL"
    _write(tmp_path / "kXR_SQ_BU01.txt", "ID|SIDE|READPRJ|V00XRKL\n9000001|1|15|3\n")
    with pytest.raises(DataError, match=r"kXR_SQ_BU01\.txt: row 1, column 'V01XRKL'"):
        data.read_records(tmp_path)


def test_quoted_header_and_cells(tmp_path):
    _write(
        tmp_path / "kXR_SQ_BU00.txt",
        '"ID"|"SIDE"|"READPRJ"|"VERSION"|"V00XRKL"\n"9000001"|"1: Right"|"15"|"0.9"|"2"\n',
    )
    _film(tmp_path / "9000001.png", 0.9, 0.1)
    assert data.read_records(tmp_path)["kl"].tolist() == [2]
