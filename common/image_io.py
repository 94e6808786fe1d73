"""Reading radiographs from disk: PNG (8/16-bit), JPEG (EXIF orientation) and DICOM, as gray [0, 1].

Every reader returns a float32 `(H, W)` array in [0, 1] with bone bright. A file that cannot be read
(missing, empty, truncated, not an image) raises `ImageReadError`, a `DataError` whose message names
the path. Files named `._*` (the AppleDouble companions that macOS writes into real archives) and
hidden files are never taken for images.

DICOM follows the standard's grayscale pipeline (PS3.3 C.11): stored values, then the modality LUT
(Rescale Slope/Intercept or a Modality LUT Sequence), then the VOI LUT (a VOI LUT Sequence, or
Window Center/Width with the VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID), then MONOCHROME1
is inverted so that bone is bright. Without any VOI transform the modality values are min-max scaled.
Multi-frame files give their first frame.

Size limit: no reader decodes an image whose header claims more than `max_image_pixels()` pixels
(voxels for a volume; default 100,000,000, set with the environment variable
`MSK_MAX_IMAGE_PIXELS`). The header is checked before decoding, and the error names the file and
the claimed size, so a decompression bomb (a small file that claims 100000x100000 pixels) stops
with one line instead of exhausting memory.

Reference:
    DICOM PS3.3 C.11.1 (Modality LUT), C.11.2 (VOI LUT), C.7.6.3.1.2 (Photometric Interpretation).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from common.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
# ITU-R BT.601 luma weights, the same as PIL's convert("L"); they sum to exactly 1 so that a gray
# image stored as RGB keeps its values.
RGB_TO_GRAY = (0.299, 0.587, 0.114)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_EXIF_ORIENTATION_TAG = 0x0112
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
MAX_PIXELS_ENV = "MSK_MAX_IMAGE_PIXELS"
# Plugins that decode compressed DICOM pixel data, by transfer syntax family (PS3.5 A.4).
_DICOM_DECODER_HINT = (
    "install pylibjpeg and pylibjpeg-libjpeg (JPEG, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000) "
    "or python-gdcm"
)


class ImageReadError(DataError):
    """An image file that cannot be read: missing, empty, truncated, or in an unknown format.

    Args:
        message: what is wrong.
        path: the file at fault; the message starts with it.
    """


def max_image_pixels():
    """The largest image any reader decodes, in pixels (voxels for a volume).

    Returns:
        int: `MSK_MAX_IMAGE_PIXELS` from the environment when set (a positive whole number), else
        `DEFAULT_MAX_IMAGE_PIXELS` (100,000,000).

    Raises:
        DataError: the environment variable is not a positive whole number.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise DataError(f"{MAX_PIXELS_ENV}={text!r} is not a positive whole number")
    return value


def check_pixel_count(path, size):
    """Refuses an image whose header claims more pixels than `max_image_pixels()`.

    Args:
        path: the file (named in the error).
        size: the claimed dimensions, e.g. `(width, height)` or `(x, y, z)`.

    Raises:
        ImageReadError: the product of `size` is above the limit; the message names the claimed
            size and the limit.
    """
    dims = [int(v) for v in size]
    count = 1
    for d in dims:
        count *= max(d, 0)
    limit = max_image_pixels()
    if count > limit:
        claimed = "x".join(str(d) for d in dims)
        raise ImageReadError(
            f"header claims {claimed} = {count:,} pixels, above the limit of {limit:,} "
            f"(set {MAX_PIXELS_ENV} to raise it)",
            path=path,
        )


