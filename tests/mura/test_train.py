"""mura end to end: the CLI on a small phantom set, the run's files, CAM on the lesions, resume."""

import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest

import mura
from common.cli import SUBCOMMANDS
from common.cli import build_parser
from common.cli import main
from common.export import load_model
from common.image_io import read_image
from common.localisation import beats_controls
from common.localisation import center_prior_maps
from common.localisation import localisation_block
from common.testing import run_module
from common.verify import INSPECT_FILE_KEYS
from mura.ensemble import read_index
from mura.ensemble import topk_dir
from mura.evaluate import RADIOLOGIST_KAPPA
from mura.evaluate import make_forward
from mura.evaluate import model_config
from mura.evaluate import run_forward
from mura.explain import localisation_inputs

pytestmark = pytest.mark.filterwarnings("ignore:Group .* one class gets weight 0:UserWarning")

# A small, fast version of the demo: ~650 training images drawn at 96-112 px and read at 80x80 by a
# DenseNet of two dense blocks (3 and 6 conv blocks; a 10x10 CAM grid), Adam 1e-3 without plateau
# steps, BatchNormalization momentum 0.9 (so that the best epoch by validation loss is not picked
# from a noisy curve), EPOCHS epochs. `make train-mura` trains the demo preset as it is.
NUM_SUBJECTS = 240
IMAGE_SIZE_RANGE = (96, 112)
EPOCHS = 10
OVERRIDES = [
    "input_shape=[80,80,3]",
    "blocks=[3,6]",
    "learning_rate=0.001",
    "reduce_lr_on_plateau=false",
    "bn_momentum=0.9",
    "top_k_checkpoints=3",
]
TRAIN_ARGS = ["--epochs", str(EPOCHS), "--batch-size", "16"]
TRAIN_ARGS += [arg for item in OVERRIDES for arg in ("--set", item)]
METRIC_KEYS = {
    "study_kappa",
    "study_auroc",
    "study_accuracy",
    "study_sensitivity",
    "study_specificity",
}
# The CAM must beat every content-blind control by this share of its energy.
LOC_MARGIN = 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of `python -m mura train` on a small phantom set, shared by this module's tests."""
    root = tmp_path_factory.mktemp("mura_train")
    data = mura.write_phantom_dataset(
        root / "data", num_subjects=NUM_SUBJECTS, seed=1, image_size_range=IMAGE_SIZE_RANGE
    )
    run = root / "run"
    code, out, err = run_module(
        "mura", "train", "--data-dir", data, "--out-dir", run, "--seed", "0", *TRAIN_ARGS
    )
    assert code == 0, err[-3000:]
    return {"root": root, "data": data, "run": run, "stdout": out}


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
    config = json.loads((run / "config.json").read_text())
    assert config["input_shape"] == [80, 80, 3] and config["epochs"] == EPOCHS
    assert (config["beta_1"], config["beta_2"], config["batch_size"]) == (0.9, 0.999, 16)
    # MURA §3: per study type, w1 = N / (A + N) on abnormal and w0 = A / (A + N) on normal images.
    for weights in config["loss_weights_by_body_part"].values():
        assert weights["w0_normal"] + weights["w1_abnormal"] == pytest.approx(1.0)
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(EPOCHS))
    assert {"loss", "val_loss", "val_study_auroc", "lr"} <= set(history.columns)
    metrics = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS | {"by_body_part", "ci"} <= set(metrics)
    assert METRIC_KEYS | {"by_body_part"} <= set(metrics["ci"])
    for key in METRIC_KEYS:
        low, high = metrics["ci"][key]
        assert low <= metrics[key] <= high, key
    info = mura.inspect_dataset(trained["data"])
    assert sum(v["studies"] for v in metrics["by_body_part"].values()) == info["valid"]["studies"]
    assert set(metrics["by_body_part"]) == set(info["valid"]["body_parts"])
    for entry in metrics["by_body_part"].values():
        assert set(entry) == {"kappa", "auroc", "studies"}
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == info["valid"]["studies"] == metrics["studies"]
    assert predictions["study"].str.startswith("valid/").all()
    html = (run / "report.html").read_text()
    # The slides' radiologists and the MURA paper's model beside ours, labelled as MURA test set.
    assert "0.705" in html and f"{RADIOLOGIST_KAPPA['elbow'][0]:.3g}" in html
    assert "MURA test set" in html
    assert html.count("data:image/png;base64") >= 4  # ROC, learning curves, CAM overlays


def test_topk_checkpoints_are_the_best_epochs_by_val_loss(trained):
    history = pd.read_csv(trained["run"] / "history.csv")
    entries = read_index(topk_dir(trained["run"]))
    best = history.sort_values("val_loss", kind="stable")["epoch"].head(3).tolist()
    assert [e["epoch"] for e in entries] == best
    np.testing.assert_allclose(
        [e["value"] for e in entries], history.set_index("epoch").loc[best, "val_loss"]
    )
    assert len(list(topk_dir(trained["run"]).glob("*.weights.h5"))) == 3


