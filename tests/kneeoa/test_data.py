"""kneeoa.data: readers of hand-written real-layout samples, bad input, split, tf.data pipeline."""

import re

import numpy as np
import pandas as pd
import pytest

from common import phantoms
from common.errors import DataError
from kneeoa import data
from kneeoa.model import resolve_config

HEADER = "ID|SIDE|READPRJ|VERSION|V00XRKL|V00XRJSM|V00XRJSL"


def _png(path, value=0.5, shape=(40, 30), bits=8):
    img = np.full(shape, value, dtype=np.float32)
    img[: shape[0] // 2] *= 0.5  # not constant, so equalisation has something to do
    return phantoms.write_png(path, img, bits=bits)


def _write(path, text, newline="\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode("ascii"))
    return path


def _bilateral(path, left_value, right_value, shape=(40, 60), dicom=False):
    img = np.zeros(shape, dtype=np.float32)
    half = shape[1] // 2
    img[:, :half] = left_value
    img[:, half:] = right_value
    if dicom:
        # a full-range window gives the stored values back (without one, readers min-max scale)
        return phantoms.write_dicom(path, img, bits=12, window=(2048, 4096))
    return phantoms.write_png(path, img, bits=16)


@pytest.fixture
def oai_sample(tmp_path):
    """An OAI folder as a user has it: KL file name in another case, CRLF, text SIDE, re-reads."""
    root = tmp_path / "OAI_baseline"
    lines = [
        HEADER,
        "9000001|1: Right|15|1.6|2|1|0",
        "9000001|2: Left|15|1.6|0|0|0",
        "9000001|1: Right|37|1.6|3|2|0",  # re-read by another project: ignored
        "9000002|1|15|1.6|4|3|1",
        "9000002|2|15|1.6||.|.",  # blank KL: dropped and counted
        "9000003|1|15|1.6|1|0|0",
        "9000003|2|15|1.6|3: 3|2|0",
        "9000003|2|42|1.6|4|3|0",
        "9000004|2: Left|15|1.6|0|0|0",
    ]
    _write(root / "KXR_SQ_BU00.TXT", "\n".join(lines) + "\n", newline="\r\n")
    _png(root / "images" / "9000001R.png", 0.9)  # per-knee images, both spellings
    _png(root / "images" / "9000001_L.png", 0.2)
    _bilateral(root / "images" / "batch2" / "9000002.png", 0.8, 0.3)  # nested folder
    _bilateral(root / "images" / "9000003.dcm", 0.7, 0.1, dicom=True)
    _bilateral(root / "images" / "9000004.png", 0.6, 0.4)
    _write(root / "images" / "._9000002.png", "junk")  # macOS companion
    return root


@pytest.fixture
def folders_sample(tmp_path):
    """kneeKL224 as downloaded: nested under ClsKLData, `Validation` spelling, junk files."""
    root = tmp_path / "KneeXrayData" / "ClsKLData" / "kneeKL224"
    _png(root / "train" / "0" / "9003175R.png")
    _png(root / "train" / "0" / "9003175L.png")
    _png(root / "train" / "3" / "9011053_L.png")
    _png(root / "train" / "4" / "scans" / "9022222R.png")  # nested
    _png(root / "Validation" / "2" / "9033333R.png")
    _png(root / "test" / "1" / "9044444L.png")
    _png(root / "test" / "4" / "knee_017.png")
    _png(root / "auto_test" / "1" / "9044444L.png")
    _write(root / "train" / "0" / "._9003175R.png", "junk")
    _write(root / ".DS_Store", "junk")
    _png(tmp_path / "KneeXrayData" / "_phantom_truth" / "masks" / "train" / "0" / "x.png")
    return tmp_path / "KneeXrayData"


def test_read_oai_sample(oai_sample):
    records = data.read_records(oai_sample)
    got = {
        (r.participant_id, r.side): (r.kl, r.crop, r.path.split("/")[-1], r.row)
        for r in records.itertuples()
    }
    assert got == {
        ("9000001", "R"): (2, "full", "9000001R.png", 2),
        ("9000001", "L"): (0, "full", "9000001_L.png", 3),
        ("9000002", "R"): (4, "left_half", "9000002.png", 5),
        ("9000003", "R"): (1, "left_half", "9000003.dcm", 7),
        ("9000003", "L"): (3, "right_half", "9000003.dcm", 8),
        ("9000004", "L"): (0, "right_half", "9000004.png", 10),
    }
    assert records.attrs["dropped_missing_kl"] == 1
    assert list(records.columns) == list(data.RECORD_COLUMNS)
    assert data.inspect_dataset(oai_sample.parent) == {
        "source": "oai",
        "knees": 6,
        "kl_counts": {"0": 2, "1": 1, "2": 1, "3": 1, "4": 1},
    }


@pytest.mark.parametrize(
    "readprj, expected", [(37, {("9000001", "R"): 3}), (42, {("9000003", "L"): 4})]
)
def test_other_reading_projects(oai_sample, readprj, expected):
    records = data.read_records(oai_sample, readprj=readprj)
    assert {(r.participant_id, r.side): r.kl for r in records.itertuples()} == expected


def test_bilateral_split_convention(oai_sample):
    """PA film: the image's left half is the patient's right knee."""
    records = data.read_records(oai_sample).set_index(["participant_id", "side"])
    right = data.load_knee(
        records.loc[("9000003", "R"), "path"], records.loc[("9000003", "R"), "crop"]
    )
    left = data.load_knee(
        records.loc[("9000003", "L"), "path"], records.loc[("9000003", "L"), "crop"]
    )
    assert right.shape == left.shape == (40, 30)
    np.testing.assert_allclose(right.mean(), 0.7, atol=0.01)
    np.testing.assert_allclose(left.mean(), 0.1, atol=0.01)


def test_read_folders_sample(folders_sample):
    records = data.read_records(folders_sample)
    assert records.attrs["source"] == "folders"
    got = {
        (r.split, r.path.split("/")[-1]): (r.kl, r.participant_id, r.side)
        for r in records.itertuples()
    }
    assert got == {
        ("train", "9003175R.png"): (0, "9003175", "R"),
        ("train", "9003175L.png"): (0, "9003175", "L"),
        ("train", "9011053_L.png"): (3, "9011053", "L"),
        ("train", "9022222R.png"): (4, "9022222", "R"),
        ("val", "9033333R.png"): (2, "9033333", "R"),
        ("test", "9044444L.png"): (1, "9044444", "L"),
        ("test", "knee_017.png"): (4, "knee_017", ""),
        ("auto_test", "9044444L.png"): (1, "9044444", "L"),
    }
    assert data.inspect_dataset(folders_sample) == {
        "source": "folders",
        "splits": {"train": 4, "val": 1, "test": 2, "auto_test": 1},
        "kl_counts": {"0": 2, "1": 2, "2": 1, "3": 1, "4": 2},
    }


def test_folders_without_val_get_one_from_train(tmp_path):
    for i in range(10):
        _png(tmp_path / "train" / str(i % 5) / f"90000{i:02d}R.png")
    _png(tmp_path / "test" / "0" / "9100000R.png")
    records = data.load_records(tmp_path, seed=0)
    counts = records["split"].value_counts().to_dict()
    assert counts == {"train": 9, "val": 1, "test": 1}


@pytest.mark.parametrize(
    "line, row, column",
    [
        ("9000001|1|15|1.6|5|0|0", 2, "V00XRKL"),
        ("9000001|1|15|1.6|two|0|0", 2, "V00XRKL"),
        ("9000001|1|15|1.6|-1|0|0", 2, "V00XRKL"),
        ("9000001|3|15|1.6|2|0|0", 2, "SIDE"),
        ("9000001|1|x|1.6|2|0|0", 2, "READPRJ"),
        ("|1|15|1.6|2|0|0", 2, "ID"),
        ("9000009|1|15|1.6|2|0|0", 2, "ID"),  # listed, but no image 9000009*
    ],
)
def test_bad_kl_file_values(tmp_path, line, row, column):
    _png(tmp_path / "9000001.png")
    kl_file = _write(tmp_path / "kXR_SQ_BU00.txt", f"{HEADER}\n{line}\n")
    with pytest.raises(DataError) as info:
        data.read_records(tmp_path)
    message = str(info.value)
    assert str(kl_file) in message
    assert f"row {row}" in message and f"column '{column}'" in message


@pytest.mark.parametrize("missing", ["ID", "SIDE", "READPRJ", "V00XRKL"])
def test_missing_kl_file_column(tmp_path, missing):
    header = "|".join(c for c in HEADER.split("|") if c != missing)
    _write(tmp_path / "kxr_sq_bu00.txt", f"{header}\n")
    with pytest.raises(
        DataError, match=rf"kxr_sq_bu00\.txt: row 1, column '{missing}': missing column"
    ):
        data.read_records(tmp_path)


def test_conflicting_grades_for_one_knee(tmp_path):
    _png(tmp_path / "9000001.png")
    _write(
        tmp_path / "kXR_SQ_BU00.txt",
        f"{HEADER}\n9000001|1|15|1.6|2||\n9000001|1: Right|15|1.7|3||\n",
    )
    with pytest.raises(DataError, match=r"row 3, column 'V00XRKL'.*two KL grades"):
        data.read_records(tmp_path)


def test_header_in_other_case(tmp_path):
    _png(tmp_path / "9000001_R.png")
    _write(tmp_path / "kXR_SQ_BU00.txt", "id|side|readprj|version|v00xrkl\n9000001|1|15|1.6|3\n")
    assert data.read_records(tmp_path)["kl"].tolist() == [3]


@pytest.mark.parametrize(
    "bad_folder, message",
    [
        ("train/7", "KL grade folder '7' outside 0..4"),
        ("test/0", "split 'test' holds no images"),
    ],
)
def test_bad_folders(tmp_path, bad_folder, message):
    _png(tmp_path / "train" / "0" / "9000002R.png")
    if bad_folder.startswith("train"):
        _png(tmp_path / bad_folder / "9000001R.png")
        _png(tmp_path / "test" / "1" / "9000003R.png")
    else:
        (tmp_path / bad_folder).mkdir(parents=True)
    where = (
        tmp_path / bad_folder.split("/")[0]
        if bad_folder.startswith("test")
        else tmp_path / bad_folder
    )
    with pytest.raises(DataError, match=re.escape(f"{where}: {message}")):
        data.read_records(tmp_path)


def test_no_dataset(tmp_path):
    _png(tmp_path / "loose.png")
    with pytest.raises(DataError, match=re.escape(str(tmp_path)) + r".*no kneeKL224-style"):
        data.inspect_dataset(tmp_path)


def test_empty_split(tmp_path):
    _png(tmp_path / "9000001.png")
    _write(tmp_path / "kXR_SQ_BU00.txt", f"{HEADER}\n9000001|1|15|1.6|2||\n9000001|2|15|1.6|2||\n")
    with pytest.raises(DataError, match=r"split 'val' is empty"):
        data.load_records(tmp_path)  # one participant: everything lands in train


def _records(paths, kls, crops=None):
    return pd.DataFrame(
        {"path": [str(p) for p in paths], "crop": crops or ["full"] * len(paths), "kl": kls}
    )


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"GIF89a not a knee", "not a PNG, JPEG or DICOM"), ("truncated", "")],
)
def test_broken_images(tmp_path, content, message):
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    if content == "truncated":
        bad.write_bytes(good.read_bytes()[:-30])
    else:
        bad.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*" + message):
        data.make_dataset(
            _records([good, bad], [0, 1]), config="demo", training=False, batch_size=2
        )


