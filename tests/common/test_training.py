"""The training engine under the default, mirrored and multi-worker strategies, and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from common.callbacks import callback_preset
from common.testing import free_ports
from common.testing import subprocess_env
from common.training import Trainer
from deepra.presets import CALLBACK_PRESETS as DEEPRA_CALLBACKS
from kneeoa.presets import CALLBACK_PRESETS as KNEEOA_CALLBACKS

KNEE = KNEEOA_CALLBACKS["knee"]
RA = DEEPRA_CALLBACKS["ra"]
SCRIPT = os.path.join(os.path.dirname(__file__), "engine_script.py")


def _run(mode, out, run_dir="-", epochs=4, sleep=0.0, env=None, timeout=300, steps=4):
    """Runs engine_script.py; `steps` per compiled call (4: a chunk of 4 and a short one of 2)."""
    return subprocess.run(
        [sys.executable, SCRIPT, mode, str(out), str(run_dir), str(epochs), str(sleep), str(steps)],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        timeout=timeout,
    )


def _weights(path):
    data = np.load(path)
    return [data[k] for k in data.files if k.startswith("arr_")], data


_free_ports = free_ports


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One default-strategy run (4 epochs, 4 steps per call), shared by the equality tests."""
    path = tmp_path_factory.mktemp("default") / "default.npz"
    default = _run("default", path)
    assert default.returncode == 0, default.stderr[-2000:]
    return path


def test_mirrored_two_replicas_equals_default_for_same_global_batch(tmp_path, default_run):
    mirrored = _run("mirrored", tmp_path / "mirrored.npz")
    assert mirrored.returncode == 0, mirrored.stderr[-2000:]
    w_default, d = _weights(default_run)
    w_mirrored, m = _weights(tmp_path / "mirrored.npz")
    assert int(d["replicas"]) == 1 and int(m["replicas"]) == 2
    for a, b in zip(w_default, w_mirrored, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(d["loss"], m["loss"], rtol=1e-5)
    assert d["loss"][-1] < d["loss"][0]
    # (4 steps per call train as 1 per call: tests/common/test_engine.py, in process)


def test_mirrored_float16_scales_the_loss_and_follows_float32(tmp_path, default_run):
    run = _run(
        "mirrored", tmp_path / "m16.npz", env=subprocess_env(ENGINE_PRECISION="mixed_float16")
    )
    assert run.returncode == 0, run.stderr[-2000:]
    _, m16 = _weights(tmp_path / "m16.npz")
    _, d32 = _weights(default_run)
    assert int(m16["replicas"]) == 2 and bool(m16["loss_scaled"])
    assert not bool(d32["loss_scaled"])
    assert np.all(np.isfinite(m16["loss"]))
    np.testing.assert_allclose(m16["loss"], d32["loss"], rtol=2e-2)


@pytest.mark.multiworker
def test_two_workers_on_localhost_train_to_identical_weights(tmp_path, default_run):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = subprocess_env(
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    SCRIPT,
                    "multi-worker",
                    str(tmp_path / f"w{index}.npz"),
                    str(tmp_path / "run"),
                    "4",
                    "0",
                    "4",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    w0, d0 = _weights(tmp_path / "w0.npz")
    w1, d1 = _weights(tmp_path / "w1.npz")
    assert int(d0["replicas"]) == 2
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert d0["loss"][-1] < d0["loss"][0], d0["loss"]
    # only the chief wrote the run folder, with one history row per epoch
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2, 3]
    # the same number of replicas and identical losses as one process with the same global batch
    _, d = _weights(default_run)
    np.testing.assert_allclose(d0["loss"], d["loss"], rtol=1e-4)


def test_sigkill_mid_epoch_then_resume_keeps_history(tmp_path):
    run_dir = tmp_path / "run"
    epochs = 5
    proc = subprocess.Popen(
        [
            sys.executable,
            SCRIPT,
            "default",
            str(tmp_path / "killed.npz"),
            str(run_dir),
            str(epochs),
            "0.15",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    state = run_dir / "checkpoints" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    time.sleep(0.4)  # well inside the next epoch (6 steps x 0.15 s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = json.loads(state.read_text())["epoch"] + 1
    assert 2 <= done_before < epochs
    resumed = _run("resume", tmp_path / "resumed.npz", run_dir, epochs)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _, data = _weights(tmp_path / "resumed.npz")
    assert list(data["epochs"]) == list(range(epochs))
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == list(range(epochs))
    # the resumed run is the uninterrupted one: same weights as a straight run of `epochs`
    straight = _run("default", tmp_path / "straight.npz", tmp_path / "straight", epochs)
    assert straight.returncode == 0, straight.stderr[-2000:]
    w_resumed, _ = _weights(tmp_path / "resumed.npz")
    w_straight, s = _weights(tmp_path / "straight.npz")
    np.testing.assert_allclose(data["loss"], s["loss"], rtol=1e-5)
    for a, b in zip(w_resumed, w_straight, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not list((run_dir / "checkpoints").glob("*.tmp*"))


def _tiny_model():
    inputs = keras.Input((4,), name="x")
    return keras.Model(inputs, {"y": keras.layers.Dense(1, name="y")(inputs)})


def _tiny_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [0.0]], "float32")
    return x, y


def test_loss_is_weighted_mean_over_examples_with_sample_weights():
    x, y = _tiny_data()
    weights = np.linspace(0, 2, len(x)).astype("float32")
    trainer = Trainer(
        _tiny_model, losses={"y": "mse"}, optimizer=lambda: keras.optimizers.SGD(0.0), verbose=0
    )
    ds = tf.data.Dataset.from_tensor_slices((x, {"y": y}, weights)).batch(10)
    logs = trainer.evaluate(ds)
    prediction = np.asarray(trainer.model(x)["y"])
    expected = np.mean(((prediction - y) ** 2)[:, 0] * weights)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    history = trainer.fit(ds, epochs=1)
    np.testing.assert_allclose(history[0]["loss"], expected, rtol=1e-5)  # lr 0: weights unchanged


def test_callbacks_reduce_lr_and_stop_early(tmp_path):
    x, y = _tiny_data()
    ds = tf.data.Dataset.from_tensor_slices((x, {"y": y})).batch(8)
    # validation targets opposite to the training ones: the better the fit, the worse val_loss
    val = tf.data.Dataset.from_tensor_slices((x, {"y": -y})).batch(8)
    trainer = Trainer(
        _tiny_model,
        losses={"y": "mse"},
        optimizer=lambda: keras.optimizers.SGD(0.05),
        run_dir=tmp_path,
        callbacks=lambda d: callback_preset(KNEE, d),
        verbose=0,
    )
    history = trainer.fit(ds, val, epochs=30)
    assert len(history) < 30, "early stopping never fired"
    lrs = [row["lr"] for row in history]
    assert min(lrs) < lrs[0], "ReduceLROnPlateau never fired"
    assert (tmp_path / "checkpoints" / "best.weights.h5").exists()
    assert (tmp_path / "checkpoints" / "last.weights.h5").exists()
    assert len(pd.read_csv(tmp_path / "history.csv")) == len(history)


def test_val_metrics_are_logged_and_monitorable():
    x, y = _tiny_data()
    ds = tf.data.Dataset.from_tensor_slices((x, {"y": y})).batch(8)

    def rmse(targets, predictions):
        return {"rmse": float(np.sqrt(np.mean((targets["y"] - predictions["y"]) ** 2)))}

    trainer = Trainer(
        _tiny_model,
        losses={"y": "mse"},
        optimizer=lambda: keras.optimizers.SGD(0.05),
        val_metrics=rmse,
        callbacks=callback_preset(RA),
        verbose=0,
    )
    history = trainer.fit(ds, ds, epochs=3)
    np.testing.assert_allclose(history[-1]["val_rmse"] ** 2, history[-1]["val_loss"], rtol=1e-4)
    assert history[-1]["val_rmse"] < history[0]["val_rmse"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"losses": "mse", "loss_weights": {"z": 1.0}}, "without a loss"),
        ({"losses": {"z": "mse"}}, "unknown outputs"),
    ],
)
def test_bad_configuration_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Trainer(_tiny_model, verbose=0, **kwargs)


