"""Seeded data augmentation on TensorFlow ops and the `tf.data` pipelines built on it.

Every random function takes the example and a `seed` tensor of shape (2,) (int32 or int64) and uses
stateless random ops only, so the same seed always gives the same result, in eager code and inside
`tf.data` maps alike, and nothing calls back into Python. Images are `(H, W, C)` float32 in [0, 1];
volumes are MRI slice stacks `(H, W, S)`, on which the 2-D functions act on every slice identically
(the slices are the channel axis) and the `*_slices` functions act along the slice axis.

Geometry follows the display convention: x to the right, y down, positive angles turn the image
counter-clockwise as `np.rot90` does, a zoom factor above 1 magnifies, translations move the content
right/down. Rotation, zoom and translation compose into one projective warp
(`tf.raw_ops.ImageProjectiveTransformV3`, bilinear) so the image is resampled once.

`make_image_dataset` reads image files into a batched `tf.data.Dataset`: decode (PNG 8/16-bit and
plain JPEG with `tf.io` in the graph; DICOM, EXIF-rotated JPEG and anything else through
`common.image_io.read_image` in a `numpy_function`), optional crop (a tensor slice), resize on the
decoded integers (the cast to float happens at the model's input size, after the resize), gray,
optional preprocessing, then rounding to uint8 (uint16 when a source has more than 8 bits) and a
cache of those small integer images (in memory or in a file), so that every epoch after the first
skips decoding and a cache takes a quarter (a half) of a float32 one; then shuffling, the cast back
to float32 in [0, 1] and augmentation. The rounding happens with and without a cache, so training
(cached) and evaluation (uncached) see the same values.
`make_volume_dataset` does the same for arrays (or memory maps) of slice stacks.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.errors import DataError
from common.image_io import DICOM_SUFFIXES
from common.image_io import RGB_TO_GRAY
from common.image_io import ImageReadError
from common.image_io import check_image_header
from common.image_io import exif_orientation
from common.image_io import read_image
from common.image_io import register_pipeline_files

FILL_MODES = ("constant", "reflect", "nearest", "wrap")
PREPROCESSING = ("equalize",)

_KIND_PNG8 = 0
_KIND_PNG16 = 1
_KIND_JPEG = 2
_KIND_PYTHON = 3  # decoded by common.image_io.read_image (DICOM, EXIF-rotated JPEG, other formats)

CROPS = ("full", "left_half", "right_half")  # crop codes 0, 1, 2 of `image_loader`
CACHE_LIMIT_BYTES = 2 * 1024**3  # cache="auto": in memory below this, in a file above


# ----------------------------------------------------------------------------------------------
# Seeds and small helpers


def _seed(seed):
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    return tf.cast(tf.reshape(seed, [2]), tf.int64)


def split_seed(seed, num=2):
    """Derive `num` independent seeds of shape (2,) from one seed.

    Args:
        seed: int tensor of shape (2,).
        num: how many seeds to derive.

    Returns:
        int64 tensor of shape (num, 2).
    """
    return tf.random.experimental.stateless_split(_seed(seed), num=num)


def _uniform(seed, low, high):
    return tf.random.stateless_uniform(
        [], seed=_seed(seed), minval=float(low), maxval=float(high), dtype=tf.float32
    )


def _image(image):
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.float32:
        image = tf.cast(image, tf.float32)
    if image.shape.rank is not None and image.shape.rank not in (3, 4):
        raise ValueError(f"Expected an image of shape (H, W, C) or (B, H, W, C), got {image.shape}")
    return image


def _image_to_resize(image):
    """`_image`, but uint8/uint16 stay integers: `tf.image.resize` reads them and returns float32."""
    image = tf.convert_to_tensor(image)
    if image.dtype in (tf.uint8, tf.uint16):
        if image.shape.rank is not None and image.shape.rank not in (3, 4):
            raise ValueError(
                f"Expected an image of shape (H, W, C) or (B, H, W, C), got {image.shape}"
            )
        return image
    return _image(image)


def _check_fill_mode(fill_mode):
    if fill_mode not in FILL_MODES:
        raise ValueError(f"Unknown fill_mode '{fill_mode}'. Available: {list(FILL_MODES)}")


def _size_hw(image_size_hw):
    try:
        out_h, out_w = (int(v) for v in image_size_hw)
    except (TypeError, ValueError):
        raise ValueError(f"image_size_hw must be (height, width), got {image_size_hw!r}") from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"image_size_hw must be positive, got {tuple(image_size_hw)}")
    return out_h, out_w


# ----------------------------------------------------------------------------------------------
# 2-D augmentations (also act on every slice of an (H, W, S) volume)


def random_flip_left_right(image, seed, probability=0.5):
    """Mirror an image left-right with the given probability.

    Args:
        image: float (or uint8/uint16) tensor (H, W, C).
        seed: int tensor of shape (2,).
        probability: chance of flipping (default 0.5).

    Returns:
        tensor of the same shape (float32, or the integer type it was given).
    """
    image = _image_to_resize(image)  # uint8/uint16 stay integers
    flip = _uniform(seed, 0.0, 1.0) < probability
    return tf.cond(flip, lambda: tf.reverse(image, axis=[-2]), lambda: image)


def random_flip_up_down(image, seed, probability=0.5):
    """Mirror an image top-bottom with the given probability.

    Args:
        image: float (or uint8/uint16) tensor (H, W, C).
        seed: int tensor of shape (2,).
        probability: chance of flipping (default 0.5).

    Returns:
        tensor of the same shape (float32, or the integer type it was given).
    """
    image = _image_to_resize(image)  # uint8/uint16 stay integers
    flip = _uniform(seed, 0.0, 1.0) < probability
    return tf.cond(flip, lambda: tf.reverse(image, axis=[-3]), lambda: image)


def affine_transform(
    image, *, angle_deg=0.0, scale=1.0, dx_px=0.0, dy_px=0.0, fill_mode="constant"
):
    """Rotate, zoom and translate an image about its centre with one bilinear warp.

    Args:
        image: float tensor (H, W, C) or (B, H, W, C).
        angle_deg: rotation in degrees, positive counter-clockwise (as `np.rot90`).
        scale: zoom factor; above 1 magnifies.
        dx_px: shift of the content to the right, in pixels.
        dy_px: shift of the content downwards, in pixels.
        fill_mode: "constant" (zeros), "reflect", "nearest" or "wrap" for pixels from outside.

    Returns:
        float32 tensor of the same shape.
    """
    _check_fill_mode(fill_mode)
    image = _image(image)
    batched = image.shape.rank == 4
    images = image if batched else image[None]
    shape = tf.shape(images)
    h = tf.cast(shape[1], tf.float32)
    w = tf.cast(shape[2], tf.float32)
    theta = tf.cast(angle_deg, tf.float32) * (math.pi / 180.0)
    inv_scale = 1.0 / tf.cast(scale, tf.float32)
    cos = tf.cos(theta) * inv_scale
    sin = tf.sin(theta) * inv_scale
    # Output pixel p maps to input pixel M p + b, with M = (sR)^-1 and b = c - M (c + t).
    cx = (w - 1.0) / 2.0
    cy = (h - 1.0) / 2.0
    tx = cx + tf.cast(dx_px, tf.float32)
    ty = cy + tf.cast(dy_px, tf.float32)
    b0 = cx - (cos * tx - sin * ty)
    b1 = cy - (sin * tx + cos * ty)
    zero = tf.zeros_like(cos)
    transform = tf.stack([cos, -sin, b0, sin, cos, b1, zero, zero])
    transforms = tf.tile(transform[None], [shape[0], 1])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )
    out = tf.ensure_shape(out, images.shape)
    return out if batched else out[0]


def random_affine(
    image,
    seed,
    *,
    max_degrees=0.0,
    max_dx_px=0.0,
    max_dy_px=0.0,
    scale_range=(1.0, 1.0),
    fill_mode="constant",
):
    """Random rotation, translation and zoom in one warp (uniform draws in the given ranges).

    Args:
        image: float tensor (H, W, C).
        seed: int tensor of shape (2,).
        max_degrees: angles are drawn from [-max_degrees, max_degrees].
        max_dx_px: horizontal shifts from [-max_dx_px, max_dx_px] pixels.
        max_dy_px: vertical shifts from [-max_dy_px, max_dy_px] pixels.
        scale_range: zoom factors from [low, high].
        fill_mode: "constant" (zeros), "reflect", "nearest" or "wrap".

    Returns:
        float32 tensor of the same shape.
    """
    for name, value in (
        ("max_degrees", max_degrees),
        ("max_dx_px", max_dx_px),
        ("max_dy_px", max_dy_px),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    low, high = (float(v) for v in scale_range)
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    seeds = split_seed(seed, 4)
    return affine_transform(
        image,
        angle_deg=_uniform(seeds[0], -max_degrees, max_degrees),
        scale=_uniform(seeds[1], low, high),
        dx_px=_uniform(seeds[2], -max_dx_px, max_dx_px),
        dy_px=_uniform(seeds[3], -max_dy_px, max_dy_px),
        fill_mode=fill_mode,
    )


def random_rotate(image, seed, max_degrees, fill_mode="constant"):
    """Rotate by an angle drawn uniformly from [-max_degrees, max_degrees] (bilinear).

    Args:
        image: float tensor (H, W, C).
        seed: int tensor of shape (2,).
        max_degrees: largest rotation in degrees.
        fill_mode: "constant" (zeros) or "reflect" (also "nearest", "wrap").

    Returns:
        float32 tensor of the same shape.
    """
    if max_degrees < 0:
        raise ValueError(f"max_degrees must be >= 0, got {max_degrees}")
    angle = _uniform(seed, -max_degrees, max_degrees)
    return affine_transform(image, angle_deg=angle, fill_mode=fill_mode)


def random_translate(image, seed, max_dx_px, max_dy_px, fill_mode="constant"):
    """Shift by (dx, dy) pixels drawn uniformly from [-max_dx_px, max_dx_px] x [-max_dy_px, max_dy_px].

    Args:
        image: float tensor (H, W, C).
        seed: int tensor of shape (2,).
        max_dx_px: largest horizontal shift in pixels.
        max_dy_px: largest vertical shift in pixels.
        fill_mode: "constant" (zeros) or "reflect" (also "nearest", "wrap").

    Returns:
        float32 tensor of the same shape.
    """
    if max_dx_px < 0 or max_dy_px < 0:
        raise ValueError(f"max_dx_px and max_dy_px must be >= 0, got {max_dx_px}, {max_dy_px}")
    seeds = split_seed(seed, 2)
    dx = _uniform(seeds[0], -max_dx_px, max_dx_px)
    dy = _uniform(seeds[1], -max_dy_px, max_dy_px)
    return affine_transform(image, dx_px=dx, dy_px=dy, fill_mode=fill_mode)


def random_zoom(image, seed, scale_range=(0.9, 1.1), fill_mode="constant"):
    """Zoom about the centre by a factor drawn uniformly from `scale_range` (above 1 magnifies).

    Args:
        image: float tensor (H, W, C).
        seed: int tensor of shape (2,).
        scale_range: (low, high) zoom factors, default (0.9, 1.1).
        fill_mode: "constant" (zeros) or "reflect" (also "nearest", "wrap").

    Returns:
        float32 tensor of the same shape.
    """
    low, high = (float(v) for v in scale_range)
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    return affine_transform(image, scale=_uniform(seed, low, high), fill_mode=fill_mode)


def random_intensity_shift(image, seed, max_delta):
    """Add one brightness offset drawn from [-max_delta, max_delta] to every pixel, then clip to [0, 1].

    Args:
        image: float tensor in [0, 1].
        seed: int tensor of shape (2,).
        max_delta: largest offset.

    Returns:
        float32 tensor of the same shape, in [0, 1].
    """
    if max_delta < 0:
        raise ValueError(f"max_delta must be >= 0, got {max_delta}")
    image = _image(image)
    return tf.clip_by_value(image + _uniform(seed, -max_delta, max_delta), 0.0, 1.0)


def equalize_histogram(image, bins=256):
    """Histogram equalisation of an image in [0, 1] (all channels share one histogram).

    The value of bin k becomes (cdf(k) - cdf_min) / (N - cdf_min), the classic formula (as OpenCV's
    `equalizeHist`), so the darkest occupied bin maps to 0 and the brightest to 1. A constant image
    is returned unchanged.

    Args:
        image: float tensor in [0, 1], any shape.
        bins: number of gray levels (default 256; use more for 16-bit sources).

    Returns:
        float32 tensor of the same shape, in [0, 1].
    """
    if int(bins) < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    bins = int(bins)
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    index = tf.clip_by_value(tf.cast(tf.floor(image * bins), tf.int32), 0, bins - 1)
    hist = tf.math.bincount(
        tf.reshape(index, [-1]), minlength=bins, maxlength=bins, dtype=tf.float32
    )
    cdf = tf.cumsum(hist)
    total = cdf[-1]
    cdf_min = tf.reduce_min(tf.where(hist > 0, cdf, total))
    denom = total - cdf_min
    lut = tf.clip_by_value((cdf - cdf_min) / tf.maximum(denom, 1.0), 0.0, 1.0)
    return tf.where(denom > 0, tf.gather(lut, index), image)


def _resize_to(image, size_hw):
    """Area averaging when shrinking both axes (as cv2's INTER_AREA), else bilinear."""
    size_hw = tf.convert_to_tensor(size_hw, dtype=tf.int32)
    shape = tf.shape(image)
    shrinking = tf.logical_and(size_hw[0] <= shape[-3], size_hw[1] <= shape[-2])
    return tf.cond(
        shrinking,
        lambda: tf.image.resize(image, size_hw, method="area"),
        lambda: tf.image.resize(image, size_hw, method="bilinear"),
    )


def resize(image, image_size_hw):
    """Resize to `image_size_hw` (stretching): area averaging when shrinking, else bilinear.

    Area averaging (the same as OpenCV's `INTER_AREA`) does not alias when shrinking a radiograph
    several-fold and costs a third of an antialiased bilinear resize. Integer images (uint8,
    uint16) are resized as they are, so the cast to float happens at the output size; the result
    keeps their scale (0..255, 0..65535).

    Args:
        image: float or integer tensor (H, W, C).
        image_size_hw: (height, width) of the result.

    Returns:
        float32 tensor (height, width, C).
    """
    out_h, out_w = _size_hw(image_size_hw)
    image = _image_to_resize(image)
    out = _resize_to(image, [out_h, out_w])
    return tf.ensure_shape(out, image.shape[:-3].concatenate([out_h, out_w, image.shape[-1]]))


def resize_keep_aspect(image, image_size_hw):
    """Resize to fit `image_size_hw` keeping the aspect ratio, then pad with zeros, centred.

    Resampling as `resize` (integer images too). The geometry equals
    `common.image_io.read_image_resized(..., keep_aspect=True)`.

    Args:
        image: float or integer tensor (H, W, C).
        image_size_hw: (height, width) of the result.

    Returns:
        float32 tensor (height, width, C).
    """
    out_h, out_w = _size_hw(image_size_hw)
    image = _image_to_resize(image)
    if image.shape.rank != 3:
        raise ValueError(f"resize_keep_aspect expects (H, W, C), got {image.shape}")
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float64)
    w = tf.cast(shape[1], tf.float64)
    scale = tf.minimum(out_h / h, out_w / w)
    new_h = tf.clip_by_value(tf.cast(tf.round(h * scale), tf.int32), 1, out_h)
    new_w = tf.clip_by_value(tf.cast(tf.round(w * scale), tf.int32), 1, out_w)
    resized = _resize_to(image, tf.stack([new_h, new_w]))
    top = (out_h - new_h) // 2
    left = (out_w - new_w) // 2
    padded = tf.pad(resized, [[top, out_h - new_h - top], [left, out_w - new_w - left], [0, 0]])
    return tf.ensure_shape(padded, [out_h, out_w, image.shape[-1]])


