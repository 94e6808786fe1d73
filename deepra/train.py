"""Training of the whole DeepRA pipeline: two RetinaNet detectors, then the six joint models.

`train(data_dir, out_dir, preset="demo")` follows the paper:

1. Split the patients of `training.csv` 80:20 (§4.3.1; a share of the 80 carved out for
   validation), the same split for both stages, stratified by whether a patient has any damage.
2. Stage 1 (§4.2.1): a hand detector (thumb, finger1-4, wrist) on the LH/RH films and a foot
   detector (toe, finger1-4) on the LF/RF films that carry box annotations (VOC XML beside the
   films, or `boxes=` a CSV), through `common.training.Trainer` with the model's own loss
   (`losses="model"`: keras-hub's RetinaNet matches boxes to anchors inside `compute_loss`),
   Adam 1e-3, and callback preset `ra-detector` (LR x0.1 when the validation mAP at IoU 0.6 has
   not improved for 4 epochs, early stop after 5, keep the best). Right-limb films are mirrored
   (see `deepra.pipeline`).
3. Every film is run through its detector: one box per finger/toe/wrist (`RUN/detections.csv`).
4. Stage 2 (§4.3.1): the six joint models of `deepra.columns.JOINT_MODELS` on the crops found in
   stage 1 (as the paper's Table 2 counts "joint images extracted from the object detection
   stage"; `crop_source="annotated"` trains on the annotated boxes instead), MSE, Adam 1e-3,
   callback preset `ra` (LR x0.2 when the validation RMSE has not improved for 5 epochs, keep the
   best validation RMSE), horizontal flips, the preset's trainable share of the backbone, and the
   paper's balancing: every epoch all crops with a non-zero score plus as many zero-score crops
   drawn afresh.
5. The held-out 20% of patients go through the whole pipeline (detection -> crops -> joint
   models); `deepra.evaluate.evaluate_pipeline` writes `metrics.json`, `predictions.csv` and
   `report.html`.

Files of a run (CONTRACT.md, plus the pipeline's own):

    RUN/config.json        the pipeline configuration (split, presets, box priors, metric weights)
    RUN/model.h5, .keras   the hand-erosion joint model (preset `paper` = Table 2 row 1)
    RUN/models/            the other eight: detector-hand, detector-foot, hand-narrowing,
                           foot-narrowing, foot-erosion, wrist-erosion, wrist-narrowing (.h5, .keras)
    RUN/stages/<name>/     each model's training run: checkpoints/, history.csv
    RUN/history.csv        every stage's epochs, with a `model` column
    RUN/checkpoints/       state of the pipeline: which stages are finished (`--resume`)
    RUN/detections.csv     the stage-1 boxes of every film (file name, class, score, box, source)
    RUN/metrics.json, RUN/predictions.csv, RUN/report.html

Training presets (`TRAIN_PRESETS`): `paper` (ResNet-50 detectors at 1000/1400, B3/B4/B5 joint
models at 256/300, 50 detector epochs with early stopping, 200 joint epochs, batch 8 and 32, the
joint models on the detected crops) and `demo` (tiny detectors on small films for 10 epochs, the
tiny EfficientNet joint models on 96 x 96 crops for 25 epochs: all eight models on a 2-core CPU in
minutes). A detector trained for minutes places its boxes at IoU ~0.6 and confuses neighbouring
toes, and joint models trained on such crops learned nothing in the demo's epochs (held-out RMSE
of the hand-erosion model 1.57, predicting the training mean 1.59). So the demo trains the joint
models on the ANNOTATED boxes of the training films (`crop_source="annotated"`), shifted and
scaled at random by up to 15% (`crop_jitter`, as the detections err), with every crop 10% larger
than its box (`crop_margin`, also at test time) and the detections' boxes fused with their
neighbouring anchor boxes (`box_fusion`, `deepra.detector.decode_per_class`); validation and
test crops are still the detected ones (held-out RMSE of that model 1.42). The paper preset keeps
the paper's pipeline (detected crops, no jitter, margin or fusion).

`make train-ra2` (the demo on the default 64 phantom patients, seed 0: 44 training, 7
validation and 13 held-out patients) took 5.6 min on a shared 2-core CPU and reached, on the
held-out patients, weighted RMSE 0.91 for narrowing (baseline 1.56) and 1.40 for erosion
(baseline 2.47), i.e. 0.58x and 0.57x the baseline's (mAP@0.6 hand 0.68, foot 0.79). Runs differ
by about +-0.1 in these RMSEs (multi-threaded CPU training is not bit-reproducible).

Reference:
    Chaturvedi, "DeepRA", §4.2.1, §4.3.1, Tables 1-2.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from common.augment import AugmentConfig
from common.augment import make_volume_dataset
from common.callbacks import best_weights_path
from common.callbacks import callback_preset
from common.distribute import is_chief
from common.distribute import strategy_from_name
from common.distribute import strategy_name as strategy_name_of
from common.errors import DataError
from common.export import load_model
from common.export import save_all
from common.image_io import read_image
from common.options import look_up_option
from common.reports import write_csv
from common.run_config import write_config
from common.training import CHECKPOINT_DIR
from common.training import Trainer
from common.training import check_run_dir
from common.weights import default_spec
from common.weights import pretrained_file
from common.weights import record_trunk
from common.weights import record_weights
from common.weights import weighted_layers
from deepra import data
from deepra import pipeline
from deepra.column_weights import read_column_weights
from deepra.columns import JOINT_MODELS
from deepra.columns import score_max
from deepra.detector import PAPER_WEIGHTS
from deepra.detector import build_detector
from deepra.detector import check_coco_fit
from deepra.detector import compile_detector
from deepra.detector import decode_detections
from deepra.detector import decode_per_class
from deepra.detector import detector_config
from deepra.detector import mean_average_precision
from deepra.evaluate import evaluate_pipeline
from deepra.joints import build_joint_model
from deepra.joints import joint_model_config
from deepra.presets import CALLBACK_PRESETS

_COMMON = {
    "mirror_right_limbs": True,
    "test_fraction": 0.2,
    "val_fraction_of_train": 0.15,
    "joint_models": list(JOINT_MODELS),
    "crop_source": "detected",
    "boxes": None,
    "column_weights": None,
    "n_boot": 1000,
    "detector_overrides": {},
    "joint_overrides": {},
}

TRAIN_PRESETS = {
    "paper": {
        **_COMMON,
        "detectors": {"hand": "paper-hand", "foot": "paper-foot"},
        "joint_demo": False,
        "detector_epochs": 50,
        "detector_batch_size": 8,
        "joint_epochs": 200,
        "joint_batch_size": 32,
        "crop_size": None,
        "crop_source": "detected",
        "box_fusion": False,
        "crop_margin": 0.0,
        "crop_jitter": 0.0,
        "joint_min_epoch_crops": 0,
        "cluster_digits": [],
        "description": "§4.2.1 and §4.3.1: ResNet-50 RetinaNets, EfficientNet B3/B4/B5 joint models",
    },
    "demo": {
        **_COMMON,
        "detectors": {"hand": "demo-hand", "foot": "demo-foot"},
        "joint_demo": True,
        "detector_epochs": 10,
        "detector_batch_size": 4,
        "joint_epochs": 25,
        "joint_batch_size": 32,
        "crop_size": 96,
        # The demo detectors (minutes of training) place boxes at IoU ~0.6 and sometimes name a
        # toe after its neighbour: the joint models learn from the annotated boxes, jittered
        # like detections, and every crop gets a margin (see the module docstring).
        "crop_source": "annotated",
        "box_fusion": True,
        "crop_margin": 0.1,
        "crop_jitter": 0.15,
        "joint_min_epoch_crops": 256,
        "cluster_digits": ["foot"],
        # the paper's patience (5 of 200 epochs) would cut the rate within the demo's first
        # epochs, while the validation RMSE still rises as the models learn the balanced scores
        "joint_overrides": {"reduce_lr_patience": 10},
        "description": "tiny detectors and joint models for phantoms on a 2-core CPU",
    },
}

STATE_FILE = "pipeline.json"


def train_config(preset="demo", **overrides):
    """The pipeline configuration of a training preset with `overrides` applied.

    Args:
        preset: "demo" or "paper" (`TRAIN_PRESETS`).
        **overrides: keys of the preset: `detector_epochs`, `joint_epochs`, `detector_batch_size`,
            `joint_batch_size`, `crop_size` (side of the demo joint models' crops), `joint_models`
            (keys of `deepra.columns.JOINT_MODELS`; all six by default: a subset leaves columns
            without prediction and is refused), `crop_source` ("detected": the joint models train
            on the stage-1 crops, as the paper; "annotated": on the annotated boxes of the
            training films), `crop_margin` (crops enlarged by this fraction of the box on every side),
            `crop_jitter` (random shifts and zooms of training crops, fraction of the crop),
            `box_fusion` (fuse detections with their neighbouring anchor boxes),
            `boxes` (a box CSV instead of the VOC files), `column_weights` (dict column -> weight
            of the weighted metrics, or a CSV `column,weight`; default 1 for every column),
            `test_fraction`, `val_fraction_of_train`, `mirror_right_limbs`, `n_boot`,
            `detector_overrides` / `joint_overrides` (dicts of model configuration keys).

    Returns:
        dict (a copy).
    """
    preset = look_up_option(preset, TRAIN_PRESETS)  # hyphens or underscores (common.options)
    config = copy.deepcopy(TRAIN_PRESETS[preset])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"Unknown override '{unknown[0]}'. Available: {sorted(config)}")
    config.update(copy.deepcopy(overrides))
    config["preset"] = preset
    if isinstance(config["joint_models"], str):
        config["joint_models"] = [k.strip() for k in config["joint_models"].split(",") if k.strip()]
    missing = sorted(set(JOINT_MODELS) - set(config["joint_models"]))
    unknown = sorted(set(config["joint_models"]) - set(JOINT_MODELS))
    if unknown:
        raise ValueError(f"Unknown joint model '{unknown[0]}'. Available: {sorted(JOINT_MODELS)}")
    if missing:
        raise ValueError(
            f"joint_models must include all six joint models (missing {missing}): every one of "
            "the 86 columns is predicted by exactly one of them"
        )
    if config["crop_source"] not in ("detected", "annotated"):
        raise ValueError(
            f"Unknown crop_source '{config['crop_source']}'. Available: ['annotated', 'detected']"
        )
    for key in ("detector_epochs", "joint_epochs", "detector_batch_size", "joint_batch_size"):
        if int(config[key]) < 1:
            raise ValueError(f"{key} must be a positive integer. Received: {config[key]}")
    return config


def joint_model_settings(config, key):
    """The joint-model configuration of one of the six models within a pipeline configuration."""
    overrides = dict(config.get("joint_overrides") or {})
    if config["joint_demo"] and config.get("crop_size"):
        overrides.setdefault("image_size_hw", (int(config["crop_size"]),) * 2)
    overrides.setdefault("batch_size", int(config["joint_batch_size"]))
    overrides.setdefault("epochs", int(config["joint_epochs"]))
    return joint_model_config(key, demo=bool(config["joint_demo"]), **overrides)


def detector_settings(config, kind):
    """The detector configuration of the hand or foot detector within a pipeline configuration."""
    overrides = dict(config.get("detector_overrides") or {})
    overrides.setdefault("batch_size", int(config["detector_batch_size"]))
    overrides.setdefault("epochs", int(config["detector_epochs"]))
    return detector_config(config["detectors"][kind], **overrides)


# ---------------------------------------------------------------------------------------------
# Pipeline state (for --resume)


def _state_path(out_dir):
    return Path(out_dir) / CHECKPOINT_DIR / STATE_FILE


def _read_state(out_dir):
    path = _state_path(out_dir)
    state = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(state.get("finished"), dict):
        state["finished"] = {}
    return state


def _write_state(out_dir, state):
    path = _state_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _check_new_run(out_dir, resume):
    """Refuses to start afresh where a run already trained something (nothing is overwritten)."""
    check_run_dir(out_dir, resume)
    if resume:
        return
    stages = Path(out_dir) / "stages"
    if _state_path(out_dir).is_file() or (stages.is_dir() and any(stages.iterdir())):
        raise DataError(
            "this run folder already holds a training run; pass --resume to continue it or "
            "choose another --out-dir",
            path=out_dir,
        )


# ---------------------------------------------------------------------------------------------
# Stage 1: detectors


def _detector_val_map(targets, predictions, *, holder, image_shape_hw, class_names, iou):
    """Validation mAP at IoU `iou` from the raw head outputs and the padded targets."""
    decoded = decode_per_class(holder["model"], predictions, image_shape_hw)
    found = decode_detections(decoded, class_names, best_per_class=False)
    found = found.rename(columns={"image_index": "image"})
    boxes = np.asarray(targets["boxes"])
    labels = np.asarray(targets["labels"])
    rows = [
        (i, class_names[int(lab)], *box)
        for i in range(len(labels))
        for box, lab in zip(boxes[i], labels[i], strict=True)
        if lab >= 0
    ]
    truth = pd.DataFrame(rows, columns=["image", "label", "xmin", "ymin", "xmax", "ymax"])
    return {"map": mean_average_precision(found, truth, class_names, iou)["mAP"]}


def _train_detector(kind, boxes, *, config, out_dir, strategy, resume, seed, verbose):
    """Trains one detector; returns the model (best validation mAP weights)."""
    settings = detector_settings(config, kind)
    mirror = bool(config["mirror_right_limbs"])
    train_boxes = boxes[boxes["split"] == "train"]
    val_boxes = boxes[boxes["split"] == "val"]
    if len(train_boxes) == 0:
        raise DataError(
            f"no box annotations of {kind} films in the training split (VOC XML beside the films "
            "or a box CSV): the detector cannot be trained",
            path=config.get("boxes") or config["data_dir"],
        )
    batch = int(settings["batch_size"])
    train_ds = data.make_detector_dataset(
        train_boxes,
        config=settings,
        batch_size=batch,
        training=True,
        seed=seed,
        mirror_right_limbs=mirror,
    )
    val_ds = None
    val_metrics = None
    holder = {}
    if len(val_boxes):
        val_ds = data.make_detector_dataset(
            val_boxes, config=settings, batch_size=batch, mirror_right_limbs=mirror
        )
        shape = val_ds.element_spec[0].shape
        val_metrics = functools.partial(
            _detector_val_map,
            holder=holder,
            image_shape_hw=(int(shape[1]), int(shape[2])),
            class_names=list(settings["class_names"]),
            iou=float(settings["eval_iou_threshold"]),
        )
    name = pipeline.DETECTOR_NAMES[kind]
    stage_dir = Path(out_dir) / "stages" / name

    def build():
        model = build_detector(config["detectors"][kind], **_detector_build_overrides(settings))
        record = getattr(model, "weights_record", None)
        if record is not None:  # COCO
            record_weights(out_dir, record, key=name, verbose=verbose)
            return model
        source = settings.get("encoder_weights") or None
        encoder = [layer.name for layer in weighted_layers(model.backbone.image_encoder)]
        spec = source or "none"
        record_trunk(
            model, encoder, spec=spec, source=source, run_dir=out_dir, key=name, verbose=verbose
        )
        return model

    monitor = {} if val_ds is not None else {"monitor": "loss", "mode": "min"}
    trainer = Trainer(
        build,
        losses="model",
        optimizer=functools.partial(keras.optimizers.Adam, settings["learning_rate"]),
        compile_fn=lambda model, optimizer: compile_detector(model, settings, optimizer=optimizer),
        strategy=strategy,
        run_dir=stage_dir,
        callbacks=lambda run_dir: callback_preset(
            CALLBACK_PRESETS["ra-detector"],
            run_dir,
            lr_factor=settings["reduce_lr_factor"],
            lr_patience=settings["reduce_lr_patience"],
            stop_patience=settings["early_stopping_patience"],
            **monitor,
        ),
        val_metrics=val_metrics,
        seed=seed,
        verbose=verbose,
    )
    holder["model"] = trainer.model
    if verbose:
        print(
            f"Stage 1, {name}: {train_boxes['image'].nunique()} training films, "
            f"{val_boxes['image'].nunique()} validation films, {settings['epochs']} epochs",
            flush=True,
        )
    trainer.fit(train_ds, val_ds, epochs=int(settings["epochs"]), resume=resume)
    best = best_weights_path(stage_dir)
    if best is not None:
        trainer.model.load_weights(best)
    trainer.model.deepra_config = settings
    return trainer.model


def _detector_build_overrides(settings):
    """The keys of a detector configuration that `build_detector` takes as overrides."""
    skip = {"kind", "num_classes", "description"}
    return {k: v for k, v in settings.items() if k not in skip}


# ---------------------------------------------------------------------------------------------
# Stage 2: joint models


def _joint_val_rmse(targets, predictions, *, outputs, maxima):
    """Validation RMSE over every output of every crop, predictions clipped into the score range."""
    errors = []
    for name in outputs:
        pred = np.clip(np.asarray(predictions[name]).reshape(-1), 0.0, maxima[name])
        errors.append(pred - np.asarray(targets[name]).reshape(-1))
    return {"rmse": float(np.sqrt(np.mean(np.square(np.concatenate(errors)))))}


def _output_maxima(records, outputs):
    maxima = {}
    for name in outputs:
        columns = records[f"{name}__column"].dropna().unique()
        maxima[name] = float(max(score_max(c) for c in columns)) if len(columns) else np.inf
    return maxima


def _balanced_epoch(records, crops, outputs, *, batch_size, seed, flip, jitter=0.0, min_crops=0):
    """`epoch -> dataset`: non-zero crops plus as many zero crops drawn afresh each epoch (§4.3.1).

    With `min_crops`, a balanced set smaller than that is drawn again (with replacement) up to
    `min_crops` crops, so that a model with few crops still takes enough steps per epoch.
    """
    values = records[outputs].to_numpy(np.float32)
    nonzero = np.flatnonzero(np.any(values != 0, axis=1))
    zero = np.flatnonzero(~np.any(values != 0, axis=1))

    def make(epoch):
        rng = np.random.default_rng([int(seed), int(epoch)])
        if len(nonzero):
            picked = rng.choice(zero, size=min(len(nonzero), len(zero)), replace=False)
            index = np.concatenate([nonzero, picked.astype(np.int64)])
        else:
            index = np.arange(len(values))
        if len(index) and len(index) < min_crops:
            index = np.concatenate(
                [index, rng.choice(index, size=int(min_crops) - len(index), replace=True)]
            )
        # whole batches only (one traced step); the extra crops are drawn from the same epoch
        extra = (-len(index)) % batch_size
        if extra and len(index):
            index = np.concatenate([index, rng.choice(index, size=extra, replace=True)])
        targets = {name: values[index, k : k + 1] for k, name in enumerate(outputs)}
        h, w = crops.shape[1:3]
        augment = AugmentConfig(
            flip_lr=flip,
            translate_px=(jitter * w, jitter * h),
            zoom_range=(1.0 - jitter, 1.0 + jitter),
            seed=int(seed) + int(epoch),
        )
        return make_volume_dataset(
            crops[index],
            targets,
            batch_size=batch_size,
            training=True,
            seed=int(seed) + int(epoch),
            augment=augment if flip or jitter else None,
        )

    return make


def train_joint_model(
    key, records, *, config, out_dir, strategy="default", resume=False, seed=0, verbose=0
):
    """Trains one of the six joint models alone, with the recipe of `train` (§4.3.1).

    Args:
        key: a key of `deepra.columns.JOINT_MODELS`, e.g. "hand-erosion".
        records: its crop records (`deepra.data.joint_records`) with a `split` column
            ("train", "val"; other rows are ignored); the crops are cut from the records' boxes.
        config: a pipeline configuration (`train_config`, e.g. `train_config("demo",
            crop_size=64)`).
        out_dir: the model's run folder (checkpoints/, history.csv).
        strategy: a strategy name or object.
        resume: continue from the checkpoints in `out_dir`.
        seed: seed of initialisation, balancing, shuffling and augmentation.
        verbose: 0 quiet, 1 progress.

    Returns:
        the trained keras model (best validation RMSE weights, or best training loss without a
        validation split).
    """
    if isinstance(strategy, str):
        strategy = strategy_from_name(strategy)
    return _train_joint_model(
        key,
        records,
        config=config,
        out_dir=out_dir,
        strategy=strategy,
        resume=resume,
        seed=seed,
        verbose=verbose,
    )


def _train_joint_model(key, records, *, config, out_dir, strategy, resume, seed, verbose):
    """Trains one joint model on its crop records (with `split`); returns the model."""
    settings = joint_model_settings(config, key)
    outputs = list(settings["output_names"])
    train = records[records["split"] == "train"].reset_index(drop=True)
    val = records[records["split"] == "val"].reset_index(drop=True)
    if len(train) == 0:
        raise DataError(f"no training crops for the {key} model (empty training split?)")
    size = settings["image_size_hw"]
    crops = data.extract_crops(train, size)
    batch = int(settings["batch_size"])
    train_fn = _balanced_epoch(
        train,
        crops,
        outputs,
        batch_size=batch,
        seed=seed,
        flip=bool(settings["flip_lr"]),
        jitter=float(config.get("crop_jitter", 0.0)),
        min_crops=int(config.get("joint_min_epoch_crops", 0)),
    )
    val_ds, val_metrics = None, None
    monitor = {"monitor": "loss"}
    if len(val):
        val_crops = data.extract_crops(val, size)
        val_ds = make_volume_dataset(
            val_crops,
            {name: val[name].to_numpy(np.float32)[:, None] for name in outputs},
            batch_size=max(batch, 64),
            training=False,
        )
        val_metrics = functools.partial(
            _joint_val_rmse, outputs=outputs, maxima=_output_maxima(val, outputs)
        )
        monitor = {}
    stage_dir = Path(out_dir) / "stages" / key
    if verbose:
        counts = len(data.balance_zero_scores(train, outputs, seed=seed))
        print(
            f"Stage 2, {key}: {len(train)} training crops ({counts} per balanced epoch), "
            f"{len(val)} validation crops, {settings['epochs']} epochs",
            flush=True,
        )

    def build():
        model = build_joint_model(settings)
        trunk = [layer.name for layer in weighted_layers(model.get_layer("backbone"))]
        source = settings["backbone_weights"]
        spec = config.get("weights_spec", "none") if source else "none"
        record_trunk(
            model, trunk, spec=spec, source=source, run_dir=out_dir, key=key, verbose=verbose
        )
        return model

    trainer = Trainer(
        build,
        losses={name: settings["loss"] for name in outputs},
        optimizer=functools.partial(keras.optimizers.Adam, settings["learning_rate"]),
        strategy=strategy,
        run_dir=stage_dir,
        callbacks=lambda run_dir: callback_preset(
            CALLBACK_PRESETS["ra"],
            run_dir,
            lr_factor=settings["reduce_lr_factor"],
            lr_patience=settings["reduce_lr_patience"],
            **monitor,
        ),
        val_metrics=val_metrics,
        seed=seed,
        verbose=verbose,
    )
    trainer.fit(train_fn, val_ds, epochs=int(settings["epochs"]), resume=resume)
    best = best_weights_path(stage_dir)
    if best is not None:
        trainer.model.load_weights(best)
    return trainer.model


# ---------------------------------------------------------------------------------------------


def _resolve_weights(weights, config, preset):
    """Puts the models' starts into the overrides of a pipeline config (`config["weights_spec"]`).

    `coco` (the `paper` preset's default, as §4.2.1 and §4.3.1): the detectors' backbone from
    keras-hub's COCO RetinaNet, the joint models' EfficientNets from ImageNet. `imagenet`: the
    joint models from ImageNet, the detectors from scratch (keras-hub's ResNet-50 encoder has no
    keras.applications ImageNet file; its COCO backbone is `coco`). `none`: all from scratch. A
    file or folder: as before (see `train`).
    """
    spec = default_spec(weights, PAPER_WEIGHTS, preset)
    config["weights_spec"] = spec
    if spec == "none":
        return
    if spec in ("imagenet", "coco"):
        found = {}
        for key in JOINT_MODELS:
            backbone = joint_model_settings(config, key)["backbone"]
            found[key] = pretrained_file(
                "imagenet", backbone, what=f"deepra joint model {key} ({backbone})"
            )
        config["backbone_weights_by_model"] = found
        if spec == "coco":
            for kind in ("hand", "foot"):
                check_coco_fit(detector_settings(config, kind))
            overrides = dict(config.get("detector_overrides") or {})
            config["detector_overrides"] = {**overrides, "pretrained": "coco"}
        return
    path = Path(spec)
    if not path.exists():
        raise DataError("weights file not found", path=path)
    joint = dict(config.get("joint_overrides") or {})
    if path.is_dir():
        # keras.applications' file names: efficientnetb3_notop.h5, ...
        found = {}
        for key in JOINT_MODELS:
            backbone = joint_model_settings(config, key)["backbone"]
            candidate = path / f"{backbone}_notop.h5"
            if candidate.is_file():
                found[key] = os.fspath(candidate)
        encoder = path / "resnet50.weights.h5"
        if encoder.is_file():
            detector = dict(config.get("detector_overrides") or {})
            detector["encoder_weights"] = os.fspath(encoder)
            config["detector_overrides"] = detector
        if not found and not encoder.is_file():
            raise DataError(
                "no weights in this folder (expected <backbone>_notop.h5, e.g. "
                "efficientnetb3_notop.h5, or resnet50.weights.h5)",
                path=path,
            )
        config["backbone_weights_by_model"] = found
    else:
        joint["backbone_weights"] = os.fspath(path)
        config["joint_overrides"] = joint


def _combined_history(out_dir, names):
    frames = []
    for name in names:
        path = Path(out_dir) / "stages" / name / "history.csv"
        if path.is_file():
            frame = pd.read_csv(path)
            frame.insert(0, "model", name)
            frames.append(frame)
    if frames:
        write_csv(Path(out_dir) / "history.csv", pd.concat(frames, ignore_index=True))


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
    """Trains the two detectors and the six joint models, then evaluates on the held-out patients.

    Args:
        data_dir: an RA2-DREAM data set (`<root>/train/training.csv`, films, VOC XML boxes).
        out_dir: the run folder (see the module docstring for its files).
        preset: "demo" (default) or "paper" (`TRAIN_PRESETS`).
        epochs: epochs of every model (default: the preset's `detector_epochs`, `joint_epochs`).
        batch_size: batch of every model (default: the preset's).
        seed: seed of the patient split, initialisation, balancing, shuffling and flips.
        strategy: "auto", "default", "mirrored" or "multi-worker".
        resume: continue an interrupted run in `out_dir` (finished models are kept, an
            interrupted one continues from its last epoch).
        weights: the models' start: `"coco"` (the detectors' backbone from keras-hub's COCO
            RetinaNet, the joint models' EfficientNets from ImageNet, as the paper), `"imagenet"`
            (the joint models from ImageNet, the detectors from scratch), `"none"`, a local
            weights file for the joint models' EfficientNet backbones, or a folder with
            keras.applications' `efficientnetb{3,4,5}_notop.h5` (and `resnet50.weights.h5` for
            the detectors' encoder); None = the preset's (`paper`: coco; `demo`: none).
        verbose: 0 quiet, 1 progress.
        **overrides: pipeline configuration keys (`train_config`).

    Returns:
        The test metrics (dict, as `metrics.json`).
    """
    started = time.time()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    out_dir = Path(out_dir)
    _check_new_run(out_dir, resume)
    # `epochs` / `batch_size` set every model's; a stage's own override (e.g. joint_epochs) wins
    for key in ("detector", "joint"):
        if epochs is not None:
            overrides.setdefault(f"{key}_epochs", int(epochs))
        if batch_size is not None:
            overrides.setdefault(f"{key}_batch_size", int(batch_size))
    config = train_config(preset, **overrides)
    _resolve_weights(weights, config, preset)
    config["data_dir"] = os.fspath(data_dir)

    films = data.read_records(data_dir)
    for path in films["path"]:
        read_image(path)  # a corrupt film stops the run here, before anything is written
    films["split"] = data.split_patients(
        films,
        test_fraction=float(config["test_fraction"]),
        val_fraction_of_train=float(config["val_fraction_of_train"]),
        seed=seed,
    ).to_numpy()
    boxes = data.read_boxes(config["boxes"] or data.find_layout(data_dir)["training_csv"].parent)
    split_of = {str(Path(p).resolve()): s for p, s in zip(films["path"], films["split"])}
    boxes["split"] = [split_of.get(str(Path(p).resolve())) for p in boxes["image"]]
    boxes = boxes[boxes["split"].notna()].reset_index(drop=True)
    column_weights = read_column_weights(config["column_weights"])

    strategy_name = strategy_name_of(strategy)
    strategy = strategy_from_name(strategy) if isinstance(strategy, str) else strategy
    chief = is_chief(strategy)
    patients = films.drop_duplicates("patient_id")
    split_counts = {s: int((patients["split"] == s).sum()) for s in ("train", "val", "test")}
    if verbose:
        print(
            "Patients: "
            + ", ".join(f"{k} {v}" for k, v in split_counts.items())
            + f"; {len(films)} films, {boxes['image'].nunique()} with box annotations",
            flush=True,
        )
    train_films = films[films["split"] == "train"]
    run_config = {
        "package": "deepra",
        **config,
        "seed": int(seed),
        "strategy": strategy_name,
        "replicas": strategy.num_replicas_in_sync,
        "resume": bool(resume),
        "split_counts": split_counts,
        "models": list(pipeline.MODEL_NAMES),
        "main_model": pipeline.MAIN_MODEL,
        "detectors": {
            kind: {
                "preset": config["detectors"][kind],
                **{
                    k: detector_settings(config, kind)[k]
                    for k in ("image_min_side", "image_max_side", "class_names")
                },
            }
            for kind in ("hand", "foot")
        },
        "detector_presets": dict(config["detectors"]),
        "joint_settings": {
            key: {
                k: joint_model_settings(config, key)[k]
                for k in ("backbone", "image_size_hw", "output_names", "epochs", "batch_size")
            }
            for key in JOINT_MODELS
        },
        "box_priors": pipeline.box_priors(boxes[boxes["split"] == "train"], train_films),
        "column_weights": column_weights,
    }
    if chief:
        write_config(out_dir, run_config, echo=verbose > 1)
    state = _read_state(out_dir) if resume else {"finished": {}}
    if chief:
        _write_state(out_dir, state)

    def finished(name, epochs):
        """The saved model of a stage that a resumed run finished with the same epochs, or None."""
        path = _model_file(out_dir, name)
        if resume and state["finished"].get(name) == int(epochs) and path.is_file():
            if verbose:
                print(f"{name}: finished before, loaded from {path}", flush=True)
            return load_model(path)
        return None

    def mark(name, model, epochs):
        if chief:
            if name == pipeline.MAIN_MODEL:
                save_all(model, out_dir)
            else:
                save_all(model, out_dir / "models", stem=name)
            state["finished"][name] = int(epochs)
            _write_state(out_dir, state)

    # Stage 1
    detectors = {}
    for kind in ("hand", "foot"):
        name = pipeline.DETECTOR_NAMES[kind]
        epochs_of_stage = detector_settings(config, kind)["epochs"]
        detectors[kind] = finished(name, epochs_of_stage)
        if detectors[kind] is not None:
            detectors[kind].deepra_config = detector_settings(config, kind)
            continue
        kind_boxes = boxes[[pipeline.limb_kind(_limb(p)) == kind for p in boxes["image"]]]
        detectors[kind] = _train_detector(
            kind,
            kind_boxes,
            config=config,
            out_dir=out_dir,
            strategy=strategy,
            resume=resume,
            seed=seed,
            verbose=verbose,
        )
        mark(name, detectors[kind], epochs_of_stage)
    if verbose:
        print(f"Stage 1: detecting fingers, toes and wrists on {len(films)} films", flush=True)
    detections = pipeline.detect_films(
        detectors,
        films,
        priors=run_config["box_priors"],
        mirror_right_limbs=bool(config["mirror_right_limbs"]),
        box_fusion=bool(config["box_fusion"]),
        cluster_digits=tuple(config["cluster_digits"]),
    )
    detections["split"] = detections["image"].map(
        {str(p): s for p, s in zip(films["path"], films["split"])}
    )
    if chief:
        write_csv(out_dir / "detections.csv", detections.drop(columns=["image"]))

    # Stage 2
    crop_boxes = detections
    if config["crop_source"] == "annotated":
        # training films: their annotated boxes where they have them; the validation films
        # (model selection) and the rest: the detections, as at test time
        annotated = boxes[boxes["split"] == "train"]
        have = set(annotated["image"].map(lambda p: str(Path(p).resolve())))
        rest = detections[[str(Path(p).resolve()) not in have for p in detections["image"]]]
        crop_boxes = pd.concat([annotated, rest], ignore_index=True)
    crop_boxes = pipeline.grow_boxes(crop_boxes, float(config["crop_margin"]))
    joint_models = {}
    run_config["crop_counts"] = {}
    for key in JOINT_MODELS:
        stage_config = {**config, "joint_overrides": _joint_overrides_for(config, key)}
        epochs_of_stage = joint_model_settings(stage_config, key)["epochs"]
        records = data.joint_records(films, crop_boxes, key)
        run_config["crop_counts"][key] = {
            split: int((records["split"] == split).sum()) if len(records) else 0
            for split in ("train", "val", "test")
        }
        joint_models[key] = finished(key, epochs_of_stage)
        if joint_models[key] is not None:
            continue
        joint_models[key] = _train_joint_model(
            key,
            records,
            config=stage_config,
            out_dir=out_dir,
            strategy=strategy,
            resume=resume,
            seed=seed,
            verbose=verbose,
        )
        mark(key, joint_models[key], epochs_of_stage)
    if chief:
        _combined_history(out_dir, pipeline.MODEL_NAMES)
        write_config(out_dir, run_config, echo=False)
    if not chief:
        return {}
    test_films = films[films["split"] == "test"]
    metrics = evaluate_pipeline(
        detectors,
        joint_models,
        test_films,
        detections=detections[detections["split"] == "test"],
        annotations=boxes[boxes["split"] == "test"],
        config=run_config,
        train_films=films[films["split"] != "test"],
        out_dir=out_dir,
        history_path=out_dir / "history.csv",
        seed=seed,
        verbose=verbose,
        data_path=data_dir,
    )
    if verbose:
        print(f"Training and evaluation took {time.time() - started:.0f} s.", flush=True)
    return metrics


def _model_file(out_dir, name):
    if name == pipeline.MAIN_MODEL:
        return Path(out_dir) / "model.keras"
    return Path(out_dir) / "models" / f"{name}.keras"


def _joint_overrides_for(config, key):
    overrides = dict(config.get("joint_overrides") or {})
    by_model = config.get("backbone_weights_by_model") or {}
    if key in by_model:
        overrides["backbone_weights"] = by_model[key]
    return overrides


def _limb(path):
    match = data.FILM_PATTERN.match(Path(path).name)
    if match is None:
        raise DataError("cannot tell the limb from the film's name", path=path)
    return match["limb"].upper()