def _jpeg_size(path):
    """(width, height) from a JPEG's first SOF marker, or None when none is found."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        while True:
            byte = f.read(1)
            while byte and byte != b"\xff":
                byte = f.read(1)
            while byte == b"\xff":
                byte = f.read(1)
            if not byte:
                return None
            marker = byte[0]
            if marker in (0x01, *range(0xD0, 0xD9)):
                continue
            length_bytes = f.read(2)
            if len(length_bytes) < 2:
                return None
            length = int.from_bytes(length_bytes, "big")
            if marker in (
                *range(0xC0, 0xC4),
                *range(0xC5, 0xC8),
                *range(0xC9, 0xCC),
                0xCD,
                0xCE,
                0xCF,
            ):
                sof = f.read(5)
                if len(sof) < 5:
                    return None
                return int.from_bytes(sof[3:5], "big"), int.from_bytes(sof[1:3], "big")
            if marker == 0xDA or length < 2:
                return None
            f.seek(length - 2, os.SEEK_CUR)


def check_image_header(path, head=None):
    """Checks the size a PNG, JPEG or DICOM header claims, before anything is decoded.

    Args:
        path: an existing image file.
        head: its first 132 bytes, when already read.

    Raises:
        ImageReadError: the claimed size is above `max_image_pixels()` (or a DICOM header is
            unreadable).
    """
    path = Path(path)
    head = _head(path) if head is None else head
    if _is_dicom_head(path, head):
        _dicom_header_size(path)
    elif head.startswith(_PNG_SIGNATURE) and len(head) >= 24:
        check_pixel_count(
            path, (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
        )
    elif head.startswith(_JPEG_SIGNATURE):
        size = _jpeg_size(path)
        if size is not None:
            check_pixel_count(path, size)


def _dicom_header_size(path):
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                path,
                stop_before_pixels=True,
                force=True,
                specific_tags=["Rows", "Columns", "NumberOfFrames"],
            )
            rows = int(ds.get("Rows", 0) or 0)
            columns = int(ds.get("Columns", 0) or 0)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:  # noqa: BLE001  (pydicom raises many types for broken headers)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageReadError(f"unreadable DICOM header ({reason})", path=path) from None
    check_pixel_count(path, (columns, rows, frames) if frames > 1 else (columns, rows))


# ---------------------------------------------------------------- faults inside tf.data pipelines
# tf.data runs the readers in its own threads and wraps what they raise in an `OpError` whose
# message holds the Python traceback. The readers record each fault here, and `as_data_error`
# maps such an `OpError` back to the one-line `DataError` that names the file.
_FAULT_LOCK = threading.Lock()
_RECENT_FAULTS = collections.deque(maxlen=64)
_PIPELINE_FILES = collections.deque(maxlen=8)


def _record_fault(error):
    with _FAULT_LOCK:
        _RECENT_FAULTS.append(error)


def register_pipeline_files(paths):
    """Remembers the files a `tf.data` pipeline decodes with TensorFlow's own decoders.

    When such a decoder fails (its error names no file), `as_data_error` looks for the culprit among
    the files registered here.

    Args:
        paths: the image files of one pipeline.
    """
    with _FAULT_LOCK:
        _PIPELINE_FILES.append(tuple(os.fspath(p) for p in paths))


_DECODER_MESSAGES = (
    "Invalid PNG data",
    "Invalid JPEG data",
    "jpeg::Uncompress",
    "Unknown image file format",
    "Input is empty",
    "PNG",
    "JPEG",
)


def _is_tf_error(exc):
    return any(
        cls.__name__ == "OpError" and cls.__module__.startswith("tensorflow")
        for cls in type(exc).__mro__
    )


def _decodes_with_tf(path):
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
    except tf.errors.OpError as e:
        reason = " ".join(str(e.message).split())[:200]
        raise ImageReadError(f"unreadable or truncated image ({reason})", path=path) from None


def as_data_error(exc):
    """The one-line `DataError` behind an exception a data pipeline raised, or None.

    A `DataError` is returned as it is. A TensorFlow `OpError` raised while a `tf.data` pipeline
    decoded an image becomes the `ImageReadError` that names the file: the one a reader recorded,
    or, for TensorFlow's own PNG/JPEG decoders, the first registered file that fails to decode.

    Args:
        exc: any exception.

    Returns:
        A `DataError`, or None when `exc` is not a data fault.
    """
    if isinstance(exc, DataError):
        return exc
    if not _is_tf_error(exc):
        return None
    message = str(getattr(exc, "message", "") or exc)
    with _FAULT_LOCK:
        faults = list(_RECENT_FAULTS)
        file_lists = list(_PIPELINE_FILES)
    for fault in reversed(faults):
        if str(fault) in message:
            return fault
    marker = "ImageReadError: "
    if marker in message:
        return DataError(message.split(marker, 1)[1].splitlines()[0].strip())
    if "DataError: " in message:
        return DataError(message.split("DataError: ", 1)[1].splitlines()[0].strip())
    if not any(text in message for text in _DECODER_MESSAGES):
        return None
    for paths in reversed(file_lists):
        for path in paths:
            try:
                read_image(path)
                if sniff_format(path) in ("png", "jpeg"):
                    _decodes_with_tf(path)
            except DataError as error:
                return error
    return None


@contextlib.contextmanager
def _quiet_native_output():
    """Silences what native libraries (ITK's MetaIO) print to the process's stdout and stderr.

    The file descriptors are process-wide: one thread at a time (`_NATIVE_OUTPUT_LOCK`).
    """
    with _NATIVE_OUTPUT_LOCK, _redirected_native_output():
        yield


_NATIVE_OUTPUT_LOCK = threading.Lock()


@contextlib.contextmanager
def _redirected_native_output():
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            except OSError:
                pass
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


_METAIMAGE_TYPES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}  # fmt: skip


def _metaimage_header(path):
    """Fields of a MetaImage header and the offset of its pixel data (LOCAL data)."""
    fields = {}
    with open(path, "rb") as f:
        while True:
            line = f.readline(4096)
            if not line:
                break
            text = line.decode("latin-1").strip()
            if "=" not in text:
                raise ImageReadError("cannot read MetaImage: no 'Key = value' header", path=path)
            key, value = (part.strip() for part in text.split("=", 1))
            fields[key] = value
            if key == "ElementDataFile":
                break
        offset = f.tell()
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in fields:
            raise ImageReadError(f"cannot read MetaImage: header without {key}", path=path)
    return fields, offset


def read_metaimage(path):
    """Reads a MetaImage (`.mha`) file with SimpleITK: header checked first, no ITK messages.

    Args:
        path: a `.mha` file (pixel data in the file).

    Returns:
        `SimpleITK.Image`.

    Raises:
        ImageReadError: missing, empty, not a MetaImage, truncated, or a header that claims more
            than `max_image_pixels()` voxels; one line naming the file.
    """
    import SimpleITK as sitk

    path = Path(path)
    check_metaimage_header(path)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with _quiet_native_output():
            reader = sitk.ImageFileReader()
            reader.SetImageIO("MetaImageIO")  # by name: SimpleITK would not know `.MHA`
            reader.SetFileName(str(path))
            return reader.Execute()
    except RuntimeError as error:
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        reasons = [ln for ln in lines if not ln.startswith(("Exception thrown", "Reason: Success"))]
        reason = reasons[-1] if reasons else "unreadable"
        reason = reason.split("): ", 1)[-1]
        raise ImageReadError(f"cannot read MetaImage: {reason}", path=path) from None


def check_metaimage_header(path):
    """Checks a MetaImage (`.mha`) header without decoding: the fields a reader needs, the claimed
    size against `max_image_pixels()`, and (uncompressed data) that the file holds all its bytes.

    Args:
        path: a `.mha` file.

    Raises:
        ImageReadError: naming the file.
    """
    path = Path(path)
    _check_file(path)
    fields, offset = _metaimage_header(path)
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
    except ValueError:
        raise ImageReadError(
            f"cannot read MetaImage: DimSize {fields['DimSize']!r} is not whole numbers", path=path
        ) from None
    check_pixel_count(path, dims)
    compressed = fields.get("CompressedData", "False").lower() == "true"
    item = _METAIMAGE_TYPES.get(fields["ElementType"].upper())
    channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
    if fields["ElementDataFile"].upper() == "LOCAL" and not compressed and item is not None:
        expected = item * channels
        for d in dims:
            expected *= d
        available = path.stat().st_size - offset
        if available < expected:
            raise ImageReadError(
                f"cannot read MetaImage: truncated, {available} bytes of pixel data, the header needs {expected}",
                path=path,
            )


def _fill_transfer_syntax(ds):
    """A bare data set (no preamble, no file meta, as older archives store them) read with
    `force=True` lacks the Transfer Syntax UID that decoding its pixels needs: take the encoding
    pydicom found while parsing it (implicit or explicit VR, little or big endian)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.uid import ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None:
        implicit, little = True, True
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    meta.TransferSyntaxUID = syntax


def _looks_like_bare_dicom(head):
    """A DICOM data set without preamble: it starts with a group 0x0008 element (little endian)
    such as (0008,0005) Specific Character Set or (0008,0008) Image Type."""
    if len(head) < 8 or head[:2] != b"\x08\x00":
        return False
    element = int.from_bytes(head[2:4], "little")
    return element < 0x0100 and (
        head[4:6].isalpha() and head[4:6].isupper() or head[6:8] == b"\x00\x00"
    )


def _is_dicom_head(path, head):
    """DICOM by suffix, by the `DICM` preamble, or (a file without suffix, as archives name them
    `001`) by a bare data set's first element."""
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES or _has_dicom_preamble(head):
        return True
    return not suffix and _looks_like_bare_dicom(head)


def _head(path, size=132):
    with open(path, "rb") as f:
        return f.read(size)


def _has_dicom_preamble(head):
    return len(head) >= 132 and head[128:132] == b"DICM"


def is_dicom_file(path):
    """Whether `path` is a DICOM file: a `.dcm`/`.dicom` suffix, the `DICM` preamble at byte 128,
    or (a file without suffix) a bare data set without preamble.

    Args:
        path: a file path.

    Returns:
        True when the file is DICOM by name or by content; False for a missing file without a DICOM
        suffix.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        if not path.is_file():
            return False
        head = _head(path)
        return _is_dicom_head(path, head)
    except OSError:
        return False


def is_image_file(path):
    """Whether `path` names an image this module reads.

    PNG and JPEG files are recognised by suffix (`.png`, `.jpg`, `.jpeg`, any case) and DICOM files by
    suffix (`.dcm`, `.dicom`) or, for files with any other name, by the `DICM` preamble (or, without a
    suffix, by a bare data set's first element). Hidden files
    and the macOS `._*` companions are never images.

    Args:
        path: a file path (it needs to exist only to be recognised by its DICOM preamble).

    Returns:
        True or False.
    """
    path = Path(path)
    if path.name.startswith(".") or path.is_dir():
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        return path.is_file() and _is_dicom_head(path, _head(path))
    except OSError:
        return False


def list_images(folder, recursive=True):
    """The image files in `folder`, sorted, skipping hidden files and folders and macOS `._*` files.

    Args:
        folder: the folder to list.
        recursive: also list sub-folders (default True).

    Returns:
        A sorted list of `pathlib.Path`.

    Raises:
        ImageReadError: `folder` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(
            "folder not found" if not folder.exists() else "not a folder", path=folder
        )
    found = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
            found.extend(Path(root) / name for name in files)
    else:
        found = [p for p in folder.iterdir() if p.is_file()]
    return sorted(p for p in found if is_image_file(p))


def _check_file(path):
    if not path.exists():
        raise ImageReadError("file not found", path=path)
    if not path.is_file():
        raise ImageReadError("not a file", path=path)
    if path.stat().st_size == 0:
        raise ImageReadError("empty file", path=path)


def read_image(path):
    """Read a radiograph as a float32 `(H, W)` gray image in [0, 1], bone bright.

    Args:
        path: a PNG (8- or 16-bit; gray, gray+alpha, RGB, RGBA or palette), JPEG (EXIF orientation
            applied, RGB turned to gray with BT.601 weights) or DICOM file (by suffix or by its
            `DICM` preamble; modality LUT, then VOI LUT or window, else min-max; MONOCHROME1
            inverted; first frame of a multi-frame file).

    Returns:
        np.ndarray float32 of shape (H, W), values in [0, 1].

    Raises:
        ImageReadError: the file is missing, empty, truncated or not a readable image.
    """
    try:
        image = _read_any(Path(path))
    except ImageReadError as error:
        _record_fault(error)
        raise
    image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def _read_any(path):
    _check_file(path)
    try:
        head = _head(path)
    except OSError as e:
        raise ImageReadError(f"cannot open: {e}", path=path) from None
    if _is_dicom_head(path, head):
        return _read_dicom(path)
    if head.startswith(_PNG_SIGNATURE) or head.startswith(_JPEG_SIGNATURE):
        check_image_header(path, head)
    return _read_raster(path, head)


def _rgb_to_gray(rgb):
    rgb = rgb.astype(np.float32)
    w = np.asarray(RGB_TO_GRAY, dtype=np.float32)
    return rgb[..., 0] * w[0] + rgb[..., 1] * w[1] + rgb[..., 2] * w[2]


def _minmax(x):
    x = x.astype(np.float32)
    lo = float(np.min(x))
    hi = float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _png_is_16bit_color(head):
    # IHDR starts at byte 8: length (4), "IHDR" (4), width (4), height (4), bit depth (1), colour type (1).
    if not head.startswith(_PNG_SIGNATURE) or len(head) < 26:
        return False
    return head[24] == 16 and head[25] in (2, 6)


def _read_raster(path, head):
    from PIL import Image
    from PIL import ImageOps
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                check_pixel_count(path, im.size)
                im.load()
                if _png_is_16bit_color(head):
                    # PIL reduces 16-bit colour PNGs to 8 bits; OpenCV keeps all 16.
                    orientation = int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
                    return _apply_orientation(_read_png16_color(path), orientation)
                im = ImageOps.exif_transpose(im)
                return _pil_to_gray(im)
    except UnidentifiedImageError:
        raise ImageReadError("not a PNG, JPEG or DICOM image", path=path) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"decompression bomb refused ({e})", path=path) from None
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e) or type(e).__name__
        raise ImageReadError(f"unreadable or truncated image ({reason})", path=path) from None


