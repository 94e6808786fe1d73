"""kneeoa end to end: train the demo model on phantoms, attention on the joint space, CLI, resume."""

import json

import cv2
import pandas as pd
import pytest

import kneeoa
from common.cli import main
from common.export import load_model
from common.localisation import beats_controls
from common.localisation import center_prior_maps
from common.localisation import localisation_block
from common.testing import run_module
from kneeoa.evaluate import model_config
from kneeoa.explain import localisation_inputs
from kneeoa.synthetic import write_phantom_dataset

# Small and quick: 10 epochs of batch 8 on ~150 training knees (about a minute). Early stopping is
# off here because the 16-knee validation split is too noisy to stop on; `make train-knee` trains
# the demo preset as it is on 800 knees.
EPOCHS = 10
# The att0 mask must beat every content-blind control by this share of its energy (see the
# localisation test; measured below in the helper's report).
LOC_MARGIN = 0.05
FAST = {"batch_size": 8, "early_stopping_patience": 20, "reduce_lr_patience": 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One demo run on a small kneeKL224 phantom set, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("knee_train")
    data = write_phantom_dataset(root / "data", num_subjects=120, seed=1, layout="folders")
    run_dir = root / "run"
    metrics = kneeoa.train(
        data / "kneeKL224",
        run_dir,
        preset="demo",
        epochs=EPOCHS,
        seed=0,
        verbose=0,
        batch_size=FAST["batch_size"],
        early_stopping_patience=FAST["early_stopping_patience"],
        reduce_lr_patience=FAST["reduce_lr_patience"],
    )
    return {"root": root, "data": data, "run": run_dir, "metrics": metrics}


def test_run_folder_holds_every_contract_file(trained):
    run = trained["run"]
    for name in (
        "model.h5",
        "model.keras",
        "config.json",
        "history.csv",
        "metrics.json",
        "report.html",
        "predictions.csv",
    ):
        assert (run / name).is_file(), name
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(len(history)))
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    metrics = json.loads((run / "metrics.json").read_text())
    keys = {"accuracy", "kappa_quadratic", "kappa_linear", "mae_kl", "per_branch_accuracy"}
    assert keys <= set(metrics) and keys <= set(metrics["ci"])
    assert set(metrics["per_branch_accuracy"]) == {"att0", "att1"}
    low, high = metrics["ci"]["accuracy"]
    assert low <= metrics["accuracy"] <= high
    html = (run / "report.html").read_text()
    assert "64.3" in html or "0.643" in html  # the paper's figure beside ours
    assert html.count("data:image/png;base64") >= 4
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == metrics["knees"]


def test_demo_model_learns_the_phantom_grades(trained):
    # short training (EPOCHS epochs on ~150 knees); make train-knee trains longer on more knees
    assert trained["metrics"]["kappa_quadratic"] >= 0.5, trained["metrics"]


def test_localisation_block_in_metrics_and_report(trained):
    """Issue 15.1: evaluate on phantoms writes the `localisation` block and the report shows it."""
    block = json.loads((trained["run"] / "metrics.json").read_text())["localisation"]
    assert (block["branch"], block["lesion"], block["unit"]) == ("att0", "joint_space", "knee")
    assert block["n"] >= 20, block
    html = (trained["run"] / "report.html").read_text()
    assert "Localisation: does the" in html  # the report shows the block and its panels


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="issue 15.1, measured on this fixture: the att0 mask scores 0.068 of its energy on the joint space (chance 0.029), the centre prior 0.385 (p = 1.0): the phantoms put the joint in nearly the same place on every film; strict: remove this mark when "
    "the map wins",
)
def test_att0_mask_beats_content_blind_controls(trained):
    """Issue 15.1: on held-out phantom knees the att0 mask puts more of its energy on the joint
    space than the centre prior, the untrained network and another knee's mask, by LOC_MARGIN
    (absolute share of the energy) with the block's paired bootstrap p < 0.05."""
    block = json.loads((trained["run"] / "metrics.json").read_text())["localisation"]
    assert beats_controls(block, margin=LOC_MARGIN), block


