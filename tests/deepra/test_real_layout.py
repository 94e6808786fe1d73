"""The readers against variations of the real files, each built by hand as a user's copy looks.

labelImg (tzutalin/labelImg, issues #198, #342, #376, #395) ignores the EXIF orientation: its
`<size>` and boxes are in the stored pixel frame. Older labelImg wrote `<filename>` without the
extension (`libs/labelFile.py`: `imgFileNameWithoutExt`), and "Change Save Dir" puts the XML in
another folder than the film, `<folder>` naming the film's folder and `<path>` the annotator's
absolute path.
"""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common.errors import DataError
from deepra import columns
from deepra import data

W, H = 120, 160  # stored width and height of every film


def _film(path, *, orientation=None, rgb=False):
    pixels = np.random.default_rng(len(path.name)).uniform(0, 255, size=(H, W)).astype(np.uint8)
    image = Image.fromarray(pixels, "L").convert("RGB" if rgb else "L")
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, "JPEG", quality=90, **kwargs)


def _scores(pid):
    row = {"Patient_ID": pid, **{c: 0 for c in columns.SCORE_COLUMNS}}
    row["LF_mtp_E__ip"] = row["Overall_erosion"] = row["Overall_Tol"] = 7
    return row


@pytest.fixture
def root(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    for pid in ("UAB001", "UAB002"):
        for limb in columns.LIMBS:
            _film(train / f"{pid}-{limb}.jpg", orientation=6 if limb == "LF" else None)
    pd.DataFrame([_scores("UAB001"), _scores("UAB002")]).to_csv(train / "training.csv", index=False)
    return tmp_path


def _labelimg_xml(filename, folder, path, size_wh, objects, depth=3):
    """The text labelImg writes: tabs, no XML declaration, `verified`, float-free ints."""
    lines = [
        '<annotation verified="yes">',
        f"\t<folder>{folder}</folder>",
        f"\t<filename>{filename}</filename>",
        f"\t<path>{path}</path>",
        "\t<source>",
        "\t\t<database>Unknown</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{size_wh[0]}</width>",
        f"\t\t<height>{size_wh[1]}</height>",
        f"\t\t<depth>{depth}</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for name, x0, y0, x1, y1, difficult in objects:
        lines += [
            "\t<object>",
            f"\t\t<name>{name}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            f"\t\t<difficult>{difficult}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x0}</xmin>",
            f"\t\t\t<ymin>{y0}</ymin>",
            f"\t\t\t<xmax>{x1}</xmax>",
            f"\t\t\t<ymax>{y1}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    return "\n".join(lines + ["</annotation>", ""])


def test_labelimg_xml_in_another_folder_without_extension(root):
    # "Change Save Dir": <root>/annotations/, <filename> without extension (older labelImg),
    # <path> from the annotator's Windows machine, float coordinates, a difficult box, odd case
    annotations = root / "annotations"
    annotations.mkdir()
    xml = _labelimg_xml(
        "UAB001-LH",
        "train",
        r"C:\Users\rheum\RA2\train\UAB001-LH.jpg",
        (W, H),
        [(" Fin_1 ", 10.5, 20, 40.25, 90, 0), ("THUMB", 60, 80, 110, 150, 1)],
    )
    (annotations / "UAB001-LH.xml").write_text(xml)
    boxes = data.read_boxes(annotations)
    assert boxes["image"].tolist() == [str(root / "train" / "UAB001-LH.jpg")] * 2
    assert boxes["label"].tolist() == ["finger1", "thumb"]
    assert boxes[["xmin", "xmax"]].iloc[0].tolist() == [10.5, 40.25]
    # an XML named otherwise than its film, beside it, with an extension-less <filename>
    (root / "train" / "boxes_01.xml").write_text(
        _labelimg_xml(
            "UAB002-RH", "train", "/home/x/UAB002-RH.jpg", (W, H), [("wrist", 1, 1, 9, 9, 0)]
        )
    )
    assert data.read_voc(root / "train" / "boxes_01.xml")["image"].iloc[0].endswith("UAB002-RH.jpg")


def test_labelimg_boxes_on_an_exif_rotated_film(root):
    # UAB001-LF.jpg is stored 120 wide x 160 high with orientation 6 (upright: 160 x 120);
    # labelImg shows the stored pixels, so <size> and the boxes are in the stored frame
    film = root / "train" / "UAB001-LF.jpg"
    path = root / "train" / "UAB001-LF.xml"
    path.write_text(
        _labelimg_xml(film.name, "train", film, (W, H), [("fin_ip", 10, 20, 40, 150, 0)], depth=1)
    )
    box = data.read_voc(path).iloc[0]
    # orientation 6 turns the film 90 degrees clockwise: x' = H - y, y' = x
    assert (box["label"], box["xmin"], box["ymin"], box["xmax"], box["ymax"]) == (
        "toe",
        H - 150,
        10,
        H - 20,
        40,
    )
    # the same boxes given in the upright frame (<size> upright) are taken as they are
    path.write_text(_labelimg_xml(film.name, "train", film, (H, W), [("toe", 10, 20, 150, 40, 0)]))
    assert data.read_voc(path)[["xmin", "ymin", "xmax", "ymax"]].iloc[0].tolist() == [
        10,
        20,
        150,
        40,
    ]


def test_xml_size_of_a_resized_copy_scales_and_a_wrong_size_is_an_error(root):
    film = root / "train" / "UAB001-LH.jpg"
    path = root / "train" / "UAB001-LH.xml"
    # annotated on a copy twice the size (same aspect): boxes scale to the film on disk
    path.write_text(
        _labelimg_xml(film.name, "train", film, (2 * W, 2 * H), [("wrist", 20, 40, 200, 300, 0)])
    )
    assert data.read_voc(path)[["xmin", "ymin", "xmax", "ymax"]].iloc[0].tolist() == [
        10,
        20,
        100,
        150,
    ]
    path.write_text(
        _labelimg_xml(film.name, "train", film, (500, 300), [("wrist", 20, 40, 100, 100, 0)])
    )
    with pytest.raises(DataError) as info:
        data.read_voc(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "column 'size'" in message and "120x160" in message


def test_voc_xml_in_latin1(root):
    film = root / "train" / "UAB001-RH.jpg"
    text = _labelimg_xml(
        film.name, "train", "C:\\Données\\UAB001-RH.jpg", (W, H), [("wrist", 1, 1, 9, 9, 0)]
    )
    text = '<?xml version="1.0" encoding="ISO-8859-1"?>\n' + text
    (root / "train" / "UAB001-RH.xml").write_bytes(text.encode("latin-1"))
    assert data.read_voc(root / "train" / "UAB001-RH.xml")["label"].tolist() == ["wrist"]


def test_box_csv_with_other_extension_case(root):
    (root / "train" / "UAB002-LF.jpg").rename(root / "train" / "UAB002-LF.JPG")
    path = root / "boxes.csv"
    path.write_text("train/UAB002-LF.jpg,5,6,50,60,toe\ntrain/UAB002-LH.JPEG,1,1,9,9,Wrist\n")
    boxes = data.read_box_csv(path)
    assert boxes["image"].tolist() == [
        str(root / "train" / "UAB002-LF.JPG"),
        str(root / "train" / "UAB002-LH.jpg"),
    ]
    assert boxes["label"].tolist() == ["toe", "wrist"]


def test_training_csv_in_windows_1252_with_ragged_trailing_fields(root):
    # saved from Excel on Windows: cp1252 text in an extra column, CRLF, a trailing comma on
    # some rows and a row whose trailing empty field is left out
    rows = [_scores("UAB001"), _scores("UAB002")]
    header = ["Patient_ID", *columns.SCORE_COLUMNS, "Comment"]
    lines = [",".join(header)]
    lines.append(",".join(str(rows[0].get(c, "revu par Dr Müller")) for c in header) + ",")
    lines.append(",".join(str(rows[1][c]) for c in header[:-1]))
    path = root / "train" / "training.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))
    records = data.read_records(root)
    assert len(records) == 8 and records["LF_mtp_E__ip"].tolist() == [7.0] * 8
    # a row with a field too many that is not blank is still an error naming the row
    lines[2] = lines[2] + ",,x"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))
    with pytest.raises(DataError, match=r"training\.csv: row 3: .*fields"):
        data.read_records(root)