def _pil_to_gray(im):
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0
    if mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        if arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.float32) / 65535.0
        return _minmax(arr)
    if mode == "F":
        return _minmax(np.asarray(im, dtype=np.float32))
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode == "LA":
        return np.asarray(im.getchannel("L"), dtype=np.float32) / 255.0
    return _rgb_to_gray(np.asarray(im.convert("RGB"))) / 255.0


def _read_png16_color(path):
    import cv2

    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3 or arr.shape[-1] < 3:
        raise ImageReadError("unreadable 16-bit colour PNG", path=path)
    return _rgb_to_gray(arr[..., 2::-1]) / 65535.0


def _exif_orientation_of(path):
    from PIL import Image

    with Image.open(path) as im:
        return int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)


def _apply_orientation(arr, orientation):
    """Make an array upright for an EXIF orientation, as PIL's `ImageOps.exif_transpose` does."""
    ops = {
        2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
        3: lambda a: a[::-1, ::-1],  # ROTATE_180
        4: lambda a: a[::-1, :],  # FLIP_TOP_BOTTOM
        5: lambda a: a.T,  # TRANSPOSE
        6: lambda a: np.rot90(a, -1),  # ROTATE_270 (clockwise)
        7: lambda a: a[::-1, ::-1].T,  # TRANSVERSE
        8: lambda a: np.rot90(a, 1),  # ROTATE_90 (counter-clockwise)
    }
    op = ops.get(orientation)
    return arr if op is None else np.ascontiguousarray(op(arr))


