"""Bad input ends with exit status 2 and ONE stderr line naming the file, in all five packages.

Issue 14: a matrix over packages x {inspect, train, predict} x broken files (corrupt, truncated,
empty, a header claiming 100000x100000 pixels, DICOM without pixel data, a folder in place of a
file), faults raised inside tf.data pipelines, `inspect --verify`, the run folder's lock,
orphans after a kill, file modes, and DICOM details. The CLI runs in-process
(`common.cli.main(package, argv)`); a few cases start a real process.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from common.cli import main
from common.errors import DataError
from common.image_io import ImageReadError
from common.image_io import as_data_error
from common.image_io import read_image
from common.image_io import read_metaimage

PACKAGES = ("kneeoa", "deepra", "spinenet", "boneage", "mura")
# A file each package's `train` reads, as a glob under the phantom root.
USED_FILE = {
    "kneeoa": "kneeKL224/train/*/*.png",
    "deepra": "train/*.jpg",
    "spinenet": "images/*_t2.mha",
    "boneage": "boneage-training-dataset/**/*.png",
    "mura": "MURA-v1.1/train/**/*.png",
}
PHANTOM_ARGS = {
    "kneeoa": {"num_subjects": 4, "layout": "folders"},
    "deepra": {"num_subjects": 2},
    "spinenet": {"num_subjects": 2},
    "boneage": {"num_subjects": 4},
    "mura": {"num_subjects": 4},
}
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ broken files
def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path):
    """A 100-byte PNG whose header claims 100000 x 100000 pixels."""
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + body + _png_chunk(b"IEND", b""))


def bomb_jpeg(path):
    """A real JPEG whose SOF marker is edited to claim 60000 x 60000 pixels."""
    data = Path(path).read_bytes()
    at = next(data.find(m) for m in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1") if data.find(m) > 0)
    Path(path).write_bytes(data[: at + 5] + struct.pack(">HH", 60000, 60000) + data[at + 9 :])


def dicom_without_pixels(path):
    """A DICOM file (preamble, file meta, patient module) with no Pixel Data."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.save_as(path, enforce_file_format=True)


def dicom_image(path, rows_columns, bits, pixel_bytes):
    """A DICOM data set (read back from `dicom_without_pixels`) given an image of `rows_columns`."""
    import pydicom

    dicom_without_pixels(path)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows_columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds


