"""Callback presets carry each paper's numbers; the checkpoint callback never leaves half a file."""

import keras
import numpy as np
import pytest

from boneage.presets import CALLBACK_PRESETS as BONEAGE
from common.callbacks import AtomicModelCheckpoint
from common.callbacks import CallbackPreset
from common.callbacks import callback_preset
from common.callbacks import stepwise_schedule
from deepra.presets import CALLBACK_PRESETS as DEEPRA
from kneeoa.presets import CALLBACK_PRESETS as KNEEOA
from mura.presets import CALLBACK_PRESETS as MURA
from spinenet.presets import CALLBACK_PRESETS as SPINENET

KNEE = KNEEOA["knee"]


def _by_type(callbacks, cls):
    return [c for c in callbacks if isinstance(c, cls)]


@pytest.mark.parametrize(
    "preset, factor, patience, stop, monitor",
    [
        (KNEE, 0.1, 2, 3, "val_loss"),  # paper 000 §3.5
        (DEEPRA["ra"], 0.2, 5, None, "val_rmse"),  # paper 001 §4.3.1
        (DEEPRA["ra-detector"], 0.1, 4, 5, "val_map"),  # paper 001 §4.2
        (MURA["mura"], 0.1, 1, None, "val_loss"),  # paper 004, ReduceLROnPlateau(0.1, 1)
        (SPINENET["spine"], 0.1, 5, None, "val_loss"),  # paper 002 §4: x0.1 on plateau
    ],
    ids=["knee", "ra", "ra-detector", "mura", "spine"],
)
def test_plateau_presets(tmp_path, preset, factor, patience, stop, monitor):
    callbacks = callback_preset(preset, tmp_path)
    (plateau,) = _by_type(callbacks, keras.callbacks.ReduceLROnPlateau)
    assert plateau.factor == pytest.approx(factor) and plateau.patience == patience
    assert plateau.monitor == monitor
    stops = _by_type(callbacks, keras.callbacks.EarlyStopping)
    assert [s.patience for s in stops] == ([] if stop is None else [stop])
    checkpoints = _by_type(callbacks, keras.callbacks.ModelCheckpoint)
    assert sorted(c.filepath.rsplit("/", 1)[-1] for c in checkpoints) == [
        "best.weights.h5",
        "last.weights.h5",
    ]


def test_boneage_stepwise_schedule_reaches_floor():
    # paper 003 §V: Adam 1e-2, stepwise decay, minimum 1e-5
    callbacks = callback_preset(BONEAGE["boneage"], initial_lr=1e-2)
    (scheduler,) = _by_type(callbacks, keras.callbacks.LearningRateScheduler)
    rates = [scheduler.schedule(e) for e in range(0, 200, 10)]
    assert rates[0] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(1e-5)
    assert BONEAGE["boneage"]["min_lr"] == 1e-5


def test_preset_object_and_overrides():
    (plateau,) = callback_preset(CallbackPreset(**KNEE), lr_patience=7)[:1]
    assert plateau.patience == 7 and plateau.factor == pytest.approx(0.1)
    assert KNEE["lr_patience"] == 2  # the package's data is not changed by an override


def test_stepwise_schedule_values():
    schedule = stepwise_schedule(1.0, every=2, factor=0.5, floor=0.2)
    assert [schedule(e) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert schedule(10) == 0.2


def test_tensorboard_optional(tmp_path):
    assert not _by_type(callback_preset(KNEE, tmp_path), keras.callbacks.TensorBoard)
    assert _by_type(callback_preset(KNEE, tmp_path, tensorboard=True), keras.callbacks.TensorBoard)


# The schedules left common/ for the packages' presets: a name is no longer a preset.
@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("knee",), {}, "A callback preset is a `CallbackPreset` or a mapping"),
        ((BONEAGE["boneage"],), {}, "initial_lr"),
        ((KNEE,), {"patience": 3}, "Unknown callback preset fields"),
        (({**KNEE, "factor": 0.1},), {}, r"Unknown callback preset fields \['factor'\]"),
    ],
)
def test_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        callback_preset(*args, **kwargs)


# --------------------------------------------------------------------------- the checkpoint


def _tiny_model(value):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    model.get_layer("d").set_weights([np.full((2, 1), value, "float32"), np.zeros(1, "float32")])
    return model


def _kernel_in(path):
    model = _tiny_model(0.0)
    model.load_weights(path)
    return float(model.get_layer("d").get_weights()[0][0, 0])


def _epoch(callback, epoch, loss):
    callback.on_epoch_begin(epoch)
    callback.on_epoch_end(epoch, {"val_loss": loss})


def test_keras_checkpoint_writes_where_filepath_points_at_epoch_end(tmp_path):
    # What AtomicModelCheckpoint relies on: ModelCheckpoint reads its public `filepath` when the
    # epoch ends (not once at construction), and with save_best_only writes nothing when the
    # monitored value did not improve.
    callback = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "a.weights.h5"), save_best_only=True, save_weights_only=True
    )
    callback.set_model(_tiny_model(1.0))
    callback.filepath = str(tmp_path / "b.weights.h5")
    _epoch(callback, 0, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.weights.h5"]
    callback.filepath = str(tmp_path / "c.weights.h5")
    _epoch(callback, 1, 2.0)  # worse: no file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.weights.h5"]


def _interrupted_save(model, calls):
    """Makes the model's next weight save write half a file and then fail (a killed run)."""
    save = model.save_weights

    def broken(path, *args, **kwargs):
        calls.append(str(path))
        if len(calls) > 1:
            with open(path, "wb") as handle:
                handle.write(b"\x89HDF\r\n")
            raise KeyboardInterrupt
        return save(path, *args, **kwargs)

    model.save_weights = broken


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "keras-control"])
def test_interrupted_save_keeps_the_good_checkpoint(tmp_path, atomic):
    target = tmp_path / "best.weights.h5"
    cls = AtomicModelCheckpoint if atomic else keras.callbacks.ModelCheckpoint
    callback = cls(str(target), save_best_only=True, save_weights_only=True)
    model = _tiny_model(1.0)
    calls = []
    _interrupted_save(model, calls)
    callback.set_model(model)
    _epoch(callback, 0, 1.0)
    assert _kernel_in(target) == 1.0
    model.get_layer("d").set_weights([np.full((2, 1), 2.0, "float32"), np.zeros(1, "float32")])
    with pytest.raises(KeyboardInterrupt):
        _epoch(callback, 1, 0.5)
    if atomic:
        assert calls == [str(tmp_path / "best.tmp.weights.h5")] * 2
        assert _kernel_in(target) == 1.0  # the good epoch's weights are still there
        assert callback.filepath == str(target)
    else:  # the control: Keras' own callback leaves half a file in place of the good one
        with pytest.raises((OSError, ValueError)):
            _kernel_in(target)


def test_stale_temporary_file_is_not_taken_for_a_checkpoint(tmp_path):
    target = tmp_path / "best.weights.h5"
    callback = AtomicModelCheckpoint(str(target), save_best_only=True, save_weights_only=True)
    callback.set_model(_tiny_model(1.0))
    _epoch(callback, 0, 1.0)
    stale = tmp_path / "best.tmp.weights.h5"
    stale.write_bytes(b"left by a killed run")
    _epoch(callback, 1, 2.0)  # no improvement: nothing written, nothing renamed
    assert _kernel_in(target) == 1.0 and not stale.exists()


def test_fixed_file_name_only(tmp_path):
    with pytest.raises(ValueError, match="fixed file name"):
        AtomicModelCheckpoint(str(tmp_path / "{epoch:02d}.weights.h5"), save_weights_only=True)
