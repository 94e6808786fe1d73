"""Training of the MURA classifiers (paper 004, the MURA paper's recipe) through `common.training`.

The recipe: binary cross-entropy weighted per study type (for body part T, w1 = N_T / (A_T + N_T) on
abnormal and w0 = A_T / (A_T + N_T) on normal training images: `load_records`' `sample_weight`,
multiplied into the per-example loss by the engine), Adam (lr 1e-4, betas 0.9 / 0.999), batch 8,
ReduceLROnPlateau on the validation loss (factor 0.1, patience 1: callback preset `mura`),
horizontal flips and rotations up to 30 degrees. MURA's `valid` split is the held-out test split;
the validation split is carved out of `train` by patient. The best epoch's weights by validation
loss are kept (`checkpoints/best.weights.h5`, restored into `model.h5` / `model.keras`), and the k
best epochs' weights in `checkpoints/topk/` for the MURA paper's ensemble (`mura.ensemble`).

The `demo` preset has its own numbers (see `mura.model`): Adam 2e-3, batch 16, 20 epochs, the
learning rate halved after 2 epochs without progress.

Reference:
    Paper 004 (slides), "Adam Optimization", "Modified DenseNet169 Model", "Model improvements and
    Fine-Tuning". Rajpurkar et al., MURA, 2018, §3 "Model".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import keras
import numpy as np

from common import metrics as M
from common.callbacks import callback_preset
from common.errors import DataError
from common.training import check_run_dir
from common.training import train_and_export
from common.weights import default_spec
from common.weights import pretrained_file
from common.weights import record_trunk
from mura.data import load_records
from mura.data import make_dataset
from mura.data import study_probabilities
from mura.ensemble import TopKWeights
from mura.ensemble import ensemble_members
from mura.ensemble import topk_dir
from mura.evaluate import evaluate_model
from mura.model import OUTPUT_NAME
from mura.model import PAPER_WEIGHTS
from mura.model import PRETRAINED_PRESETS
from mura.model import MURAConfig
from mura.model import build_model
from mura.model import get_config
from mura.presets import CALLBACK_PRESETS


def parse_overrides(items):
    """`KEY=VALUE` strings (the `--set` flag) as a dict; values are JSON when they parse as JSON.

    Args:
        items: e.g. `["input_shape=[96,96,3]", "learning_rate=1e-3", "backbone=densenet"]`, or None.

    Returns:
        dict of `MURAConfig` field overrides.

    Raises:
        ValueError: an item without `=`.
    """
    from common.cli import parse_set_overrides

    return parse_set_overrides(items)


def _saved_run_config(out_dir):
    """The `config.json` of the run in `out_dir` (a dict), or None when there is none."""
    path = os.path.join(os.fspath(out_dir), "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except ValueError as exc:
        raise DataError(f"unreadable run configuration ({exc})", path=path) from None


def _val_study_auroc(targets, predictions, *, records):
    """The validation split's study-level AUROC (logged as `val_study_auroc` after each epoch)."""
    studies = study_probabilities(records, predictions[OUTPUT_NAME])
    if studies["label"].nunique() < 2:
        return {"study_auroc": float("nan")}
    return {"study_auroc": M.roc_auc(studies["label"], studies["probability"])}