def _learned(labels, probabilities, patients):
    """The check: the study AUROC's 95% bootstrap interval (over patients) lies above 0.5,
    the AUROC of any score that ignores the image."""
    from mura.evaluate import study_metrics

    parts = np.asarray(["all"] * len(labels))
    values, ci = study_metrics(labels, probabilities, patients, parts, seed=0, n_boot=500)
    return ci["study_auroc"][0] > 0.5, values["study_auroc"], ci["study_auroc"]


def test_model_learns_the_phantoms(trained):
    """The short run (10 epochs, 80 x 80) learns abnormality: its study AUROC's interval lies
    above chance. The bar is chance plus the interval, not a fixed AUROC: seed to seed the run
    measured 0.65-0.84, so a fixed bar of 0.75 tested the seed. The control: the same
    probabilities against labels shuffled within body part fail the same check."""
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    low, _high = metrics["ci"]["study_auroc"]
    assert low > 0.5 and metrics["study_auroc"] >= 0.6, (metrics["study_auroc"], low)
    table = pd.read_csv(trained["run"] / "predictions.csv")
    ok, auroc, interval = _learned(table["label"], table["probability"], table["patient"])
    assert ok, (auroc, interval)  # recomputed from predictions.csv: the same verdict
    rng = np.random.default_rng(0)
    shuffled = table.groupby("body_part")["label"].transform(lambda s: rng.permutation(s.values))
    ok, auroc, interval = _learned(shuffled, table["probability"], table["patient"])
    assert not ok, ("shuffled labels passed", auroc, interval)


def test_localisation_block_in_metrics_and_report(trained):
    """Issue 15.1: evaluate on phantoms writes the `localisation` block and the report shows it."""
    block = json.loads((trained["run"] / "metrics.json").read_text())["localisation"]
    assert block["unit"] == "image" and block["n"] >= 20, block
    html = (trained["run"] / "report.html").read_text()
    assert "Localisation: does the" in html  # the report shows the block and its panels


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="issue 15.1, measured on this fixture: the CAM scores 0.027 of its energy on the lesion (chance 0.008), the centre prior 0.036 (p = 0.98); strict: remove this mark when "
    "the map wins",
)
def test_cam_beats_content_blind_controls(trained):
    """Issue 15.1: on the abnormal held-out phantoms the CAM puts more of its (positive) energy
    inside the drawn lesion than the centre prior, the untrained network and another image's CAM,
    by LOC_MARGIN (absolute share of the energy), with the block's paired bootstrap p < 0.05."""
    block = json.loads((trained["run"] / "metrics.json").read_text())["localisation"]
    assert beats_controls(block, margin=LOC_MARGIN), block


def test_a_content_blind_map_in_the_cams_place_fails(trained):
    """The check above can fail: a map that ignores the image, handed in as the model's CAM,
    does not beat the controls."""
    model = load_model(trained["run"] / "model.keras")
    config, _ = model_config(model, trained["run"] / "model.keras")
    records = mura.load_records(trained["data"], config=config)
    records = records[records["split"] == "test"]
    scored = localisation_inputs([model], records, config)
    masks, untrained = scored["masks"], scored["untrained"]
    for blind in (center_prior_maps(masks), untrained):  # maps that ignore the image
        block = localisation_block(blind, masks, untrained_maps=untrained)
        assert not beats_controls(block, margin=LOC_MARGIN), block


# --------------------------------------------------------------------------- evaluate, predict


