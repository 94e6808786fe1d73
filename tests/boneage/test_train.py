"""boneage end to end: the CLI on a small phantom set, metrics and report, CAM on the hand, resume."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import boneage
from boneage.evaluate import band_labels
from boneage.evaluate import model_config
from boneage.evaluate import read_sex_csv
from boneage.evaluate import resolve_sexes
from boneage.explain import localisation_inputs
from common import phantoms
from common.cli import SUBCOMMANDS
from common.cli import main
from common.errors import DataError
from common.export import load_model
from common.image_io import read_image
from common.localisation import beats_controls
from common.localisation import center_prior_maps
from common.localisation import localisation_block
from common.testing import TestCase
from common.testing import run_module
from common.verify import INSPECT_FILE_KEYS

# One small run shared by every test of this module: phantoms written by `synthesize` and the
# demo preset trained by `train`, both through the command line: 8 epochs of 15 steps, about
# half a minute of training; `make train-boneage` trains the demo preset on 1,200 phantoms.
NUM_SUBJECTS = 160
EPOCHS = 8
BATCH = 8
# The |CAM| must beat every content-blind control by this share of its energy on the hand.
LOC_MARGIN = 0.05
CONTRACT_FILES = (
    "model.h5",
    "model.keras",
    "config.json",
    "history.csv",
    "metrics.json",
    "report.html",
    "predictions.csv",
)


def _ok(code, out, err):
    assert code == 0, f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}"
    return out


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("boneage_cli")
    data, run = root / "data", root / "run"
    _ok(
        *run_module(
            "boneage", "synthesize", "--out-dir", data, "--num-subjects", NUM_SUBJECTS, "--seed", 1
        )
    )
    out = _ok(
        *run_module(
            "boneage",
            "train",
            "--data-dir",
            data,
            "--out-dir",
            run,
            "--epochs",
            EPOCHS,
            "--batch-size",
            BATCH,
        )
    )
    return {"root": root, "data": data, "run": run, "stdout": out}


@pytest.fixture(scope="module")
def trained_model(cli_run):
    return load_model(cli_run["run"] / "model.keras")


# --------------------------------------------------------------------------- the run's files


def test_inspect_prints_one_json_object(cli_run, capsys):
    # In-process through `common.cli.main` (tests/test_conformance.py runs it as a subprocess).
    assert main(boneage, ["inspect", "--data-dir", str(cli_run["data"])]) == 0
    summary = json.loads(capsys.readouterr().out)  # the whole stdout is one JSON object
    # the Kaggle layout: training and test CSVs (plus the file checks `inspect` itself adds)
    assert set(summary) - INSPECT_FILE_KEYS == {"train", "test"}
    assert set(summary["train"]) == {"images", "males", "mean_age_months"}
    assert set(summary["test"]) == {"images", "males"}  # the test CSV has no ages
    assert summary["train"]["images"] + summary["test"]["images"] == NUM_SUBJECTS
    assert 60 < summary["train"]["mean_age_months"] < 190


def test_run_folder_holds_every_contract_file(cli_run):
    run = cli_run["run"]
    for name in CONTRACT_FILES:
        assert (run / name).is_file(), name
    assert "Test MAE" in cli_run["stdout"] and "Epoch" in cli_run["stdout"]
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "demo" and config["epochs"] == EPOCHS
    assert config["batch_size"] == BATCH
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(EPOCHS))
    assert {"loss", "val_loss", "val_mae", "lr"} <= set(history.columns)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    # The paper's stepwise decay (callback preset `boneage`) with the demo's numbers.
    demo = boneage.PRESETS["demo"]
    for epoch, lr in zip(history["epoch"], history["lr"]):
        expected = demo.learning_rate * demo.lr_decay_factor ** (epoch // demo.lr_decay_epochs)
        assert lr == pytest.approx(max(expected, demo.min_learning_rate), rel=1e-5)


def test_metrics_json_keys_and_intervals(cli_run):
    metrics = json.loads((cli_run["run"] / "metrics.json").read_text())
    contract = {"mae_months", "baseline_mae_months", "mae_months_by_sex"}  # CONTRACT.md
    assert contract <= set(metrics) and contract <= set(metrics["ci"])
    assert set(metrics["mae_months_by_sex"]) == {"male", "female"}
    assert set(metrics["ci"]["mae_months_by_sex"]) == {"male", "female"}
    bands = band_labels()
    assert list(metrics["mae_months_by_age_band"]) == bands
    for key in ("mae_months", "baseline_mae_months"):
        low, high = metrics["ci"][key]
        assert low <= metrics[key] <= high
    predictions = pd.read_csv(cli_run["run"] / "predictions.csv")
    assert len(predictions) == metrics["images"]
    errors = predictions["predicted_age_months"] - predictions["age_months"]
    assert metrics["mae_months"] == pytest.approx(errors.abs().mean(), abs=1e-2)
    # The mean predictor answers the training split's mean age for every image.
    config = json.loads((cli_run["run"] / "config.json").read_text())
    baseline = (predictions["age_months"] - config["train_mean_age_months"]).abs().mean()
    assert metrics["baseline_mae_months"] == pytest.approx(baseline, rel=1e-6)
    for sex, code in (("male", "M"), ("female", "F")):
        rows = predictions[predictions["sex"] == code]
        expected = (rows["predicted_age_months"] - rows["age_months"]).abs().mean()
        assert metrics["mae_months_by_sex"][sex] == pytest.approx(expected, abs=1e-2)
    # Files are named by file name only (the RSNA ids), never by a path.
    assert not predictions["image"].str.contains("/").any()


def test_report_shows_our_plots_beside_the_rsna_figures(cli_run):
    html = (cli_run["run"] / "report.html").read_text()
    assert "RSNA 2017" in html and "5.6" in html and "4.3" in html  # labelled as RSNA figures
    for caption in ("Fig. 3", "Bland–Altman", "Error by true age", "Class activation maps"):
        assert caption in html
    assert html.count("data:image/png;base64") >= 8  # 5 plots + CAM overlays


def test_demo_model_beats_the_mean_predictor(cli_run):
    # 8 epochs on 123 training phantoms (measured 0.49x); `make train-boneage` trains 10
    # epochs on ~920 and reaches the issue's <= 0.5x of the mean predictor.
    metrics = json.loads((cli_run["run"] / "metrics.json").read_text())
    assert metrics["mae_months"] < 0.7 * metrics["baseline_mae_months"], metrics


# --------------------------------------------------------------------------- CAM on the hand


def test_localisation_block_in_metrics_and_report(cli_run):
    """Issue 15.1: evaluate on phantoms writes the `localisation` block and the report shows it."""
    block = json.loads((cli_run["run"] / "metrics.json").read_text())["localisation"]
    assert (block["lesion"], block["unit"]) == ("hand", "image") and block["n"] >= 10, block
    html = (cli_run["run"] / "report.html").read_text()
    assert "Localisation: does the" in html  # the report shows the block and its panels


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="issue 15.1, measured on this fixture: the |CAM| scores 0.348 of its energy on the hand (chance 0.264), the centre prior 0.703 (p = 1.0); strict: remove this mark when "
    "the map wins",
)
def test_cam_beats_content_blind_controls(cli_run):
    """Issue 15.1: on the held-out phantoms the |CAM| (relative to an empty film, as the report
    draws it) puts more of its energy on the hand than the centre prior (the mean hand mask of
    the other images), the untrained network and another image's map, by LOC_MARGIN (absolute
    share of the energy), with the block's paired bootstrap p < 0.05."""
    block = json.loads((cli_run["run"] / "metrics.json").read_text())["localisation"]
    assert beats_controls(block, margin=LOC_MARGIN), block


