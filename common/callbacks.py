"""Callback presets, one per paper, built from Keras callbacks and driven by `common.training.Trainer`.

Each preset is a list of Keras callbacks: the paper's learning-rate rule (ReduceLROnPlateau or a
stepwise schedule), early stopping where the paper stops early, a checkpoint of the best epoch
(`checkpoints/best.weights.h5`) and of the last one (`checkpoints/last.weights.h5`), and optionally
TensorBoard. The per-epoch CSV log is `history.csv`, written by the `Trainer` itself: Keras'
`CSVLogger` appends row by row and would repeat epochs after a run killed between writing a row and
checkpointing, while the Trainer rewrites the file from its checkpointed history.
"""

from __future__ import annotations

import dataclasses
import os

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


PRESETS = {
    "knee": CallbackPreset(
        lr_factor=0.1,
        lr_patience=2,
        stop_patience=3,
        reference="paper 000 §3.5: LR x0.1 after 2 epochs without val-loss improvement, stop after 3",
    ),
    "ra": CallbackPreset(
        monitor="val_rmse",
        lr_factor=0.2,
        lr_patience=5,
        reference="paper 001 §4.3.1: LR x0.2 after 5 epochs without val-RMSE improvement, keep the best",
    ),
    "ra-detector": CallbackPreset(
        monitor="val_map",
        mode="max",
        lr_factor=0.1,
        lr_patience=4,
        stop_patience=5,
        reference="paper 001 §4.2: LR x0.1 after 4 epochs without val-mAP improvement, stop after 5",
    ),
    "spine": CallbackPreset(
        lr_factor=0.1,
        lr_patience=5,
        reference="paper 002 §4: LR x0.1 as the error plateaus (patience not given: 5)",
    ),
    "mura": CallbackPreset(
        lr_factor=0.1,
        lr_patience=1,
        reference="paper 004: ReduceLROnPlateau(monitor='val_loss', factor=0.1, patience=1)",
    ),
    "boneage": CallbackPreset(
        step_every=10,
        step_factor=0.5,
        min_lr=1e-5,
        reference="paper 003 §V: Adam 1e-2 with stepwise decay to a floor of 1e-5 (step not given: x0.5/10 epochs)",
    ),
}


def _temporary_name(path):
    for suffix in (".weights.h5", ".keras", ".h5"):
        if path.endswith(suffix):
            return path[: -len(suffix)] + ".tmp" + suffix
    return path + ".tmp"


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that writes to a temporary name and renames, so a killed run never leaves a
    half-written checkpoint in place of a good one."""

    def _get_file_path(self, epoch, batch, logs):
        self._final_path = super()._get_file_path(epoch, batch, logs)
        return _temporary_name(self._final_path)

    def _save_model(self, epoch, batch, logs):
        self._final_path = None
        super()._save_model(epoch, batch, logs)
        final = self._final_path
        if final is not None and os.path.exists(_temporary_name(final)):
            os.replace(_temporary_name(final), final)


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
    name, run_dir=None, *, initial_lr=None, tensorboard=False, verbose=0, **overrides
):
    """The Keras callbacks of a paper's schedule.

    Args:
        name: one of `PRESETS` (`knee`, `ra`, `ra-detector`, `spine`, `mura`, `boneage`).
        run_dir: where checkpoints (and TensorBoard logs) go; None for no files.
        initial_lr: the starting learning rate, needed by stepwise schedules.
        tensorboard: add a `TensorBoard` callback writing to `run_dir/tensorboard`.
        verbose: verbosity of the Keras callbacks.
        **overrides: fields of `CallbackPreset` to change (e.g. `stop_patience=None`).

    Returns:
        A list of `keras.callbacks.Callback`.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown callback preset '{name}'. Available: {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(CallbackPreset)})
    if unknown:
        raise ValueError(f"Unknown callback preset fields {unknown}.")
    preset = dataclasses.replace(PRESETS[name], **overrides)
    callbacks = []
    if preset.step_every is not None:
        if initial_lr is None:
            raise ValueError(f"Callback preset '{name}' is a stepwise schedule: give `initial_lr`.")
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
