"""Phantoms: SPIDER layout on disk, read back, deterministic, labels that follow the drawing."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from spinenet.data import inspect_dataset
from spinenet.data import list_series
from spinenet.data import read_dataset
from spinenet.synthetic import GRADING_HEADER
from spinenet.synthetic import LESION_KINDS
from spinenet.synthetic import read_truth_index
from spinenet.synthetic import truth_volumes
from spinenet.synthetic import write_phantom_dataset
from tests.spinenet.conftest import PIL_DIRECTION

SPIDER_HEADER = (
    "Patient,IVD label,Modic,UP endplate,LOW endplate,Spondylolisthesis,Disc herniation,"
    "Disc narrowing,Disc bulging,Pfirrman grade"
)


def test_layout_on_disk(phantom_root):
    header = (phantom_root / "radiological_gradings.csv").read_text().splitlines()[0]
    assert header == SPIDER_HEADER == ",".join(GRADING_HEADER)
    images = sorted(p.name for p in (phantom_root / "images").iterdir())
    masks = sorted(p.name for p in (phantom_root / "masks").iterdir())
    assert images == masks and len(images) == 6
    assert {"1_t1.mha", "2_t1.mha", "3_t1.mha"} <= set(images)
    assert any(name.endswith("_t2_SPACE.mha") for name in images)
    assert any(name.endswith("_t2.mha") for name in images)
    directions = {sitk.ReadImage(str(phantom_root / "images" / n)).GetDirection() for n in images}
    assert PIL_DIRECTION in directions and len(directions) > 1  # some series reoriented
    for name in images:
        mask = sitk.ReadImage(str(phantom_root / "masks" / name))
        labels = set(np.unique(sitk.GetArrayViewFromImage(mask)).tolist())
        assert {100, 201, 202, 203, 204, 205, 206} <= labels
        assert {1, 2, 3, 4, 5} <= labels and ({6, 106} & labels)
    index = read_truth_index(phantom_root)
    assert list(index.columns) == [
        "image", "patient", "ivd_label", "kind", "mask", "mask_value",
        "x0", "y0", "z0", "x1", "y1", "z1",
    ]  # fmt: skip
    assert set(index["kind"]) <= set(LESION_KINDS) and len(index) > 0
    for row in index.itertuples():
        assert (phantom_root / row.image).is_file() and (phantom_root / row.mask).is_file()
        stored = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_root / row.mask)))
        box = stored[row.z0 : row.z1, row.y0 : row.y1, row.x0 : row.x1]
        assert (box == row.mask_value).sum() == (stored == row.mask_value).sum() > 0


def test_read_back_and_inspect(phantom_root):
    records = read_dataset(phantom_root)
    assert len(records) == 18 and records["patient"].nunique() == 3
    assert set(records["sequence"]) == {"t2", "t2_space"}
    assert len(list_series(phantom_root)) == 6
    summary = inspect_dataset(phantom_root)
    assert summary["patients"] == 3 and summary["discs"] == 18 and summary["series"] == 6
    with open(phantom_root / "radiological_gradings.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    grades = [r["Pfirrman grade"] for r in rows if r["Pfirrman grade"]]
    assert sum(summary["pfirrmann_counts"].values()) == len(grades)


def test_deterministic_for_a_seed(tmp_path):
    kwargs = dict(num_subjects=1, write_t1=False, space_fraction=0.0)
    a = write_phantom_dataset(tmp_path / "a", seed=3, **kwargs)
    b = write_phantom_dataset(tmp_path / "b", seed=3, **kwargs)
    c = write_phantom_dataset(tmp_path / "c", seed=4, **kwargs)

    def pixels(root):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(root / "images" / "1_t2.mha")))

    text = (a / "radiological_gradings.csv").read_bytes()
    assert text == (b / "radiological_gradings.csv").read_bytes()
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    with pytest.raises(ValueError, match="num_subjects"):
        write_phantom_dataset(tmp_path / "d", num_subjects=0)


@pytest.fixture(scope="module")
def cut_discs(phantom_root):
    records = read_dataset(phantom_root)
    return [(row, *truth_volumes(phantom_root, row)) for row in records.to_dict("records")]


def test_disc_height_follows_narrowing(cut_discs):
    heights = {0: [], 1: []}
    for row, _, _, regions in cut_discs:
        if row["narrowing"] < 0:
            continue
        centre = regions[:, 92:132, 4] == 2
        heights[row["narrowing"]].append(centre.sum(axis=0).mean())
    assert heights[0] and heights[1]
    # In the extracted frame (scaled by the vertebrae) a narrowed disc is clearly thinner.
    assert max(heights[1]) < 0.8 * min(heights[0])


def test_disc_brightness_follows_pfirrmann(cut_discs):
    grades, brightness = [], []
    for row, volume, _, regions in cut_discs:
        if row["pfirrmann"] < 0:
            continue
        core = (regions[..., 4] == 2) & (np.abs(np.arange(224) - 111.5) < 20)[None, :]
        grades.append(row["pfirrmann"])
        brightness.append(np.percentile(volume[..., 4][core], 90))
    grades, brightness = np.array(grades), np.array(brightness)
    assert len(set(grades)) >= 3
    means = [brightness[grades == g].mean() for g in sorted(set(grades))]
    assert all(np.diff(means) < 0), means  # higher grade, darker nucleus


@pytest.mark.parametrize(
    "task, kind, upper",
    [
        ("upper_endplate", "upper_endplate_defect", True),
        ("lower_endplate", "lower_endplate_defect", False),
        ("upper_marrow", "upper_marrow_change", True),
        ("lower_marrow", "lower_marrow_change", False),
    ],
)
def test_lesions_follow_the_endplate_and_marrow_labels(cut_discs, task, kind, upper):
    seen = {0: 0, 1: 0}
    for row, volume, masks, regions in cut_discs:
        label = row[task]
        if label < 0:
            continue
        seen[label] += 1
        lesion = masks[kind]
        assert lesion.any() == bool(label), (row["patient"], row["ivd_label"], task)
        if not label:
            continue
        rows = np.nonzero(lesion)[0]
        # On its side of the (horizontal, centred) disc, and in bone rather than in the disc.
        assert rows.max() < 55.5 if upper else rows.min() > 55.5
        assert (regions[lesion] == 2).mean() < 0.1
        host = 1 if upper else 3
        if upper or row["ivd_label"] > 1:  # below L5/S1 is the sacrum, which has no label
            assert (regions[lesion] == host).mean() > 0.8
        # Visible: the lesion differs from the vertebral marrow (normalised to 0.5).
        assert abs(np.median(volume[lesion]) - 0.5) > 0.1
    assert seen[0] and seen[1]