def exif_orientation(path):
    """The EXIF orientation (1..8) of a JPEG or PNG file, 1 when absent or unreadable.

    Args:
        path: an image file.

    Returns:
        int in 1..8.
    """
    try:
        value = _exif_orientation_of(path)
    except Exception:  # noqa: BLE001  (any unreadable header means "no orientation")
        return 1
    return value if 1 <= value <= 8 else 1


def _first_value(element):
    value = element.value
    if value is None or value == "":
        return None
    if element.VM > 1:
        value = value[0]
    return float(value)


def _dicom_window(arr, ds):
    """Window Center/Width to [0, 1] (PS3.3 C.11.2.1.2), or None when the file has no window."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center = _first_value(ds["WindowCenter"])
    width = _first_value(ds["WindowWidth"])
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    arr = arr.astype(np.float64)
    if function == "SIGMOID":
        if width <= 0:
            return None
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((arr - (center - width / 2.0)) / width, 0.0, 1.0)
    if width < 1:
        return None
    if width == 1:
        return (arr > center - 0.5).astype(np.float64)
    return np.clip((arr - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _jpeg_plugins_installed():
    """Whether pydicom's JPEG plugins (pylibjpeg with libjpeg, or GDCM) can be imported."""
    import importlib

    for names in (("pylibjpeg", "libjpeg"), ("gdcm",)):
        try:
            for name in names:
                importlib.import_module(name)
        except ImportError:
            continue
        return True
    return False