def test_cli_evaluate_h5_reproduces_the_run(trained, tmp_path, capsys):
    # in-process through the same entry point as `python -m mura` (common.cli.main)
    args = ["evaluate", "--model", str(trained["run"] / "model.h5"), "--data-dir"]
    code = main(mura, args + [str(trained["data"]), "--out-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    ours = json.loads((tmp_path / "metrics.json").read_text())
    theirs = json.loads((trained["run"] / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert ours["by_body_part"] == theirs["by_body_part"]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "predictions.csv").is_file()


def test_cli_evaluate_keras_ensemble_averages_the_best_epochs(trained, tmp_path, capsys):
    run, data = trained["run"], trained["data"]
    code = main(
        mura,
        [
            "evaluate",
            "--model",
            str(run / "model.keras"),
            "--data-dir",
            str(data),
            "--out-dir",
            str(tmp_path),
            "--ensemble",
            "2",
        ],
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["ensemble_members"] == 2
    # The ensemble's study probability is the mean over both members and over the study's images.
    model = load_model(run / "model.keras")
    config, _ = model_config(model, run / "model.keras")
    records = mura.load_records(data, config=config)
    records = records[records["split"] == "test"].reset_index(drop=True)
    forward = make_forward([model])  # the same variables, loaded with each member's weights
    member_probs = []
    for entry in read_index(topk_dir(run))[:2]:
        model.load_weights(topk_dir(run) / entry["file"])
        member_probs.append(run_forward(forward, records, config)[0])
    studies = mura.study_probabilities(records, np.mean(member_probs, axis=0))
    written = pd.read_csv(tmp_path / "predictions.csv")
    np.testing.assert_allclose(written["probability"], studies["probability"], atol=2e-6)


def test_cli_predict_with_explain_writes_one_overlay_per_image(trained, tmp_path):
    valid = trained["data"] / "MURA-v1.1" / "valid"
    study = sorted(valid.glob("XR_*/patient*/study*_positive"))[0]
    single = sorted(valid.glob("XR_*/patient*/study*_negative/image1.png"))[0]
    code, out, err = run_module(
        "mura",
        "predict",
        "--model",
        trained["run"] / "model.keras",
        "--input",
        study,
        single,
        "--out-dir",
        tmp_path,
        "--explain",
    )
    assert code == 0, err[-3000:]
    frame = pd.read_csv(tmp_path / "predictions.csv")
    views = sorted(p.name for p in study.glob("image*.png"))
    assert list(frame["num_images"]) == [len(views), 1]
    assert frame["images"].iloc[0] == ";".join(views)
    images = pd.read_csv(tmp_path / "image_predictions.csv")
    assert len(images) == len(views) + 1
    for name in images["overlay"]:
        overlay = read_image(tmp_path / name)
        assert overlay.shape[0] == 320


def test_resume_continues_the_run(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    before = pd.read_csv(run / "history.csv")
    # The run's own configuration (config.json) is used: no overrides needed, only more epochs.
    mura.train(trained["data"], run, epochs=EPOCHS + 1, resume=True, verbose=0)
    after = pd.read_csv(run / "history.csv")
    assert len(after) == len(before) + 1
    pd.testing.assert_frame_equal(after.iloc[: len(before)][before.columns], before)
    entries = read_index(topk_dir(run))
    best = after.sort_values("val_loss", kind="stable")["epoch"].head(3).tolist()
    assert [e["epoch"] for e in entries] == best
    config = json.loads((run / "config.json").read_text())
    assert config["input_shape"] == [80, 80, 3] and config["epochs"] == EPOCHS + 1


# --------------------------------------------------------------------------- CLI


def test_cli_synthesize_inspect_summary(tmp_path, capsys):
    assert main(mura, ["synthesize", "--out-dir", str(tmp_path), "--num-subjects", "4"]) == 0
    capsys.readouterr()
    assert main(mura, ["inspect", "--data-dir", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert set(info) - INSPECT_FILE_KEYS == {"train", "valid"}
    for split in (info["train"], info["valid"]):
        assert set(split) == {"images", "studies", "abnormal_studies", "patients", "body_parts"}
    assert main(mura, ["summary", "--preset", "demo", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["preset"] == "demo"
    assert summary["inputs"] == {"image": [None, 128, 128, 3]}
    assert summary["outputs"] == {"abnormal": [None, 1]}
    assert summary["params"] == mura.build_model("demo").count_params()


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser(mura).parse_args([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text
    if command in ("evaluate", "predict"):
        assert "--ensemble" in text
    if command == "train":
        assert "--set" in text


def _bad_label(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained["data"] / "MURA-v1.1", data / "MURA-v1.1")
    csv_file = data / "MURA-v1.1" / "valid_labeled_studies.csv"
    lines = csv_file.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",2"
    csv_file.write_text("\n".join(lines) + "\n")
    return ["train", "--data-dir", str(data), "--out-dir", str(tmp_path / "run")], [
        "valid_labeled_studies.csv",
        "row 3",
        "column 'label'",
    ]


def _run_without_resume(trained, tmp_path):
    args = ["train", "--data-dir", str(trained["data"]), "--out-dir", str(trained["run"])]
    return args, ["--resume"]


def _too_big_ensemble(trained, tmp_path):
    args = ["evaluate", "--model", str(trained["run"] / "model.h5"), "--data-dir"]
    args += [str(trained["data"]), "--out-dir", str(tmp_path / "run"), "--ensemble", "9"]
    return args, ["model.h5", "only 3"]


def _corrupt_png(trained, tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    args = ["predict", "--model", str(trained["run"] / "model.keras"), "--input"]
    return args + [str(tmp_path / "corrupt.png"), "--out-dir", str(tmp_path / "run")], [
        "corrupt.png"
    ]


def _bad_override(trained, tmp_path):
    args = ["train", "--data-dir", str(trained["data"]), "--out-dir", str(tmp_path / "run")]
    return args + ["--set", "input_size=[96,96,3]"], ["Unknown override 'input_size'"]


BAD_INPUT = [_bad_label, _run_without_resume, _too_big_ensemble, _corrupt_png, _bad_override]


@pytest.mark.parametrize("make_case", BAD_INPUT, ids=[f.__name__[1:] for f in BAD_INPUT])
def test_cli_bad_input_exits_2_with_one_line(trained, tmp_path, capsys, make_case):
    args, fragments = make_case(trained, tmp_path)
    before = sorted(p.name for p in trained["run"].rglob("*"))
    code = main(mura, args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # nothing half-written
    assert sorted(p.name for p in trained["run"].rglob("*")) == before


def test_cli_bad_input_in_a_fresh_process(trained, tmp_path):
    """The same one-line error from `python -m mura`, with TensorFlow's own logging around."""
    args, fragments = _bad_label(trained, tmp_path)
    code, out, err = run_module("mura", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not (tmp_path / "run").exists()
