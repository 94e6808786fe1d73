"""Evidence hotspots (§3), their augmentation inverse, and the 54-view test-time augmentation."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest
from keras import layers

from spinenet.augment import VolumeAugmentConfig
from spinenet.augment import augment_volumes
from spinenet.augment import invert_maps
from spinenet.augment import sample_params
from spinenet.explain import evidence_hotspots
from spinenet.explain import hotspot_overlay
from spinenet.explain import predict_tta
from spinenet.explain import saliency
from spinenet.explain import tta_views
from spinenet.model import build_model

TINY = {"conv_filters": (4, 4, 4, 4, 4), "fc_units": (8, 8), "input_mean": 0.0, "dropout": 0.0}
# A "lower endplate" evidence box: rows below the disc centre (row 55.5), mid slices.
BOX = (slice(68, 84), slice(96, 128), slice(3, 6))


def linear_model():
    """`lower_endplate` score y_1 = sum over BOX of x: the saliency |dy_1/dx| is the box itself."""
    weights = np.zeros((112, 224, 9), np.float32)
    weights[BOX] = 1.0
    inputs = keras.Input((112, 224, 9), name="volume")
    flat = layers.Flatten(name="flatten")(inputs)
    dense = layers.Dense(2, name="lower_endplate_fc8")
    scores = dense(flat)
    dense.set_weights([np.stack([np.zeros(weights.size), weights.ravel()], 1), np.zeros(2)])
    outputs = {"lower_endplate": layers.Activation("softmax", name="lower_endplate")(scores)}
    return keras.Model(inputs, outputs), weights


def bright_spot_model():
    """`lower_endplate` score y_1 = mean of the voxels brighter than 0.8: it finds bright lesions
    wherever they are, so its saliency moves with the content of an augmented copy."""
    inputs = keras.Input((112, 224, 9), name="volume")
    bright = layers.ReLU(threshold=0.8, name="bright")(inputs)
    pooled = layers.GlobalAveragePooling2D(name="pool")(bright)
    dense = layers.Dense(2, name="lower_endplate_fc8")
    scores = dense(pooled)
    dense.set_weights([np.stack([np.zeros(9), np.ones(9)], 1), np.zeros(2)])
    outputs = {"lower_endplate": layers.Activation("softmax", name="lower_endplate")(scores)}
    return keras.Model(inputs, outputs)


def smooth_volume(seed=0):
    rng = np.random.default_rng(seed)
    small = rng.random((14, 28, 9)).astype(np.float32)
    return np.clip(cv2.resize(small, (224, 112), interpolation=cv2.INTER_CUBIC), 0, 1)


def test_saliency_is_the_absolute_gradient_per_slice():
    model, weights = linear_model()
    x = smooth_volume()[None]
    np.testing.assert_allclose(saliency(model, x, "lower_endplate", 1)[0], weights)
    np.testing.assert_allclose(saliency(model, x, "lower_endplate", 0)[0], 0.0)
    exact = evidence_hotspots(model, x[0], "lower_endplate", n_augment=0, class_index=1)
    np.testing.assert_allclose(exact, weights)


def test_augmentation_inverse_restores_the_volume():
    volume = smooth_volume(1)
    params = sample_params(np.random.default_rng(3), VolumeAugmentConfig(), 12)
    params["delta"][:] = 0.0
    copies = augment_volumes(volume, params)
    assert not np.allclose(copies[0], volume)
    back = invert_maps(copies, params)
    seen = invert_maps(augment_volumes(np.ones_like(volume), params), params)
    valid = seen > 0.999  # voxels that stayed inside the field of view both ways
    assert valid.mean() > 0.4
    error = np.abs(back - volume)[valid]
    assert error.mean() < 0.02
    # Without the inverse the copies do not line up with the original.
    assert np.abs(copies - volume)[valid].mean() > 5 * error.mean()


def test_hotspots_are_mapped_back_to_the_evidence():
    model = bright_spot_model()
    volume = 0.6 * smooth_volume(2)
    volume[BOX] = 1.0  # a bright lesion below the disc centre, in the mid slices
    heat = evidence_hotspots(model, volume, "lower_endplate", n_augment=12, seed=0, class_index=1)
    assert heat.shape == (112, 224, 9) and heat.min() >= 0
    box = np.zeros(volume.shape, bool)
    box[BOX] = True
    mirrored = np.zeros_like(box)
    mirrored[111 - 83 : 111 - 67, 96:128, 3:6] = True  # the same box above the disc centre
    grown = np.zeros_like(box)
    grown[64:88, 90:134, 3:6] = True
    inside = heat[grown].sum() / heat.sum()
    assert inside > 0.8
    assert heat[box].sum() > 20 * heat[mirrored].sum()
    # The same copies averaged WITHOUT undoing their augmentation would smear the evidence.
    params = sample_params(np.random.default_rng(0), VolumeAugmentConfig(), 12)
    raw = saliency(model, augment_volumes(volume, params), "lower_endplate", 1).mean(axis=0)
    assert raw[grown].sum() / raw.sum() < inside - 0.3
    again = evidence_hotspots(model, volume, "lower_endplate", n_augment=12, seed=0, class_index=1)
    np.testing.assert_array_equal(heat, again)


def test_hotspots_of_a_spinenet_model_and_bad_input():
    model = build_model("demo", **TINY)
    volume = smooth_volume(3)
    heat = evidence_hotspots(model, volume, "upper_marrow", n_augment=4, seed=1)
    assert heat.shape == (112, 224, 9) and heat.max() > 0
    picture = hotspot_overlay(volume, heat, slices=(1, 7))
    assert picture.shape == (224, 448, 3) and picture.dtype == np.uint8
    with pytest.raises(ValueError, match=r"Unknown task 'marrow'. Available: \["):
        evidence_hotspots(model, volume, "marrow")
    with pytest.raises(ValueError, match="volume must have shape"):
        evidence_hotspots(model, volume[..., :8], "upper_marrow")


def test_tta_views_are_the_paper_54():
    views = tta_views()
    assert len(views) == len(set(views)) == 54  # 9 patches x 2 reflections x 3 windows (§4)
    assert {(dy, dx) for dy, dx, _, _ in views} == {
        (dy, dx) for dy in (-16, 0, 16) for dx in (-16, 0, 16)
    }
    assert {dz for _, _, dz, _ in views} == {-1, 0, 1}
    assert len(tta_views(shift_px=0, slice_shift=0)) == 2


def test_predict_tta_averages_the_views():
    model = build_model("spider", **TINY)
    rng = np.random.default_rng(0)
    context = rng.random((2, 144, 256, 11)).astype(np.float32)
    out = predict_tta(model, context, batch_size=40)
    views = []
    for dy in (-16, 0, 16):
        for dx in (-16, 0, 16):
            for dz in (-1, 0, 1):
                view = context[:, 16 + dy : 128 + dy, 16 + dx : 240 + dx, 1 + dz : 10 + dz]
                views += [view, np.flip(view, -1)]
    probs = model(np.concatenate(views), training=False)
    expected = {t: np.asarray(p).reshape(54, 2, -1).mean(axis=0) for t, p in probs.items()}
    for task, probs in out.items():
        assert probs.shape == expected[task].shape
        np.testing.assert_allclose(probs, expected[task], atol=1e-5)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    centre = predict_tta(model, context, tta=False)
    direct = model(context[:, 16:128, 16:240, 1:10], training=False)
    for task in centre:
        np.testing.assert_allclose(centre[task], np.asarray(direct[task]), atol=1e-6)
        assert not np.allclose(centre[task], out[task])
    # Plain volumes are zero-padded for the views.
    plain = context[:, 16:128, 16:240, 1:10]
    padded = np.pad(plain, [(0, 0), (16, 16), (16, 16), (1, 1)])
    a = predict_tta(model, plain, batch_size=108)
    b = predict_tta(model, padded, batch_size=108)
    for task in a:
        np.testing.assert_allclose(a[task], b[task], atol=1e-6)
    with pytest.raises(ValueError, match="too little context"):
        predict_tta(model, context[:, 8:-8, 8:-8, :])
