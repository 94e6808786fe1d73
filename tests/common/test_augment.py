"""Tests of common.augment: seeded tf-op augmentations and the image/volume tf.data pipelines."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from common import augment as aug
from common.errors import DataError
from common.image_io import ImageReadError
from common.image_io import read_image

RNG = np.random.default_rng(0)
IMAGE = RNG.random((24, 24, 1)).astype(np.float32)
VOLUME = RNG.random((16, 16, 6)).astype(np.float32)
SEEDS = [tf.constant([i, 7], dtype=tf.int64) for i in range(12)]

RANDOM_FUNCTIONS = {
    "rotate": lambda x, s: aug.random_rotate(x, s, max_degrees=30.0),
    "rotate_reflect": lambda x, s: aug.random_rotate(x, s, max_degrees=30.0, fill_mode="reflect"),
    "translate": lambda x, s: aug.random_translate(x, s, max_dx_px=4.0, max_dy_px=3.0),
    "zoom": lambda x, s: aug.random_zoom(x, s, scale_range=(0.8, 1.2)),
    "intensity": lambda x, s: aug.random_intensity_shift(x, s, max_delta=0.2),
    "affine": lambda x, s: aug.random_affine(
        x, s, max_degrees=10, max_dx_px=2, max_dy_px=2, scale_range=(0.9, 1.1)
    ),
    "flip_slices": aug.random_flip_slices,
    "shift_slices": lambda x, s: aug.random_shift_slices(x, s, max_slices=2),
}


def _np(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


# --- Per-example functions ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RANDOM_FUNCTIONS))
def test_random_function_shape_determinism_and_seed_dependence(name):
    fn = RANDOM_FUNCTIONS[name]
    x = VOLUME if "slices" in name else IMAGE
    a = _np(fn(x, SEEDS[0]))
    b = _np(fn(x, SEEDS[0]))
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    outputs = [_np(fn(x, seed)) for seed in SEEDS[1:6]]
    assert any(not np.array_equal(a, o) for o in outputs)


@pytest.mark.parametrize(
    "fn, axis",
    [
        (aug.random_flip_left_right, 1),
        (aug.random_flip_up_down, 0),
        (aug.random_flip_slices, 2),
    ],
)
def test_flips_are_exact_and_both_outcomes_occur(fn, axis):
    x = VOLUME
    flipped = np.flip(x, axis=axis)
    outcomes = []
    for seed in SEEDS:
        y = _np(fn(x, seed))
        np.testing.assert_array_equal(y, _np(fn(x, seed)))
        assert np.array_equal(y, x) or np.array_equal(y, flipped)
        outcomes.append(np.array_equal(y, flipped))
    assert any(outcomes) and not all(outcomes)


def test_rotation_by_90_degrees_equals_rot90_on_interior():
    x = RNG.random((21, 21, 1)).astype(np.float32)
    y = _np(aug.affine_transform(x, angle_deg=90.0))
    np.testing.assert_allclose(y[1:-1, 1:-1], np.rot90(x)[1:-1, 1:-1], atol=1e-4)
    y = _np(aug.affine_transform(x, angle_deg=-90.0))
    np.testing.assert_allclose(y[1:-1, 1:-1], np.rot90(x, -1)[1:-1, 1:-1], atol=1e-4)


def test_translation_moves_content_right_and_down():
    y = _np(aug.affine_transform(IMAGE, dx_px=3.0, dy_px=2.0))
    np.testing.assert_allclose(y[2:, 3:], IMAGE[:-2, :-3], atol=1e-6)
    np.testing.assert_array_equal(y[:2], 0.0)  # constant fill


def test_zoom_magnifies_about_the_centre():
    w = 33
    ramp = np.tile(np.arange(w, dtype=np.float32) / (w - 1), (w, 1))[..., None]
    y = _np(aug.affine_transform(ramp, scale=2.0))[..., 0]
    c = (w - 1) / 2
    expected = (c + (np.arange(w) - c) / 2) / (w - 1)  # bilinear is exact on a ramp
    np.testing.assert_allclose(y[5:-5], np.tile(expected, (w, 1))[5:-5], atol=1e-5)


def test_intensity_shift_is_one_offset_and_clipped():
    x = np.full((8, 8, 1), 0.5, dtype=np.float32)
    x[0, 0] = 0.99
    y = _np(aug.random_intensity_shift(x, SEEDS[3], max_delta=0.2))
    delta = y[1, 1, 0] - 0.5
    assert 0 < abs(delta) <= 0.2
    np.testing.assert_allclose(y[1:], 0.5 + delta, atol=1e-6)
    assert y.max() <= 1.0 and y.min() >= 0.0


def test_equalize_histogram_flattens():
    x = (0.2 + 0.3 * np.sqrt(RNG.random((64, 64, 1)))).astype(np.float32)  # skewed, narrow
    y = _np(aug.equalize_histogram(x))
    assert y.shape == x.shape and y.dtype == np.float32
    counts, _ = np.histogram(y, bins=8, range=(0.0, 1.0))
    assert counts.min() > 0.75 * y.size / 8 and counts.max() < 1.25 * y.size / 8
    before, _ = np.histogram(x, bins=8, range=(0.0, 1.0))
    assert before.max() > 0.4 * x.size  # the input was far from flat
    const = np.full((8, 8, 1), 0.3, dtype=np.float32)
    np.testing.assert_array_equal(_np(aug.equalize_histogram(const)), const)


@pytest.mark.parametrize("shape_hw, pad_axis", [((10, 20), 0), ((20, 10), 1)])
def test_resize_keep_aspect_pads(shape_hw, pad_axis):
    x = np.ones(shape_hw + (1,), dtype=np.float32)
    y = _np(aug.resize_keep_aspect(x, (40, 40)))[..., 0]
    assert y.shape == (40, 40)
    profile = y.mean(axis=1 - pad_axis)
    np.testing.assert_allclose(profile[10:30], 1.0, atol=1e-6)
    np.testing.assert_array_equal(profile[:10], 0.0)
    np.testing.assert_array_equal(profile[30:], 0.0)
    stretched = _np(aug.resize(x, (40, 40)))
    assert stretched.shape == (40, 40, 1)
    np.testing.assert_allclose(stretched, 1.0, atol=1e-6)


def test_shift_slices_fills_zeros():
    v = np.arange(1, 6, dtype=np.float32).reshape(1, 1, 5)
    seen = set()
    for seed in SEEDS:
        y = _np(aug.random_shift_slices(v, seed, max_slices=2))[0, 0]
        k = int(np.flatnonzero(y == 1.0)[0]) if 1.0 in y else -int(5 - np.count_nonzero(y))
        expected = np.zeros(5, dtype=np.float32)
        for i in range(5):
            if 0 <= i - k < 5:
                expected[i] = v[0, 0, i - k]
        np.testing.assert_array_equal(y, expected)
        seen.add(k)
    assert len(seen) > 1 and all(-2 <= k <= 2 for k in seen)


def test_2d_functions_act_on_every_slice_identically():
    v = np.repeat(IMAGE, 4, axis=-1)
    y = _np(aug.random_rotate(v, SEEDS[1], max_degrees=20.0))
    single = _np(aug.random_rotate(IMAGE, SEEDS[1], max_degrees=20.0))
    for s in range(4):
        np.testing.assert_allclose(y[..., s], single[..., 0], atol=1e-6)
    assert not np.allclose(single, IMAGE)


def test_augment_fn_deterministic_and_config_seed_matters():
    config = aug.AugmentConfig(
        flip_lr=True, flip_ud=True, rotation_deg=15, translate_px=(2, 2), zoom_range=(0.9, 1.1),
        intensity_delta=0.1, equalize=0.5, fill_mode="reflect",
    )  # fmt: skip
    fn = aug.augment_fn(config)
    a = _np(fn(IMAGE, SEEDS[2]))
    assert a.shape == IMAGE.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, _np(fn(IMAGE, SEEDS[2])))
    other = aug.augment_fn(aug.AugmentConfig(**{**config.__dict__, "seed": 1}))
    assert not np.array_equal(a, _np(other(IMAGE, SEEDS[2])))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fill_mode": "mirror"}, "Unknown fill_mode 'mirror'"),
        ({"rotation_deg": -1}, "rotation_deg"),
        ({"zoom_range": (1.2, 0.8)}, "zoom_range"),
        ({"translate_px": (1, -1)}, "translate_px"),
        ({"equalize": 2.0}, "equalize"),
    ],
)
def test_augment_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aug.AugmentConfig(**kwargs)


# --- make_image_dataset ------------------------------------------------------------------------


def _write_pngs(folder, n=6, shape=(24, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i}.png"
        cv2.imwrite(str(path), RNG.integers(0, 256, size=shape, dtype=np.uint8))
        paths.append(path)
    return paths


HALF_LEVEL_8BIT = 0.5 / 255 + 1e-6  # the rounding of a uint8 cache
HALF_LEVEL_16BIT = 0.5 / 65535 + 1e-7


def _epoch(ds):
    images, targets = [], []
    for x, y in ds:
        images.append(x.numpy())
        targets.append(y.numpy())
    return np.concatenate(images), np.concatenate(targets)


def test_dataset_shapes_targets_and_weights(tmp_path):
    paths = _write_pngs(tmp_path)
    targets = {"kl": np.arange(6), "age": np.linspace(1, 2, 6)}
    ds = aug.make_image_dataset(
        paths, targets, image_size_hw=(16, 12), batch_size=4, training=False,
        channels=3, sample_weights=np.full(6, 2.0),
    )  # fmt: skip
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [4, 2]
    x, y, w = batches[0]
    assert x.shape == (4, 16, 12, 3) and x.dtype == tf.float32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    np.testing.assert_array_equal(y["kl"], [0, 1, 2, 3])
    assert y["age"].dtype == tf.float32 and w.shape == (4,)
    expected = _np(aug.resize(read_image(paths[1])[..., None], (16, 12)))
    np.testing.assert_allclose(x[1, ..., :1], expected, atol=HALF_LEVEL_8BIT)  # cached as uint8


def test_dataset_decodes_every_format_like_read_image(tmp_path):
    from tests.common.test_image_io import STORED
    from tests.common.test_image_io import write_dicom

    names = ["a16.png", "plain.jpg", "o6.jpg", "d.dcm", "bits1.png", "palette.png", "rgba.png"]
    paths = [tmp_path / name for name in names]
    cv2.imwrite(str(paths[0]), RNG.integers(0, 65536, size=(20, 30), dtype=np.uint16))
    Image.fromarray(RNG.random((20, 30)) > 0.5).save(paths[4])
    Image.fromarray(RNG.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)).quantize(16).save(
        paths[5]
    )
    Image.fromarray(RNG.integers(0, 256, size=(20, 30, 4), dtype=np.uint8), "RGBA").save(paths[6])
    blocks = np.kron(RNG.integers(0, 256, size=(4, 6)), np.ones((5, 5))).astype(np.uint8)
    Image.fromarray(blocks).save(paths[1], quality=100)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(blocks.T.copy()).save(paths[2], quality=100, exif=exif.tobytes())
    write_dicom(paths[3], np.kron(STORED, np.ones((10, 8))), photometric="MONOCHROME1")
    ds = aug.make_image_dataset(paths, None, image_size_hw=(20, 30), batch_size=8, training=False)
    images = next(iter(ds)).numpy()
    for i, path in enumerate(paths):
        expected = _np(aug.resize(read_image(path)[..., None], (20, 30)))
        # a 16-bit PNG and a DICOM among them: all are cached as uint16, but each is rounded at
        # its own source's depth first (8-bit files: half a level of 255, so that a film reads the
        # same whatever it is read with); the 16-bit PNG and the DICOM keep half a level of 65535
        if path.suffix == ".jpg":
            atol = 0.004
        elif path.name in ("a16.png", "d.dcm"):
            atol = HALF_LEVEL_16BIT
        else:
            atol = 0.5 / 255 + 1e-6
        np.testing.assert_allclose(images[i], expected, atol=atol, err_msg=path.name)


@pytest.mark.parametrize("cache", ["memory", "file", "auto over the limit"])
def test_dataset_cache_skips_reading_files(tmp_path, cache):
    paths = _write_pngs(tmp_path / "imgs")
    cache_arg = {"memory": True, "file": str(tmp_path / "cache" / "images")}.get(cache, "auto")
    ds = aug.make_image_dataset(
        paths, np.arange(6), image_size_hw=(12, 10), batch_size=4, training=True, seed=3,
        augment=aug.AugmentConfig(flip_lr=True), cache=cache_arg,
        cache_dir=tmp_path / "run" / "cache", cache_limit_bytes=6 * 12 * 10,  # 720 B: one too many
    )  # fmt: skip
    first, t1 = _epoch(ds)
    if cache == "auto over the limit":  # a file cache under cache_dir, not "no cache" (issue 19.3)
        assert "images.index" in {p.name for p in (tmp_path / "run" / "cache").iterdir()}
    for path in paths:
        path.unlink()
    second, t2 = _epoch(ds)  # would fail to read the deleted files without the cache
    assert sorted(t1) == sorted(t2) == list(range(6))
    assert second.shape == first.shape == (6, 12, 10, 1)
    # Flips only: each image of the second epoch equals the first epoch's, up to a mirror.
    by_target = {int(t): img for t, img in zip(t1, first)}
    for t, img in zip(t2, second):
        ref = by_target[int(t)]
        assert np.array_equal(img, ref) or np.array_equal(img, ref[:, ::-1])


def test_dataset_without_cache_reads_files_again(tmp_path):
    paths = _write_pngs(tmp_path)
    ds = aug.make_image_dataset(
        paths, np.arange(6), image_size_hw=(12, 10), batch_size=4, training=True, cache=False
    )
    _epoch(ds)
    paths[0].unlink()
    with pytest.raises(tf.errors.NotFoundError):
        _epoch(ds)


def test_dataset_reproducible_for_a_seed(tmp_path):
    paths = _write_pngs(tmp_path)
    config = aug.AugmentConfig(flip_lr=True, rotation_deg=20, zoom_range=(0.9, 1.1))

    def two_epochs(seed):
        ds = aug.make_image_dataset(
            paths, np.arange(6), image_size_hw=(12, 10), batch_size=4, training=True,
            seed=seed, augment=config,
        )  # fmt: skip
        return [_epoch(ds) for _ in range(2)]

    a, b, c = two_epochs(0), two_epochs(0), two_epochs(1)
    for (xa, ta), (xb, tb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ta, tb)
    assert not np.array_equal(a[0][0], a[1][0])  # new order and augmentation every epoch
    assert not np.array_equal(a[0][0], c[0][0])


def test_dataset_preprocess_equalize_and_keep_aspect(tmp_path):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), (np.tile(np.arange(40), (20, 1)) * 3).astype(np.uint8))
    ds = aug.make_image_dataset(
        [path], None, image_size_hw=(40, 40), batch_size=1, training=False,
        keep_aspect=True, preprocess="equalize",
    )  # fmt: skip
    image = next(iter(ds)).numpy()[0]
    expected = aug.resize_keep_aspect(read_image(path)[..., None], (40, 40))
    np.testing.assert_allclose(image, _np(aug.equalize_histogram(expected)), atol=HALF_LEVEL_8BIT)
    np.testing.assert_array_equal(image[:10], 0.0)
    assert image.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Unknown preprocess 'clahe'. Available"):
        aug.make_image_dataset([path], None, image_size_hw=(8, 8), batch_size=1, training=False,
                               preprocess="clahe")  # fmt: skip


def test_dataset_missing_file_fails_early_naming_it(tmp_path):
    paths = _write_pngs(tmp_path, n=2) + [tmp_path / "gone.png"]
    with pytest.raises(ImageReadError, match="gone.png: file not found"):
        aug.make_image_dataset(
            paths, np.arange(3), image_size_hw=(8, 8), batch_size=2, training=True
        )
    with pytest.raises(DataError, match="sample_weights has 3 values for 2 examples"):
        aug.make_image_dataset(paths[:2], np.arange(2), image_size_hw=(8, 8), batch_size=2,
                               training=True, sample_weights=np.ones(3))  # fmt: skip
    with pytest.raises(DataError, match="has 3 values for 2 examples"):
        aug.make_image_dataset(
            paths[:2], np.arange(3), image_size_hw=(8, 8), batch_size=2, training=True
        )


# --- make_volume_dataset -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["array", "memmap"])
def test_volume_dataset(tmp_path, source):
    volumes = RNG.random((5, 8, 8, 4)).astype(np.float32)
    if source == "memmap":
        mm = np.lib.format.open_memmap(
            tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=volumes.shape
        )
        mm[:] = volumes
        mm.flush()
        volumes_in = np.load(tmp_path / "v.npy", mmap_mode="r")
    else:
        volumes_in = volumes
    ds = aug.make_volume_dataset(volumes_in, np.arange(5), batch_size=2, training=False)
    x, y = _epoch(ds)
    np.testing.assert_array_equal(x, volumes)
    np.testing.assert_array_equal(y, np.arange(5))
    config = aug.AugmentConfig(flip_slices=True, shift_slices=1, flip_lr=True)
    ds = aug.make_volume_dataset(volumes_in, np.arange(5), batch_size=2, training=True,
                                 seed=1, augment=config, cache=True)  # fmt: skip
    xa, ya = _epoch(ds)
    xb, yb = _epoch(aug.make_volume_dataset(volumes_in, np.arange(5), batch_size=2, training=True,
                                            seed=1, augment=config, cache=True))  # fmt: skip
    assert xa.shape == (5, 8, 8, 4) and sorted(ya) == list(range(5))
    np.testing.assert_array_equal(xa, xb)
    assert not np.array_equal(xa, volumes[ya])


def test_dataset_truncated_file_error_names_it(tmp_path):
    paths = _write_pngs(tmp_path, n=2)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # no IEND: decoded by read_image, which names it
    ds = aug.make_image_dataset(paths, None, image_size_hw=(8, 8), batch_size=2, training=False)
    with pytest.raises(tf.errors.OpError, match="img_1.png"):
        list(ds)


@pytest.mark.parametrize("size_hw", [(25, 37), (20, 15), (80, 60)])
@pytest.mark.parametrize("keep_aspect", [False, True])
def test_resize_matches_read_image_resized(tmp_path, size_hw, keep_aspect):
    from common.image_io import read_image_resized

    path = tmp_path / "x.png"
    cv2.imwrite(str(path), RNG.integers(0, 65536, size=(50, 37), dtype=np.uint16))
    fn = aug.resize_keep_aspect if keep_aspect else aug.resize
    ours = _np(fn(read_image(path)[..., None], size_hw))[..., 0]
    np.testing.assert_allclose(ours, read_image_resized(path, size_hw, keep_aspect), atol=1e-5)


# --- the loader behind make_image_dataset: integer cache, crops, "auto" cache ----------------


@pytest.mark.parametrize("bits, dtype", [(8, tf.uint8), (16, tf.uint16)])
def test_image_loader_caches_integers_at_input_size_and_crops(tmp_path, bits, dtype):
    pixel = np.uint8 if bits == 8 else np.uint16
    top = 255 if bits == 8 else 65535
    film = np.zeros((30, 41), dtype=pixel)
    film[:, :20] = top  # left half bright, right half (21 columns) dark with a bright last column
    film[:, -1] = top
    path = tmp_path / "film.png"
    cv2.imwrite(str(path), film)
    kinds = aug.scan_image_files([str(path)])
    load = aug.image_loader(kinds, (10, 7))
    assert load.dtype == dtype
    images = {crop: load(tf.constant(str(path)), kinds[0], i) for i, crop in enumerate(aug.CROPS)}
    for image in images.values():
        assert image.dtype == dtype and image.shape == (10, 7, 1)
    np.testing.assert_array_equal(images["left_half"], top)
    right = aug.dequantize(images["right_half"]).numpy()[..., 0]
    whole = read_image(path)
    expected = _np(aug.resize(whole[:, -20:, None], (10, 7)))[..., 0]  # last 20 of 41 columns
    np.testing.assert_allclose(right, expected, atol=0.5 / top + 1e-7)
    assert right[:, :-1].max() == 0.0 and right[:, -1].min() > 0.0
    np.testing.assert_allclose(
        aug.dequantize(images["full"]).numpy()[..., 0],
        _np(aug.resize(whole[..., None], (10, 7)))[..., 0],
        atol=0.5 / top + 1e-7,
    )


def test_an_8_bit_film_reads_the_same_beside_a_16_bit_one(tmp_path):
    """The set's container type (uint16 once any source is deeper) must not change an 8-bit
    film's values: it is rounded at its own depth (boneage predict read a PNG beside a DICOM and
    gave another age than train's evaluate). Control: the 16-bit film keeps its finer levels."""
    film8 = tmp_path / "a.png"
    cv2.imwrite(str(film8), RNG.integers(0, 256, size=(37, 29), dtype=np.uint8))
    film16 = tmp_path / "b.png"
    cv2.imwrite(str(film16), RNG.integers(0, 65536, size=(37, 29), dtype=np.uint16))
    alone = aug.scan_image_files([str(film8)])
    mixed = aug.scan_image_files([str(film8), str(film16)])
    load_alone, load_mixed = aug.image_loader(alone, (9, 7)), aug.image_loader(mixed, (9, 7))
    assert (load_alone.dtype, load_mixed.dtype) == (tf.uint8, tf.uint16)
    a = aug.dequantize(load_alone(tf.constant(str(film8)), alone[0])).numpy()
    b = aug.dequantize(load_mixed(tf.constant(str(film8)), mixed[0])).numpy()
    np.testing.assert_array_equal(a, b)
    deep = aug.dequantize(load_mixed(tf.constant(str(film16)), mixed[1])).numpy()
    assert np.any(np.abs(deep * 255 - np.round(deep * 255)) > 1e-3)


