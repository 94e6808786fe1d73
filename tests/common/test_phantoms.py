"""Tests for common.phantoms: drawing lands where asked, writers round-trip."""

import math

import cv2
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from PIL import ImageOps
from pydicom.pixels import apply_modality_lut

from common import phantoms

SHAPE = (48, 64)


def _moments(img):
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    mass = img.sum()
    cx, cy = (img * xs).sum() / mass, (img * ys).sum() / mass
    mu20 = (img * (xs - cx) ** 2).sum() / mass
    mu02 = (img * (ys - cy) ** 2).sum() / mass
    mu11 = (img * (xs - cx) * (ys - cy)).sum() / mass
    return mass, cx, cy, mu20, mu02, mu11


def _no_temp_files(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or "tmp" in p.name]


def _test_image():
    img = phantoms.blank(SHAPE, 0.1)
    phantoms.draw_ellipse(img, (20, 15), (12, 7), 20, 0.9)
    phantoms.draw_capsule(img, (40, 5), (55, 40), 4, 0.6)
    phantoms.draw_polygon(img, [(3, 40), (15, 30), (18, 45)], 0.4, mode="set")
    return img


# --------------------------------------------------------------------------- basics


def test_rng_is_seeded():
    a = phantoms.rng(3).random(5)
    b = phantoms.rng(3).random(5)
    c = phantoms.rng(4).random(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("value", [0.0, 0.25, 1.0])
def test_blank(value):
    img = phantoms.blank((7, 9), value)
    assert img.shape == (7, 9) and img.dtype == np.float32
    assert np.all(img == np.float32(value))


@pytest.mark.parametrize(
    "shape, value", [((0, 5), 0.0), ((5, -1), 0.0), ((4, 4), 1.5), ((4, 4), -0.1)]
)
def test_blank_rejects_bad_input(shape, value):
    with pytest.raises(ValueError):
        phantoms.blank(shape, value)


def test_clip01():
    out = phantoms.clip01(np.array([-1.0, 0.5, 2.0]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0])


# --------------------------------------------------------------------------- drawing


@pytest.mark.parametrize(
    "center, axes, angle",
    [
        ((30.0, 24.0), (10.0, 5.0), 0.0),
        ((25.3, 20.7), (12.0, 4.0), 30.0),
        ((33.5, 22.25), (6, 6), 0),
    ],
)
def test_ellipse_centroid_area_orientation(center, axes, angle):
    img = phantoms.draw_ellipse(phantoms.blank(SHAPE), center, axes, angle, value=1.0)
    assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    mass, cx, cy, mu20, mu02, mu11 = _moments(img)
    assert cx == pytest.approx(center[0], abs=0.02)
    assert cy == pytest.approx(center[1], abs=0.02)
    assert mass == pytest.approx(math.pi * axes[0] * axes[1], rel=0.02)
    if axes[0] != axes[1]:
        orientation = 0.5 * math.degrees(math.atan2(2 * mu11, mu20 - mu02))
        assert orientation == pytest.approx(angle, abs=1.0)
    # Anti-aliased: some edge pixels are partly covered.
    assert np.any((img > 0.05) & (img < 0.95))


def test_ellipse_rotation_follows_cv2_convention():
    ours = phantoms.draw_ellipse(phantoms.blank((64, 64)), (32, 32), (20, 6), 60, 1.0)
    theirs = np.zeros((64, 64), np.uint8)
    cv2.ellipse(theirs, (32, 32), (20, 6), 60, 0, 360, 255, -1)
    a, b = ours > 0.5, theirs > 127
    # cv2 fills every pixel the outline touches (about half a pixel fatter all round).
    assert (a & b).sum() / (a | b).sum() > 0.85
    assert (a & ~b).sum() <= 2
    # +60 degrees turns the long axis from +x towards +y (down on screen).
    assert ours[32 + 15, 32 + 9] > 0.9 and ours[32 - 15, 32 + 9] == 0


def test_ellipse_outside_image_is_a_no_op():
    img = phantoms.blank(SHAPE, 0.2)
    phantoms.draw_ellipse(img, (-50, -50), (5, 5), 0, 1.0)
    assert np.all(img == np.float32(0.2))


def test_ellipse_partly_outside_is_clipped():
    img = phantoms.draw_ellipse(phantoms.blank(SHAPE), (0, 0), (10, 10), 0, 1.0)
    assert img[0, 0] == pytest.approx(1.0)
    # Pixel (0, 0) spans [-0.5, 0.5]: the image holds the quarter disc and two half-pixel strips.
    visible = math.pi * 100 / 4 + 2 * 0.5 * 10 + 0.25
    assert img.sum() == pytest.approx(visible, rel=0.01)


@pytest.mark.parametrize("mode, expected_center", [("max", 0.6), ("add", 0.9), ("set", 0.3)])
def test_modes(mode, expected_center):
    img = phantoms.draw_ellipse(phantoms.blank(SHAPE), (30, 24), (8, 8), 0, 0.6)
    phantoms.draw_ellipse(img, (30, 24), (4, 4), 0, 0.3, mode=mode)
    assert img[24, 30] == pytest.approx(expected_center, abs=1e-6)
    assert img[24, 36] == pytest.approx(0.6, abs=1e-6)  # outside the small disc, untouched
    assert img.min() >= 0 and img.max() <= 1


def test_add_mode_clips_to_unit_range():
    img = phantoms.blank(SHAPE, 0.8)
    phantoms.draw_capsule(img, (10, 10), (40, 10), 3, 0.5, mode="add")
    assert img.max() == pytest.approx(1.0)
    phantoms.draw_capsule(img, (10, 30), (40, 30), 3, -1.5, mode="add")
    assert img.min() == pytest.approx(0.0)


def test_unknown_mode_and_bad_image():
    with pytest.raises(ValueError, match="Unknown mode 'maximum'"):
        phantoms.draw_ellipse(phantoms.blank(SHAPE), (5, 5), (2, 2), mode="maximum")
    with pytest.raises(ValueError, match="float32"):
        phantoms.draw_ellipse(np.zeros(SHAPE), (5, 5), (2, 2))
    with pytest.raises(ValueError):
        phantoms.draw_ellipse(phantoms.blank(SHAPE), (5, 5), (0, 2))


@pytest.mark.parametrize(
    "p0, p1, radius", [((10, 10), (50, 30), 3.0), ((32, 8), (32, 40), 5.5), ((20, 20), (20, 20), 6)]
)
def test_capsule_covers_its_segment(p0, p1, radius):
    img = phantoms.draw_capsule(phantoms.blank(SHAPE), p0, p1, radius, 0.7)
    for t in np.linspace(0, 1, 11):
        x = p0[0] + t * (p1[0] - p0[0])
        y = p0[1] + t * (p1[1] - p0[1])
        assert img[int(round(y)), int(round(x))] == pytest.approx(0.7, abs=1e-6)
    # Nothing farther than radius + 1 pixel from the segment.
    ys, xs = np.mgrid[: SHAPE[0], : SHAPE[1]]
    a, b = np.array(p0, float), np.array(p1, float)
    d = b - a
    t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
    dist = np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1])
    assert np.all(img[dist > radius + 1] == 0)
    length = float(np.hypot(*d))
    assert img.sum() / 0.7 == pytest.approx(2 * radius * length + math.pi * radius**2, rel=0.03)


