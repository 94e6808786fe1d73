"""SpineNet: a multi-task VGG-M (1024 variant) grading six radiological scores of a lumbar disc volume.

The network (paper 002, §2, §4 and Fig. 2) takes a disc volume of 112 x 224 pixels x 9 sagittal
slices (the slices are the channels) and predicts, through one softmax head per task, the
Pfirrmann grade (5 classes), disc narrowing (4; SPIDER grades it 0/1, so 2 there), upper and lower
endplate defects (2 each) and upper and lower marrow changes (2 each).

Layers (VGG-M 1024 of Chatfield et al. 2014, modified as §4 says: 9 input channels, max-pooling
2x2, no local response normalisation, Glorot initialisation). VGG-M's paddings are kept: Conv1
unpadded, Conv2 padded by 1, Conv3-5 padded by 1 ("same"). Shapes and parameters of the `paper`
preset (branch after Conv5), weights + biases:

| layer          | output (H x W x C) | parameters                              |
|----------------|--------------------|-----------------------------------------|
| volume         | 112 x 224 x 9      | 0                                       |
| conv1 7x7/2    | 53 x 109 x 96      | 7*7*9*96 + 96 = 42,432                  |
| pool1 2x2/2    | 26 x 54 x 96       | 0                                       |
| conv2 5x5/2 p1 | 12 x 26 x 256      | 5*5*96*256 + 256 = 614,656              |
| pool2 2x2/2    | 6 x 13 x 256       | 0                                       |
| conv3 3x3 p1   | 6 x 13 x 512       | 3*3*256*512 + 512 = 1,180,160           |
| conv4 3x3 p1   | 6 x 13 x 512       | 3*3*512*512 + 512 = 2,359,808           |
| conv5 3x3 p1   | 6 x 13 x 512       | 2,359,808                               |
| pool5 2x2/2    | 3 x 6 x 512        | 0  (flattened: 9,216)                   |
| fc6 (per task) | 4096               | 9216*4096 + 4096 = 37,752,832           |
| fc7 (per task) | 1024               | 4096*1024 + 1024 = 4,195,328            |
| fc8 (per task) | C_t                | 1024*C_t + C_t = 1025 * C_t             |

Shared trunk (conv1-conv5): 6,556,864. Six copies of fc6 + fc7: 6 * 41,948,160 = 251,688,960.
fc8 over the six tasks (5 + 4 + 2 + 2 + 2 + 2 = 17 classes): 1025 * 17 = 17,425.
Total: 258,263,249 parameters, all trainable except the 9 input means (`mean_subtraction`, the
"per-channel mean subtraction" of §4, set from the training split with `set_input_mean`), which
are non-trainable weights: 258,263,258 weights in all. `parameter_table(config)` computes this
table for any configuration; the tests check it against the built models.

Branch point (Table 2): the stages after it are duplicated per task, named `<task>_<stage>`
(e.g. `pfirrmann_fc6`); shared stages have the plain names (`conv1`, ..., `fc7`). `none` means six
separate towers (every stage per task), `fc7` means only FC8 per task. Each task's FC8 gives the
unnormalised class scores `<task>_fc8` (what the saliency of §3 differentiates) and the softmax
output named `<task>`.

Reference:
    Jamaludin, Kadir, Zisserman, "SpineNet: Automatically pinpointing classification evidence in
    spinal MRIs", MICCAI 2016, §2, §4, Fig. 2, Table 2.
"""

from __future__ import annotations

import copy
import os

import keras
import numpy as np
from keras import layers
from keras import ops

from common.options import look_up_option
from spinenet.presets import PAPER_TASKS  # noqa: F401  (re-exported)
from spinenet.presets import PRESETS
from spinenet.presets import SPIDER_TASKS  # noqa: F401  (re-exported)

BRANCH_POINTS = ("none", "conv3", "conv4", "conv5", "fc6", "fc7")
STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")