# ----------------------------------------------------------------------------------------------
# Volume augmentations for (H, W, S) slice stacks


def random_flip_slices(volume, seed, probability=0.5):
    """Reverse the slice order of an (H, W, S) stack with the given probability.

    Args:
        volume: float tensor (H, W, S).
        seed: int tensor of shape (2,).
        probability: chance of reversing (default 0.5).

    Returns:
        float32 tensor of the same shape.
    """
    volume = _image(volume)
    flip = _uniform(seed, 0.0, 1.0) < probability
    return tf.cond(flip, lambda: tf.reverse(volume, axis=[-1]), lambda: volume)


def random_shift_slices(volume, seed, max_slices):
    """Shift the slices of an (H, W, S) stack by k in [-max_slices, max_slices], filling with zeros.

    Slice i of the result is slice i - k of the input (zeros where that is outside the stack).

    Args:
        volume: float tensor (H, W, S).
        seed: int tensor of shape (2,).
        max_slices: largest shift in slices (int >= 0).

    Returns:
        float32 tensor of the same shape.
    """
    max_slices = int(max_slices)
    if max_slices < 0:
        raise ValueError(f"max_slices must be >= 0, got {max_slices}")
    volume = _image(volume)
    if max_slices == 0:
        return volume
    k = tf.random.stateless_uniform(
        [], seed=_seed(seed), minval=-max_slices, maxval=max_slices + 1, dtype=tf.int32
    )
    depth = tf.shape(volume)[-1]
    padded = tf.pad(volume, [[0, 0], [0, 0], [max_slices, max_slices]])
    out = tf.slice(padded, tf.stack([0, 0, max_slices - k]), tf.stack([-1, -1, depth]))
    return tf.ensure_shape(out, volume.shape)


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What `augment_fn` does to each training example, in this order.

    Args:
        flip_lr: mirror left-right with probability 0.5.
        flip_ud: mirror top-bottom with probability 0.5.
        rotation_deg: rotations drawn from [-rotation_deg, rotation_deg] degrees.
        translate_px: (dx, dy): shifts drawn from [-dx, dx] x [-dy, dy] pixels.
        zoom_range: (low, high) zoom factors; (1, 1) for none.
        intensity_delta: brightness offsets drawn from [-intensity_delta, intensity_delta].
        equalize: probability of histogram-equalising an example (True means 0.5).
        seed: folded into every per-example seed, so two configurations draw differently.
        fill_mode: how the warp fills pixels from outside: "constant" (zeros) or "reflect".
        flip_slices: (volumes) reverse the slice order with probability 0.5.
        shift_slices: (volumes) shift the slices by up to this many, zero filled.
    """

    flip_lr: bool = False
    flip_ud: bool = False
    rotation_deg: float = 0.0
    translate_px: tuple[float, float] = (0.0, 0.0)
    zoom_range: tuple[float, float] = (1.0, 1.0)
    intensity_delta: float = 0.0
    equalize: float = 0.0
    seed: int = 0
    fill_mode: str = "constant"
    flip_slices: bool = False
    shift_slices: int = 0

    def __post_init__(self):
        _check_fill_mode(self.fill_mode)
        if self.rotation_deg < 0:
            raise ValueError(f"rotation_deg must be >= 0, got {self.rotation_deg}")
        if len(self.translate_px) != 2 or min(self.translate_px) < 0:
            raise ValueError(f"translate_px must be (dx, dy) >= 0, got {self.translate_px}")
        low, high = self.zoom_range
        if not 0 < low <= high:
            raise ValueError(
                f"zoom_range must be (low, high), 0 < low <= high, got {self.zoom_range}"
            )
        if self.intensity_delta < 0:
            raise ValueError(f"intensity_delta must be >= 0, got {self.intensity_delta}")
        if not 0 <= self.equalize_probability <= 1:
            raise ValueError(f"equalize must be a bool or a probability, got {self.equalize}")
        if int(self.shift_slices) < 0:
            raise ValueError(f"shift_slices must be >= 0, got {self.shift_slices}")

    @property
    def equalize_probability(self):
        """The chance that an example is equalised (True counts as 0.5)."""
        if self.equalize is True:
            return 0.5
        return float(self.equalize or 0.0)

    @property
    def flips_only(self):
        """Whether the configuration only mirrors (no warp, intensity change or equalisation):
        then it works on integer images as well and keeps their type."""
        return not (self.has_warp or self.intensity_delta or self.equalize_probability > 0)

    @property
    def has_warp(self):
        """Whether any rotation, translation or zoom is asked for."""
        return bool(self.rotation_deg or any(self.translate_px) or tuple(self.zoom_range) != (1, 1))


def augment_fn(config):
    """The per-example augmentation function `fn(image, seed) -> image` for an `AugmentConfig`.

    Args:
        config: an `AugmentConfig`.

    Returns:
        A function of an (H, W, C) image (or (H, W, S) volume) and an int seed of shape (2,), built
        from tf ops only, usable in `tf.data` maps.
    """
    if not isinstance(config, AugmentConfig):
        raise ValueError(f"augment_fn expects an AugmentConfig, got {type(config).__name__}")

    def fn(image, seed):
        seed = tf.random.experimental.stateless_fold_in(_seed(seed), int(config.seed))
        seeds = split_seed(seed, 7)
        image = _image_to_resize(image) if config.flips_only else _image(image)
        if config.flip_lr:
            image = random_flip_left_right(image, seeds[0])
        if config.flip_ud:
            image = random_flip_up_down(image, seeds[1])
        if config.has_warp:
            image = random_affine(
                image,
                seeds[2],
                max_degrees=config.rotation_deg,
                max_dx_px=config.translate_px[0],
                max_dy_px=config.translate_px[1],
                scale_range=config.zoom_range,
                fill_mode=config.fill_mode,
            )
        if config.intensity_delta:
            image = random_intensity_shift(image, seeds[3], config.intensity_delta)
        if config.equalize_probability > 0:
            chosen = _uniform(seeds[4], 0.0, 1.0) < config.equalize_probability
            current = image
            image = tf.cond(chosen, lambda: equalize_histogram(current), lambda: current)
        if config.flip_slices:
            image = random_flip_slices(image, seeds[5])
        if config.shift_slices:
            image = random_shift_slices(image, seeds[6], config.shift_slices)
        return image

    return fn


def _as_augment(augment):
    if augment is None:
        return None
    if isinstance(augment, AugmentConfig):
        return augment_fn(augment)
    if callable(augment):
        return augment
    raise ValueError(f"augment must be an AugmentConfig, a function or None, got {augment!r}")


# ----------------------------------------------------------------------------------------------
# Datasets


def _as_array(values, n, name):
    arr = np.asarray(values)
    if arr.ndim == 0 or len(arr) != n:
        got = "a scalar" if arr.ndim == 0 else f"{len(arr)} values"
        raise DataError(f"{name} has {got} for {n} examples")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype.kind in "OUS":
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _as_targets(targets, n):
    if targets is None:
        return None
    if isinstance(targets, Mapping):
        return {str(k): _as_array(v, n, f"target '{k}'") for k, v in targets.items()}
    return _as_array(targets, n, "targets")


def scan_image_files(paths):
    """Check that every file exists, is not empty and claims a sane size; choose how each decodes.

    Args:
        paths: image file paths (str).

    Returns:
        int32 array of decoder kinds, one per path, for `image_loader`.

    Raises:
        ImageReadError: a file is missing or empty, or its header claims too many pixels.
    """
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
        raise ImageReadError(f"file not found{more}", path=missing[0])
    kinds = np.empty(len(paths), dtype=np.int32)
    for i, path in enumerate(paths):
        size = os.path.getsize(path)
        if size == 0:
            raise ImageReadError("empty file", path=path)
        with open(path, "rb") as f:
            head = f.read(132)
            f.seek(max(0, size - 12))
            tail = f.read(12)
        check_image_header(path, head)  # a header claiming too many pixels stops before decoding
        kinds[i] = _choose_kind(path, head, tail)
    register_pipeline_files(paths)  # a decoder error inside tf.data is traced back to its file
    return kinds


def _choose_kind(path, head, tail):
    if Path(path).suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM":
        return _KIND_PYTHON
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        # A PNG that does not end with its IEND chunk is truncated (or has trailing data):
        # read_image decides, and names the file if it is broken.
        if not tail.endswith(b"IEND\xaeB`\x82"):
            return _KIND_PYTHON
        # IHDR bit depth (byte 24): 16-bit files decode as uint16, all others (1-8 bit) as uint8.
        return _KIND_PNG16 if len(head) > 24 and head[24] == 16 else _KIND_PNG8
    if head.startswith(b"\xff\xd8\xff"):
        if not tail.endswith(b"\xff\xd9") or exif_orientation(path) != 1:
            return _KIND_PYTHON
        return _KIND_JPEG
    return _KIND_PYTHON


def cache_dtype(kinds):
    """The integer type images of these sources are kept in: uint8, or uint16 for deeper sources.

    16-bit PNGs and files read by `common.image_io.read_image` (DICOM, typically 12-16 bits, and
    the rare other formats) get uint16, so rounding never costs them precision that their source
    had; when every source is an 8-bit PNG or JPEG, uint8 loses nothing but the resize's fractions
    (at most half a gray level).

    Args:
        kinds: decoder kinds from `scan_image_files`.

    Returns:
        `tf.uint8` or `tf.uint16`.
    """
    kinds = np.asarray(kinds)
    deep = np.any((kinds == _KIND_PNG16) | (kinds == _KIND_PYTHON))
    return tf.uint16 if deep else tf.uint8


def quantize(image, dtype):
    """Round an image in [0, 1] to `dtype` (uint8: 0..255, uint16: 0..65535).

    Args:
        image: float tensor in [0, 1] (values outside are clipped).
        dtype: `tf.uint8` or `tf.uint16`.

    Returns:
        tensor of `dtype`, same shape.
    """
    dtype = tf.as_dtype(dtype)
    scale = float(dtype.max)
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * scale), dtype)


def dequantize(image):
    """The float32 image in [0, 1] of a uint8 / uint16 one (float images are returned as they are).

    Args:
        image: tensor.

    Returns:
        float32 tensor.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype in (tf.uint8, tf.uint16):
        return tf.cast(image, tf.float32) / float(image.dtype.max)
    return image


