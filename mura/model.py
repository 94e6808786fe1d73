"""DenseNet classifiers of musculoskeletal radiographs: normal (0) or abnormal (1).

The slides (paper 004) take `keras.applications.DenseNet169` and replace its 1000-way classifier by
one sigmoid unit: the `base` model reads 224x224x3 images, the modified (`paper`) model 320x320x3
images with horizontal flips and rotations up to 30 degrees, both trained with Adam (lr 1e-4, betas
0.9/0.999), batch 8, and the modified model with ReduceLROnPlateau on the validation loss (factor
0.1, patience 1). Gray radiographs enter the model as values in [0, 1]; a registered layer inside the
model repeats a single channel over three and applies the ImageNet mean and standard deviation that
Keras' DenseNet expects (its `preprocess_input`, "torch" mode), so saved models need no outside
preprocessing.

The `demo` preset is a smaller DenseNet built here from the same parts (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3
composite functions, concatenated; transition layers of BN-ReLU-Conv1x1 and 2x2 average pooling with
compression 0.5), with three dense blocks of 3, 6 and 6 composite functions, growth rate 16, a
32-filter stem and 128x128 inputs (247,541 parameters, 0.09 G multiply-adds per image, an 8x8 CAM
grid): DenseNet169 (12.6 M parameters, 6.9 G multiply-adds per 320x320 image, 75x more) is far too
slow to train on a 2-core CPU in minutes. It trains with Adam at lr 2e-3 and batch 16 for 20
epochs, and halves the learning rate after 2 epochs without progress (the slides' factor 0.1 after
1 epoch stalls a network trained from scratch before it has found the lesions). Its validation loss
can spike from one epoch to the next (batch statistics of a network trained from scratch), so the
weights to keep are the best by validation loss, as the MURA recipe's checkpoint ensemble does. Its layers carry
the same names as Keras' DenseNets (`conv1_conv`, `conv2_block1_concat`, `pool2_pool`, ..., `bn`,
`relu`, `avg_pool`), so the class activation map code finds the last dense block's features
(`relu`) in every preset.

Reference:
    Avrahami, Chernin, Hanina, "Abnormality Detection in Musculoskeletal Radiographs" (slides,
    paper 004): "Base DenseNet169 Model", "Modified DenseNet169 Model", "Model improvements and
    Fine-Tuning". Huang et al., "Densely Connected Convolutional Networks", CVPR 2017, Table 1.
    Rajpurkar et al., "MURA: Large Dataset for Abnormality Detection in Musculoskeletal
    Radiographs", 2018 (the recipe the slides follow).
"""

from __future__ import annotations

import dataclasses
import os

import keras
from keras import layers
from keras import ops

from common.options import look_up_option
from mura.presets import PRESETS
from mura.presets import MURAConfig

OUTPUT_NAME = "abnormal"
CAM_FEATURE_LAYER = "relu"
POOL_LAYER = "avg_pool"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = ("densenet121", "densenet169", "densenet201", "densenet")
_APPLICATIONS = {
    "densenet121": "DenseNet121",
    "densenet169": "DenseNet169",
    "densenet201": "DenseNet201",
}
_BN_EPSILON = 1.001e-5
#: The slides' start ("Keras DenseNet169, trained on imagenet") for the presets that follow them.
PAPER_WEIGHTS = "imagenet"
PRETRAINED_PRESETS = ("paper", "base")


