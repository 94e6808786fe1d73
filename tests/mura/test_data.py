"""MURA-v1.1 readers on a hand-written sample of the real layout, bad input, splits, tf.data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pandas as pd
import pytest

import mura
from common.errors import DataError
from mura import data as mura_data

pytestmark = pytest.mark.filterwarnings("ignore:Group .* one class gets weight 0:UserWarning")

# A small MURA-v1.1 as a user's copy of the archive looks: headerless CSVs, study paths ending in
# "/", one RGB PNG, macOS `._` files, a patient (00001) with studies of two body parts.
# (study path, label, number of images, RGB image numbers)
TRAIN_STUDIES = [
    ("MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/", 1, 2, ()),
    ("MURA-v1.1/train/XR_HAND/patient00001/study1_negative/", 0, 1, ()),
    ("MURA-v1.1/train/XR_ELBOW/patient00002/study1_negative/", 0, 1, (1,)),
    ("MURA-v1.1/train/XR_ELBOW/patient00002/study2_positive/", 1, 3, ()),
    ("MURA-v1.1/train/XR_WRIST/patient00003/study1_negative/", 0, 2, ()),
    ("MURA-v1.1/train/XR_WRIST/patient00004/study1_negative/", 0, 1, ()),
    ("MURA-v1.1/train/XR_SHOULDER/patient00005/study1_positive/", 1, 2, ()),
    ("MURA-v1.1/train/XR_HAND/patient00006/study1_positive/", 1, 1, ()),
]
VALID_STUDIES = [
    ("MURA-v1.1/valid/XR_FINGER/patient11185/study1_positive/", 1, 2, ()),
    ("MURA-v1.1/valid/XR_FINGER/patient11186/study1_negative/", 0, 1, ()),
    ("MURA-v1.1/valid/XR_HUMERUS/patient11186/study1_negative/", 0, 1, ()),
]


def _write_png(path, value, rgb=False, shape=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full(shape, value, np.uint8)
    image[5:15, 5:10] = 255 - value
    if rgb:
        image = np.repeat(image[..., None], 3, axis=-1)
    assert cv2.imwrite(str(path), image)


def write_sample(root, *, header=False, strip_slash=False):
    """Writes the sample under `root/MURA-v1.1` and returns the data set folder."""
    dataset = root / "MURA-v1.1"
    for split, studies in (("train", TRAIN_STUDIES), ("valid", VALID_STUDIES)):
        image_lines = ["Path"] if header else []
        study_lines = ["path,label"] if header else []
        for n, (study, label, count, rgb) in enumerate(studies):
            shown = study.rstrip("/") if strip_slash else study
            study_lines.append(f"{shown},{label}")
            for j in range(1, count + 1):
                rel = f"{study}image{j}.png"
                _write_png(root / rel, 30 + 10 * n + j, rgb=j in rgb)
                image_lines.append(rel)
            (root / study / "._image1.png").write_bytes(b"\x00\x05\x16\x07 not an image")
        (dataset / f"{split}_image_paths.csv").write_text("\n".join(image_lines) + "\n")
        (dataset / f"{split}_labeled_studies.csv").write_text("\n".join(study_lines) + "\n")
    (dataset / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return dataset


@pytest.fixture
def sample(tmp_path):
    return write_sample(tmp_path)


def test_records(sample):
    records = mura_data.read_mura(sample)
    assert list(records.columns) == list(mura_data.RECORD_COLUMNS)
    assert len(records) == sum(s[2] for s in TRAIN_STUDIES + VALID_STUDIES)
    first = records.iloc[0]
    assert first["image"] == "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png"
    assert first["study"] == "train/XR_WRIST/patient00001/study1_positive/"
    assert (first["mura_split"], first["body_part"], first["patient_id"]) == (
        "train",
        "wrist",
        "patient00001",
    )
    assert (first["study_number"], first["view"], first["label"]) == (1, 1, 1)
    assert os.path.isfile(first["image_path"])
    labels = records.drop_duplicates("study").set_index("study")["label"]
    for path, label, _, _ in TRAIN_STUDIES + VALID_STUDIES:
        assert labels[path[len("MURA-v1.1/") :]] == label
    assert not records["image_path"].str.contains("/\\._").any()


def test_parent_folder_or_dataset_folder(sample):
    a = mura_data.read_mura(sample)
    b = mura_data.read_mura(sample.parent)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("header, strip_slash", [(True, False), (False, True), (True, True)])
def test_header_row_and_missing_slash_are_read(tmp_path, header, strip_slash):
    reference = mura_data.read_mura(write_sample(tmp_path / "a"))
    variant = mura_data.read_mura(
        write_sample(tmp_path / "b", header=header, strip_slash=strip_slash)
    )
    cols = [c for c in reference.columns if c != "image_path"]
    pd.testing.assert_frame_equal(reference[cols], variant[cols])


def test_absolute_and_windows_paths_resolve_inside_the_dataset(tmp_path):
    """Paths written from another machine (a parent folder named "train", backslashes) still read."""
    dataset = write_sample(tmp_path)
    reference = mura_data.read_mura(dataset)
    csv_file = dataset / "train_image_paths.csv"
    lines = csv_file.read_text().splitlines()
    csv_file.write_text("\n".join("D:\\train\\" + line.replace("/", "\\") for line in lines))
    records = mura_data.read_mura(dataset)
    pd.testing.assert_frame_equal(reference.drop(columns="image"), records.drop(columns="image"))


def test_renamed_dataset_folder(tmp_path):
    dataset = write_sample(tmp_path)
    renamed = dataset.rename(tmp_path / "mura_copy")
    records = mura_data.read_mura(renamed)
    assert len(records) == sum(s[2] for s in TRAIN_STUDIES + VALID_STUDIES)
    assert all(os.path.isfile(p) for p in records["image_path"])


def test_folders_without_csvs(sample):
    for csv_file in sample.glob("*.csv"):
        csv_file.unlink()
    records = mura_data.read_mura(sample)
    assert len(records) == sum(s[2] for s in TRAIN_STUDIES + VALID_STUDIES)
    labels = records.drop_duplicates("study").set_index("study")["label"]
    for path, label, _, _ in TRAIN_STUDIES + VALID_STUDIES:
        assert labels[path[len("MURA-v1.1/") :]] == label


def test_inspect_json(sample):
    info = mura.inspect_dataset(sample.parent)
    assert info == {
        "train": {
            "images": 13,
            "studies": 8,
            "abnormal_studies": 4,
            "patients": 6,
            "body_parts": ["elbow", "hand", "shoulder", "wrist"],
        },
        "valid": {
            "images": 4,
            "studies": 3,
            "abnormal_studies": 1,
            "patients": 2,
            "body_parts": ["finger", "humerus"],
        },
    }


def test_rgb_png_read_as_gray(sample):
    records = mura_data.read_mura(sample)
    rgb = records[records["image"].str.endswith("patient00002/study1_negative/image1.png")]
    ds = mura_data.make_dataset(rgb, config="demo", training=False, batch_size=1)
    image = next(iter(ds))[0]
    assert image.shape == (1, 128, 128, 3)
    np.testing.assert_allclose(image[..., 0], image[..., 1])


# --------------------------------------------------------------------------- bad input


def _replace_line(path, index, text):
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def _append_line(path, text):
    path.write_text(path.read_text() + text + "\n")


def _break_image_columns(ds):
    _replace_line(ds / "train_image_paths.csv", 2, TRAIN_STUDIES[1][0] + "image1.png,extra")
    return "train_image_paths.csv", 3, None, "expected 1 column"


def _break_study_columns(ds):
    _replace_line(ds / "train_labeled_studies.csv", 1, TRAIN_STUDIES[1][0] + ",0,1")
    return "train_labeled_studies.csv", 2, None, "expected 2 column"


def _break_label(ds):
    _replace_line(ds / "valid_labeled_studies.csv", 2, VALID_STUDIES[2][0] + ",2")
    return "valid_labeled_studies.csv", 3, "label", "0 .normal. or 1 .abnormal., found '2'"


def _break_label_text(ds):
    _replace_line(ds / "train_labeled_studies.csv", 0, TRAIN_STUDIES[0][0] + ",abnormal")
    return "train_labeled_studies.csv", 1, "label", "found 'abnormal'"


def _missing_image(ds):
    (ds.parent / TRAIN_STUDIES[3][0] / "image2.png").unlink()
    return "train_image_paths.csv", 6, "image_path", "listed but not found"


def _corrupt_png(ds):
    (ds.parent / VALID_STUDIES[0][0] / "image2.png").write_bytes(b"this is not a png at all")
    return "valid_image_paths.csv", 2, "image_path", "corrupt image .*bad signature"


def _truncated_png(ds):
    path = ds.parent / TRAIN_STUDIES[0][0] / "image2.png"
    path.write_bytes(path.read_bytes()[:-30])
    return "train_image_paths.csv", 2, "image_path", "truncated PNG"


def _study_without_images(ds):
    _append_line(
        ds / "train_labeled_studies.csv", "MURA-v1.1/train/XR_HAND/patient00009/study1_negative/,0"
    )
    return "train_labeled_studies.csv", 9, "study_path", "has no images"


def _image_without_study(ds):
    rel = "MURA-v1.1/train/XR_HAND/patient00009/study1_negative/image1.png"
    _write_png(ds.parent / rel, 90)
    _append_line(ds / "train_image_paths.csv", rel)
    return "train_image_paths.csv", 14, "image_path", "not in train_labeled_studies.csv"


def _not_a_mura_path(ds):
    _replace_line(ds / "train_image_paths.csv", 0, "MURA-v1.1/train/wrist/img1.png")
    return "train_image_paths.csv", 1, "image_path", "not a MURA path"


def _wrong_split(ds):
    _append_line(ds / "valid_image_paths.csv", TRAIN_STUDIES[0][0] + "image1.png")
    return "valid_image_paths.csv", 5, "image_path", "in the train split, not valid"


def _duplicate_study(ds):
    _append_line(ds / "train_labeled_studies.csv", TRAIN_STUDIES[2][0] + ",1")
    return "train_labeled_studies.csv", 9, "study_path", "listed twice .first at row 3."


def _empty_split(ds):
    (ds / "valid_image_paths.csv").write_text("")
    return "valid_image_paths.csv", None, None, "lists no images"


BAD_INPUT = [
    _break_image_columns,
    _break_study_columns,
    _break_label,
    _break_label_text,
    _missing_image,
    _corrupt_png,
    _truncated_png,
    _study_without_images,
    _image_without_study,
    _not_a_mura_path,
    _wrong_split,
    _duplicate_study,
    _empty_split,
]


@pytest.mark.parametrize("breaker", BAD_INPUT, ids=[b.__name__.lstrip("_") for b in BAD_INPUT])
def test_bad_input_names_file_row_column(sample, breaker):
    file_name, row, column, reason = breaker(sample)
    with pytest.raises(DataError) as info:
        mura.inspect_dataset(sample.parent)
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert os.path.basename(error.path) == file_name and file_name in message
    assert error.row == row
    if row is not None:
        assert f"row {row}" in message
    assert error.column == column
    if column is not None:
        assert f"column '{column}'" in message
    assert pd.Series([message]).str.contains(reason).all(), message


def test_decode_verification_finds_a_broken_png_body(sample):
    """A file with a PNG signature and end but garbage inside passes the header check only."""
    path = sample.parent / VALID_STUDIES[1][0] / "image1.png"
    data = path.read_bytes()
    path.write_bytes(data[:16] + bytes(len(data) - 28) + data[-12:])
    assert len(mura_data.read_mura(sample, verify="header")) == 17
    with pytest.raises(DataError, match=r"valid_image_paths.csv: row 3, column 'image_path'"):
        mura_data.read_mura(sample, verify="decode")


def test_no_dataset_here(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MURA data set"):
        mura.inspect_dataset(tmp_path / "empty")


# --------------------------------------------------------------------------- splits and weights


def test_splits_by_patient(sample):
    records = mura_data.assign_splits(mura_data.read_mura(sample), val_fraction=0.3, seed=0)
    assert set(records.loc[records["mura_split"] == "valid", "split"]) == {"test"}
    train_side = records[records["mura_split"] == "train"]
    assert set(train_side["split"]) == {"train", "val"}
    assert (records.groupby("patient_id")["split"].nunique() == 1).all()
    # patient00001 has a wrist and a hand study: both in the same split.
    assert records.loc[records["patient_id"] == "patient00001", "split"].nunique() == 1
    again = mura_data.assign_splits(mura_data.read_mura(sample), val_fraction=0.3, seed=0)
    pd.testing.assert_series_equal(records["split"], again["split"])


def test_sample_weights_per_body_part(sample):
    records = mura_data.assign_splits(mura_data.read_mura(sample), val_fraction=0.0)
    weighted, table = mura_data.add_sample_weights(records)
    # MURA §3: per study type T, w1 = N_T / (A_T + N_T) on abnormal, w0 = A_T / (A_T + N_T) on
    # normal training images. Wrist: 2 abnormal and 3 normal images.
    assert table["wrist"] == pytest.approx((2 / 5, 3 / 5))
    # Elbow: 3 abnormal, 1 normal image.
    assert table["elbow"] == pytest.approx((3 / 4, 1 / 4))
    wrist = weighted[weighted["body_part"] == "wrist"]
    np.testing.assert_allclose(wrist["sample_weight"], np.where(wrist["label"] == 1, 3 / 5, 2 / 5))
    # Body parts seen only in valid get weight 1.
    finger = weighted[weighted["body_part"] == "finger"]
    np.testing.assert_allclose(finger["sample_weight"], 1.0)


def test_load_records(sample):
    records = mura.data.load_records(sample, config="demo")
    assert {"split", "sample_weight"} <= set(records.columns)
    assert set(records["split"]) <= {"train", "val", "test"}


def test_study_probabilities(sample):
    records = mura_data.read_mura(sample)
    probs = np.linspace(0.0, 1.0, len(records))
    studies = mura_data.study_probabilities(records, probs.reshape(-1, 1))
    assert len(studies) == len(TRAIN_STUDIES) + len(VALID_STUDIES)
    assert list(studies["study"]) == list(records["study"].drop_duplicates())
    elbow2 = records["study"] == "train/XR_ELBOW/patient00002/study2_positive/"
    row = studies.set_index("study").loc["train/XR_ELBOW/patient00002/study2_positive/"]
    assert row["num_images"] == 3 and row["label"] == 1 and row["body_part"] == "elbow"
    assert row["probability"] == pytest.approx(probs[elbow2.to_numpy()].mean())
    with pytest.raises(ValueError, match="probabilities for"):
        mura_data.study_probabilities(records, probs[:-1])


# --------------------------------------------------------------------------- tf.data


@pytest.mark.parametrize("training", [False, True])
def test_make_dataset_shapes(sample, training):
    records = mura.data.load_records(sample, config="demo")
    ds = mura_data.make_dataset(records, config="demo", training=training, batch_size=4, seed=1)
    batches = list(ds)
    assert sum(int(b[0].shape[0]) for b in batches) == len(records)
    images, targets, weights = batches[0]
    assert images.shape == (4, 128, 128, 3) and images.dtype == "float32"
    assert set(targets) == {"abnormal"} and targets["abnormal"].shape == (4, 1)
    assert weights.shape == (4,)
    assert 0.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0
    if not training:
        np.testing.assert_array_equal(targets["abnormal"][:, 0], records["label"].to_numpy()[:4])
        np.testing.assert_allclose(weights, records["sample_weight"].to_numpy()[:4])


def test_make_dataset_input_size_and_gray(sample):
    records = mura_data.read_mura(sample)
    ds = mura_data.make_dataset(records, config="demo", training=False, batch_size=2)
    images, targets = next(iter(ds))
    assert images.shape == (2, 128, 128, 3) and targets["abnormal"].shape == (2, 1)
    gray = mura_data.make_dataset(
        records.drop(columns=["label"]),
        config={"backbone": "densenet", "input_shape": (64, 48, 1), "blocks": (1, 1)},
        training=False,
        batch_size=3,
    )
    batch = next(iter(gray))
    assert batch.shape == (3, 64, 48, 1)
