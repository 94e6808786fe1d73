"""Tests of common.image_io: PNG, JPEG (EXIF), DICOM (modality LUT, VOI, MONOCHROME1), errors, listing."""

import hashlib

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from PIL import ImageOps
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import SecondaryCaptureImageStorage

from common.errors import DataError
from common.image_io import ImageReadError
from common.image_io import _apply_orientation
from common.image_io import image_id
from common.image_io import is_dicom_file
from common.image_io import is_image_file
from common.image_io import list_images
from common.image_io import read_image
from common.image_io import read_image_resized
from common.image_io import sniff_format

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, size=(12, 16), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, size=(12, 16), dtype=np.uint16)
SOP_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def write_dicom(
    path,
    stored,
    *,
    photometric="MONOCHROME2",
    slope=None,
    intercept=None,
    window=None,
    voi_lut=None,
    frames=1,
    bits_stored=12,
):
    """A minimal CR DICOM written with pydicom's Dataset/FileMetaDataset (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = SOP_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = SOP_UID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-0042"
    ds.Modality = "CR"
    stored = np.asarray(stored, dtype=np.uint16)
    ds.Rows, ds.Columns = stored.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, bits, data = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(data), first, bits]
        item["LUTData"] = pydicom.DataElement(0x00283006, "US", [int(v) for v in data])
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def window_linear(values, center, width):
    """PS3.3 C.11.2.1.2.1 LINEAR window to [0, 1], written out independently of the module."""
    out = np.empty_like(values, dtype=np.float64)
    low = values <= center - 0.5 - (width - 1) / 2
    high = values > center - 0.5 + (width - 1) / 2
    mid = ~(low | high)
    out[low] = 0.0
    out[high] = 1.0
    out[mid] = (values[mid] - (center - 0.5)) / (width - 1) + 0.5
    return out


# --- PNG ---------------------------------------------------------------------------------------


def test_png_8bit(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), GRAY8)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == GRAY8.shape
    np.testing.assert_allclose(image, GRAY8 / 255.0, atol=1e-7)


def test_png_16bit(tmp_path):
    path = tmp_path / "a16.png"
    cv2.imwrite(str(path), GRAY16)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == GRAY16.shape
    np.testing.assert_allclose(image, GRAY16 / 65535.0, atol=1e-7)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_png_color_modes_become_gray(tmp_path, mode):
    rgb = RNG.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.quantize(colors=16)
    elif mode == "LA":
        image = image.convert("LA")
    path = tmp_path / f"c_{mode}.png"
    image.save(path)
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    expected = (expected @ np.array([0.299, 0.587, 0.114])) / 255.0
    got = read_image(path)
    assert got.shape == (10, 14)
    # LA keeps only the luminance PIL computed (rounded to 8 bits).
    np.testing.assert_allclose(got, expected, atol=1.0 / 255 + 1e-6)


def test_png_16bit_rgb_keeps_16_bits(tmp_path):
    rgb16 = RNG.integers(0, 65536, size=(6, 9, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
    expected = (rgb16.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 65535.0
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


# --- JPEG --------------------------------------------------------------------------------------


def blocky_image(h, w):
    """Large flat blocks survive JPEG almost exactly: a bright top-left block on a dark background."""
    a = np.full((h, w), 30, dtype=np.uint8)
    a[: h // 2, : w // 4] = 220
    return a


def test_jpeg_exif_orientation_6_is_rotated(tmp_path):
    stored = blocky_image(32, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "o6.jpg"
    Image.fromarray(stored, "L").save(path, quality=100, exif=exif.tobytes())
    image = read_image(path)
    assert image.shape == (64, 32)
    expected = np.rot90(stored, -1) / 255.0
    np.testing.assert_allclose(image, expected, atol=0.05)
    # The bright block was top-left in the stored pixels; upright it is top-right.
    assert image[:8, -8:].mean() > 0.8 and image[:8, :8].mean() < 0.2


def test_jpeg_rgb_to_gray(tmp_path):
    path = tmp_path / "red.jpg"
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb, "RGB").save(path, quality=100)
    image = read_image(path)
    assert image.shape == (16, 16) and image.dtype == np.float32
    np.testing.assert_allclose(image, 0.299, atol=0.02)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pil(orientation):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    image = Image.fromarray(a, "L")
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(_apply_orientation(a, orientation), expected)


# --- DICOM -------------------------------------------------------------------------------------

STORED = np.array([[0, 500, 1000, 1500], [2000, 2500, 3000, 4095]], dtype=np.uint16)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_and_window(tmp_path, photometric):
    slope, intercept, center, width = 2.0, -1000.0, 2000.0, 4000.0
    path = write_dicom(
        tmp_path / "w.dcm",
        STORED,
        photometric=photometric,
        slope=slope,
        intercept=intercept,
        window=(center, width),
    )
    image = read_image(path)
    expected = window_linear(STORED * slope + intercept, center, width)
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    assert image.dtype == np.float32 and image.shape == STORED.shape
    np.testing.assert_allclose(image, expected, atol=1e-6)
    # The window clips: modality values -1000 and 0 lie below 0 (center - width/2).
    assert image[0, 0] == (1.0 if photometric == "MONOCHROME1" else 0.0)


def test_dicom_monochrome1_inverts_so_bone_is_bright(tmp_path):
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1"))
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", STORED, photometric="MONOCHROME2"))
    np.testing.assert_allclose(m1 + m2, 1.0, atol=1e-6)
    # In MONOCHROME1 a low stored value displays white: bone (high attenuation) is bright.
    assert m1[0, 0] == pytest.approx(1.0) and m1[1, 3] == pytest.approx(0.0)


def test_dicom_without_window_is_min_max(tmp_path):
    path = write_dicom(tmp_path / "mm.dcm", STORED, slope=0.5, intercept=100.0)
    values = STORED * 0.5 + 100.0
    expected = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_dicom_voi_lut_sequence(tmp_path):
    lut = (np.arange(4096) * 16).astype(np.uint16)  # 12 -> 16 bits, linear
    path = write_dicom(tmp_path / "lut.dcm", STORED, voi_lut=(0, 16, lut))
    np.testing.assert_allclose(read_image(path), STORED * 16 / 65535.0, atol=1e-6)


def test_dicom_multiframe_gives_first_frame_and_preamble_without_suffix(tmp_path):
    frames = np.stack([STORED, STORED[::-1]])
    path = write_dicom(tmp_path / "IM0001", frames, frames=2)
    assert is_image_file(path)
    expected = STORED / 4095.0
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_image_id_never_names_the_patient(tmp_path):
    path = write_dicom(tmp_path / "scan.dcm", STORED)
    name = image_id(path)
    assert "Doe" not in name and "PID-0042" not in name
    assert name == "dcm-" + hashlib.sha1(SOP_UID.encode()).hexdigest()[:12]
    png = tmp_path / "knee_0001.png"
    cv2.imwrite(str(png), GRAY8)
    assert image_id(png) == "knee_0001.png"


# --- Errors ------------------------------------------------------------------------------------


def _truncated_png(path):
    ok, data = cv2.imencode(".png", GRAY16)
    path.write_bytes(data.tobytes()[: len(data) // 2])


def _truncated_jpeg(path):
    ok, data = cv2.imencode(".jpg", RNG.integers(0, 256, size=(64, 64), dtype=np.uint8))
    path.write_bytes(data.tobytes()[: len(data) // 2])


def _truncated_dicom(path):
    write_dicom(path, RNG.integers(0, 4096, size=(32, 32)))
    path.write_bytes(path.read_bytes()[:-1000])


BROKEN = {
    "truncated.png": _truncated_png,
    "truncated.jpg": _truncated_jpeg,
    "truncated.dcm": _truncated_dicom,
    "empty.png": lambda p: p.write_bytes(b""),
    "text.png": lambda p: p.write_text("not an image at all, just text"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_unreadable_files_raise_naming_the_path(tmp_path, name):
    path = tmp_path / name
    BROKEN[name](path)
    with pytest.raises(ImageReadError, match=name) as info:
        read_image(path)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_missing_file_raises_naming_the_path(tmp_path):
    path = tmp_path / "nowhere" / "missing.png"
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        read_image(path)


# --- Listing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("image1.png", True),
        ("IMAGE2.JPG", True),
        ("x.jpeg", True),
        ("x.dcm", True),
        ("x.DICOM", True),
        ("._image1.png", False),
        (".hidden.png", False),
        ("notes.txt", False),
        ("labels.csv", False),
    ],
)
def test_is_image_file(tmp_path, name, expected):
    path = tmp_path / name
    path.write_bytes(b"x" * 200)
    assert is_image_file(path) is expected


def test_list_images_sorted_skips_junk(tmp_path):
    for rel in ["b/image2.png", "a/image1.png", "a/._image1.png", "a/.hidden.png", "c.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), GRAY8)
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / ".git").mkdir()
    cv2.imwrite(str(tmp_path / ".git" / "x.png"), GRAY8)
    write_dicom(tmp_path / "b" / "IM0002", STORED)
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/image1.png", "b/IM0002", "b/image2.png", "c.jpg"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["c.jpg"]
    with pytest.raises(ImageReadError, match="folder not found"):
        list_images(tmp_path / "absent")


# --- Resizing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_read_image_resized(tmp_path, keep_aspect):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.full((20, 40), 255, dtype=np.uint8))
    image = read_image_resized(path, (40, 40), keep_aspect=keep_aspect)
    assert image.shape == (40, 40) and image.dtype == np.float32
    if keep_aspect:
        # 20x40 fits as 20x40 in 40x40: 10 rows of zero padding above and below.
        np.testing.assert_allclose(image[10:30], 1.0, atol=1e-6)
        assert np.all(image[:10] == 0) and np.all(image[30:] == 0)
    else:
        np.testing.assert_allclose(image, 1.0, atol=1e-6)


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("name", ["old.dcm", "001"])
def test_dicom_bare_data_set_without_preamble_or_file_meta(tmp_path, implicit, name):
    """Older archives store the data set alone: no 128-byte preamble, no file meta (so no
    Transfer Syntax UID), sometimes no suffix (the OAI image release names its films `001`)."""
    from pydicom.filewriter import dcmwrite

    stored = (np.arange(12 * 9).reshape(12, 9) * 30).astype(np.uint16)
    full = write_dicom(tmp_path / "full.dcm", stored, window=(1600, 3200))
    ds = pydicom.dcmread(full)
    del ds.file_meta
    ds.preamble = None
    path = tmp_path / name
    with open(path, "wb") as f:
        dcmwrite(f, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    head = path.read_bytes()[:132]
    assert head[128:132] != b"DICM" and b"1.2.840.10008.1.2" not in path.read_bytes()[:300]
    assert is_dicom_file(path) and is_image_file(path)
    assert sniff_format(path) == "dicom"
    np.testing.assert_allclose(read_image(path), read_image(full), atol=1e-6)
    assert list_images(tmp_path) == sorted([full, path])


def test_a_file_without_suffix_that_is_not_dicom_is_not_an_image(tmp_path):
    path = tmp_path / "README"
    path.write_bytes(b"\x08\x00 this is text, not a data set" * 8)
    assert not is_dicom_file(path) and not is_image_file(path)
