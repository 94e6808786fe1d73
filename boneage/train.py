"""Training of BoneAgeNet (paper 003 §IV-§V) through `common.training`, then the held-out evaluation."""

from __future__ import annotations

import functools
import os

import keras
import numpy as np

from boneage.data import load_records
from boneage.data import make_dataset
from boneage.evaluate import evaluate_model
from boneage.model import PAPER_WEIGHTS
from boneage.model import PRETRAINED_PRESETS
from boneage.model import build_model
from boneage.model import get_config
from boneage.model import is_inception_v3_file
from boneage.model import load_imagenet_inception
from boneage.presets import CALLBACK_PRESETS
from common.callbacks import callback_preset
from common.errors import DataError
from common.training import check_run_dir
from common.training import train_and_export
from common.weights import default_spec
from common.weights import pretrained_file
from common.weights import record_trunk
from common.weights import record_weights

SPLIT_NAMES = ("train", "val", "test")


def _val_mae(targets, predictions):
    """Validation MAE in months (logged as `val_mae`; the best epoch is chosen by it)."""
    error = np.asarray(predictions["age_months"], np.float64) - np.asarray(
        targets["age_months"], np.float64
    )
    return {"mae": float(np.mean(np.abs(error)))}


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
    """Trains a preset on an RSNA bone-age data set, then evaluates it on the held-out test split.

    The paper's recipe (§IV-§V): 300 x 300 gray images / 255 (the preset's input size), random zoom
    and random horizontal and vertical flips; loss MSE + α‖w‖² (the L2 regulariser on the output
    layer's kernel, added by the engine from `model.losses`); Adam from the preset's learning rate
    (1e-2 in `paper`) with stepwise decay (x `lr_decay_factor` every `lr_decay_epochs` epochs) to
    a floor of 1e-5 (callback preset `boneage`); batch 32; 100 epochs in `paper`. The best epoch by
    validation MAE is kept. Splits: the official validation set when present (§IV), else 10% of
    the training subjects; 10% of the training subjects are the test split when the layout has
    no labelled test set (the Kaggle layout), stratified by sex and age band.

    Args:
        data_dir: a data set in the Kaggle or official RSNA layout (see `boneage.data`).
        out_dir: run folder: `model.h5`, `model.keras`, `config.json`, `history.csv`,
            `metrics.json`, `report.html`, `predictions.csv`, `checkpoints/`.
        preset: a name in `boneage.PRESETS` (default `demo`).
        epochs: epochs (default: the preset's).
        batch_size: global batch size (default: the preset's).
        seed: seed of the split, initialisation, shuffling and augmentation.
        strategy: `auto`, `default`, `mirrored` or `multi-worker`.
        resume: continue an interrupted run in `out_dir`.
        weights: the start: `"imagenet"` (Keras' InceptionV3, downloaded once into Keras' cache and
            loaded as far as it fits: `boneage.model.load_imagenet_inception`), `"none"`, a local
            copy of Keras' InceptionV3 no-top file (loaded the same way), or a weights file of
            this same model (`.weights.h5`, or a saved `.h5`/`.keras` BoneAgeNet); None = the
            preset's (ImageNet for Table 1's rows, none for `demo`).
        verbose: 0 quiet, 1 progress.
        **overrides: `BoneAgeConfig` fields, e.g. `image_size_hw=(96, 80)`, `learning_rate=1e-3`.

    Returns:
        The test metrics (dict, as `metrics.json`).
    """
    check_run_dir(out_dir, resume)
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if batch_size is not None:
        overrides["batch_size"] = int(batch_size)
    config = get_config(preset, **overrides)
    preset_name = preset if isinstance(preset, str) else "custom"
    spec = default_spec(weights, PAPER_WEIGHTS, preset_name, paper_presets=PRETRAINED_PRESETS)
    source = pretrained_file(spec, "inception_v3", what=f"boneage preset '{preset_name}'")
    imagenet_file = source is not None and is_inception_v3_file(source)
    records = load_records(data_dir, seed=seed)
    splits = {name: records[records["split"] == name] for name in SPLIT_NAMES}
    for name, part in splits.items():
        if part.empty:
            raise DataError(
                f"too few labelled images for a {name} split ({len(records)} images in all)",
                path=data_dir,
            )
    train_mean = float(splits["train"]["age_months"].mean())
    if verbose:
        counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        print(f"Bone-age images: {counts} ({data_dir})", flush=True)
    batch = config.batch_size
    train_ds = make_dataset(
        splits["train"],
        config=config,
        training=True,
        batch_size=batch,
        seed=seed,
        drop_remainder=len(splits["train"]) >= batch,  # one traced step shape
    )
    val_ds = make_dataset(splits["val"], config=config, training=False, batch_size=batch)

    def build():
        if not imagenet_file:  # none, or a file of this same model
            model = build_model(preset, weights=source, **overrides)
            whole = [layer.name for layer in model.layers if layer.weights]
            record_trunk(model, whole, spec=spec, source=source, run_dir=out_dir, verbose=verbose)
            return model
        model = build_model(preset, **overrides)
        record = load_imagenet_inception(model, source, config, spec=spec)
        record_weights(out_dir, record, verbose=verbose)
        return model

    optimizer = functools.partial(keras.optimizers.Adam, learning_rate=config.learning_rate)
    trainer, _ = train_and_export(
        build,
        losses={"age_months": "mean_squared_error"},
        optimizer=optimizer,
        train=train_ds,
        validation=val_ds,
        out_dir=out_dir,
        epochs=config.epochs,
        config={
            "preset": preset_name,
            **config.to_dict(),
            "data_dir": os.fspath(data_dir),
            "weights": {"spec": spec, "source": source},
            "split_counts": {k: int(len(v)) for k, v in splits.items()},
            "train_mean_age_months": train_mean,
        },
        strategy=strategy,
        resume=resume,
        callbacks=lambda run_dir: callback_preset(
            CALLBACK_PRESETS["boneage"],
            run_dir,
            monitor="val_mae",
            initial_lr=config.learning_rate,
            step_every=config.lr_decay_epochs,
            step_factor=config.lr_decay_factor,
            min_lr=config.min_learning_rate,
        ),
        val_metrics=_val_mae,
        seed=seed,
        verbose=verbose,
    )
    if not trainer.chief:
        return {}  # in a multi-worker run only the chief evaluates and writes the run's files
    return evaluate_model(
        trainer.model,
        splits["test"],
        config=config,
        train_mean_months=train_mean,
        out_dir=out_dir,
        history_path=os.path.join(os.fspath(out_dir), "history.csv"),
        verbose=verbose,
        data_path=data_dir,
    )


__all__ = ["train"]