@pytest.mark.parametrize(
    "records, message",
    [
        (_records([], []), "no records"),
        (_records(["/nonexistent/knee.png"], [1]), "/nonexistent/knee.png: file not found"),
        (_records(["x.png"], [5]), r"x\.png: column 'kl': KL grade 5 outside 0\.\.4"),
        (_records(["x.png"], [1], crops=["top_half"]), "column 'crop': unknown crop 'top_half'"),
        (pd.DataFrame({"path": ["x.png"], "kl": [1]}), "column 'crop': missing record column"),
    ],
)
def test_bad_records(records, message):
    with pytest.raises(DataError, match=message):
        data.make_dataset(records, config="demo", training=False, batch_size=2)


def test_assign_splits_is_grouped_and_stratified():
    rng = np.random.default_rng(0)
    kl = rng.choice(5, size=300, p=[0.4, 0.2, 0.2, 0.12, 0.08])
    records = pd.DataFrame(
        {
            "participant_id": [f"9{i // 2:06d}" for i in range(600)],
            "side": ["R", "L"] * 300,
            "kl": np.repeat(kl, 2),
        }
    )
    split = data.assign_splits(records, seed=0)
    assert split.groupby("participant_id")["split"].nunique().max() == 1
    share = split["split"].value_counts(normalize=True)
    # §3.4: 70/30 train/test, 10% of train for validation.
    assert share["test"] == pytest.approx(0.30, abs=0.02)
    assert share["val"] == pytest.approx(0.07, abs=0.02)
    assert share["train"] == pytest.approx(0.63, abs=0.02)
    whole = records["kl"].value_counts(normalize=True)
    for name in ("train", "test"):
        part = split.loc[split["split"] == name, "kl"].value_counts(normalize=True)
        assert (part - whole).abs().max() < 0.03
    assert data.assign_splits(records, seed=0)["split"].equals(split["split"])


