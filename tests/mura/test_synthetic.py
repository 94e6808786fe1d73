"""Phantom MURA-v1.1 data sets: the real layout, read back by data.py, lesions that make the label."""

import csv
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pandas as pd
import pytest

import mura
from common.image_io import read_image
from mura import data as mura_data
from mura import synthetic

IMAGE_PATH = re.compile(
    r"^MURA-v1\.1/(train|valid)/XR_(ELBOW|FINGER|FOREARM|HAND|HUMERUS|SHOULDER|WRIST)/"
    r"patient\d{5}/study\d+_(positive|negative)/image\d+\.png$"
)
STUDY_PATH = re.compile(
    r"^MURA-v1\.1/(train|valid)/XR_[A-Z]+/patient\d{5}/study\d+_(positive|negative)/$"
)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mura_phantoms")
    returned = mura.write_phantom_dataset(root, num_subjects=40, seed=3)
    assert returned == root
    return root


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_layout_files(phantom_root):
    dataset = phantom_root / "MURA-v1.1"
    names = sorted(p.name for p in dataset.iterdir())
    for split in ("train", "valid"):
        assert f"{split}_image_paths.csv" in names
        assert f"{split}_labeled_studies.csv" in names
        assert (dataset / split).is_dir()
    assert (phantom_root / "_phantom_truth" / "index.csv").is_file()


@pytest.mark.parametrize("split", ["train", "valid"])
def test_csvs_are_headerless_with_real_paths(phantom_root, split):
    dataset = phantom_root / "MURA-v1.1"
    images = _rows(dataset / f"{split}_image_paths.csv")
    studies = _rows(dataset / f"{split}_labeled_studies.csv")
    assert images and studies
    assert all(len(r) == 1 and IMAGE_PATH.match(r[0]) for r in images)  # no header row either
    assert all(len(r) == 2 and STUDY_PATH.match(r[0]) and r[1] in ("0", "1") for r in studies)
    for path, label in studies:
        assert path.endswith(("_positive/", "_negative/"))
        assert (label == "1") == path.endswith("_positive/")
    for (path,) in images:
        assert path.split("/")[1] == split
        assert (phantom_root / path).is_file()
    # Every study has 1 to 4 views, every image a labelled study.
    views = pd.Series([p.rsplit("/", 1)[0] + "/" for (p,) in images]).value_counts()
    assert set(views.index) == {p for p, _ in studies}
    assert views.between(1, 4).all()


def test_real_archive_quirks(phantom_root):
    dataset = phantom_root / "MURA-v1.1"
    listed = {
        r[0] for split in ("train", "valid") for r in _rows(dataset / f"{split}_image_paths.csv")
    }
    junk = [p for p in dataset.rglob("._*")]
    assert junk, "no macOS AppleDouble files written"
    for p in junk:
        assert p.relative_to(phantom_root).as_posix() not in listed
        assert not p.read_bytes().startswith(b"\x89PNG")
    color_types = {}
    for path in listed:
        with open(phantom_root / path, "rb") as handle:
            head = handle.read(26)
        color_types[path] = head[25]  # IHDR colour type: 0 gray, 2 RGB
    assert set(color_types.values()) == {0, 2}
    rgb = [p for p, t in color_types.items() if t == 2][0]
    pixels = cv2.imread(str(phantom_root / rgb), cv2.IMREAD_UNCHANGED)
    assert pixels.ndim == 3 and pixels.shape[2] == 3


def test_patients(phantom_root):
    records = mura_data.read_mura(phantom_root)
    by_split = records.groupby("mura_split")["patient_id"].apply(set)
    assert not by_split["train"] & by_split["valid"], "a patient in both MURA splits"
    parts_per_patient = records.groupby("patient_id")["body_part"].nunique()
    assert (parts_per_patient > 1).any(), "no patient with studies of several body parts"
    assert set(records["body_part"]) == set(synthetic.BODY_PARTS)


