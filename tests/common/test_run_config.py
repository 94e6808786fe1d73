"""The one reader of the `config.json` saved beside a model, and the packages that read through it."""

import importlib

import numpy as np
import pytest

from common.errors import DataError
from common.run_config import read_config_file
from common.run_config import read_run_config
from common.run_config import write_config


def test_written_config_reads_back_beside_the_model(tmp_path):
    config = {"preset": "demo", "seed": np.int64(3), "input_shape": (8, 8, 1), "tta": True}
    write_config(tmp_path, config, echo=False)
    got = read_run_config(tmp_path / "model.keras")
    assert got == {"preset": "demo", "seed": 3, "input_shape": [8, 8, 1], "tta": True}
    assert read_run_config(tmp_path / "model.h5") == got


def test_missing_file(tmp_path):
    assert read_run_config(tmp_path / "model.h5") == {}
    assert read_run_config(None) == {}
    with pytest.raises(DataError) as caught:
        read_run_config(tmp_path / "model.h5", required=True)
    assert caught.value.path == str(tmp_path / "config.json")


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"preset": "demo",', "unreadable run configuration: Expecting"),
        ('["demo"]', "a JSON object was expected, not list"),
        (b"\xff\xfe{}", "unreadable run configuration"),  # not UTF-8
    ],
)
def test_bad_json_names_the_file(tmp_path, text, reason):
    path = tmp_path / "config.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    for read in (lambda: read_run_config(tmp_path / "model.keras"), lambda: read_config_file(path)):
        with pytest.raises(DataError, match=reason) as caught:
            read()
        assert caught.value.path == str(path)
        assert str(caught.value).startswith(f"{path}: ")


# Each package's reader of a model's run configuration, called as evaluate calls it. A bad
# config.json is found before the model is looked at, so no model is built here.
READERS = [
    ("kneeoa.evaluate", lambda module, model_path: module.model_config(None, model_path)),
    ("spinenet.evaluate", lambda module, model_path: module.model_config(None, model_path)),
    ("mura.evaluate", lambda module, model_path: module.model_config(None, model_path)),
    ("boneage.evaluate", lambda module, model_path: module.read_run_config(model_path)),
    ("deepra.pipeline", lambda module, model_path: module.read_pipeline_config(model_path.parent)),
]


@pytest.mark.parametrize("module_name, read", READERS, ids=[r[0] for r in READERS])
def test_packages_name_a_bad_config(tmp_path, module_name, read):
    module = importlib.import_module(module_name)
    path = tmp_path / "config.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="unreadable run configuration") as caught:
        read(module, tmp_path / "model.keras")
    assert caught.value.path == str(path)


def test_deepra_needs_its_own_run_config(tmp_path):
    from deepra.pipeline import read_pipeline_config

    with pytest.raises(DataError, match="no config.json beside the model"):
        read_pipeline_config(tmp_path)
    write_config(tmp_path, {"package": "kneeoa"}, echo=False)
    with pytest.raises(DataError, match="not a deepra pipeline run's"):
        read_pipeline_config(tmp_path)
    write_config(tmp_path, {"package": "deepra", "models": ["detector-hand"]}, echo=False)
    assert read_pipeline_config(tmp_path)["models"] == ["detector-hand"]