#: §4: "from scratch without any pre-training" (and VGG-M has no keras.applications weights).
PAPER_WEIGHTS = "none"

_ARCHITECTURE_KEYS = ("input_shape", "conv_filters", "fc_units", "dropout", "branch_point", "tasks")


def get_config(preset="paper", **overrides) -> dict:
    """Returns the configuration dict of `preset` with `overrides` applied and checked.

    Args:
        preset: a key of `PRESETS`.
        **overrides: any key of the preset's configuration (e.g. `branch_point="fc7"`,
            `tasks={"pfirrmann": 5, "narrowing": 2}`).

    Returns:
        A new dict (the preset is not modified).
    """
    preset = look_up_option(preset, PRESETS)  # hyphens or underscores (common.options)
    config = copy.deepcopy(PRESETS[preset])
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"Unknown override '{key}'. Available: {sorted(config)}")
        config[key] = copy.deepcopy(value)
    _check_config(config)
    config["preset"] = preset
    return config


def _check_config(config):
    shape = tuple(int(v) for v in config["input_shape"])
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"`input_shape` must be (height, width, slices). Received: {shape}")
    config["input_shape"] = shape
    filters = tuple(int(v) for v in config["conv_filters"])
    if len(filters) != 5 or min(filters) <= 0:
        raise ValueError(f"`conv_filters` must be five positive ints. Received: {filters}")
    config["conv_filters"] = filters
    units = tuple(int(v) for v in config["fc_units"])
    if len(units) != 2 or min(units) <= 0:
        raise ValueError(f"`fc_units` must be two positive ints (FC6, FC7). Received: {units}")
    config["fc_units"] = units
    if not 0.0 <= float(config["dropout"]) < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: {config['dropout']}")
    if config["branch_point"] not in BRANCH_POINTS:
        raise ValueError(
            f"Unknown branch_point '{config['branch_point']}'. Available: {list(BRANCH_POINTS)}"
        )
    tasks = config["tasks"]
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"`tasks` must be a non-empty dict name -> classes. Received: {tasks!r}")
    for name, classes in tasks.items():
        if not str(name).isidentifier():
            raise ValueError(f"Task names must be identifiers. Received: {name!r}")
        if int(classes) < 2:
            raise ValueError(f"Task '{name}' needs at least 2 classes. Received: {classes}")
    config["tasks"] = {str(k): int(v) for k, v in tasks.items()}


@keras.saving.register_keras_serializable(package="spinenet")
class ChannelMeanSubtraction(layers.Layer):
    """Subtracts a fixed per-channel (per-slice) mean: the input normalisation of §4.

    The means are a non-trainable weight, so they are saved with the model; set them from the
    training split with `set_input_mean`.

    Args:
        mean: initial mean, a float or one value per channel. Defaults to `0.5` (the vertebral
            median of a normalised disc volume).

    Input shape:
        `(batch, H, W, C)`.

    Output shape:
        Same as the input.

    Reference:
        Paper 002, §4 ("The inputs are normalized with per-channel mean subtraction").
    """

    def __init__(self, mean=0.5, **kwargs):
        super().__init__(**kwargs)
        self.initial_mean = (
            float(mean) if np.ndim(mean) == 0 else [float(v) for v in np.ravel(mean)]
        )

    def build(self, input_shape):
        channels = int(input_shape[-1])
        init = np.broadcast_to(np.asarray(self.initial_mean, dtype="float32"), (channels,))
        self.mean = self.add_weight(
            name="mean",
            shape=(channels,),
            initializer=keras.initializers.Constant(init.copy()),
            trainable=False,
        )

    def call(self, inputs):
        return inputs - ops.cast(self.mean, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.initial_mean}


def set_input_mean(model, mean):
    """Sets the per-channel input mean of a SpineNet model (e.g. from the training volumes).

    Args:
        model: a model from `build_model`.
        mean: float or one value per slice channel.
    """
    layer = model.get_layer("mean_subtraction")
    channels = int(layer.mean.shape[0])
    layer.mean.assign(np.broadcast_to(np.asarray(mean, dtype="float32"), (channels,)).copy())


