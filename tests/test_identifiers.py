"""No patient identifier of a DICOM input reaches any output of any package (issues 14.3, 18).

Every package whose `predict` takes DICOM inputs (kneeoa, deepra, boneage, mura; SpineNet grades
`.mha` series and `.npy` volumes only) predicts for DICOM files whose file names, folder names and
identifying tags hold marker strings, with and without `--explain`, with `--dicom-out` and with
`--link-uids`; every output file's name and content, stdout and stderr are grepped for the markers.
Tiny untrained models keep it cheap: what is tested is naming, not accuracy.
"""

import os
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib  # noqa: E402

import pandas as pd  # noqa: E402
import pydicom  # noqa: E402
import pytest  # noqa: E402

from common.cli import main  # noqa: E402
from common.identifiers import UID_COLUMNS  # noqa: E402
from tests.identifier_helpers import FILE  # noqa: E402
from tests.identifier_helpers import FOLDER  # noqa: E402
from tests.identifier_helpers import grep_markers  # noqa: E402
from tests.identifier_helpers import save_tiny_model  # noqa: E402
from tests.identifier_helpers import write_marked_dicom  # noqa: E402

PACKAGES = ("kneeoa", "deepra", "boneage", "mura")


def _write_inputs(package, folder):
    """Marked DICOM inputs in the package's input layout; returns `(input folder, datasets)`."""
    root = folder / FOLDER
    if package == "deepra":  # one patient's four films, the patient ID in the file names
        files = [root / f"{FILE}-{limb}.dcm" for limb in ("LH", "RH", "LF", "RF")]
    elif package == "mura":  # a study folder as MURA lays it out
        files = [root / "XR_WRIST" / f"{FILE}_study1" / f"{FILE}_{k}.dcm" for k in (1, 2)]
    else:
        files = [root / f"{FILE}_{k}.dcm" for k in (1, 2)]
    study = pydicom.uid.generate_uid()
    datasets = [
        write_marked_dicom(path, seed=k, sex="FM"[k % 2], study_uid=study)
        for k, path in enumerate(files)
    ]
    return root, datasets


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per package: its tiny model, its marked inputs, and one predict run of each kind."""
    out = {}
    for name in PACKAGES:
        folder = tmp_path_factory.mktemp(f"ids_{name}")
        model = save_tiny_model(name, folder / "run")
        inputs, datasets = _write_inputs(name, folder / "inputs")
        out[name] = {"model": model, "inputs": inputs, "datasets": datasets, "folder": folder}
    return out


def _predict(capfd, name, run, out_dir, *flags):
    package = importlib.import_module(name)
    argv = ["predict", "--model", str(run["model"]), "--input", str(run["inputs"])]
    code = main(package, [*argv, "--out-dir", str(out_dir), *flags])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    return captured


@pytest.mark.parametrize("name", PACKAGES)
def test_predict_names_dicom_inputs_by_salted_hash_only(runs, capfd, name):
    run = runs[name]
    out_dir, dicom_dir = run["folder"] / "hashed", run["folder"] / "dicom"
    captured = _predict(capfd, name, run, out_dir, "--explain", "--dicom-out", str(dicom_dir))
    plain = _predict(capfd, name, run, run["folder"] / "plain")
    leaks = grep_markers(run["folder"] / "hashed", captured.out, captured.err)
    leaks += grep_markers(dicom_dir) + grep_markers(run["folder"] / "plain", plain.out, plain.err)
    assert leaks == []
    # The control: the markers are there to be found, in the inputs' names and headers.
    assert grep_markers(run["inputs"])
    frame = pd.read_csv(out_dir / "predictions.csv", dtype=str)
    names = frame["Patient_ID" if name == "deepra" else "study" if name == "mura" else "image"]
    prefix = "pat-" if name == "deepra" else "grp-" if name == "mura" else "dcm-"
    assert all(str(v).startswith(prefix) for v in names), names.tolist()
    assert not set(UID_COLUMNS) & set(frame.columns)
    for dataset in run["datasets"]:  # no UID either without --link-uids
        assert str(dataset.SOPInstanceUID) not in (out_dir / "predictions.csv").read_text()
    # The salt lives in the output folder: a second predict into it gives the same names.
    again = _predict(capfd, name, run, out_dir)
    assert grep_markers(out_dir, again.out, again.err) == []
    second = pd.read_csv(out_dir / "predictions.csv", dtype=str)
    assert second.iloc[:, 0].tolist() == frame.iloc[:, 0].tolist()
    # One Secondary Capture and one SR per DICOM input, valid for dciodvfy.
    written = sorted(dicom_dir.glob("*.dcm"))
    assert len(written) == 2 * len(run["datasets"])
    for path in written:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
        assert errors == [], (path.name, errors)


@pytest.mark.parametrize("name", PACKAGES)
def test_link_uids_adds_the_uid_columns(runs, capfd, name):
    run = runs[name]
    out_dir = run["folder"] / "linked"
    captured = _predict(capfd, name, run, out_dir, "--link-uids")
    assert grep_markers(out_dir, captured.out, captured.err) == []
    frame = pd.read_csv(out_dir / "predictions.csv", dtype=str)
    sops = {str(d.SOPInstanceUID) for d in run["datasets"]}
    series = {str(d.SeriesInstanceUID) for d in run["datasets"]}
    listed = {uid for cell in frame["sop_instance_uid"] for uid in str(cell).split(";")}
    assert listed == sops
    assert {u for cell in frame["series_instance_uid"] for u in str(cell).split(";")} == series
    assert set(frame["study_instance_uid"]) == {str(run["datasets"][0].StudyInstanceUID)}
    if name in ("kneeoa", "boneage"):  # one row per image: named by its SOP Instance UID
        assert frame["image"].tolist() == frame["sop_instance_uid"].tolist()


def test_boneage_reads_patient_sex_from_dicom(runs, capfd):
    run = runs["boneage"]
    _predict(capfd, "boneage", run, run["folder"] / "sex")
    frame = pd.read_csv(run["folder"] / "sex" / "predictions.csv", dtype=str)
    assert frame["sex"].tolist() == [str(d.PatientSex) for d in run["datasets"]] == ["F", "M"]
    # --sex still wins over the header.
    _predict(capfd, "boneage", run, run["folder"] / "sex_given", "--sex", "M")
    frame = pd.read_csv(run["folder"] / "sex_given" / "predictions.csv", dtype=str)
    assert frame["sex"].tolist() == ["M", "M"]


@pytest.mark.parametrize("owner,user", [("kneeoa", "boneage"), ("mura", "kneeoa")])
def test_evaluate_names_the_package_of_another_packages_model(runs, capfd, tmp_path, owner, user):
    package = importlib.import_module(user)
    model = str(runs[owner]["model"])
    code = main(
        package,
        ["evaluate", "--model", model, "--data-dir", str(tmp_path)]
        + ["--out-dir", str(tmp_path / "out")],
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and f"a {owner} model" in err[0] and f"python -m {owner}" in err[0]
    assert not (tmp_path / "out").exists()


def test_kneeoa_evaluate_on_dicom_films_names_them_by_hash(runs, capfd, tmp_path):
    """The OAI layout with DICOM films: evaluate's outputs carry no tag value nor file name."""
    import numpy as np

    from common.image_io import read_image
    from kneeoa.synthetic import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "oai", num_subjects=10, seed=0, layout="oai")
    films = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in (".png", ".dcm") and not p.name.startswith("._")  # macOS junk
    ]
    assert films
    for k, film in enumerate(films):  # every film becomes a marked DICOM of the same pixels
        pixels = np.round(read_image(film) * 4095).astype(np.uint16)
        film.unlink()
        target = film.with_suffix(".dcm")
        dataset = write_marked_dicom(target, seed=k, shape=pixels.shape)
        dataset.PixelData = pixels.tobytes()
        dataset.save_as(str(target), enforce_file_format=True)
    argv = ["evaluate", "--model", str(runs["kneeoa"]["model"]), "--data-dir", str(root)]
    code = main(importlib.import_module("kneeoa"), [*argv, "--out-dir", str(tmp_path / "ev")])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert grep_markers(tmp_path / "ev", captured.out, captured.err) == []
    frame = pd.read_csv(tmp_path / "ev" / "predictions.csv", dtype=str)
    assert len(frame) and all(name.startswith("dcm-") for name in frame["image"])
    stems = {film.stem for film in films}
    report = (tmp_path / "ev" / "report.html").read_text()
    assert not [s for s in stems if f"{s}.dcm" in report or f"{s}.dcm" in frame.to_csv()]
