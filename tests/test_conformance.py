"""One contract, five packages (timm-style conformance): the same names, signatures, CLI and files.

Parametrised over the packages present in the repository; each must keep CONTRACT.md.
"""

import importlib
import inspect
import json
import os

import numpy as np
import pytest

from common.cli import SUBCOMMANDS
from common.cli import build_parser
from common.export import load_model
from common.export import save_model
from common.testing import REPO_ROOT
from common.testing import run_module
from common.verify import INSPECT_FILE_KEYS

# Every package of CONTRACT.md, named explicitly: one that loses a file fails here, never drops out.
PACKAGES = ("kneeoa", "deepra", "spinenet", "boneage", "mura")

# CONTRACT.md, "inspect JSON, per package"
INSPECT_KEYS = {
    "kneeoa": [{"source", "knees", "kl_counts"}, {"source", "splits", "kl_counts"}],
    "deepra": [
        {
            "patients",
            "films",
            "erosion_columns",
            "narrowing_columns",
            "overall_tol_sum",
            "max_foot_erosion",
        }
    ],
    "spinenet": [{"patients", "discs", "series", "modic_counts", "pfirrmann_counts"}],
    "boneage": None,  # one entry per split present, checked below
    "mura": [{"train", "valid"}],
}

API = (
    "PRESETS",
    "build_model",
    "write_phantom_dataset",
    "inspect_dataset",
    "train",
    "evaluate",
    "predict",
)
TRAIN_KEYWORDS = ("preset", "epochs", "batch_size", "seed", "strategy", "resume", "weights")


@pytest.mark.parametrize("name", PACKAGES)
def test_every_package_has_its_entry_point(name):
    assert os.path.isfile(os.path.join(REPO_ROOT, name, "__main__.py")), name


@pytest.fixture(scope="module", params=PACKAGES)
def package(request):
    return importlib.import_module(request.param)


def test_public_api_and_signatures(package):
    for name in API:
        assert hasattr(package, name), f"{package.__name__}.{name} is missing"
    assert {"paper", "demo"} <= set(package.PRESETS)
    build = inspect.signature(package.build_model)
    assert list(build.parameters)[0] == "preset"
    assert build.parameters["preset"].default == "paper"
    assert any(p.kind is p.VAR_KEYWORD for p in build.parameters.values())
    phantom = inspect.signature(package.write_phantom_dataset)
    assert list(phantom.parameters)[0] == "root"
    for name in ("num_subjects", "seed"):
        assert phantom.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert phantom.parameters["seed"].default == 0
    train = inspect.signature(package.train)
    assert list(train.parameters)[:2] == ["data_dir", "out_dir"]
    for name in TRAIN_KEYWORDS:
        assert name in train.parameters, f"train() has no '{name}'"
    assert train.parameters["preset"].default == "demo"
    assert list(inspect.signature(package.evaluate).parameters)[:3] == [
        "model",
        "data_dir",
        "out_dir",
    ]
    predict = inspect.signature(package.predict)
    assert list(predict.parameters)[:3] == ["model", "inputs", "out_dir"]
    assert "explain" in predict.parameters


def test_cli_help_lists_every_subcommand(package, capsys):
    parser = build_parser(package)
    assert set(parser._subparsers._group_actions[0].choices) == set(SUBCOMMANDS)
    for command in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["train", "--data-dir", "x", "--out-dir", "y", "--preset", "no-such"])
    assert exit_info.value.code == 2


def test_phantoms_read_back_and_inspect_prints_one_json_object(package, tmp_path):
    root = package.write_phantom_dataset(tmp_path / "data", num_subjects=6, seed=3)
    root = root or tmp_path / "data"
    code, out, err = run_module(package.__name__, "inspect", "--data-dir", tmp_path / "data")
    assert code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    summary = json.loads(lines[0])
    files = {key: summary.pop(key) for key in INSPECT_FILE_KEYS}  # added by `inspect` itself
    assert files["unreadable"] == 0 and files["missing"] == 0, files
    assert summary == json.loads(json.dumps(package.inspect_dataset(tmp_path / "data")))
    expected = INSPECT_KEYS[package.__name__]
    if expected is None:  # boneage: {split: {...}}
        assert summary and set(summary) <= {"train", "validation", "test"}
        assert {"images", "males"} <= set(next(iter(summary.values())))
    else:
        assert any(set(summary) == keys for keys in expected), sorted(summary)
    code, out, err = run_module(package.__name__, "inspect", "--data-dir", tmp_path / "absent")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "absent" in err


def test_demo_model_round_trip_h5_and_keras(package, tmp_path):
    model = package.build_model("demo")
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in model.inputs:
        shape = [2 if d is None else int(d) for d in tensor.shape]
        inputs[tensor.name.split(":")[0]] = rng.uniform(size=shape).astype("float32")
    if len(inputs) == 1:
        inputs = next(iter(inputs.values()))
    expected = model(inputs, training=False)
    for suffix in (".h5", ".keras"):
        path = tmp_path / f"model{suffix}"
        save_model(model, path)
        out = load_model(path)(inputs, training=False)
        flat_a = [np.asarray(v) for v in (out.values() if isinstance(out, dict) else [out])]
        flat_e = [
            np.asarray(v) for v in (expected.values() if isinstance(expected, dict) else [expected])
        ]
        for a, e in zip(flat_a, flat_e, strict=True):
            np.testing.assert_allclose(a, e, atol=1e-5)
