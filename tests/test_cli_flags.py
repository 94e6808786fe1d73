"""The shared command line (issue 18): the same flags on the same subcommands in all five packages,
defaults in every `--help`, preset aliases, `--set`, progress lines, the configuration log and the
wrong-package message. Cheap: a recording fake package for the routing, argparse for the rest."""

import argparse
import importlib
import inspect
import io
import json
import types
import zipfile

import h5py
import pytest

from common import cli
from common.options import look_up_option
from common.progress import progress

PACKAGES = ("kneeoa", "deepra", "spinenet", "boneage", "mura")


def _fake_package():
    """A package module whose API functions record their keyword arguments."""
    calls = {}
    module = types.ModuleType("fakepkg")
    module.__doc__ = "A fake package."
    module.PRESETS = {"demo": {}, "paper": {}, "modified_1": {}, "paper-branch-fc6": {}}

    def recorder(name):
        def record(*args, **kwargs):
            calls[name] = kwargs
            return {}

        return record

    for name in ("train", "evaluate", "predict", "inspect_dataset", "build_model"):
        setattr(module, name, recorder(name))

    def write_phantom_dataset(root, *, num_subjects=37, seed=0):
        calls["synthesize"] = {"root": root, "num_subjects": num_subjects, "seed": seed}

    module.write_phantom_dataset = write_phantom_dataset
    return module, calls


def test_set_reaches_train_as_overrides_with_json_values(tmp_path):
    package, calls = _fake_package()
    argv = ["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")]
    argv += ["--set", "learning_rate=1e-4", "--set", "image-size-hw=[96, 80]", "--set", "a=text"]
    assert cli.main(package, argv) == 0
    got = calls["train"]
    assert got["learning_rate"] == 1e-4 and got["image_size_hw"] == [96, 80] and got["a"] == "text"


