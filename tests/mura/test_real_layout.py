"""MURA-v1.1 copies as users really have them: nested unzips, CSVs moved, folder/CSV label clashes.

Each sample is written by hand as an unzipped copy looks (headerless CSVs, CRLF in one of them,
`._` AppleDouble files and a `__MACOSX/` folder from a Mac zip), not through the phantom writer.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings

import cv2
import numpy as np
import pytest

import mura
from mura import data as mura_data

# (study path as in the CSVs, label, number of images)
STUDIES = {
    "train": [
        ("MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/", 1, 2),
        ("MURA-v1.1/train/XR_WRIST/patient00001/study1_negative/", 0, 1),
        ("MURA-v1.1/train/XR_ELBOW/patient00002/study1_negative/", 0, 1),
    ],
    "valid": [
        ("MURA-v1.1/valid/XR_FINGER/patient11185/study1_positive/", 1, 1),
        ("MURA-v1.1/valid/XR_HAND/patient11186/study1_negative/", 0, 2),
    ],
}
IMAGES = sum(n for studies in STUDIES.values() for _, _, n in studies)


def _write_copy(parent, *, csv_dir=None):
    """An unzipped MURA-v1.1 under `parent`; CSVs in `csv_dir` (default: inside MURA-v1.1)."""
    dataset = parent / "MURA-v1.1"
    csv_dir = dataset if csv_dir is None else csv_dir
    csv_dir.mkdir(parents=True, exist_ok=True)
    for split, studies in STUDIES.items():
        image_lines, study_lines = [], []
        for k, (study, label, count) in enumerate(studies):
            study_lines.append(f"{study},{label}")
            for j in range(1, count + 1):
                path = parent / study / f"image{j}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                gray = np.full((36, 28), 40 + 20 * k + j, np.uint8)
                image = np.dstack([gray] * 3) if j == 2 else gray  # some PNGs are RGB
                assert cv2.imwrite(str(path), image)
                image_lines.append(f"{study}image{j}.png")
            (parent / study / "._image1.png").write_bytes(
                b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X"
            )
        end = "\r\n" if split == "train" else "\n"
        (csv_dir / f"{split}_image_paths.csv").write_bytes((end.join(image_lines) + end).encode())
        (csv_dir / f"{split}_labeled_studies.csv").write_bytes(
            (end.join(study_lines) + end).encode()
        )
    return dataset


def _add_macosx(folder):
    junk = folder / "__MACOSX" / "MURA-v1.1" / "train" / "XR_SHOULDER"
    junk.mkdir(parents=True)
    (junk.parent.parent / "._train_image_paths.csv").write_bytes(b"\x00\x05\x16\x07")
    (junk / "._patient00001").write_bytes(b"\x00\x05\x16\x07")


def _check(records):
    assert len(records) == IMAGES
    assert all(os.path.isfile(p) for p in records["image_path"])
    labels = records.drop_duplicates("study").set_index("study")["label"].to_dict()
    for studies in STUDIES.values():
        for study, label, _ in studies:
            assert labels[study[len("MURA-v1.1/") :]] == label
    assert records["image"].str.startswith("MURA-v1.1/").all()


def test_archive_unzipped_into_a_folder_of_its_own_name(tmp_path):
    """`data/MURA-v1.1/MURA-v1.1/...` (Windows "Extract all", Kaggle): `data` is accepted too."""
    data = tmp_path / "data"
    _write_copy(data / "MURA-v1.1")
    _add_macosx(data / "MURA-v1.1")
    _check(mura_data.read_mura(data / "MURA-v1.1"))
    _check(mura_data.read_mura(data))
    info = mura.inspect_dataset(data)
    assert info["train"]["images"] == 4 and info["valid"]["studies"] == 2


def test_csvs_moved_beside_the_archive_folder(tmp_path):
    """CSVs moved up so that their `MURA-v1.1/train/...` paths resolve from where they are."""
    root = tmp_path / "mura"
    _write_copy(root, csv_dir=root)
    _add_macosx(root)
    assert not list((root / "MURA-v1.1").glob("*.csv"))
    _check(mura_data.read_mura(root))
    # The same with the image folder renamed: the CSV paths still resolve from `train/` on.
    (root / "MURA-v1.1").rename(root / "images")
    records = mura_data.read_mura(root)
    assert len(records) == IMAGES
    assert all(os.path.isfile(p) for p in records["image_path"])


def test_csv_label_disagreeing_with_the_folder_name_is_used_with_a_warning(tmp_path):
    dataset = _write_copy(tmp_path)
    studies_csv = dataset / "valid_labeled_studies.csv"
    text = studies_csv.read_text()
    studies_csv.write_text(text.replace("study1_negative/,0", "study1_negative/,1"))
    with pytest.warns(UserWarning) as caught:
        records = mura_data.read_mura(dataset)
    messages = [str(w.message) for w in caught if "folder name" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "valid_labeled_studies.csv: row 2, column 'label'" in messages[0]
    hand = records[records["study"] == "valid/XR_HAND/patient11186/study1_negative/"]
    assert set(hand["label"]) == {1}
    # An unchanged copy reads without that warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        mura_data.read_split(_write_copy(tmp_path / "clean"), "valid")


def test_two_copies_two_folders_down_are_not_guessed(tmp_path):
    _write_copy(tmp_path / "data" / "a")
    _write_copy(tmp_path / "data" / "b")
    with pytest.raises(mura_data.DataError, match=r"several MURA data sets .*a/MURA-v1.1"):
        mura_data.find_dataset_dir(tmp_path / "data")
    assert mura_data.find_dataset_dir(tmp_path / "data" / "b").parent.name == "b"