def _loss_weight_table(records):
    train = records[records["split"] == "train"]
    table = train.groupby(["body_part", "label"])["sample_weight"].first().unstack()
    return {
        part: {"w0_normal": float(row.get(0, np.nan)), "w1_abnormal": float(row.get(1, np.nan))}
        for part, row in table.iterrows()
    }


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
    config_overrides=None,
    **overrides,
):
    """Trains a preset on a MURA-v1.1 data set, then evaluates it on MURA's valid split.

    Args:
        data_dir: the MURA-v1.1 folder or the folder holding it.
        out_dir: the run folder: `model.h5`, `model.keras`, `config.json`, `history.csv`,
            `metrics.json`, `report.html`, `predictions.csv`, `checkpoints/` (with `topk/`).
        preset: a name in `mura.PRESETS` (default `demo`).
        epochs: epochs (default: the preset's).
        batch_size: global batch size (default: the preset's).
        seed: seed of the validation split, initialisation, shuffling and augmentation.
        strategy: `auto`, `default`, `mirrored` or `multi-worker`.
        resume: continue an interrupted run in `out_dir` from its last checkpoint, with the
            configuration and seed saved in its `config.json` (`preset` and `seed` are then
            ignored; `epochs`, `batch_size` and overrides still apply, e.g. more epochs).
        weights: the backbone's start: `"imagenet"` (Keras' DenseNet file, downloaded once into
            Keras' cache), `"none"`, or a local weights file for the backbone (e.g. Keras'
            `densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5`); None = the preset's
            (`paper` and `base`: ImageNet, as the slides; `demo`: none).
        verbose: 0 quiet, 1 progress.
        config_overrides: `KEY=VALUE` strings (`--set`), see `parse_overrides`.
        **overrides: other `MURAConfig` fields, e.g. `input_shape=(96, 96, 3)`.

    Returns:
        The test metrics (dict, as `metrics.json`); `{}` on the non-chief workers of a
        multi-worker run.

    Raises:
        DataError: bad data set, no training / validation / test images, a run folder holding a
            checkpoint without `resume`, a missing weights file.
    """
    check_run_dir(out_dir, resume)
    overrides = {**parse_overrides(config_overrides), **overrides}
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if batch_size is not None:
        overrides["batch_size"] = int(batch_size)
    saved = _saved_run_config(out_dir) if resume else None
    preset_name = preset if isinstance(preset, str) else "custom"
    if saved is not None:  # resume with the run's own configuration, split and seed
        fields = {f.name for f in dataclasses.fields(MURAConfig)} - {"weights"}
        preset = {k: v for k, v in saved.items() if k in fields}
        preset_name = saved.get("preset", "custom")
        seed = int(saved.get("seed", seed))
    config = get_config(preset, **overrides)
    if weights is None and config.weights is not None:
        weights = config.weights  # `--set weights=FILE`
    spec = default_spec(weights, PAPER_WEIGHTS, preset_name, paper_presets=PRETRAINED_PRESETS)
    trunk = config.backbone if config.backbone != "densenet" else None
    source = pretrained_file(spec, trunk, what=f"mura preset '{preset_name}' ({config.backbone})")
    config = get_config(config, weights=source)
    if config.val_fraction <= 0:
        raise ValueError("val_fraction must be > 0: training monitors the validation loss")
    if config.ensemble_size > 1 and config.ensemble_size > min(
        config.top_k_checkpoints, config.epochs
    ):
        raise ValueError(
            f"ensemble_size {config.ensemble_size} needs as many kept epochs: top_k_checkpoints "
            f"is {config.top_k_checkpoints}, epochs {config.epochs}"
        )
    records = load_records(data_dir, config=config, seed=seed)
    splits = {name: records[records["split"] == name] for name in ("train", "val", "test")}
    for name, what in (("train", "MURA train"), ("val", "MURA train"), ("test", "MURA valid")):
        if splits[name].empty:
            raise DataError(
                f"no {name} images (the {name} split comes from the {what} split)", path=data_dir
            )
    if verbose:
        counts = ", ".join(
            f"{k} {len(v)} images / {v['study'].nunique()} studies" for k, v in splits.items()
        )
        print(f"MURA: {counts} ({data_dir})", flush=True)
    datasets = {
        "train": make_dataset(splits["train"], config=config, training=True, seed=seed),
        "val": make_dataset(splits["val"], config=config, training=False),
    }
    optimizer = functools.partial(
        keras.optimizers.Adam,
        learning_rate=config.learning_rate,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
    )

    def callbacks(run_dir):
        found = callback_preset(
            CALLBACK_PRESETS["mura"],
            run_dir,
            lr_factor=config.reduce_lr_factor if config.reduce_lr_on_plateau else None,
            lr_patience=config.reduce_lr_patience,
        )
        if config.top_k_checkpoints > 0:
            found.append(TopKWeights(topk_dir(run_dir), k=config.top_k_checkpoints))
        return found

    def build():
        model = build_model(config)
        trunk_layers = [layer.name for layer in model.layers if layer.name != OUTPUT_NAME]
        record_trunk(
            model, trunk_layers, spec=spec, source=source, run_dir=out_dir, verbose=verbose
        )
        return model

    trainer, _ = train_and_export(
        build,
        # Per-example binary cross-entropy; the engine multiplies it by the per-study-type
        # sample weights of `load_records` (MURA §3).
        losses={OUTPUT_NAME: "binary_crossentropy"},
        optimizer=optimizer,
        train=datasets["train"],
        validation=datasets["val"],
        out_dir=out_dir,
        epochs=config.epochs,
        config={
            **config.to_dict(),
            "preset": preset_name,
            "data_dir": os.fspath(data_dir),
            "split_counts": {k: int(len(v)) for k, v in splits.items()},
            "loss_weights_by_body_part": _loss_weight_table(records),
        },
        strategy=strategy,
        resume=resume,
        callbacks=callbacks,
        val_metrics=functools.partial(_val_study_auroc, records=splits["val"]),
        seed=seed,
        verbose=verbose,
    )
    if not trainer.chief:
        return {}  # in a multi-worker run only the chief evaluates and writes the run's files
    members = ensemble_members(
        trainer.model, os.path.join(os.fspath(out_dir), "model.keras"), config.ensemble_size
    )
    return evaluate_model(
        members,
        splits["test"],
        config=config,
        out_dir=out_dir,
        history_path=os.path.join(os.fspath(out_dir), "history.csv"),
        verbose=verbose,
        data_path=data_dir,
    )