def test_dataset_crops_and_dequantizes(tmp_path):
    film = np.zeros((12, 16), dtype=np.uint8)
    film[:, :8] = 200
    path = tmp_path / "f.png"
    cv2.imwrite(str(path), film)
    ds = aug.make_image_dataset(
        [path, path], None, image_size_hw=(6, 4), batch_size=2, training=False,
        crops=["left_half", "right_half"],
    )  # fmt: skip
    images = next(iter(ds)).numpy()
    assert images.dtype == np.float32
    np.testing.assert_allclose(images[0], 200 / 255, atol=1e-6)
    np.testing.assert_array_equal(images[1], 0.0)
    with pytest.raises(DataError, match="unknown crop 'top'"):
        aug.make_image_dataset([path], None, image_size_hw=(6, 4), batch_size=1, training=False,
                               crops=["top"])  # fmt: skip


def test_resolve_cache_auto_goes_to_a_file_above_the_limit(tmp_path):
    args = {"n": 100, "image_size_hw": (10, 10)}
    assert aug.resolve_cache("auto", dtype=tf.uint8, limit_bytes=10_001, **args) is True
    # 100 uint16 images of 10x10 take 20 000 bytes: over the limit, a file (not "no cache")
    path = aug.resolve_cache(
        "auto", dtype=tf.uint16, limit_bytes=10_001, cache_dir=tmp_path / "run", **args
    )
    assert path == str(tmp_path / "run" / "images") and (tmp_path / "run").is_dir()
    temporary = aug.resolve_cache("auto", dtype=tf.uint8, limit_bytes=10_000, **args)
    assert isinstance(temporary, str) and os.path.isdir(os.path.dirname(temporary))
    assert aug.resolve_cache(False, dtype=tf.uint8, **args) is False


def test_flips_on_cached_integers_equal_flips_on_floats(tmp_path):
    """Flip-only configurations mirror the uint8 cache and cast per batch; a function (which gets
    float images) must give exactly the same epochs."""
    paths = _write_pngs(tmp_path, n=6)
    config = aug.AugmentConfig(flip_lr=True, flip_ud=True)
    assert config.flips_only and not aug.AugmentConfig(flip_lr=True, rotation_deg=5).flips_only
    as_function = aug.augment_fn(config)

    def epochs(augment):
        ds = aug.make_image_dataset(
            paths, np.arange(6), image_size_hw=(12, 10), batch_size=4, training=True, seed=2,
            augment=augment, channels=3,
        )  # fmt: skip
        return [_epoch(ds) for _ in range(2)]

    for (xa, ta), (xb, tb) in zip(epochs(config), epochs(lambda im, s: as_function(im, s))):
        assert xa.dtype == np.float32 and xa.shape == (6, 12, 10, 3)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ta, tb)
    flipped = aug.random_flip_left_right(tf.constant([[[1], [2]]], tf.uint8), [0, 0], 1.0)
    assert flipped.dtype == tf.uint8 and flipped.numpy().ravel().tolist() == [2, 1]
