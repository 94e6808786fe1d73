"""Presets of the MURA classifier: plain values, no Keras (keras-hub's `*_presets.py` shape).

`PRESETS` maps a name to a `MURAConfig`: `base` and `paper` (the slides' two DenseNet169 models)
and `demo`. `MURAConfig` is the presets' schema, a frozen dataclass of plain values (no methods
beyond `to_dict`); `mura.model.get_config` checks a configuration and `mura.model.build_model`
builds it. Importing this module imports nothing but the standard library, so
`python -m mura --help` lists the presets without TensorFlow or Keras.

Reference:
    Avrahami, Chernin, Hanina, "Abnormality Detection in Musculoskeletal Radiographs" (slides,
    paper 004): "Base DenseNet169 Model", "Modified DenseNet169 Model".
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MURAConfig:
    """One configuration of the MURA classifier: the network and the recipe that trains it.

    Args:
        backbone: `"densenet169"` (the slides' network, `keras.applications.DenseNet169`),
            `"densenet121"`, `"densenet201"`, or `"densenet"` (a DenseNet built here from `blocks`,
            `growth_rate`, `stem_filters` and `compression`, for small demos).
        input_shape: `(height, width, channels)` of the model's input in pixels; channels 3 (the
            slides: a gray radiograph repeated over three channels) or 1 (repeated inside the model).
        blocks: conv blocks per dense block (`"densenet"` only; the Keras backbones have their own).
        growth_rate: feature maps added by each conv block (`"densenet"` only).
        stem_filters: filters of the 7x7 stride-2 stem convolution (`"densenet"` only).
        compression: fraction of channels a transition layer keeps (`"densenet"` only).
        bn_momentum: momentum of the BatchNormalization moving statistics (`"densenet"` only;
            Keras' DenseNets use 0.99). A lower value lets the inference statistics follow a
            network trained from scratch at a high learning rate, whose validation loss otherwise
            jumps from epoch to epoch.
        dropout_rate: dropout before the sigmoid unit, in [0, 1); 0 adds no layer (the slides).
        weights: None (random initialisation) or the path of a local weights file for the backbone
            (e.g. Keras' `densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5` ImageNet file).
        learning_rate: Adam's initial learning rate.
        beta_1: Adam's beta 1.
        beta_2: Adam's beta 2.
        batch_size: images per training step.
        epochs: training epochs.
        reduce_lr_on_plateau: lower the learning rate when the validation loss stops falling.
        reduce_lr_factor: factor applied to the learning rate on a plateau.
        reduce_lr_patience: epochs without improvement before the learning rate is lowered.
        horizontal_flip: random left-right flips while training.
        rotation_deg: largest random rotation while training, in degrees (0: none).
        val_fraction: fraction of the training patients held out for validation.
        top_k_checkpoints: number of best epochs (by validation loss) whose weights `train` keeps
            in `RUN/checkpoints/topk/` for ensembles (the MURA paper ensembles 5; 0 keeps none).
        ensemble_size: number of those checkpoints averaged by `train`'s final evaluation and by
            default by `evaluate`/`predict` (1 = the single best model; `--ensemble K` overrides).
    """

    backbone: str = "densenet169"
    input_shape: tuple = (320, 320, 3)
    blocks: tuple = (6, 12, 32, 32)
    growth_rate: int = 32
    stem_filters: int = 64
    compression: float = 0.5
    bn_momentum: float = 0.99
    dropout_rate: float = 0.0
    weights: str | None = None
    learning_rate: float = 1e-4
    beta_1: float = 0.9
    beta_2: float = 0.999
    batch_size: int = 8
    epochs: int = 10
    reduce_lr_on_plateau: bool = True
    reduce_lr_factor: float = 0.1
    reduce_lr_patience: int = 1
    horizontal_flip: bool = True
    rotation_deg: float = 30.0
    val_fraction: float = 0.1
    top_k_checkpoints: int = 5
    ensemble_size: int = 1

    def to_dict(self):
        """The configuration as a JSON-friendly dict (tuples as lists).

        Returns:
            dict with one key per field.
        """
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


PRESETS = {
    # Slides, "Base DenseNet169 Model": 224x224x3, batch 8, Adam lr 1e-4, 10 epochs, no augmentation
    # and a constant learning rate.
    "base": MURAConfig(
        input_shape=(224, 224, 3),
        reduce_lr_on_plateau=False,
        horizontal_flip=False,
        rotation_deg=0.0,
    ),
    # Slides, "Modified DenseNet169 Model" and "Model improvements and Fine-Tuning": 320x320x3,
    # horizontal flips, rotations up to 30 degrees, ReduceLROnPlateau(factor=0.1, patience=1).
    "paper": MURAConfig(),
    # Small DenseNet for phantoms on a 2-core CPU (see the module docstring).
    "demo": MURAConfig(
        backbone="densenet",
        input_shape=(128, 128, 3),
        blocks=(3, 6, 6),
        growth_rate=16,
        stem_filters=32,
        learning_rate=2e-3,
        batch_size=16,
        epochs=20,
        reduce_lr_factor=0.5,
        reduce_lr_patience=2,
        rotation_deg=15.0,
        val_fraction=0.15,
    ),
}

# The training schedule as `common.callbacks.callback_preset` builds it (its fields), from the
# `paper` preset above. `mura.train` passes the chosen preset's values over these.
CALLBACK_PRESETS = {
    "mura": {
        "lr_factor": PRESETS["paper"].reduce_lr_factor,
        "lr_patience": PRESETS["paper"].reduce_lr_patience,
        "reference": "paper 004: ReduceLROnPlateau(monitor='val_loss', factor=0.1, patience=1)",
    },
}
