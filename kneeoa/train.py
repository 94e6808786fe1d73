"""Training of the KL-grade models (paper 000 §3.5) through `common.training`."""

from __future__ import annotations

import functools
import os

import keras
import numpy as np

from common.callbacks import callback_preset
from common.training import check_run_dir
from common.training import train_and_export
from common.weights import default_spec
from common.weights import pretrained_file
from common.weights import record_trunk
from kneeoa.data import load_records
from kneeoa.data import make_dataset
from kneeoa.evaluate import evaluate_model
from kneeoa.model import PAPER_WEIGHTS
from kneeoa.model import build_model
from kneeoa.model import output_names
from kneeoa.model import resolve_config
from kneeoa.model import trunk_layer_names
from kneeoa.presets import CALLBACK_PRESETS


def _val_accuracy(targets, predictions, *, branch):
    return {
        "accuracy": float(np.mean(np.argmax(predictions[branch], -1) == targets[branch].ravel()))
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
    layout=None,
    **overrides,
):
    """Trains a preset on a data set, then evaluates it on the held-out test split.

    The paper's recipe (§3.5): categorical cross-entropy per branch combined as
    `sum_b w_b L_b` (multi-loss), Adam (beta 0.9 / 0.999), the preset's learning rate (1e-5 in
    `paper`), LR x0.1 after 2 epochs without val-loss improvement, early stop after 3 (callback
    preset `knee`), horizontal flips. The best epoch's weights (by val loss) are kept.

    Args:
        data_dir: kneeKL224-style folders or an OAI layout (see `kneeoa.data`).
        out_dir: run folder: `model.h5`, `model.keras`, `config.json`, `history.csv`,
            `metrics.json`, `report.html`, `predictions.csv`, `checkpoints/`.
        preset: a name in `kneeoa.PRESETS` (default `demo`).
        epochs, batch_size: override the preset's.
        seed: seed of the split, initialisation, shuffling and augmentation.
        strategy: `auto`, `default`, `mirrored` or `multi-worker`.
        resume: continue an interrupted run in `out_dir`.
        weights: the trunk's start: `"imagenet"` (Keras' VGG-16 / ResNet-50 file, downloaded once
            into Keras' cache), `"none"`, or a local weights file of that trunk; None = the
            preset's (`none`: the paper trains from scratch, §3.5).
        verbose: 0 quiet, 1 progress.
        layout: which data set `data_dir` holds when it holds several (`kneeoa.data.LAYOUTS`);
            None reads the one there (two are an error naming both).
        **overrides: other configuration keys (see `kneeoa.model.resolve_config`).

    Returns:
        The test metrics (dict, as `metrics.json`).
    """
    check_run_dir(out_dir, resume)
    spec = default_spec(weights, PAPER_WEIGHTS, preset)
    base = resolve_config(preset, **overrides)["base"]
    source = pretrained_file(spec, base, what=f"kneeoa preset '{preset}' (base {base})")
    if source is not None:
        overrides["backbone_weights"] = os.fspath(source)
    config = resolve_config(preset, **overrides)
    if epochs is not None:
        config["epochs"] = int(epochs)
    if batch_size is not None:
        config["batch_size"] = int(batch_size)
    records = load_records(data_dir, seed=seed, layout=layout)
    splits = {name: records[records["split"] == name] for name in ("train", "val", "test")}
    if verbose:
        counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        print(f"Knees: {counts} ({records.attrs.get('source')} layout, {data_dir})", flush=True)
    batch = int(config["batch_size"])
    datasets = {
        "train": make_dataset(
            splits["train"], config=config, training=True, batch_size=batch, seed=seed
        ),
        "val": make_dataset(splits["val"], config=config, training=False, batch_size=batch),
    }
    names = output_names(config)

    def build():
        model = build_model(preset, **{k: v for k, v in config.items() if k != "preset"})
        record_trunk(
            model,
            trunk_layer_names(model, config),
            spec=spec,
            source=source,
            run_dir=out_dir,
            verbose=verbose,
        )
        return model

    optimizer = functools.partial(
        keras.optimizers.Adam,
        learning_rate=config["learning_rate"],
        beta_1=config["beta_1"],
        beta_2=config["beta_2"],
    )
    trainer, _ = train_and_export(
        build,
        losses={name: "sparse_categorical_crossentropy" for name in names},
        loss_weights=config["loss_weights"],
        optimizer=optimizer,
        train=datasets["train"],
        validation=datasets["val"],
        out_dir=out_dir,
        epochs=config["epochs"],
        config={
            **config,
            "data_dir": os.fspath(data_dir),
            "layout": records.attrs.get("source"),
            "split_counts": {k: len(v) for k, v in splits.items()},
        },
        strategy=strategy,
        resume=resume,
        callbacks=lambda run_dir: callback_preset(
            CALLBACK_PRESETS["knee"],
            run_dir,
            monitor=config["monitor"],
            lr_factor=config["reduce_lr_factor"],
            lr_patience=config["reduce_lr_patience"],
            stop_patience=config["early_stopping_patience"],
        ),
        val_metrics=functools.partial(_val_accuracy, branch=config["test_branch"]),
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
        verbose=verbose,
    )
