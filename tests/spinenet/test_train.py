"""spinenet end to end: training, metrics.json, report, evidence hotspots on the lesions, CLI, resume."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

import spinenet
from common.cli import build_parser
from common.cli import main
from common.export import load_model
from common.localisation import beats_controls
from common.localisation import center_prior_maps
from common.testing import TestCase
from common.testing import run_module
from common.verify import INSPECT_FILE_KEYS
from spinenet.data import class_weights
from spinenet.data import load_volumes
from spinenet.data import read_dataset
from spinenet.evaluate import collect_predict_inputs
from spinenet.evaluate import hotspot_augmentation
from spinenet.evaluate import model_config
from spinenet.explain import lesion_slices
from spinenet.explain import slice_localisation
from spinenet.synthetic import write_phantom_dataset
from tests.spinenet.conftest import write_spider_sample

TASKS = [
    "pfirrmann",
    "narrowing",
    "upper_endplate",
    "lower_endplate",
    "upper_marrow",
    "lower_marrow",
]
# A small run that learns the endplate notches in about 25 s of CPU: 16 phantom patients (about 78
# training discs), 20 epochs of batch 8. Against the demo preset (40 epochs on 390 discs with the
# paper's augmentation) it uses milder augmentation, no dropout and a higher rate with gradient
# clipping: plain SGD stalls for many epochs on so few examples.
SEED = 1
FAST = {
    "epochs": 20,
    "batch_size": 8,
    "learning_rate": 0.02,
    "global_clipnorm": 2.0,
    "dropout": 0.0,
    "lr_patience": 4,
    "rotation_deg": 5.0,
    "shift_x_px": 8,
    "shift_y_px": 6,
    "shift_slices": 1,
    "scale_range": (0.95, 1.05),
    "intensity_delta": 0.05,
    "hotspot_copies": 8,
}
# Share of the hotspots' energy inside the lesion above the best content-blind control's.
HOTSPOT_MARGIN = 0.01


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run on a small phantom set, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("spinenet_train")
    data = write_phantom_dataset(root / "data", num_subjects=16, seed=7, write_t1=False)
    run = root / "run"
    metrics = spinenet.train(data, run, preset="demo", seed=SEED, verbose=0, **FAST)
    return {"root": root, "data": data, "run": run, "metrics": metrics}


@pytest.fixture(scope="module")
def plain_data(trained, tmp_path_factory):
    """The run's data set without its phantom truth, as real data comes: evaluate adds no
    `localisation` block (and spends nothing on it)."""
    target = tmp_path_factory.mktemp("spinenet_plain") / "data"
    shutil.copytree(trained["data"], target, ignore=shutil.ignore_patterns("_phantom_truth"))
    return target


@pytest.fixture(scope="module")
def new_discs(tmp_path_factory):
    """Phantom patients the model has never seen (T2 only), with their lesion ground truth."""
    root = write_phantom_dataset(
        tmp_path_factory.mktemp("spinenet_new"), num_subjects=8, seed=99, write_t1=False
    )
    return root, read_dataset(root)


# ---------------------------------------------------------------------------- the run's files


def test_run_folder_metrics_and_report(trained):
    run = trained["run"]
    for name in (
        "model.h5",
        "model.keras",
        "config.json",
        "history.csv",
        "metrics.json",
        "report.html",
        "predictions.csv",
        "checkpoints/best.weights.h5",
    ):
        assert (run / name).is_file(), name
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(FAST["epochs"]))
    assert history["loss"].iloc[-5:].mean() < 0.8 * history["loss"].iloc[:3].mean()
    assert "val_mean_per_class_accuracy" in history.columns
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(trained["metrics"]))
    # CONTRACT.md keys, then the extras, each with its interval under "ci".
    assert list(metrics["per_class_accuracy"]) == TASKS
    values = [metrics["per_class_accuracy"][t] for t in TASKS]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert metrics["mean_per_class_accuracy"] == pytest.approx(np.mean(values))
    for key in ("per_class_accuracy", "kappa"):
        assert set(metrics["ci"][key]) == set(TASKS)
    for key in ("mean_per_class_accuracy", "pfirrmann_within_1", "narrowing_binary_accuracy"):
        low, high = metrics["ci"][key]
        assert low <= metrics[key] <= high, key
    assert np.asarray(metrics["confusion_matrices"]["pfirrmann"]).shape == (5, 5)
    assert np.asarray(metrics["confusion_matrices"]["lower_endplate"]).shape == (2, 2)
    assert (
        sum(map(sum, metrics["confusion_matrices"]["narrowing"]))
        == metrics["labelled"]["narrowing"]
    )
    assert metrics["tta"] is True and metrics["discs"] > 0
    assert metrics["paper"]["table2"]["lower_endplate"] == {"intra_rater": 0.833, "conv5": 0.873}
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == metrics["discs"]
    assert {"image", "ivd_label", "level", "pfirrmann_true", "pfirrmann_grade_pred"} <= set(
        predictions.columns
    )
    assert predictions["image"].str.endswith(".mha").all()
    html = (run / "report.html").read_text()
    # The paper's Table 2 (conv5 column, intra-rater) and §5 figures beside ours.
    for text in ("87.3 ± 2.3 %", "83.3 %", "0.961", "intra-rater", "Lootus"):
        assert text in html, text
    assert html.count("data:image/png;base64") >= 6 + 1 + 1 + 1 + 3  # localisation: bars, panels
    # Phantoms: the hotspots scored against content-blind controls (issue 15.1).
    block = metrics["localisation"]
    assert (block["metric"], block["unit"]) == ("energy_inside_lesion", "slice")
    assert set(block["controls"]) == {"center_prior", "untrained", "shuffled"}
    assert block["n"] >= 20 and block["discs"] >= 3, block  # lesion slices, discs with a lesion
    assert "Localisation: does the evidence hotspots find the lesion?" in html


def test_input_mean_and_class_weights_come_from_the_training_split(trained):
    config = json.loads((trained["run"] / "config.json").read_text())
    assert (config["momentum"], config["weight_decay"]) == (0.9, 5e-4)  # §4
    records = read_dataset(trained["data"], seed=SEED)
    train = records[records["split"] == "train"]
    volumes = load_volumes(train)
    expected = np.asarray(volumes, np.float64).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(config["input_mean"], expected, rtol=1e-6)
    model = load_model(trained["run"] / "model.keras")
    saved = model.get_layer("mean_subtraction").get_weights()[0]
    np.testing.assert_allclose(saved, expected, rtol=1e-5)
    weights = class_weights(train, config)
    for task in TASKS:
        np.testing.assert_allclose(config["class_weights"][task], weights[task])
    assert config["split_counts"]["train"] == len(train)


# ---------------------------------------------------------------------------- evidence hotspots


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="issue 15.1, measured: the hotspots put 0.135 of their energy on the lesion, the "
    "centre prior 0.247 and another disc's hotspot 0.131 (p = 0.99); strict: remove this mark "
    "when they win",
)
def test_hotspots_beat_the_content_blind_controls(trained):
    """Issue 15.1: the run's own evaluate (its test split, a phantom set) scores the evidence
    hotspots of every lesion slice against content-blind maps; they must beat every control."""
    block = trained["metrics"]["localisation"]
    # Measured (73 slices of 8 discs): model 0.135 [0.117, 0.161], chance 0.032, centre prior
    # 0.247 [0.179, 0.287], untrained 0.040, shuffled 0.131.
    assert beats_controls(block, margin=HOTSPOT_MARGIN), block


def test_content_blind_maps_handed_in_as_the_model_fail(trained):
    """The check can fail: the same slices (recomputed with evaluate's settings, which gives the
    run's block again) with the centre prior handed in as the model's hotspots do not beat it."""
    model = load_model(trained["run"] / "model.keras")
    config = model_config(model, trained["run"] / "model.keras")
    records = read_dataset(trained["data"], seed=SEED)
    units = lesion_slices(
        model,
        records[records["split"] == "test"],
        trained["data"],
        copies=int(config["hotspot_copies"]),
        augment=hotspot_augmentation(config),
        seed=SEED,
    )
    block, _ = slice_localisation(units, seed=SEED)
    expected = trained["metrics"]["localisation"]
    assert (block["n"], block["discs"], block["tasks"]) == (
        expected["n"],
        expected["discs"],
        expected["tasks"],
    )
    for name in ("center_prior", "untrained", "shuffled"):
        assert block["controls"][name]["value"] == pytest.approx(
            expected["controls"][name]["value"], rel=1e-4
        )
    assert block["model"]["value"] == pytest.approx(expected["model"]["value"], rel=1e-4)
    prior = center_prior_maps(np.stack(units["masks"]))
    block, _ = slice_localisation({**units, "model": list(prior)}, seed=SEED)
    assert block["model"]["value"] == pytest.approx(block["controls"]["center_prior"]["value"])
    assert not beats_controls(block, margin=HOTSPOT_MARGIN), block


# ---------------------------------------------------------------------------- command line


def test_cli_synthesize_inspect_summary(tmp_path, capsys):
    code, out, err = run_module(
        "spinenet", "synthesize", "--out-dir", tmp_path / "d", "--num-subjects", "2"
    )
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in (tmp_path / "d" / "images").iterdir()) == [
        "1_t1.mha",
        "1_t2.mha",
        "2_t1.mha",
        "2_t2.mha",
    ]
    code, out, err = run_module("spinenet", "inspect", "--data-dir", tmp_path)
    assert code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    summary = json.loads(lines[0])
    assert set(summary) - INSPECT_FILE_KEYS == {
        "patients",
        "discs",
        "series",
        "modic_counts",
        "pfirrmann_counts",
    }
    assert (summary["patients"], summary["series"]) == (2, 4)
    assert sum(summary["pfirrmann_counts"].values()) <= summary["discs"] == 12
    assert set(summary["modic_counts"]) == {"0", "1", "2", "3"}
    # summary in this process, through the same entry point as `python -m spinenet`
    assert main(spinenet, ["summary", "--preset", "demo", "--json"]) == 0
    described = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert described["params"] == spinenet.build_model("demo").count_params()
    assert described["inputs"] == {"volume": [None, 112, 224, 9]}
    assert described["outputs"]["pfirrmann"] == [None, 5]
    assert set(described["outputs"]) == set(TASKS)


@pytest.mark.parametrize(
    "command", ["synthesize", "inspect", "summary", "train", "evaluate", "predict"]
)
def test_help_of_every_subcommand(command, capsys):
    parser = build_parser(spinenet)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: python -m spinenet {command}")
    if command in ("train", "evaluate", "predict"):
        assert "--no-tta" in text and "54 test-time views" in text
    if command == "predict":
        assert "volumes.npy" in text and "SPIDER" in text and "masks" in text


def test_cli_train_tiny_without_tta(plain_data, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_module(
        "spinenet",
        "train",
        "--data-dir",
        plain_data,
        "--out-dir",
        run,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-tta",
    )
    assert code == 0, err[-2000:]
    assert "Test mean per-class accuracy" in out
    for name in ("model.h5", "model.keras", "config.json", "history.csv", "report.html"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["tta"]) == (1, 4, False)
    assert json.loads((run / "metrics.json").read_text())["tta"] is False
    assert len(pd.read_csv(run / "history.csv")) == 1


def test_cli_evaluate_h5_and_keras(trained, plain_data, tmp_path, capsys):
    code, out, err = run_module(
        "spinenet",
        "evaluate",
        "--model",
        trained["run"] / "model.h5",
        "--data-dir",
        plain_data,
        "--out-dir",
        tmp_path / "h5",
    )
    assert code == 0, err[-2000:]
    # .keras in this process, through the same entry point.
    args = ["evaluate", "--model", str(trained["run"] / "model.keras")]
    args += ["--data-dir", str(plain_data), "--out-dir", str(tmp_path / "keras")]
    assert main(spinenet, args) == 0, capsys.readouterr().err
    expected = trained["metrics"]
    for suffix in ("h5", "keras"):
        metrics = json.loads((tmp_path / suffix / "metrics.json").read_text())
        assert metrics["discs"] == expected["discs"]
        assert "localisation" not in metrics  # real data: no lesion truth, no block
        for task in TASKS:
            assert metrics["per_class_accuracy"][task] == pytest.approx(
                expected["per_class_accuracy"][task]
            )
        assert (tmp_path / suffix / "report.html").is_file()
        assert len(pd.read_csv(tmp_path / suffix / "predictions.csv")) == expected["discs"]
    # Another split, without test-time augmentation.
    args[-1] = str(tmp_path / "val")
    assert main(spinenet, [*args, "--split", "val", "--no-tta"]) == 0
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    config = json.loads((trained["run"] / "config.json").read_text())
    assert metrics["discs"] == config["split_counts"]["val"] and metrics["tta"] is False


def test_cli_predict_series_and_volumes_with_explain(trained, new_discs, tmp_path):
    root, records = new_discs
    series = root / "images" / "2_t2.mha"
    chosen = records[records["image_path"] == str(series)]
    volumes = load_volumes(records.iloc[:2])
    np.save(tmp_path / "volumes.npy", volumes.astype(np.float32))
    out = tmp_path / "pred"
    code, stdout, err = run_module(
        "spinenet",
        "predict",
        "--model",
        trained["run"] / "model.keras",
        "--input",
        series,
        tmp_path / "volumes.npy",
        "--out-dir",
        out,
        "--explain",
        "--hotspot-copies",
        "2",
    )
    assert code == 0, err[-2000:]
    frame = pd.read_csv(out / "predictions.csv")
    assert len(frame) == len(chosen) + 2 == 8
    assert list(frame["image"]) == ["2_t2.mha"] * 6 + ["volumes.npy"] * 2
    assert list(frame["level"][:6]) == ["L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2", "T12/L1"]
    assert frame["pfirrmann_grade_pred"].between(1, 5).all()
    probs = frame[[f"pfirrmann_prob{k}" for k in range(5)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    for name in frame["overlay"]:
        picture = cv2.imread(str(out / name))
        # the slices and six task rows at full size, and a colour bar on the right (issue 18)
        assert picture is not None and picture.shape[0] == (1 + 6) * 112, name
        assert picture.shape[1] > 3 * 224, name
    assert frame["overlay"].iloc[0] == "2_t2_ivd1_hotspots.png"


def test_predict_input_forms(phantom_root, tmp_path):
    """A SPIDER root, its images/ folder, one series, an array file or a folder holding one."""
    by_root = collect_predict_inputs([phantom_root])
    assert len(by_root) == 18 and set(by_root["sequence"]) == {"t2", "t2_space"}  # T2 over T1
    by_images = collect_predict_inputs([phantom_root / "images"])
    pd.testing.assert_frame_equal(by_root, by_images)
    every = collect_predict_inputs([phantom_root], series="all")
    assert len(every) == 36 and "t1" in set(every["sequence"])
    one = collect_predict_inputs([phantom_root / "images" / "1_t1.mha"])
    assert list(one["ivd_label"]) == [1, 2, 3, 4, 5, 6] and set(one["sequence"]) == {"t1"}
    np.save(tmp_path / "volumes.npy", np.zeros((3, 112, 224, 9), np.float32))
    for item in (tmp_path / "volumes.npy", tmp_path):
        arrays = collect_predict_inputs([item])
        assert list(arrays["volume_index"]) == [0, 1, 2]
    both = collect_predict_inputs([phantom_root / "images" / "1_t1.mha", tmp_path, tmp_path])
    assert len(both) == 6 + 3  # duplicates removed


def test_resume_continues_the_run(trained, plain_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    before = pd.read_csv(run / "history.csv")
    spinenet.train(
        plain_data,
        run,
        preset="demo",
        seed=SEED,
        resume=True,
        verbose=0,
        **{**FAST, "epochs": FAST["epochs"] + 1, "tta": False},
    )
    after = pd.read_csv(run / "history.csv")
    assert len(after) == len(before) + 1
    pd.testing.assert_frame_equal(after.iloc[: len(before)][before.columns], before)


class TestSavedModel(TestCase):
    def test_round_trip_in_a_fresh_process(self, trained, tmp_path):
        model = load_model(trained["run"] / "model.keras")
        x = np.random.default_rng(0).random((2, 112, 224, 9)).astype("float32")
        self.run_model_saving_test(model, x, tmp_path, fresh_process_import="spinenet")


# ---------------------------------------------------------------------------- bad input


def _spider_copy(tmp_path, edit=None):
    folder = write_spider_sample(tmp_path / "in")
    if edit is not None:
        edit(folder)
    return folder


def _edit_csv(old, new):
    def edit(folder):
        path = folder / "radiological_gradings.csv"
        text = path.read_text(encoding="utf-8-sig")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return edit


def _corrupt_mask(folder):
    (folder / "masks" / "7_t2_SPACE.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nbroken")


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (_edit_csv(",Pfirrman grade", ",Grade"), ["radiological_gradings.csv", "Pfirrman grade"]),
        (_edit_csv("1,2,2,1,0,0,1,1,1,4", "1,2,2,1,0,0,1,1,1,7"), ["row 3", "Pfirrman grade"]),
        (_edit_csv("7,3,1,", "7,9,1,"), ["row 7", "IVD label", "disc 9"]),
        (_edit_csv("1,1,0,0,1,", "1,1,0,0,2,"), ["row 2", "LOW endplate"]),
        (_corrupt_mask, ["7_t2_SPACE.mha"]),
    ],
)
def test_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, edit, fragments):
    folder = _spider_copy(tmp_path, edit)
    run = tmp_path / "run"
    code = main(spinenet, ["train", "--data-dir", str(folder), "--out-dir", str(run)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not run.exists()


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        (["{tmp}/knee.png"], "knee.png"),
        (["{tmp}/absent"], "absent"),
        (["{tmp}/loose/3_t2.mha"], "3_t2.mha"),
        (["{tmp}/bad.npy"], "bad.npy"),
    ],
)
def test_cli_predict_bad_input_keeps_earlier_output(trained, tmp_path, capsys, inputs, fragment):
    cv2.imwrite(str(tmp_path / "knee.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "3_t2.mha").write_bytes(b"not read: no masks/ folder beside it")
    np.save(tmp_path / "bad.npy", np.zeros((2, 64, 64, 9), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("earlier results\n")
    args = ["predict", "--model", str(trained["run"] / "model.keras"), "--out-dir", str(out)]
    args += ["--input", *[i.format(tmp=tmp_path) for i in inputs], "--explain"]
    code = main(spinenet, args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert (out / "predictions.csv").read_text() == "earlier results\n"
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"]


def test_cli_refuses_a_run_folder_without_resume_and_a_missing_model(trained, tmp_path, capsys):
    args = ["train", "--data-dir", str(trained["data"]), "--out-dir", str(trained["run"])]
    assert main(spinenet, args) == 2
    assert "--resume" in capsys.readouterr().err
    args = ["evaluate", "--model", str(tmp_path / "absent.keras"), "--data-dir"]
    args += [str(trained["data"]), "--out-dir", str(tmp_path / "e")]
    assert main(spinenet, args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "absent.keras" in lines[0]
    assert not (tmp_path / "e").exists()
