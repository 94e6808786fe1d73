"""Reads the first worksheet of an `.xlsx` file as rows of text, with the standard library only.

The RSNA 2017 official test set publishes its labels only as `Bone age ground truth.xlsx`
(`Case ID`, `Sex`, `Ground truth bone age (months)`). openpyxl is not a dependency of the suite,
and an Office Open XML workbook is a zip of XML parts, so this reads the cells directly: shared
strings, inline strings, numbers and booleans, by their cell references (empty cells are skipped
in the file, so positions come from `r="C7"`, not from order). Namespaces are ignored, so both
transitional and strict workbooks read.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from xml.etree import ElementTree

from common.errors import DataError

_CELL_REF = re.compile(r"([A-Za-z]+)(\d*)")


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _children(element, name):
    return [child for child in element if _local(child.tag) == name]


def _text_of(element):
    """All `<t>` text under `element` (rich-text runs joined), skipping phonetic `<rPh>` runs."""
    parts = []
    for child in element:
        name = _local(child.tag)
        if name == "t":
            parts.append(child.text or "")
        elif name in ("r", "is"):
            parts.append(_text_of(child))
    return "".join(parts)


def _column_index(letters):
    index = 0
    for char in letters.upper():
        index = index * 26 + ord(char) - ord("A") + 1
    return index - 1


def _first_sheet_name(archive):
    """The part name of the workbook's first sheet (`xl/worksheets/sheet1.xml` when unsure)."""
    try:
        workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    except KeyError:
        return "xl/worksheets/sheet1.xml"
    sheets = [s for e in workbook if _local(e.tag) == "sheets" for s in e]
    if not sheets:
        return "xl/worksheets/sheet1.xml"
    rel_id = next((v for k, v in sheets[0].attrib.items() if _local(k) == "id"), None)
    for rel in rels:
        if rel.get("Id") == rel_id:
            target = rel.get("Target", "")
            if target.startswith("/"):
                return target.lstrip("/")
            return posixpath.normpath(posixpath.join("xl", target))
    return "xl/worksheets/sheet1.xml"


def _format_number(text):
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def read_xlsx_rows(path):
    """The first worksheet's rows as `(row_number, [cell text, ...])`, 1-based like Excel.

    Args:
        path: an `.xlsx` file.

    Returns:
        A list of `(row_number, cells)` for every row that has a cell; `cells` are strings
        (numbers as written, integers without `.0`, booleans as `TRUE`/`FALSE`, "" for gaps).

    Raises:
        DataError: the file is missing, not a zip, or has no readable worksheet (named).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            shared = []
            if "xl/sharedStrings.xml" in names:
                root = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
                shared = [_text_of(si) for si in root if _local(si.tag) == "si"]
            sheet = _first_sheet_name(archive)
            if sheet not in names:
                raise DataError(f"no worksheet '{sheet}' in the workbook", path=path)
            root = ElementTree.fromstring(archive.read(sheet))
    except FileNotFoundError:
        raise DataError("label file not found", path=path) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as error:
        raise DataError(f"not a readable .xlsx workbook ({error})", path=path) from None
    except ElementTree.ParseError as error:
        raise DataError(f"corrupt .xlsx workbook ({error})", path=path) from None

    rows = []
    data = next((e for e in root if _local(e.tag) == "sheetData"), None)
    for position, row in enumerate(_children(data, "row") if data is not None else [], start=1):
        row_number = int(row.get("r", position))
        cells = {}
        for cell in _children(row, "c"):
            match = _CELL_REF.fullmatch(cell.get("r", ""))
            col = _column_index(match.group(1)) if match else max(cells, default=-1) + 1
            kind = cell.get("t", "n")
            value = next((e.text or "" for e in cell if _local(e.tag) == "v"), "")
            if kind == "s":
                try:
                    value = shared[int(value)]
                except (ValueError, IndexError):
                    raise DataError(
                        f"cell {cell.get('r', '?')} points to a missing shared string",
                        path=path,
                        row=row_number,
                    ) from None
            elif kind == "inlineStr":
                value = "".join(_text_of(e) for e in cell if _local(e.tag) == "is")
            elif kind == "b":
                value = "TRUE" if value.strip() == "1" else "FALSE"
            elif kind == "n":
                value = _format_number(value)
            cells[col] = value
        if cells:
            width = max(cells) + 1
            rows.append((row_number, [cells.get(i, "") for i in range(width)]))
    return rows
