"""Readers of the RA2-DREAM layout on a hand-written sample with real-world quirks, and bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common.errors import DataError
from deepra import columns
from deepra import data
from deepra.joints import joint_model_config
from deepra.synthetic import voc_xml

PATIENTS = ("UAB001", "UAB002")


def _film(path, *, rgb=False, orientation=None, size_wh=(120, 160)):
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    pixels = (rng.uniform(0, 255, size=size_wh[::-1])).astype(np.uint8)
    image = Image.fromarray(pixels, "L")
    if rgb:
        image = image.convert("RGB")
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, "JPEG", quality=90, **kwargs)


def _scores(seed):
    rng = np.random.default_rng(seed)
    row = {c: int(rng.integers(0, columns.score_max(c) + 1)) for c in columns.JOINT_COLUMNS}
    erosion = sum(row[c] for c in columns.EROSION_COLUMNS)
    narrowing = sum(row[c] for c in columns.NARROWING_COLUMNS)
    row.update(
        Overall_Tol=erosion + narrowing, Overall_erosion=erosion, Overall_narrowing=narrowing
    )
    return row


@pytest.fixture
def sample(tmp_path):
    """A real-looking download: <tmp>/RA2_challenge/{train,test}, columns shuffled and re-cased."""
    root = tmp_path / "RA2_challenge"
    train, test = root / "train", root / "test"
    train.mkdir(parents=True)
    test.mkdir()
    rows = []
    for i, pid in enumerate(PATIENTS):
        rows.append({"Patient_ID": pid, **_scores(i)})
        for k, limb in enumerate(columns.LIMBS):
            suffix = ".JPG" if (i, k) == (1, 3) else ".jpg"
            _film(train / f"{pid}-{limb}{suffix}", rgb=k == 1, orientation=6 if k == 2 else None)
    frame = pd.DataFrame(rows)
    order = list(frame.columns)
    order = [order[0], *reversed(order[1:])]  # read by name, not by position
    frame = frame[order]
    frame["Notes"] = "extra column"
    frame.columns = [c.lower() if c.startswith("LF") else c for c in frame.columns]
    frame.to_csv(train / "training.csv", index=False, encoding="utf-8-sig")
    (train / "._UAB001-LH.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    template = pd.DataFrame({c: [""] for c in columns.TRAINING_COLUMNS})
    template["Patient_ID"] = ["UAB900"]
    template.to_csv(test / "template.csv", index=False)
    for limb in columns.LIMBS:
        _film(test / f"UAB900-{limb}.jpg")
    return tmp_path, root, rows


def test_reads_the_real_layout(sample):
    holder, root, rows = sample
    for where in (holder, root):  # the data set folder or the folder holding it
        records = data.read_records(where)
        assert len(records) == 8
        assert list(records.columns[:5]) == ["patient_id", "limb", "kind", "path", "csv_row"]
        first = records[records["patient_id"] == "UAB002"].iloc[0]
        for column in columns.SCORE_COLUMNS:
            assert first[column] == rows[1][column]
    assert records[records["limb"] == "RF"]["path"].iloc[1].endswith("UAB002-RF.JPG")
    assert not records["path"].str.contains("._", regex=False).any()
    template = data.read_template(holder)
    assert template["patient_id"].tolist() == ["UAB900"] * 4


def test_training_csv_at_root(sample):
    _, root, _ = sample
    for path in (root / "train").iterdir():
        shutil.move(str(path), root / path.name)
    assert len(data.read_records(root)) == 8


def test_inspect_json(sample):
    holder, _, rows = sample
    info = data.inspect_dataset(holder)
    assert list(info) == [
        "patients",
        "films",
        "erosion_columns",
        "narrowing_columns",
        "overall_tol_sum",
        "max_foot_erosion",
    ]
    foot = [c for c in columns.EROSION_COLUMNS if c[:2] in ("LF", "RF")]
    assert info == {
        "patients": 2,
        "films": 8,
        "erosion_columns": 44,
        "narrowing_columns": 42,
        "overall_tol_sum": sum(r["Overall_Tol"] for r in rows),
        "max_foot_erosion": max(r[c] for r in rows for c in foot),
    }
    json.dumps(info)


def _edit_csv(root, fn):
    path = root / "train" / "training.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    frame = fn(frame)
    frame.to_csv(path, index=False)
    return path


def _set(column, row, value):
    def fn(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return fn


@pytest.mark.parametrize(
    "edit, row, column, reason",
    [
        (lambda f: f.drop(columns=["RF_mtp_J__3"]), 1, "RF_mtp_J__3", "missing column"),
        (lambda f: f.drop(columns=["Patient_ID"]), 1, "Patient_ID", "missing column"),
        (_set("LH_pip_E__2", 1, "6"), 3, "LH_pip_E__2", "outside 0..5"),
        (_set("lf_mtp_e__ip", 0, "11"), 2, "LF_mtp_E__ip", "outside 0..10"),
        (_set("RH_wrist_J__radcar", 1, "5"), 3, "RH_wrist_J__radcar", "outside 0..4"),
        (_set("RH_mcp_E__1", 0, "-1"), 2, "RH_mcp_E__1", "outside 0..5"),
        (_set("Overall_Tol", 1, "abc"), 3, "Overall_Tol", "not a number"),
        (_set("LH_mcp_J__2", 0, ""), 2, "LH_mcp_J__2", "not a number"),
        (_set("Patient_ID", 1, "UAB001"), 3, "Patient_ID", "listed twice"),
        (lambda f: f.iloc[:0], 2, None, "no patients"),
    ],
)
def test_bad_training_csv(sample, edit, row, column, reason):
    holder, root, _ = sample
    path = _edit_csv(root, edit)
    with pytest.raises(DataError) as info:
        data.read_records(holder)
    message = str(info.value)
    assert message.startswith(str(path)) and f"row {row}" in message and reason in message
    if column:
        assert f"column '{column}'" in message
    assert "\n" not in message


def test_rows_count_blank_lines_and_duplicate_headers(sample):
    holder, root, _ = sample
    path = root / "train" / "training.csv"
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split(",")
    bad = lines[2].split(",")
    bad[header.index("RH_pip_J__4")] = "9"
    path.write_text("\n".join([lines[0], lines[1], "", ",".join(bad)]) + "\n")
    with pytest.raises(DataError, match=r"row 4, column 'RH_pip_J__4': value 9 outside 0\.\.4"):
        data.read_records(holder)
    path.write_text("\n".join([lines[0] + ",RH_pip_J__4", lines[1] + ",0"]) + "\n")
    with pytest.raises(DataError, match=r"row 1, column 'RH_pip_J__4': duplicate column"):
        data.read_records(holder)


def test_foot_erosion_ten_is_valid(sample):
    holder, root, _ = sample
    _edit_csv(root, _set("lf_mtp_e__ip", 0, "10"))
    records = data.read_records(holder)
    assert records["LF_mtp_E__ip"].max() == 10


def test_listed_film_missing(sample):
    holder, root, _ = sample
    (root / "train" / "UAB002-RF.JPG").unlink()
    with pytest.raises(
        DataError, match=r"training\.csv: row 3, column 'Patient_ID': film UAB002-RF\.jpg"
    ):
        data.read_records(holder)


def test_no_training_csv(tmp_path):
    with pytest.raises(DataError, match="no training.csv"):
        data.read_records(tmp_path)


def test_empty_template(sample):
    holder, root, _ = sample
    (root / "test" / "template.csv").write_text(",".join(columns.TRAINING_COLUMNS) + "\n")
    with pytest.raises(DataError, match=r"template\.csv: row 2: empty template"):
        data.read_template(holder)


def _box_records(root, boxes):
    films = data.read_records(root)
    rows = [(str(root / "train" / "UAB001-LH.jpg"), *b) for b in boxes]
    frame = pd.DataFrame(rows, columns=["image", "label", "xmin", "ymin", "xmax", "ymax"])
    return films, frame


def test_corrupt_jpeg_names_the_file(sample):
    holder, root, _ = sample
    films, boxes = _box_records(root, [("finger1", 10, 10, 50, 100), ("thumb", 60, 60, 100, 150)])
    (root / "train" / "UAB001-LH.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    crops = data.joint_records(films, boxes, "hand-erosion")
    with pytest.raises(DataError, match="UAB001-LH.jpg"):
        data.extract_crops(crops, (32, 32))


def _write_voc(root, boxes, name="UAB001-LH"):
    path = root / "train" / f"{name}.xml"
    path.write_text(voc_xml(root / "train" / f"{name}.jpg", (160, 120), boxes))
    return path


def test_voc_and_csv_boxes(sample):
    holder, root, _ = sample
    _write_voc(root, [("thumb", 70, 80, 110, 150), ("fin_1", 10, 5, 40, 90)])
    voc = data.read_boxes(holder)
    assert voc["label"].tolist() == ["thumb", "finger1"]
    assert voc[["xmin", "ymin", "xmax", "ymax"]].iloc[1].tolist() == [10, 5, 40, 90]
    lines = ["image,xmin,ymin,xmax,ymax,label", "UAB001-LF.jpg,5,6,50,60,toe", "UAB001-RH.jpg,,,,,"]
    with_header = root / "train" / "boxes.csv"
    with_header.write_text("\n".join(lines) + "\n")
    without = root / "train" / "boxes_noheader.csv"
    without.write_text("\n".join(lines[1:]) + "\n")
    for path in (with_header, without):
        frame = data.read_boxes(path)
        assert frame[["label", "xmin", "ymax"]].values.tolist() == [["toe", 5.0, 60.0]]


@pytest.mark.parametrize(
    "box, column, reason",
    [
        (("finger2", 10, 10, 130, 90), "xmax", "box outside the image"),
        (("finger2", -3, 10, 30, 90), "xmin", "box outside the image"),
        (("finger2", 10, 10, 30, 161), "ymax", "box outside the image"),
        (("finger2", 40, 10, 30, 90), "xmax", "empty box"),
        (("toe", 10, 10, 30, 90), "name", "unknown label 'toe'"),
    ],
)
def test_bad_voc_box(sample, box, column, reason):
    _, root, _ = sample
    path = _write_voc(root, [("thumb", 70, 80, 110, 150), box])
    line = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if "<object>" in text][1]
    with pytest.raises(DataError) as info:
        data.read_voc(path)
    message = str(info.value)
    assert message.startswith(f"{path}: row {line}, column '{column}'") and reason in message


@pytest.mark.parametrize(
    "line, row, column, reason",
    [
        ("UAB001-LH.jpg,10,10,121,50,thumb", 3, "xmax", "box outside the image"),
        ("UAB001-LH.jpg,10,10,50,x,thumb", 3, "ymax", "not a number"),
        ("UAB001-LH.jpg,10,10,50", 3, None, "4 fields"),
        ("UAB404-LH.jpg,10,10,50,60,thumb", 3, "image", "not found"),
    ],
)
def test_bad_csv_box(sample, line, row, column, reason):
    _, root, _ = sample
    path = root / "train" / "boxes.csv"
    path.write_text(
        "image,xmin,ymin,xmax,ymax,label\nUAB001-LH.jpg,1,1,20,20,wrist\n" + line + "\n"
    )
    with pytest.raises(DataError) as info:
        data.read_box_csv(path)
    message = str(info.value)
    assert message.startswith(f"{path}: row {row}") and reason in message
    if column:
        assert f"column '{column}'" in message


def test_exif_rotated_box_frame(sample):
    # UAB001-LF.jpg is stored 120x160 with EXIF orientation 6: upright it is 160 wide, 120 high
    _, root, _ = sample
    path = root / "train" / "boxes.csv"
    path.write_text("UAB001-LF.jpg,10,10,150,110,toe\n")
    assert len(data.read_box_csv(path)) == 1
    path.write_text("UAB001-LF.jpg,10,10,110,150,toe\n")
    with pytest.raises(DataError, match="ymax"):
        data.read_box_csv(path)


@pytest.fixture(scope="module")
def phantom_crops(phantom_root):
    films = data.read_records(phantom_root)
    films["split"] = data.split_patients(films, seed=0)
    return films, data.read_boxes(phantom_root)


@pytest.mark.parametrize("key", ["hand-erosion", "foot-narrowing", "wrist-narrowing"])
def test_make_dataset(phantom_crops, key):
    films, boxes = phantom_crops
    records = data.joint_records(films, boxes, key)
    config = joint_model_config(key, demo=True)
    outputs = list(config["output_names"])
    assert set(outputs) <= set(records.columns)
    for output in outputs:  # the scores come from the columns the mapping names
        for rec in records.head(3).to_dict("records"):
            row = films[films["path"] == rec["path"]].iloc[0]
            assert rec[output] == row[rec[f"{output}__column"]]
    ds = data.make_dataset(records, config=config, training=False, batch_size=4)
    images, targets = next(iter(ds))
    assert tuple(images.shape) == (min(4, len(records)), 96, 96, 1)
    assert sorted(targets) == sorted(outputs)
    assert all(tuple(t.shape) == (images.shape[0], 1) for t in targets.values())
    assert 0.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0
    total = sum(
        int(x.shape[0])
        for x, _ in data.make_dataset(records, config=config, training=False, batch_size=8)
    )
    assert total == len(records)


def test_balancing_as_many_zero_as_nonzero(phantom_crops):
    films, boxes = phantom_crops
    records = data.joint_records(films, boxes, "hand-erosion")
    outputs = ["distal_erosion", "proximal_erosion"]
    balanced = data.balance_zero_scores(records, outputs, seed=0)
    nonzero = (balanced[outputs] != 0).any(axis=1)
    n_nonzero = int((records[outputs] != 0).any(axis=1).sum())
    assert int(nonzero.sum()) == n_nonzero
    assert int((~nonzero).sum()) == min(n_nonzero, len(records) - n_nonzero)
    again = data.balance_zero_scores(records, outputs, seed=0)
    assert again.index.equals(balanced.index)


def test_split_by_patient(phantom_crops):
    films, _ = phantom_crops
    assert (films.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(films["split"]) <= {"train", "val", "test"} and "test" in set(films["split"])


def test_make_dataset_rejects_empty_and_missing_scores(phantom_crops):
    films, boxes = phantom_crops
    records = data.joint_records(films, boxes, "foot-erosion")
    config = joint_model_config("foot-erosion", demo=True)
    with pytest.raises(DataError, match="no crops"):
        data.make_dataset(records.iloc[:0], config=config, training=True, batch_size=2)
    broken = records.copy()
    broken.loc[broken.index[0], "erosion"] = np.nan
    with pytest.raises(DataError, match="column '.F_mtp_E__2'"):
        data.make_dataset(broken, config=config, training=False, batch_size=2)


def test_scores_table_round_trip(phantom_crops):
    films, boxes = phantom_crops
    crops = [data.joint_records(films, boxes, key) for key in columns.JOINT_MODELS]
    table = data.scores_table(crops)
    assert list(table.columns) == list(columns.TRAINING_COLUMNS)
    truth = pd.read_csv(Path(films["path"].iloc[0]).parent / "training.csv")
    truth = truth.set_index("Patient_ID").loc[table["Patient_ID"]].reset_index()
    pd.testing.assert_frame_equal(table, truth, check_dtype=False)
    crops[0].loc[crops[0].index[0], "distal_erosion"] = 99.0  # clipped to the SvH range
    clipped = data.scores_table(crops)
    column = crops[0]["distal_erosion__column"].iloc[0]
    assert clipped[column].max() == columns.score_max(column)
