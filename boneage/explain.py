"""Class activation maps of BoneAgeNet: where in the hand the predicted age comes from (§VI, Fig. 4).

BoneAgeNet pools its last convolutional block F (h x w x K) by global average pooling (GAP), so for
a head that is linear in the pooled features (the baseline: GAP, concatenation with the sex
features, one linear unit) the prediction is

    age = sum_k w_k * mean_xy F_k(x, y) + (sex and bias terms) = mean_xy M(x, y) + ...,
    M(x, y) = sum_k w_k F_k(x, y),

and M, the class activation map of Zhou et al. for a regression output, is each location's share
of the predicted age (in months, before averaging over the h x w locations). With the Final
model's hidden layer the head is no longer linear; `w` is then the gradient of the output with
respect to the pooled features at this input, which equals the output kernel for a linear head
(this is Grad-CAM's weighting, evaluated at the GAP layer).

Reference image. For a regression output, M carries a large image-independent part: the last
block's cells see most of the image, and what they output over empty film is a constant that the
output bias offsets. By default the map is therefore taken relative to an empty film (a uniform
image at the radiograph's background level, its 1st intensity percentile),

    M_rel(x, y) = sum_k w_k * (F_k(x, y) - F0_k(x, y)),

whose mean is, for a linear head, exactly the predicted age minus the age predicted for the empty
film: where the age the model reads comes from. `reference=None` gives Zhou et al.'s plain M.

Reference:
    B. Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016;
    paper 003 §VI and Fig. 4.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from boneage.data import make_dataset
from boneage.model import explain_model
from common.identifiers import report_caption
from common.phantom_truth import MAX_SCORED
from common.phantom_truth import match_truth
from common.phantom_truth import read_mask
from common.phantom_truth import score_and_draw
from common.phantom_truth import scored_subset
from common.phantom_truth import untrained_copy


def _as_batch(image, model_input_shape):
    array = np.asarray(image, dtype=np.float32)
    single = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))
    if array.ndim == 2:
        array = array[None, ..., None]
    elif array.ndim == 3:
        array = array[None] if single else array[..., None]
    if array.ndim != 4:
        raise ValueError(
            f"image must be (H, W), (H, W, C), (B, H, W) or (B, H, W, C); got {np.shape(image)}"
        )
    height, width, channels = (int(v) for v in model_input_shape[1:4])
    if array.shape[-1] != channels:
        if array.shape[-1] == 1:
            array = np.repeat(array, channels, axis=-1)
        elif channels == 1:
            array = array.mean(axis=-1, keepdims=True)
        else:
            raise ValueError(f"image has {array.shape[-1]} channels; the model takes {channels}")
    size_hw = array.shape[1:3]
    if tuple(size_hw) != (height, width):
        array = tf.image.resize(array, (height, width), method="bilinear", antialias=True).numpy()
    return array, single, size_hw


def _as_sex(sex, batch):
    values = np.asarray(sex, dtype=np.float32).reshape(-1, 1)
    if values.shape[0] == 1 and batch > 1:
        values = np.repeat(values, batch, axis=0)
    if values.shape[0] != batch:
        raise ValueError(f"got {values.shape[0]} sex values for {batch} images")
    if not np.all((values == 0) | (values == 1)):
        raise ValueError("sex must be 1 (male) or 0 (female)")
    return values


def _head_gradient(model, pooled, sex):
    """d age / d pooled features, through the layers after GAP (inference mode)."""
    names = {layer.name for layer in model.layers}
    pooled = tf.convert_to_tensor(pooled)
    with tf.GradientTape() as tape:
        tape.watch(pooled)
        x = pooled
        if "sex_dense" in names:
            s = model.get_layer("sex_dense")(tf.convert_to_tensor(sex), training=False)
            x = model.get_layer("concat")([x, s])
        if "hidden_dense" in names:
            x = model.get_layer("hidden_dense")(x, training=False)
        age = model.get_layer("age_months")(x, training=False)
        total = tf.reduce_sum(
            age
        )  # rows are independent: d total / d pooled[b] = d age[b] / d pooled[b]
    return tape.gradient(total, pooled).numpy(), age.numpy()


REFERENCES = (None, "blank")


def class_activation_map(model, image, sex=None, *, upsample=True, reference="blank"):
    """Computes BoneAgeNet's class activation map(s) from the last conv block through GAP (§VI).

    Args:
        model: a model from `boneage.build_model` (any preset).
        image: gray image(s) in [0, 1]: `(H, W)`, `(H, W, C)`, `(B, H, W)` or `(B, H, W, C)`, any
            size (resized to the model's input like the data pipeline does).
        sex: 1 (male) or 0 (female), a scalar or one per image; ignored (may be None) for a model
            without the sex input.
        upsample: resize the maps bilinearly to the image's own size (True) or keep the last
            block's resolution (False).
        reference: "blank" (default) subtracts the features of an empty film (see the module
            docstring); None gives the plain CAM.

    Returns:
        `(maps, age_months)`: float32 maps `(H, W)` for one image or `(B, H, W)` for a batch, signed,
        in months per location (their mean over the block's locations is the pooled features'
        contribution to the prediction, relative to the empty film by default); and the
        predicted ages `(B,)`. Use `abs()` for a heat map and its mass (`cam_mass_fraction`).
    """
    if reference not in REFERENCES:
        raise ValueError(f"Unknown reference '{reference}'. Available: {list(REFERENCES)}")
    batch, single, size_hw = _as_batch(image, model.inputs[0].shape)
    inputs = {"image": batch}
    uses_sex = "sex" in [t.name for t in model.inputs] or any(
        layer.name == "sex_dense" for layer in model.layers
    )
    sex_values = None
    if uses_sex:
        if sex is None:
            raise ValueError("this model takes a sex input: pass sex=1 (male) or 0 (female)")
        sex_values = _as_sex(sex, batch.shape[0])
        inputs["sex"] = sex_values
    explainer = explain_model(model)
    outputs = explainer(inputs, training=False)
    features = outputs["last_conv_block"].numpy()
    weights, age = _head_gradient(model, outputs["gap"].numpy(), sex_values)
    if reference == "blank":
        levels = np.percentile(batch.reshape(batch.shape[0], -1), 1.0, axis=1)
        blank = np.ones_like(batch) * levels.reshape(-1, 1, 1, 1).astype(np.float32)
        blank_inputs = dict(inputs, image=blank)
        features = features - explainer(blank_inputs, training=False)["last_conv_block"].numpy()
    maps = np.einsum("bhwk,bk->bhw", features, weights).astype(np.float32)
    if upsample:
        maps = tf.image.resize(maps[..., None], size_hw, method="bilinear").numpy()[..., 0]
    age = age.reshape(-1)
    return (maps[0], age) if single else (maps, age)


def cam_mass_fraction(cam, mask):
    """Returns the share of a map's absolute mass that lies inside a mask.

    Args:
        cam: a map `(H, W)` (signed; its absolute value is used).
        mask: boolean or 0/1 array of the same shape (e.g. the phantom's hand mask).

    Returns:
        float in [0, 1] (0 for an all-zero map).
    """
    cam = np.abs(np.asarray(cam, dtype=np.float64))
    mask = np.asarray(mask).astype(bool)
    if cam.shape != mask.shape:
        raise ValueError(f"cam shape {cam.shape} differs from mask shape {mask.shape}")
    total = cam.sum()
    return float(cam[mask].sum() / total) if total > 0 else 0.0


# --------------------------------------------------------------------------- localisation (15.1)

# The truth the CAM is scored on. The phantom writes two masks per hand, `hand` (soft tissue and
# bones) and `carpals`. We score on the hand: the phantom ages every growth plate of the fingers,
# the metacarpals and the radius and ulna as well as the carpals (`boneage.synthetic`), and the
# paper's Fig. 4 shows the CAM mostly on the fingers, so a map that reads the age well need not
# sit on the carpals. The hand covers about a quarter of the film and sits near its centre, so
# the centre prior is a strong control here: that is the honest bar.
LESION_KIND = "hand"
UNTRAINED_SEED = 1
MAP_NAME = "|CAM|"


def _cams(model, records, config, batch_size=32):
    """Images (as the model reads them) and |CAM| on the last block's grid of `records`."""
    dataset = make_dataset(
        records, config=config, training=False, batch_size=batch_size, cache=False
    )
    images, maps = [], []
    for batch in dataset:
        inputs = batch[0] if isinstance(batch, tuple) else batch
        image = np.asarray(inputs["image"])
        sex = np.asarray(inputs["sex"]) if "sex" in inputs else None
        cams, _ = class_activation_map(model, image, sex, upsample=False)
        images.append(image[..., 0])
        maps.append(np.abs(cams))
    return np.concatenate(images), np.concatenate(maps)


def localisation_inputs(model, records, config, *, limit=MAX_SCORED, seed=UNTRAINED_SEED):
    """What the `localisation` block scores: the |CAM| of the model and of its untrained twin
    (relative to an empty film, as drawn in the report), the hand masks, the images.

    Args:
        model: the trained BoneAgeNet.
        records: the evaluated images (`image_path`, `male`, `age_months`).
        config: the model's `BoneAgeConfig`.
        limit: at most this many images, evenly spread over the split.
        seed: seed of the untrained control's weights.

    Returns:
        dict with `maps`, `untrained`, `masks` (bool, input grid), `images`, `records`, or None
        without phantom truth (a real data set).
    """
    root, positions, rows = match_truth(records["image_path"], LESION_KIND)
    if root is None or len(positions) < 2:
        return None
    keep = scored_subset(len(positions), limit)
    subset = records.iloc[positions[keep]]
    rows = rows.iloc[keep]
    images, maps = _cams(model, subset, config)
    _, untrained = _cams(untrained_copy(model, seed), subset, config)
    masks = np.stack([read_mask(root, rel, size_hw=images.shape[1:3]) for rel in rows["mask"]])
    return {
        "maps": maps,
        "untrained": untrained,
        "masks": masks,
        "images": images,
        "records": subset,
    }


def localisation(model, records, config, *, limit=MAX_SCORED, seed=UNTRAINED_SEED):
    """The `localisation` block and report panels of a bone-age model on phantom hands.

    Returns:
        `(block, panels)`, or None where `localisation_inputs` is None. Arguments as there.
    """
    scored = localisation_inputs(model, records, config, limit=limit, seed=seed)
    if scored is None:
        return None
    subset = scored["records"]
    captions = [
        f"{report_caption(p)}: {age:.0f} months"
        for p, age in zip(subset["image_path"], subset["age_months"], strict=True)
    ]
    return score_and_draw(
        scored, captions, unit="image", lesion=LESION_KIND, untrained_seed=int(seed)
    )
