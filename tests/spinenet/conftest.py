"""Shared fixtures of the spinenet tests: a hand-written SPIDER sample and a small phantom set."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

# Direction cosines of an array stored (slice, row, column) = (toward left, inferior, posterior).
PIL_DIRECTION = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
GRADINGS_HEADER = (
    "Patient,IVD label,Modic,UP endplate,LOW endplate,Spondylolisthesis,Disc herniation,"
    "Disc narrowing,Disc bulging,Pfirrman grade"
)

# Bottom to top: (label or None, height mm, intensity). The block below disc 201 is the sacrum,
# unlabelled as in SPIDER (vertebrae are numbered from L5 = 1).
STACK = (
    (None, 24.0, 400.0),
    (201, 10.0, 900.0),
    (1, 24.0, 400.0),
    (202, 6.0, 500.0),
    (2, 24.0, 420.0),
    (203, 10.0, 800.0),
    (3, 24.0, 380.0),
)


def spine_arrays(*, n_slices=11, angle_deg=0.0, rows=200, cols=96, spacing=1.0, depth=34.0):
    """A hand-drawn spine: boxes for the stack above, tilted by `angle_deg`, same in every slice.

    Returns:
        `(image, mask, bottoms)`: int16 and uint8 arrays `(slices, rows, cols)` in PIL order, and
        the bottom (mm along the spine axis, from the stack centre) of each STACK element.
    """
    ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float64) * spacing
    cx, cy = (cols - 1) * spacing / 2, (rows - 1) * spacing / 2
    theta = np.deg2rad(angle_deg)
    u = np.array([np.cos(theta), np.sin(theta)])
    n = np.array([u[1], -u[0]])
    along = (xs - cx) * u[0] + (ys - cy) * u[1]
    up = (xs - cx) * n[0] + (ys - cy) * n[1]
    image = np.full((rows, cols), 60.0)
    mask = np.zeros((rows, cols), np.uint8)
    total = sum(h for _, h, _ in STACK)
    bottom = -total / 2
    bottoms = []
    for label, height, value in STACK:
        inside = (np.abs(along) <= depth / 2) & (up >= bottom) & (up < bottom + height)
        image[inside] = value
        if label is not None:
            mask[inside] = label
        bottoms.append(bottom)
        bottom += height
    image = np.repeat(image[None], n_slices, axis=0).astype(np.int16)
    mask = np.repeat(mask[None], n_slices, axis=0)
    return image, mask, bottoms


def write_series(path, array, *, spacing=(1.0, 1.0, 4.0), orientation=None):
    """Writes a PIL-ordered array as `.mha`, optionally reoriented (as real series are)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetDirection(PIL_DIRECTION)
    image.SetOrigin((-20.0, 35.0, 110.0))
    if orientation is not None:
        image = sitk.DICOMOrient(image, orientation)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mha")  # SimpleITK needs a lower-case suffix
    sitk.WriteImage(image, str(tmp), True)
    tmp.rename(path)


def write_spider_sample(root):
    """A small SPIDER download as a user has it: nested folder, odd name cases, junk files, BOM.

    Patient 1: `1_T2.MHA` (reoriented to LPS) and `1_t1.mha`; patient 7: only `7_t2_SPACE.mha`
    (2 mm slices). Discs 1-3 graded for both; patient 7's disc 2 has an empty Modic cell.

    Returns:
        The SPIDER folder (`root/SPIDER_v1`).
    """
    folder = root / "SPIDER_v1"
    image, mask, _ = spine_arrays(angle_deg=8.0)
    write_series(folder / "images" / "1_T2.MHA", image, orientation="LPS")
    write_series(folder / "masks" / "1_t2.mha", mask, orientation="LPS")
    write_series(folder / "images" / "1_t1.mha", (image // 2).astype(np.int16))
    write_series(folder / "masks" / "1_t1.mha", mask)
    thin_image, thin_mask, _ = spine_arrays(angle_deg=-5.0, n_slices=23)
    write_series(folder / "images" / "7_t2_SPACE.mha", thin_image, spacing=(1.0, 1.0, 2.0))
    write_series(folder / "masks" / "7_t2_SPACE.mha", thin_mask, spacing=(1.0, 1.0, 2.0))
    (folder / "images" / "._1_T2.MHA").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    (folder / "images" / "notes.txt").write_text("scanner export\n")
    lines = [
        GRADINGS_HEADER,
        "1,1,0,0,1,0,0,0,0,2",
        "1,2,2,1,0,0,1,1,1,4",
        "1,3,0,0,0,0,0,0,0,1",
        "7,1,3,0,0,0,0,0,0,3",
        "7,2,,1,1,0,0,1,0,5",
        "7,3,1,0,0,0,0,0,1,2",
    ]
    (folder / "radiological_gradings.csv").write_bytes(
        ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")
    )
    return folder


@pytest.fixture()
def spider_sample(tmp_path):
    """A fresh hand-written SPIDER sample (see `write_spider_sample`); returns its folder."""
    return write_spider_sample(tmp_path)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """A small phantom data set written once per session (3 subjects, one T2 SPACE)."""
    from spinenet.synthetic import write_phantom_dataset

    root = tmp_path_factory.mktemp("spinenet_phantoms")
    return write_phantom_dataset(
        root, num_subjects=3, seed=5, space_fraction=0.34, reoriented_fraction=0.5
    )
