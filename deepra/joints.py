"""Stage 2: joint-level models, EfficientNet + attention regression of SvH scores from one crop.

Fig. 2 and §3.2.1: the crop goes through an EfficientNet backbone (`keras.applications`, B3/B4/B5,
`weights=None` or a local file), then batch normalisation, then two sub-networks: one convolves the
features into attention weights, ending in a 1x1 `common.layers.LocallyConnected2D` with a sigmoid
(one weight in [0, 1] per position); the other is the normalised feature map itself, which is
multiplied element-wise by the weights. Both live in one `common.layers.AttentionBranch` (layer
`attention`: batch norm, 1x1 convolutions 64 -> 16 with ReLU, the locally connected sigmoid mask,
the product, and the masked global average, i.e. the average of the weighted features divided by
the mean weight, as in the bone-age kernel this attention follows). Dense layers then give the
scores: dropout, `Dense(128, relu)`, dropout, and one linear `Dense(1)` per predicted joint (named
after the output: a `Dense(n)` split per joint, same parameters), trained with MSE (§4.3.1).

The paper does not give the widths of the attention convolutions or of the dense layers; 64/16
and 128 are those of the attention design it builds on (Schlemper et al. via the bone-age kernel)
and configuration keys here (`attention_filters`, `dense_units`).

Input: one gray crop `(H, W, 1)` in [0, 1] (256 x 256 for fingers and toes, 300 x 300 for wrists,
§4.3.1). Inside the model it is repeated to three channels and scaled to [0, 255], the range
`keras.applications.EfficientNet*` expects (its own rescaling and normalisation layers follow).

Trainable fraction (§4.3.1, "70% weights of the EfficientNet backbones were unfrozen"): the last
`round(trainable_fraction * n)` of the backbone's n layers are trainable, the first ones frozen
(frozen batch-norm layers then run in inference mode). 1.0 trains everything.

Demo backbone: the same EfficientNet builder as B0-B7 (`keras.src.applications.efficientnet`,
which `keras.applications.EfficientNetB*` call) with width 0.5, depth 0.5 and only the first
three block stages, on 96 x 96 crops: a 12 x 12 x 640 feature map, ~0.1 M parameters. Trained
from scratch, so its batch-norm layers use momentum 0.9 (`batch_norm_momentum`; Keras' 0.99 left
the moving statistics far from the batch statistics after the few hundred steps a demo takes,
and the model predicted much worse in inference mode than in training mode).

Reference:
    Chaturvedi, "DeepRA", §3.2, §4.3.1, Fig. 2, Table 2; Tan and Le, "EfficientNet", ICML 2019.
"""

from __future__ import annotations

import copy

import keras
import numpy as np
from keras import layers

from common.layers import AttentionBranch
from common.options import look_up_option
from deepra.columns import JOINT_MODELS
from deepra.columns import output_names
from deepra.presets import JOINT_PRESETS
from deepra.presets import TABLE2  # noqa: F401  (re-exported for deepra.evaluate)

# keras.applications builders by name; their feature maps and parameter counts without the top.
BACKBONES = {
    "efficientnetb3": keras.applications.EfficientNetB3,
    "efficientnetb4": keras.applications.EfficientNetB4,
    "efficientnetb5": keras.applications.EfficientNetB5,
}


def joint_config(preset="paper", **overrides):
    """The configuration dict of a joint-model preset with `overrides` applied.

    Args:
        preset: one of `JOINT_PRESETS`.
        **overrides: keys of the preset's dict, e.g. `task="narrowing"` for the wrist model.

    Returns:
        dict (a copy) with the derived key `output_names`.
    """
    preset = look_up_option(preset, JOINT_PRESETS)  # hyphens or underscores (common.options)
    config = copy.deepcopy(JOINT_PRESETS[preset])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"Unknown override '{unknown[0]}'. Available: {sorted(config)}")
    config.update(copy.deepcopy(overrides))
    config["image_size_hw"] = tuple(int(v) for v in config["image_size_hw"])
    if not 0.0 <= float(config["trainable_fraction"]) <= 1.0:
        raise ValueError(
            f"trainable_fraction must be in [0, 1]. Received: {config['trainable_fraction']}"
        )
    if config["channels"] not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: {config['channels']}")
    config["output_names"] = output_names(config["task"], config["head"])
    return config


def joint_model_config(key, *, demo=False, **overrides):
    """The configuration of one of the paper's six joint models (see `columns.JOINT_MODELS`).

    Args:
        key: "hand-erosion", "hand-narrowing", "foot-narrowing", "foot-erosion", "wrist-erosion"
            or "wrist-narrowing".
        demo: use the `demo` preset's size with this model's task and outputs.
        **overrides: more configuration keys.

    Returns:
        dict.
    """
    if key not in JOINT_MODELS:
        raise ValueError(f"Unknown joint model '{key}'. Available: {sorted(JOINT_MODELS)}")
    preset, task, head = JOINT_MODELS[key]
    overrides = {"task": task, "head": head, **overrides}
    return joint_config("demo" if demo else preset, **overrides)