def _read_dicom(path):
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut
    from pydicom.pixels import apply_voi_lut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                ds = pydicom.dcmread(path, force=True)
            # A file meta header without (0002,0010), or no file meta at all: the encoding
            # pydicom found while parsing stands in for the missing Transfer Syntax UID.
            _fill_transfer_syntax(ds)
            if (
                "PixelData" not in ds
                and "FloatPixelData" not in ds
                and "DoubleFloatPixelData" not in ds
            ):
                raise ImageReadError("DICOM file without pixel data", path=path)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            size = (int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
            check_pixel_count(path, (*size, frames) if frames > 1 else size)
            arr = ds.pixel_array
    except ImageReadError:
        raise
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is not None and syntax.is_compressed:
            name = getattr(syntax, "name", None) or str(syntax)
            detail = lines[-1] if lines else type(e).__name__
            hint = f"; {_DICOM_DECODER_HINT}" if not _jpeg_plugins_installed() else ""
            raise ImageReadError(
                f"cannot decode the DICOM's {name} pixel data ({detail}){hint}", path=path
            ) from None
        reason = lines[0] if lines else type(e).__name__
        raise ImageReadError(f"unreadable DICOM ({reason})", path=path) from None
    except Exception as e:  # noqa: BLE001  (pydicom raises many types for broken files)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageReadError(f"unreadable DICOM ({reason})", path=path) from None

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples > 1 or photometric in ("RGB", "PALETTE COLOR") or photometric.startswith("YBR"):
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        bits = int(ds.get("BitsStored", 8) or 8)
        if photometric == "PALETTE COLOR":
            bits = int(arr.dtype.itemsize * 8)
        gray = _rgb_to_gray(arr) if arr.ndim == 3 else arr.astype(np.float32)
        return gray / float(2**bits - 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = apply_modality_lut(arr, ds)
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
            item = ds.VOILUTSequence[0]
            voi = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            descriptor = item.get("LUTDescriptor")
            lut_bits = int(descriptor[2]) if descriptor is not None else 16
            image = voi.astype(np.float64) / float(2**lut_bits - 1)
        else:
            image = _dicom_window(values, ds)
            if image is None:
                image = _minmax(values)
    image = np.clip(image, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)


def read_image_resized(path, image_size_hw, keep_aspect=True):
    """Read an image (as `read_image`) and resize it to `image_size_hw`.

    Args:
        path: an image file.
        image_size_hw: `(height, width)` of the result in pixels.
        keep_aspect: keep the aspect ratio and pad with zeros, centred (default True), as
            `common.augment.resize_keep_aspect`; False stretches to the size.

    Returns:
        np.ndarray float32 of shape image_size_hw, values in [0, 1].

    Raises:
        ImageReadError: as `read_image`.
    """
    import cv2

    image = read_image(path)
    out_h, out_w = (int(v) for v in image_size_hw)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"image_size_hw must be positive, got {tuple(image_size_hw)}")
    h, w = image.shape
    if not keep_aspect:
        return _cv2_resize(cv2, image, out_h, out_w)
    new_h, new_w = _fit_size(h, w, out_h, out_w)
    resized = _cv2_resize(cv2, image, new_h, new_w)
    out = np.zeros((out_h, out_w), dtype=np.float32)
    top = (out_h - new_h) // 2
    left = (out_w - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def _fit_size(h, w, out_h, out_w):
    scale = min(out_h / h, out_w / w)
    new_h = min(out_h, max(1, int(round(h * scale))))
    new_w = min(out_w, max(1, int(round(w * scale))))
    return new_h, new_w


def _cv2_resize(cv2, image, out_h, out_w):
    if image.shape == (out_h, out_w):
        return image.astype(np.float32)
    shrinking = out_h < image.shape[0] or out_w < image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), interpolation=interpolation).astype(np.float32)


def image_id(path):
    """A name for an image in reports and CSVs that never carries patient identity.

    Non-DICOM files are named by their file name. DICOM files are named `dcm-<12 hex>`, the start of
    the SHA-1 of their SOPInstanceUID (the file name when the UID is absent), because real DICOM file
    names and tags may hold a PatientName or PatientID.

    Args:
        path: an image file.

    Returns:
        str.
    """
    path = Path(path)
    if not is_dicom_file(path):
        return path.name
    uid = None
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True
            )
        uid = ds.get("SOPInstanceUID")
    except Exception:  # noqa: BLE001  (an unreadable header falls back to the file name)
        uid = None
    key = str(uid) if uid else path.name
    return "dcm-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def sniff_format(path):
    """The format of an image file from its first bytes: "png", "jpeg", "dicom" or "other".

    Args:
        path: an existing file.

    Returns:
        str.
    """
    path = Path(path)
    head = _head(path)
    if _is_dicom_head(path, head):
        return "dicom"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(_JPEG_SIGNATURE):
        return "jpeg"
    return "other"
