"""KL-grade classifiers with trainable attention branches (Górriz et al., MIDL 2019).

A base network (VGG-16, ResNet-50 or one of Antony et al.'s two CNNs) carries attention branches
`att0`, `att1`, `att2` at the places of the paper's Fig. 2 and Tables 3-5. Each branch is a
`common.layers.AttentionBranch` (layer `f"{b}_attention"`) that turns a feature map into a pooled
feature vector and a spatial mask; then

- single branch (`*-att0`, `*-att1`, `*-att2`): `Dense(5)` named `f"{b}_logits"` and a `Softmax`
  named `b`: one output `b`;
- early fusion (`*-early-fusion`, §3.3): the branches' pooled vectors are concatenated
  (`fusion_concat`), one fully connected layer `fusion_logits` and a `Softmax` named `fusion`;
- multi-loss (`*-multi-loss`, §3.3): one `Dense(5)` + `Softmax` per branch, every branch an output,
  trained with the loss `sum_b w_b L_b` (`config["loss_weights"]`).

Only the layers the chosen branches need are built: the `paper` preset (VGG-16, multi-loss on
`att0` + `att1`) stops at `block4_pool` (7,635,264 trunk parameters; 7,717,346 in all, the "~7.7 M"
of Table 2).

Presets (`PRESETS`, dicts; `resolve_config(name, **overrides)` returns a checked copy):

- `paper`: VGG-16 multi-loss on att0 + att1, `loss_weights` {att0: 1, att1: 0.8} (§3.3's grid
  search), att0 used at test time (`test_branch`), §3.5's Adam 1e-5 (0.9/0.999), batch 64, lr x0.1
  after 2 epochs without val-loss improvement, early stop after 3.
- every cell of Table 1: `{vgg16,resnet50,antony-clsf,antony-ext}-{att0,att1,att2,early-fusion,
  multi-loss}`. The paper names the combined pair only for multi-loss (Table 1: att0 + att1 for
  VGG-16 and ResNet-50, att1 + att2 for Antony's models); early fusion combines the same pair
  (Fig. 3 shows VGG-16's fusion masks on att0 and att1). The paper gives multi-loss weights only
  for VGG-16; the other bases reuse w = (1, 0.8) (shallower branch first), an assumption.
- `demo`: a small VGG-like trunk (`small-vgg`: 4 blocks of two 3x3 conv + BN + ReLU and a 2x2
  pool, widths 16/24/32/48) at 128 x 96 x 1, multi-loss on att0 (after block 3, 16 x 12) and att1
  (after block 4, 8 x 6), 67,210 parameters; trains on the phantoms in a few CPU minutes.

Multi-loss presets carry their weights in `loss_weights` (keys = output names); the pre-softmax
logits of every head are layers `f"{name}_logits"` (`logits_model`), for the test-time average of
§4 (`average_logits_probabilities`).

Input size, derived from the paper (H x W, Keras' order):

- VGG-16: 320 x 224 (§3.2 "Fixing an input size of 320x224"). The paper splits each bilateral PA
  radiograph "in the middle, generating two vertical sections" (§3.4): one knee is a tall, narrow
  half, so the image is 320 pixels high and 224 wide. `block3_pool` (att0) is then 40 x 28 x 256,
  `block4_pool` (att1) 20 x 14 x 512 and `block5_pool` (att2) 10 x 7 x 512. Three channels (the
  gray image repeated): with one channel `block1_conv1` would have 640 instead of 1,792
  parameters and the trunk could not have the 7,635,264 the issue names.
- Antony et al. (Tables 3 and 4): 200 x 300 x 1. conv1 (11x11, stride 2, "same" padding) gives
  100 x 150, and the 3x3 stride-2 "valid" max-pools give 49 x 74, 24 x 36, 11 x 17 and 5 x 8, the
  tables' shapes exactly (200 x 300 is also the knee size of Antony et al. 2017). "Valid" padding in
  conv1 would need 209-210 x 309-310 instead. Convolutions are followed by batch normalisation and
  ReLU as in Antony et al. 2017.
- ResNet-50 (Table 5): 224 x 224 x 3. The table's conv2_x..conv5_x sizes (56, 28, 14, 7) are those
  of a 224 x 224 input; its conv1/maxpool rows list the layers' input sizes (224, 112) and its
  conv4_x/conv5_x depths (512) disagree with its own last 1x1 widths (1024, 2048), which are what
  Keras' ResNet50 produces: att0 on `conv3_block4_out` 28 x 28 x 512, att1 on `conv4_block6_out`
  14 x 14 x 1024, att2 on `conv5_block3_out` 7 x 7 x 2048.

Reference:
    Górriz, Antony, McGuinness, Giró-i-Nieto, O'Connor, "Assessing knee OA severity with CNN
    attention-based end-to-end architectures", MIDL 2019: §3.1-3.5, Tables 1-5, Fig. 2.
"""