def test_a_content_blind_map_in_the_models_place_fails(trained):
    """The check above can fail: a map that ignores the knee, handed in as the model's (the
    centre prior, which ties with itself; the untrained network's), does not beat the controls."""
    model = load_model(trained["run"] / "model.keras")
    config = model_config(model, trained["run"] / "model.keras")
    records = kneeoa.load_records(trained["data"] / "kneeKL224", seed=0)
    scored = localisation_inputs(model, records[records["split"] == "test"], config)
    masks, untrained = scored["masks"], scored["untrained"]
    for blind in (center_prior_maps(masks), untrained):
        block = localisation_block(blind, masks, untrained_maps=untrained, unit="knee")
        assert not beats_controls(block, margin=LOC_MARGIN), block


def test_cli_evaluate_both_formats_and_predict_with_explain(trained, tmp_path):
    for suffix in ("h5", "keras"):
        code, out, err = run_module(
            "kneeoa",
            "evaluate",
            "--model",
            trained["run"] / f"model.{suffix}",
            "--data-dir",
            trained["data"] / "kneeKL224",
            "--out-dir",
            tmp_path / suffix,
        )
        assert code == 0, err[-2000:]
        metrics = json.loads((tmp_path / suffix / "metrics.json").read_text())
        assert metrics["accuracy"] == pytest.approx(trained["metrics"]["accuracy"])
    images = sorted((trained["data"] / "kneeKL224" / "test").rglob("*.png"))[:3]
    code, out, err = run_module(
        "kneeoa",
        "predict",
        "--model",
        trained["run"] / "model.keras",
        "--input",
        *images,
        "--out-dir",
        tmp_path / "pred",
        "--explain",
    )
    assert code == 0, err[-2000:]
    frame = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert list(frame["image"]) == [p.name for p in images]
    assert frame["kl_pred"].between(0, 4).all()
    for name in frame["overlay"]:
        overlay = cv2.imread(str(tmp_path / "pred" / name))
        assert overlay is not None and overlay.shape[0] == 320


def test_resume_continues_a_finished_run_without_retraining(trained):
    before = pd.read_csv(trained["run"] / "history.csv")
    kneeoa.train(
        trained["data"] / "kneeKL224",
        trained["run"],
        preset="demo",
        epochs=len(before) + 1,
        seed=0,
        resume=True,
        verbose=0,
        batch_size=FAST["batch_size"],
        early_stopping_patience=FAST["early_stopping_patience"],
        reduce_lr_patience=FAST["reduce_lr_patience"],
    )
    after = pd.read_csv(trained["run"] / "history.csv")
    if before.get("stopped_early") is not None and before["stopped_early"].fillna(0).any():
        assert len(after) == len(before)  # an early-stopped run stays stopped
    else:
        assert len(after) == len(before) + 1
    pd.testing.assert_frame_equal(after.iloc[: len(before)][before.columns], before)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--data-dir", "{data}/kneeKL224", "--out-dir", "{run}"], "--resume"),
        (
            [
                "evaluate",
                "--model",
                "{tmp}/absent.keras",
                "--data-dir",
                "{data}",
                "--out-dir",
                "{tmp}/e",
            ],
            "absent.keras",
        ),
        (
            [
                "predict",
                "--model",
                "{run}/model.keras",
                "--input",
                "{tmp}/nothing",
                "--out-dir",
                "{tmp}/p",
            ],
            "nothing",
        ),
        (
            [
                "predict",
                "--model",
                "{run}/model.keras",
                "--input",
                "{tmp}/corrupt.png",
                "--out-dir",
                "{tmp}/p",
            ],
            "corrupt.png",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(trained, tmp_path, capsys, args, fragment):
    # in-process through the same entry point as `python -m kneeoa` (common.cli.main)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    names = {"data": trained["data"], "run": trained["run"], "tmp": tmp_path}
    code = main(kneeoa, [a.format(**names) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], err


def test_bad_kl_file_column_names_file_and_column(tmp_path):
    root = write_phantom_dataset(tmp_path / "d", num_subjects=3, seed=0, layout="oai")
    kl_file = root / "OAI" / "kXR_SQ_BU00.txt"
    kl_file.write_text(kl_file.read_text().replace("V00XRKL", "V00XRKX"))
    code, out, err = run_module("kneeoa", "inspect", "--data-dir", root / "OAI")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "kXR_SQ_BU00.txt" in lines[0] and "V00XRKL" in lines[0], err
