"""kneeoa.synthetic: real on-disk layouts, grade-shaped features, ground truth, determinism."""

import cv2
import numpy as np
import pandas as pd
import pytest

from common import phantoms
from common.image_io import list_images
from common.image_io import read_image
from kneeoa import synthetic
from kneeoa.data import inspect_dataset
from kneeoa.data import load_records
from tests.kneeoa.conftest import NUM_SUBJECTS


def _truth(root):
    return pd.read_csv(root / "_phantom_truth" / "index.csv", dtype={"image": str})


def test_folders_layout(phantom_root):
    base = phantom_root / "kneeKL224"
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == [
        "auto_test",
        "test",
        "train",
        "val",
    ]
    images = list_images(base)
    names = {}
    for path in images:
        split, grade = path.parent.parent.name, path.parent.name
        assert grade in {"0", "1", "2", "3", "4"}
        assert path.stem[:-1].isdigit() and path.stem[-1] in "RL", path.name
        names.setdefault(split, []).append(path.stem)
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.uint8 and pixels.shape == (224, 224)
    knees = names["train"] + names["val"] + names["test"]
    assert len(knees) == len(set(knees)) == 2 * NUM_SUBJECTS
    assert sorted(names["auto_test"]) == sorted(names["test"])
    # both knees of a participant share a split
    for split in ("train", "val", "test"):
        ids = [n[:-1] for n in names[split]]
        assert all(ids.count(i) == 2 for i in ids)
    assert list(base.rglob("._*")) and (base / ".DS_Store").exists()


def test_oai_layout(phantom_root):
    base = phantom_root / "OAI"
    raw = (base / "kXR_SQ_BU00.txt").read_bytes()
    lines = raw.decode("ascii").split("\r\n")
    assert lines[0] == "ID|SIDE|READPRJ|VERSION|V00XRKL|V00XRJSM|V00XRJSL"
    rows = [line.split("|") for line in lines[1:] if line]
    ids = sorted({r[0] for r in rows})
    assert len(ids) == NUM_SUBJECTS
    readings = {(r[0], r[1][0]) for r in rows if r[2] == "15"}
    assert len(readings) == 2 * NUM_SUBJECTS  # one READPRJ 15 row per knee
    assert {r[1] for r in rows} <= {"1", "2", "1: Right", "2: Left"}
    images = list_images(base / "images")
    assert sorted(p.stem for p in images) == ids
    assert {p.suffix for p in images} == {".png", ".dcm"}
    for path in images:
        assert read_image(path).shape == (240, 336)  # two 240 x 168 knees side by side
    png = next(p for p in images if p.suffix == ".png")
    assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert list((base / "images").glob("._*"))


@pytest.mark.parametrize(
    "sub, layout, source",
    [
        ("kneeKL224", None, "folders"),
        ("OAI", None, "oai"),
        ("", "oai", "oai"),  # the root holds both: --layout chooses (without it, an error)
        ("", "folders", "folders"),
    ],
)
def test_readers_read_the_phantoms(phantom_root, sub, layout, source):
    summary = inspect_dataset(phantom_root / sub, layout=layout)
    assert summary["source"] == source
    truth = _truth(phantom_root)
    joint = truth[truth["kind"] == "joint_space"]
    prefix = "kneeKL224/" if source == "folders" else "OAI/"
    expected = joint[joint["image"].str.startswith(prefix)]
    assert sum(summary["kl_counts"].values()) == len(expected)
    counts = expected["kl"].value_counts()
    assert summary["kl_counts"] == {str(k): int(counts.get(k, 0)) for k in range(5)}


def test_records_agree_with_truth(phantom_root):
    records = load_records(phantom_root / "OAI")
    truth = _truth(phantom_root)
    joint = truth[(truth["kind"] == "joint_space") & truth["image"].str.startswith("OAI/")]
    by_knee = {(row.image.split("/")[-1], row.side): row.kl for row in joint.itertuples()}
    got = {(r.path.split("/")[-1], r.side): r.kl for r in records.itertuples()}
    assert got == by_knee
    # blank V00XRKL rows are dropped and counted
    assert records.attrs["dropped_missing_kl"] == 2 * NUM_SUBJECTS - len(records)


