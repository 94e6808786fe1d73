"""Phantoms: the RA2-DREAM layout, scores consistent with the drawn joints, truth files."""

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from common import phantoms as ph
from common.image_io import exif_orientation
from common.image_io import read_image
from deepra import columns
from deepra import data
from deepra.synthetic import FINGER_GAP_PX
from deepra.synthetic import render_film
from deepra.synthetic import write_phantom_dataset


def test_layout(phantom_root):
    root = phantom_root
    header = (root / "train" / "training.csv").read_text().splitlines()[0].split(",")
    assert header == list(columns.TRAINING_COLUMNS)
    template = pd.read_csv(root / "test" / "template.csv")
    assert list(template.columns) == list(columns.TRAINING_COLUMNS) and len(template) == 2
    films = sorted(p.name for p in (root / "train").glob("*.jpg") if not p.name.startswith("._"))
    assert films[:4] == ["PHA001-LF.jpg", "PHA001-LH.jpg", "PHA001-RF.jpg", "PHA001-RH.jpg"]
    assert len(films) == 16 and len(list((root / "test").glob("PHA*.jpg"))) == 8
    assert (root / "train" / "._PHA001-LH.jpg").exists()
    assert len(list((root / "train").glob("PHA*.xml"))) == 16
    assert (root / "_phantom_truth" / "index.csv").exists()


def test_scores_are_consistent(phantom_root):
    frame = pd.read_csv(phantom_root / "train" / "training.csv")
    erosion = frame[list(columns.EROSION_COLUMNS)].sum(axis=1)
    narrowing = frame[list(columns.NARROWING_COLUMNS)].sum(axis=1)
    assert (frame["Overall_erosion"] == erosion).all()
    assert (frame["Overall_narrowing"] == narrowing).all()
    assert (frame["Overall_Tol"] == erosion + narrowing).all()
    for column in columns.JOINT_COLUMNS:
        assert frame[column].between(0, columns.score_max(column)).all()


def test_quirks_rgb_and_exif(tmp_path):
    root = write_phantom_dataset(tmp_path, num_subjects=8, seed=3)
    modes, orientations = set(), set()
    for path in (root / "train").glob("PHA*.jpg"):
        with Image.open(path) as im:
            modes.add(im.mode)
        orientations.add(exif_orientation(path))
    assert modes == {"L", "RGB"}
    assert len(orientations) > 1
    # boxes are given in the upright frame: every box fits the film as read_image returns it
    for xml in (root / "train").glob("*.xml"):
        image = read_image(xml.with_suffix(".jpg"))
        size = ET.parse(xml).getroot().find("size")
        assert (int(size.findtext("height")), int(size.findtext("width"))) == image.shape