def test_read_back_by_data_py(phantom_root):
    dataset = phantom_root / "MURA-v1.1"
    info = mura.inspect_dataset(phantom_root)
    assert info == mura.inspect_dataset(dataset)
    for split in ("train", "valid"):
        images = _rows(dataset / f"{split}_image_paths.csv")
        studies = _rows(dataset / f"{split}_labeled_studies.csv")
        assert info[split]["images"] == len(images)
        assert info[split]["studies"] == len(studies)
        assert info[split]["abnormal_studies"] == sum(int(label) for _, label in studies)
    records = mura_data.read_mura(phantom_root)
    assert not records["image_path"].str.contains("_phantom_truth|/\\._").any()


def test_truth_index_and_labels(phantom_root):
    truth = pd.read_csv(phantom_root / "_phantom_truth" / "index.csv")
    assert list(truth.columns) == [
        "image", "study", "body_part", "label", "kind", "mask", "x0", "y0", "x1", "y1"
    ]  # fmt: skip
    records = mura_data.read_mura(phantom_root)
    studies = records.drop_duplicates("study").set_index("image")
    abnormal = set(records.loc[records["label"] == 1, "image"].str.rsplit("/", n=1).str[0] + "/")
    # Every lesion is on an image of an abnormal study; every abnormal study shows one.
    assert set(truth["label"]) == {1}
    assert set(truth["study"]) == abnormal
    assert set(truth["image"]) <= set(records["image"])
    assert set(truth["kind"]) == set(synthetic.LESION_KINDS)
    assert len(studies) > 0
    for row in truth.itertuples():
        mask = read_image(phantom_root / row.mask) > 0.5
        image = read_image(phantom_root / row.image)
        assert mask.shape == image.shape
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (row.x0, row.y0, row.x1, row.y1)


def _contrast(image, mask):
    """Mean intensity inside the lesion minus the mean of a 4-pixel ring around it."""
    kernel = np.ones((9, 9), np.uint8)
    ring = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask
    return float(image[mask].mean() - image[ring].mean())


def test_lesions_are_visible_features(phantom_root):
    """Fractures and lytic lesions are darker than the bone around them, implants brighter."""
    truth = pd.read_csv(phantom_root / "_phantom_truth" / "index.csv")
    contrasts = {"fracture": [], "lytic": [], "implant": []}
    for row in truth.itertuples():
        image = read_image(phantom_root / row.image)
        mask = read_image(phantom_root / row.mask) > 0.5
        contrasts[row.kind].append(_contrast(image, mask))
    assert np.mean(np.array(contrasts["fracture"]) < -0.05) > 0.9
    assert np.mean(np.array(contrasts["lytic"]) < -0.05) > 0.9
    assert np.mean(np.array(contrasts["implant"]) > 0.05) > 0.9


def test_deterministic_for_a_seed(tmp_path):
    a = synthetic.write_phantom_dataset(tmp_path / "a", num_subjects=4, seed=11)
    b = synthetic.write_phantom_dataset(tmp_path / "b", num_subjects=4, seed=11)
    c = synthetic.write_phantom_dataset(tmp_path / "c", num_subjects=4, seed=12)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    csv_a = (a / "MURA-v1.1" / "train_image_paths.csv").read_bytes()
    csv_c = (c / "MURA-v1.1" / "train_image_paths.csv").read_bytes()
    pngs_a = {p.relative_to(a): p.read_bytes() for p in a.rglob("image*.png")}
    pngs_c = {p.relative_to(c): p.read_bytes() for p in c.rglob("image*.png")}
    assert csv_a != csv_c or any(pngs_c.get(k) != v for k, v in pngs_a.items())


def test_too_few_subjects(tmp_path):
    with pytest.raises(ValueError, match="num_subjects"):
        synthetic.write_phantom_dataset(tmp_path, num_subjects=1)