def test_polygon_centroid_and_area():
    triangle = np.array([(10.0, 8.0), (50.0, 12.0), (22.0, 40.0)])
    img = phantoms.draw_polygon(phantoms.blank(SHAPE), triangle, 1.0)
    mass, cx, cy, *_ = _moments(img)
    x, y = triangle[:, 0], triangle[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert mass == pytest.approx(area, rel=0.03)
    assert cx == pytest.approx(x.mean(), abs=0.15)
    assert cy == pytest.approx(y.mean(), abs=0.15)


def test_polygon_square_is_exact_inside():
    img = phantoms.draw_polygon(
        phantoms.blank(SHAPE), [(9.5, 9.5), (19.5, 9.5), (19.5, 19.5), (9.5, 19.5)]
    )
    assert np.all(img[10:20, 10:20] > 0.99)
    assert img[5, 5] == 0 and img[25, 25] == 0
    assert img.sum() == pytest.approx(100, rel=1e-6)


@pytest.mark.parametrize("points", [[(1, 1), (2, 2)], [[1, 2, 3]], [(0, 0), (1, np.nan), (2, 0)]])
def test_polygon_rejects_bad_points(points):
    with pytest.raises(ValueError):
        phantoms.draw_polygon(phantoms.blank(SHAPE), points)


@pytest.mark.parametrize("thickness", [1.0, 2.5])
def test_line(thickness):
    img = phantoms.draw_line(phantoms.blank(SHAPE), (5, 40), (55, 10), thickness, 0.8)
    assert img[25, 30] == pytest.approx(0.8, abs=0.15)
    length = math.hypot(50, 30)
    assert img.sum() / 0.8 == pytest.approx(length * thickness, rel=0.06)
    assert img[5, 5] == 0
    with pytest.raises(ValueError):
        phantoms.draw_line(img, (3, 3), (3, 3), 1.0)


# --------------------------------------------------------------------------- texture and tone


@pytest.mark.parametrize("scale", [1.5, 8.0, 20.0])
def test_smooth_noise(scale):
    noise = phantoms.smooth_noise(SHAPE, scale, phantoms.rng(0))
    assert noise.shape == SHAPE and noise.dtype == np.float32
    assert abs(float(noise.mean())) < 1e-4
    assert float(noise.std()) == pytest.approx(1.0, abs=1e-3)
    lag1 = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    assert lag1 > 0.6  # white noise would give ~0
    again = phantoms.smooth_noise(SHAPE, scale, phantoms.rng(0))
    np.testing.assert_array_equal(noise, again)


def test_add_noise():
    img = phantoms.blank((64, 64), 0.5)
    noisy = phantoms.add_noise(img, 0.05, phantoms.rng(1))
    assert noisy.dtype == np.float32 and noisy.shape == img.shape
    assert float(noisy.std()) == pytest.approx(0.05, rel=0.1)
    assert np.all(img == 0.5)  # input untouched
    assert phantoms.add_noise(phantoms.blank((8, 8), 0.99), 1.0, phantoms.rng(1)).max() <= 1.0


def test_blur():
    img = phantoms.blank((33, 33))
    img[16, 16] = 1.0
    out = phantoms.blur(img, 2.0)
    assert out.dtype == np.float32
    assert out[16, 16] == pytest.approx(1 / (2 * math.pi * 4), rel=0.05)
    assert out.sum() == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_array_equal(phantoms.blur(img, 0), img)


def test_adjust_contrast():
    img = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_allclose(
        phantoms.adjust_contrast(img, 0.5, 0.1), [[0.1, 0.35, 0.6]], atol=1e-6
    )
    np.testing.assert_allclose(phantoms.adjust_contrast(img, 2.0, 0.0), [[0.0, 1.0, 1.0]])


# --------------------------------------------------------------------------- geometry


def test_random_affine_mask_matches_image():
    img = phantoms.blank(SHAPE)
    phantoms.draw_polygon(img, [(20, 10), (45, 15), (40, 38), (15, 30)], 1.0)
    mask_bool = img > 0.5
    labels = mask_bool.astype(np.uint8) * 3
    warped, (warped_bool, warped_labels) = phantoms.random_affine(
        img, phantoms.rng(5), 25, 6, (0.8, 1.2), masks=(mask_bool, labels)
    )
    assert warped.dtype == np.float32 and warped.shape == SHAPE
    assert warped_bool.dtype == bool and warped_labels.dtype == np.uint8
    assert set(np.unique(warped_labels)) <= {0, 3}
    assert np.mean((warped > 0.5) == warped_bool) > 0.98
    np.testing.assert_array_equal(warped_labels == 3, warped_bool)
    assert not np.array_equal(warped_bool, mask_bool)  # it did move


def test_random_affine_identity_and_seed():
    img = _test_image()
    same, masks = phantoms.random_affine(img, phantoms.rng(0), 0, 0, (1.0, 1.0))
    np.testing.assert_allclose(same, img, atol=1e-6)
    assert masks == ()
    a, _ = phantoms.random_affine(img, phantoms.rng(9), 10, 3, (0.9, 1.1))
    b, _ = phantoms.random_affine(img, phantoms.rng(9), 10, 3, (0.9, 1.1))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_rotation_deg=-1, max_shift_px=0, scale_range=(1, 1)),
        dict(max_rotation_deg=0, max_shift_px=0, scale_range=(1.2, 1.0)),
        dict(max_rotation_deg=0, max_shift_px=0, scale_range=(1, 1), masks=(np.zeros((3, 3)),)),
    ],
)
def test_random_affine_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        phantoms.random_affine(phantoms.blank(SHAPE), phantoms.rng(0), **kwargs)