from __future__ import annotations

import copy
import os

import keras
import numpy as np
from keras import layers

from common.errors import DataError
from common.layers import AttentionBranch
from common.options import look_up_option
from kneeoa.presets import NUM_KL_GRADES
from kneeoa.presets import PRESETS
from kneeoa.presets import TABLE1_ACCURACY  # noqa: F401  (re-exported for kneeoa.evaluate)

#: The paper's start (§3.5: "All models were trained from scratch"); `--weights imagenet` loads
#: Keras' ImageNet VGG-16 / ResNet-50 into the trunk instead.
PAPER_WEIGHTS = "none"

BASES = ("vgg16", "resnet50", "antony-clsf", "antony-ext", "small-vgg")
COMBINATIONS = ("single", "early-fusion", "multi-loss")

# Where each branch reads its feature map: the layer name in the base network (Fig. 2, Tables 3-5).
BRANCH_LAYERS = {
    "vgg16": {"att0": "block3_pool", "att1": "block4_pool", "att2": "block5_pool"},
    "resnet50": {
        "att0": "conv3_block4_out",
        "att1": "conv4_block6_out",
        "att2": "conv5_block3_out",
    },
    "antony-clsf": {"att0": "pool2", "att1": "pool3", "att2": "pool4"},
    "antony-ext": {"att0": "pool2", "att1": "pool3", "att2": "pool4"},
    "small-vgg": {"att0": "block3_pool", "att1": "block4_pool"},
}


def resolve_config(preset="paper", **overrides):
    """Returns the configuration dict of `preset` with `overrides` applied and checked.

    Args:
        preset: a name in `PRESETS`, e.g. `"paper"`, `"demo"` or `"resnet50-att1"`.
        **overrides: configuration keys to replace (any key of the preset, e.g.
            `image_size_hw=(160, 112)`, `loss_weights={"att0": 1.0, "att1": 0.5}`).

    Returns:
        A new dict (deep copy), with `"preset"` set to the preset's name.

    Raises:
        ValueError: unknown preset, unknown override key or an inconsistent configuration.
    """
    preset = look_up_option(preset, PRESETS)  # hyphens or underscores (common.options)
    config = copy.deepcopy(PRESETS[preset])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(
            f"Unknown override {unknown} for preset '{preset}'. Available: {sorted(config)}"
        )
    config.update(copy.deepcopy(overrides))
    config["preset"] = preset
    config["image_size_hw"] = tuple(int(v) for v in config["image_size_hw"])
    config["branches"] = tuple(config["branches"])
    _check_config(config)
    return config


def _check_config(config):
    base = config["base"]
    if base not in BASES:
        raise ValueError(f"Unknown base '{base}'. Available: {list(BASES)}")
    combination = config["combination"]
    if combination not in COMBINATIONS:
        raise ValueError(f"Unknown combination '{combination}'. Available: {list(COMBINATIONS)}")
    branches = config["branches"]
    available = sorted(BRANCH_LAYERS[base])
    if not branches or any(b not in BRANCH_LAYERS[base] for b in branches):
        raise ValueError(
            f"Unknown branches {list(branches)} for base '{base}'. Available: {available}"
        )
    if len(set(branches)) != len(branches):
        raise ValueError(f"Repeated branch in {list(branches)}")
    if combination == "single" and len(branches) != 1:
        raise ValueError(f"combination 'single' needs exactly one branch, got {list(branches)}")
    if combination != "single" and len(branches) < 2:
        raise ValueError(f"combination '{combination}' needs two or more branches")
    outputs = output_names(config)
    if set(config["loss_weights"]) != set(outputs):
        raise ValueError(
            f"loss_weights keys {sorted(config['loss_weights'])} must be the outputs {outputs}"
        )
    if config["test_branch"] not in outputs:
        raise ValueError(f"test_branch '{config['test_branch']}' is not an output: {outputs}")
    if config["channels"] not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {config['channels']}")
    if base in ("vgg16", "resnet50") and config["trunk_filters"] is not None:
        raise ValueError(f"trunk_filters applies to 'small-vgg' only, not '{base}'")
    if base == "small-vgg" and len(config["trunk_filters"] or ()) != 4:
        raise ValueError("small-vgg needs trunk_filters with 4 widths, one per block")
    if config["backbone_weights"] is not None and base not in ("vgg16", "resnet50"):
        raise ValueError(f"backbone_weights applies to 'vgg16' and 'resnet50' only, not '{base}'")
    if min(config["image_size_hw"]) < 16:
        raise ValueError(f"image_size_hw {config['image_size_hw']} is too small (min 16)")


