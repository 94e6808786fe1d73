"""SPIDER / plain-layout readers, disc-volume extraction and the tf.data pipeline."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from common.errors import DataError
from spinenet import data
from spinenet.data import extract_disc_volume
from spinenet.data import inspect_dataset
from spinenet.data import load_volumes
from spinenet.data import make_dataset
from spinenet.data import read_dataset
from spinenet.data import read_series
from tests.spinenet.conftest import GRADINGS_HEADER
from tests.spinenet.conftest import spine_arrays
from tests.spinenet.conftest import write_series

TASKS = [
    "pfirrmann",
    "narrowing",
    "upper_endplate",
    "lower_endplate",
    "upper_marrow",
    "lower_marrow",
]


# ---------------------------------------------------------------------------- reading the layout


@pytest.mark.parametrize("level", ["folder", "parent"])
def test_reads_a_real_layout_sample(spider_sample, level):
    root = spider_sample if level == "folder" else spider_sample.parent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no T1 fallback, no skipped rows expected here
        records = read_dataset(root)
    assert len(records) == 6
    assert set(records["split"]) <= {"train", "val", "test"}
    by_key = records.set_index(["patient", "ivd_label"])
    # Patient 1 has T1 and T2 (upper-case file name): T2 is preferred; patient 7 has T2 SPACE only.
    assert by_key.loc[("1", 2), "sequence"] == "t2"
    assert by_key.loc[("1", 2), "image_path"].endswith("1_T2.MHA")
    assert by_key.loc[("7", 1), "sequence"] == "t2_space"
    assert by_key.loc[("1", 1), "level"] == "L5/S1" and by_key.loc[("7", 3), "level"] == "L3/L4"
    # Column -> task mapping (data.py docstring table).
    row = by_key.loc[("1", 2)]
    assert row["pfirrmann"] == 3 and row["pfirrmann_grade"] == 4
    assert row["narrowing"] == 1 and row["upper_endplate"] == 1 and row["lower_endplate"] == 0
    assert row["modic"] == 2 and row["upper_marrow"] == 1 and row["lower_marrow"] == 1
    assert by_key.loc[("7", 1), "upper_marrow"] == 1  # Modic 3 > 0
    assert by_key.loc[("1", 1), "upper_marrow"] == 0
    # An empty Modic cell is a missing label for both marrow tasks, not a zero.
    assert by_key.loc[("7", 2), "modic"] == -1
    assert by_key.loc[("7", 2), "upper_marrow"] == -1 and by_key.loc[("7", 2), "lower_marrow"] == -1
    assert by_key.loc[("7", 2), "pfirrmann"] == 4
    assert set(records.groupby("patient")["split"].nunique()) == {1}


def test_inspect_json(spider_sample):
    summary = inspect_dataset(spider_sample.parent)
    assert list(summary) == ["patients", "discs", "series", "modic_counts", "pfirrmann_counts"]
    assert summary["patients"] == 2 and summary["discs"] == 6 and summary["series"] == 3
    assert summary["modic_counts"] == {"0": 2, "1": 1, "2": 1, "3": 1}
    assert summary["pfirrmann_counts"] == {"1": 1, "2": 2, "3": 1, "4": 1, "5": 1}
    json.dumps(summary)


def _replace_csv(folder, lines):
    (folder / "radiological_gradings.csv").write_text("\n".join(lines) + "\n")


GOOD = [
    "1,1,0,0,1,0,0,0,0,2",
    "1,2,2,1,0,0,1,1,1,4",
    "7,1,3,0,0,0,0,0,0,3",
]


@pytest.mark.parametrize(
    "header, rows, row, column, words",
    [
        (GRADINGS_HEADER.replace("Modic,", ""), None, 1, "Modic", "missing column"),
        (GRADINGS_HEADER.replace("Pfirrman grade", "Grade"), None, 1, "Pfirrman grade", "missing"),
        (None, [*GOOD, "7,2,0,0,0,0,0,0,0,6"], 5, "Pfirrman grade", "outside 1..5"),
        (None, [*GOOD, "7,2,4,0,0,0,0,0,0,3"], 5, "Modic", "outside 0..3"),
        (None, [*GOOD, "7,2,0,2,0,0,0,0,0,3"], 5, "UP endplate", "outside 0..1"),
        (None, [*GOOD, "7,2,0,0,0,0,0,5,0,3"], 5, "Disc narrowing", "outside 0..3"),
        (None, [*GOOD, "7,2,x,0,0,0,0,0,0,3"], 5, "Modic", "not a number"),
        (None, [*GOOD, "7,2,1.5,0,0,0,0,0,0,3"], 5, "Modic", "not an integer"),
        (None, [*GOOD, "7,1,0,0,0,0,0,0,0,3"], 5, "IVD label", "already graded in row 4"),
        (None, [*GOOD, "7,30,0,0,0,0,0,0,0,3"], 5, "IVD label", "outside 0..25"),
        (None, [*GOOD, ",2,0,0,0,0,0,0,0,3"], 5, "Patient", "empty patient"),
        (["9,1,0,0,0,0,0,0,0,3"], None, 2, "Patient", "for any graded patient"),
        (None, [*GOOD, "7,5,0,0,0,0,0,0,0,3"], 5, "IVD label", "in no mask"),
    ],
)
def test_bad_gradings_raise_with_file_row_column(spider_sample, header, rows, row, column, words):
    if isinstance(header, list):  # only data rows given: the header is the good one
        header, rows = GRADINGS_HEADER, header
    _replace_csv(spider_sample, [header or GRADINGS_HEADER, *(rows or GOOD)])
    with pytest.raises(DataError) as caught:
        read_dataset(spider_sample)
    message = str(caught.value)
    assert "radiological_gradings.csv" in message
    assert f"row {row}" in message and f"column '{column}'" in message
    assert words in message
    assert "\n" not in message


def test_text_booleans_blank_cells_and_zero_ivd_rows(spider_sample):
    _replace_csv(
        spider_sample,
        [
            GRADINGS_HEADER.replace("Pfirrman", "Pfirrmann").upper(),
            "1,1,0,yes,No,0,0,0,0,2",
            "1,2,,,,,,,,",
            "1,0,0,0,0,0,0,0,0,1",
        ],
    )
    with pytest.warns(UserWarning, match="IVD label 0"):
        records = read_dataset(spider_sample)
    by_disc = records.set_index("ivd_label")
    assert by_disc.loc[1, "upper_endplate"] == 1 and by_disc.loc[1, "lower_endplate"] == 0
    assert all(by_disc.loc[2, task] == -1 for task in TASKS)
    assert len(records) == 2


@pytest.mark.parametrize("broken", ["image", "mask", "missing_mask", "empty_csv"])
def test_unreadable_or_absent_files_name_the_file(spider_sample, broken):
    if broken == "image":
        (spider_sample / "images" / "1_T2.MHA").write_bytes(b"ObjectType = Image\nNDims = x\n")
        records = read_dataset(spider_sample)
        with pytest.raises(DataError, match=r"1_T2\.MHA: cannot read MetaImage"):
            load_volumes(records[records["patient"] == "1"], cache=False)
        return
    if broken == "mask":
        (spider_sample / "masks" / "7_t2_SPACE.mha").write_bytes(b"\x00garbage")
        pattern = r"7_t2_SPACE\.mha: cannot read MetaImage"
    elif broken == "missing_mask":
        (spider_sample / "masks" / "7_t2_SPACE.mha").unlink()
        pattern = r"masks/7_t2_SPACE\.mha: mask missing"
    else:
        (spider_sample / "radiological_gradings.csv").write_text("")
        pattern = r"radiological_gradings\.csv: empty file"
    with pytest.raises(DataError, match=pattern):
        read_dataset(spider_sample)


def test_missing_data_folder_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        inspect_dataset(tmp_path / "nowhere")
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(DataError, match="no SPIDER layout"):
        inspect_dataset(tmp_path)


# ---------------------------------------------------------------------------- disc volumes


@pytest.mark.parametrize("angle_deg", [0.0, 12.0, -20.0])
def test_extraction_rotates_centres_and_crops_forty_percent(angle_deg):
    image, mask, bottoms = spine_arrays(angle_deg=angle_deg, rows=220, cols=110)
    volume, info = extract_disc_volume(image.astype(np.float32), mask, (1.0, 1.0, 4.0), 2)
    assert volume.shape == (112, 224, 9) and volume.dtype == np.float32
    assert abs(info["angle_deg"] - angle_deg) < 1.0
    regions = info["regions"][..., 4]
    ys, xs = np.nonzero(regions == 2)
    assert abs(ys.mean() - 55.5) < 1.5 and abs(xs.mean() - 111.5) < 1.5
    # The disc is horizontal: its upper edge has no slope (the edge is a staircase of the
    # 1 mm source voxels, so fit a line).
    cols = np.unique(xs)[5:-5]
    tops = [ys[xs == c].min() for c in cols]
    assert abs(np.degrees(np.arctan(np.polyfit(cols, tops, 1)[0]))) < 1.0
    # Disc 202 (6 mm) sits between vertebrae 1 and 2 (24 mm each): 40% of each shows,
    # 6 / 2 + 0.4 * 24 = 12.6 mm on each side of the centre (paper 002, §4).
    assert info["upper_label"] == 2 and info["lower_label"] == 1
    centre_column = regions[:, 100:124]
    upper_mm = (centre_column == 1).sum(axis=0).mean() * info["pixel_mm"]
    lower_mm = (centre_column == 3).sum(axis=0).mean() * info["pixel_mm"]
    assert abs(upper_mm - 0.4 * 24.0) < 0.6 and abs(lower_mm - 0.4 * 24.0) < 0.6
    assert abs(info["pixel_mm"] * 112 - 2 * 12.6) < 0.5
    # Normalisation: the median of the two vertebral bodies is 0.5 in every slice; clipped [0, 1].
    for k in range(9):
        body = volume[..., k][np.isin(info["regions"][..., k], (1, 3))]
        assert abs(np.median(body) - 0.5) < 0.01
    assert volume.min() >= 0 and volume.max() <= 1.0
    disc = volume[..., 4][regions == 2]
    assert abs(np.median(disc) - 0.5 * 500 / 410) < 0.02  # disc 500, vertebrae 400 and 420


def test_context_volume_centre_equals_the_plain_volume():
    image, mask, _ = spine_arrays(angle_deg=7.0)
    plain, _ = extract_disc_volume(image.astype(np.float32), mask, (1.0, 1.0, 4.0), 1)
    context, _ = extract_disc_volume(
        image.astype(np.float32), mask, (1.0, 1.0, 4.0), 1, margin_px=16, extra_slices=1
    )
    assert context.shape == (144, 256, 11)
    # Same sampling grid; OpenCV's fixed-point bilinear weights differ by < 1e-4.
    np.testing.assert_allclose(context[16:-16, 16:-16, 1:-1], plain, atol=1e-4)


def test_narrow_series_are_zero_padded_with_a_warning():
    image, mask, _ = spine_arrays(n_slices=5)
    with pytest.warns(UserWarning, match="spans 5 of 9 slices; 4 zero-padded"):
        volume, info = extract_disc_volume(image.astype(np.float32), mask, (1, 1, 4), 3, source="x")
    assert info["padded"] == 4
    zero = [k for k in range(9) if not volume[..., k].any()]
    assert zero == [0, 1, 7, 8]


def test_thin_slices_are_resampled_to_four_millimetres():
    image, mask, _ = spine_arrays(n_slices=21)
    _, info = extract_disc_volume(image.astype(np.float32), mask, (1.0, 1.0, 2.0), 3)
    np.testing.assert_allclose(np.diff(info["slice_positions"]), 2.0)
    assert info["padded"] == 0


def test_other_orientations_give_the_same_volume(tmp_path):
    image, mask, _ = spine_arrays(angle_deg=10.0)
    image[3] += 25  # make the slices distinguishable, so that a flipped slice axis would show
    volumes = []
    for orientation in (None, "LPS", "AIR", "PSR"):
        name = orientation or "PIL"
        write_series(tmp_path / f"i_{name}.mha", image, orientation=orientation)
        write_series(tmp_path / f"m_{name}.mha", mask, orientation=orientation)
        img, msk, spacing = read_series(tmp_path / f"i_{name}.mha", tmp_path / f"m_{name}.mha")
        assert img.shape == image.shape and spacing == (1.0, 1.0, 4.0)
        volumes.append(extract_disc_volume(img, msk, spacing, 2)[0])
    for volume in volumes[1:]:
        np.testing.assert_allclose(volume, volumes[0], atol=1e-5)


def test_a_missing_disc_in_the_mask_raises():
    image, mask, _ = spine_arrays()
    with pytest.raises(DataError, match="mask has no disc 9 \\(label 209\\)"):
        extract_disc_volume(image.astype(np.float32), mask, (1, 1, 4), 9, source="s.mha")


def test_load_volumes_caches_and_names_the_row(spider_sample, monkeypatch):
    records = read_dataset(spider_sample)
    first = load_volumes(records)
    assert first.shape == (6, 112, 224, 9) and first.dtype == np.float16
    context = load_volumes(records, context=True, dtype=np.float32)
    assert context.shape == (6, 144, 256, 11)
    np.testing.assert_allclose(context[:, 16:-16, 16:-16, 1:-1], first, atol=2e-3)

    def fail(*args, **kwargs):
        raise AssertionError("read again")

    monkeypatch.setattr(data, "read_series", fail)
    np.testing.assert_array_equal(load_volumes(records), first)
    monkeypatch.undo()
    data.clear_cache()
    bad = records.copy()
    bad.loc[0, "ivd_label"] = 8
    with pytest.raises(DataError, match=r"7_t2_SPACE\.mha|1_t2\.mha") as caught:
        load_volumes(bad.iloc[:1])
    assert f"row {bad.loc[0, 'csv_row']}" in str(caught.value)
    assert "column 'IVD label'" in str(caught.value)


def test_disk_cache(spider_sample, tmp_path, monkeypatch):
    records = read_dataset(spider_sample).iloc[:2]
    first = load_volumes(records, cache=False, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("disc_*.npz"))) == 2

    def fail(*args, **kwargs):
        raise AssertionError("read again")

    monkeypatch.setattr(data, "read_series", fail)  # the .npz files make the series unnecessary
    again = load_volumes(records, cache=False, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first, again)


# ---------------------------------------------------------------------------- plain layout


def _write_plain(folder, n=5, rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "volumes.npy", rng.random((n, 112, 224, 9)).astype(np.float32))
    header = "patient,pfirrmann,narrowing,upper_endplate,lower_endplate,split"
    rows = rows or [
        f"p{i // 2},{i % 5},{i % 2},0,1,{'train' if i < 3 else 'test'}" for i in range(n)
    ]
    (folder / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder


def test_plain_layout(tmp_path):
    folder = _write_plain(tmp_path / "mine")
    records = read_dataset(tmp_path)
    assert list(records["split"]) == ["train"] * 3 + ["test"] * 2
    assert (records["upper_marrow"] == -1).all()  # a task the data lack is missing, not 0
    volumes = load_volumes(records, dtype=np.float32)
    np.testing.assert_allclose(volumes, np.load(folder / "volumes.npy"), atol=0)
    # The context volumes of TTA are cached apart from the plain ones (zero-padded here).
    context = load_volumes(records, context=True, dtype=np.float32)
    assert context.shape == (5, 144, 256, 11)
    np.testing.assert_array_equal(context[:, 16:128, 16:240, 1:10], volumes)
    assert not context[:, :16].any() and not context[..., 0].any()
    summary = inspect_dataset(folder)
    assert summary["discs"] == 5 and summary["patients"] == 3 and summary["series"] == 0
    assert summary["pfirrmann_counts"] == {"1": 1, "2": 1, "3": 1, "4": 1, "5": 1}


@pytest.mark.parametrize(
    "rows, words",
    [
        (["p0,0,0,0,0,train"] * 4, "4 label rows for 5 volumes"),
        (["p0,0,0,0,0,train"] * 4 + ["p1,5,0,0,0,train"], "row 6, column 'pfirrmann'"),
        (["p0,0,0,0,0,train"] * 4 + ["p1,1,0,0,0,later"], "row 6, column 'split'"),
    ],
)
def test_plain_layout_bad_input(tmp_path, rows, words):
    _write_plain(tmp_path, rows=rows)
    with pytest.raises(DataError, match=words):
        read_dataset(tmp_path)


# ---------------------------------------------------------------------------- tf.data


def test_make_dataset_yields_volumes_and_task_targets(spider_sample):
    records = read_dataset(spider_sample)
    for training in (False, True):
        ds = make_dataset(records, config="spider", training=training, batch_size=4, seed=1)
        batches = list(ds)
        assert [b[0].shape[0] for b in batches] == [4, 2]
        volume, targets = batches[0]
        assert volume.shape == (4, 112, 224, 9) and volume.dtype.name == "float32"
        assert sorted(targets) == sorted(TASKS)
        assert all(t.dtype.name == "int32" and t.shape == (4,) for t in targets.values())
    plain = next(iter(make_dataset(records, config="spider", training=False, batch_size=6)))
    assert sorted(plain[1]["upper_marrow"].numpy().tolist()) == [-1, 0, 0, 1, 1, 1]
    again = next(iter(make_dataset(records, config="spider", training=False, batch_size=6)))
    np.testing.assert_array_equal(plain[0].numpy(), again[0].numpy())
    a = next(iter(make_dataset(records, config="spider", training=True, batch_size=6, seed=3)))
    b = next(iter(make_dataset(records, config="spider", training=True, batch_size=6, seed=3)))
    c = next(iter(make_dataset(records, config="spider", training=True, batch_size=6, seed=4)))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert not np.allclose(a[0].numpy(), c[0].numpy())
    assert not np.allclose(np.sort(a[0].numpy().ravel()), np.sort(plain[0].numpy().ravel()))


@pytest.mark.parametrize("case", ["class_out_of_range", "empty_split"])
def test_make_dataset_bad_input(spider_sample, case):
    records = read_dataset(spider_sample)
    if case == "class_out_of_range":
        records.loc[1, "narrowing"] = 2  # SPIDER narrowing has 2 classes in the `spider` preset
        pattern = r"radiological_gradings\.csv: row 3, column 'narrowing': label 2 outside 0\.\.1"
    else:
        records = records[records["split"] == "nonexistent"]
        pattern = "empty split"
    with pytest.raises(DataError, match=pattern):
        make_dataset(records, config="spider", training=True, batch_size=2)


def test_class_weights_are_inverse_frequencies(spider_sample):
    records = read_dataset(spider_sample)
    weights = data.class_weights(records, "spider")
    labels = records["upper_marrow"][records["upper_marrow"] >= 0].to_numpy()
    counts = np.bincount(labels, minlength=2)
    # alpha_c proportional to 1 / freq(c) (paper 002, §2)
    np.testing.assert_allclose(weights["upper_marrow"] * counts, [len(labels) / 2] * 2)
