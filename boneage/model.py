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

from common.options import look_up_option

MIXED_KINDS = ("mixed5", "mixed7", "mixed9")

# Table 1 of the paper: (β, n.Mixed5, n.Mixed7, n.Mixed9), and the two head variants.
PAPER_INPUT_HW = (300, 300)
PAPER_TRAINING = {
    "loss": "mse",
    "optimizer": "adam",
    "learning_rate": 1e-2,
    "min_learning_rate": 1e-5,
    "batch_size": 32,
    "epochs": 100,
}


@dataclasses.dataclass(frozen=True)
class BoneAgeConfig:
    """Configuration of a BoneAgeNet model (one Table 1 row, or the demo).

    Args:
        image_size_hw: input image height and width in pixels (paper: 300 x 300, §III).
        channels: image channels (1: grayscale radiographs; 3 reproduces Keras' InceptionV3).
        width_factor: β, multiplies every convolution's filters (rounded half up), > 0.
        num_mixed5: repeats of the 17x17 block with 160-filter 7x7 branches (Keras: 2).
        num_mixed7: repeats of the 17x17 block with 192-filter 7x7 branches (Keras: 1).
        num_mixed9: repeats of the 8x8 block (Keras: 2).
        use_sex: whether the model has the `sex` input (1 = male, 0 = female).
        sex_units: units of the dense layer the sex input goes through.
        hidden_units: units of the hidden dense layer after the concatenation; 0 = none.
        dropout_rate: dropout after GAP, in [0, 1); 0 = none.
        l2: α, the L2 coefficient on the output layer's kernel.
        output_bias_months: initial bias of the output unit (a typical age, so training starts
            near the mean instead of at 0 months).
        batchnorm_momentum: momentum of the BatchNormalization moving statistics (Keras'
            InceptionV3: 0.99; the demo uses 0.5 so that they follow its fast-changing weights
            within a few hundred steps, or a few dozen in the tests).
        stem_pool1: keep the stem's first max pooling (True, Keras' InceptionV3 and every paper
            preset). False drops it, so every later feature map has about twice the height and
            width: the last block is 10 x 8 instead of 4 x 3 at 192 x 160, which gives the class
            activation maps (§VI) a usable resolution on small demo inputs. It has no weights, so
            the parameter count is unchanged.
        learning_rate: Adam's initial learning rate (§V: 1e-2).
        min_learning_rate: floor of the stepwise decay (§V: 1e-5).
        lr_decay_factor: the stepwise decay multiplies the rate by this ...
        lr_decay_epochs: ... every this many epochs (the paper gives no steps; 0.5 every 10
            epochs takes 1e-2 to 2e-5 by epoch 90, at the paper's 1e-5 floor after 100).
        batch_size: examples per step (§V: 32).
        epochs: training epochs (§VI: 100).
        description: one line on what the preset is.
    """

    image_size_hw: tuple = PAPER_INPUT_HW
    channels: int = 1
    width_factor: float = 1.0
    num_mixed5: int = 2
    num_mixed7: int = 1
    num_mixed9: int = 2
    use_sex: bool = True
    sex_units: int = 32
    hidden_units: int = 0
    dropout_rate: float = 0.0
    l2: float = 1e-4
    output_bias_months: float = 127.0
    batchnorm_momentum: float = 0.99
    stem_pool1: bool = True
    learning_rate: float = 1e-2
    min_learning_rate: float = 1e-5
    lr_decay_factor: float = 0.5
    lr_decay_epochs: int = 10
    batch_size: int = 32
    epochs: int = 100
    description: str = ""

    def validate(self):
        """Raises ValueError (Keras style) for an impossible configuration; returns self."""
        height, width = (int(v) for v in self.image_size_hw)
        if min(height, width) < 75:
            raise ValueError(
                f"image_size_hw must be at least (75, 75) for InceptionV3; received {self.image_size_hw}"
            )
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1; received {self.channels}")
        if not self.width_factor > 0:
            raise ValueError(f"width_factor must be > 0; received {self.width_factor}")
        for key in ("num_mixed5", "num_mixed7", "num_mixed9"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1; received {getattr(self, key)}")
        if self.use_sex and self.sex_units < 1:
            raise ValueError(f"sex_units must be >= 1 when use_sex; received {self.sex_units}")
        if self.hidden_units < 0:
            raise ValueError(f"hidden_units must be >= 0; received {self.hidden_units}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1); received {self.dropout_rate}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0; received {self.l2}")
        if not 0 < self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                "learning rates must satisfy 0 < min_learning_rate <= learning_rate; received "
                f"{self.min_learning_rate}, {self.learning_rate}"
            )
        if not 0 < self.lr_decay_factor <= 1 or self.lr_decay_epochs < 1:
            raise ValueError("lr_decay_factor must be in (0, 1] and lr_decay_epochs >= 1")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError(
                f"batch_size and epochs must be >= 1; received {self.batch_size}, {self.epochs}"
            )
        if not 0.0 <= self.batchnorm_momentum < 1.0:
            raise ValueError(
                f"batchnorm_momentum must be in [0, 1); received {self.batchnorm_momentum}"
            )
        return self

    def to_dict(self):
        """Returns the configuration as a plain JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["image_size_hw"] = list(self.image_size_hw)
        return out


def _row(description, beta, n5, n7, n9, **head):
    return BoneAgeConfig(
        width_factor=beta,
        num_mixed5=n5,
        num_mixed7=n7,
        num_mixed9=n9,
        description=f"Table 1, {description}: β {beta}, Mixed5/7/9 x {n5}/{n7}/{n9}.",
        **head,
    )


_FINAL_HEAD = {"hidden_units": 2867, "dropout_rate": 0.5}

PRESETS = {
    # Table 1 of the paper, row by row (β, n.Mixed5, n.Mixed7, n.Mixed9).
    "baseline": _row("Baseline (BoneAgeInception), no hidden layer, ~28M", 1.0, 2, 1, 2),
    "modified_1": _row("Modified 1, ~36M", 1.2, 4, 1, 2),
    "modified_2": _row("Modified 2, ~55M", 1.3, 5, 1, 3),
    "modified_3": _row("Modified 3 (the CAMs of Fig. 4), ~51M", 1.2, 4, 3, 3),
    "modified_4": _row("Modified 4, ~47M", 1.0, 6, 4, 4),
    "modified_5": _row("Modified 5, ~65M", 1.2, 5, 4, 4),
    "modified_6": _row("Modified 6, ~66M", 1.1, 6, 5, 5),
    "final_no_fc": _row(
        "Final without the hidden layer, dropout 0.5, ~69M", 1.4, 4, 3, 3, dropout_rate=0.5
    ),
    "final_no_fc_no_sex": _row(
        "Final without the hidden layer and without the sex input, ~69M",
        1.4,
        4,
        3,
        3,
        dropout_rate=0.5,
        use_sex=False,
    ),
    "paper": _row(
        "Final (BoneAgeNet): dropout 0.5 after GAP, hidden layer of 2867, ~78M; test MAE 5.6 months",
        1.4,
        4,
        3,
        3,
        **_FINAL_HEAD,
    ),
    # Small enough to learn the phantoms on a 2-core CPU in a few minutes.
    "demo": BoneAgeConfig(
        image_size_hw=(192, 160),
        width_factor=0.14,
        num_mixed5=1,
        num_mixed7=1,
        num_mixed9=1,
        stem_pool1=False,
        sex_units=8,
        hidden_units=32,
        dropout_rate=0.1,
        batchnorm_momentum=0.5,
        learning_rate=3e-3,
        lr_decay_factor=0.5,
        lr_decay_epochs=4,
        epochs=10,
        description="Demo: the paper's architecture at 192 x 160 without the stem's first max "
        "pooling (a 10 x 8 last block, so the CAMs resolve the hand), β 0.14, Mixed5/7/9 x "
        "1/1/1, hidden layer of 32 (0.3M parameters); learns the phantoms on a 2-core CPU in "
        "minutes.",
    ),
}


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
        name="age_months",
    )(x)
    name = preset if isinstance(preset, str) else "custom"
    model = keras.Model(inputs, {"age_months": age}, name=f"boneage_{name}")
    if weights is not None:
        _load_weights(model, weights)
    return model


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
