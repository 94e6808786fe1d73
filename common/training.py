"""One training engine for every package, the same under the default, mirrored and multi-worker strategies.

Keras 3 `Model.fit` fails under `tf.distribute.MultiWorkerMirroredStrategy` (keras-team/keras#20585:
"Attempt to convert a value (PerReplica...)"). `Trainer` drives `strategy.run` itself instead:

- per-output losses are computed per example (`reduction="none"`), multiplied by sample weights
  (missing labels weigh 0), summed, and divided by the number of examples in the GLOBAL batch
  (all-reduced), so one replica, two mirrored replicas and two workers take the same step;
- the Keras optimizer all-reduces the gradients (as inside `Model.fit`);
- validation runs on every worker over the whole validation set with the same weights, so the
  monitored values, and therefore the Keras callbacks (ReduceLROnPlateau, EarlyStopping,
  ModelCheckpoint, ...), take the same decisions everywhere and the workers stay in step;
- after every epoch the chief writes an atomic checkpoint (weights, optimizer variables, history,
  callback state) that `resume=True` continues from, and rewrites `history.csv`, so a run killed
  at any moment, even by SIGKILL, loses at most the epoch in progress.

- `steps_per_execution` steps run inside ONE compiled function (a `tf.while_loop` over the
  distributed iterator); the loss sums stay on the device and are read once per call, so Python
  and the host sync cost once per N steps, not once per step. Per-batch callbacks (and the
  progress bar) are therefore called once per N steps, with the index of the last step run;
  epoch-level results are the same for every N. A short last chunk (fewer than N batches left)
  ends the loop early inside the same compiled function: no retracing per epoch;
- under a `mixed_float16` policy the optimizer is wrapped in `keras.optimizers.LossScaleOptimizer`
  (dynamic loss scaling), under every strategy; `jit_compile=True` compiles each replica's
  forward and backward pass with XLA;
- TensorBoard logs go to `RUN/tensorboard/` (chief only) unless turned off.

Multi-worker runs assume `run_dir` is on a file system every worker can read (for `resume`);
only the chief writes to it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import time
from collections.abc import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from common.distribute import average_across_replicas
from common.distribute import is_chief
from common.distribute import worker_dir
from common.fileio import atomic_write_text

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
_CALLBACK_STATE_ATTRS = ("wait", "best", "cooldown_counter", "stopped_epoch", "best_epoch")
TENSORBOARD_DIR = "tensorboard"
# The default number of steps per compiled call: measured on a tiny model on 2 CPU cores
# (`python -m bench --only engine`, README "The engine"): the time per step falls until about
# 16 steps per call and is flat beyond; per-batch callbacks run once per call.
DEFAULT_STEPS_PER_EXECUTION = 16
_ENGINE_DEFAULTS = {
    "steps_per_execution": DEFAULT_STEPS_PER_EXECUTION,
    "jit_compile": False,
    "tensorboard": True,
}


def engine_defaults():
    """The engine options a `Trainer` takes when it is not given them (a dict copy).

    Keys: `steps_per_execution` (int), `jit_compile` (bool), `tensorboard` (bool).
    """
    return dict(_ENGINE_DEFAULTS)


def set_engine_defaults(**options):
    """Sets the engine defaults of the `Trainer`s created from now on (the `train` command's flags).

    Args:
        **options: `steps_per_execution`, `jit_compile`, `tensorboard`; a value of None keeps the
            current default.
    """
    unknown = sorted(set(options) - set(_ENGINE_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown engine options {unknown}. Available: {sorted(_ENGINE_DEFAULTS)}")
    _ENGINE_DEFAULTS.update({k: v for k, v in options.items() if v is not None})


@contextlib.contextmanager
def engine_options(**options):
    """Sets engine defaults for the `Trainer`s created inside the block (the `train` command's flags).

    Args:
        **options: `steps_per_execution`, `jit_compile`, `tensorboard`; a value of None keeps the
            current default.
    """
    saved = dict(_ENGINE_DEFAULTS)
    set_engine_defaults(**options)
    try:
        yield engine_defaults()
    finally:
        _ENGINE_DEFAULTS.clear()
        _ENGINE_DEFAULTS.update(saved)


def _per_example_loss(spec):
    """A callable `(y_true, y_pred) -> (batch,)` from a loss name, a Keras `Loss` or a function."""
    if isinstance(spec, str):
        spec = keras.losses.get(spec)
    if isinstance(spec, keras.losses.Loss):
        config = spec.get_config()
        config["reduction"] = "none"
        return spec.__class__.from_config(config)
    if callable(spec):
        return spec
    raise ValueError(
        f"A loss must be a name, a keras.losses.Loss or a callable. Received: {spec!r}"
    )


def _unpack(batch):
    if isinstance(batch, (tuple, list)):
        if len(batch) == 3:
            return batch[0], batch[1], batch[2]
        if len(batch) == 2:
            return batch[0], batch[1], None
    raise ValueError(
        "A dataset element must be (inputs, targets) or (inputs, targets, sample_weights)."
    )


def _atomic_write_text(path, text):
    atomic_write_text(path, text)


def _to_float(value):
    value = float(np.asarray(value))
    return value if math.isfinite(value) else float("nan")


def _known_cardinality(dataset):
    """The number of batches of a `tf.data.Dataset` when TensorFlow knows it, else None."""
    if not isinstance(dataset, tf.data.Dataset):
        return None
    cardinality = int(dataset.cardinality())
    return cardinality if cardinality > 0 else None


def _set_progbar_target(callback_list, steps):
    """Gives Keras' progress bar its step count (it reads it when an epoch begins)."""
    if steps is None:
        return
    for callback in callback_list.callbacks:
        if isinstance(callback, keras.callbacks.ProgbarLogger):
            callback.target = steps


class Trainer:
    """Trains a Keras model with a loop over `strategy.run`; see the module docstring.

    Args:
        build_model: callable returning a `keras.Model`; called inside the strategy's scope.
            Model outputs may be one tensor or a dict keyed by output name.
        losses: dict output name -> loss (name, `keras.losses.Loss`, or callable returning a
            per-example vector), or one loss for a single-output model; or `"model"` for models
            that compute their own loss (`model.compute_loss`, e.g. keras-hub's RetinaNet, whose
            loss matches boxes to anchors): then `compile_fn` compiles the model with its loss.
        optimizer: callable returning a Keras optimizer (created inside the scope), or a name.
        loss_weights: dict output name -> weight of that output's loss (paper 000's multi-loss
            `sum_b w_b L_b`, paper 002's `omega_t`). Defaults to 1 for each.
        strategy: a `tf.distribute.Strategy`; defaults to the current one.
        run_dir: folder for checkpoints and `history.csv`; `None` keeps nothing on disk.
        callbacks: callable `run_dir -> list[keras.callbacks.Callback]` (given a private folder on
            non-chief workers), or a list.
        val_metrics: optional callable `(y_true: dict, y_pred: dict) -> dict[str, float]` computed on
            the validation set after each epoch; its keys are logged with a `val_` prefix.
        seed: seeds Python, NumPy and TensorFlow before the model is built.
        verbose: 0 silent, 1 progress bar per epoch (chief only).
        compile_fn: optional callable `(model, optimizer)` that compiles the model (inside the
            scope); defaults to `model.compile(optimizer=optimizer)`.
        steps_per_execution: training steps per compiled call (>= 1); default
            `engine_defaults()["steps_per_execution"]`. Per-batch callbacks run once per call.
        jit_compile: compile each replica's forward and backward pass with XLA; default
            `engine_defaults()["jit_compile"]`.
        tensorboard: write TensorBoard logs to `run_dir/tensorboard/` (chief only, needs
            `run_dir`); default `engine_defaults()["tensorboard"]`.

    Under a `mixed_float16` dtype policy (see `common.precision`) the optimizer is wrapped in
    `keras.optimizers.LossScaleOptimizer`; `self.optimizer` is the wrapper.
    """

    def __init__(
        self,
        build_model: Callable[[], keras.Model],
        *,
        losses,
        optimizer="adam",
        loss_weights=None,
        strategy=None,
        run_dir=None,
        callbacks=None,
        val_metrics=None,
        seed=0,
        verbose=1,
        compile_fn=None,
        steps_per_execution=None,
        jit_compile=None,
        tensorboard=None,
    ):
        defaults = engine_defaults()
        self.steps_per_execution = int(
            defaults["steps_per_execution"] if steps_per_execution is None else steps_per_execution
        )
        if self.steps_per_execution < 1:
            raise ValueError(
                f"steps_per_execution must be at least 1. Received: {steps_per_execution}"
            )
        self.jit_compile = bool(defaults["jit_compile"] if jit_compile is None else jit_compile)
        tensorboard = bool(defaults["tensorboard"] if tensorboard is None else tensorboard)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        self.verbose = int(verbose) if self.chief else 0
        self.val_metrics = val_metrics
        keras.utils.set_random_seed(int(seed))
        with self.strategy.scope():
            self.model = build_model()
            if isinstance(optimizer, str) or not callable(optimizer):
                self.optimizer = keras.optimizers.get(optimizer)
            else:
                self.optimizer = optimizer()
            self.optimizer = _with_loss_scaling(self.model, self.optimizer)
            if compile_fn is not None:
                compile_fn(self.model, self.optimizer)
            else:
                self.model.compile(optimizer=self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
        self.output_names = list(self.model.output_names)
        self.model_loss = isinstance(losses, str) and losses == "model"
        if self.model_loss:
            losses = {"model": None}
        elif not isinstance(losses, dict):
            if len(self.output_names) != 1:
                raise ValueError(
                    f"The model has outputs {self.output_names}: give `losses` as a dict keyed by them."
                )
            losses = {self.output_names[0]: losses}
        unknown = sorted(set(losses) - set(self.output_names))
        if unknown and not self.model_loss:
            raise ValueError(
                f"Losses for unknown outputs {unknown}. Model outputs: {self.output_names}"
            )
        self.losses = {
            name: None if self.model_loss else _per_example_loss(spec)
            for name, spec in losses.items()
        }
        loss_weights = dict(loss_weights or {})
        unknown = sorted(set(loss_weights) - set(self.losses))
        if unknown:
            raise ValueError(f"Loss weights for outputs without a loss: {unknown}")
        self.loss_weights = {name: float(loss_weights.get(name, 1.0)) for name in self.losses}
        self._file_dir = None
        if self.run_dir is not None:
            if self.chief:
                os.makedirs(os.path.join(self.run_dir, CHECKPOINT_DIR), exist_ok=True)
            self._file_dir = worker_dir(self.run_dir, self.strategy)
            os.makedirs(os.path.join(self._file_dir, CHECKPOINT_DIR), exist_ok=True)
        if callable(callbacks) and not isinstance(callbacks, (list, tuple)):
            callbacks = callbacks(self._file_dir or self.run_dir)
        self.callbacks = list(callbacks or [])
        if (
            tensorboard
            and self.chief
            and self.run_dir is not None
            and not any(isinstance(c, keras.callbacks.TensorBoard) for c in self.callbacks)
        ):
            self.callbacks.append(
                keras.callbacks.TensorBoard(
                    os.path.join(self.run_dir, TENSORBOARD_DIR), write_graph=False
                )
            )
        self._train_step = None
        self._predict_step = None

    # ------------------------------------------------------------------ losses
    def _as_dict(self, value):
        if isinstance(value, dict):
            return value
        return {self.output_names[0]: value}

    def _model_loss_sum(self, inputs, targets, predictions, sample_weights, training):
        """The model's own loss (a batch mean) times the batch size, as a per-output sum."""
        loss = self.model.compute_loss(
            x=inputs, y=targets, y_pred=predictions, sample_weight=sample_weights, training=training
        )
        # Keras divides a loss computed in a replica context by the number of replicas
        loss = tf.cast(loss, tf.float32)
        if tf.distribute.in_cross_replica_context() is False and tf.distribute.has_strategy():
            loss = loss * self.strategy.num_replicas_in_sync
        count = tf.cast(tf.shape(tf.nest.flatten(inputs)[0])[0], tf.float32)
        return {"model": loss * count}

    def _loss_sums(self, targets, predictions, sample_weights):
        targets = self._as_dict(targets)
        predictions = self._as_dict(predictions)
        sums = {}
        for name, loss_fn in self.losses.items():
            y_true = targets[name]
            y_pred = predictions[name]
            values = loss_fn(y_true, y_pred)
            values = tf.cast(values, tf.float32)
            if values.shape.rank and values.shape.rank > 1:
                values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
            if sample_weights is not None:
                weight = (
                    sample_weights[name] if isinstance(sample_weights, dict) else sample_weights
                )
                weight = tf.reshape(tf.cast(weight, tf.float32), [-1])
                values = values * weight
            sums[name] = tf.reduce_sum(values)
        return sums

    def _combine(self, sums, count):
        return tf.add_n([self.loss_weights[k] * sums[k] for k in sums]) / tf.maximum(count, 1.0)

    # ------------------------------------------------------------------ steps
    def _make_train_step(self):
        """A compiled `(iterator, steps) -> (sums, steps run)`: up to `steps` training steps.

        `sums` is one float32 vector: the per-output loss sums, the example count and the
        regularisation (summed over steps and replicas). The loop stops early when the iterator
        ends (`get_next_as_optional`, agreed on by every worker), so the short last chunk of an
        epoch runs in the same traced function.
        """
        strategy = self.strategy
        model = self.model
        optimizer = self.optimizer
        names = list(self.losses)
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def gradients_fn(batch, global_count):
            inputs, targets, sample_weights = _unpack(batch)
            with tf.GradientTape() as tape:
                predictions = model(inputs, training=True)
                if self.model_loss:
                    sums = self._model_loss_sum(
                        inputs, targets, predictions, sample_weights, training=True
                    )
                else:
                    sums = self._loss_sums(targets, predictions, sample_weights)
                loss = self._combine(sums, global_count)
                regularization = tf.constant(0.0)
                if model.losses:
                    regularization = tf.add_n([tf.cast(v, tf.float32) for v in model.losses])
                    loss = loss + regularization / strategy.num_replicas_in_sync
                if scaled:
                    loss = optimizer.scale_loss(loss)
            gradients = tape.gradient(loss, model.trainable_variables)
            return sums, regularization, gradients

        if self.jit_compile:
            gradients_fn = tf.function(gradients_fn, jit_compile=True, reduce_retracing=True)

        def step_fn(batch):
            inputs = _unpack(batch)[0]
            local_count = tf.cast(tf.shape(tf.nest.flatten(inputs)[0])[0], tf.float32)
            context = tf.distribute.get_replica_context()
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
            sums, regularization, gradients = gradients_fn(batch, global_count)
            variables = model.trainable_variables
            # a LossScaleOptimizer unscales, skips non-finite steps and adapts its scale
            optimizer.apply_gradients(
                [(g, v) for g, v in zip(gradients, variables) if g is not None]
            )
            return tf.stack(
                [tf.cast(sums[k], tf.float32) for k in names]
                + [local_count, regularization / strategy.num_replicas_in_sync]
            )

        @tf.function
        def train_chunk(iterator, steps):
            total = tf.zeros([len(names) + 2], tf.float32)
            done = tf.constant(0, tf.int32)
            for _ in tf.range(steps):
                optional = iterator.get_next_as_optional()
                if not optional.has_value():
                    break
                values = strategy.run(step_fn, args=(optional.get_value(),))
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)
                done += 1
            return total, done

        return train_chunk

    def _make_predict_step(self):
        model = self.model

        @tf.function(reduce_retracing=True)
        def predict_step(inputs):
            return model(inputs, training=False)

        return predict_step

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dir(self, for_writing):
        base = self._file_dir if for_writing else self.run_dir
        return os.path.join(base, CHECKPOINT_DIR)

    def _callback_state(self):
        state = []
        for callback in self.callbacks:
            entry = {"class": type(callback).__name__}
            for attr in _CALLBACK_STATE_ATTRS:
                value = getattr(callback, attr, None)
                if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(
                    value, bool
                ):
                    entry[attr] = float(value)
            state.append(entry)
        return state

    def _restore_callback_state(self, state):
        for callback, entry in zip(self.callbacks, state):
            if entry.get("class") != type(callback).__name__:
                continue
            for attr in _CALLBACK_STATE_ATTRS:
                if attr in entry and hasattr(callback, attr):
                    value = entry[attr]
                    current = getattr(callback, attr)
                    setattr(callback, attr, int(value) if isinstance(current, int) else value)

    def _save_checkpoint(self, epoch, history):
        folder = self._checkpoint_dir(for_writing=True)
        os.makedirs(folder, exist_ok=True)
        stem = f"ckpt-{epoch:04d}"
        weights = os.path.join(folder, f"{stem}.weights.h5")
        tmp_weights = os.path.join(folder, f"{stem}.tmp.weights.h5")
        self.model.save_weights(tmp_weights, overwrite=True)
        os.replace(tmp_weights, weights)
        opt_path = os.path.join(folder, f"{stem}.optimizer.npz")
        tmp_opt = os.path.join(folder, f"{stem}.tmp.npz")
        arrays = {f"v{i:05d}": np.asarray(v) for i, v in enumerate(self.optimizer.variables)}
        np.savez(tmp_opt, **arrays)
        os.replace(tmp_opt, opt_path)
        state = {
            "epoch": epoch,
            "weights": os.path.basename(weights),
            "optimizer": os.path.basename(opt_path),
            "history": history,
            "callbacks": self._callback_state(),
            "time": time.time(),
        }
        _atomic_write_text(os.path.join(folder, STATE_FILE), json.dumps(state, indent=1))
        for old in glob.glob(os.path.join(folder, "ckpt-*")):
            if not os.path.basename(old).startswith(stem):
                os.remove(old)

    def load_checkpoint_state(self):
        """The saved state of `run_dir` (dict) or None when there is no checkpoint."""
        if self.run_dir is None:
            return None
        path = os.path.join(self.run_dir, CHECKPOINT_DIR, STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)

    def _restore_checkpoint(self, state):
        folder = self._checkpoint_dir(for_writing=False)
        self.model.load_weights(os.path.join(folder, state["weights"]))
        with np.load(os.path.join(folder, state["optimizer"])) as arrays:
            values = [arrays[k] for k in sorted(arrays.files)]
        if len(values) != len(self.optimizer.variables):
            raise ValueError(
                f"{folder}: the checkpoint's optimizer has {len(values)} variables, this run's has "
                f"{len(self.optimizer.variables)}; resume with the same preset and optimizer."
            )
        for variable, value in zip(self.optimizer.variables, values):
            variable.assign(value)

    def _write_history(self, history):
        if not self.chief or self.run_dir is None:
            return
        frame = pd.DataFrame(history)
        path = os.path.join(self.run_dir, HISTORY_FILE)
        tmp = f"{path}.tmp{os.getpid()}"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ public API
    def fit(self, train, validation=None, *, epochs, resume=False, steps_per_epoch=None):
        """Trains for `epochs` epochs (counting those of a resumed run) and returns the history.

        Args:
            train: a batched `tf.data.Dataset` (batch = GLOBAL batch size) of `(inputs, targets)` or
                `(inputs, targets, sample_weights)`, or a callable `epoch -> Dataset` (fresh
                augmentation seeds per epoch that a resumed run reproduces).
            validation: a batched dataset of the same structure, or None.
            epochs: total number of epochs.
            resume: continue from the last checkpoint in `run_dir` (a fresh start when none).
            steps_per_epoch: optional cap on the steps of an epoch.

        Returns:
            A list of dicts, one per epoch: `epoch`, `loss`, `<output>_loss`, `val_...`, `lr`, `time_s`.
        """
        history = []
        start_epoch = 0
        state = self.load_checkpoint_state() if resume else None
        if self._train_step is None:
            self._train_step = self._make_train_step()
        steps = steps_per_epoch
        if steps is None:
            steps = _known_cardinality(train)
        callback_list = keras.callbacks.CallbackList(
            self.callbacks,
            add_history=False,
            add_progbar=self.verbose > 0,
            model=self.model,
            verbose=self.verbose,
            epochs=epochs,
            steps=steps,
        )
        self.model.stop_training = False
        callback_list.on_train_begin()
        if state is not None:
            self._restore_checkpoint(state)
            self._restore_callback_state(state.get("callbacks", []))
            history = list(state["history"])
            start_epoch = int(state["epoch"]) + 1
            if self.verbose:
                print(
                    f"Resuming after epoch {start_epoch} of {epochs} from {self.run_dir}",
                    flush=True,
                )
            self._write_history(history)
            if history and history[-1].get("stopped_early"):
                start_epoch = epochs
        for epoch in range(start_epoch, epochs):
            started = time.time()
            dataset = train(epoch) if callable(train) else train
            if callable(train) and steps_per_epoch is None:
                # A fresh dataset per epoch: its length is known only now, before the bar starts.
                _set_progbar_target(callback_list, _known_cardinality(dataset))
            callback_list.on_epoch_begin(epoch)
            logs = self._run_epoch(dataset, callback_list, steps_per_epoch)
            # moving statistics (BatchNormalization) drift apart per replica: keep their mean
            average_across_replicas(self.model.non_trainable_variables, self.strategy)
            if validation is not None:
                logs.update(self.evaluate(validation, prefix="val_"))
            logs["lr"] = _to_float(self.optimizer.learning_rate)
            callback_list.on_epoch_end(epoch, logs)
            row = {"epoch": epoch, **{k: _to_float(v) for k, v in logs.items()}}
            row["time_s"] = round(time.time() - started, 3)
            if self.model.stop_training:
                row["stopped_early"] = 1
            history.append(row)
            if self.run_dir is not None:
                self._save_checkpoint(epoch, history)
                self._write_history(history)
            if self.model.stop_training:
                if self.verbose:
                    print(f"Early stop after epoch {epoch + 1}.", flush=True)
                break
        callback_list.on_train_end(history[-1] if history else None)
        return history

    def _run_epoch(self, dataset, callback_list, steps_per_epoch):
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
        names = list(self.losses)
        total = np.zeros(len(names) + 2, np.float64)
        steps = 0
        while steps_per_epoch is None or steps < steps_per_epoch:
            chunk = self.steps_per_execution
            if steps_per_epoch is not None:
                chunk = min(chunk, steps_per_epoch - steps)
            callback_list.on_train_batch_begin(steps)
            values, done = self._train_step(iterator, tf.constant(chunk, tf.int32))
            done = int(done)  # the one host sync of a chunk
            if done == 0:
                break
            total += np.asarray(values, np.float64)
            steps += done
            logs = self._logs_from_total(total, steps)
            callback_list.on_train_batch_end(steps - 1, logs)
            if done < chunk:
                break
        if steps == 0:
            raise ValueError("The training dataset is empty: no batch in an epoch.")
        return self._logs_from_total(total, steps)

    def _logs_from_total(self, total, steps):
        names = list(self.losses)
        sums = {name: float(total[i]) for i, name in enumerate(names)}
        return self._epoch_logs(sums, float(total[len(names)]), float(total[-1]) / steps)

    def _epoch_logs(self, sums, count, regularization, prefix=""):
        count = max(count, 1.0)
        logs = {}
        total = regularization
        for name, value in sums.items():
            logs[f"{prefix}{name}_loss"] = value / count
            total += self.loss_weights[name] * value / count
        logs[f"{prefix}loss"] = total
        if len(sums) == 1:
            logs.pop(f"{prefix}{next(iter(sums))}_loss")
        return logs

    def predict(self, dataset, *, return_targets=False):
        """Runs the model over a dataset on this worker; returns dict output -> np.ndarray.

        With `return_targets=True` returns `(predictions, targets, sample_weights)` as dicts.
        """
        if self._predict_step is None:
            self._predict_step = self._make_predict_step()
        predictions, targets, weights = {}, {}, {}
        for batch in dataset:
            if isinstance(batch, (tuple, list)):
                inputs, y, sw = _unpack(batch) if len(batch) > 1 else (batch[0], None, None)
            else:
                inputs, y, sw = batch, None, None
            out = self._as_dict(self._predict_step(inputs))
            for name, value in out.items():
                predictions.setdefault(name, []).append(np.asarray(value))
            if y is not None:
                for name, value in self._as_dict(y).items():
                    targets.setdefault(name, []).append(np.asarray(value))
            if sw is not None:
                for name, value in (sw if isinstance(sw, dict) else {"*": sw}).items():
                    weights.setdefault(name, []).append(np.asarray(value))
        cat = lambda d: {k: np.concatenate(v, axis=0) for k, v in d.items()}  # noqa: E731
        if return_targets:
            return cat(predictions), cat(targets), cat(weights)
        return cat(predictions)

    def _evaluate_model_loss(self, dataset, prefix):
        """`evaluate` for models that compute their own loss: batch by batch (it needs the inputs)."""
        if self._predict_step is None:
            self._predict_step = self._make_predict_step()
        total, count = 0.0, 0.0
        predictions, targets = {}, {}
        for batch in dataset:
            inputs, y, sw = _unpack(batch)
            out = self._predict_step(inputs)
            total += float(self._model_loss_sum(inputs, y, out, sw, training=False)["model"])
            count += float(tf.shape(tf.nest.flatten(inputs)[0])[0])
            for name, value in self._as_dict(out).items():
                predictions.setdefault(name, []).append(np.asarray(value))
            for name, value in self._as_dict(y).items():
                targets.setdefault(name, []).append(np.asarray(value))
        if count == 0:
            raise ValueError("The validation dataset is empty.")
        logs = {f"{prefix}loss": total / count}
        if self.val_metrics is not None:
            cat = lambda d: {k: np.concatenate(v, axis=0) for k, v in d.items()}  # noqa: E731
            for key, value in self.val_metrics(cat(targets), cat(predictions)).items():
                logs[f"{prefix}{key}"] = _to_float(value)
        return logs

    def evaluate(self, dataset, *, prefix=""):
        """Loss (and `val_metrics`) over a dataset on this worker, as a dict of floats."""
        if self.model_loss:
            return self._evaluate_model_loss(dataset, prefix)
        predictions, targets, weights = self.predict(dataset, return_targets=True)
        if not predictions:
            raise ValueError("The validation dataset is empty.")
        sample_weights = None
        if weights:
            sample_weights = weights.get("*", weights)
        sums = self._loss_sums(
            {k: tf.constant(v) for k, v in targets.items()},
            {k: tf.constant(v) for k, v in predictions.items()},
            None
            if sample_weights is None
            else (
                {k: tf.constant(v) for k, v in sample_weights.items()}
                if isinstance(sample_weights, dict)
                else tf.constant(sample_weights)
            ),
        )
        count = float(next(iter(predictions.values())).shape[0])
        regularization = 0.0
        if self.model.losses:
            regularization = float(tf.add_n([tf.cast(v, tf.float32) for v in self.model.losses]))
        logs = self._epoch_logs(
            {k: float(v) for k, v in sums.items()}, count, regularization, prefix
        )
        if self.val_metrics is not None:
            for key, value in self.val_metrics(targets, predictions).items():
                logs[f"{prefix}{key}"] = _to_float(value)
        return logs


def _with_loss_scaling(model, optimizer):
    """`optimizer` wrapped in `keras.optimizers.LossScaleOptimizer` when the model computes in float16."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    float16 = any(
        getattr(layer, "compute_dtype", None) == "float16" for layer in model._flatten_layers()
    )
    if float16:
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def check_run_dir(out_dir, resume):
    """Refuses to start a new run in a folder that holds a checkpoint (call before reading data).

    Nothing already written is overwritten: continue such a run with `resume=True` (`--resume`),
    or choose another folder.
    """
    from common.errors import DataError

    state = os.path.join(os.fspath(out_dir), CHECKPOINT_DIR, STATE_FILE)
    if os.path.exists(state) and not resume:
        raise DataError(
            "this run folder already holds a training checkpoint; pass --resume to continue it "
            "or choose another --out-dir",
            path=out_dir,
        )


def train_and_export(
    build_model,
    *,
    losses,
    optimizer,
    train,
    validation,
    out_dir,
    epochs,
    config,
    loss_weights=None,
    strategy="auto",
    resume=False,
    callbacks=None,
    val_metrics=None,
    seed=0,
    restore_best=True,
    verbose=1,
    compile_fn=None,
):
    """The training half of every package's `train`: config, engine, best weights, model files.

    Writes `RUN/config.json` (the resolved configuration, also printed), trains with `Trainer`
    (checkpoints and `history.csv` in `RUN/`), reloads the best epoch's weights when a
    `checkpoints/best.weights.h5` exists and `restore_best`, and writes `RUN/model.h5` and
    `RUN/model.keras` atomically. Only the chief writes in a multi-worker run.

    Args:
        build_model: callable returning the model (built inside the strategy's scope).
        losses, optimizer, loss_weights, callbacks, val_metrics, seed, verbose, compile_fn: as
            `Trainer`.
        train, validation: datasets (or `epoch -> dataset` for `train`), see `Trainer.fit`.
        out_dir: the run folder.
        epochs: total epochs.
        config: the resolved configuration (JSON-able dict) to record.
        strategy: a name of `common.distribute.strategy_from_name` or a strategy.
        resume: continue from the run's last checkpoint. Without it, a run folder that already
            holds a checkpoint is refused (nothing already written is overwritten).
        restore_best: load the best epoch's weights before exporting.

    Returns:
        `(trainer, history)`.
    """
    from common.callbacks import best_weights_path
    from common.distribute import strategy_from_name
    from common.distribute import strategy_name as name_of
    from common.export import save_all
    from common.run_config import write_config

    out_dir = os.fspath(out_dir)
    check_run_dir(out_dir, resume)
    strategy_name = name_of(strategy)
    if isinstance(strategy, str):
        strategy = strategy_from_name(strategy)
    chief = is_chief(strategy)
    if chief:
        write_config(
            out_dir,
            {
                **config,
                "epochs": epochs,
                "seed": seed,
                "strategy": strategy_name,
                "replicas": strategy.num_replicas_in_sync,
                "resume": bool(resume),
                "precision": keras.config.dtype_policy().name,
                **engine_defaults(),
            },
            echo=verbose > 0,
        )
    trainer = Trainer(
        build_model,
        losses=losses,
        optimizer=optimizer,
        loss_weights=loss_weights,
        strategy=strategy,
        run_dir=out_dir,
        callbacks=callbacks,
        val_metrics=val_metrics,
        seed=seed,
        verbose=verbose,
        compile_fn=compile_fn,
    )
    history = trainer.fit(train, validation, epochs=epochs, resume=resume)
    best = best_weights_path(out_dir) if restore_best else None
    if best is not None:
        trainer.model.load_weights(best)
    if chief:
        save_all(trainer.model, out_dir)
    return trainer, history
