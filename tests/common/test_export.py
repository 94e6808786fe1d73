"""Atomic model saving, loading with registered objects, SavedModel export; reloads in a fresh process."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from common.export import export_saved_model
from common.export import load_model
from common.export import save_all
from common.export import save_model
from common.layers import AttentionBranch
from common.testing import subprocess_env


def _model():
    inputs = keras.Input((8, 6, 2), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    pooled, mask = AttentionBranch(filters=(4,), name="att0")(x)
    return keras.Model(
        inputs,
        {
            "grade": keras.layers.Dense(3, activation="softmax", name="grade")(pooled),
            "att0_mask": keras.layers.Identity(name="att0_mask")(mask),
        },
    )


def test_save_all_then_reload_in_fresh_process_and_savedmodel(tmp_path):
    model = _model()
    x = np.random.default_rng(0).normal(size=(2, 8, 6, 2)).astype("float32")
    expected = {k: np.asarray(v) for k, v in model(x).items()}
    paths = save_all(model, tmp_path)
    export_saved_model(model, tmp_path / "serving")
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "expected.npz", **expected)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["model.h5", "model.keras", "serving", "x.npy", "expected.npz"]
    )
    script = textwrap.dedent(
        f"""
        import numpy as np, tensorflow as tf
        from common.export import load_model
        x = np.load({str(tmp_path / "x.npy")!r}); expected = np.load({str(tmp_path / "expected.npz")!r})
        for path in {[paths["h5"], paths["keras"]]!r}:
            out = load_model(path)(x)
            for k in expected.files:
                np.testing.assert_allclose(np.asarray(out[k]), expected[k], atol=1e-6)
        serving = tf.saved_model.load({str(tmp_path / "serving")!r})  # keep a reference: its variables
        served = serving.serve(x)
        for k in expected.files:
            np.testing.assert_allclose(np.asarray(served[k]), expected[k], atol=1e-6)
        print("OK")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env()
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    model = _model()
    path = tmp_path / "model.keras"
    save_model(model, path)
    before = path.read_bytes()

    def broken_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "absent.keras")
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(ValueError, match="must end in"):
        load_model(tmp_path / "model.txt")
    with pytest.raises(ValueError, match="must end in"):
        save_model(_model(), tmp_path / "model.pb")


def test_safe_mode_refuses_lambda_layers(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    save_model(model, tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="(?i)safe"):
        load_model(tmp_path / "lambda.keras")
