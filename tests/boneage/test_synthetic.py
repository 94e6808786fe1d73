"""Phantom hands: the Kaggle layout, read back by data.py, maturity that follows age and sex."""

import csv
import hashlib

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from boneage import data
from boneage import synthetic
from common import phantoms
from common.image_io import read_image

NUM_SUBJECTS = 14


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("boneage_phantoms") / "rsna-bone-age"
    return synthetic.write_phantom_dataset(root, num_subjects=NUM_SUBJECTS, seed=3)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_written_layout_is_kaggles(phantom_root):
    train = _rows(phantom_root / "boneage-training-dataset.csv")
    test = _rows(phantom_root / "boneage-test-dataset.csv")
    assert train[0] == ["id", "boneage", "male"]
    assert test[0] == ["Case ID", "Sex"]
    assert len(train) - 1 + len(test) - 1 == NUM_SUBJECTS
    assert {row[2] for row in train[1:]} <= {"True", "False"}
    assert {row[1] for row in test[1:]} <= {"M", "F"}
    for row in train[1:]:
        assert 1 <= int(row[1]) <= 228
        image = (
            phantom_root / "boneage-training-dataset" / "boneage-training-dataset" / f"{row[0]}.png"
        )
        assert image.is_file()
    for row in test[1:]:
        assert (
            phantom_root / "boneage-test-dataset" / "boneage-test-dataset" / f"{row[0]}.png"
        ).is_file()
    image = read_image(image)
    assert image.ndim == 2 and image.shape[0] == 256 and 190 <= image.shape[1] <= 230


def test_truth_index_and_masks(phantom_root):
    index = _rows(phantom_root / "_phantom_truth" / "index.csv")
    assert index[0] == ["image", "kind", "mask", "x0", "y0", "x1", "y1"]
    hands = [row for row in index[1:] if row[1] == "hand"]
    assert len(hands) == NUM_SUBJECTS
    for rel_image, _kind, rel_mask, *box in hands:
        mask = read_image(phantom_root / rel_mask) > 0.5
        assert mask.shape == read_image(phantom_root / rel_image).shape
        x0, y0, x1, y1 = map(int, box)
        assert (x0, y0, x1, y1) == phantoms.mask_bbox(mask)
        assert 0.04 < mask.mean() < 0.6  # a hand, with background around it


def test_phantoms_read_back_by_data(phantom_root):
    records = data.read_records(phantom_root)
    subjects = {row[0]: row for row in _rows(phantom_root / "_phantom_truth" / "subjects.csv")[1:]}
    assert len(records) == NUM_SUBJECTS
    for _, record in records.iterrows():
        truth = subjects[record.image_id]
        assert truth[1] == record.split
        assert int(truth[3]) == record.male
        if record.split == "train":
            assert float(truth[2]) == record.age_months
        else:
            assert np.isnan(record.age_months)  # the Kaggle test CSV has no ages
    summary = data.inspect_dataset(phantom_root.parent)  # the folder that holds the data set
    assert set(summary) == {"train", "test"}
    assert set(summary["train"]) == {"images", "males", "mean_age_months"}
    assert set(summary["test"]) == {"images", "males"}
    assert summary["train"]["images"] + summary["test"]["images"] == NUM_SUBJECTS


def test_deterministic_for_a_seed(tmp_path):
    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}

    a = digest(synthetic.write_phantom_dataset(tmp_path / "a", num_subjects=4, seed=1))
    b = digest(synthetic.write_phantom_dataset(tmp_path / "b", num_subjects=4, seed=1))
    c = digest(synthetic.write_phantom_dataset(tmp_path / "c", num_subjects=4, seed=2))
    assert a == b
    assert a != c


def _bone_fraction(image, hand):
    """Measured from the pixels: the share of the hand (soft tissue) that is bone (Otsu)."""
    values = image[hand]
    return float((values > threshold_otsu(values)).mean())


AGES = (6, 30, 60, 90, 120, 150, 180, 210)


def _measure(age, male, repeats=3):
    out = []
    for k in range(repeats):
        image, hand, _, info = synthetic.render_hand(age, male, phantoms.rng((9, k)), (256, 208))
        out.append((_bone_fraction(image, hand), info))
    return out


@pytest.mark.parametrize("male", [True, False])
def test_measured_bone_fraction_rises_with_age(male):
    measured = [np.mean([m for m, _ in _measure(age, male)]) for age in AGES]
    assert all(b > a for a, b in zip(measured, measured[1:])), measured
    assert measured[-1] - measured[0] > 0.1


@pytest.mark.parametrize("male", [True, False])
def test_drawn_maturity_features_follow_age(male):
    infos = [_measure(age, male, repeats=1)[0][1] for age in AGES]
    carpals = [i["carpals_visible"] for i in infos]
    fused = [i["epiphyses_fused"] for i in infos]
    lengths = [i["length_scale"] for i in infos]
    assert carpals == sorted(carpals) and carpals[0] <= 2 and carpals[-1] == 8
    assert fused == sorted(fused) and fused[0] == 0 and fused[-1] > 15
    assert all(b > a for a, b in zip(lengths, lengths[1:]))  # phalanges lengthen
    assert infos[0]["epiphyses_visible"] == 0 and infos[3]["epiphyses_visible"] > 15


@pytest.mark.parametrize("age", [40, 100, 170])
def test_girls_mature_earlier(age):
    girls = _measure(age, False)
    boys = _measure(age, True)
    assert np.mean([i["maturity_months"] for _, i in girls]) > np.mean(
        [i["maturity_months"] for _, i in boys]
    )
    assert np.mean([m for m, _ in girls]) > np.mean([m for m, _ in boys])


def test_maturity_model():
    assert synthetic.skeletal_maturity_months(204, False) == pytest.approx(228.0)
    assert synthetic.skeletal_maturity_months(204, True) == pytest.approx(204.0)
    assert synthetic.skeletal_maturity_months(300, True) == 228.0
    assert synthetic.bone_length_scale(0) == pytest.approx(0.58)
    assert synthetic.bone_length_scale(228) == pytest.approx(1.0)