@pytest.mark.parametrize(
    "item,expected",
    [("epochs=3", "use the --epochs flag"), ("novalue", "expects KEY=VALUE"), ("=1", "KEY=VALUE")],
)
def test_set_refuses_flags_and_malformed_items(tmp_path, capsys, item, expected):
    package, calls = _fake_package()
    argv = ["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")]
    assert cli.main(package, [*argv, "--set", item]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert "train" not in calls


@pytest.mark.parametrize("name", ["kneeoa", "spinenet"])
def test_set_unknown_key_is_one_line_naming_it(tmp_path, capsys, name):
    package = importlib.import_module(name)
    argv = ["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")]
    assert cli.main(package, [*argv, "--set", "no_such_key=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_key" in err[0] and "Available" in err[0]


def test_batch_size_and_split_reach_evaluate_and_predict(tmp_path):
    package, calls = _fake_package()
    model = str(tmp_path / "m.keras")
    common = ["--model", model, "--out-dir", str(tmp_path / "o")]
    assert cli.main(package, ["evaluate", *common, "--data-dir", "d", "--batch-size", "4"]) == 0
    assert calls["evaluate"]["batch_size"] == 4 and calls["evaluate"]["split"] == "test"
    assert cli.main(package, ["evaluate", *common, "--data-dir", "d", "--split", "val"]) == 0
    assert calls["evaluate"]["split"] == "val" and "batch_size" not in calls["evaluate"]
    assert cli.main(package, ["predict", *common, "--input", "x.png", "--batch-size", "3"]) == 0
    got = calls["predict"]
    assert got["batch_size"] == 3 and got["link_uids"] is False and got["dicom_out"] is None
    assert got["explain"] is False
    argv = ["predict", *common, "--input", "x.dcm", "--link-uids", "--dicom-out", "D"]
    assert cli.main(package, argv) == 0
    got = calls["predict"]
    assert got["link_uids"] is True and got["dicom_out"] == "D" and got["explain"] is True


@pytest.mark.parametrize("name", PACKAGES)
def test_every_package_takes_the_shared_flags(name):
    package = importlib.import_module(name)
    parser = cli.build_parser(package)
    flags = {
        command: {f for a in sub._actions for f in a.option_strings}
        for command, sub in parser._subparsers._group_actions[0].choices.items()
    }
    assert "--set" in flags["train"]
    assert {"--batch-size", "--split"} <= flags["evaluate"]
    assert {"--batch-size", "--link-uids", "--dicom-out", "--explain"} <= flags["predict"]
    evaluate = inspect.signature(package.evaluate).parameters
    predict = inspect.signature(package.predict).parameters
    assert {"split", "batch_size"} <= set(evaluate)
    assert {"batch_size", "link_uids", "dicom_out"} <= set(predict)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_default_is_shown_in_help(name):
    package = importlib.import_module(name)
    parser = cli.build_parser(package)
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            default = action.default
            if not action.option_strings or default in (None, False, argparse.SUPPRESS):
                continue
            assert f"{action.option_strings[-1]}" in text
            help_text = " ".join(sub._get_formatter()._expand_help(action).split())
            assert "default" in help_text, (command, action.option_strings, help_text)
    synthesize = parser._subparsers._group_actions[0].choices["synthesize"].format_help()
    expected = inspect.signature(package.write_phantom_dataset).parameters["num_subjects"].default
    assert f"(default: {expected})" in " ".join(synthesize.split())


def test_num_subjects_default_is_the_packages_own():
    package, _ = _fake_package()
    parser = cli.build_parser(package)
    text = parser._subparsers._group_actions[0].choices["synthesize"].format_help()
    assert "(default: 37)" in " ".join(text.split())


def test_presets_are_hyphenated_and_underscore_names_are_aliases(tmp_path, capsys):
    package, calls = _fake_package()
    parser = cli.build_parser(package)
    train = parser._subparsers._group_actions[0].choices["train"]
    assert "{demo,modified-1,paper,paper-branch-fc6}" in train.format_help()
    base = ["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")]
    for given, key in [
        ("modified-1", "modified_1"),
        ("modified_1", "modified_1"),
        ("paper_branch_fc6", "paper-branch-fc6"),
    ]:
        assert cli.main(package, [*base, "--preset", given]) == 0
        assert calls["train"]["preset"] == key
    with pytest.raises(SystemExit) as info:
        cli.main(package, [*base, "--preset", "modifed-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'modified-1'" in err[0]


@pytest.mark.parametrize(
    "name,alias", [("boneage", "modified_1"), ("spinenet", "paper_branch_fc6")]
)
def test_real_packages_resolve_underscore_presets(name, alias):
    package = importlib.import_module(name)
    assert "_" not in "".join(cli.build_parser(package).format_help().split("{")[1:2])
    key = look_up_option(alias.replace("_", "-"), package.PRESETS)
    assert look_up_option(alias, package.PRESETS) == key


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    assert list(progress(range(50), desc="inspect", unit="files", stream=stream)) == list(range(50))
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert 5 <= len(lines) <= 11 and lines[-1].startswith("inspect: 50/50 files (100%)")
    # The control: on a terminal the same call draws tqdm's bar, with carriage returns.
    tty = _FakeTTY()
    list(progress(range(50), desc="inspect", unit="files", stream=tty))
    assert "\r" in tty.getvalue()
    quiet = io.StringIO()
    list(progress(range(50), desc="inspect", stream=quiet, enabled=False))
    assert quiet.getvalue() == ""


def test_configuration_dump_goes_to_the_log(tmp_path, capsys):
    config = {f"key_{i}": i for i in range(50)}
    cli.write_config(tmp_path, config)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "config.json" in out[0] and cli.TRAIN_LOG in out[0]
    log = (tmp_path / cli.TRAIN_LOG).read_text()
    assert '"key_49": 49' in log
    assert json.loads((tmp_path / "config.json").read_text()) == config


def _keras_file(path, name):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "config.json",
            json.dumps(
                {
                    "class_name": "Functional",
                    "config": {
                        "name": name,
                        "layers": [{"registered_name": "common>AttentionBranch"}],
                    },
                }
            ),
        )
    return path


def test_model_package_reads_the_saved_config(tmp_path):
    assert cli.model_package(_keras_file(tmp_path / "a.keras", "kneeoa_demo")) == "kneeoa"
    assert cli.model_package(_keras_file(tmp_path / "b.keras", "my_model")) is None
    with h5py.File(tmp_path / "c.h5", "w") as handle:
        config = {"config": {"name": "x", "layers": [{"registered_name": "spinenet>Scale"}]}}
        handle.attrs["model_config"] = json.dumps(config)
    assert cli.model_package(tmp_path / "c.h5") == "spinenet"
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    assert cli.model_package(tmp_path / "junk.keras") is None


def test_wrong_package_model_is_refused_in_one_line(tmp_path, capsys):
    package, calls = _fake_package()
    model = _keras_file(tmp_path / "model.keras", "boneage_demo")
    argv = ["predict", "--model", str(model), "--input", "x", "--out-dir", str(tmp_path / "o")]
    assert cli.main(package, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a boneage model, not a fakepkg one" in err[0]
    assert "predict" not in calls
