"""kneeoa.data on hand-built copies of the MOST release, the OAI + MOST data set, and two layouts.

Facts these samples copy (looked up in public code that reads the release: Oulu's
KneeOARSIGrading `oarsigrading/dataset/metadata/most.py` and OAProgression's MOST metadata code):
- the X-ray readings are `mostv01235xray.sas7bdat` (read with a SAS reader), one row per
  participant, `MOSTID` and per-visit, per-leg columns `V{0,1,2,3,5}X{L,R}KL` (visits 0, 15, 30,
  60, 84 months), missing values as SAS missing codes;
- `MOST_names.csv` lists the films one per line, without header, as `<subject folder>/<visit
  folder>/.../<view>/<file>`: the subject folder is the MOSTID plus a 5-character suffix, the
  visit folder's second character the visit code, the view e.g. `PA05`, `PA10`, `PA15`;
  only `PA10` is kept.
"""

import numpy as np
import pandas as pd
import pytest

from common import phantoms
from common.cli import main
from common.errors import DataError
from kneeoa import data

HEADER = ["MOSTID", "V0XLKL", "V0XRKL", "V1XLKL", "V1XRKL"]
# MB00001: right 2, left missing; MI00002: right 0, left 4; MB00003: only a PA05 film;
# MI00004: only a V1 (15-month) PA10 film
READINGS = [
    ["MB00001", "", "2", "", ""],
    ["MI00002", "4", "0", "3", "1"],
    ["MB00003", "1", "1", "", ""],
    ["MI00004", "2", "2", "2", "3"],
]
FILMS = [
    "MB00001_0001/V0/PA10/001.dcm",
    "MB00001_0001/V0/LAT/002.dcm",  # a lateral film: never read
    "MI00002_0017/V0/PA10/001.dcm",
    "MB00003_0008/V0/PA05/001.dcm",
    "MI00004_0002/V1/PA10/001.dcm",
]