def test_truth_masks(phantom_root):
    truth = _truth(phantom_root)
    assert list(truth.columns) == list(synthetic.TRUTH_COLUMNS)
    for row in truth.itertuples():
        mask = read_image(phantom_root / row.mask) > 0.5
        image = read_image(phantom_root / row.image)
        assert mask.shape == image.shape
        assert phantoms.mask_bbox(mask) == (row.x0, row.y0, row.x1, row.y1)
        if row.image.startswith("OAI/"):
            # PA convention: the patient's right knee is the image's left half.
            half = image.shape[1] // 2
            assert row.x1 <= half if row.side == "R" else row.x0 >= half
    kinds = truth.groupby(["image", "side"]).agg(kl=("kl", "first"), kinds=("kind", set))
    for knee in kinds.itertuples():
        assert "joint_space" in knee.kinds
        assert ("sclerosis" in knee.kinds) == (knee.kl >= 3)
        if knee.kl >= 2:
            assert "osteophyte" in knee.kinds
        if knee.kl == 0:
            assert "osteophyte" not in knee.kinds


@pytest.fixture(scope="module")
def rendered():
    rng = phantoms.rng(11)
    return {
        kl: [synthetic.render_knee((160, 112), kl, rng, mirror=i % 2 == 1) for i in range(6)]
        for kl in range(5)
    }


def test_joint_space_narrows_with_grade(rendered):
    medial = [np.mean([info["jsw_medial_px"] for _, _, info in rendered[kl]]) for kl in range(5)]
    assert all(a > b for a, b in zip(medial, medial[1:])), medial
    # measured on the written masks too: gap pixels per knee shrink with grade
    area = [np.mean([m["joint_space"].sum() for _, m, _ in rendered[kl]]) for kl in range(4)]
    assert all(a > b for a, b in zip(area, area[1:])), area


@pytest.mark.parametrize("kl", [0, 1, 2, 3])
def test_joint_space_is_dark_between_bright_bone(rendered, kl):
    for image, masks, info in rendered[kl]:
        gap = masks["joint_space"]
        bone = info["bone"] & ~masks["sclerosis"]
        assert image[gap].mean() < image[bone].mean() - 0.15


@pytest.mark.parametrize("kl", [2, 3, 4])
def test_osteophytes_are_bony_spurs(rendered, kl):
    for image, masks, info in rendered[kl]:
        spur = masks["osteophyte"]
        assert spur.any()
        ring = cv2.dilate(spur.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        soft = ring & ~spur & ~info["bone"]
        assert image[spur].mean() > image[soft].mean() + 0.1
    sizes = [np.mean([m["osteophyte"].sum() for _, m, _ in rendered[k]]) for k in (2, 3, 4)]
    assert sizes[0] < sizes[1] < sizes[2]


@pytest.mark.parametrize("kl", [3, 4])
def test_sclerosis_is_brighter_bone(rendered, kl):
    for image, masks, info in rendered[kl]:
        band = masks["sclerosis"]
        assert band.any()
        other_bone = info["bone"] & ~band
        assert image[band].mean() > image[other_bone].mean() + 0.08
    for lower in (0, 1, 2):
        assert not any(m["sclerosis"].any() for _, m, _ in rendered[lower])


def test_deformity_only_at_kl4(rendered):
    assert all(info["varus_deg"] >= 3.0 for _, _, info in rendered[4])
    assert all(info["varus_deg"] == 0.0 for kl in range(4) for _, _, info in rendered[kl])


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_deterministic_for_a_seed(tmp_path):
    a = synthetic.write_phantom_dataset(tmp_path / "a", num_subjects=4, seed=5)
    b = synthetic.write_phantom_dataset(tmp_path / "b", num_subjects=4, seed=5)
    c = synthetic.write_phantom_dataset(tmp_path / "c", num_subjects=4, seed=6)
    assert _files(a) == _files(b)
    for rel in _files(a):
        if rel.suffix == ".dcm":  # fresh DICOM UIDs every time; the pixels must agree
            np.testing.assert_array_equal(read_image(a / rel), read_image(b / rel))
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "OAI/kXR_SQ_BU00.txt").read_bytes() != (c / "OAI/kXR_SQ_BU00.txt").read_bytes()


@pytest.mark.parametrize(
    "layout, present, absent", [("folders", "kneeKL224", "OAI"), ("oai", "OAI", "kneeKL224")]
)
def test_single_layout(tmp_path, layout, present, absent):
    root = synthetic.write_phantom_dataset(tmp_path, num_subjects=3, layout=layout)
    assert (root / present).is_dir() and not (root / absent).exists()
    assert inspect_dataset(root)["source"] == layout


@pytest.mark.parametrize(
    "kwargs, message",
    [({"layout": "nifti"}, "Unknown layout 'nifti'"), ({"num_subjects": 1}, "at least 2")],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.write_phantom_dataset(tmp_path, **kwargs)