@pytest.mark.parametrize(
    "preset, shape, outputs",
    [("demo", (128, 96, 1), ["att0", "att1"]), ("antony-clsf-att2", (200, 300, 1), ["att2"])],
)
def test_make_dataset_shapes(oai_sample, preset, shape, outputs):
    records = data.read_records(oai_sample)
    ds = data.make_dataset(records, config=preset, training=False, batch_size=4)
    batches = list(ds)
    assert [len(b[0]) for b in batches] == [4, 2]
    images, targets = batches[0]
    assert images.shape[1:] == shape and images.dtype == "float32"
    assert sorted(targets) == outputs
    for name in outputs:
        np.testing.assert_array_equal(targets[name].numpy(), records["kl"].to_numpy()[:4])
    assert float(images.numpy().min()) >= 0.0 and float(images.numpy().max()) <= 1.0


def test_make_dataset_three_channels(folders_sample):
    config = resolve_config("vgg16-att0", image_size_hw=(64, 48))
    records = data.read_records(folders_sample)
    images, targets = next(
        iter(data.make_dataset(records, config=config, training=False, batch_size=3))
    )
    assert images.shape == (3, 64, 48, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert list(targets) == ["att0"]


def test_histogram_equalisation(tmp_path):
    """The pipeline equalises the histogram (gray level -> its rank), which a min-max stretch of
    the range does not: three levels, the middle one on 80% of the knee, are written at the
    demo's input size (no resampling) and read back with and without equalisation."""
    height, width = resolve_config("demo")["image_size_hw"]
    img = np.full((height, width), 0.15, dtype=np.float32)
    dark, bright = height // 10, height - height // 10
    img[:dark], img[bright:] = 0.1, 0.9
    records = _records([phantoms.write_png(tmp_path / "k.png", img, bits=16)], [0])
    plain = resolve_config("demo", histogram_equalization=False)
    equal = resolve_config("demo")
    raw = next(iter(data.make_dataset(records, config=plain, training=False, batch_size=1)))[0]
    eq = next(iter(data.make_dataset(records, config=equal, training=False, batch_size=1)))[0]
    raw, eq = raw.numpy()[0, ..., 0], eq.numpy()[0, ..., 0]
    np.testing.assert_allclose(raw[height // 2, 0], 0.15, atol=1e-3)  # read as written
    # equalised: the middle level goes to its share of the cumulative histogram,
    # (cdf - cdf_min) / (N - cdf_min), with cdf_min the dark rows' count
    n, n_dark = height * width, dark * width
    expected = (bright * width - n_dark) / (n - n_dark)
    np.testing.assert_allclose(eq[height // 2, 0], expected, atol=1e-3)
    assert eq[0, 0] == 0.0 and eq[-1, 0] == 1.0
    # a min-max stretch of the same image would put it at 0.0625 instead
    stretched = (raw - raw.min()) / (raw.max() - raw.min())
    assert abs(stretched[height // 2, 0] - expected) > 0.5


def test_training_flips_and_is_seeded(tmp_path):
    img = np.zeros((32, 24), dtype=np.float32)
    img[:, :6] = 1.0  # bright stripe on the left
    paths = [phantoms.write_png(tmp_path / f"k{i}.png", img) for i in range(8)]
    records = _records(paths, [0] * 8)
    config = resolve_config("demo", image_size_hw=(32, 24), histogram_equalization=False)

    def two_epochs(seed):
        ds = data.make_dataset(records, config=config, training=True, batch_size=8, seed=seed)
        return np.concatenate([images.numpy() for _ in range(2) for images, _ in ds])

    first = two_epochs(3)
    stripe_left = first[:, :, :6].mean(axis=(1, 2, 3))
    # every example is the image or its mirror, and both occur
    assert set(np.round(stripe_left, 3)) <= {0.0, 1.0}
    assert 0 < stripe_left.sum() < len(stripe_left)
    np.testing.assert_array_equal(two_epochs(3), first)


def _old_reader(path, crop, config):
    """The pipeline's former per-knee path: PIL via `load_knee` at full size in float, resize,
    equalise (what ran inside `numpy_function` and the map before the cache, issue 19.3)."""
    from common.augment import equalize_histogram
    from common.augment import resize

    image = resize(data.load_knee(path, crop)[..., None], config["image_size_hw"])
    if config["histogram_equalization"]:
        image = equalize_histogram(image)
    return image.numpy()


def _textured(shape, seed):
    rng = np.random.default_rng(seed)
    img = 0.2 + 0.6 * phantoms.smooth_noise(shape, 4.0, rng)
    img[:, : shape[1] // 3] *= 0.6  # a darker left part: the two halves differ
    return phantoms.clip01(img)


@pytest.mark.parametrize("equalize", [False, True])
@pytest.mark.parametrize("sources, half_level", [("8-bit", 0.5 / 255), ("deep", 0.5 / 65535)])
def test_pipeline_feeds_what_the_old_reader_gave(tmp_path, equalize, sources, half_level):
    import cv2

    if sources == "8-bit":
        gray = phantoms.write_png(tmp_path / "film8.png", _textured((50, 71), 0))
        rgb = tmp_path / "rgb.png"
        colour = np.round(np.stack([_textured((45, 33), s) for s in (1, 2, 3)], -1) * 255)
        cv2.imwrite(str(rgb), colour.astype(np.uint8))
        paths = [gray, gray, gray, rgb]
    else:  # 16-bit PNG and 12-bit DICOM: cached as uint16
        png16 = phantoms.write_png(tmp_path / "film16.png", _textured((50, 71), 4), bits=16)
        dicom = phantoms.write_dicom(
            tmp_path / "film.dcm", _textured((48, 64), 5), bits=12, window=(2048, 4096)
        )
        paths = [png16, png16, dicom, dicom]
    crops = ["full", "left_half", "right_half", "left_half" if sources == "deep" else "full"]
    records = _records(paths, [0, 1, 2, 3], crops=crops)
    config = resolve_config("demo", image_size_hw=(24, 18), histogram_equalization=equalize)
    expected = np.stack([_old_reader(p, c, config) for p, c in zip(paths, crops)])
    for cache in (False, True):
        ds = data.make_dataset(records, config=config, training=False, batch_size=4, cache=cache)
        images, targets = next(iter(ds))
        np.testing.assert_array_equal(targets["att0"], [0, 1, 2, 3])
        # within the rounding of the uint8 (uint16) cache: at most half a gray level
        np.testing.assert_allclose(images.numpy(), expected, atol=half_level + 1e-6, rtol=0)
    # the halves really differ, so a swapped or missing crop would fail the comparison above
    assert np.abs(expected[1] - expected[2]).max() > 0.05