def output_names(config):
    """Returns the model's output names for a configuration: `["fusion"]` or the branch names."""
    if config["combination"] == "early-fusion":
        return ["fusion"]
    return list(config["branches"])


# --------------------------------------------------------------------------- base networks


def apply_vgg16(inputs, *, last_layer, backbone_weights=None):
    """Applies Keras' VGG16 (no top) and returns the named feature maps up to `last_layer`.

    Args:
        inputs: the image tensor `(B, H, W, 3)`.
        last_layer: the deepest layer a branch needs (e.g. `"block4_pool"`); later layers are
            left out of the returned graph.
        backbone_weights: None (random, the paper trains from scratch) or a local VGG16 no-top
            weights file.

    Returns:
        A dict layer name -> tensor for the three attention places.
    """
    base = keras.applications.VGG16(
        include_top=False, weights=backbone_weights, input_tensor=inputs
    )
    return {name: base.get_layer(name).output for name in BRANCH_LAYERS["vgg16"].values()}


def apply_resnet50(inputs, *, last_layer, backbone_weights=None):
    """Applies Keras' ResNet50 (no top) and returns the outputs of conv3_x, conv4_x, conv5_x.

    Args:
        inputs: the image tensor `(B, H, W, 3)`.
        last_layer: unused beyond documentation: only layers feeding the used outputs are kept.
        backbone_weights: None or a local ResNet50 no-top weights file.

    Returns:
        A dict layer name -> tensor.
    """
    base = keras.applications.ResNet50(
        include_top=False, weights=backbone_weights, input_tensor=inputs
    )
    return {name: base.get_layer(name).output for name in BRANCH_LAYERS["resnet50"].values()}


def _conv_bn_relu(x, filters, kernel, strides, name, momentum=0.99):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(
        x
    )
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def apply_antony(inputs, *, extended, last_layer, batchnorm_momentum=0.99):
    """Applies Antony et al.'s CNN (Table 3) or its extended version (Table 4).

    conv1 32 11x11/2, pool1, conv2 64 (5x5, or two 3x3 when extended), pool2, conv3 96, pool3,
    conv4 128, pool4; max-pools 3x3 stride 2 "valid"; every conv "same" + BN + ReLU.

    Args:
        inputs: the image tensor `(B, 200, 300, C)` for the tables' shapes.
        extended: Table 4 (two 3x3 convs per block) instead of Table 3.
        last_layer: the deepest pooling layer to build (`"pool2"`, `"pool3"` or `"pool4"`).

    Returns:
        A dict layer name -> tensor (`pool2`, `pool3`, `pool4` as far as built).
    """
    m = batchnorm_momentum
    x = _conv_bn_relu(inputs, 32, 11, 2, "conv1", m)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    outputs = {}
    for block, filters in ((2, 64), (3, 96), (4, 128)):
        if extended:
            x = _conv_bn_relu(x, filters, 3, 1, f"conv{block}_1", m)
            x = _conv_bn_relu(x, filters, 3, 1, f"conv{block}_2", m)
        else:
            x = _conv_bn_relu(x, filters, 5 if block == 2 else 3, 1, f"conv{block}", m)
        x = layers.MaxPooling2D(3, strides=2, name=f"pool{block}")(x)
        outputs[f"pool{block}"] = x
        if f"pool{block}" == last_layer:
            break
    return outputs


