"""Class activation maps of the MURA classifier: where the last dense block sees abnormality.

The network ends in global average pooling of the last dense block's features f_k(x, y) and one
sigmoid unit with weights w_k, so its logit is the spatial mean of the map
M(x, y) = sum_k w_k f_k(x, y) plus the bias. M, upsampled to the input size, is the class activation
map (CAM) that the MURA paper overlays on radiographs.

Reference:
    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, §2.
    Rajpurkar et al., MURA, 2018, §3 "Model" (class activation mappings).
"""

from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf

from common.identifiers import report_caption
from common.image_io import read_image
from common.phantom_truth import MAX_SCORED
from common.phantom_truth import match_truth
from common.phantom_truth import read_mask
from common.phantom_truth import score_and_draw
from common.phantom_truth import scored_subset
from common.phantom_truth import untrained_copy
from mura.model import CAM_FEATURE_LAYER
from mura.model import OUTPUT_NAME
from mura.model import explain_model

__all__ = ["class_activation_map", "explain_model"]


def _as_batch(model, image):
    """`image` (H, W), (H, W, C) or (B, H, W, C) in [0, 1] -> (B, H_in, W_in, C_in) float32."""
    x = np.asarray(image, dtype=np.float32)
    single = x.ndim in (2, 3)
    if x.ndim == 2:
        x = x[..., None]
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"image must be (H, W), (H, W, C) or (B, H, W, C), got shape {x.shape}")
    _, height, width, channels = model.inputs[0].shape
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"image must have 1 or 3 channels, got {x.shape[-1]}")
    if x.shape[-1] == 3 and channels == 1:
        x = x.mean(axis=-1, keepdims=True)
    if x.shape[1:3] != (height, width):
        x = tf.image.resize(x, (height, width), method="bilinear", antialias=True).numpy()
    if x.shape[-1] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=-1)
    return x, single


def class_activation_map(model, image, *, upsample=True, normalize=False, return_probability=False):
    """The class activation map of `model` for `image` (abnormality evidence per position).

    Args:
        model: a model from `build_model` (or reloaded), or the model of `explain_model`.
        image: a gray radiograph `(H, W)` in [0, 1], `(H, W, C)`, or a batch `(B, H, W, C)`; it is
            resized to the model's input size.
        upsample: resize the map to the model's input size (bilinear); False keeps the feature
            grid `(h, w)`.
        normalize: scale each map to [0, 1] (for overlays); False keeps the logit units, in which
            the mean of the un-upsampled map plus the unit's bias is the image's logit.
        return_probability: also return the model's probability of abnormality.

    Returns:
        The map, float32 `(H_in, W_in)` (or `(h, w)`), or `(B, ...)` for a batch; with
        `return_probability`, `(map, probability)` with a float (or `(B,)` for a batch).

    Reference:
        Zhou et al. 2016, Eq. for M_c(x, y).
    """
    x, single = _as_batch(model, image)
    names = set(model.output_names) if hasattr(model, "output_names") else set()
    explainer = model if CAM_FEATURE_LAYER in names else explain_model(model)
    outputs = explainer(x, training=False)
    features = np.asarray(outputs[CAM_FEATURE_LAYER], dtype=np.float32)
    probability = np.asarray(outputs[OUTPUT_NAME], dtype=np.float32).reshape(-1)
    kernel = np.asarray(model.get_layer(OUTPUT_NAME).kernel, dtype=np.float32).reshape(-1)
    cam = np.tensordot(features, kernel, axes=([-1], [0]))  # (B, h, w)
    if upsample:
        height, width = x.shape[1:3]
        cam = tf.image.resize(cam[..., None], (height, width), method="bilinear").numpy()[..., 0]
    if normalize:
        low = cam.min(axis=(1, 2), keepdims=True)
        high = cam.max(axis=(1, 2), keepdims=True)
        cam = (cam - low) / np.maximum(high - low, 1e-12)
    cam = cam.astype(np.float32)
    if single:
        cam, probability = cam[0], float(probability[0])
    return (cam, probability) if return_probability else cam


# --------------------------------------------------------------------------- localisation (15.1)

UNTRAINED_SEED = 1
MAP_NAME = "CAM"


def localisation_inputs(members, records, config, cams=None, *, limit=None, seed=UNTRAINED_SEED):
    """What the `localisation` block scores, on phantom images that show a lesion.

    The map is the one `evaluate` and `predict` draw: the CAM (mean over the ensemble's members),
    clipped at 0 by the score (positive = evidence of abnormality). Scored: the evaluated
    abnormal images whose lesion the phantom drew (`_phantom_truth/index.csv` lists exactly those:
    a fracture, an implant or a lytic lesion, shown on each view of an abnormal study with
    probability 0.9), at most `limit`.
    The lesion masks are stretched to the model's input like the images (`mura.data`).

    Args:
        members: the evaluated model(s).
        records: the evaluated images (`image_path`).
        config: the models' `MURAConfig`.
        cams: the members' mean CAMs of `records` on the feature grid, if already computed.
        limit: at most this many images (default `common.phantom_truth.MAX_SCORED`).
        seed: seed of the untrained control's weights (`untrained_copy` of the first member).

    Returns:
        dict with `maps`, `untrained`, `masks` (bool, input grid), `images` (gray, input grid, for
        the panels), `records` (the scored rows), or None without phantom truth.
    """
    from mura.forward import make_forward
    from mura.forward import run_forward

    records = records.reset_index(drop=True)
    root, positions, rows = match_truth(records["image_path"], None)
    if root is None:
        return None
    abnormal = records["label"].to_numpy()[positions] == 1 if "label" in records else True
    positions, rows = positions[abnormal], rows[abnormal]
    if len(positions) < 2:
        return None
    keep = scored_subset(len(positions), MAX_SCORED if limit is None else limit)
    subset = records.iloc[positions[keep]].reset_index(drop=True)
    rows = rows.iloc[keep]
    if cams is None:
        _, maps = run_forward(make_forward(members, with_cam=True), subset, config, with_cam=True)
    else:
        maps = np.asarray(cams)[positions[keep]]
    twin = untrained_copy(members[0], seed)
    _, untrained = run_forward(make_forward([twin], with_cam=True), subset, config, with_cam=True)
    height, width = (int(v) for v in config.input_shape[:2])
    masks = np.stack([read_mask(root, rel, size_hw=(height, width)) for rel in rows["mask"]])
    images = np.stack(
        [
            cv2.resize(read_image(p), (width, height), interpolation=cv2.INTER_AREA)
            for p in subset["image_path"]
        ]
    )
    return {
        "maps": maps,
        "untrained": untrained,
        "masks": masks,
        "images": images,
        "records": subset,
        "kinds": rows["kind"].tolist(),
    }


def localisation(members, records, config, cams=None, *, seed=UNTRAINED_SEED):
    """The `localisation` block and report panels of a MURA model on phantom lesions.

    Returns:
        `(block, panels)`, or None where `localisation_inputs` is None. Arguments as there.
    """
    scored = localisation_inputs(members, records, config, cams, seed=seed)
    if scored is None:
        return None
    subset = scored["records"]
    parts = subset["body_part"] if "body_part" in subset else [""] * len(subset)
    captions = [
        f"{part} {report_caption(p)}: {kind}".strip()
        for p, part, kind in zip(subset["image_path"], parts, scored["kinds"], strict=True)
    ]
    return score_and_draw(
        scored,
        captions,
        unit="image",
        lesion="the drawn lesion of abnormal images",
        untrained_seed=int(seed),
    )
