"""SPIDER as its public download is laid out, built by hand (not through the phantom writer).

Facts checked against public copies of the data set: `radiological_gradings.csv` has the header
`Patient,IVD label,Modic,UP endplate,LOW endplate,Spondylolisthesis,Disc herniation,Disc
narrowing,Disc bulging,Pfirrman grade`, plain LF lines, integer cells, non-contiguous patient ids
(1-257 for 218 patients) and two rows with `IVD label` 0; series are `<id>_t1.mha`, `<id>_t2.mha`,
`<id>_t2_SPACE.mha`, the 2-D TSE series stored LPS (sagittal slices on the last numpy axis) and
the 3-D T2 SPACE series stored PIR (slices on the first axis).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from common.errors import DataError
from spinenet.data import inspect_dataset
from spinenet.data import load_volumes
from spinenet.data import read_dataset
from tests.spinenet.conftest import GRADINGS_HEADER
from tests.spinenet.conftest import PIL_DIRECTION
from tests.spinenet.conftest import spine_arrays

ROWS = [
    "3,1,0,0,0,0,0,1,1,3",
    "3,2,2,1,1,0,0,1,1,4",
    "3,3,0,0,0,0,0,0,1,2",
    "107,0,0,0,0,0,0,0,0,1",
    "107,1,0,0,0,0,0,1,0,3",
    "107,2,2,1,1,1,1,1,0,5",
    "107,3,0,0,0,0,0,0,1,4",
]


def _write(path, array, spacing, orientation, oblique_deg=0.0):
    """Writes a PIL-ordered array stored as `orientation`, optionally tilted (oblique cosines)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetDirection(PIL_DIRECTION)
    image.SetOrigin((-20.0, 35.0, 110.0))
    image = sitk.DICOMOrient(image, orientation)
    if oblique_deg:
        t = np.deg2rad(oblique_deg)
        tilt = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
        image.SetDirection(tuple((tilt @ np.reshape(image.GetDirection(), (3, 3))).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def _spider(root, *, nested):
    """Patient 3: LPS-stored t1 and t2 (oblique); patient 107: PIR-stored t2_SPACE (0.9 mm)."""
    images = root / "images" / ("images" if nested else "")
    masks = root / "masks" / ("masks" if nested else "")
    image, mask, _ = spine_arrays(angle_deg=6.0)
    for sequence in ("t1", "t2"):
        _write(images / f"3_{sequence}.mha", image, (0.7, 0.7, 4.0), "LPS", oblique_deg=5.0)
        _write(masks / f"3_{sequence}.mha", mask, (0.7, 0.7, 4.0), "LPS", oblique_deg=5.0)
    space_image, space_mask, _ = spine_arrays(angle_deg=-4.0, n_slices=40)
    _write(images / "107_t2_SPACE.mha", space_image, (0.9, 0.9, 0.9), "PIR")
    _write(masks / "107_t2_SPACE.mha", space_mask, (0.9, 0.9, 0.9), "PIR")
    (root / "radiological_gradings.csv").write_text("\n".join([GRADINGS_HEADER, *ROWS]) + "\n")
    return root


def test_images_zip_unzipped_into_a_folder_of_its_name(tmp_path):
    root = _spider(tmp_path / "SPIDER", nested=True)
    tse = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "images/images/3_t2.mha")))
    space = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "images/images/107_t2_SPACE.mha")))
    assert tse.shape[-1] == 11 and space.shape[0] == 40  # slices on other axes, as stored
    with pytest.warns(UserWarning, match="IVD label 0"):
        records = read_dataset(tmp_path)
    volumes = load_volumes(records, dtype=np.float32)
    assert volumes.shape == (6, 112, 224, 9)
    assert np.isfinite(volumes).all() and (volumes[..., 4].mean(axis=(1, 2)) > 0.2).all()
    assert sorted(set(zip(records["patient"], records["sequence"]))) == [
        ("107", "t2_space"),
        ("3", "t2"),
    ]
    assert records["mask_path"].str.contains("/masks/masks/").all()
    with pytest.warns(UserWarning, match="IVD label 0"):
        assert inspect_dataset(root)["series"] == 3


def test_graded_patients_without_series_are_skipped(tmp_path):
    # The gradings file lists every public patient; a user may hold the images of a few.
    root = _spider(tmp_path / "SPIDER", nested=False)
    extra = ["205,1,2,0,0,0,0,0,1,3", "205,2,2,0,0,0,0,0,0,2", "257,1,2,1,1,0,0,0,1,4"]
    (root / "radiological_gradings.csv").write_text(
        "\n".join([GRADINGS_HEADER, *ROWS, *extra]) + "\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_dataset(root)
    assert set(records["patient"]) == {"3", "107"} and len(records) == 6
    messages = " ".join(str(w.message) for w in caught)
    assert "2 graded patient(s)" in messages and "205 (row 9)" in messages
    with pytest.warns(UserWarning, match="IVD label 0"):
        assert inspect_dataset(root)["patients"] == 4  # inspect reports the gradings file


def test_a_series_without_its_mask_falls_back_to_the_next(tmp_path):
    root = _spider(tmp_path / "SPIDER", nested=False)
    (root / "masks" / "3_t2.mha").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_dataset(root)
    assert set(records.loc[records["patient"] == "3", "sequence"]) == {"t1"}
    assert any("without a mask" in str(w.message) for w in caught)
    (root / "masks" / "3_t1.mha").unlink()
    with (
        pytest.raises(DataError, match=r"masks/3_t2\.mha: mask missing for 3_t2\.mha"),
        pytest.warns(UserWarning, match="IVD label 0"),
    ):
        read_dataset(root)
