"""Callback presets carry each paper's numbers."""

import keras
import pytest

from common.callbacks import PRESETS
from common.callbacks import callback_preset
from common.callbacks import stepwise_schedule


def _by_type(callbacks, cls):
    return [c for c in callbacks if isinstance(c, cls)]


@pytest.mark.parametrize(
    "name, factor, patience, stop, monitor",
    [
        ("knee", 0.1, 2, 3, "val_loss"),  # paper 000 §3.5
        ("ra", 0.2, 5, None, "val_rmse"),  # paper 001 §4.3.1
        ("ra-detector", 0.1, 4, 5, "val_map"),  # paper 001 §4.2
        ("mura", 0.1, 1, None, "val_loss"),  # paper 004, ReduceLROnPlateau(factor=0.1, patience=1)
        ("spine", 0.1, 5, None, "val_loss"),  # paper 002 §4: x0.1 on plateau
    ],
)
def test_plateau_presets(tmp_path, name, factor, patience, stop, monitor):
    callbacks = callback_preset(name, tmp_path)
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
    callbacks = callback_preset("boneage", initial_lr=1e-2)
    (scheduler,) = _by_type(callbacks, keras.callbacks.LearningRateScheduler)
    rates = [scheduler.schedule(e) for e in range(0, 200, 10)]
    assert rates[0] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(1e-5)
    assert PRESETS["boneage"].min_lr == 1e-5


def test_stepwise_schedule_values():
    schedule = stepwise_schedule(1.0, every=2, factor=0.5, floor=0.2)
    assert [schedule(e) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert schedule(10) == 0.2


def test_tensorboard_optional(tmp_path):
    assert not _by_type(callback_preset("knee", tmp_path), keras.callbacks.TensorBoard)
    assert _by_type(
        callback_preset("knee", tmp_path, tensorboard=True), keras.callbacks.TensorBoard
    )


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("nope",), {}, "Unknown callback preset 'nope'"),
        (("boneage",), {}, "initial_lr"),
        (("knee",), {"patience": 3}, "Unknown callback preset fields"),
    ],
)
def test_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        callback_preset(*args, **kwargs)