def _film(path, left, right, shape=(40, 60)):
    img = np.zeros(shape, dtype=np.float32)
    img[:, : shape[1] // 2] = left
    img[:, shape[1] // 2 :] = right
    return phantoms.write_dicom(path, img, bits=12, patient_id="MOSTPHANTOM")


def _table(rows, header=HEADER, sep="|"):
    return "\n".join(sep.join(r) for r in [header, *rows]) + "\n"


def _release(root, *, readings=None, films=FILMS, listed=True, name="mostv01235xray.txt", sep="|"):
    """The release as unpacked: readings in `most_meta/`, films and their list at the root."""
    meta = root / "most_meta"
    meta.mkdir(parents=True, exist_ok=True)
    reading_file = meta / name
    reading_file.write_text(_table(READINGS if readings is None else readings, sep=sep))
    for rel in films:
        _film(root / rel, 0.8, 0.2)
    if listed:
        (root / "MOST_names.csv").write_text("\n".join(films) + "\n")
    return reading_file


EXPECTED = {
    ("MB00001", "R"): (2, "left_half", 2),
    ("MI00002", "R"): (0, "left_half", 3),
    ("MI00002", "L"): (4, "right_half", 3),
}


def _got(records):
    return {(r.participant_id, r.side): (r.kl, r.crop, r.row) for r in records.itertuples()}


@pytest.mark.parametrize("listed", [True, False], ids=["film-list", "walked-folders"])
def test_release_as_unpacked_keeps_baseline_pa10_only(tmp_path, listed):
    _release(tmp_path, listed=listed)
    records = data.read_records(tmp_path)
    assert _got(records) == EXPECTED
    assert set(records["source"]) == {"most"}
    assert all("PA10" in p and "/V0/" in p for p in records["path"])
    assert records.attrs["dropped_missing_kl"] == 1  # MB00001's left knee
    assert records.attrs["without_pa10"] == 4  # MB00003 (PA05 only), MI00004 (V1 only)
    assert (records.attrs["film_list"] is not None) == listed
    # the right knee is the image's left half (the brighter 0.8 here)
    right = records.set_index(["participant_id", "side"]).loc[("MI00002", "R")]
    assert data.load_knee(right["path"], right["crop"]).mean() > 0.6
    assert data.inspect_dataset(tmp_path) == {
        "source": "most",
        "knees": 3,
        "kl_counts": {"0": 1, "1": 0, "2": 1, "3": 0, "4": 1},
    }


def test_follow_up_visit(tmp_path):
    _release(tmp_path)
    records = data.read_most(tmp_path, visit=1)
    assert _got(records) == {
        ("MI00004", "R"): (3, "left_half", 5),
        ("MI00004", "L"): (2, "right_half", 5),
    }


@pytest.mark.parametrize("name, sep", [("mostv01235xray.csv", ","), ("MOSTV01235XRAY.TXT", "\t")])
def test_csv_and_tab_exports(tmp_path, name, sep):
    _release(tmp_path, name=name, sep=sep)
    assert _got(data.read_records(tmp_path)) == EXPECTED


def test_sas7bdat_goes_through_pandas_read_sas(tmp_path, monkeypatch):
    """No installed package writes a SAS file: pandas' reader is replaced by one that checks its call."""
    reading_file = _release(tmp_path, name="mostv01235xray.sas7bdat")
    calls = []

    def fake_read_sas(path, format=None, encoding=None, **kwargs):  # noqa: A002 (pandas' name)
        calls.append((str(path), format, encoding))
        frame = pd.DataFrame(READINGS, columns=HEADER)
        for column in HEADER[1:]:  # SAS numbers: floats, NaN for missing
            frame[column] = pd.to_numeric(frame[column]).astype(float)
        return frame

    monkeypatch.setattr(pd, "read_sas", fake_read_sas)
    assert _got(data.read_records(tmp_path)) == EXPECTED
    assert calls == [(str(reading_file), "sas7bdat", "latin-1")]


def test_broken_sas7bdat_is_one_line_exit_2(tmp_path, capsys):
    reading_file = _release(tmp_path, name="mostv01235xray.sas7bdat")
    reading_file.write_bytes(b"not a SAS file" * 10)
    assert main(__import__("kneeoa"), ["inspect", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(reading_file) in err and "SAS" in err


@pytest.mark.parametrize(
    "row, row_number, column",
    [
        (["MB00001", "", "5", "", ""], 2, "V0XRKL"),
        (["MB00001", "two", "2", "", ""], 2, "V0XLKL"),
        (["MB00001", "-1", "2", "", ""], 2, "V0XLKL"),
        (["", "1", "2", "", ""], 2, "MOSTID"),
    ],
)
def test_bad_reading_values(tmp_path, capsys, row, row_number, column):
    reading_file = _release(tmp_path, readings=[row, *READINGS[1:]])
    with pytest.raises(DataError) as info:
        data.read_records(tmp_path)
    message = str(info.value)
    assert str(reading_file) in message
    assert f"row {row_number}" in message and f"column '{column}'" in message
    # the command line: exit 2, the same one line
    assert main(__import__("kneeoa"), ["inspect", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"column '{column}'" in err


@pytest.mark.parametrize("missing", ["MOSTID", "V0XLKL", "V0XRKL"])
def test_missing_reading_column(tmp_path, missing):
    keep = [i for i, c in enumerate(HEADER) if c != missing]
    rows = [[r[i] for i in keep] for r in READINGS]
    reading_file = tmp_path / "mostv01235xray.txt"
    reading_file.write_text(_table(rows, header=[HEADER[i] for i in keep]))
    with pytest.raises(DataError, match=rf"xray\.txt: row 1, column '{missing}': missing column"):
        data.read_records(tmp_path)


def test_listed_film_absent_names_the_list_row(tmp_path):
    _release(tmp_path)
    (tmp_path / "MI00002_0017" / "V0" / "PA10" / "001.dcm").unlink()
    with pytest.raises(
        DataError, match=r"MOST_names\.csv: row 3, column '1': listed film not found"
    ):
        data.read_records(tmp_path)


def test_no_pa10_film_at_all(tmp_path):
    _release(tmp_path, films=["MB00003_0008/V0/PA05/001.dcm"])
    with pytest.raises(DataError, match=r"MOST_names\.csv: no PA10 film at visit V0"):
        data.read_records(tmp_path)


def test_oai_and_most_together_split_by_subject(tmp_path):
    from kneeoa.synthetic import write_phantom_dataset

    root = write_phantom_dataset(tmp_path, num_subjects=10, seed=1, layout="oai+most")
    summary = data.inspect_dataset(root)
    assert summary["source"] == "oai+most"
    assert summary["knees"] == sum(summary["kl_counts"].values())
    assert summary["knees_by_source"]["oai"] > 0 and summary["knees_by_source"]["most"] > 0
    records = data.load_records(root, seed=0)
    assert records.attrs["source"] == "oai+most"
    assert set(records[records["split"] == "train"]["source"]) == {"oai", "most"}
    assert (records.groupby("participant_id")["split"].nunique() == 1).all()
    # the phantom's truth (one joint-space region per graded knee) matches what is read
    truth = pd.read_csv(root / "_phantom_truth" / "index.csv")
    joint = truth[(truth["kind"] == "joint_space") & truth["image"].str.startswith("MOST/")]
    assert len(joint) == summary["knees_by_source"]["most"]
    assert main(__import__("kneeoa"), ["inspect", "--data-dir", str(root / "MOST")]) == 0


def test_two_layouts_is_an_error_naming_both_unless_chosen(tmp_path, capsys):
    _release(tmp_path / "most")
    kneekl = tmp_path / "kneeKL224"
    for split in ("train", "val", "test"):
        phantoms.write_png(kneekl / split / "2" / "9000001R.png", np.full((8, 8), 0.5, np.float32))
    kneeoa = __import__("kneeoa")
    assert main(kneeoa, ["inspect", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(kneekl) in err and str(tmp_path / "most" / "most_meta") in err
    assert "--layout folders|most" in err
    assert main(kneeoa, ["inspect", "--data-dir", str(tmp_path), "--layout", "most"]) == 0
    assert '"source": "most"' in capsys.readouterr().out
    assert main(kneeoa, ["inspect", "--data-dir", str(tmp_path), "--layout", "folders"]) == 0
    assert '"source": "folders"' in capsys.readouterr().out
    with pytest.raises(DataError, match="two data sets here"):
        data.load_records(tmp_path)