def _make_backbone(config):
    h, w = config["image_size_hw"]
    name = config["backbone"]
    weights = config["backbone_weights"]
    if name in BACKBONES:
        return BACKBONES[name](
            include_top=False, weights=weights, input_shape=(h, w, 3), name="backbone"
        )
    if name == "tiny-efficientnet":
        from keras.src.applications import efficientnet

        blocks = [dict(b) for b in efficientnet.DEFAULT_BLOCKS_ARGS[: int(config["tiny_stages"])]]
        return efficientnet.EfficientNet(
            float(config["tiny_width"]),
            float(config["tiny_depth"]),
            max(h, w),
            dropout_rate=0.0,
            drop_connect_rate=0.0,
            blocks_args=blocks,
            name="backbone",
            include_top=False,
            weights=weights,
            input_shape=(h, w, 3),
        )
    raise ValueError(
        f"Unknown backbone '{name}'. Available: {sorted(BACKBONES) + ['tiny-efficientnet']}"
    )


def set_trainable_fraction(backbone, fraction):
    """Freezes the first layers of `backbone` so that the last `fraction` of its layers train.

    Args:
        backbone: a Keras model.
        fraction: share of the layers (input layer excluded), counted from the top, left trainable.

    Returns:
        the number of trainable layers.
    """
    body = [layer for layer in backbone.layers if not isinstance(layer, layers.InputLayer)]
    n_trainable = int(round(float(fraction) * len(body)))
    n_frozen = len(body) - n_trainable
    backbone.trainable = True
    for i, layer in enumerate(body):
        layer.trainable = i >= n_frozen
    return n_trainable


def build_joint_model(config):
    """Builds a joint-level model from a configuration dict (see `joint_config`).

    Args:
        config: dict from `joint_config` / `joint_model_config`.

    Returns:
        functional `keras.Model` with input `crop` `(H, W, channels)` and one `(B, 1)` output per
        name in `config["output_names"]`; layers `backbone`, `attention` (pooled features and mask).
    """
    h, w = config["image_size_hw"]
    inputs = keras.Input((h, w, config["channels"]), name="crop")
    x = inputs
    if config["channels"] == 1:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([inputs, inputs, inputs])
    x = layers.Rescaling(255.0, name="to_pixel_range")(x)
    backbone = _make_backbone(config)
    if config["batch_norm_momentum"] is not None:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = float(config["batch_norm_momentum"])
    set_trainable_fraction(backbone, config["trainable_fraction"])
    features = backbone(x)
    pooled, _mask = AttentionBranch(
        filters=tuple(config["attention_filters"]),
        dropout=float(config["attention_dropout"]),
        name="attention",
    )(features)
    y = pooled
    for i, units in enumerate(config["dense_units"]):
        y = layers.Dropout(config["dropout"], name=f"head_dropout{i}")(y)
        y = layers.Dense(int(units), activation="relu", name=f"head_dense{i}")(y)
    y = layers.Dropout(config["dropout"], name="head_dropout_out")(y)
    # float32 under mixed precision (common.precision)
    outputs = {
        name: layers.Dense(1, dtype="float32", name=name)(y) for name in config["output_names"]
    }
    model = keras.Model(inputs, outputs, name=f"deepra_{config['task']}_{config['head']}")
    if config["weights"]:
        model.load_weights(config["weights"])
    return model


def explain_joint_model(model):
    """A model with the same input whose outputs add the attention weights and backbone features.

    Args:
        model: a joint model from `build_joint_model` (or reloaded from a file).

    Returns:
        `keras.Model` with the original outputs plus `attention_mask` `(B, h, w, 1)` (the sigmoid
        weights of the locally connected layer) and `features` `(B, h, w, N)` (the backbone's last
        feature map, for CAM).
    """
    attention = model.get_layer("attention")
    _pooled, mask = attention.output
    features = attention.input
    outputs = {name: model.get_layer(name).output for name in model.output_names}
    outputs["attention_mask"] = mask
    outputs["features"] = features
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_explain")


def upsample_mask(mask, image_size_hw):
    """Resizes attention weights `(h, w)` or `(h, w, 1)` to the crop size (bilinear), for overlays.

    Args:
        mask: array of attention weights.
        image_size_hw: (H, W) of the crop.

    Returns:
        float32 array `(H, W)`.
    """
    import cv2

    mask = np.asarray(mask, np.float32)
    if mask.ndim == 3:
        mask = mask[..., 0]
    h, w = (int(v) for v in image_size_hw)
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
