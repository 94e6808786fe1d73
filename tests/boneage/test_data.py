"""Readers of the two real RSNA 2017 layouts, written by hand as a user's unzipped files look."""

import cv2
import numpy as np
import pandas as pd
import pytest

from boneage import data
from boneage.model import get_config
from common.errors import DataError


def _png(path, seed=0, shape=(48, 40), bits=8, rgb=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 1, shape)
    if bits == 16:
        pixels = (image * 65535).astype(np.uint16)
    else:
        pixels = (image * 255).astype(np.uint8)
    if rgb:
        pixels = np.stack([pixels] * 3, axis=-1)
    assert cv2.imwrite(str(path), pixels)
    return path


def _text(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_official(root):
    """Stanford/RSNA download after unzipping: spaces in folder names, one extra nesting level,
    macOS junk, `male` as text in any case, fractional ages."""
    train = root / "Bone Age Training Set"
    _text(train / "train.csv", "id,boneage,male\n1377,180,False\n1378,12,True\n1379,94.5,True\n")
    images = train / "boneage-training-dataset" / "boneage-training-dataset"
    _png(images / "1377.png", 1)
    _png(images / "1378.png", 2, bits=16)
    _png(images / "1379.png", 3, rgb=True)
    _text(images / "._1377.png", "AppleDouble junk")
    _text(train / "__MACOSX" / "boneage-training-dataset" / "._1378.png", "junk")
    val = root / "Bone Age Validation Set"
    _text(
        val / "Validation Dataset.csv",
        "Image ID,male,Bone Age (months)\r\n1386,TRUE,120.25\r\n1392,false,60\r\n1397,True,200\r\n",
    )
    _png(val / "boneage-validation-dataset-1" / "boneage-validation-dataset-1" / "1386.png", 4)
    _png(val / "boneage-validation-dataset-1" / "boneage-validation-dataset-1" / "1392.png", 5)
    _png(val / "boneage-validation-dataset-2" / "1397.png", 6)  # this one not nested
    return root


def write_kaggle(root):
    """The Kaggle "rsna-bone-age" archive: doubled folder names, True/False, M/F test CSV."""
    _text(root / "boneage-training-dataset.csv", "id,boneage,male\n1377,180,False\n1380,36,True\n")
    _text(root / "boneage-test-dataset.csv", "Case ID,Sex\n4360,M\n4361,F\n4362,m\n")
    train = root / "boneage-training-dataset" / "boneage-training-dataset"
    _png(train / "1377.png", 1)
    _png(train / "1380.png", 2)
    test = root / "boneage-test-dataset" / "boneage-test-dataset"
    for i, image_id in enumerate((4360, 4361, 4362)):
        _png(test / f"{image_id}.png", 10 + i)
    return root


def test_official_layout_records(tmp_path):
    root = write_official(tmp_path / "rsna")
    records = data.read_records(root)
    assert list(records.columns) == list(data.RECORD_COLUMNS)
    assert records["image_id"].tolist() == ["1377", "1378", "1379", "1386", "1392", "1397"]
    assert records["split"].tolist() == ["train"] * 3 + ["validation"] * 3
    assert records["male"].tolist() == [0, 1, 1, 1, 0, 1]
    assert records["age_months"].tolist() == [180.0, 12.0, 94.5, 120.25, 60.0, 200.0]
    assert set(records["source"]) == {"official"}
    assert records["csv_row"].tolist() == [2, 3, 4, 2, 3, 4]
    for path, image_id in zip(records["image_path"], records["image_id"]):
        assert path.endswith(f"{image_id}.png") and "/._" not in path


@pytest.mark.parametrize("level", ["dataset", "parent", "grandparent"])
def test_inspect_official_at_any_root_level(tmp_path, level):
    write_official(tmp_path / "downloads" / "rsna")
    root = {
        "dataset": tmp_path / "downloads" / "rsna",
        "parent": tmp_path / "downloads",
        "grandparent": tmp_path,
    }[level]
    assert data.inspect_dataset(root) == {
        "train": {"images": 3, "males": 2, "mean_age_months": 95.5},
        "validation": {"images": 3, "males": 2, "mean_age_months": 126.75},
    }


def test_inspect_kaggle(tmp_path):
    root = write_kaggle(tmp_path / "rsna-bone-age")
    assert data.inspect_dataset(root) == {
        "train": {"images": 2, "males": 1, "mean_age_months": 108.0},
        "test": {"images": 3, "males": 2},
    }
    records = data.read_records(root)
    test = records[records["split"] == "test"]
    assert test["age_months"].isna().all() and test["male"].tolist() == [1, 0, 1]


def test_ids_are_found_recursively_and_unrelated_csvs_ignored(tmp_path):
    root = write_kaggle(tmp_path / "k")
    # An unrelated train.csv elsewhere is not an RSNA file; the images may sit one level deeper.
    _text(tmp_path / "k" / "notes" / "train.csv", "foo,bar\n1,2\n")
    deeper = root / "boneage-training-dataset" / "boneage-training-dataset" / "extra"
    (root / "boneage-training-dataset" / "boneage-training-dataset" / "1380.png").rename(
        _png(deeper / "placeholder.png")
    )
    (deeper / "placeholder.png").rename(deeper / "1380.png")
    records = data.read_records(root)
    assert records.loc[records.image_id == "1380", "image_path"].item().endswith("extra/1380.png")


# Each bad input: (what to write over the Kaggle sample, file named, row, column, words in message)
BAD_INPUTS = [
    ("no_id_column", {"csv": "idx,boneage,male\n1377,180,False\n"}, "csv", None, "id", "missing"),
    ("no_age_column", {"csv": "id,age,male\n1377,180,False\n"}, "csv", None, "boneage", "missing"),
    ("no_sex_column", {"csv": "id,boneage\n1377,180\n"}, "csv", None, "male", "missing"),
    (
        "negative_age",
        {"csv": "id,boneage,male\n1377,180,False\n1380,-3,True\n"},
        "csv",
        3,
        "boneage",
        "outside",
    ),
    (
        "blank_age",
        {"csv": "id,boneage,male\n1377,,False\n"},
        "csv",
        2,
        "boneage",
        "missing bone age",
    ),
    ("text_age", {"csv": "id,boneage,male\n1377,ten,False\n"}, "csv", 2, "boneage", "not a number"),
    (
        "bad_sex",
        {"csv": "id,boneage,male\n1377,180,False\n1380,36,unknown\n"},
        "csv",
        3,
        "male",
        "neither male nor female",
    ),
    (
        "bad_test_sex",
        {"test_csv": "Case ID,Sex\n4360,X\n"},
        "test_csv",
        2,
        "Sex",
        "neither male nor female",
    ),
    (
        "absent_image",
        {"csv": "id,boneage,male\n1377,180,False\n9999,36,True\n"},
        "csv",
        3,
        "id",
        "not found",
    ),
    (
        "duplicate_id",
        {"csv": "id,boneage,male\n1377,180,False\n1377,36,True\n"},
        "csv",
        3,
        "id",
        "duplicate",
    ),
    ("header_only", {"csv": "id,boneage,male\n"}, "csv", 2, None, "no examples"),
    ("no_test_sex_column", {"test_csv": "Case ID\n4360\n"}, "test_csv", None, "sex", "missing"),
    (
        "age_over_25_years",
        {"csv": "id,boneage,male\n1377,400,False\n"},
        "csv",
        2,
        "boneage",
        "outside",
    ),
    ("truncated_png", {"corrupt": b"truncated"}, "image", None, None, "corrupt image"),
    ("empty_png", {"corrupt": b""}, "image", None, None, "corrupt image"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_data_error_naming_file_row_column(tmp_path, case):
    _, change, where, row, column, words = case
    root = write_kaggle(tmp_path / "rsna-bone-age")
    csv_path = root / "boneage-training-dataset.csv"
    test_csv = root / "boneage-test-dataset.csv"
    image = root / "boneage-training-dataset" / "boneage-training-dataset" / "1377.png"
    if "csv" in change:
        csv_path.write_text(change["csv"], encoding="utf-8")
    if "test_csv" in change:
        test_csv.write_text(change["test_csv"], encoding="utf-8")
    if "corrupt" in change:
        good = image.read_bytes()
        image.write_bytes(good[: len(good) // 2] if change["corrupt"] == b"truncated" else b"")
    with pytest.raises(DataError) as info:
        data.read_records(root)
    error = info.value
    message = str(error)
    expected_path = {"csv": csv_path, "test_csv": test_csv, "image": image}[where]
    assert error.path == str(expected_path)
    assert message.startswith(str(expected_path))
    assert words in message
    assert "\n" not in message
    if row is not None:
        assert error.row == row and f"row {row}" in message
    if column is not None:
        assert error.column == column and f"column '{column}'" in message
    if where == "image":
        assert "row 2" in message  # the CSV row that lists the image


def test_missing_root_and_no_label_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.read_records(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no RSNA bone-age label file"):
        data.inspect_dataset(tmp_path / "empty")


def test_split_records_kaggle_and_official(tmp_path):
    rows = [
        {
            "image_id": str(i),
            "patient_id": f"p{i}",
            "age_months": float(i % 200),
            "male": i % 2,
            "split": "train",
        }
        for i in range(200)
    ]
    rows += [
        {"image_id": "t", "patient_id": "pt", "age_months": np.nan, "male": 1, "split": "test"}
    ]
    kaggle = pd.DataFrame(rows)
    split = data.split_records(kaggle, seed=0)
    counts = split.value_counts().to_dict()
    assert counts["unlabeled"] == 1
    assert 15 <= counts["test"] <= 25 and 14 <= counts["val"] <= 24  # 10% held out, 10% of the rest
    assert split.equals(data.split_records(kaggle, seed=0))
    assert not split.equals(data.split_records(kaggle, seed=1))
    official = kaggle.copy()
    official.loc[:19, "split"] = "validation"
    split = data.split_records(official, seed=0)
    assert (split[:20] == "val").all()
    assert "val" not in set(split[20:])  # the given validation set is the only "val"


def test_make_dataset_shapes(tmp_path):
    records = data.read_records(write_official(tmp_path / "rsna"))
    train = records[records["split"] == "train"]
    ds = data.make_dataset(train, config="demo", training=True, batch_size=2, seed=0)
    inputs, targets = next(iter(ds))
    assert set(inputs) == {"image", "sex"} and set(targets) == {"age_months"}
    assert tuple(inputs["image"].shape) == (2, 192, 160, 1)  # the demo input
    assert tuple(inputs["sex"].shape) == (2, 1) and tuple(targets["age_months"].shape) == (2, 1)
    assert 0.0 <= float(np.min(inputs["image"])) and float(np.max(inputs["image"])) <= 1.0
    batches = list(data.make_dataset(train, config="demo", training=False, batch_size=2))
    ages = np.concatenate([t["age_months"].numpy()[:, 0] for _, t in batches])
    np.testing.assert_allclose(ages, [180.0, 12.0, 94.5])  # order kept, fractional age kept
    sexes = np.concatenate([x["sex"].numpy()[:, 0] for x, _ in batches])
    np.testing.assert_array_equal(sexes, [0, 1, 1])


def test_make_dataset_paper_size_and_variants(tmp_path):
    records = data.read_records(write_kaggle(tmp_path / "k"))
    train = records[records["split"] == "train"]
    inputs, _ = next(iter(data.make_dataset(train, config="paper", training=False, batch_size=2)))
    assert tuple(inputs["image"].shape) == (2, 300, 300, 1)  # §IV: 300 x 300 gray
    config = get_config("demo", use_sex=False)
    inputs, _ = next(iter(data.make_dataset(train, config=config, training=False, batch_size=2)))
    assert set(inputs) == {"image"}
    test = records[records["split"] == "test"]
    inputs = next(iter(data.make_dataset(test, config="demo", training=False, batch_size=3)))
    assert set(inputs) == {"image", "sex"}  # no ages: inputs only
    with pytest.raises(DataError, match="missing bone age"):
        data.make_dataset(test, config="demo", training=True, batch_size=3)
    with pytest.raises(DataError, match="empty split"):
        data.make_dataset(train.iloc[:0], config="demo", training=False, batch_size=2)


def test_augmentation_is_the_papers():
    # §IV: random zoom and random flips (horizontal and vertical), nothing else.
    aug = data.PAPER_AUGMENT
    assert aug.flip_lr and aug.flip_ud and aug.zoom_range != (1.0, 1.0)
    assert aug.rotation_deg == 0 and aug.translate_px == (0.0, 0.0) and aug.intensity_delta == 0