def _to_gray(image):
    channels = tf.shape(image)[-1]
    weights = tf.constant(RGB_TO_GRAY, dtype=tf.float32)

    def rgb():
        return tf.reduce_sum(image[..., :3] * weights, axis=-1, keepdims=True)

    return tf.cond(channels >= 3, rgb, lambda: image[..., :1])


def _read_image_numpy(path):
    return read_image(path.decode("utf-8") if isinstance(path, bytes) else str(path))


def _crop(image, crop):
    """Crop code 0: whole image; 1: left half; 2: right half (a slice, no copy in the graph)."""
    width = tf.shape(image)[1]
    half = width // 2
    crop = tf.cast(crop, tf.int32)
    start = tf.where(crop == 2, width - half, 0)
    size = tf.where(crop == 0, width, half)
    return image[:, start : start + size]


def image_loader(kinds, image_size_hw, *, keep_aspect=False, preprocess=None):
    """The per-file function of `make_image_dataset`: file -> small integer image for its cache.

    Decode in the graph (`tf.io.decode_png` 8/16-bit, `tf.io.decode_jpeg`; a `numpy_function`
    through `common.image_io.read_image` only for DICOM, EXIF-rotated JPEG and other formats),
    crop (`CROPS`: a tensor slice), resize the decoded integers (area averaging when shrinking),
    gray (BT.601 weights, after the resize: both are linear, so the order only changes rounding),
    scale to [0, 1], preprocess, round to `cache_dtype(kinds)`.

    Args:
        kinds: decoder kinds of the files (from `scan_image_files`).
        image_size_hw: (height, width) of the result.
        keep_aspect: resize keeping the aspect ratio and pad (True) or stretch (False).
        preprocess: None, "equalize" or a function `fn(image)` on the float image in [0, 1].

    Returns:
        `load(path, kind, crop=0)` -> uint8 or uint16 tensor `(height, width, 1)`; its `dtype`
        attribute is that type.
    """
    out_h, out_w = _size_hw(image_size_hw)
    kinds = np.asarray(kinds, dtype=np.int32)
    dtype = cache_dtype(kinds)
    use_python = bool(np.any(kinds == _KIND_PYTHON))
    preprocess_fn = _preprocess_fn(preprocess)
    resize_fn = resize_keep_aspect if keep_aspect else resize

    def small(image, crop, scale):
        image = resize_fn(_crop(image, crop), (out_h, out_w))
        return _to_gray(image) / scale

    def load(path, kind, crop=0):
        def png8():
            image = tf.io.decode_png(tf.io.read_file(path), channels=0)
            return small(image, crop, 255.0)

        def png16():
            image = tf.io.decode_png(tf.io.read_file(path), channels=0, dtype=tf.uint16)
            return small(image, crop, 65535.0)

        def jpeg():
            data = tf.io.read_file(path)
            image = tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")
            return small(image, crop, 255.0)

        def python():
            image = tf.numpy_function(_read_image_numpy, [path], tf.float32, stateful=False)
            image = tf.reshape(image, tf.concat([tf.shape(image)[:2], [1]], axis=0))
            return small(tf.ensure_shape(image, [None, None, 1]), crop, 1.0)

        branches = [png8, png16, jpeg] + ([python] if use_python else [])
        image = tf.switch_case(tf.minimum(kind, len(branches) - 1), branches)
        image = tf.ensure_shape(image, [out_h, out_w, 1])
        if preprocess_fn is not None:
            image = preprocess_fn(image)
        # Rounded at its own source's depth first (8-bit PNG and JPEG: 255 levels), so an image
        # gets the same values whether the set's container is uint8 or, because another source
        # is deeper, uint16 (k / 255 is stored exactly as k * 257): a film's prediction must not
        # depend on the files it is read with.
        levels = tf.where((kind == _KIND_PNG8) | (kind == _KIND_JPEG), 255.0, 65535.0)
        image = tf.round(tf.clip_by_value(image, 0.0, 1.0) * levels) / levels
        return tf.ensure_shape(quantize(image, dtype), [out_h, out_w, 1])

    load.dtype = dtype
    return load