def _objects(xml_path):
    root = ET.parse(xml_path).getroot()
    return [
        (
            o.findtext("name"),
            *(o.find("bndbox").findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")),
        )
        for o in root.findall("object")
    ]


def test_deterministic_for_a_seed(phantom_root, tmp_path):
    again = write_phantom_dataset(tmp_path / "again", num_subjects=4, seed=0)
    for rel in ("train/training.csv", "train/PHA002-RF.jpg", "_phantom_truth/index.csv"):
        assert (again / rel).read_bytes() == (phantom_root / rel).read_bytes(), rel
    xml = "train/PHA003-LH.xml"
    assert _objects(again / xml) == _objects(phantom_root / xml)
    other = write_phantom_dataset(tmp_path / "other", num_subjects=4, seed=1)
    rel = "train/PHA002-RF.jpg"
    assert (other / rel).read_bytes() != (phantom_root / rel).read_bytes()


def _uniform_scores(erosion=0, narrowing=0):
    scores = {c: 0 for c in columns.JOINT_COLUMNS}
    for c in columns.JOINT_COLUMNS:
        if c in columns.EROSION_COLUMNS:
            scores[c] = min(erosion, columns.score_max(c))
        else:
            scores[c] = narrowing
    return scores


def _measured_width(image, joint):
    """Width of the dark joint space along the bone axis (below mid-way tissue/bone), in px."""
    background, bone = np.percentile(image, [5, 99.5])
    threshold = background + 0.6 * (bone - background)
    half = joint["gap_px"] / 2 + 7.0
    t = np.arange(-half, half, 0.1)
    xs = joint["x"] + t * joint["ux"]
    ys = joint["y"] + t * joint["uy"]
    profile = ndimage.map_coordinates(image, [ys, xs], order=1)
    return 0.1 * float((profile < threshold).sum())


@pytest.mark.parametrize("limb", ["LH", "RF"])
def test_joint_space_narrows_with_the_score(limb):
    widths, gaps = {}, {}
    for grade in range(5):
        image, _, _, joints = render_film(limb, _uniform_scores(narrowing=grade), ph.rng(7))
        assert sorted(j["column"] for j in joints) == sorted(
            c for c in columns.NARROWING_COLUMNS if c.startswith(limb)
        )
        gaps[grade] = np.array([j["gap_px"] for j in joints])
        widths[grade] = np.array([_measured_width(image, j) for j in joints])
        if grade < 4:  # measured on the film: the drawn joint space, within a pixel
            np.testing.assert_allclose(widths[grade], gaps[grade], atol=1.0)
    for grade in range(5):  # drawn: g0 * (1 - 0.2 * grade), g0 = 6 px (fingers, toes), 5 (wrist)
        np.testing.assert_allclose(gaps[grade], gaps[0] * (1 - 0.2 * grade))
    finger = np.array(["_wrist_" not in j["column"] for j in joints])
    assert 0.9 * FINGER_GAP_PX < gaps[0][finger].mean() < 1.1 * FINGER_GAP_PX
    measured = [widths[g].mean() for g in range(5)]
    assert all(a > b for a, b in zip(measured, measured[1:], strict=False)), measured


@pytest.mark.parametrize("limb, top", [("RH", 5), ("LF", 10)])
def test_erosion_bites_grow_with_the_score(limb, top):
    healthy, _, _, _ = render_film(limb, _uniform_scores(), ph.rng(11))
    areas = []
    for grade in range(1, top + 1, 2 if top == 10 else 1):
        image, _, masks, _ = render_film(limb, _uniform_scores(erosion=grade), ph.rng(11))
        erosion_columns = [c for c in columns.EROSION_COLUMNS if c.startswith(limb)]
        assert sorted(masks) == sorted(erosion_columns)
        areas.append(np.mean([m.sum() for m in masks.values()]))
        union = np.any(list(masks.values()), axis=0)
        # the eroded pixels were bone in the healthy film and are now much darker
        assert (healthy[union] - image[union]).mean() > 0.2
    assert all(a < b for a, b in zip(areas, areas[1:])), areas


def test_truth_index_matches_training_csv(phantom_root):
    index = pd.read_csv(phantom_root / "_phantom_truth" / "index.csv")
    scores = pd.read_csv(phantom_root / "train" / "training.csv").set_index("Patient_ID")
    train = index[index["image"].str.startswith("train/")]
    assert len(train) > 0
    for row in train.itertuples():
        pid = row.image.split("/")[1].split("-")[0]
        assert scores.loc[pid, row.column] == row.score > 0
        mask = np.asarray(Image.open(phantom_root / "_phantom_truth" / row.mask)) > 127
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min()) == (row.x0, row.y0)
    eroded = {(r.image.split("/")[1].split("-")[0], r.column) for r in train.itertuples()}
    for pid in scores.index:
        for column in columns.EROSION_COLUMNS:
            assert ((pid, column) in eroded) == (scores.loc[pid, column] > 0)
    joints = pd.read_csv(phantom_root / "_phantom_truth" / "joints.csv")
    assert set(joints["column"]) == set(columns.NARROWING_COLUMNS)


def test_read_back_by_data(phantom_root):
    records = data.read_records(phantom_root)
    assert len(records) == 16 and set(records["limb"]) == set(columns.LIMBS)
    boxes = data.read_boxes(phantom_root)
    per_film = boxes.groupby("image")["label"].apply(sorted)
    for image, labels in per_film.items():
        expected = (
            columns.HAND_CLASSES if image.endswith(("LH.jpg", "RH.jpg")) else columns.FOOT_CLASSES
        )
        assert labels == sorted(expected)
