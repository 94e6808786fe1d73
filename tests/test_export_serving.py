"""Self-describing exported models: the preprocessing in the graph, every format, the model card.

Each package's tiny untrained model is wrapped by `PKG.serving`; on the raw film (uint8 as
decoded, and float in [0, 1]) the wrapped model equals the package's `predict` on the same file.
The SavedModel reloads in a process that imports only TensorFlow and NumPy; ONNX runs in
onnxruntime; the `.keras` file carries the model card; `train` writes `RUN/saved_model/` and the
card through the CLI.
"""

import importlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from common.cli import main
from common.export import export_model
from common.export import export_serving_saved_model
from common.export import load_model
from common.export import save_all
from common.export import wrap_for_serving
from common.model_card import read_embedded_card
from common.testing import subprocess_env
from tests.serving.tiny import PACKAGES
from tests.serving.tiny import build_all


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "tiny_models"
    return build_all(str(root))


_PREDICTED = {}


def _cli_predictions(name, info, out_dir):
    """The package's `predict` on the tiny model's input: the per-item numbers it writes (once)."""
    key = (name, info["model"])
    if key not in _PREDICTED:
        _PREDICTED[key] = _run_cli_predict(name, info, out_dir)
    return _PREDICTED[key]


def _run_cli_predict(name, info, out_dir):
    package = importlib.import_module(name)
    if name == "deepra":  # stage 2 of predict: the crop (here the whole image) resized by cv2
        from deepra.data import extract_crops

        image = cv2.imread(info["input"], cv2.IMREAD_UNCHANGED)
        box = {"path": info["input"], "xmin": 0, "ymin": 0}
        box.update(xmax=image.shape[1] - 1, ymax=image.shape[0] - 1)
        network = load_model(info["model"])
        crops = extract_crops(pd.DataFrame([box]), network.input_shape[1:3], dtype=np.float32)
        out = network(crops)
        return np.array([[float(np.asarray(out[n])[0, 0]) for n in network.output_names]])
    kwargs = {"sex": "M"} if name == "boneage" else {"tta": False} if name == "spinenet" else {}
    package.predict(info["model"], [info["input"]], out_dir, verbose=0, **kwargs)
    if name == "kneeoa":
        frame = pd.read_csv(out_dir / "predictions.csv")
        return frame[[f"prob_kl{k}" for k in range(5)]].to_numpy()
    if name == "mura":
        return pd.read_csv(out_dir / "image_predictions.csv")[["probability"]].to_numpy()
    if name == "boneage":
        return pd.read_csv(out_dir / "predictions.csv")[["predicted_age_months"]].to_numpy()
    frame = pd.read_csv(out_dir / "predictions.csv")
    tasks = load_model(info["model"]).output_names
    columns = [c for t in tasks for c in frame.columns if c.startswith(f"{t}_prob")]
    return frame[columns].to_numpy()


def _served(name, serving, raw, extras):
    """The wrapped model's numbers in the same layout as `_cli_predictions`."""
    inputs = raw[None] if raw.ndim == 2 else raw
    if extras:
        inputs = {"image": inputs, "sex": np.ones((len(inputs), 1), np.float32)}
    out = {k: np.asarray(v) for k, v in serving(inputs).items()}
    if name == "kneeoa":
        return out[serving.metadata["test_branch"]]
    if name in ("mura", "boneage"):
        return next(iter(out.values())).reshape(-1, 1)
    network = serving.network
    if name == "deepra":
        return np.concatenate([out[n].reshape(-1, 1) for n in network.output_names], axis=1)
    return np.concatenate([out[t] for t in serving.metadata["tasks"]], axis=1)