def apply_small_vgg(inputs, *, filters, last_layer, batchnorm_momentum=0.99):
    """Applies the demo trunk: 4 VGG-like blocks (two 3x3 conv + BN + ReLU, then 2x2 max-pool).

    Args:
        inputs: the image tensor.
        filters: 4 widths, one per block.
        last_layer: the deepest pooling layer to build (`"block3_pool"` or `"block4_pool"`).

    Returns:
        A dict layer name -> tensor.
    """
    x = inputs
    outputs = {}
    for block, width in enumerate(filters, start=1):
        for conv in (1, 2):
            x = _conv_bn_relu(x, width, 3, 1, f"block{block}_conv{conv}", batchnorm_momentum)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        outputs[f"block{block}_pool"] = x
        if f"block{block}_pool" == last_layer:
            break
    return outputs


def _feature_maps(inputs, config):
    base = config["base"]
    places = BRANCH_LAYERS[base]
    order = list(places)
    last = places[max(config["branches"], key=order.index)]
    if base == "vgg16":
        return apply_vgg16(inputs, last_layer=last, backbone_weights=config["backbone_weights"])
    if base == "resnet50":
        return apply_resnet50(inputs, last_layer=last, backbone_weights=config["backbone_weights"])
    if base == "small-vgg":
        return apply_small_vgg(
            inputs,
            filters=config["trunk_filters"],
            last_layer=last,
            batchnorm_momentum=config["batchnorm_momentum"],
        )
    return apply_antony(
        inputs,
        extended=base == "antony-ext",
        last_layer=last,
        batchnorm_momentum=config["batchnorm_momentum"],
    )


# --------------------------------------------------------------------------- heads


def apply_attention_branch(features, *, name, filters=(64, 16), dropout=0.0):
    """Applies one attention module to a feature map.

    Args:
        features: the feature map `(B, H, W, N)`.
        name: the branch name (`"att0"`); the layer is `f"{name}_attention"`.
        filters: the module's 1x1 convolution widths.
        dropout: dropout after each 1x1 convolution.

    Returns:
        `(pooled (B, N), mask (B, H, W, 1))`.
    """
    branch = AttentionBranch(filters=filters, dropout=dropout, name=f"{name}_attention")
    return branch(features)


def apply_kl_head(x, *, name, num_classes=NUM_KL_GRADES):
    """Applies `Dense(num_classes)` named `f"{name}_logits"` and a `Softmax` named `name`.

    Args:
        x: pooled features `(B, N)`.
        name: the output name (`"att0"`, `"fusion"`).
        num_classes: number of KL grades.

    Returns:
        Class probabilities `(B, num_classes)`.
    """
    logits = layers.Dense(num_classes, name=f"{name}_logits")(x)
    return layers.Softmax(name=name, dtype="float32")(logits)  # float32 under mixed precision


def build_model(preset="paper", *, weights=None, **overrides):
    """Builds the KL-grade classifier of a preset (functional Keras model, no training).

    Args:
        preset: a name in `PRESETS`: `"paper"`, `"demo"` or a Table 1 cell such as
            `"vgg16-att0"`, `"resnet50-early-fusion"`, `"antony-ext-multi-loss"`.
        weights: None (random initialisation) or a local weights file of this same model
            (`.weights.h5`, `.h5` or `.keras`).
        **overrides: configuration keys to replace (see `resolve_config`).

    Returns:
        A `keras.Model` named after the preset with input `"image"` `(B, H, W, C)` in [0, 1]
        and a dict of outputs, each `(B, 5)` KL-grade probabilities: one per branch for
        single/multi-loss, `{"fusion": ...}` for early fusion.

    Raises:
        ValueError: unknown preset or override; `DataError` if `weights` is not a file.
    """
    config = resolve_config(preset, **overrides)
    height, width = config["image_size_hw"]
    inputs = keras.Input((height, width, config["channels"]), name="image")
    maps = _feature_maps(inputs, config)
    places = BRANCH_LAYERS[config["base"]]
    pooled = {}
    for branch in config["branches"]:
        pooled[branch], _ = apply_attention_branch(
            maps[places[branch]],
            name=branch,
            filters=config["attention_filters"],
            dropout=config["attention_dropout"],
        )
    num_classes = config["num_classes"]
    if config["combination"] == "early-fusion":
        fused = layers.Concatenate(name="fusion_concat")([pooled[b] for b in config["branches"]])
        outputs = {"fusion": apply_kl_head(fused, name="fusion", num_classes=num_classes)}
    else:
        outputs = {
            b: apply_kl_head(pooled[b], name=b, num_classes=num_classes) for b in config["branches"]
        }
    model = keras.Model(inputs, outputs, name=f"kneeoa_{preset.replace('-', '_')}")
    if weights is not None:
        if not os.path.isfile(weights):
            raise DataError("weights file not found", path=weights)
        model.load_weights(weights)
    return model


