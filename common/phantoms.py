"""Drawing primitives and file writers shared by the five phantom generators.

Images are 2-D numpy float32 arrays with values in [0, 1], indexed `img[y, x]`. Coordinates are
`(x, y)` in pixels, with the centre of pixel `img[r, c]` at `(c, r)`. Shapes are drawn anti-aliased:
ellipses and capsules from their signed distance (a one-pixel soft edge), polygons and lines by
the fraction of 4x4 sub-pixel samples inside. Every drawing function modifies `img` in place, returns
it, and keeps it in [0, 1]. `mode` says how a shape of intensity `value` combines with what is
already there, pixel by pixel with the shape's coverage `a` in [0, 1]:

- `"max"` (default): `img + a * max(value - img, 0)` (a bright structure over a darker one);
- `"add"`: `img + a * value` (overlapping tissue; `value` may be negative), then clipped to [0, 1];
- `"set"`: `img * (1 - a) + a * value` (paint over).

Writers create parent folders and write atomically (a temporary name in the same folder, then
`os.replace`), so a reader never sees half a file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from common.fileio import atomic_write_bytes
from common.fileio import current_umask

MODES = ("add", "max", "set")
_SUPERSAMPLE = 4

# EXIF orientation -> the PIL transpose that stores the upright image so that
# `PIL.ImageOps.exif_transpose` (which applies the tag) gives it back.
_EXIF_INVERSE = {
    1: None,
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_90",
    7: "TRANSVERSE",
    8: "ROTATE_270",
}

_CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


# --------------------------------------------------------------------------- basics


def rng(seed) -> np.random.Generator:
    """Returns a numpy random generator for `seed` (an int, a sequence of ints or a Generator).

    Args:
        seed: anything `numpy.random.default_rng` accepts; a Generator is returned unchanged.

    Returns:
        A `numpy.random.Generator`.
    """
    return np.random.default_rng(seed)


def blank(shape_hw, value=0.0) -> np.ndarray:
    """Returns a float32 image of shape `shape_hw` filled with `value`.

    Args:
        shape_hw: `(height, width)` in pixels, both positive.
        value: the fill intensity in [0, 1].

    Returns:
        A float32 array of shape `(height, width)`.
    """
    height, width = _shape_hw(shape_hw)
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"value must be in [0, 1], got {value}")
    return np.full((height, width), float(value), dtype=np.float32)


def clip01(img) -> np.ndarray:
    """Returns `img` as float32 clipped to [0, 1] (a new array).

    Args:
        img: an array of any shape.

    Returns:
        A float32 array of the same shape with values in [0, 1].
    """
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------- drawing


def draw_ellipse(img, center_xy, axes_xy, angle_deg=0.0, value=1.0, mode="max") -> np.ndarray:
    """Draws a filled, anti-aliased ellipse into `img` (in place).

    Args:
        img: float32 image `(H, W)` in [0, 1]; modified in place.
        center_xy: centre `(x, y)` in pixels (sub-pixel allowed).
        axes_xy: semi-axes `(a, b)` in pixels along the ellipse's own x and y axes, both > 0.
        angle_deg: rotation of the ellipse's x axis towards +y (clockwise on screen, as
            `cv2.ellipse`), in degrees.
        value: intensity of the ellipse.
        mode: `"max"`, `"add"` or `"set"` (see the module docstring).

    Returns:
        `img`.
    """
    _check_image(img)
    _check_mode(mode)
    cx, cy = _point(center_xy, "center_xy")
    a, b = _point(axes_xy, "axes_xy")
    if a <= 0 or b <= 0:
        raise ValueError(f"axes_xy must be positive, got {tuple(axes_xy)}")
    theta = np.deg2rad(float(angle_deg))
    cos, sin = np.cos(theta), np.sin(theta)
    half_x = np.hypot(a * cos, b * sin)
    half_y = np.hypot(a * sin, b * cos)
    box = _pixel_box(img.shape, cx - half_x, cy - half_y, cx + half_x, cy + half_y)
    if box is None:
        return img
    xs, ys = _pixel_grid(box)
    dx, dy = xs - cx, ys - cy
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    level = (u / a) ** 2 + (v / b) ** 2 - 1.0
    grad = 2.0 * np.hypot(u / a**2, v / b**2)
    distance = level / np.maximum(grad, 1e-12)
    _composite(img, box, _coverage_from_distance(distance), value, mode)
    return img


def draw_capsule(img, p0_xy, p1_xy, radius, value=1.0, mode="max") -> np.ndarray:
    """Draws a capsule (all points within `radius` of the segment p0-p1; a rounded bone shaft).

    Args:
        img: float32 image `(H, W)` in [0, 1]; modified in place.
        p0_xy: one end of the axis `(x, y)` in pixels.
        p1_xy: the other end `(x, y)` in pixels (may equal `p0_xy`: a disc).
        radius: half the shaft's width in pixels, > 0.
        value: intensity of the capsule.
        mode: `"max"`, `"add"` or `"set"`.

    Returns:
        `img`.
    """
    _check_image(img)
    _check_mode(mode)
    p0 = np.array(_point(p0_xy, "p0_xy"))
    p1 = np.array(_point(p1_xy, "p1_xy"))
    radius = float(radius)
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    lo = np.minimum(p0, p1) - radius
    hi = np.maximum(p0, p1) + radius
    box = _pixel_box(img.shape, lo[0], lo[1], hi[0], hi[1])
    if box is None:
        return img
    xs, ys = _pixel_grid(box)
    seg = p1 - p0
    length2 = float(seg @ seg)
    if length2 > 0:
        t = np.clip(((xs - p0[0]) * seg[0] + (ys - p0[1]) * seg[1]) / length2, 0.0, 1.0)
    else:
        t = np.zeros_like(xs)
    distance = np.hypot(xs - (p0[0] + t * seg[0]), ys - (p0[1] + t * seg[1])) - radius
    _composite(img, box, _coverage_from_distance(distance), value, mode)
    return img


def draw_polygon(img, points_xy, value=1.0, mode="max") -> np.ndarray:
    """Draws a filled, anti-aliased polygon (even-odd rule) into `img`.

    Args:
        img: float32 image `(H, W)` in [0, 1]; modified in place.
        points_xy: `(N, 2)` vertices `(x, y)` in pixels, N >= 3, in order.
        value: intensity of the polygon.
        mode: `"max"`, `"add"` or `"set"`.

    Returns:
        `img`.
    """
    _check_image(img)
    _check_mode(mode)
    points = np.asarray(points_xy, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 3:
        raise ValueError(f"points_xy must have shape (N >= 3, 2), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points_xy must be finite")
    lo, hi = points.min(axis=0), points.max(axis=0)
    box = _pixel_box(img.shape, lo[0], lo[1], hi[0], hi[1])
    if box is None:
        return img
    coverage = _polygon_coverage(points, box)
    _composite(img, box, coverage, value, mode)
    return img


def draw_line(img, p0_xy, p1_xy, thickness=1.0, value=1.0, mode="max") -> np.ndarray:
    """Draws a straight band of `thickness` pixels from p0 to p1 with flat ends (a fracture line).

    Args:
        img: float32 image `(H, W)` in [0, 1]; modified in place.
        p0_xy: start `(x, y)` in pixels.
        p1_xy: end `(x, y)` in pixels, different from `p0_xy`.
        thickness: width of the band in pixels, > 0 (sub-pixel widths draw faint lines).
        value: intensity of the line.
        mode: `"max"`, `"add"` or `"set"`.

    Returns:
        `img`.
    """
    p0 = np.array(_point(p0_xy, "p0_xy"))
    p1 = np.array(_point(p1_xy, "p1_xy"))
    thickness = float(thickness)
    if thickness <= 0:
        raise ValueError(f"thickness must be positive, got {thickness}")
    direction = p1 - p0
    length = float(np.hypot(*direction))
    if length == 0:
        raise ValueError("draw_line needs two different points; use draw_capsule for a dot")
    normal = np.array([-direction[1], direction[0]]) / length * (thickness / 2.0)
    corners = np.stack([p0 + normal, p1 + normal, p1 - normal, p0 - normal])
    return draw_polygon(img, corners, value=value, mode=mode)


# --------------------------------------------------------------------------- texture and tone


def smooth_noise(shape_hw, scale_px, rng) -> np.ndarray:
    """Returns a smooth random texture: Gaussian-filtered white noise, zero mean and unit std.

    Args:
        shape_hw: `(height, width)` in pixels.
        scale_px: correlation length (Gaussian sigma) in pixels, > 0.
        rng: a `numpy.random.Generator`.

    Returns:
        float32 `(height, width)`, mean 0 and standard deviation 1 (not in [0, 1]: scale it and
        add it to an image, then `clip01`).
    """
    height, width = _shape_hw(shape_hw)
    scale_px = float(scale_px)
    if scale_px <= 0:
        raise ValueError(f"scale_px must be positive, got {scale_px}")
    # Large scales: draw the noise on a coarser grid (sigma 2 there) and upsample; cheap and smooth.
    factor = max(1.0, scale_px / 2.0)
    small_h = max(2, int(np.ceil(height / factor)) + 2)
    small_w = max(2, int(np.ceil(width / factor)) + 2)
    noise = rng.standard_normal((small_h, small_w)).astype(np.float32)
    sigma = scale_px / factor
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    if factor > 1.0:
        noise = cv2.resize(
            noise,
            (int(round(small_w * factor)), int(round(small_h * factor))),
            interpolation=cv2.INTER_CUBIC,
        )
    noise = noise[:height, :width]
    std = float(noise.std())
    return ((noise - noise.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def add_noise(img, sigma, rng) -> np.ndarray:
    """Returns `img` plus Gaussian noise of standard deviation `sigma`, clipped to [0, 1].

    Args:
        img: float32 image in [0, 1].
        sigma: standard deviation of the noise in intensity units, >= 0.
        rng: a `numpy.random.Generator`.

    Returns:
        A new float32 image in [0, 1].
    """
    sigma = float(sigma)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    img = np.asarray(img, dtype=np.float32)
    noise = rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    return clip01(img + noise)


def blur(img, sigma_px) -> np.ndarray:
    """Returns `img` filtered with a Gaussian of `sigma_px` pixels (reflected borders).

    Args:
        img: float32 image `(H, W)`.
        sigma_px: standard deviation in pixels; 0 returns a copy.

    Returns:
        A new float32 image.
    """
    sigma_px = float(sigma_px)
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px}")
    img = np.asarray(img, dtype=np.float32)
    if sigma_px == 0:
        return img.copy()
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma_px, borderType=cv2.BORDER_REFLECT)


def adjust_contrast(img, gain, bias) -> np.ndarray:
    """Returns `clip01(img * gain + bias)` (exposure and film-density differences).

    Args:
        img: float32 image in [0, 1].
        gain: multiplicative contrast.
        bias: additive brightness.

    Returns:
        A new float32 image in [0, 1].
    """
    return clip01(np.asarray(img, dtype=np.float32) * float(gain) + float(bias))


# --------------------------------------------------------------------------- geometry


def random_affine(img, rng, max_rotation_deg, max_shift_px, scale_range, masks=()):
    """Warps `img` (and `masks`, identically) by a random rotation, scale and shift.

    The rotation (uniform in +-max_rotation_deg) and the scale (uniform in scale_range) are about
    the image centre; then a shift uniform in +-max_shift_px on each axis. Outside pixels are 0.

    Args:
        img: float32 image `(H, W)`; interpolated bilinearly.
        rng: a `numpy.random.Generator`.
        max_rotation_deg: largest rotation in degrees, >= 0.
        max_shift_px: largest shift in pixels, a number or `(max_x, max_y)`, >= 0.
        scale_range: `(low, high)` zoom factors, 0 < low <= high.
        masks: label images `(H, W)` of any numeric or bool dtype; nearest-neighbour, dtype kept.

    Returns:
        `(warped_img, warped_masks)`: the float32 image and a tuple of masks in the input order.
    """
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"img must be 2-D (H, W), got shape {img.shape}")
    height, width = img.shape
    max_rotation_deg = float(max_rotation_deg)
    shift = np.broadcast_to(np.asarray(max_shift_px, dtype=np.float64), (2,))
    low, high = (float(v) for v in scale_range)
    if max_rotation_deg < 0 or np.any(shift < 0):
        raise ValueError("max_rotation_deg and max_shift_px must be >= 0")
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
    angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
    scale = rng.uniform(low, high)
    tx, ty = rng.uniform(-shift, shift)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, scale)
    matrix[:, 2] += (tx, ty)
    warp = dict(dsize=(width, height), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = cv2.warpAffine(img, matrix, flags=cv2.INTER_LINEAR, **warp)
    warped_masks = []
    for mask in masks:
        mask = np.asarray(mask)
        if mask.shape != img.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {img.shape}")
        work = mask.astype(np.uint8) if mask.dtype == bool else mask
        if work.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
            work = work.astype(np.float32)
        moved = cv2.warpAffine(work, matrix, flags=cv2.INTER_NEAREST, **warp)
        warped_masks.append(moved.astype(mask.dtype))
    return out, tuple(warped_masks)


def mask_bbox(mask, threshold=0.0):
    """Returns the bounding box `(x0, y0, x1, y1)` of the pixels where `mask > threshold`.

    Args:
        mask: a 2-D array (bool, integer labels or float coverage).
        threshold: pixels strictly above it count as inside.

    Returns:
        Integers `(x0, y0, x1, y1)`: first column and row inside, and one past the last
        (so the box is `x1 - x0` wide, as a slice `mask[y0:y1, x0:x1]`).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    inside = mask > threshold
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty: no pixel above the threshold")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --------------------------------------------------------------------------- writers