def test_empty_training_set_raises():
    trainer = Trainer(_tiny_model, losses="mse", verbose=0)
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 4), "float32"), {"y": np.zeros((0, 1), "float32")})
    )
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(empty.batch(4), epochs=1)


@keras.saving.register_keras_serializable(package="tests")
class OwnLossModel(keras.Model):
    """A model whose loss lives in `compute_loss` (like keras-hub's RetinaNet): MSE x 3."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        from keras.src.losses.loss import scale_loss_for_distribution

        return scale_loss_for_distribution(3.0 * tf.reduce_mean(tf.square(y["y"] - y_pred["y"])))


def test_models_with_their_own_compute_loss():
    x, y = _tiny_data()

    def build():
        inputs = keras.Input((4,), name="x")
        return OwnLossModel(inputs, {"y": keras.layers.Dense(1, name="y")(inputs)})

    compiled = []
    trainer = Trainer(
        build,
        losses="model",
        optimizer=lambda: keras.optimizers.SGD(0.02),
        compile_fn=lambda model, opt: compiled.append(model.compile(optimizer=opt)) or None,
        verbose=0,
    )
    assert len(compiled) == 1
    ds = tf.data.Dataset.from_tensor_slices((x, {"y": y})).batch(8)
    before = trainer.evaluate(ds)["loss"]
    prediction = np.asarray(trainer.model(x)["y"])
    np.testing.assert_allclose(before, 3.0 * np.mean((prediction - y) ** 2), rtol=1e-5)
    history = trainer.fit(ds, ds, epochs=3)
    assert history[-1]["val_loss"] < before


def test_progress_bar_knows_the_steps_of_a_per_epoch_dataset(capsys):
    x, y = _tiny_data(n=24)

    def per_epoch(epoch):  # a fresh (reshuffled) dataset each epoch, as the packages build them
        return tf.data.Dataset.from_tensor_slices((x, {"y": y})).shuffle(24, seed=epoch).batch(8)

    trainer = Trainer(_tiny_model, losses={"y": "mse"}, verbose=1)
    trainer.fit(per_epoch, epochs=2)
    out = capsys.readouterr().out
    assert out.count("3/3") >= 2, out  # 24 examples / batch 8, a bar with its total each epoch
    assert "Unknown" not in out