def test_a_content_blind_map_in_the_cams_place_fails(cli_run, trained_model):
    """The check above can fail: a map that ignores the image, handed in as the model's |CAM|,
    does not beat the controls."""
    config = model_config(trained_model, {})
    records = boneage.load_records(cli_run["data"], seed=0)
    scored = localisation_inputs(trained_model, records[records["split"] == "test"], config)
    masks, untrained = scored["masks"], scored["untrained"]
    for blind in (center_prior_maps(masks), untrained):  # maps that ignore the image
        block = localisation_block(blind, masks, untrained_maps=untrained)
        assert not beats_controls(block, margin=LOC_MARGIN), block


# --------------------------------------------------------------------------- evaluate, predict


@pytest.mark.parametrize("suffix, via_cli", [("h5", True), ("keras", False)])
def test_evaluate_saved_model(cli_run, tmp_path, suffix, via_cli):
    """`evaluate` of both files: the .h5 through the CLI, the .keras through the API."""
    model, out = cli_run["run"] / f"model.{suffix}", tmp_path / suffix
    if via_cli:
        args = ("--model", model, "--data-dir", cli_run["data"], "--out-dir", out)
        _ok(*run_module("boneage", "evaluate", *args))
    else:
        boneage.evaluate(model, cli_run["data"], out, verbose=0)
    metrics = json.loads((out / "metrics.json").read_text())
    trained = json.loads((cli_run["run"] / "metrics.json").read_text())
    assert metrics["mae_months"] == pytest.approx(trained["mae_months"], abs=1e-3)
    assert metrics["baseline_mae_months"] == pytest.approx(trained["baseline_mae_months"])
    assert (out / "report.html").is_file() and (out / "predictions.csv").is_file()


