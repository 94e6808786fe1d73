"""BoneAgeNet: an InceptionV3 scaled in width (β) and depth, with a sex input, regressing age in months.

The backbone is Keras' InceptionV3 (`keras.applications.InceptionV3`) written here as a configurable
builder, because the application cannot change its width or its block counts. Its architecture is
data (`inception_blocks`), read both by the Keras builder (`apply_inception_v3`) and by an exact,
build-free parameter counter (`count_params`), so the ~78M-parameter paper preset can be sized
without allocating it.

Width. Every convolution's filters are multiplied by β and rounded half up,
`scaled_filters(f, beta) = max(1, floor(f * beta + 0.5))` (the paper multiplies "the original
number of filters of each convolutional layer by a factor β", §V, and does not say how it rounds).
Each branch is rounded on its own, so a block's width is the sum of rounded branches (the final
block has 2869 channels at β = 1.4, not round(2048 * 1.4) = 2867).

Depth. The three block kinds the paper scales (§VI, Table 1), in Keras' naming:
`Mixed5` (the 17x17 blocks with 160-filter 7x7 branches, Keras' `mixed5` and `mixed6`),
`Mixed7` (the 17x17 block with 192 filters, `mixed7`) and `Mixed9` (the 8x8 blocks, `mixed9` and
`mixed10`). Blocks are numbered in order as Keras does (`mixed0`, `mixed1`, ...), so with the
repeats 2/1/2 every block name equals Keras'; with 4/3/3 the last block is `mixed15`.

Head (§V, Fig. 1). GAP over the last block, [dropout,] a dense layer for the sex input (1 = male),
concatenation, [a hidden dense layer,] one linear unit `age_months` whose kernel carries the L2
penalty α‖w‖² of the paper's loss. The text does not give the head's sizes (they are only drawn in
Fig. 1), so they are our choices: the sex dense layer has 32 ReLU units, as in the RSNA 2017
winner the paper says it resembles (§II); the Final model's hidden layer has round(2048·β) = 2867
ReLU units, the width that reproduces Table 1's step from ~69M ("Final no FC layer") to ~78M
("Final"); its dropout rate is 0.5 (the paper picks "the maximum possible rate" that still
converged, without a number); α = 1e-4 (a "common value").

Demo. The `demo` preset keeps the architecture but is small (β 0.14, one block of each scaled
kind, 192 x 160 input) and drops the stem's first max pooling (`stem_pool1=False`, weight-free),
so its last block is 10 x 8 instead of 4 x 3: the class activation maps (§VI) then resolve the
hand on phantoms (on a 4 x 3 map the CAM only leaned to it). Every paper preset keeps Keras'
stem.

Parameter counts (1-channel 300x300 input; Table 1 of the paper beside ours, `count_params`):

| preset               | β   | 5/7/9 | Table 1 | ours (all params, incl. 2 BN statistics per channel) |
|----------------------|-----|-------|---------|------------|
| baseline             | 1.0 | 2/1/2 | ~28M    | 21,804,353 |
| modified_1           | 1.2 | 4/1/2 | ~36M    | 36,243,552 |
| modified_2           | 1.3 | 5/1/3 | ~55M    | 55,688,354 |
| modified_3           | 1.2 | 4/3/3 | ~51M    | 51,152,674 |
| modified_4           | 1.0 | 6/4/4 | ~47M    | 47,167,041 |
| modified_5           | 1.2 | 5/4/4 | ~65M    | 65,419,824 |
| modified_6           | 1.1 | 6/5/5 | ~66M    | 66,928,016 |
| final_no_fc          | 1.4 | 4/3/3 | ~69M    | 69,709,920 |
| final_no_fc_no_sex   | 1.4 | 4/3/3 | ~69M    | 69,709,824 |
| paper (Final)        | 1.4 | 4/3/3 | ~78M    | 78,029,920 |

(`count_params` and the test file hold the exact figures.) Every row but the first agrees with
Table 1 to the table's precision (our figures are a little above it; truncated, they match). The
baseline as the text describes it (InceptionV3, GAP, the sex dense layer, one output unit) has
21.8M parameters: Keras' InceptionV3 without top alone has 21,802,784 on RGB input and the head
adds ~2k, so Table 1's ~28M cannot be this architecture, while the Modified and Final rows, built
from the same blocks, do match. We keep the architecture the text describes and report the
difference. The rounding rule cannot explain it (β = 1), nor can the 1-channel input (-576).

Reference:
    J. Ma, "Designing a Bone Age Estimation CNN-Model using Hyperparameter Optimization",
    Human Data Analytics 2020-2021 (paper 003), §III, §V, §VI, Fig. 1, Table 1.
    C. Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import keras
from keras import layers

from boneage.presets import PAPER_INPUT_HW  # noqa: F401  (re-exported)
from boneage.presets import PAPER_TRAINING  # noqa: F401  (re-exported)
from boneage.presets import PRESETS
from boneage.presets import BoneAgeConfig
from common.options import look_up_option

MIXED_KINDS = ("mixed5", "mixed7", "mixed9")

#: The start of the paper's presets: Keras' ImageNet InceptionV3, as the RSNA 2017 winner the
#: paper builds on (§II; the paper itself does not say). `demo` starts from scratch.
PAPER_WEIGHTS = "imagenet"


#: Table 1's rows start as the paper's model did (`PAPER_WEIGHTS`); the demo from scratch.
PRETRAINED_PRESETS = tuple(name for name in PRESETS if name != "demo")


def get_config(preset="paper", **overrides) -> BoneAgeConfig:
    """Returns the validated `BoneAgeConfig` of a preset with overrides applied.

    Args:
        preset: a `PRESETS` name, a `BoneAgeConfig`, or a dict of `BoneAgeConfig` fields.
        **overrides: `BoneAgeConfig` fields to replace.

    Returns:
        A `BoneAgeConfig`.
    """
    if isinstance(preset, BoneAgeConfig):
        config = preset
    elif isinstance(preset, dict):
        config = _from_dict(preset)
    elif isinstance(preset, str):
        config = PRESETS[look_up_option(preset, PRESETS)]  # hyphens or underscores
    else:
        raise ValueError(f"Unknown preset '{preset}'. Available: {sorted(PRESETS)}")
    if overrides:
        config = dataclasses.replace(config, **_check_fields(overrides))
    return _normalised(config).validate()


def _check_fields(values):
    known = [f.name for f in dataclasses.fields(BoneAgeConfig)]
    for key in values:
        if key not in known:
            raise ValueError(f"Unknown option '{key}'. Available: {known}")
    return dict(values)


def _from_dict(values):
    return BoneAgeConfig(**_check_fields(values))


def _normalised(config):
    height, width = config.image_size_hw
    return dataclasses.replace(
        config,
        image_size_hw=(int(height), int(width)),
        channels=int(config.channels),
        width_factor=float(config.width_factor),
        num_mixed5=int(config.num_mixed5),
        num_mixed7=int(config.num_mixed7),
        num_mixed9=int(config.num_mixed9),
        use_sex=bool(config.use_sex),
        sex_units=int(config.sex_units),
        hidden_units=int(config.hidden_units),
        dropout_rate=float(config.dropout_rate),
        l2=float(config.l2),
        output_bias_months=float(config.output_bias_months),
        batchnorm_momentum=float(config.batchnorm_momentum),
        stem_pool1=bool(config.stem_pool1),
        learning_rate=float(config.learning_rate),
        min_learning_rate=float(config.min_learning_rate),
        lr_decay_factor=float(config.lr_decay_factor),
        lr_decay_epochs=int(config.lr_decay_epochs),
        batch_size=int(config.batch_size),
        epochs=int(config.epochs),
        description=str(config.description),
    )


def stepwise_learning_rate(epoch, config="paper") -> float:
    """Returns the learning rate of a 0-based epoch: stepwise decay with a floor (§V).

    Args:
        epoch: 0-based epoch index.
        config: a preset name, `BoneAgeConfig` or dict.

    Returns:
        `max(min_learning_rate, learning_rate * lr_decay_factor ** (epoch // lr_decay_epochs))`.
    """
    config = get_config(config)
    steps = int(epoch) // config.lr_decay_epochs
    return max(config.min_learning_rate, config.learning_rate * config.lr_decay_factor**steps)


# --------------------------------------------------------------------------- architecture as data


def scaled_filters(filters, width_factor) -> int:
    """Returns `max(1, floor(filters * width_factor + 0.5))`: β-scaled filters, rounded half up.

    Args:
        filters: InceptionV3's filter count for the convolution.
        width_factor: β.

    Returns:
        The integer filter count (β = 1 returns `filters` unchanged).
    """
    return max(1, int(math.floor(filters * float(width_factor) + 0.5 + 1e-9)))


def _conv(filters, kh, kw, strides=1, padding="same"):
    return ("conv", filters, kh, kw, strides, padding)


_AVG = ("avgpool",)
_MAX = ("maxpool",)


def _fork(*convs):
    return ("fork",) + tuple(convs)


def _block_35(pool_filters):
    return (
        ("branch1x1", (_conv(64, 1, 1),)),
        ("branch5x5", (_conv(48, 1, 1), _conv(64, 5, 5))),
        ("branch3x3dbl", (_conv(64, 1, 1), _conv(96, 3, 3), _conv(96, 3, 3))),
        ("branch_pool", (_AVG, _conv(pool_filters, 1, 1))),
    )


def _block_17(mid):
    return (
        ("branch1x1", (_conv(192, 1, 1),)),
        ("branch7x7", (_conv(mid, 1, 1), _conv(mid, 1, 7), _conv(192, 7, 1))),
        (
            "branch7x7dbl",
            (
                _conv(mid, 1, 1),
                _conv(mid, 7, 1),
                _conv(mid, 1, 7),
                _conv(mid, 7, 1),
                _conv(192, 1, 7),
            ),
        ),
        ("branch_pool", (_AVG, _conv(192, 1, 1))),
    )


_STEM = (
    ("conv1", _conv(32, 3, 3, strides=2, padding="valid")),
    ("conv2", _conv(32, 3, 3, padding="valid")),
    ("conv3", _conv(64, 3, 3)),
    ("pool1", _MAX),
    ("conv4", _conv(80, 1, 1, padding="valid")),
    ("conv5", _conv(192, 3, 3, padding="valid")),
    ("pool2", _MAX),
)

_REDUCTION_35_TO_17 = (
    ("branch3x3", (_conv(384, 3, 3, strides=2, padding="valid"),)),
    (
        "branch3x3dbl",
        (_conv(64, 1, 1), _conv(96, 3, 3), _conv(96, 3, 3, strides=2, padding="valid")),
    ),
    ("branch_pool", (_MAX,)),
)

_REDUCTION_17_TO_8 = (
    ("branch3x3", (_conv(192, 1, 1), _conv(320, 3, 3, strides=2, padding="valid"))),
    (
        "branch7x7x3",
        (
            _conv(192, 1, 1),
            _conv(192, 1, 7),
            _conv(192, 7, 1),
            _conv(192, 3, 3, strides=2, padding="valid"),
        ),
    ),
    ("branch_pool", (_MAX,)),
)

_BLOCK_8 = (
    ("branch1x1", (_conv(320, 1, 1),)),
    ("branch3x3", (_conv(384, 1, 1), _fork(_conv(384, 1, 3), _conv(384, 3, 1)))),
    (
        "branch3x3dbl",
        (_conv(448, 1, 1), _conv(384, 3, 3), _fork(_conv(384, 1, 3), _conv(384, 3, 1))),
    ),
    ("branch_pool", (_AVG, _conv(192, 1, 1))),
)


def inception_blocks(num_mixed5=2, num_mixed7=1, num_mixed9=2):
    """Returns InceptionV3's mixed blocks in order as `[(name, kind, branches), ...]`.

    Keras' order is mixed0-2 (35x35), mixed3 (reduction), mixed4 (17x17, 128-filter 7x7 branches),
    then `num_mixed5` x Mixed5, `num_mixed7` x Mixed7, mixed8 (reduction), `num_mixed9` x Mixed9.
    A branch is `(branch_name, steps)`; a step is `("conv", filters, kh, kw, strides, padding)`,
    `("avgpool",)` (3x3, stride 1, same), `("maxpool",)` (3x3, stride 2, valid) or
    `("fork", conv, conv)` (both convolutions on the same input, concatenated).

    Args:
        num_mixed5: repeats of the Mixed5 kind (Keras: 2).
        num_mixed7: repeats of the Mixed7 kind (Keras: 1).
        num_mixed9: repeats of the Mixed9 kind (Keras: 2).

    Returns:
        A list of `(block_name, kind, branches)`; names are `mixed0`, `mixed1`, ... in order.
    """
    kinds = [
        ("mixed0", _block_35(32)),
        ("mixed1", _block_35(64)),
        ("mixed2", _block_35(64)),
        ("mixed3", _REDUCTION_35_TO_17),
        ("mixed4", _block_17(128)),
    ]
    kinds += [("mixed5", _block_17(160))] * int(num_mixed5)
    kinds += [("mixed7", _block_17(192))] * int(num_mixed7)
    kinds += [("mixed8", _REDUCTION_17_TO_8)]
    kinds += [("mixed9", _BLOCK_8)] * int(num_mixed9)
    return [(f"mixed{i}", kind, branches) for i, (kind, branches) in enumerate(kinds)]


# --------------------------------------------------------------------------- Keras builder


def apply_conv_bn(x, filters, kernel_hw, *, strides=1, padding="same", momentum=0.99, name):
    """Conv2D (no bias) -> BatchNormalization (no scale) -> ReLU, as Keras' InceptionV3 `conv2d_bn`.

    Args:
        x: input tensor `(B, H, W, C)`.
        filters: output channels.
        kernel_hw: `(kh, kw)`.
        strides: convolution strides.
        padding: `"same"` or `"valid"`.
        momentum: BatchNormalization momentum (Keras' default 0.99).
        name: prefix; layers are `{name}_conv`, `{name}_bn` and `{name}` (the ReLU).

    Returns:
        The activated tensor.
    """
    x = layers.Conv2D(
        filters, kernel_hw, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(axis=-1, momentum=momentum, scale=False, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=name)(x)


def _apply_step(x, step, width_factor, name, momentum=0.99):
    kind = step[0]
    if kind == "conv":
        _, filters, kh, kw, strides, padding = step
        return apply_conv_bn(
            x,
            scaled_filters(filters, width_factor),
            (kh, kw),
            strides=strides,
            padding=padding,
            momentum=momentum,
            name=name,
        )
    if kind == "avgpool":
        return layers.AveragePooling2D((3, 3), strides=(1, 1), padding="same", name=name)(x)
    if kind == "maxpool":
        return layers.MaxPooling2D((3, 3), strides=(2, 2), name=name)(x)
    if kind == "fork":
        parts = [
            _apply_step(x, sub, width_factor, f"{name}_{chr(ord('a') + i)}", momentum)
            for i, sub in enumerate(step[1:])
        ]
        return layers.Concatenate(axis=-1, name=f"{name}_concat")(parts)
    raise ValueError(f"Unknown step {step!r}")


def apply_inception_block(x, branches, width_factor, *, momentum=0.99, name):
    """Applies one mixed block: its branches side by side, concatenated into layer `name`.

    Args:
        x: input tensor `(B, H, W, C)`.
        branches: `(branch_name, steps)` pairs from `inception_blocks`.
        width_factor: β.
        momentum: BatchNormalization momentum.
        name: block name (`mixedN`); branch layers are `{name}_{branch}_{step}`.

    Returns:
        The concatenated block output.
    """
    outputs = []
    for branch_name, steps in branches:
        y = x
        for j, step in enumerate(steps):
            y = _apply_step(y, step, width_factor, f"{name}_{branch_name}_{j}", momentum)
        outputs.append(y)
    return layers.Concatenate(axis=-1, name=name)(outputs)


def apply_inception_v3(
    x,
    *,
    width_factor=1.0,
    num_mixed5=2,
    num_mixed7=1,
    num_mixed9=2,
    batchnorm_momentum=0.99,
    stem_pool1=True,
):
    """Applies the scaled InceptionV3 feature extractor (no top) to an image tensor.

    Args:
        x: image tensor `(B, H, W, C)`, H and W >= 75.
        width_factor: β, multiplies every convolution's filters.
        num_mixed5: repeats of the Mixed5 kind.
        num_mixed7: repeats of the Mixed7 kind.
        num_mixed9: repeats of the Mixed9 kind.
        batchnorm_momentum: BatchNormalization momentum (Keras: 0.99).
        stem_pool1: keep the stem's first max pooling (Keras: True); False doubles the
            resolution of every later feature map.

    Returns:
        The last block's feature map `(B, h, w, channels)`, h = w = 8 for 299 or 300 pixels.
    """
    for step_name, step in _STEM:
        if step_name == "pool1" and not stem_pool1:
            continue
        x = _apply_step(x, step, width_factor, f"stem_{step_name}", batchnorm_momentum)
    for name, _kind, branches in inception_blocks(num_mixed5, num_mixed7, num_mixed9):
        x = apply_inception_block(x, branches, width_factor, momentum=batchnorm_momentum, name=name)
    return x


def build_backbone(
    input_shape=(299, 299, 3), *, width_factor=1.0, num_mixed5=2, num_mixed7=1, num_mixed9=2
):
    """Builds the scaled InceptionV3 without top as a functional model (β = 1, 2/1/2 = Keras').

    Args:
        input_shape: `(H, W, C)`.
        width_factor: β.
        num_mixed5: repeats of the Mixed5 kind.
        num_mixed7: repeats of the Mixed7 kind.
        num_mixed9: repeats of the Mixed9 kind.

    Returns:
        A `keras.Model` from `image` to the last block's feature map.
    """
    image = keras.Input(shape=tuple(input_shape), name="image")
    features = apply_inception_v3(
        image,
        width_factor=width_factor,
        num_mixed5=num_mixed5,
        num_mixed7=num_mixed7,
        num_mixed9=num_mixed9,
    )
    return keras.Model(image, features, name="inception_v3_scaled")


# --------------------------------------------------------------------------- exact parameter count


def _count_step(step, channels, width_factor):
    """Returns `(channels_out, trainable, non_trainable)` of one step."""
    kind = step[0]
    if kind == "conv":
        _, filters, kh, kw, _, _ = step
        out = scaled_filters(filters, width_factor)
        # Conv2D kernel (no bias) + BatchNormalization beta (trainable) and moving mean/variance.
        return out, kh * kw * channels * out + out, 2 * out
    if kind in ("avgpool", "maxpool"):
        return channels, 0, 0
    total = [0, 0, 0]
    for sub in step[1:]:
        for i, value in enumerate(_count_step(sub, channels, width_factor)):
            total[i] += value
    return tuple(total)


def backbone_params(config) -> dict:
    """Returns the backbone's exact parameter counts and output channels without building it.

    Args:
        config: a `BoneAgeConfig` (or anything `get_config` accepts).

    Returns:
        `{"trainable": int, "non_trainable": int, "channels": int}`.
    """
    config = get_config(config)
    beta = config.width_factor
    channels, trainable, frozen = config.channels, 0, 0
    for _, step in _STEM:
        channels, t, n = _count_step(step, channels, beta)
        trainable, frozen = trainable + t, frozen + n
    blocks = inception_blocks(config.num_mixed5, config.num_mixed7, config.num_mixed9)
    for _, _, branches in blocks:
        block_channels = 0
        for _, steps in branches:
            c = channels
            for step in steps:
                c, t, n = _count_step(step, c, beta)
                trainable, frozen = trainable + t, frozen + n
            block_channels += c
        channels = block_channels
    return {"trainable": trainable, "non_trainable": frozen, "channels": channels}


def count_params(preset="paper", **overrides) -> dict:
    """Returns the exact parameter counts of `build_model(preset, **overrides)` without building it.

    Args:
        preset: a `PRESETS` name, `BoneAgeConfig` or dict.
        **overrides: `BoneAgeConfig` fields.

    Returns:
        `{"params": int, "trainable_params": int, "non_trainable_params": int, "features": int}`
        (`features` = channels of the last conv block = GAP width).
    """
    config = get_config(preset, **overrides)
    backbone = backbone_params(config)
    width = backbone["channels"]
    head = 0
    if config.use_sex:
        head += config.sex_units * 2  # Dense(1 -> sex_units) kernel + bias
        width += config.sex_units
    if config.hidden_units:
        head += (width + 1) * config.hidden_units
        width = config.hidden_units
    head += width + 1  # the output unit
    trainable = backbone["trainable"] + head
    return {
        "params": trainable + backbone["non_trainable"],
        "trainable_params": trainable,
        "non_trainable_params": backbone["non_trainable"],
        "features": backbone["channels"],
    }


# --------------------------------------------------------------------------- the full model


def build_model(preset="paper", weights=None, **overrides) -> keras.Model:
    """Builds BoneAgeNet (functional), inputs `image` (and `sex`), output dict `{"age_months"}`.

    Args:
        preset: a `PRESETS` name (`paper` = Table 1's Final, `baseline`, `modified_1`..`6`,
            `final_no_fc`, `final_no_fc_no_sex`, `demo`), a `BoneAgeConfig` or a dict.
        weights: None (random initialisation) or the path of a local weights file
            (`.weights.h5`, or a whole `.h5`/`.keras` model whose weights are copied).
        **overrides: `BoneAgeConfig` fields, e.g. `image_size_hw=(128, 128)`, `width_factor=0.5`.

    Returns:
        A `keras.Model` named `boneage_{preset}`: inputs `image` `(B, H, W, channels)` in [0, 1]
        and `sex` `(B, 1)` (1 = male; absent when `use_sex=False`); output
        `{"age_months": (B, 1)}`. Layers: the backbone (`stem_*`, `mixed0`...`mixedN`), `gap`,
        [`gap_dropout`], `sex_dense`, `concat`, [`hidden_dense`], `age_months`.

    Reference:
        Paper 003, §V (head, L2 on the output layer), Fig. 1, Table 1 (presets).
    """
    config = get_config(preset, **overrides)
    if weights is not None and not os.path.isfile(os.fspath(weights)):
        raise ValueError(f"weights must be None or an existing local file; received {weights!r}")
    height, width = config.image_size_hw
    image = keras.Input(shape=(height, width, config.channels), name="image")
    features = apply_inception_v3(
        image,
        width_factor=config.width_factor,
        num_mixed5=config.num_mixed5,
        num_mixed7=config.num_mixed7,
        num_mixed9=config.num_mixed9,
        batchnorm_momentum=config.batchnorm_momentum,
        stem_pool1=config.stem_pool1,
    )
    x = layers.GlobalAveragePooling2D(name="gap")(features)
    if config.dropout_rate > 0:
        x = layers.Dropout(config.dropout_rate, name="gap_dropout")(x)
    inputs = {"image": image}
    if config.use_sex:
        sex = keras.Input(shape=(1,), name="sex")
        inputs["sex"] = sex
        s = layers.Dense(config.sex_units, activation="relu", name="sex_dense")(sex)
        x = layers.Concatenate(axis=-1, name="concat")([x, s])
    if config.hidden_units:
        x = layers.Dense(config.hidden_units, activation="relu", name="hidden_dense")(x)
    age = layers.Dense(
        1,
        kernel_regularizer=keras.regularizers.L2(config.l2) if config.l2 else None,
        bias_initializer=keras.initializers.Constant(config.output_bias_months),
        dtype="float32",  # the output stays float32 under mixed precision (common.precision)
        name="age_months",
    )(x)
    name = preset if isinstance(preset, str) else "custom"
    model = keras.Model(inputs, {"age_months": age}, name=f"boneage_{name}")
    if weights is not None:
        _load_weights(model, weights)
    return model


def _input_layouts(config):
    """`{conv prefix: input channel segments}` of a configuration's backbone.

    A convolution after a concatenation reads several parts side by side (one per branch, or the
    block input passed through a max-pooling branch); their sizes are the segments that
    `common.weights.copy_overlap` matches one by one when the width differs.
    """
    beta = config.width_factor
    layouts = {}

    def step(layout, spec, name):
        if spec[0] == "conv":
            layouts[name] = list(layout)
            return [scaled_filters(spec[1], beta)]
        if spec[0] in ("avgpool", "maxpool"):
            return layout
        parts = []
        for i, sub in enumerate(spec[1:]):
            parts += step(layout, sub, f"{name}_{chr(ord('a') + i)}")
        return parts

    layout = [config.channels]
    for step_name, spec in _STEM:
        if step_name == "pool1" and not config.stem_pool1:
            continue
        layout = step(layout, spec, f"stem_{step_name}")
    for name, _kind, branches in inception_blocks(
        config.num_mixed5, config.num_mixed7, config.num_mixed9
    ):
        parts = []
        for branch_name, steps in branches:
            y = layout
            for j, spec in enumerate(steps):
                y = step(y, spec, f"{name}_{branch_name}_{j}")
            parts += y
        layout = parts
    return layouts


def _block_names(config):
    """`{Keras InceptionV3 block name: this configuration's block name}` (same kind, same repeat).

    With the repeats 4/3/3 Keras' `mixed5`, `mixed6` (Mixed5 kind) are ours `mixed5`, `mixed6`;
    Keras' `mixed7` is our `mixed9`; `mixed8` our `mixed12`; `mixed9`, `mixed10` our `mixed13`,
    `mixed14`. Our extra repeats have no ImageNet counterpart.
    """

    def numbered(blocks):
        seen, out = {}, {}
        for name, kind, _ in blocks:
            out[(kind, seen.get(kind, 0))] = name
            seen[kind] = seen.get(kind, 0) + 1
        return out

    ours = numbered(inception_blocks(config.num_mixed5, config.num_mixed7, config.num_mixed9))
    keras_blocks = numbered(inception_blocks())
    return {name: ours[key] for key, name in keras_blocks.items() if key in ours}


def is_inception_v3_file(path):
    """True when `path` is Keras' ImageNet InceptionV3 "no top" file (or a file just like it).

    Args:
        path: a local file.

    Returns:
        bool: an `.h5` weights file of 188 layers whose first kernel is `(3, 3, 3, 32)`.
    """
    from common.weights import read_legacy_h5

    path = os.fspath(path)
    if not path.endswith(".h5") or path.endswith(".weights.h5"):
        return False
    try:
        found = read_legacy_h5(path)
    except (OSError, KeyError):
        return False
    return len(found) == 188 and found[0][1][0].shape == (3, 3, 3, 32)


def load_imagenet_inception(model, path, config=None, *, spec="imagenet"):
    """Loads Keras' ImageNet InceptionV3 into a BoneAgeNet, as far as it fits, and says how far.

    Keras' InceptionV3 is this builder at β = 1 with repeats 2/1/2 (the same layers in the same
    order), so the file's layers are matched to ours by position in that reference, then moved
    to our block of the same kind and repeat (`_block_names`). Where shapes agree a layer is
    loaded whole. Otherwise (β != 1, one input channel):

    - a width-scaled convolution takes the pretrained filters into its first outputs, the
      pretrained inputs segment by segment (each concatenated branch is widened on its own), and
      0 for the inputs only our wider network has, so those filters compute what ImageNet's did;
      its other filters keep their fresh initialisation; batch normalisation likewise;
    - the stem's first convolution on a one-channel input takes the ImageNet kernel summed over
      its three input channels: exact for a gray image repeated over three channels (we sum
      rather than tile, which would need three input channels and three times the stem's
      input work);
    - blocks beyond Keras' repeats (4/3/3 has two extra Mixed5, two extra Mixed7, one extra
      Mixed9) and the head start fresh.

    Args:
        model: a model from `build_model`.
        path: Keras' `inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`.
        config: the model's `BoneAgeConfig` (default: the `paper` preset's).
        spec: the `--weights` value, for the record.

    Returns:
        The load record (`common.weights.new_record`): `loaded`, `partial` (layer -> what was
        taken), `fresh`, and `unused` (file layers with no place in this model).

    Raises:
        DataError: the file is not an InceptionV3 "no top" file.
    """
    from common.errors import DataError
    from common.weights import add_result
    from common.weights import apply_layer_weights
    from common.weights import new_record
    from common.weights import read_legacy_h5

    config = get_config(config if config is not None else "paper")
    found = read_legacy_h5(path)
    reference = build_backbone((75, 75, 3))
    ref_layers = [layer for layer in reference.layers if layer.weights]
    if len(found) != len(ref_layers) or any(
        [a.shape for a in arrays] != [tuple(w.shape) for w in layer.weights]
        for (_, arrays), layer in zip(found, ref_layers)
    ):
        raise DataError("not Keras' InceptionV3 no-top weights file", path=path)
    ref_layouts = _input_layouts(BoneAgeConfig(channels=3))
    our_layouts = _input_layouts(config)
    blocks = _block_names(config)
    names = {layer.name for layer in model.layers}
    record = new_record(spec, os.fspath(path))
    record["unused"] = []
    for (_, arrays), ref in zip(found, ref_layers):
        block, rest = ref.name.split("_", 1)
        name = f"{blocks.get(block, '')}_{rest}" if block != "stem" else ref.name
        if name not in names:
            record["unused"].append(ref.name)
            continue
        prefix = name.rsplit("_", 1)[0]
        options = {}
        if name.endswith("_conv"):
            ours, theirs = our_layouts[prefix], ref_layouts[ref.name.rsplit("_", 1)[0]]
            if prefix == "stem_conv1" and config.channels == 1:
                options = {"sum_inputs": True, "in_segments": ([1], [1])}
            else:
                options = {"in_segments": (ours, theirs)}
        add_result(record, name, apply_layer_weights(model.get_layer(name), arrays, **options))
    touched = set(record["loaded"]) | set(record["partial"])
    record["fresh"] = [
        layer.name for layer in model.layers if layer.weights and layer.name not in touched
    ]
    return record


def _load_weights(model, weights):
    path = os.fspath(weights)
    if path.endswith(".weights.h5"):
        model.load_weights(path)
        return
    source = keras.models.load_model(path, compile=False)
    model.set_weights(source.get_weights())


# --------------------------------------------------------------------------- explanation maps


def last_conv_layer_name(model) -> str:
    """Returns the name of the last convolutional block (the layer feeding `gap`).

    Args:
        model: a model from `build_model`.

    Returns:
        The block's layer name, e.g. `mixed10` (baseline) or `mixed15` (paper).
    """
    try:
        gap = model.get_layer("gap")
    except ValueError as error:
        raise ValueError(f"Model '{model.name}' has no 'gap' layer: not a BoneAgeNet") from error
    for layer in model.layers:
        if layer is not gap and layer.output is gap.input:
            return layer.name
    raise ValueError(f"Model '{model.name}': no layer feeds 'gap'")


def explain_model(model) -> keras.Model:
    """Returns a model with the same inputs whose outputs add the CAM ingredients, by layer name.

    The maps are exposed the way keras-hub exposes `pyramid_outputs`: a dict of named outputs.

    Args:
        model: a model from `build_model`.

    Returns:
        A `keras.Model` (same inputs) with outputs `{"age_months": (B, 1), "last_conv_block":
        (B, h, w, K) the last block's feature map, "gap": (B, K)}`.

    Reference:
        Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016 (CAM);
        paper 003 §VI, Fig. 4.
    """
    gap = model.get_layer("gap")
    features = gap.input
    outputs = {
        "age_months": model.get_layer("age_months").output,
        "last_conv_block": features,
        "gap": gap.output,
    }
    inputs = copy.copy(model.input)
    return keras.Model(inputs, outputs, name=f"{model.name}_explain")