def _as_crops(crops, n):
    if crops is None:
        return None
    codes = []
    for crop in crops:
        if isinstance(crop, str):
            if crop not in CROPS:
                raise DataError(f"unknown crop '{crop}', expected one of {list(CROPS)}")
            codes.append(CROPS.index(crop))
        else:
            codes.append(int(crop))
    codes = np.asarray(codes, dtype=np.int32)
    if len(codes) != n:
        raise DataError(f"crops has {len(codes)} values for {n} examples")
    if np.any((codes < 0) | (codes >= len(CROPS))):
        raise DataError(f"crop codes must be in 0..{len(CROPS) - 1}")
    return codes


def _temporary_cache_path():
    """A cache file name in a fresh temporary folder, removed when the interpreter exits."""
    folder = tempfile.mkdtemp(prefix="tfdata-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return os.path.join(folder, "images")


def resolve_cache(cache, *, n, image_size_hw, dtype, limit_bytes=CACHE_LIMIT_BYTES, cache_dir=None):
    """Where a cache of `n` images goes: `True` (memory), `False` or a file path.

    Args:
        cache: True, False, a file path, or "auto": in memory when the `n` images of `dtype` take
            less than `limit_bytes`, else in a file (`cache_dir/images`, or a temporary folder
            removed at exit) rather than no cache.
        n: number of images.
        image_size_hw: (height, width) of one cached image (one channel).
        dtype: the cached type (`tf.uint8` or `tf.uint16`).
        limit_bytes: memory limit of "auto".
        cache_dir: folder of a file cache (e.g. under the run folder), or None for a temporary one.

    Returns:
        True, False or a path (str).
    """
    if not (isinstance(cache, str) and cache == "auto"):
        return cache
    height, width = _size_hw(image_size_hw)
    size = int(n) * height * width * tf.as_dtype(dtype).size
    if size < int(limit_bytes):
        return True
    if cache_dir is None:
        return _temporary_cache_path()
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return os.path.join(os.fspath(cache_dir), "images")


def _preprocess_fn(preprocess):
    if preprocess is None:
        return None
    if callable(preprocess):
        return preprocess
    if preprocess == "equalize":
        return equalize_histogram
    raise ValueError(f"Unknown preprocess '{preprocess}'. Available: {list(PREPROCESSING)}")


def _finish(
    ds,
    *,
    n,
    training,
    seed,
    augment,
    cache,
    shuffle_buffer,
    batch_size,
    drop_remainder,
    channels,
    has_targets,
    has_weights,
    example_shape,
):
    """Cache, shuffle, augment, batch: the part shared by images and volumes.

    `ds` yields dicts {"image", "index", ["targets"], ["weights"]} in the original order.
    """
    if cache:
        if isinstance(cache, (str, os.PathLike)):
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            ds = ds.cache(os.fspath(cache))
        else:
            ds = ds.cache()
    if training:
        buffer = n if shuffle_buffer is None else int(shuffle_buffer)
        if shuffle_buffer is None and isinstance(cache, (str, os.PathLike)):
            buffer = min(
                n, 2048
            )  # elements read back from a file cache are copies, keep memory bounded
        if buffer > 1:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    fn = _as_augment(augment) if training else None
    # Flips only reorder pixels: they run on the cached integers (a quarter of the bytes of
    # float32), and the cast to float32 and the gray-to-RGB repeat run once per batch, after
    # batching, instead of once per example (the values are the same either way).
    on_integers = isinstance(augment, AugmentConfig) and augment.flips_only
    if fn is not None:
        # The per-example seed is (a number from a seeded random stream that changes every epoch,
        # the example's index in `paths`): reproducible for `seed`, different from epoch to epoch.
        stream = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def apply(element, random_value):
            element = dict(element)
            example_seed = tf.stack([random_value, tf.cast(element["index"], tf.int64)])
            image = element["image"]
            if not on_integers:
                image = dequantize(image)  # the cache holds integers: float from here on
            element["image"] = tf.ensure_shape(fn(image, example_seed), example_shape)
            return element

        ds = tf.data.Dataset.zip((ds, stream)).map(apply, num_parallel_calls=tf.data.AUTOTUNE)

    def to_output(batch):
        images = dequantize(batch["image"])
        if channels == 3:
            images = tf.repeat(images, 3, axis=-1)
        out = (images,)
        if has_targets:
            out += (batch["targets"],)
        if has_weights:
            out += (batch["weights"],)
        return out if len(out) > 1 else images

    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    ds = ds.map(to_output, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _check_common(batch_size, targets, sample_weights, n):
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n == 0:
        raise DataError("no examples given")
    targets = _as_targets(targets, n)
    if sample_weights is not None:
        if targets is None:
            raise ValueError("sample_weights need targets")
        sample_weights = _as_array(sample_weights, n, "sample_weights").astype(np.float32)
    return targets, sample_weights


def make_image_dataset(
    paths,
    targets,
    *,
    image_size_hw,
    batch_size,
    training,
    seed=0,
    augment=None,
    cache=True,
    preprocess=None,
    channels=1,
    sample_weights=None,
    keep_aspect=False,
    shuffle_buffer=None,
    drop_remainder=False,
    crops=None,
    cache_dir=None,
    cache_limit_bytes=CACHE_LIMIT_BYTES,
):
    """A batched `tf.data.Dataset` of images read from files, with targets (and sample weights).

    Pipeline (`image_loader`): decode (PNG 8/16-bit and JPEG with `tf.io` in the graph; DICOM, JPEG
    with an EXIF orientation other than 1 and any other format through `common.image_io.read_image`)
    -> crop -> resize (on the decoded integers) -> gray -> preprocess -> round to uint8 (uint16 for
    deeper sources) -> cache -> (training) shuffle -> float32 -> augment -> batch -> prefetch.
    Augmentation draws a per-example seed from (`seed`'s random stream, which changes every epoch,
    and the example's index), so two datasets built with the same `seed` yield the same sequence of
    epochs.

    Args:
        paths: image file paths.
        targets: one array of N values (or rows), a dict of such arrays, or None (images only).
        image_size_hw: (height, width) of the images.
        batch_size: examples per batch.
        training: shuffle and augment (True) or keep the order (False).
        seed: seed of shuffling and augmentation.
        augment: an `AugmentConfig`, a function `fn(image, seed)` or None; used only when training.
        cache: True caches decoded, resized images (uint8/uint16) in memory, a path caches them to
            that file, False decodes every epoch, "auto" keeps them in memory below
            `cache_limit_bytes` and in a file (under `cache_dir`, else a temporary folder) above.
        preprocess: None, "equalize" (histogram equalisation) or a function `fn(image)`, applied
            before the cache.
        channels: 1 (gray) or 3 (gray repeated, for RGB backbones).
        sample_weights: N per-example weights, or None.
        keep_aspect: resize keeping the aspect ratio and pad with zeros (True) or stretch (False).
        shuffle_buffer: shuffle buffer size (default: all N examples; 2048 with a file cache).
        drop_remainder: drop the last incomplete batch.
        crops: None, or per path one of `CROPS` ("full", "left_half", "right_half") or its code:
            the part of the image kept (before resizing).
        cache_dir: folder of the file cache chosen by `cache="auto"` (default: a temporary one).
        cache_limit_bytes: memory limit of `cache="auto"`.

    Returns:
        tf.data.Dataset of (images (B, H, W, channels) float32 in [0, 1], targets[, weights]), or of
        images alone when `targets` is None.

    Raises:
        ImageReadError: a file is missing or empty (checked before the dataset is built; a file
            found broken while decoding raises inside the iteration, naming the file when it was
            routed through `read_image`).
        DataError: targets or weights do not match the paths.
    """
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    out_h, out_w = _size_hw(image_size_hw)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    targets, sample_weights = _check_common(batch_size, targets, sample_weights, n)
    crop_codes = _as_crops(crops, n)
    _preprocess_fn(preprocess)  # an unknown name fails before the files are read
    kinds = scan_image_files(paths)
    load_image = image_loader(kinds, (out_h, out_w), keep_aspect=keep_aspect, preprocess=preprocess)
    cache = resolve_cache(
        cache,
        n=n,
        image_size_hw=(out_h, out_w),
        dtype=load_image.dtype,
        limit_bytes=cache_limit_bytes,
        cache_dir=cache_dir,
    )

    columns = {"path": tf.constant(paths, dtype=tf.string), "kind": kinds, "index": np.arange(n)}
    if crop_codes is not None:
        columns["crop"] = crop_codes
    if targets is not None:
        columns["targets"] = targets
    if sample_weights is not None:
        columns["weights"] = sample_weights
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if training and not cache:
        # Without a cache, shuffle the file names (cheap) rather than decoded images.
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)

    def load(element):
        element = dict(element)
        crop = element.pop("crop", 0)
        element["image"] = load_image(element.pop("path"), element.pop("kind"), crop)
        return element

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(
        ds,
        n=n,
        training=training,
        seed=seed,
        augment=augment,
        cache=cache,
        shuffle_buffer=shuffle_buffer if cache else 1,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
        channels=channels,
        has_targets=targets is not None,
        has_weights=sample_weights is not None,
        example_shape=[out_h, out_w, 1],
    )


def make_volume_dataset(
    volumes,
    targets,
    *,
    batch_size,
    training,
    seed=0,
    augment=None,
    cache=False,
    sample_weights=None,
    shuffle_buffer=None,
    drop_remainder=False,
):
    """A batched `tf.data.Dataset` of MRI slice stacks (H, W, S) with targets (and sample weights).

    Stacks are read one at a time by index (a `numpy_function` copy from the array or memory map,
    before the cache), so a memory map is never loaded whole; with `cache=True` they are read only
    in the first epoch and kept in memory (or in a cache file). Augmentation (an `AugmentConfig`
    with e.g. `flip_slices`, `shift_slices` and the 2-D options, which act on all slices
    identically) runs on tf ops after the cache.

    Args:
        volumes: array or memmap (N, H, W, S), values in [0, 1].
        targets: one array of N values (or rows), a dict of such arrays, or None.
        batch_size: examples per batch.
        training: shuffle and augment (True) or keep the order (False).
        seed: seed of shuffling and augmentation.
        augment: an `AugmentConfig`, a function `fn(volume, seed)` or None; used only when training.
        cache: False (default) reads the stacks every epoch; True caches them in memory; a path
            caches them to that file.
        sample_weights: N per-example weights, or None.
        shuffle_buffer: shuffle buffer size when cached (default: all N; without a cache the
            indices are shuffled completely).
        drop_remainder: drop the last incomplete batch.

    Returns:
        tf.data.Dataset of (volumes (B, H, W, S) float32, targets[, weights]).
    """
    if getattr(volumes, "ndim", None) != 4:
        raise ValueError(
            f"volumes must be (N, H, W, S), got shape {getattr(volumes, 'shape', None)}"
        )
    n, h, w, s = (int(v) for v in volumes.shape)
    targets, sample_weights = _check_common(batch_size, targets, sample_weights, n)
    columns = {"index": np.arange(n)}
    if targets is not None:
        columns["targets"] = targets
    if sample_weights is not None:
        columns["weights"] = sample_weights

    def read(index):
        return np.asarray(volumes[int(index)], dtype=np.float32)

    def load(element):
        element = dict(element)
        volume = tf.numpy_function(read, [element["index"]], tf.float32, stateful=False)
        element["image"] = tf.ensure_shape(volume, [h, w, s])
        return element

    ds = tf.data.Dataset.from_tensor_slices(columns)
    if training and not cache:
        # Shuffle indices (cheap) rather than stacks; each stack is then read in that order.
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(
        ds,
        n=n,
        training=training,
        seed=seed,
        augment=augment,
        cache=cache,
        shuffle_buffer=shuffle_buffer if cache else 1,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
        channels=1,
        has_targets=targets is not None,
        has_weights=sample_weights is not None,
        example_shape=[h, w, s],
    )