def get_config(preset="paper", **overrides):
    """The configuration of a preset, with fields replaced by `overrides`.

    Args:
        preset: a name in `PRESETS`, a `MURAConfig`, or a dict of `MURAConfig` fields.
        **overrides: `MURAConfig` fields to replace.

    Returns:
        A `MURAConfig`.

    Raises:
        ValueError: unknown preset or unknown override.
    """
    fields = [f.name for f in dataclasses.fields(MURAConfig)]
    if isinstance(preset, MURAConfig):
        config = preset
    elif isinstance(preset, dict):
        _check_names(preset, fields, "config key")
        config = MURAConfig(**_normalise_fields(preset))
    elif isinstance(preset, str):
        config = PRESETS[look_up_option(preset, PRESETS)]  # hyphens or underscores
    else:
        raise ValueError(f"Unknown preset '{preset}'. Available: {sorted(PRESETS)}")
    _check_names(overrides, fields, "override")
    config = dataclasses.replace(config, **_normalise_fields(overrides))
    _validate(config)
    return config


def _check_names(names, fields, what):
    for name in names:
        if name not in fields:
            raise ValueError(f"Unknown {what} '{name}'. Available: {sorted(fields)}")


def _normalise_fields(values):
    out = dict(values)
    for key in ("input_shape", "blocks"):
        if key in out and out[key] is not None:
            out[key] = tuple(int(v) for v in out[key])
    if "weights" in out and out["weights"] is not None:
        out["weights"] = os.fspath(out["weights"])
    return out


def _validate(config):
    if config.backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone '{config.backbone}'. Available: {list(BACKBONES)}")
    shape = config.input_shape
    if len(shape) != 3 or shape[2] not in (1, 3) or min(shape[:2]) < 32:
        raise ValueError(
            f"input_shape must be (height >= 32, width >= 32, channels 1 or 3), got {shape}"
        )
    if config.backbone == "densenet":
        if not config.blocks or min(config.blocks) < 1:
            raise ValueError(f"blocks must be positive ints, got {config.blocks}")
        if config.growth_rate < 1 or config.stem_filters < 1:
            raise ValueError("growth_rate and stem_filters must be positive")
        if not 0.0 <= config.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {config.bn_momentum}")
        if not 0.0 < config.compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {config.compression}")
    if config.top_k_checkpoints < 0 or config.ensemble_size < 1:
        raise ValueError(
            "top_k_checkpoints must be >= 0 and ensemble_size >= 1, got "
            f"{config.top_k_checkpoints} and {config.ensemble_size}"
        )
    if not 0.0 <= config.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
    if config.batch_size < 1 or config.epochs < 1:
        raise ValueError(
            f"batch_size and epochs must be positive, got {config.batch_size} and {config.epochs}"
        )
    if not 0.0 <= config.dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {config.dropout_rate}")
    if config.weights is not None and not os.path.isfile(config.weights):
        raise ValueError(f"weights file not found: {config.weights}")