def test_cli_predict_with_sex_csv_explain_and_dicom(cli_run, tmp_path):
    truth = pd.read_csv(cli_run["run"] / "predictions.csv").iloc[:3]
    folder = cli_run["data"] / "boneage-training-dataset" / "boneage-training-dataset"
    images = [folder / name for name in truth["image"]]
    # In a folder: the first image as a 12-bit DICOM and as an 8-bit PNG, its range stretched
    # to [0, 1] first (a DICOM is read min-max normalised), so both must give the same age.
    image = read_image(images[0])
    image = (image - image.min()) / (image.max() - image.min())
    dicom = tmp_path / "more" / f"{images[0].stem}_dcm.dcm"
    phantoms.write_dicom(dicom, image, bits=12)
    png = phantoms.write_png(tmp_path / "more" / f"{images[0].stem}_png.png", image)
    sex_csv = tmp_path / "sex.csv"
    rows = [f"{name},{sex}" for name, sex in zip(truth["image"][:2], truth["sex"][:2])]
    rows += [f"{Path(png).name},M", f"{dicom.name},M"]
    sex_csv.write_text("file,sex\n" + "\n".join(rows) + "\n")
    out = tmp_path / "pred"
    _ok(
        *run_module(
            "boneage",
            "predict",
            "--model",
            cli_run["run"] / "model.keras",
            "--input",
            *images,
            dicom.parent,
            "--out-dir",
            out,
            "--sex-csv",
            sex_csv,
            "--sex",
            truth["sex"][2],  # for the third image, not in the CSV
            "--explain",
        )
    )
    frame = pd.read_csv(out / "predictions.csv")
    # A DICOM input is named by a salted hash, never by its file name (common.identifiers).
    assert list(frame["image"][:3]) == [p.name for p in images]
    assert frame["image"][3].startswith("dcm-") and frame["image"][4] == Path(png).name
    assert list(frame["sex"]) == list(truth["sex"]) + ["M", "M"]
    # The same images, the same sexes: the ages `train` wrote for the test split.
    np.testing.assert_allclose(
        frame["predicted_age_months"][:3], truth["predicted_age_months"], atol=1e-2
    )
    assert abs(frame["predicted_age_months"][3] - frame["predicted_age_months"][4]) < 0.5
    for name in frame["overlay"]:
        overlay = cv2.imread(str(out / name))
        assert overlay is not None and overlay.shape[0] >= 200 and overlay.shape[2] == 3
    assert len(list(out.glob("*_cam.png"))) == 5


