"""The multi-step engine (`steps_per_execution`), loss scaling under float16 and TensorBoard logs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.precision import reset_precision
from common.precision import set_precision
from common.training import Trainer
from common.training import engine_defaults
from common.training import engine_options


@pytest.fixture(autouse=True)
def _float32_afterwards():
    yield
    reset_precision()


def _model():
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, {"y": keras.layers.Dense(1, name="y", dtype="float32")(hidden)})


def _data(n=52, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [0.0]], "float32")
    return tf.data.Dataset.from_tensor_slices((x, {"y": y})).batch(batch)  # 7 batches, last 4


class BatchEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(batch)


def _fit(steps, epochs=3, **kwargs):
    seen = BatchEnds()
    trainer = Trainer(
        _model,
        losses="mse",
        optimizer=lambda: keras.optimizers.SGD(0.05),
        callbacks=[seen],
        steps_per_execution=steps,
        verbose=0,
        seed=3,
        **kwargs,
    )
    history = trainer.fit(lambda epoch: _data(), _data(), epochs=epochs)
    return trainer, history, seen.batches


def test_n_steps_per_call_train_exactly_as_one_step_per_call_and_trace_once():
    one, history_one, batches_one = _fit(1)
    three, history_three, batches_three = _fit(3)
    for a, b in zip(one.model.get_weights(), three.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for row_one, row_three in zip(history_one, history_three, strict=True):
        for key in ("loss", "val_loss"):
            np.testing.assert_allclose(row_one[key], row_three[key], rtol=1e-5)
    assert history_one[-1]["loss"] < history_one[0]["loss"]
    # per-batch callbacks: every step with N = 1, once per call (last step's index) with N = 3
    assert batches_one == list(range(7)) * 3
    assert batches_three == [2, 5, 6] * 3
    # the short last chunk (1 batch of 4 examples) ran in the same traced function, every epoch
    assert three._train_step.experimental_get_tracing_count() == 1


def test_steps_per_epoch_caps_across_chunks():
    trainer = Trainer(_model, losses="mse", steps_per_execution=3, verbose=0)
    seen = BatchEnds()
    trainer.callbacks.append(seen)
    trainer.fit(_data().repeat(), epochs=2, steps_per_epoch=5)
    assert seen.batches == [2, 4, 2, 4]
    assert int(trainer.optimizer.iterations) == 10


def test_engine_options_set_the_defaults_of_new_trainers():
    before = engine_defaults()
    with engine_options(steps_per_execution=5, tensorboard=False):
        trainer = Trainer(_model, losses="mse", verbose=0)
        assert trainer.steps_per_execution == 5
    assert engine_defaults() == before
    with pytest.raises(ValueError, match="at least 1"):
        Trainer(_model, losses="mse", steps_per_execution=0, verbose=0)


def test_tensorboard_logs_by_default_and_off_on_request(tmp_path):
    for folder, kwargs in (("on", {}), ("off", {"tensorboard": False})):
        trainer = Trainer(_model, losses="mse", run_dir=tmp_path / folder, verbose=0, **kwargs)
        trainer.fit(_data(), _data(), epochs=2)
    events = list((tmp_path / "on" / "tensorboard").rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} == {"train", "validation"}
    assert not (tmp_path / "off" / "tensorboard").exists()


# ---------------------------------------------------------------- loss scaling (mixed_float16)
TINY = 1e-9  # gradients this small underflow to 0 in float16 unless the loss is scaled


def _scaled_loss(factor):
    def loss(y_true, y_pred):
        return factor * tf.reduce_mean(tf.square(y_true - tf.cast(y_pred, tf.float32)), axis=-1)

    return loss


def _one_step(precision, factor):
    set_precision(precision)
    trainer = Trainer(
        _model,
        losses=_scaled_loss(factor),
        optimizer=lambda: keras.optimizers.SGD(1e6),
        steps_per_execution=2,
        seed=5,
        verbose=0,
    )
    before = [np.array(w) for w in trainer.model.get_weights()]
    history = trainer.fit(_data(n=8), epochs=1)
    after = [np.array(w) for w in trainer.model.get_weights()]
    return trainer, before, after, history


def test_float16_steps_scale_the_loss_and_unscale_the_gradients():
    trainer, before, after, history = _one_step("mixed_float16", TINY)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.model.get_layer("hidden").compute_dtype == "float16"
    assert np.isfinite(history[0]["loss"])
    _, before32, after32, _ = _one_step("float32", TINY)
    for b, b32 in zip(before, before32, strict=True):
        np.testing.assert_array_equal(b, b32)  # same start
    # the update equals float32's: the gradients were scaled up in float16, then unscaled
    moved = after[0] - before[0]
    moved32 = after32[0] - before32[0]
    assert np.abs(moved32).max() > 1e-3
    np.testing.assert_allclose(moved, moved32, rtol=0.05, atol=2e-4)
    # control: the same float16 gradients without the scale underflow to zero
    set_precision("mixed_float16")
    model = _model()
    model.set_weights(before)
    x, y = next(iter(_data(n=8)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(_scaled_loss(TINY)(y["y"], model(x)["y"]))
    gradient = tape.gradient(loss, model.get_layer("hidden").kernel)
    assert not np.any(np.asarray(gradient)), "the control should underflow"


def test_float16_overflow_skips_the_step_and_lowers_the_scale():
    trainer, before, after, _ = _one_step("mixed_float16", 1e30)
    scale = float(trainer.optimizer.dynamic_scale)
    assert scale < 2.0**15, scale  # started at 2**15, halved on each non-finite step
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(b, a)  # no step applied with inf gradients


# ---------------------------------------------------------------- the train command's flags
def _package(seen):
    import types

    def train(data_dir, out_dir, **kwargs):
        seen.append(("train", engine_defaults(), keras.config.dtype_policy().name))

    def predict(model, inputs, out_dir, *, explain=False, **kwargs):
        seen.append(("predict", None, keras.config.dtype_policy().name))

    module = types.ModuleType("enginepkg", "Stand-in package.")
    module.__dict__.update(
        PRESETS={"demo": {}, "paper": {}},
        train=train,
        predict=predict,
        inspect_dataset=lambda root: {},
    )
    return module


def test_cli_flags_reach_the_engine_and_the_dtype_policy(tmp_path, capsys):
    from common.cli import main
    from common.training import set_engine_defaults

    seen = []
    package = _package(seen)
    common = ["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")]
    saved = engine_defaults()
    try:
        assert main(package, common) == 0
        assert seen[-1] == ("train", saved, "float32")  # auto on a CPU: float32; logs on
        flags = ["--no-tensorboard", "--jit-compile", "--steps-per-execution", "7"]
        assert main(package, [*common, *flags, "--precision", "mixed_bfloat16"]) == 0
        options = {"steps_per_execution": 7, "jit_compile": True, "tensorboard": False}
        assert seen[-1] == ("train", options, "mixed_bfloat16")
        argv = ["predict", "--model", "m.keras", "--input", "a.png", "--out-dir", str(tmp_path)]
        assert main(package, [*argv, "--precision", "mixed_float16"]) == 0
        assert seen[-1][2] == "mixed_float16"
        with pytest.raises(SystemExit) as exit_info:
            main(package, [*common, "--precision", "half"])
        assert exit_info.value.code == 2
        assert "invalid choice: 'half'" in capsys.readouterr().err
    finally:
        set_engine_defaults(**saved)


def test_jit_compiled_steps_train_as_the_plain_ones():
    plain, history_plain, _ = _fit(3, epochs=2)
    jit, history_jit, _ = _fit(3, epochs=2, jit_compile=True)
    assert jit.jit_compile and not plain.jit_compile
    for a, b in zip(plain.model.get_weights(), jit.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(history_plain[-1]["loss"], history_jit[-1]["loss"], rtol=1e-5)
