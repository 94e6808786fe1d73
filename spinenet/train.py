"""Training of SpineNet (paper 002 §2, §4) through the suite's engine (`common.training`).

The paper's recipe, all of it configuration of the preset (`spinenet.model.PRESETS`):

- loss: `sum_t omega_t L_t` with `omega_t = 1` (`task_weights`), each `L_t` the softmax log-loss
  weighted per class by `alpha_c = 1 / freq(c)` on the TRAINING split
  (`common.losses.MaskedSparseCategoricalCrossentropy` with `spinenet.data.class_weights`); a disc
  whose label of a task is missing counts for the other tasks only (§2);
- input normalisation: per-channel (per-slice) mean subtraction, the means of the training volumes
  (`spinenet.model.set_input_mean`);
- SGD with momentum 0.9 and weight decay 5e-4, the preset's learning rate (1e-3 in `paper`) lowered
  x0.1 when the validation loss plateaus (callback preset `spine`; the paper gives no patience:
  `lr_patience` epochs, 5), the preset's batch size (256 in `paper`), the best epoch (validation
  loss) kept;
- on-the-fly augmentation (§4): rotation +-15 deg, translation +-32 px (x) / +-24 px (y) / +-2
  slices (z), scaling 0.9-1.1, intensity +-0.1, slice-wise reflection, fresh draws every epoch;
- the 80:10:10 split by patient (§5, `spinenet.data.read_dataset`), or the plain layout's own
  `split` column;
- evaluation on the held-out test split with the 54-view test-time augmentation (`tta=False`
  for the centre view only), written by `spinenet.evaluate.evaluate_model`.

Reference:
    Jamaludin, Kadir, Zisserman, "SpineNet", MICCAI 2016, §2, §4, §5.
"""

from __future__ import annotations

import functools
import os

import keras
import numpy as np

from common.callbacks import callback_preset
from common.errors import DataError
from common.losses import MaskedSparseCategoricalCrossentropy
from common.training import check_run_dir
from common.training import train_and_export
from common.weights import default_spec
from common.weights import pretrained_file
from common.weights import record_trunk
from spinenet.data import class_weights
from spinenet.data import load_volumes
from spinenet.data import make_dataset
from spinenet.data import read_dataset
from spinenet.data import task_targets
from spinenet.evaluate import evaluate_model
from spinenet.metrics import mean_per_class_accuracy
from spinenet.model import PAPER_WEIGHTS
from spinenet.model import build_model
from spinenet.model import get_config
from spinenet.model import set_input_mean
from spinenet.presets import CALLBACK_PRESETS

_ARCHITECTURE_KEYS = (
    "input_shape",
    "conv_filters",
    "fc_units",
    "dropout",
    "branch_point",
    "tasks",
    "input_mean",
)


def _val_metrics(targets, predictions, *, tasks):
    """`mean_per_class_accuracy` over the tasks on the validation set (logged per epoch)."""
    return {
        "mean_per_class_accuracy": mean_per_class_accuracy(
            {t: np.asarray(targets[t]).ravel() for t in tasks},
            {t: np.asarray(predictions[t]) for t in tasks},
        )
    }


def resolve_training_config(preset="demo", *, epochs=None, batch_size=None, **overrides) -> dict:
    """The configuration a run trains with: the preset, its overrides, `epochs` and `batch_size`.

    Args:
        preset: a key of `spinenet.PRESETS`.
        epochs: overrides the preset's `epochs` when not None.
        batch_size: overrides the preset's `batch_size` when not None.
        **overrides: any other key of the preset (`learning_rate=0.01`, `rotation_deg=5`,
            `tta=False`, `conv_filters=(8, 8, 8, 8, 8)`, ...).

    Returns:
        The checked configuration dict (`spinenet.model.get_config`).
    """
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if batch_size is not None:
        overrides["batch_size"] = int(batch_size)
    return get_config(preset, **overrides)


