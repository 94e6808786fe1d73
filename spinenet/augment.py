"""The on-the-fly augmentation of paper 002 (§4) for disc volumes, and its exact inverse.

A disc volume is `(height, width, slices)` (112 x 224 x 9): the slices are the channels. One draw
of the augmentation is, in this order:

1. intensity: add `delta` (uniform in +-`intensity_delta`) to every voxel;
2. slices: shift the slice window by `dz` (an integer in +-`shift_slices`; slices moved in from
   outside are zeros), then, with `flip`, reverse the slice order (the slice-wise reflection about
   the mid-sagittal slice);
3. in-plane: one similarity transform for all slices, about the image centre: rotation by
   `angle_deg` (+-`rotation_deg`), scaling by `scale` (`scale_range`), then translation by
   `(tx, ty)` pixels (+-`shift_x_px`, +-`shift_y_px`); bilinear, zeros outside.

The in-plane map sends an original pixel `p` to `T(p) = c + s R (p - c) + t` (`c` the centre).
Saliency maps computed on augmented copies are taken back to the original frame with
`invert_maps`, which resamples them at `T(p)` and undoes the slice shift and flip (§3).

Training draws the same augmentations inside tf.data with `common.augment` (see
`spinenet.data.augment_config`); this module draws them with KNOWN parameters, so that the
evidence hotspots (`spinenet.explain`) can undo each one. Warps use
`tf.raw_ops.ImageProjectiveTransformV3` (bilinear, zeros outside).

Reference:
    Paper 002, §3 (hotspots from augmented copies, mapped back) and §4 ("Data augmentation
    details").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class VolumeAugmentConfig:
    """Ranges of the random augmentation (defaults: the paper's, §4).

    Args:
        rotation_deg: largest in-plane rotation, degrees (15).
        shift_x_px: largest horizontal translation, pixels (32).
        shift_y_px: largest vertical translation, pixels (24).
        shift_slices: largest shift of the slice window, slices (2).
        scale_range: `(low, high)` scaling factors (0.9, 1.1).
        intensity_delta: largest additive intensity change (0.1).
        slice_flip: whether to reverse the slice order with probability 0.5 (True).
    """

    rotation_deg: float = 15.0
    shift_x_px: float = 32.0
    shift_y_px: float = 24.0
    shift_slices: int = 2
    scale_range: tuple = (0.9, 1.1)
    intensity_delta: float = 0.1
    slice_flip: bool = True

    @classmethod
    def from_config(cls, config):
        """Builds the augmentation ranges from a model configuration dict (`get_config`)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


def sample_params(rng, augment, n) -> dict:
    """Draws `n` sets of augmentation parameters.

    Args:
        rng: a `numpy.random.Generator`.
        augment: a `VolumeAugmentConfig`.
        n: number of draws.

    Returns:
        A dict of arrays of length `n`: `angle_deg`, `scale`, `tx`, `ty` (float64), `dz` (int),
        `flip` (bool), `delta` (float64).
    """
    low, high = augment.scale_range
    return {
        "angle_deg": rng.uniform(-augment.rotation_deg, augment.rotation_deg, n),
        "scale": rng.uniform(low, high, n),
        "tx": rng.uniform(-augment.shift_x_px, augment.shift_x_px, n),
        "ty": rng.uniform(-augment.shift_y_px, augment.shift_y_px, n),
        "dz": rng.integers(-augment.shift_slices, augment.shift_slices + 1, n),
        "flip": (rng.random(n) < 0.5) if augment.slice_flip else np.zeros(n, dtype=bool),
        "delta": rng.uniform(-augment.intensity_delta, augment.intensity_delta, n),
    }


def _affine(angle_deg, scale, tx, ty, height, width):
    """`A (n, 2, 2)` and `b (n, 2)` of `T(p) = A p + b` in (x, y) pixel coordinates."""
    theta = np.deg2rad(np.asarray(angle_deg, dtype=np.float64))
    scale = np.asarray(scale, dtype=np.float64)
    cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
    a = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = np.stack([np.asarray(tx, dtype=np.float64), np.asarray(ty, dtype=np.float64)], -1)
    b = centre - np.einsum("nij,j->ni", a, centre) + shift
    return a, b


def _as_projective(a, b):
    zeros = np.zeros(len(a))
    return np.stack(
        [a[:, 0, 0], a[:, 0, 1], b[:, 0], a[:, 1, 0], a[:, 1, 1], b[:, 1], zeros, zeros], -1
    ).astype(np.float32)


def forward_transforms(params, height, width) -> np.ndarray:
    """Projective transforms `(n, 8)` that map an ORIGINAL pixel p to `T(p)`.

    Used as output->input maps they pull an augmented image back to the original frame.
    """
    a, b = _affine(params["angle_deg"], params["scale"], params["tx"], params["ty"], height, width)
    return _as_projective(a, b)


def inverse_transforms(params, height, width) -> np.ndarray:
    """Projective transforms `(n, 8)` that map an AUGMENTED pixel q to `T^-1(q)`.

    Used as output->input maps they produce the augmented image from the original.
    """
    a, b = _affine(params["angle_deg"], params["scale"], params["tx"], params["ty"], height, width)
    a_inv = np.linalg.inv(a)
    return _as_projective(a_inv, -np.einsum("nij,nj->ni", a_inv, b))


def warp(volumes, transforms, interpolation="BILINEAR"):
    """Resamples `volumes (n, H, W, S)` with projective `transforms (n, 8)` (output -> input).

    Returns:
        A float32 `tf.Tensor` `(n, H, W, S)`; points outside the input are 0.
    """
    volumes = tf.convert_to_tensor(volumes, tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=volumes,
        transforms=tf.convert_to_tensor(transforms, tf.float32),
        output_shape=tf.shape(volumes)[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )


def shift_slices(volumes, dz) -> np.ndarray:
    """Shifts the slice axis of each volume by `dz[i]`: `out[..., k] = in[..., k - dz]`, zeros in."""
    volumes = np.asarray(volumes)
    out = np.zeros_like(volumes)
    slices = volumes.shape[-1]
    for i, shift in enumerate(np.asarray(dz, dtype=int)):
        if shift >= 0:
            out[i, ..., shift:] = volumes[i, ..., : slices - shift]
        else:
            out[i, ..., :shift] = volumes[i, ..., -shift:]
    return out


def flip_slices(volumes, flip) -> np.ndarray:
    """Reverses the slice order of the volumes where `flip[i]` is true (a new array)."""
    volumes = np.array(volumes, copy=True)
    for i, do_flip in enumerate(np.asarray(flip, dtype=bool)):
        if do_flip:
            volumes[i] = volumes[i, ..., ::-1]
    return volumes


def augment_volumes(volume, params) -> np.ndarray:
    """Applies `n` augmentations (from `sample_params`) to one volume `(H, W, S)`.

    Returns:
        float32 `(n, H, W, S)`: the augmented copies.
    """
    volume = np.asarray(volume, dtype=np.float32)
    n = len(params["scale"])
    height, width = volume.shape[:2]
    copies = np.repeat(volume[None], n, axis=0) + params["delta"].reshape(-1, 1, 1, 1)
    copies = flip_slices(shift_slices(copies.astype(np.float32), params["dz"]), params["flip"])
    return warp(copies, inverse_transforms(params, height, width)).numpy()


def invert_maps(maps, params) -> np.ndarray:
    """Takes maps computed on augmented copies back to the frame of the original volume.

    Args:
        maps: `(n, H, W, S)`, map `i` in the frame of augmented copy `i`.
        params: the parameters the copies were made with.

    Returns:
        float32 `(n, H, W, S)`: each map resampled at `T(p)`, its slice flip and shift undone
        (slices that came from outside the original get no value: 0).
    """
    maps = np.asarray(maps, dtype=np.float32)
    height, width = maps.shape[1:3]
    back = warp(maps, forward_transforms(params, height, width)).numpy()
    return shift_slices(flip_slices(back, params["flip"]), -np.asarray(params["dz"]))