def break_file(path, case):
    """Breaks `path` in place as a user's broken copy would present it."""
    path = Path(path)
    data = path.read_bytes()
    if case == "corrupt":
        if path.suffix == ".mha":
            path.write_bytes(b"this is not a MetaImage\n" * 4)
        else:  # the body is overwritten; the signature and the end marker stay
            path.write_bytes(data[:40] + b"\x00" * (len(data) // 2) + data[40 + len(data) // 2 :])
    elif case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "bomb":
        if path.suffix == ".mha":
            head, _, rest = data.partition(b"DimSize = ")
            path.write_bytes(head + b"DimSize = 100000 100000 10" + rest[rest.index(b"\n") :])
        elif path.suffix == ".jpg":
            bomb_jpeg(path)
        else:
            bomb_png(path)
    elif case == "no_pixels":
        dicom_without_pixels(path)
    elif case == "folder":
        path.unlink()
        path.mkdir()
        (path / "inner.txt").write_text("x")
    else:
        raise ValueError(case)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """One tiny phantom data set per package (written once per module)."""
    roots = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        root = tmp_path_factory.mktemp(f"{name}_phantom")
        package.write_phantom_dataset(root, seed=0, **PHANTOM_ARGS[name])
        roots[name] = root
    return roots


def broken_copy(phantoms, name, case, tmp_path):
    """A copy of the package's phantom set with one file it uses broken; returns (root, file)."""
    root = tmp_path / name
    shutil.copytree(phantoms[name], root)
    target = sorted(glob.glob(str(root / USED_FILE[name]), recursive=True))[0]
    if case == "no_pixels" and name == "spinenet":
        case = "corrupt"  # spinenet reads MetaImage volumes, never DICOM
    break_file(target, case)
    return root, target


def run_cli(name, argv, capsys):
    """`python -m NAME argv` in-process: (exit status, stdout, stderr lines)."""
    capsys.readouterr()
    status = main(importlib.import_module(name), argv)
    captured = capsys.readouterr()
    lines = []
    for line in captured.err.splitlines():
        if f"python -m {name}" in line:  # a message after an unfinished progress bar's line
            line = line[line.index(f"python -m {name}") :]
        if line.strip() and not _is_progress(line):
            lines.append(line)
    return status, captured.out, lines


def _is_progress(line):
    """A progress bar's line (tqdm writes them to stderr; they are not messages)."""
    return "%|" in line and ("it/s" in line or "/s]" in line or "?" in line)


def assert_one_line_naming(status, err, path):
    assert status == 2, err
    assert len(err) == 1, err
    assert os.fspath(path) in err[0] or Path(path).name in err[0], err


# ------------------------------------------------------------------------------ the matrix
FILE_CASES = ("corrupt", "truncated", "empty", "bomb", "no_pixels", "folder")


@pytest.mark.parametrize("case", FILE_CASES)
@pytest.mark.parametrize("name", PACKAGES)
def test_inspect_stops_on_a_broken_file(name, case, phantoms, tmp_path, capsys):
    root, target = broken_copy(phantoms, name, case, tmp_path)
    status, out, err = run_cli(name, ["inspect", "--data-dir", str(root)], capsys)
    assert_one_line_naming(status, err, target)


# Faults `train` finds before it builds a model (the mid-epoch ones: test_fault_mid_epoch_*).
TRAIN_CASES = ("truncated", "empty", "bomb", "folder")


@pytest.mark.parametrize("case", TRAIN_CASES)
@pytest.mark.parametrize("name", PACKAGES)
def test_train_stops_on_a_broken_file(name, case, phantoms, tmp_path, capsys):
    root, target = broken_copy(phantoms, name, case, tmp_path)
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(root), "--out-dir", str(run), "--epochs", "1"]
    status, _, err = run_cli(name, argv, capsys)
    assert_one_line_naming(status, err, target)
    assert not (run / "checkpoints" / "state.json").exists()  # a new run starts cleanly
    assert not (run / ".lock").exists()


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    """An untrained `demo` model file per package that `predict` loads before reading inputs."""
    from common.export import save_model

    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name in ("kneeoa", "mura", "boneage", "spinenet"):
        paths[name] = folder / f"{name}.keras"
        save_model(importlib.import_module(name).build_model("demo"), paths[name])
    return paths


# Each case loads the model (seconds): the matrix takes the faults found in different places.
PREDICT_CASES = [
    *[("deepra", case) for case in ("corrupt", "bomb", "no_pixels", "empty")],
    ("kneeoa", "corrupt"),  # inside the tf.data pipeline (a numpy_function)
    ("kneeoa", "no_pixels"),
    ("mura", "corrupt"),  # inside the tf.data pipeline (TensorFlow's PNG decoder)
    ("mura", "bomb"),
    ("boneage", "bomb"),
]


@pytest.mark.parametrize(("name", "case"), PREDICT_CASES)
def test_predict_stops_on_a_broken_input(name, case, phantoms, demo_models, tmp_path, capsys):
    _, target = broken_copy(phantoms, name, case, tmp_path)
    model = demo_models.get(name, tmp_path / "model.keras")  # deepra reads its inputs first
    argv = ["predict", "--model", str(model), "--input", target, "--out-dir", str(tmp_path / "o")]
    status, _, err = run_cli(name, argv, capsys)
    assert_one_line_naming(status, err, target)


@pytest.mark.parametrize("case", ("corrupt", "truncated", "bomb"))
def test_spinenet_predict_stops_on_a_broken_series(case, phantoms, demo_models, tmp_path, capsys):
    _, target = broken_copy(phantoms, "spinenet", case, tmp_path)
    argv = ["predict", "--model", str(demo_models["spinenet"]), "--input", target]
    status, _, err = run_cli("spinenet", [*argv, "--out-dir", str(tmp_path / "o")], capsys)
    assert_one_line_naming(status, err, target)


# ------------------------------------------------------------------------------ inside tf.data
def _write_pngs(folder, count=3):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i}.png")
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(paths[-1])
    return paths


@pytest.mark.parametrize("case", ("corrupt", "no_pixels"))
def test_fault_mid_epoch_in_the_shared_pipeline_names_the_file(case, tmp_path):
    import tensorflow as tf

    from common.augment import make_image_dataset

    paths = _write_pngs(tmp_path)
    bad = paths[1] if case == "corrupt" else tmp_path / "x.dcm"
    break_file(bad, case) if case == "corrupt" else dicom_without_pixels(bad)
    files = [paths[0], bad, paths[2]]
    ds = make_image_dataset(files, [0, 1, 2], image_size_hw=(8, 8), batch_size=3, training=True)
    with pytest.raises(tf.errors.OpError) as caught:  # what the training loop sees
        list(ds)
    error = as_data_error(caught.value)
    assert isinstance(error, DataError) and str(bad) in str(error)
    assert as_data_error(RuntimeError("not a data fault")) is None  # control