def test_trained_model_reads_a_girls_hand_as_younger(cli_run, trained_model):
    """The sex input carries what the phantoms put in it: a girl's skeleton matures 228/204 times
    faster (`boneage.synthetic.GIRL_MATURITY_FACTOR`), so the same hand is a younger girl's than
    boy's. Read as a boy's and as a girl's, every held-out phantom gets two ages; their mean
    difference (boy minus girl) must be positive with its 99% bootstrap interval above 0. A sex
    input cut off gives 0; one learned the wrong way round gives a negative difference.

    Measured (this module's 8-epoch run, 37 held-out images): +0.34 months on average, positive
    on 62% of the images, against the ~14 months the phantoms' factor implies: the short run has
    learned the direction, not yet the size.
    """
    config = model_config(trained_model, {})
    records = boneage.load_records(cli_run["data"], seed=0)
    records = records[records["split"] != "train"]
    records = records.assign(age_months=records["age_months"].fillna(0.0))  # ages unused here
    dataset = boneage.make_dataset(records, config=config, training=False, batch_size=64)
    differences = []
    for batch in dataset:
        image = np.asarray((batch[0] if isinstance(batch, tuple) else batch)["image"])
        ages = [
            trained_model({"image": image, "sex": np.full((len(image), 1), s, "float32")})
            for s in (1.0, 0.0)
        ]
        differences.append(np.asarray(ages[0]["age_months"] - ages[1]["age_months"])[:, 0])
    differences = np.concatenate(differences)
    assert len(differences) >= 30
    rng = np.random.default_rng(0)
    boot = differences[rng.integers(0, len(differences), (2000, len(differences)))].mean(axis=1)
    assert np.quantile(boot, 0.005) > 0, (differences.mean(), np.quantile(boot, [0.005, 0.995]))