def test_mask_bbox():
    mask = np.zeros(SHAPE, bool)
    mask[5:12, 20:31] = True
    assert phantoms.mask_bbox(mask) == (20, 5, 31, 12)
    soft = phantoms.draw_ellipse(phantoms.blank(SHAPE), (30, 20), (5, 3), 0, 1.0)
    # Pixels on the boundary (x = 25, 35; y = 17, 23) are half covered.
    assert phantoms.mask_bbox(soft, threshold=0.4) == (25, 17, 36, 24)
    assert phantoms.mask_bbox(soft, threshold=0.6) == (26, 18, 35, 23)
    with pytest.raises(ValueError, match="empty"):
        phantoms.mask_bbox(np.zeros(SHAPE))


# --------------------------------------------------------------------------- writers


@pytest.mark.parametrize("bits, dtype", [(8, np.uint8), (16, np.uint16)])
def test_write_png_round_trip(tmp_path, bits, dtype):
    img = _test_image()
    path = phantoms.write_png(tmp_path / "sub" / "dir" / "x.png", img, bits=bits)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == dtype and back.shape == SHAPE
    top = 2**bits - 1
    np.testing.assert_allclose(back / top, img, atol=0.5 / top + 1e-7)
    assert _no_temp_files(tmp_path) == []
    with pytest.raises(ValueError):
        phantoms.write_png(tmp_path / "y.png", img, bits=12)


