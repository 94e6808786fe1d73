"""The shared command line on a stand-in package: dispatch, extra flags, exit codes, one-line errors."""

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.cli import main
from common.cli import model_summary
from common.errors import DataError
from common.inference import collect_image_paths
from common.phantoms import write_png
from common.training import check_run_dir


def _fake_package(calls):
    def build_model(preset="paper", **overrides):
        inputs = keras.Input((4,), name="image")
        return keras.Model(inputs, {"grade": keras.layers.Dense(3, name="grade")(inputs)})

    def write_phantom_dataset(root, *, num_subjects=5, seed=0, layout="a"):
        calls.append(("synthesize", num_subjects, seed, layout))
        return root

    def inspect_dataset(root):
        raise DataError("value 7 outside 0..5", path="train.csv", row=3, column="score")

    def train(data_dir, out_dir, **kwargs):
        calls.append(("train", kwargs))

    def evaluate(model, data_dir, out_dir, *, split="test"):
        raise FileNotFoundError(2, "No such file or directory", model)

    def predict(
        model, inputs, out_dir, *, explain=False, sex=None, link_uids=False, dicom_out=None
    ):
        calls.append(("predict", inputs, explain, sex))

    module = types.ModuleType("fakepkg", "Fake package for CLI tests.")
    module.__dict__.update(
        PRESETS={"paper": {}, "demo": {}},
        build_model=build_model,
        write_phantom_dataset=write_phantom_dataset,
        inspect_dataset=inspect_dataset,
        train=train,
        evaluate=evaluate,
        predict=predict,
        CLI_ARGUMENTS={
            "synthesize": [(("--layout",), {"default": "a"})],
            "predict": [(("--sex",), {"choices": ["M", "F"]})],
        },
    )
    return module


def test_dispatch_with_defaults_and_extra_flags(tmp_path):
    calls = []
    package = _fake_package(calls)
    assert main(package, ["synthesize", "--out-dir", str(tmp_path), "--layout", "b"]) == 0
    assert calls[-1] == ("synthesize", 5, 0, "b")
    assert (
        main(package, ["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "r")]) == 0
    )
    name, kwargs = calls[-1]
    # The CLI creates the tf.distribute strategy itself, before anything touches TensorFlow
    # (MultiWorkerMirroredStrategy must come first), and hands the package the object.
    strategy = kwargs.pop("strategy")
    assert isinstance(strategy, tf.distribute.Strategy)
    assert kwargs == {
        "preset": "demo",
        "epochs": None,
        "batch_size": None,
        "seed": 0,
        "resume": False,
        "weights": None,
    }
    assert (
        main(
            package,
            [
                "predict",
                "--model",
                "m.keras",
                "--input",
                "a.png",
                "b.png",
                "--out-dir",
                str(tmp_path),
                "--explain",
                "--sex",
                "F",
            ],
        )
        == 0
    )
    assert calls[-1] == ("predict", ["a.png", "b.png"], True, "F")


def test_data_error_is_one_line_naming_file_row_column(tmp_path, capsys):
    code = main(_fake_package([]), ["inspect", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train.csv: row 3, column 'score': value 7 outside 0..5" in err[0]


def test_missing_file_and_folder_are_exit_2(tmp_path, capsys):
    package = _fake_package([])
    assert (
        main(
            package,
            [
                "evaluate",
                "--model",
                "gone.keras",
                "--data-dir",
                str(tmp_path),
                "--out-dir",
                str(tmp_path),
            ],
        )
        == 2
    )
    assert "gone.keras" in capsys.readouterr().err
    assert main(package, ["train", "--data-dir", str(tmp_path / "nope"), "--out-dir", "x"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],
        ["summary", "--preset", "papr"],
        ["synthesize", "--out-dir", "x", "--num-subjects", "0"],
        [],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(_fake_package([]), argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_summary_json(capsys):
    assert main(_fake_package([]), ["summary", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {
        "preset": "paper",
        "params": 15,
        "trainable_params": 15,
        "inputs": {"image": [None, 4]},
        "outputs": {"grade": [None, 3]},
    }
    model = _fake_package([]).build_model()
    assert model_summary(model, "x")["params"] == model.count_params()


def test_collect_image_paths(tmp_path):
    image = np.zeros((4, 4), "float32")
    write_png(tmp_path / "a" / "one.png", image)
    write_png(tmp_path / "a" / "sub" / "two.png", image)
    (tmp_path / "a" / "._one.png").write_bytes(b"\x00\x05\x16\x07junk")
    (tmp_path / "a" / "notes.txt").write_text("x")
    found = collect_image_paths([tmp_path / "a"])
    assert [p.name for p in found] == ["one.png", "two.png"]
    assert collect_image_paths([tmp_path / "a" / "one.png"])[0].name == "one.png"
    (tmp_path / "empty").mkdir()
    for bad, fragment in [
        (tmp_path / "empty", "no image files"),
        (tmp_path / "a" / "notes.txt", "not an image"),
        (tmp_path / "missing.png", "no such file"),
    ]:
        with pytest.raises(DataError, match=fragment):
            collect_image_paths([bad])


def test_check_run_dir_refuses_to_overwrite_a_run(tmp_path):
    check_run_dir(tmp_path, resume=False)  # empty folder: fine
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "state.json").write_text("{}")
    with pytest.raises(DataError, match="--resume"):
        check_run_dir(tmp_path, resume=False)
    check_run_dir(tmp_path, resume=True)


def test_cli_help_rewords_a_shared_flag_and_rejects_an_unknown_one():
    from common.cli import build_parser

    package = _fake_package([])
    package.CLI_HELP = {"predict": {"--input": "a patient's four films (LH, RH, LF, RF)"}}
    predict = build_parser(package)._subparsers._group_actions[0].choices["predict"]
    assert "a patient's four films" in predict.format_help()
    assert "files or folders" not in predict.format_help()
    package.CLI_HELP = {"predict": {"--no-such-flag": "x"}}
    with pytest.raises(KeyError, match="no-such-flag"):
        build_parser(package)