def trunk_layer_names(model, config):
    """Names of the model's base-network layers with weights (what an ImageNet file fills).

    Args:
        model: a model from `build_model`.
        config: its configuration (`resolve_config`).

    Returns:
        list of layer names; the attention branches and heads are the rest.
    """
    head = {"fusion_logits"}
    for branch in config["branches"]:
        head.update({f"{branch}_attention", f"{branch}_logits"})
    return [layer.name for layer in model.layers if layer.weights and layer.name not in head]


# --------------------------------------------------------------------------- explanation


def attention_layers(model):
    """Returns `{branch: AttentionBranch layer}` of a model built here, in branch order."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, AttentionBranch) and layer.name.endswith("_attention"):
            found[layer.name[: -len("_attention")]] = layer
    if not found:
        raise ValueError(f"Model '{model.name}' has no AttentionBranch layers named '*_attention'")
    return dict(sorted(found.items()))


def explain_model(model):
    """Returns a model with the same input whose outputs add the attention masks and features.

    Like keras-hub's `pyramid_outputs`, every map is found by layer name: for each branch `b`
    (layer `f"{b}_attention"`) the outputs gain `f"{b}_mask"` `(B, h, w, 1)` in [0, 1] (the
    attention mask A of §3.1, at the branch's feature resolution) and `f"{b}_features"` (the
    feature map the branch reads, for CAM-style maps), beside the model's own outputs.

    Args:
        model: a model from `build_model` (or loaded from its `.keras` / `.h5` file).

    Returns:
        A `keras.Model` sharing the weights of `model`, with a dict of outputs.
    """
    outputs = dict(_named_outputs(model))
    for branch, layer in attention_layers(model).items():
        _, mask = layer.output
        outputs[f"{branch}_mask"] = mask
        outputs[f"{branch}_features"] = layer.input
    return keras.Model(model.input, outputs, name=f"{model.name}_explain")


def logits_model(model):
    """Returns a model with the same input whose outputs are the heads' pre-softmax logits.

    For the test-time ensemble of §4 (average the branches' logits, then softmax); keys are the
    output names (`"att0"`, `"att1"`, or `"fusion"`), values `(B, 5)`.

    Args:
        model: a model from `build_model`.

    Returns:
        A `keras.Model` sharing the weights of `model`.
    """
    outputs = {}
    for name, _ in _named_outputs(model):
        outputs[name] = model.get_layer(f"{name}_logits").output
    return keras.Model(model.input, outputs, name=f"{model.name}_logits")


def average_logits_probabilities(logits):
    """Returns softmax(mean of the branches' logits), the ensemble of §4.

    Args:
        logits: dict name -> array `(N, C)` (as `logits_model(model).predict(x)` returns) or a
            sequence of such arrays.

    Returns:
        float32 array `(N, C)` of class probabilities.
    """
    arrays = list(logits.values()) if isinstance(logits, dict) else list(logits)
    if not arrays:
        raise ValueError("average_logits_probabilities needs at least one array of logits")
    mean = np.mean(np.stack([np.asarray(a, dtype=np.float64) for a in arrays]), axis=0)
    mean = mean - mean.max(axis=-1, keepdims=True)
    probs = np.exp(mean)
    return (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)


def _named_outputs(model):
    """`[(output name, tensor)]` of the model's KL-grade outputs (dict keys = layer names)."""
    outputs = model.output
    if isinstance(outputs, dict):
        return list(outputs.items())
    tensors = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [(t._keras_history.operation.name, t) for t in tensors]