def _asymmetric_image():
    img = phantoms.blank((40, 64), 0.1)
    phantoms.draw_ellipse(img, (12, 10), (8, 6), 0, 0.9)
    phantoms.draw_polygon(img, [(40, 25), (60, 25), (60, 38), (40, 38)], 0.5)
    return img


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("rgb", [False, True])
def test_write_jpeg_exif_orientation(tmp_path, orientation, rgb):
    img = _asymmetric_image()
    path = phantoms.write_jpeg(
        tmp_path / "x.jpg", img, quality=95, rgb=rgb, exif_orientation=orientation
    )
    with Image.open(path) as raw:
        assert raw.mode == ("RGB" if rgb else "L")
        stored_shape = raw.size[::-1]
        assert raw.getexif().get(0x0112) == orientation
        upright = np.asarray(ImageOps.exif_transpose(raw).convert("L"), np.float32) / 255
    assert upright.shape == img.shape
    assert stored_shape == (img.shape[::-1] if orientation in (5, 6, 7, 8) else img.shape)
    assert np.abs(upright - img).mean() < 0.01
    assert _no_temp_files(tmp_path) == []


def test_write_jpeg_tint_and_bad_orientation(tmp_path):
    img = phantoms.blank((16, 16), 0.8)
    path = phantoms.write_jpeg(tmp_path / "t.jpg", img, rgb=True, tint=(1.0, 0.9, 0.8))
    r, g, b = np.asarray(Image.open(path), np.float32).reshape(-1, 3).mean(axis=0) / 255
    assert r == pytest.approx(0.8, abs=0.02) and b == pytest.approx(0.64, abs=0.02)
    assert r > g > b
    with pytest.raises(ValueError, match="Unknown exif_orientation"):
        phantoms.write_jpeg(tmp_path / "u.jpg", img, exif_orientation=9)


@pytest.mark.parametrize("monochrome1", [False, True])
@pytest.mark.parametrize(
    "bits, slope, intercept", [(12, 1.0, 0.0), (16, 0.5, -1024.0), (10, 2.0, 100.0)]
)
def test_write_dicom_round_trip(tmp_path, monochrome1, bits, slope, intercept):
    img = _test_image()
    path = phantoms.write_dicom(
        tmp_path / "d" / "x.dcm",
        img,
        monochrome1=monochrome1,
        bits=bits,
        window=(1000, 2000),
        patient_id="PHANTOM-7",
        rescale_slope=slope,
        rescale_intercept=intercept,
        pixel_spacing_mm=(0.15, 0.15),
    )
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    assert ds.PhotometricInterpretation == ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
    assert ds.BitsStored == bits and ds.HighBit == bits - 1 and ds.BitsAllocated == 16
    assert ds.PatientID == "PHANTOM-7"
    assert float(ds.WindowCenter) == 1000 and float(ds.WindowWidth) == 2000
    assert [float(v) for v in ds.PixelSpacing] == [0.15, 0.15]
    top = 2**bits - 1
    stored = ds.pixel_array.astype(np.float64)
    assert stored.shape == SHAPE and stored.max() <= top
    modality = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(modality, stored * slope + intercept)
    recovered = (modality - intercept) / slope / top
    if monochrome1:
        recovered = 1.0 - recovered
    np.testing.assert_allclose(recovered, img, atol=0.5 / top + 1e-6)
    assert _no_temp_files(tmp_path) == []


def test_write_dicom_without_window_and_bad_bits(tmp_path):
    ds = pydicom.dcmread(phantoms.write_dicom(tmp_path / "x.dcm", _test_image()))
    assert "WindowCenter" not in ds and ds.PatientID == "PHANTOM"
    with pytest.raises(ValueError):
        phantoms.write_dicom(tmp_path / "y.dcm", _test_image(), bits=20)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_write_mha_round_trip(tmp_path, dtype):
    volume = (np.arange(3 * 5 * 7).reshape(3, 5, 7) % 11).astype(dtype)
    direction = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    path = phantoms.write_mha(tmp_path / "m" / "v.mha", volume, (0.5, 0.75, 3.3), direction)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (7, 5, 3)
    assert image.GetSpacing() == pytest.approx((0.5, 0.75, 3.3))
    assert image.GetDirection() == pytest.approx(tuple(np.ravel(direction)))
    back = sitk.GetArrayFromImage(image)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, volume)
    assert _no_temp_files(tmp_path) == []


def test_write_mha_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        phantoms.write_mha(tmp_path / "a.mha", np.zeros((4, 4)))
    with pytest.raises(ValueError):
        phantoms.write_mha(tmp_path / "b.mha", np.zeros((2, 4, 4)), (1, 0, 1))