def _apply_stage(x, stage, config, prefix):
    """Applies one VGG-M stage (`conv1` ... `fc7`) with layer names `<prefix><layer>`."""
    filters = config["conv_filters"]
    if stage == "conv1":
        x = layers.Conv2D(filters[0], 7, strides=2, activation="relu", name=f"{prefix}conv1")(x)
        return layers.MaxPooling2D(2, strides=2, name=f"{prefix}pool1")(x)
    if stage == "conv2":
        x = layers.ZeroPadding2D(1, name=f"{prefix}conv2_pad")(x)
        x = layers.Conv2D(filters[1], 5, strides=2, activation="relu", name=f"{prefix}conv2")(x)
        return layers.MaxPooling2D(2, strides=2, name=f"{prefix}pool2")(x)
    if stage in ("conv3", "conv4"):
        index = int(stage[-1]) - 1
        return layers.Conv2D(
            filters[index], 3, padding="same", activation="relu", name=f"{prefix}{stage}"
        )(x)
    if stage == "conv5":
        x = layers.Conv2D(filters[4], 3, padding="same", activation="relu", name=f"{prefix}conv5")(
            x
        )
        x = layers.MaxPooling2D(2, strides=2, name=f"{prefix}pool5")(x)
        return layers.Flatten(name=f"{prefix}flatten")(x)
    index = int(stage[-1]) - 6
    x = layers.Dense(config["fc_units"][index], activation="relu", name=f"{prefix}{stage}")(x)
    return layers.Dropout(config["dropout"], name=f"{prefix}drop{stage[-1]}")(x)


def build_model(preset="paper", *, weights=None, **overrides) -> keras.Model:
    """Builds the multi-task SpineNet classifier (functional Keras model, nothing trained).

    Args:
        preset: a key of `PRESETS` (`paper`, `spider`, `paper_branch_<point>`, `demo`).
        weights: None (Glorot-initialised, §4) or the path of a local `.weights.h5` /
            `.h5` / `.keras` file whose weights are loaded.
        **overrides: configuration keys to change, e.g. `branch_point="fc6"` or
            `tasks={...}` (class counts are configuration: SPIDER's narrowing has 2).

    Returns:
        A `keras.Model` named `spinenet_<preset>` with input `volume` `(batch, 112, 224, 9)` and a
        dict of softmax outputs keyed by task name (`pfirrmann`, `narrowing`, ...).

    Reference:
        Paper 002, §4 and Fig. 2.
    """
    config = get_config(preset, **overrides)
    inputs = keras.Input(shape=config["input_shape"], name="volume")
    x = ChannelMeanSubtraction(config["input_mean"], name="mean_subtraction")(inputs)
    branch = config["branch_point"]
    shared = 0 if branch == "none" else STAGES.index(branch) + 1
    for stage in STAGES[:shared]:
        x = _apply_stage(x, stage, config, prefix="")
    outputs = {}
    for task, classes in config["tasks"].items():
        y = x
        for stage in STAGES[shared:]:
            y = _apply_stage(y, stage, config, prefix=f"{task}_")
        logits = layers.Dense(classes, name=f"{task}_fc8")(y)
        # float32 under mixed precision (common.precision)
        outputs[task] = layers.Activation("softmax", name=task, dtype="float32")(logits)
    model = keras.Model(inputs, outputs, name=f"spinenet_{preset}")
    if weights is not None:
        if not os.path.isfile(os.fspath(weights)):
            raise ValueError(f"weights file not found: {weights}")
        if str(weights).endswith(".keras"):
            loaded = keras.models.load_model(weights, compile=False)
            model.set_weights(loaded.get_weights())
        else:
            model.load_weights(weights)
    return model


def task_names(model) -> list[str]:
    """Returns the task (output) names of a SpineNet model, in output order."""
    return list(model.output_names)