def train(
    data_dir,
    out_dir,
    *,
    preset="demo",
    epochs=None,
    batch_size=None,
    seed=0,
    strategy="auto",
    resume=False,
    weights=None,
    verbose=1,
    **overrides,
):
    """Trains SpineNet on a data set, then evaluates it on the held-out test split.

    Args:
        data_dir: a SPIDER folder (`images/`, `masks/`, `radiological_gradings.csv`), the plain
            layout (`volumes.npy` + `labels.csv`), or a folder holding one.
        out_dir: the run folder: `model.h5`, `model.keras`, `config.json`, `history.csv`,
            `metrics.json`, `report.html`, `predictions.csv`, `checkpoints/`.
        preset: a key of `spinenet.PRESETS` (default `demo`; `paper` and `spider` are the paper's
            network, with 4 or 2 narrowing classes).
        epochs: total epochs (default: the preset's).
        batch_size: global batch size (default: the preset's).
        seed: seed of the patient split, the initialisation, shuffling and augmentation.
        strategy: `auto`, `default`, `mirrored` or `multi-worker`.
        resume: continue an interrupted run in `out_dir` from its last checkpoint.
        weights: `"none"` or a local `.weights.h5` / `.h5` / `.keras` file to start from; None =
            `none` (the paper trains "from scratch without any pre-training", §4; VGG-M has no
            keras.applications ImageNet file, so `imagenet` and `coco` stop with one line).
        verbose: 0 quiet, 1 progress.
        **overrides: other configuration keys (`learning_rate`, `lr_patience`, `tta` (False:
            evaluate on the centre view only), `conv_filters`, `rotation_deg`, ...; see
            `spinenet.model.PRESETS`). None values are ignored.

    Returns:
        The test metrics (the content of `metrics.json`).
    """
    check_run_dir(out_dir, resume)
    # Flags left unset on the command line (e.g. no `--no-tta`) arrive as None: keep the preset's.
    overrides = {k: v for k, v in overrides.items() if v is not None}
    spec = default_spec(weights, PAPER_WEIGHTS, preset)
    # VGG-M is no keras.applications trunk: imagenet and coco stop here with one line.
    weights = pretrained_file(spec, None, what=f"spinenet preset '{preset}' (VGG-M)")
    config = resolve_training_config(preset, epochs=epochs, batch_size=batch_size, **overrides)
    records = read_dataset(data_dir, seed=seed)
    splits = {name: records[records["split"] == name] for name in ("train", "val", "test")}
    for name in ("train", "test"):
        if splits[name].empty:
            raise DataError(
                f"the {name} split is empty ({len(records)} discs in all); a data set needs at "
                "least a few patients (80:10:10 split by patient)",
                path=data_dir,
            )
    if splits["val"].empty:
        splits["val"] = splits["test"]
        if verbose:
            print("No validation patients: the test split monitors the training.", flush=True)
    if verbose:
        counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        print(f"Discs: {counts} ({records['patient'].nunique()} patients, {data_dir})", flush=True)
    # Checked before any work: a label outside a task's classes names its file, row and column.
    for frame in splits.values():
        task_targets(frame, config)
    train_volumes = load_volumes(splits["train"], progress=bool(verbose) or None)
    val_volumes = load_volumes(splits["val"], progress=bool(verbose) or None)
    # accumulated in float64 chunk by chunk, without a float64 copy of every volume (issue 19.3:
    # a 36 MB float32 set peaked at 72 MB more with the copy, 0.07 MB without; same values)
    input_mean = np.mean(train_volumes, axis=(0, 1, 2), dtype=np.float64)
    weights_by_task = class_weights(splits["train"], config)
    tasks = list(config["tasks"])
    batch = int(config["batch_size"])

    def train_dataset(epoch):
        # A new augmentation and shuffling seed per epoch, the same again when a run is resumed.
        return make_dataset(
            splits["train"],
            config=config,
            training=True,
            batch_size=batch,
            seed=int(seed) * 100_003 + int(epoch),
            volumes=train_volumes,
        )

    validation = make_dataset(
        splits["val"], config=config, training=False, batch_size=batch, volumes=val_volumes
    )
    architecture = {k: config[k] for k in _ARCHITECTURE_KEYS}

    def build():
        model = build_model(
            config["preset"],
            weights=None if weights is None else os.fspath(weights),
            **architecture,
        )
        set_input_mean(model, input_mean)
        whole = [layer.name for layer in model.layers if layer.weights]
        record_trunk(model, whole, spec=spec, source=weights, run_dir=out_dir, verbose=verbose)
        return model

    def optimizer():
        sgd = keras.optimizers.SGD(
            learning_rate=float(config["learning_rate"]),
            momentum=float(config["momentum"]),
            weight_decay=float(config["weight_decay"]),
            global_clipnorm=config["global_clipnorm"],
        )
        # Decay on the weights, not on the biases (MatConvNet's default, the paper's toolbox).
        sgd.exclude_from_weight_decay(var_names=["bias"])
        return sgd

    task_weights = config["task_weights"] or {}
    trainer, _ = train_and_export(
        build,
        losses={
            task: MaskedSparseCategoricalCrossentropy(class_weights=weights_by_task[task])
            for task in tasks
        },
        loss_weights={task: float(task_weights.get(task, 1.0)) for task in tasks},
        optimizer=optimizer,
        train=train_dataset,
        validation=validation,
        out_dir=out_dir,
        epochs=int(config["epochs"]),
        config={
            **config,
            "data_dir": os.fspath(data_dir),
            "split_counts": {k: len(v) for k, v in splits.items()},
            "input_mean": [float(v) for v in input_mean],
            "class_weights": {t: [float(v) for v in w] for t, w in weights_by_task.items()},
            "weights": None if weights is None else os.fspath(weights),
        },
        strategy=strategy,
        resume=resume,
        callbacks=lambda run_dir: callback_preset(
            CALLBACK_PRESETS["spine"],
            run_dir,
            lr_factor=float(config["lr_decay_factor"]),
            lr_patience=int(config["lr_patience"]),
        ),
        val_metrics=functools.partial(_val_metrics, tasks=tasks),
        seed=seed,
        verbose=verbose,
    )
    if not trainer.chief:
        return {}  # in a multi-worker run only the chief evaluates and writes the run's files
    return evaluate_model(
        trainer.model,
        splits["test"],
        config=config,
        out_dir=out_dir,
        history_path=os.path.join(out_dir, "history.csv"),
        seed=seed,
        verbose=verbose,
        data_path=data_dir,
    )