@keras.saving.register_keras_serializable(package="mura")
class RadiographPreprocessing(layers.Layer):
    """Gray radiograph in [0, 1] to the input DenseNet expects: three channels, ImageNet-normalised.

    A single channel is repeated over three; then each channel has the ImageNet mean subtracted and
    is divided by the ImageNet standard deviation (Keras' `densenet.preprocess_input`, "torch" mode,
    for inputs already scaled to [0, 1]).

    Args:
        mean: per-channel mean subtracted, `(r, g, b)`. Defaults to the ImageNet mean.
        std: per-channel standard deviation divided by. Defaults to the ImageNet std.

    Input shape:
        `(batch, H, W, 1)` or `(batch, H, W, 3)`, float values in [0, 1].

    Output shape:
        `(batch, H, W, 3)`.

    Reference:
        Keras applications, `keras.applications.densenet.preprocess_input`.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need three values, std > 0; got {mean}, {std}")

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels not in (1, 3):
            raise ValueError(f"RadiographPreprocessing takes 1 or 3 channels, got {channels}")
        self.built = True

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if x.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype=x.dtype)
        std = ops.convert_to_tensor(self.std, dtype=x.dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std)}


def _batch_norm(name, momentum):
    return layers.BatchNormalization(momentum=momentum, epsilon=_BN_EPSILON, name=name)


def apply_conv_block(x, growth_rate, name, bn_momentum=0.99):
    """One composite function H_l of a dense block: BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), concatenated.

    Args:
        x: feature map `(batch, H, W, C)`.
        growth_rate: k, the feature maps this block adds.
        name: layer-name prefix, e.g. `"conv2_block1"`.
        bn_momentum: momentum of the BatchNormalization moving statistics (Keras' 0.99).

    Returns:
        `(batch, H, W, C + k)`.

    Reference:
        Huang et al. 2017, §3 "Bottleneck layers"; the slides' "DenseNet - Dense Block".
    """
    y = _batch_norm(f"{name}_0_bn", bn_momentum)(x)
    y = layers.Activation("relu", name=f"{name}_0_relu")(y)
    y = layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = _batch_norm(f"{name}_1_bn", bn_momentum)(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def apply_dense_block(x, num_blocks, growth_rate, name, bn_momentum=0.99):
    """A dense block: `num_blocks` conv blocks, each fed with all the feature maps before it.

    Args:
        x: feature map `(batch, H, W, C)`.
        num_blocks: number of conv blocks.
        growth_rate: feature maps added by each conv block.
        name: layer-name prefix, e.g. `"conv2"`.
        bn_momentum: momentum of the BatchNormalization moving statistics (Keras' 0.99).

    Returns:
        `(batch, H, W, C + num_blocks * growth_rate)`.
    """
    for i in range(num_blocks):
        x = apply_conv_block(x, growth_rate, name=f"{name}_block{i + 1}", bn_momentum=bn_momentum)
    return x


def apply_transition(x, compression, name, bn_momentum=0.99):
    """A transition layer: BN-ReLU-Conv1x1 keeping `compression` of the channels, 2x2 average pool.

    Args:
        x: feature map `(batch, H, W, C)`.
        compression: fraction of channels kept, in (0, 1].
        name: layer-name prefix, e.g. `"pool2"`.
        bn_momentum: momentum of the BatchNormalization moving statistics (Keras' 0.99).

    Returns:
        `(batch, H // 2, W // 2, int(C * compression))`.

    Reference:
        Huang et al. 2017, §3 "Transition layers"; the slides' "DenseNet - Transition Layer".
    """
    x = _batch_norm(f"{name}_bn", bn_momentum)(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(int(x.shape[-1] * compression), 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def apply_densenet(x, blocks, growth_rate, stem_filters, compression=0.5, bn_momentum=0.99):
    """A DenseNet feature extractor with Keras' layer names, ending in the `relu` feature map.

    Stem: 7x7 stride-2 convolution, BN, ReLU, 3x3 stride-2 max pooling; then dense blocks separated
    by transition layers; then BN and ReLU (`bn`, `relu`: the last dense block's features).

    Args:
        x: preprocessed images `(batch, H, W, 3)`.
        blocks: conv blocks in each dense block, e.g. `(6, 12, 32, 32)` for DenseNet-169.
        growth_rate: feature maps added by each conv block (32 in DenseNet-121/169/201).
        stem_filters: filters of the stem convolution (64 in DenseNet-121/169/201).
        compression: fraction of channels a transition layer keeps (0.5 in DenseNet-BC).
        bn_momentum: momentum of the BatchNormalization moving statistics (Keras' 0.99).

    Returns:
        The last dense block's activated features `(batch, H / 2**(len(blocks) + 1), ..., C)`.

    Reference:
        Huang et al. 2017, Table 1; the slides' "DenseNet - Dense connectivity" table.
    """
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(x)
    x = layers.Conv2D(stem_filters, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _batch_norm("conv1_bn", bn_momentum)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for i, num_blocks in enumerate(blocks):
        x = apply_dense_block(x, num_blocks, growth_rate, f"conv{i + 2}", bn_momentum)
        if i < len(blocks) - 1:
            x = apply_transition(x, compression, f"pool{i + 2}", bn_momentum)
    x = _batch_norm("bn", bn_momentum)(x)
    return layers.Activation("relu", name=CAM_FEATURE_LAYER)(x)


def _keras_backbone(config, x):
    """Runs a `keras.applications` DenseNet on `x`, its layers part of the same (flat) graph."""
    factory = getattr(keras.applications, _APPLICATIONS[config.backbone])
    backbone = factory(
        include_top=False,
        weights=config.weights,
        input_tensor=x,
        pooling=None,
    )
    # Keras leaves the two padding layers unnamed (`zero_padding2d_<n>`, a process-wide counter):
    # give them the stable names of `apply_densenet`. They hold no weights.
    pads = [layer for layer in backbone.layers if isinstance(layer, layers.ZeroPadding2D)]
    for layer, name in zip(pads, ("conv1_pad", "pool1_pad"), strict=True):
        layer.name = name
    return backbone.get_layer(CAM_FEATURE_LAYER).output


def build_model(preset="paper", **overrides):
    """Builds the MURA classifier: DenseNet features, global average pooling, one sigmoid unit.

    Args:
        preset: `"paper"` (DenseNet169, 320x320x3), `"base"` (DenseNet169, 224x224x3), `"demo"`
            (small DenseNet, 128x128x3), a `MURAConfig`, or a dict of its fields.
        **overrides: `MURAConfig` fields to replace, e.g. `input_shape=(256, 256, 3)` or
            `weights="densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5"`.

    Returns:
        A functional `keras.Model` from `image` `(batch, H, W, C)` in [0, 1] to
        `{"abnormal": (batch, 1)}`, the probability that the image is abnormal.

    Raises:
        ValueError: unknown preset or override, or a bad value.

    Reference:
        Paper 004, "Base DenseNet169 Model" and "Modified DenseNet169 Model".
    """
    config = get_config(preset, **overrides)
    inputs = keras.Input(shape=config.input_shape, name="image")
    x = RadiographPreprocessing(name="preprocessing")(inputs)
    if config.backbone == "densenet":
        features = apply_densenet(
            x,
            config.blocks,
            config.growth_rate,
            config.stem_filters,
            config.compression,
            config.bn_momentum,
        )
        if config.weights is not None:
            # As keras.applications: the weights file holds the backbone (up to `relu`) only.
            keras.Model(inputs, features, name="backbone").load_weights(config.weights)
    else:
        features = _keras_backbone(config, x)
    pooled = layers.GlobalAveragePooling2D(name=POOL_LAYER)(features)
    if config.dropout_rate > 0:
        pooled = layers.Dropout(config.dropout_rate, name="top_dropout")(pooled)
    # float32 under mixed precision (common.precision)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(pooled)
    name = f"mura_{config.backbone}_{config.input_shape[0]}x{config.input_shape[1]}"
    return keras.Model(inputs, {OUTPUT_NAME: outputs}, name=name)


def explain_model(model):
    """A model with the same input that also returns the last dense block's features, for CAMs.

    Like keras-hub's `pyramid_outputs`, the maps are outputs keyed by layer name.

    Args:
        model: a model from `build_model` (or reloaded from `.h5`/`.keras`).

    Returns:
        A `keras.Model` from `image` to `{"abnormal": (batch, 1), "relu": (batch, h, w, C)}`
        sharing `model`'s layers and weights.

    Raises:
        ValueError: `model` has no `abnormal` or `relu` layer.
    """
    names = {layer.name for layer in model.layers}
    for needed in (OUTPUT_NAME, CAM_FEATURE_LAYER):
        if needed not in names:
            raise ValueError(f"model has no layer named '{needed}'; build it with build_model")
    outputs = {
        OUTPUT_NAME: model.get_layer(OUTPUT_NAME).output,
        CAM_FEATURE_LAYER: model.get_layer(CAM_FEATURE_LAYER).output,
    }
    return keras.Model(model.input, outputs, name=f"{model.name}_explain")
