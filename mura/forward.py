"""mura's compiled forward pass over one model or a checkpoint ensemble, and its batched run.

Shared by `mura.evaluate` (metrics, predict) and `mura.explain` (the CAMs scored against the
lesion truth), so that neither imports the other.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from common.errors import DataError
from common.image_io import ImageReadError
from common.image_io import read_image
from common.progress import progress
from mura.data import make_dataset
from mura.model import CAM_FEATURE_LAYER
from mura.model import OUTPUT_NAME
from mura.model import explain_model


def make_forward(members, *, with_cam=False):
    """A compiled forward pass of one model or an ensemble: mean probability (and mean CAM).

    Args:
        members: list of models from `build_model` (or reloaded), same input shape.
        with_cam: also return the class activation map on the feature grid.

    Returns:
        A `tf.function` from images `(B, H, W, C)` in [0, 1] to `{"probability": (B,)}` plus
        `"cam": (B, h, w)` (logit units, `sum_k w_k f_k(x, y)`) with `with_cam`.
    """
    members = list(members)
    if not members:
        raise ValueError("an ensemble needs at least one model")
    runners = [explain_model(m) if with_cam else m for m in members]
    kernels = [m.get_layer(OUTPUT_NAME).kernel for m in members] if with_cam else []

    @tf.function(reduce_retracing=True)
    def forward(images):
        probabilities, cams = [], []
        for i, runner in enumerate(runners):
            out = runner(images, training=False)
            probabilities.append(tf.reshape(tf.cast(out[OUTPUT_NAME], tf.float32), [-1]))
            if with_cam:
                features = tf.cast(out[CAM_FEATURE_LAYER], tf.float32)
                kernel = tf.cast(tf.reshape(kernels[i], [-1]), tf.float32)
                cams.append(tf.einsum("bhwc,c->bhw", features, kernel))
        result = {"probability": tf.add_n(probabilities) / len(runners)}
        if with_cam:
            result["cam"] = tf.add_n(cams) / len(runners)
        return result

    return forward


# The compiled forward passes of the last single model `predict` was given, so that repeated calls
# on one loaded model (a service, the benchmark) trace once; holds at most that one model.
_FORWARD_CACHE = {"model": None, "forwards": {}}


def _cached_forward(members, with_cam):
    if len(members) != 1:
        return make_forward(members, with_cam=with_cam)
    if _FORWARD_CACHE["model"] is not members[0]:
        _FORWARD_CACHE.update(model=members[0], forwards={})
    forwards = _FORWARD_CACHE["forwards"]
    if with_cam not in forwards:
        forwards[with_cam] = make_forward(members, with_cam=with_cam)
    return forwards[with_cam]


def _broken_file(paths):
    """The first of `paths` that does not decode, with the reason (None when all decode)."""
    for path in paths:
        try:
            read_image(path)
        except ImageReadError as exc:
            return path, exc
    return None


def run_forward(forward, records, config, *, batch_size=32, with_cam=False, desc=None):
    """Runs `forward` over the images of `records` (column `image_path`), in order.

    Reading overlaps compute: `make_dataset` decodes in parallel `tf.data` maps and prefetches.

    Args:
        forward: from `make_forward`.
        records: DataFrame with `image_path`.
        config: the model's `MURAConfig` (input size, channels).
        batch_size: images per forward pass.
        with_cam: collect `forward`'s CAMs too.
        desc: show progress under this name (None: quiet).

    Returns:
        `(probabilities (n,), cams (n, h, w) or None)`.

    Raises:
        DataError: an image cannot be read (naming it).
    """
    images_only = records[["image_path"]]
    ds = make_dataset(
        images_only, config=config, training=False, batch_size=batch_size, cache=False
    )
    probabilities, cams = [], []
    try:
        for images in progress(ds, desc=desc or "", unit="batches", enabled=desc is not None):
            out = forward(images)
            probabilities.append(out["probability"].numpy())
            if with_cam:
                cams.append(out["cam"].numpy())
    except tf.errors.OpError as exc:
        broken = _broken_file(list(images_only["image_path"]))
        if broken is not None:
            raise DataError(f"cannot read image: {broken[1].reason}", path=broken[0]) from None
        raise DataError(f"cannot read the images: {exc.message.splitlines()[0]}") from None
    probs = np.concatenate(probabilities).astype(np.float64)
    return probs, (np.concatenate(cams) if with_cam else None)