# --------------------------------------------------------------------------- CLI shape


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(boneage, [command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m boneage " + command)
    if command == "predict":
        assert "--sex M|F" in out and "--sex-csv FILE" in out and "--explain" in out


def test_summary_json(capsys):
    assert main(boneage, ["summary", "--preset", "demo", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["params"] == boneage.count_params("demo")["params"]
    height, width = boneage.PRESETS["demo"].image_size_hw
    assert summary["inputs"] == {"image": [None, height, width, 1], "sex": [None, 1]}
    assert summary["outputs"] == {"age_months": [None, 1]}


BAD_CLI = [
    # (id, argv template, expected fragments of the one stderr line, folder that must stay empty)
    (
        "predict_without_sex",
        ["predict", "--model", "{model}", "--input", "{image}", "--out-dir", "{tmp}/p"],
        ["{image_name}", "no sex"],
        "{tmp}/p",
    ),
    (
        "predict_bad_sex_in_csv",
        ["predict", "--model", "{model}", "--input", "{image}", "--out-dir", "{tmp}/p",
         "--sex-csv", "{tmp}/bad_sex.csv"],
        ["bad_sex.csv", "row 3", "column 'sex'", "'X'"],
        "{tmp}/p",
    ),
    (
        "predict_file_not_in_csv",
        ["predict", "--model", "{model}", "--input", "{image}", "--out-dir", "{tmp}/p",
         "--sex-csv", "{tmp}/other_sex.csv"],
        ["{image_name}", "not listed in other_sex.csv"],
        "{tmp}/p",
    ),
    (
        "predict_bad_sex_flag",
        ["predict", "--model", "{model}", "--input", "{image}", "--out-dir", "{tmp}/p",
         "--sex", "X"],
        ["column '--sex'", "'X'"],
        "{tmp}/p",
    ),
    (
        "predict_corrupt_image",
        ["predict", "--model", "{model}", "--input", "{image}", "{tmp}/corrupt.png",
         "--out-dir", "{tmp}/p", "--sex", "F", "--explain"],
        ["corrupt.png"],
        "{tmp}/p",
    ),
    (
        "train_into_a_run_without_resume",
        ["train", "--data-dir", "{data}", "--out-dir", "{run}"],
        ["--resume"],
        None,
    ),
    (
        "train_negative_age",
        ["train", "--data-dir", "{tmp}/bad_data", "--out-dir", "{tmp}/r"],
        ["boneage-training-dataset.csv", "row 3", "column 'boneage'", "-4"],
        "{tmp}/r",
    ),
    (
        "evaluate_absent_model",
        ["evaluate", "--model", "{tmp}/absent.keras", "--data-dir", "{data}", "--out-dir",
         "{tmp}/e"],
        ["absent.keras"],
        "{tmp}/e",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CLI, ids=[c[0] for c in BAD_CLI])
def test_cli_bad_input_exits_2_with_one_line(cli_run, tmp_path, capsys, case):
    """In-process through `common.cli.main`, the entry point of `python -m boneage`."""
    _, argv, fragments, untouched = case
    image = sorted(
        (cli_run["data"] / "boneage-training-dataset" / "boneage-training-dataset").glob("*.png")
    )[0]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "bad_sex.csv").write_text(f"file,sex\nother.png,M\n{image.name},X\n")
    (tmp_path / "other_sex.csv").write_text("file,sex\nother.png,M\n")
    bad = tmp_path / "bad_data"
    shutil.copytree(cli_run["data"], bad, ignore=shutil.ignore_patterns("_phantom_truth"))
    labels = bad / "boneage-training-dataset.csv"
    lines = labels.read_text().splitlines()
    image_id, _, male = lines[2].split(",")
    lines[2] = f"{image_id},-4,{male}"
    labels.write_text("\n".join(lines) + "\n")
    names = {
        "model": cli_run["run"] / "model.keras",
        "image": image,
        "image_name": image.name,
        "data": cli_run["data"],
        "run": cli_run["run"],
        "tmp": tmp_path,
    }
    capsys.readouterr()
    code = main(boneage, [a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment.format(**names) in lines[0], lines[0]
    if untouched is not None:
        folder = Path(untouched.format(**names))
        assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


@pytest.mark.parametrize(
    "text, expected",
    [("file,sex\na.png,M\nb.png,f\n", {"a.png": 1, "b.png": 0}), ("File,Sex\nc,F\n", {"c": 0})],
)
def test_read_sex_csv(tmp_path, text, expected):
    path = tmp_path / "sex.csv"
    path.write_text(text)
    assert read_sex_csv(path) == expected


def test_resolve_sexes_by_name_or_stem_and_missing(tmp_path):
    path = tmp_path / "sex.csv"
    path.write_text("file,sex\na.png,M\nb,F\n")
    assert resolve_sexes(["/x/a.png", "/y/b.png"], sex_csv=path) == [1, 0]
    assert resolve_sexes(["/x/c.png"], sex_csv=path, sex="F") == [0]
    assert resolve_sexes(["/x/c.png"], required=False) == [None]
    with pytest.raises(DataError, match="c.png"):
        resolve_sexes(["/x/c.png"], sex_csv=path)


# --------------------------------------------------------------------------- resume, round trip


def test_resume_continues_the_run(cli_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run["run"], run)
    before = pd.read_csv(run / "history.csv")
    boneage.train(cli_run["data"], run, epochs=EPOCHS + 1, batch_size=BATCH, resume=True, verbose=0)
    after = pd.read_csv(run / "history.csv")
    assert len(after) == len(before) + 1  # one more epoch, the earlier ones kept as they were
    pd.testing.assert_frame_equal(after.iloc[: len(before)][before.columns], before)
    assert json.loads((run / "config.json").read_text())["resume"] is True


class TestSavedModel(TestCase):
    def test_round_trip_in_a_fresh_process(self, trained_model, tmp_path):
        height, width = trained_model.inputs[0].shape[1:3]
        rng = np.random.default_rng(0)
        batch = {
            "image": rng.uniform(size=(2, height, width, 1)).astype("float32"),
            "sex": np.array([[1.0], [0.0]], "float32"),
        }
        self.run_model_saving_test(trained_model, batch, tmp_path, fresh_process_import="boneage")