def _raw(info):
    if info["input"].endswith(".npy"):
        return np.load(info["input"])
    return cv2.imread(info["input"], cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("name", PACKAGES)
def test_wrapped_model_on_raw_film_equals_cli_predict(tiny, tmp_path, name):
    info = tiny[name]
    package = importlib.import_module(name)
    expected = _cli_predictions(name, info, tmp_path / "predict")
    serving = wrap_for_serving(package, load_model(info["model"]), info["model"])
    raw = _raw(info)
    got = _served(name, serving, raw, info["extras"])
    tolerance = 2e-3 if name == "boneage" else 1e-4  # predictions.csv rounds ages to 1e-3 months
    np.testing.assert_allclose(got, expected, atol=tolerance)
    if raw.dtype == np.uint8:  # the same film as float in [0, 1] gives the same answer
        floats = _served(name, serving, raw.astype(np.float32) / 255.0, info["extras"])
        np.testing.assert_allclose(floats, got, atol=1e-5)
    if name == "kneeoa":  # control: without its equalisation layer the answer differs
        from common.serving_layers import ServingModel

        layers = [p for p in serving.preprocessing if p.name != "equalize"]
        unequalised = ServingModel(serving.network, layers, metadata=serving.metadata)
        differs = _served(name, unequalised, raw, info["extras"])
        assert np.abs(differs - expected).max() > 3e-4  # 3x the tolerance (seeded weights)


def test_saved_models_in_a_process_without_the_suite(tiny, tmp_path):
    """`tf.saved_model.load(dir).serve(x)` equals the Keras serving model within 1e-4, per package."""
    cases = {}
    for name in PACKAGES:
        info = tiny[name]
        package = importlib.import_module(name)
        serving = wrap_for_serving(package, load_model(info["model"]), info["model"])
        if name == "kneeoa":  # the CLI's export: the three signatures
            path = export_model(package, info["model"], tmp_path / name, "saved_model")
        else:  # the signature `train` writes (each signature traces the network once more)
            path = export_serving_saved_model(serving, tmp_path / name / "saved_model", ("serve",))
        raw = _raw(info)
        x = (raw[None, ..., None] if raw.ndim == 2 else raw).astype(np.float32)
        if x.max() > 1:
            x = x / 255.0
        inputs = {"image": x}
        if info["extras"]:
            inputs["sex"] = np.ones((len(x), 1), np.float32)
        expected = {k: np.asarray(v) for k, v in serving(inputs if info["extras"] else x).items()}
        np.savez(tmp_path / f"{name}_in.npz", **inputs)
        np.savez(tmp_path / f"{name}_out.npz", **expected)
        cases[name] = path
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, tensorflow as tf
        for name, path in {cases!r}.items():
            inputs = dict(np.load({str(tmp_path)!r} + f"/{{name}}_in.npz"))
            expected = np.load({str(tmp_path)!r} + f"/{{name}}_out.npz")
            loaded = tf.saved_model.load(path)
            args = inputs if len(inputs) > 1 else inputs["image"]
            out = loaded.serve(args)
            for key in expected.files:
                np.testing.assert_allclose(np.asarray(out[key]), expected[key], atol=1e-4)
            if name == "kneeoa":  # the uint8 signature scales the film itself
                out8 = loaded.serve_uint8(np.round(args * 255).astype(np.uint8))
                for key in expected.files:
                    np.testing.assert_allclose(np.asarray(out8[key]), expected[key], atol=1e-4)
        assert not any(m.split(".")[0] in {PACKAGES + ("common",)!r} for m in sys.modules)
        print("OK", len({cases!r}))
        """
    )
    env = subprocess_env()
    env["PYTHONPATH"] = ""  # the suite cannot be imported there
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0 and "OK 5" in proc.stdout, proc.stderr[-3000:]


def test_onnx_equals_keras(tiny, tmp_path):
    import onnxruntime

    info = tiny["mura"]
    package = importlib.import_module("mura")
    path = export_model(package, info["model"], tmp_path, "onnx")
    network = load_model(info["model"])
    x = np.random.default_rng(0).uniform(0, 1, (2, *network.input_shape[1:])).astype(np.float32)
    session = onnxruntime.InferenceSession(path)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, np.asarray(network(x)["abnormal"]), atol=1e-4)
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert "ONNX holds the trained network alone" in card["onnx"]


@pytest.mark.parametrize(("fmt", "name"), [("keras", "kneeoa"), ("h5", "mura")])
def test_export_cli_keras_and_h5_reload_and_carry_the_card(tiny, tmp_path, fmt, name):
    info = tiny[name]
    package = importlib.import_module(name)
    out = tmp_path / "exported"
    args = ["export", "--model", info["model"], "--out-dir", str(out), "--format", fmt]
    assert main(package, args) == 0
    reloaded = load_model(out / f"model.{fmt}")
    raw = _raw(info)
    inputs = (
        {"image": raw[None], "sex": np.ones((1, 1), np.float32)} if info["extras"] else raw[None]
    )
    serving = wrap_for_serving(package, load_model(info["model"]), info["model"])
    for key, value in serving(inputs).items():
        np.testing.assert_allclose(np.asarray(reloaded(inputs)[key]), np.asarray(value), atol=1e-5)
    assert reloaded.metadata["model_card"]["package"] == name
    assert json.loads((out / "model_card.json").read_text())["package"] == name
    if fmt == "keras":
        card = read_embedded_card(out / "model.keras")
        assert card["intended_use"] == "research use only; not a medical device"
        # an exported model exports again without being wrapped twice
        again = export_model(package, out / "model.keras", tmp_path / "b", "keras")
        assert len(load_model(again).preprocessing) == len(serving.preprocessing) == 3


def test_export_errors_are_one_line(tiny, tmp_path, capsys):
    package = importlib.import_module("kneeoa")
    with pytest.raises(SystemExit) as exit_info:
        main(
            package,
            [
                "export",
                "--model",
                tiny["kneeoa"]["model"],
                "--out-dir",
                str(tmp_path),
                "--format",
                "tflite",
            ],
        )
    assert exit_info.value.code == 2
    assert (
        main(
            package,
            [
                "export",
                "--model",
                str(tmp_path / "absent.keras"),
                "--out-dir",
                str(tmp_path),
                "--format",
                "keras",
            ],
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "absent.keras" in err[-1] and "Traceback" not in err[-1]


def test_deepra_detector_exports_as_saved_model_not_onnx(tmp_path, capsys):
    """The keras-hub detector exports as it is (raw box and class heads); ONNX fails in one line."""
    import tensorflow as tf

    deepra = importlib.import_module("deepra")
    save_all(deepra.build_model("demo-hand"), tmp_path, stem="detector-hand")
    model = str(tmp_path / "detector-hand.keras")
    args = ["export", "--model", model, "--out-dir", str(tmp_path / "out"), "--format"]
    assert main(deepra, [*args, "saved_model"]) == 0
    detector = load_model(model)
    x = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    loaded = tf.saved_model.load(str(tmp_path / "out" / "saved_model"))  # keep: its variables
    served = loaded.serve(x)
    for key, value in detector(x).items():
        np.testing.assert_allclose(np.asarray(served[key]), np.asarray(value), atol=1e-4)
    capsys.readouterr()
    assert main(deepra, [*args, "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "detector cannot be exported to ONNX" in err[0], err
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_train_writes_saved_model_and_cards(tmp_path, monkeypatch, capsys):
    """`train` through the CLI ends with RUN/saved_model/, model_card.json/.md and the card inside .keras."""
    kneeoa = importlib.import_module("kneeoa")
    data = tmp_path / "data"
    kneeoa.write_phantom_dataset(data, num_subjects=2, seed=0, layout="folders")
    run = tmp_path / "run"

    def fake_train(data_dir, out_dir, **kwargs):  # the package's training is tested elsewhere
        model = kneeoa.build_model("demo", image_size_hw=(48, 32), trunk_filters=(4, 4, 4, 4))
        os.makedirs(out_dir, exist_ok=True)
        config = {
            "preset": "demo",
            "data_dir": str(data_dir),
            "split_counts": {"train": 3},
            "image_size_hw": [48, 32],
        }
        (run / "config.json").write_text(json.dumps(config))
        metrics = {
            "accuracy": 0.5,
            "kappa_quadratic": 0.1,
            "ci": {"accuracy": [0.4, 0.6]},
            "oracle": {"accuracy": 0.9},
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
        save_all(model, out_dir)
        return metrics

    monkeypatch.setattr(kneeoa, "train", fake_train)
    assert main(kneeoa, ["train", "--data-dir", str(data), "--out-dir", str(run)]) == 0
    card = json.loads((run / "model_card.json").read_text())
    assert card["metrics"]["accuracy"] == {"value": 0.5, "ci95": [0.4, 0.6]}
    assert card["metrics"]["oracle"] == {"accuracy": 0.9}
    assert card["training_data"]["kind"] == "phantom"
    assert card["training_data"]["inspect"]["source"] == "folders"
    assert card["versions"]["keras"] == keras.__version__
    assert "not a medical device" in (run / "model_card.md").read_text()
    assert read_embedded_card(run / "model.keras")["metrics"] == card["metrics"]
    assert "model_card.json" in zipfile.ZipFile(run / "model.keras").namelist()
    load_model(run / "model.keras")  # still a valid Keras archive
    assert (run / "saved_model" / "saved_model.pb").is_file()
    assert not [p for p in os.listdir(run) if ".tmp" in p]


def test_only_the_chief_finishes_a_multi_worker_run(monkeypatch, tmp_path):
    from common.export import finish_run

    (tmp_path / "model.keras").write_bytes(b"not read on a non-chief worker")
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    )
    assert finish_run(importlib.import_module("kneeoa"), tmp_path) is None
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    )
    with pytest.raises(ValueError):  # the chief reads the (here broken) model file
        finish_run(importlib.import_module("kneeoa"), tmp_path)