def write_png(path, img01, bits=8) -> Path:
    """Writes a grayscale PNG of 8 or 16 bits (values scaled from [0, 1], rounded).

    Args:
        path: destination file; parent folders are created.
        img01: float image `(H, W)` in [0, 1] (clipped).
        bits: 8 or 16.

    Returns:
        The path written.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    pixels = _quantize(_as_image(img01), bits, np.uint8 if bits == 8 else np.uint16)
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"could not encode PNG for {path}")
    return _atomic_write_bytes(path, encoded.tobytes())


def write_jpeg(path, img01, quality=95, rgb=False, exif_orientation=None, tint=None) -> Path:
    """Writes a JPEG, optionally RGB and with an EXIF Orientation tag.

    With `exif_orientation`, the pixels are stored transformed so that a reader applying the
    tag (e.g. `PIL.ImageOps.exif_transpose`) gets `img01` back upright.

    Args:
        path: destination file; parent folders are created.
        img01: float image `(H, W)` in [0, 1].
        quality: JPEG quality 1..100.
        rgb: store three channels (gray copied into each, times `tint`).
        exif_orientation: None, or the EXIF Orientation value 1..8.
        tint: per-channel `(r, g, b)` multipliers for `rgb=True`, e.g. `(1.0, 0.97, 0.92)`;
            None means no tint.

    Returns:
        The path written.
    """
    from PIL import Image

    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if exif_orientation is not None and exif_orientation not in _EXIF_INVERSE:
        raise ValueError(
            f"Unknown exif_orientation {exif_orientation!r}. Available: {sorted(_EXIF_INVERSE)}"
        )
    gray = _as_image(img01)
    if rgb:
        factors = np.ones(3) if tint is None else np.asarray(tint, dtype=np.float64)
        if factors.shape != (3,):
            raise ValueError(f"tint must have three values, got {tint!r}")
        image = Image.fromarray(_quantize(gray[..., None] * factors, 8, np.uint8), mode="RGB")
    else:
        image = Image.fromarray(_quantize(gray, 8, np.uint8), mode="L")
    save_kwargs = {"format": "JPEG", "quality": int(quality)}
    if exif_orientation is not None:
        transpose = _EXIF_INVERSE[exif_orientation]
        if transpose is not None:
            image = image.transpose(getattr(Image.Transpose, transpose))
        exif = Image.Exif()
        exif[0x0112] = int(exif_orientation)
        save_kwargs["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, **save_kwargs)
    return _atomic_write_bytes(path, buffer.getvalue())


def write_dicom(
    path,
    img01,
    *,
    monochrome1=False,
    bits=12,
    window=None,
    patient_id="PHANTOM",
    rescale_slope=1.0,
    rescale_intercept=0.0,
    pixel_spacing_mm=None,
) -> Path:
    """Writes a single-frame Computed Radiography DICOM file (Explicit VR Little Endian).

    Stored values are `round(img01 * (2**bits - 1))`, or `2**bits - 1` minus that with
    MONOCHROME1 (where low values are displayed bright), so a reader that inverts MONOCHROME1
    gets `img01` back. The modality LUT is `stored * rescale_slope + rescale_intercept`.

    Args:
        path: destination file; parent folders are created.
        img01: float image `(H, W)` in [0, 1], bone bright.
        monochrome1: write PhotometricInterpretation MONOCHROME1 (inverted pixels).
        bits: BitsStored, 8..16 (BitsAllocated is 16).
        window: None, or `(center, width)` in rescaled units, written as WindowCenter/Width.
        patient_id: PatientID (and PatientName) to write; phantoms only.
        rescale_slope: RescaleSlope, != 0.
        rescale_intercept: RescaleIntercept.
        pixel_spacing_mm: None, or `(row_mm, col_mm)` written as PixelSpacing and
            ImagerPixelSpacing.

    Returns:
        The path written.
    """
    from pydicom.dataset import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.uid import generate_uid

    bits = int(bits)
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be in 8..16, got {bits}")
    if float(rescale_slope) == 0:
        raise ValueError("rescale_slope must not be 0")
    gray = _as_image(img01)
    top = (1 << bits) - 1
    stored = _quantize(gray, bits, np.uint16)
    if monochrome1:
        stored = (top - stored).astype(np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = str(patient_id)
    ds.PatientID = str(patient_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = "20000101"
    ds.StudyTime = "000000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "phantom"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{float(rescale_slope):g}"
    ds.RescaleIntercept = f"{float(rescale_intercept):g}"
    ds.RescaleType = "US"
    if window is not None:
        center, width = (float(v) for v in window)
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        ds.WindowCenter = f"{center:g}"
        ds.WindowWidth = f"{width:g}"
    if pixel_spacing_mm is not None:
        spacing = [f"{float(v):g}" for v in pixel_spacing_mm]
        ds.PixelSpacing = spacing
        ds.ImagerPixelSpacing = spacing
    ds.PixelData = stored.astype("<u2").tobytes()

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return _atomic_write_bytes(path, buffer.getvalue())


def write_mha(path, volume_zyx, spacing_xyz=(1, 1, 1), direction=None, compress=True) -> Path:
    """Writes a 3-D volume as a MetaImage `.mha` file with SimpleITK (the SPIDER layout's format).

    Args:
        path: destination file (`.mha`); parent folders are created.
        volume_zyx: array `(Z, Y, X)`; its dtype is kept (float32 images, integer label masks).
        spacing_xyz: voxel size `(x, y, z)` in mm, all > 0.
        direction: None (identity) or a 3x3 direction-cosine matrix (nested or flat, row-major).
        compress: zlib-compress the voxel data.

    Returns:
        The path written.
    """
    import SimpleITK as sitk

    volume = np.asarray(volume_zyx)
    if volume.ndim != 3:
        raise ValueError(f"volume_zyx must be 3-D (Z, Y, X), got shape {volume.shape}")
    if volume.dtype == bool:
        volume = volume.astype(np.uint8)
    elif volume.dtype == np.float64:
        volume = volume.astype(np.float32)
    spacing = tuple(float(v) for v in spacing_xyz)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_xyz must be three positive numbers, got {spacing_xyz!r}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume))
    image.SetSpacing(spacing)
    if direction is not None:
        cosines = np.asarray(direction, dtype=np.float64).reshape(-1)
        if cosines.size != 9:
            raise ValueError(f"direction must be 3x3, got {np.shape(direction)}")
        image.SetDirection(tuple(cosines))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.mha")
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=bool(compress))
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would stay on the file
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


# --------------------------------------------------------------------------- helpers


def _atomic_write_bytes(path, data: bytes) -> Path:
    # Phantoms are cheap to write again: atomic, but without an fsync per image.
    return atomic_write_bytes(path, data, durable=False)


def _unlink_quietly(name):
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def _shape_hw(shape_hw):
    height, width = (int(v) for v in shape_hw)
    if height <= 0 or width <= 0:
        raise ValueError(f"shape_hw must be two positive sizes, got {tuple(shape_hw)}")
    return height, width


def _check_image(img):
    if not isinstance(img, np.ndarray) or img.ndim != 2 or img.dtype != np.float32:
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise ValueError(
            f"img must be a 2-D float32 numpy array (see blank()), got {dtype} of shape {shape}"
        )


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"Unknown mode '{mode}'. Available: {list(MODES)}")


def _point(value, name):
    x, y = (float(v) for v in value)
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"{name} must be finite, got {tuple(value)}")
    return x, y


def _pixel_box(shape, xmin, ymin, xmax, ymax):
    """Pixel rows/cols `(y0, x0, y1, x1)` (end exclusive) touched by a shape, clipped to the image."""
    height, width = shape
    x0 = max(int(np.floor(xmin - 1)), 0)
    y0 = max(int(np.floor(ymin - 1)), 0)
    x1 = min(int(np.ceil(xmax + 2)), width)
    y1 = min(int(np.ceil(ymax + 2)), height)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, x0, y1, x1


def _pixel_grid(box):
    y0, x0, y1, x1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1]
    return xs.astype(np.float64), ys.astype(np.float64)


def _polygon_coverage(points, box):
    """Fraction of each pixel's 4x4 sub-pixel sample centres inside the polygon (even-odd rule).

    A scanline fill on the sample grid: per sample row, the crossings of every edge (half-open
    in y, so a vertex is counted once) are sorted and paired into spans [x_left, x_right).
    """
    y0, x0, y1, x1 = box
    s = _SUPERSAMPLE
    rows, cols = (y1 - y0) * s, (x1 - x0) * s
    sample_y = y0 + (np.arange(rows) + 0.5) / s - 0.5
    start, end = points, np.roll(points, -1, axis=0)
    ya, yb = start[:, 1][None, :], end[:, 1][None, :]
    xa, xb = start[:, 0][None, :], end[:, 0][None, :]
    y = sample_y[:, None]
    crosses = ((ya <= y) & (y < yb)) | ((yb <= y) & (y < ya))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = xa + (y - ya) * (xb - xa) / (yb - ya)
    x = np.sort(np.where(crosses, x, np.inf), axis=1)
    # Per row the finite crossings come first and are even in number: pair them into spans.
    pairs = x[:, : x.shape[1] // 2 * 2].reshape(rows, -1, 2)
    valid = np.isfinite(pairs[..., 1])
    left, right = pairs[..., 0], pairs[..., 1]

    def column(values):
        # The first sample column whose centre is at or right of `values`.
        return np.clip(np.ceil((values - x0 + 0.5) * s - 0.5), 0, cols).astype(np.int64)

    row_start = np.broadcast_to(np.arange(rows)[:, None] * (cols + 1), valid.shape)[valid]
    size = rows * (cols + 1)
    steps = np.bincount(row_start + column(left[valid]), minlength=size) - np.bincount(
        row_start + column(right[valid]), minlength=size
    )
    inside = np.cumsum(steps.reshape(rows, cols + 1)[:, :cols], axis=1, dtype=np.int16) > 0
    counts = inside.reshape(y1 - y0, s, x1 - x0, s).sum(axis=(1, 3), dtype=np.int16)
    return counts.astype(np.float32) / (s * s)


def _coverage_from_distance(distance):
    return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)


def _composite(img, box, coverage, value, mode):
    y0, x0, y1, x1 = box
    region = img[y0:y1, x0:x1]
    value = np.float32(value)
    if mode == "max":
        out = region + coverage * np.maximum(value - region, 0.0)
    elif mode == "add":
        out = region + coverage * value
    else:
        out = region * (1.0 - coverage) + coverage * value
    img[y0:y1, x0:x1] = np.clip(out, 0.0, 1.0)


def _as_image(img01):
    img = np.asarray(img01, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or infinite values")
    return img


def _quantize(img01, bits, dtype):
    top = (1 << bits) - 1
    return np.round(np.clip(np.asarray(img01, dtype=np.float64), 0.0, 1.0) * top).astype(dtype)
