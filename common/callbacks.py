"""The Keras callbacks of a training schedule, driven by `common.training.Trainer`.

A schedule is data: the fields of `CallbackPreset`, kept per paper in each package's
`presets.CALLBACK_PRESETS` (`kneeoa`: `knee`; `deepra`: `ra`, `ra-detector`; `spinenet`: `spine`;
`mura`: `mura`; `boneage`: `boneage`). `callback_preset` turns one into Keras callbacks: the
learning-rate rule (ReduceLROnPlateau or a stepwise schedule), early stopping where the paper
stops early, a checkpoint of the best epoch (`checkpoints/best.weights.h5`) and of the last one
(`checkpoints/last.weights.h5`), and optionally TensorBoard. The per-epoch CSV log is
`history.csv`, written by the `Trainer` itself: Keras' `CSVLogger` appends row by row and would
repeat epochs after a run killed between writing a row and checkpointing, while the Trainer
rewrites the file from its checkpointed history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping

import keras


@dataclasses.dataclass(frozen=True)
class CallbackPreset:
    """The numbers of one paper's training schedule.

    Args:
        monitor: the logged quantity the rules watch, e.g. `"val_loss"` or `"val_rmse"`.
        mode: `"min"` or `"max"`.
        lr_factor: factor of ReduceLROnPlateau (None: no plateau rule).
        lr_patience: epochs without improvement before the learning rate drops.
        stop_patience: epochs without improvement before training stops (None: never).
        step_every: with `step_factor`, a stepwise schedule instead of the plateau rule: the rate is
            multiplied by `step_factor` every `step_every` epochs.
        step_factor: see `step_every`.
        min_lr: floor of the learning rate.
        reference: where the numbers come from.
    """

    monitor: str = "val_loss"
    mode: str = "min"
    lr_factor: float | None = None
    lr_patience: int = 0
    stop_patience: int | None = None
    step_every: int | None = None
    step_factor: float | None = None
    min_lr: float = 0.0
    reference: str = ""


def _temporary_name(path):
    for suffix in (".weights.h5", ".keras", ".h5"):
        if path.endswith(suffix):
            return path[: -len(suffix)] + ".tmp" + suffix
    return path + ".tmp"


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that writes to a temporary name and renames, so a killed run never leaves a
    half-written checkpoint in place of a good one.

    Public Keras API only: `ModelCheckpoint` writes to its `filepath` (a constructor argument and
    public attribute) from its public hooks `on_epoch_end` / `on_train_batch_end`. For the length
    of each hook `filepath` names a temporary file beside the target (same suffix, so Keras'
    format checks still pass); a file written there is then renamed onto the target
    (`os.replace`, atomic on one file system). `tests/common/test_callbacks.py` pins the Keras
    behaviour this relies on. The path must be a fixed name: Keras fills `{epoch}`-style
    placeholders in privately, so the name it would write could not be known here.

    Args:
        filepath: the checkpoint file (`.weights.h5` with `save_weights_only`, else `.keras` or
            `.h5`), without placeholders.
        **kwargs: as `keras.callbacks.ModelCheckpoint`.
    """

    def __init__(self, filepath, **kwargs):
        super().__init__(filepath, **kwargs)
        if "{" in self.filepath or "}" in self.filepath:
            raise ValueError(
                f"AtomicModelCheckpoint needs a fixed file name. Received: filepath={self.filepath}"
            )

    def _atomically(self, hook, *args):
        target = self.filepath
        temporary = _temporary_name(target)
        # a temporary file left by a killed run must not be renamed onto the target below
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        self.filepath = temporary
        try:
            hook(*args)
        finally:
            self.filepath = target
        if os.path.exists(temporary):
            os.replace(temporary, target)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq != "epoch":
            return super().on_epoch_end(epoch, logs)  # saves nothing then
        self._atomically(super().on_epoch_end, epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return super().on_train_batch_end(batch, logs)  # saves nothing then
        self._atomically(super().on_train_batch_end, batch, logs)


def stepwise_schedule(initial_lr, *, every, factor, floor):
    """`epoch -> learning rate`: `initial_lr * factor ** (epoch // every)`, never below `floor`."""
    if every <= 0 or not 0 < factor < 1:
        raise ValueError(
            f"Need every > 0 and 0 < factor < 1. Received: every={every}, factor={factor}"
        )

    def schedule(epoch, lr=None):
        return max(float(floor), float(initial_lr) * factor ** (int(epoch) // int(every)))

    return schedule


def callback_preset(
    preset, run_dir=None, *, initial_lr=None, tensorboard=False, verbose=0, **overrides
):
    """The Keras callbacks of a paper's schedule.

    Args:
        preset: the schedule, a `CallbackPreset` or a mapping of its fields: one of the
            packages' `presets.CALLBACK_PRESETS`, e.g. `kneeoa.presets.CALLBACK_PRESETS["knee"]`.
        run_dir: where checkpoints (and TensorBoard logs) go; None for no files.
        initial_lr: the starting learning rate, needed by stepwise schedules.
        tensorboard: add a `TensorBoard` callback writing to `run_dir/tensorboard`.
        verbose: verbosity of the Keras callbacks.
        **overrides: fields of `CallbackPreset` to change (e.g. `stop_patience=None`).

    Returns:
        A list of `keras.callbacks.Callback`.

    Raises:
        ValueError: `preset` is neither a `CallbackPreset` nor a mapping, a field is unknown, or a
            stepwise schedule lacks `initial_lr`.
    """
    if isinstance(preset, CallbackPreset):
        preset = dataclasses.asdict(preset)
    if not isinstance(preset, Mapping):
        raise ValueError(
            "A callback preset is a `CallbackPreset` or a mapping of its fields, e.g. "
            f"kneeoa.presets.CALLBACK_PRESETS['knee']. Received: preset={preset!r}"
        )
    fields = {f.name for f in dataclasses.fields(CallbackPreset)}
    unknown = sorted((set(preset) | set(overrides)) - fields)
    if unknown:
        raise ValueError(f"Unknown callback preset fields {unknown}. Available: {sorted(fields)}")
    preset = CallbackPreset(**{**preset, **overrides})
    name = preset.reference or "this callback preset"
    callbacks = []
    if preset.step_every is not None:
        if initial_lr is None:
            raise ValueError(f"{name}: a stepwise schedule needs `initial_lr`.")
        callbacks.append(
            keras.callbacks.LearningRateScheduler(
                stepwise_schedule(
                    initial_lr,
                    every=preset.step_every,
                    factor=preset.step_factor,
                    floor=preset.min_lr,
                ),
                verbose=verbose,
            )
        )
    elif preset.lr_factor is not None:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=preset.monitor,
                mode=preset.mode,
                factor=preset.lr_factor,
                patience=preset.lr_patience,
                min_lr=preset.min_lr,
                verbose=verbose,
            )
        )
    if preset.stop_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=preset.monitor,
                mode=preset.mode,
                patience=preset.stop_patience,
                verbose=verbose,
            )
        )
    if run_dir is not None:
        folder = os.path.join(os.fspath(run_dir), "checkpoints")
        os.makedirs(folder, exist_ok=True)
        callbacks.append(
            AtomicModelCheckpoint(
                os.path.join(folder, "best.weights.h5"),
                monitor=preset.monitor,
                mode=preset.mode,
                save_best_only=True,
                save_weights_only=True,
                verbose=verbose,
            )
        )
        callbacks.append(
            AtomicModelCheckpoint(
                os.path.join(folder, "last.weights.h5"),
                save_best_only=False,
                save_weights_only=True,
                verbose=0,
            )
        )
        if tensorboard:
            callbacks.append(
                keras.callbacks.TensorBoard(
                    os.path.join(os.fspath(run_dir), "tensorboard"), write_graph=False
                )
            )
    return callbacks


def best_weights_path(run_dir):
    """Where the best epoch's weights of a run are, or None when there are none."""
    path = os.path.join(os.fspath(run_dir), "checkpoints", "best.weights.h5")
    return path if os.path.exists(path) else None
