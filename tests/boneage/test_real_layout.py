"""The RSNA 2017 official test set, as published: `Bone Age Test Set/Bone age ground truth.xlsx`
(`Case ID`, `Sex` M/F, `Ground truth bone age (months)`, fractional) with `Test Set Images/<id>.png`.
The workbook is written here with openpyxl (shared strings, numeric cells), not through any
writer of the package; the package reads it with `pandas.read_excel`."""

import cv2
import numpy as np
import pytest

from boneage import data
from common.errors import DataError

HEADER = ["Case ID", "Sex", "Ground truth bone age (months)"]


def _png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).uniform(0, 1, (48, 40)) * 255).astype(np.uint8)
    assert cv2.imwrite(str(path), pixels)


def _col(index):
    return "ABCDEFGHIJ"[index]


def write_xlsx(path, rows):
    """An .xlsx written by openpyxl (text as shared strings, numbers as numbers, empty cells
    omitted, as Excel writes them); `rows` are lists of str, float/int or None (empty)."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row, start=1):
            if value is not None:
                sheet.cell(row=r, column=c, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


TEST_ROWS = [[4360, "M", 168.934], [4361, "F", 169.652], [4362, "M", 73.0]]


def write_official_test_set(root, rows=TEST_ROWS):
    test = root / "Bone Age Test Set"
    write_xlsx(test / "Bone age ground truth.xlsx", [HEADER, *rows])
    for i, row in enumerate(rows):
        _png(test / "Test Set Images" / f"{row[0]}.png", i)
    return test / "Bone age ground truth.xlsx"


def test_official_test_set_xlsx_is_read_with_fractional_ages(tmp_path):
    root = tmp_path / "rsna"
    write_official_test_set(root)
    train = root / "Bone Age Training Set"
    (train / "train.csv").parent.mkdir(parents=True)
    (train / "train.csv").write_text("id,boneage,male\n1377,180,False\n1378,12,True\n")
    _png(train / "boneage-training-dataset" / "1377.png", 7)
    _png(train / "boneage-training-dataset" / "1378.png", 8)

    assert data.inspect_dataset(root) == {
        "train": {"images": 2, "males": 1, "mean_age_months": 96.0},
        "test": {"images": 3, "males": 2},  # CONTRACT.md's test keys, ages or not
    }
    records = data.load_records(root)
    test = records[records["layout_split"] == "test"]
    assert test["image_id"].tolist() == ["4360", "4361", "4362"]
    assert test["age_months"].tolist() == [168.934, 169.652, 73.0]
    assert test["csv_row"].tolist() == [2, 3, 4]
    assert set(test["split"]) == {"test"}  # labelled: the held-out split, not "unlabeled"
    assert all("Test Set Images" in p for p in test["image_path"])


def test_ground_truth_copied_beside_kaggle_files_labels_the_kaggle_test_set(tmp_path):
    # A common setup: the ground-truth workbook dropped into the Kaggle folder, whose
    # boneage-test-dataset/ holds the same 200 images. The test images count once, with ages.
    root = tmp_path / "rsna-bone-age"
    (root / "boneage-training-dataset.csv").parent.mkdir(parents=True)
    (root / "boneage-training-dataset.csv").write_text("id,boneage,male\n1377,180,False\n")
    _png(root / "boneage-training-dataset" / "boneage-training-dataset" / "1377.png")
    (root / "boneage-test-dataset.csv").write_text("Case ID,Sex\r\n4360,M\r\n4361,F\r\n4362,M\r\n")
    for i, row in enumerate(TEST_ROWS):
        _png(root / "boneage-test-dataset" / "boneage-test-dataset" / f"{row[0]}.png", i)
    write_xlsx(root / "Bone age ground truth.xlsx", [HEADER, *TEST_ROWS])

    summary = data.inspect_dataset(root)
    assert summary["test"] == {"images": 3, "males": 2}
    records = data.read_records(root)
    assert records["image_id"].tolist() == ["1377", "4360", "4361", "4362"]
    assert records["age_months"].notna().all()


def test_ground_truth_saved_as_csv_with_bom_and_crlf(tmp_path):
    test = tmp_path / "Bone Age Test Set"
    test.mkdir()
    (test / "Bone age ground truth.csv").write_bytes(
        b"\xef\xbb\xbfCase ID,Sex,Ground truth bone age (months)\r\n4360,M,168.934\r\n4361,F,33\r\n"
    )
    _png(test / "Test Set Images" / "4360.png", 1)
    _png(test / "Test Set Images" / "4361.png", 2)
    assert data.inspect_dataset(tmp_path) == {"test": {"images": 2, "males": 1}}
    records = data.read_records(tmp_path)
    assert records["image_id"].tolist() == ["4360", "4361"]
    assert records["age_months"].tolist() == [168.934, 33.0]


@pytest.mark.parametrize(
    "rows, row, column, words",
    [
        ([[4360, "M", 168.9], [4361, "X", 12.0]], 3, "Sex", "neither male nor female"),
        ([[4360, "M", 168.9], [4361, "F", -1.0]], 3, HEADER[2], "outside"),
        ([[4360, "M", 168.9], [4361, "F", None]], 3, HEADER[2], "missing bone age"),
    ],
    ids=["bad_sex", "negative_age", "blank_age"],
)
def test_bad_xlsx_row_names_workbook_row_and_column(tmp_path, rows, row, column, words):
    xlsx = write_official_test_set(tmp_path, rows)
    with pytest.raises(DataError) as info:
        data.read_records(tmp_path)
    error = info.value
    assert error.path == str(xlsx) and error.row == row and error.column == column
    assert str(error).startswith(str(xlsx)) and words in str(error) and "\n" not in str(error)


def test_corrupt_workbook_is_named(tmp_path):
    xlsx = write_official_test_set(tmp_path)
    xlsx.write_bytes(b"Case ID,Sex\n")  # not a zip: e.g. a CSV renamed to .xlsx
    with pytest.raises(DataError) as info:
        data.read_records(tmp_path)
    assert info.value.path == str(xlsx) and "xlsx" in str(info.value)


def test_validation_csv_in_boneage_validation_dataset_folder(tmp_path):
    # Another common unzipped copy: each archive in its own `boneage-*` folder, the validation
    # images merged into `boneage-validation-dataset/boneage-validation-dataset/`, the test set's
    # ground truth saved as CSV.
    root = tmp_path / "data"
    train = root / "boneage-training-dataset"
    train.mkdir(parents=True)
    (train / "train.csv").write_text("id,boneage,male\n1377,180,False\n")
    _png(train / "boneage-training-dataset" / "1377.png")
    val = root / "boneage-validation-dataset"
    val.mkdir()
    (val / "Validation Dataset.csv").write_text(
        "Image ID,male,Bone Age (months)\r\n1386,FALSE,40\r\n1392,TRUE,60.5\r\n"
    )
    _png(val / "boneage-validation-dataset" / "1386.png", 1)
    _png(val / "boneage-validation-dataset" / "1392.png", 2)
    assert data.inspect_dataset(root) == {
        "train": {"images": 1, "males": 0, "mean_age_months": 180.0},
        "validation": {"images": 2, "males": 1, "mean_age_months": 50.25},
    }