def test_fault_mid_epoch_in_kneeoa_pipeline_names_the_file(phantoms, tmp_path):
    import pandas as pd
    import tensorflow as tf

    from kneeoa.data import make_dataset

    good = sorted(glob.glob(str(phantoms["kneeoa"] / USED_FILE["kneeoa"])))[:2]
    bad = tmp_path / "knee.dcm"
    dicom_without_pixels(bad)  # passes the cheap pre-check (a DICM preamble), fails in decoding
    records = pd.DataFrame({"path": [*good, str(bad)], "crop": "full", "kl": [0, 1, 2]})
    ds = make_dataset(records, config="demo", training=False, batch_size=3, cache=False)
    with pytest.raises(tf.errors.OpError) as caught:
        list(ds)
    assert str(bad) in str(as_data_error(caught.value))


def test_cli_maps_a_mid_epoch_fault_to_one_line(tmp_path, capsys):
    """A package whose `train` meets a broken file inside its tf.data pipeline, mid-epoch."""
    import types

    from common.augment import make_image_dataset

    paths = _write_pngs(tmp_path / "data", 4)
    break_file(paths[2], "corrupt")

    def train(**kwargs):
        ds = make_image_dataset(
            paths, [0, 1, 2, 3], image_size_hw=(8, 8), batch_size=1, training=False
        )
        for _ in ds:  # the first batches are fine, the third is not
            pass

    package = types.SimpleNamespace(
        __name__="fakepkg",
        __doc__="fake",
        PRESETS={"demo": {}},
        inspect_dataset=lambda root: {},
        train=train,
    )
    run = tmp_path / "run"
    capsys.readouterr()
    status = main(package, ["train", "--data-dir", str(tmp_path / "data"), "--out-dir", str(run)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(err) == 1 and str(paths[2]) in err[0], err
    assert not (run / ".lock").exists()  # the lock is released on the error


# ------------------------------------------------------------------------------ size limit
def test_size_limit_is_set_by_the_environment(tmp_path, monkeypatch):
    from common.image_io import check_pixel_count
    from common.image_io import max_image_pixels

    (path,) = _write_pngs(tmp_path, 1)
    assert read_image(path).shape == (12, 12)
    monkeypatch.setenv("MSK_MAX_IMAGE_PIXELS", "100")
    assert max_image_pixels() == 100
    with pytest.raises(ImageReadError, match=r"12x12 = 144 pixels, above the limit of 100"):
        read_image(path)
    monkeypatch.setenv("MSK_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match="MSK_MAX_IMAGE_PIXELS"):
        check_pixel_count(path, (1, 1))


def test_dicom_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path):

    path = tmp_path / "big.dcm"
    ds = dicom_image(path, (60000, 60000), 8, b"\0" * 64)  # far less than the header claims
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"60000x60000 = 3,600,000,000 pixels"):
        read_image(path)


@pytest.mark.parametrize("case", ("corrupt", "truncated", "bomb"))
def test_unreadable_metaimage_is_one_line_without_itk_noise(case, phantoms, tmp_path, capfd):
    source = sorted(glob.glob(str(phantoms["spinenet"] / USED_FILE["spinenet"])))[0]
    path = tmp_path / "s.mha"
    shutil.copy(source, path)
    break_file(path, case)
    capfd.readouterr()
    with pytest.raises(ImageReadError) as caught:
        read_metaimage(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert "Reason: Success" not in str(caught.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no ITK/MetaIO messages on the process's streams


# ------------------------------------------------------------------------------ inspect, data sets
def test_inspect_verify_reports_unreadable_files_in_its_json(phantoms, tmp_path, capsys):
    root, target = broken_copy(phantoms, "mura", "corrupt", tmp_path)
    status, out, err = run_cli("mura", ["inspect", "--data-dir", str(root), "--verify"], capsys)
    report = json.loads(out)
    assert status == 2 and len(err) == 1 and target in err[0]
    assert report["verified"] is True and report["unreadable"] == 1
    assert target in report["unreadable_files"][0]
    assert {"train", "valid"} <= set(report)  # the contract's keys stay
    # without decoding, the broken body goes unseen (the header is whole): the control
    status, out, err = run_cli("mura", ["inspect", "--data-dir", str(root), "--no-verify"], capsys)
    assert status == 0 and json.loads(out)["verified"] is False and err == []


@pytest.mark.parametrize("name", ("deepra", "boneage", "mura"))
def test_films_absent_inspect_warns_and_train_stops(name, phantoms, tmp_path, capsys):
    root = tmp_path / name
    shutil.copytree(phantoms[name], root)
    films = sorted(glob.glob(str(root / USED_FILE[name]), recursive=True))
    for film in films:
        os.unlink(film)
    status, out, err = run_cli(name, ["inspect", "--data-dir", str(root)], capsys)
    report = json.loads(out)
    assert status == 0 and report["missing"] >= len(films) and len(err) == 1
    assert "warning" in err[0] and report["missing_files"]
    assert Path(films[0]).name in {Path(p).name for p in report["missing_files"]}
    argv = ["train", "--data-dir", str(root), "--out-dir", str(tmp_path / "run")]
    status, _, err = run_cli(name, argv, capsys)
    assert status == 2 and len(err) == 1
    assert f"{report['missing']} listed image files are missing" in err[0]


def test_kneeoa_films_absent_inspect_warns_and_train_stops(tmp_path, capsys):
    """MOST_names.csv (and OAI's contents.csv) name films; absent ones are counted, not skipped."""
    import kneeoa

    layout = "most"
    root = tmp_path / layout
    kneeoa.write_phantom_dataset(root, num_subjects=4, seed=0, layout=layout)
    films = sorted((root / "MOST").rglob("*.dcm"))
    assert len(films) > 1
    films[0].unlink()  # one listed film absent, the others there
    argv = ["--data-dir", str(root), "--layout", layout]
    status, out, err = run_cli("kneeoa", ["inspect", *argv], capsys)
    report = json.loads(out)
    assert status == 0 and report["missing"] >= 1 and len(err) == 1 and "warning" in err[0]
    status, _, err = run_cli("kneeoa", ["train", *argv, "--out-dir", str(tmp_path / "run")], capsys)
    assert status == 2 and len(err) == 1
    assert "listed image files are missing" in err[0] or "listed image file is missing" in err[0]


def test_kneekl224_unknown_label_folder_and_a_knee_in_two_grades(phantoms, tmp_path, capsys):
    root = tmp_path / "k"
    shutil.copytree(phantoms["kneeoa"], root)
    (root / "kneeKL224" / "train" / "abc").mkdir()
    status, _, err = run_cli("kneeoa", ["inspect", "--data-dir", str(root)], capsys)
    assert status == 2 and len(err) == 1 and "train/abc" in err[0]
    (root / "kneeKL224" / "train" / "abc").rmdir()
    first = Path(sorted(glob.glob(str(root / USED_FILE["kneeoa"])))[0])
    other = next(d for d in first.parent.parent.iterdir() if d != first.parent)
    shutil.copy(first, other / first.name)
    status, _, err = run_cli("kneeoa", ["inspect", "--data-dir", str(root)], capsys)
    assert status == 2 and len(err) == 1 and first.name in err[0] and "two KL folders" in err[0]


@pytest.mark.parametrize("case", ("header_only", "empty_folder"))
def test_spinenet_inspect_stops_on_an_empty_data_set(case, phantoms, tmp_path, capsys):
    root = tmp_path / "s"
    if case == "header_only":
        shutil.copytree(phantoms["spinenet"], root)
        csv = root / "radiological_gradings.csv"
        csv.write_text(csv.read_text().splitlines()[0] + "\n")
    else:
        root.mkdir()
    status, _, err = run_cli("spinenet", ["inspect", "--data-dir", str(root)], capsys)
    assert status == 2 and len(err) == 1 and str(root) in err[0]


def test_spinenet_mask_off_the_image_grid(tmp_path):
    import warnings

    import SimpleITK as sitk

    from spinenet.data import read_series

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 8, 8)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "i.mha"))
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1:3, 2:6, 2:6] = 201
    for name, origin in (("shifted.mha", (0.5, 0.0, 0.0)), ("far.mha", (500.0, 0.0, 0.0))):
        mask = sitk.GetImageFromArray(labels)
        mask.SetOrigin(origin)
        sitk.WriteImage(mask, str(tmp_path / name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, mask, _ = read_series(tmp_path / "i.mha", tmp_path / "shifted.mha")
    assert (mask == 201).sum() > 0 and any("resampled" in str(w.message) for w in caught)
    with pytest.raises(DataError, match="do not overlap"):
        read_series(tmp_path / "i.mha", tmp_path / "far.mha")


def test_boneage_folder_in_place_of_the_label_csv(phantoms, tmp_path, capsys):
    root = tmp_path / "b"
    shutil.copytree(phantoms["boneage"], root)
    csv = root / "boneage-training-dataset.csv"
    csv.unlink()
    csv.mkdir()
    status, _, err = run_cli("boneage", ["inspect", "--data-dir", str(root)], capsys)
    assert status == 2 and len(err) == 1 and str(csv) in err[0]


# ------------------------------------------------------------------------------ one run per folder
def _dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _write_lock(run, pid, host=None):
    run.mkdir(parents=True, exist_ok=True)
    holder = {"host": host or socket.gethostname(), "pid": pid, "started": "2026-01-01T00:00:00"}
    (run / ".lock").write_text(json.dumps(holder))


def test_second_run_into_a_folder_in_use_exits_2_naming_the_holder(phantoms, tmp_path, capsys):
    run = tmp_path / "run"
    _write_lock(run, os.getppid())  # a live process on this host holds the folder
    argv = ["train", "--data-dir", str(phantoms["mura"]), "--out-dir", str(run)]
    status, _, err = run_cli("mura", argv, capsys)
    assert status == 2 and len(err) == 1
    assert f"pid {os.getppid()} on host {socket.gethostname()}" in err[0] and str(run) in err[0]
    assert json.loads((run / ".lock").read_text())["pid"] == os.getppid()  # not taken over


def test_stale_lock_is_taken_over_and_a_foreign_host_is_not(tmp_path):
    from common.runlock import RunLockedError
    from common.runlock import acquire
    from common.runlock import read_lock
    from common.runlock import release

    run = tmp_path / "run"
    _write_lock(run, _dead_pid())  # the holder was killed
    assert acquire(run) is True and read_lock(run)["pid"] == os.getpid()
    assert acquire(run) is False  # re-entrant in one process
    release(run)
    assert read_lock(run) is None
    _write_lock(run, _dead_pid(), host="another-host.example")  # cannot tell: never taken over
    with pytest.raises(RunLockedError, match="another-host.example"):
        acquire(run)


def _orphans(run):
    """The files a kill leaves: during a checkpoint write and during export."""
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    made = [
        run / "checkpoints" / "ckpt-0003.tmp.weights.h5",
        run / "checkpoints" / "ckpt-0003.tmp.npz",
        run / ".model.tmp12345.h5",
        run / ".model.tmp12345.keras",
        run / ".metrics.json.a1b2c3.tmp",
    ]
    for path in made:
        path.write_bytes(b"half")
    return made


def test_resume_cleans_what_a_kill_left(phantoms, tmp_path, capsys):
    run = tmp_path / "run"
    made = _orphans(run)
    keep = [run / "checkpoints" / "ckpt-0002.weights.h5", run / "checkpoints" / "state.json"]
    for path in keep:
        path.write_text("{}")
    root, target = broken_copy(phantoms, "mura", "bomb", tmp_path)  # stops right after clean-up
    argv = ["train", "--data-dir", str(root), "--out-dir", str(run), "--resume"]
    status, _, err = run_cli("mura", argv, capsys)
    assert_one_line_naming(status, err, target)
    assert not any(path.exists() for path in made)
    assert all(path.exists() for path in keep)  # the checkpoint the run resumes from stays


def test_killed_writer_leaves_an_orphan_that_clean_orphans_removes(tmp_path):
    """A real SIGKILL in the middle of an atomic write (the writer blocks on a FIFO-fed input)."""
    from common.runlock import clean_orphans

    run = tmp_path / "run"
    run.mkdir()
    script = (
        "import os, time\n"  # the name common.export gives its temporary model file
        f"tmp = os.path.join({str(run)!r}, f'.model.tmp{{os.getpid()}}.h5')\n"
        "fd = os.open(tmp, os.O_CREAT | os.O_WRONLY)\n"
        "os.write(fd, b'half'); print(tmp, flush=True); time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    orphan = Path(process.stdout.readline().strip())
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert orphan.exists()
    assert os.fspath(orphan) in clean_orphans(run) and not orphan.exists()


def test_overwrite_starts_afresh_and_excludes_resume(phantoms, tmp_path, capsys):
    run = tmp_path / "run"
    _orphans(run)
    for name in ("model.h5", "report.html", "metrics.json", "history.csv"):
        (run / name).write_text("old")
    (run / "checkpoints" / "state.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    argv = ["train", "--data-dir", str(phantoms["mura"]), "--out-dir", str(run)]
    status, _, err = run_cli("mura", [*argv, "--resume", "--overwrite"], capsys)
    assert status == 2 and len(err) == 1 and "exclude" in err[0]
    root, _ = broken_copy(phantoms, "mura", "bomb", tmp_path)
    argv = ["train", "--data-dir", str(root), "--out-dir", str(run), "--overwrite"]
    status, _, err = run_cli("mura", argv, capsys)
    assert status == 2  # the bomb stops it after the folder was cleared
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_run_state_and_the_makefile_continue_or_report(tmp_path):
    """`make train-*`: a new folder trains, an interrupted run resumes, a finished one reports."""
    from common.runlock import run_state

    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(REPO / "Makefile", work / "Makefile")
    (work / "setup.cfg").write_text("")
    (work / "pyproject.toml").write_text("")
    (work / "data" / "phantoms" / "mura").mkdir(parents=True)
    stub = work / "py"
    stub.write_text('#!/bin/sh\necho "RUN $*"\n')
    stub.chmod(0o755)
    (work / "stamp").write_text("")
    os.utime(work / "setup.cfg", (1, 1))
    os.utime(work / "pyproject.toml", (1, 1))

    def make():
        argv = ["make", "-s", "-C", str(work), "train-mura", f"PY={stub}", f"STAMP={work}/stamp"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    run = work / "runs" / "mura"
    assert run_state(run) == "new"
    out = make()
    assert "train" in out and "--resume" not in out
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "state.json").write_text("{}")
    os.utime(run / "checkpoints" / "state.json", (100, 100))
    assert run_state(run) == "interrupted"
    assert "--resume" in make()
    for name in ("report.html", "metrics.json"):
        (run / name).write_text("x")
    assert run_state(run) == "finished"
    out = make()
    assert "RUN" not in out and "report.html" in out and "--overwrite" in out
    assert "make clean" in out


# ------------------------------------------------------------------------------ files and models
@pytest.mark.parametrize("umask", (0o022, 0o077))
def test_atomic_writes_respect_the_umask(umask, tmp_path):
    from common.fileio import atomic_write_text

    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_safe_mode_refusal_names_the_model_file(tmp_path):
    import keras

    from common.export import load_model

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "crafted.keras"
    model.save(path)
    with pytest.raises(DataError) as caught:
        load_model(path)
    assert str(path) in str(caught.value) and "safe mode" in str(caught.value)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------ DICOM details
def test_dicom_with_file_meta_but_no_transfer_syntax_is_read(tmp_path):
    import pydicom

    path = tmp_path / "meta_missing_tsyntax.dcm"
    pixels = np.arange(24, dtype=np.uint16).reshape(4, 6) * 100
    ds = dicom_image(path, (4, 6), 16, pixels.tobytes())
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    del ds.file_meta.TransferSyntaxUID  # as pydicom's meta_missing_tsyntax.dcm
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert "TransferSyntaxUID" not in pydicom.dcmread(path).file_meta
    image = read_image(path)
    assert image.shape == (4, 6) and image[0, 0] == 0.0 and image[-1, -1] == 1.0


@pytest.mark.parametrize(
    "name", ("MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm")
)  # JPEG-LS; 12-bit JPEG Extended, which only pylibjpeg-libjpeg (or GDCM) decodes
def test_compressed_dicom_decodes_with_the_installed_plugins(name):
    from pydicom.data import get_testdata_file

    image = read_image(get_testdata_file(name))
    assert image.ndim == 2 and image.std() > 0


def test_missing_jpeg_decoder_names_the_plugin_to_install(monkeypatch):
    import pydicom
    from pydicom.data import get_testdata_file

    import common.image_io as image_io

    def no_plugin(self):
        raise RuntimeError(
            "Unable to decompress 'JPEG Extended (Process 2 and 4)' pixel data because all "
            "plugins are missing dependencies:\n\tpylibjpeg - requires pylibjpeg-libjpeg"
        )

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_plugin))
    monkeypatch.setattr(image_io, "_jpeg_plugins_installed", lambda: False)
    path = get_testdata_file("JPGExtended.dcm")
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert path in message and "pylibjpeg-libjpeg" in message and "gdcm" in message