def _feature_layer_name(model, task):
    for name in (f"{task}_conv5", "conv5"):
        try:
            model.get_layer(name)
            return name
        except ValueError:
            continue
    raise ValueError(f"Model {model.name} has no conv5 layer for task '{task}'.")


def explain_model(model) -> keras.Model:
    """Returns a model with the same input whose outputs expose the maps explanations need.

    Outputs (a dict): every task's softmax `<task>`, its unnormalised class scores
    `<task>_fc8` (the `y_c` whose input gradient is the saliency of §3) and the last convolutional
    feature map `<task>_conv5` (batch, 6, 13, C) before pool5, for class-activation style maps.

    Args:
        model: a model from `build_model` (or loaded from a saved SpineNet file).

    Returns:
        A `keras.Model` sharing the weights of `model`.
    """
    outputs = {}
    for task in task_names(model):
        outputs[task] = model.get_layer(task).output
        outputs[f"{task}_fc8"] = model.get_layer(f"{task}_fc8").output
        outputs[f"{task}_conv5"] = model.get_layer(_feature_layer_name(model, task)).output
    return keras.Model(model.input, outputs, name=f"{model.name}_explain")


def parameter_table(config) -> list[dict]:
    """Computes each layer's output shape and parameter count from a configuration, by formula.

    Args:
        config: a dict from `get_config` (or a preset name).

    Returns:
        A list of dicts `{"layer", "output_shape", "params", "copies"}`, in network order;
        `copies` is 1 for a shared layer and the number of tasks for a duplicated one (FC8 rows are
        per task). The total is `sum(row["params"] * row["copies"])`.
    """
    if isinstance(config, str):
        config = get_config(config)
    height, width, channels = config["input_shape"]
    filters = config["conv_filters"]
    tasks = config["tasks"]
    branch = config["branch_point"]
    shared = 0 if branch == "none" else STAGES.index(branch) + 1
    copies = {stage: (1 if i < shared else len(tasks)) for i, stage in enumerate(STAGES)}
    rows = []

    def conv(h, w, size, stride, pad):
        return (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1

    h, w = conv(height, width, 7, 2, 0)
    rows.append(("conv1", (h, w, filters[0]), 7 * 7 * channels * filters[0] + filters[0], "conv1"))
    h, w = h // 2, w // 2
    rows.append(("pool1", (h, w, filters[0]), 0, "conv1"))
    h, w = conv(h, w, 5, 2, 1)
    rows.append(
        ("conv2", (h, w, filters[1]), 5 * 5 * filters[0] * filters[1] + filters[1], "conv2")
    )
    h, w = h // 2, w // 2
    rows.append(("pool2", (h, w, filters[1]), 0, "conv2"))
    previous = filters[1]
    for index, stage in ((2, "conv3"), (3, "conv4"), (4, "conv5")):
        rows.append(
            (stage, (h, w, filters[index]), 9 * previous * filters[index] + filters[index], stage)
        )
        previous = filters[index]
    h, w = h // 2, w // 2
    rows.append(("pool5", (h, w, previous), 0, "conv5"))
    flat = h * w * previous
    fc6, fc7 = config["fc_units"]
    rows.append(("fc6", (fc6,), flat * fc6 + fc6, "fc6"))
    rows.append(("fc7", (fc7,), fc6 * fc7 + fc7, "fc7"))
    table = [
        {"layer": name, "output_shape": shape, "params": params, "copies": copies[stage]}
        for name, shape, params, stage in rows
    ]
    for task, classes in tasks.items():
        table.append(
            {
                "layer": f"{task}_fc8",
                "output_shape": (classes,),
                "params": fc7 * classes + classes,
                "copies": 1,
            }
        )
    return table


def count_parameters(config) -> int:
    """Returns the number of trainable parameters of a configuration, from `parameter_table`."""
    return int(sum(row["params"] * row["copies"] for row in parameter_table(config)))
