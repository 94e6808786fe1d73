"""`inspect --verify`: decode every image file of a data set, in parallel, and count the broken ones.

The files checked are the images under the data folder (PNG, JPEG, DICOM as `common.image_io`
recognises them, and MetaImage `.mha` volumes), skipping hidden files and the phantoms' own
`_phantom_truth` folder. Each is decoded in a thread pool (the readers release the GIL in their C
decoders) with a progress bar on stderr (plain lines when stderr is not a terminal).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.errors import DataError
from common.image_io import IMAGE_SUFFIXES
from common.image_io import check_image_header
from common.image_io import check_metaimage_header
from common.image_io import list_images
from common.image_io import read_image
from common.image_io import read_metaimage
from common.options import VERIFY_DEFAULT_LIMIT

FIRST_PATHS = 5
# The keys `inspect` adds to each package's JSON (CONTRACT.md).
INSPECT_FILE_KEYS = frozenset(
    {"verified", "image_files", "unreadable", "unreadable_files", "missing", "missing_files"}
)
_IMAGE_NAMES = (*IMAGE_SUFFIXES, ".mha")
SKIPPED_FOLDERS = ("_phantom_truth",)


def dataset_image_files(data_dir):
    """The image files under `data_dir`: PNG, JPEG, DICOM and `.mha`, sorted.

    Args:
        data_dir: a data set folder.

    Returns:
        list of `pathlib.Path`.
    """
    data_dir = Path(data_dir)
    if data_dir.is_file():
        return [data_dir]
    found = []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in ("__MACOSX", *SKIPPED_FOLDERS)
        )
        for name in files:
            if not name.startswith(".") and name.lower().endswith(".mha"):
                found.append(Path(root) / name)
        # a folder named like an image (`1234.png/`) stands where a file should be
        found.extend(Path(root) / d for d in dirs if d.lower().endswith(_IMAGE_NAMES))
    found.extend(
        p
        for p in list_images(data_dir)
        if not set(p.relative_to(data_dir).parts) & set(SKIPPED_FOLDERS)
    )
    return sorted(set(found))


def _decode(path):
    """None when `path` decodes, else the one-line reason (the `DataError` text)."""
    try:
        if path.suffix.lower() == ".mha":
            read_metaimage(path)
        else:
            read_image(path)
    except DataError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001  (any failure to decode is an unreadable file)
        return f"{path}: {type(error).__name__}: {' '.join(str(error).split())[:200]}"
    return None


def _progress(total, stream):
    from tqdm import tqdm

    tty = hasattr(stream, "isatty") and stream.isatty()
    if tty:
        return tqdm(total=total, desc="verify", unit="file", file=stream)
    return _PlainProgress(total, stream)


class _PlainProgress:
    """A progress report in plain lines (about every 10%) for logs and pipes."""

    def __init__(self, total, stream):
        self.total, self.stream, self.done = total, stream, 0
        self.step = max(50, total // 10)
        self.next = self.step

    def update(self, count=1):
        self.done += count
        if self.done >= self.next or (self.done == self.total and self.total >= self.step):
            print(f"verify: {self.done}/{self.total} files", file=self.stream, flush=True)
            self.next = self.done + self.step

    def close(self):
        pass


def verify_files(paths, *, workers=None, stream=None):
    """Decodes every file in a thread pool; returns the `(path, reason)` of the unreadable ones.

    Args:
        paths: image files.
        workers: threads (default: the CPUs available, at most 8).
        stream: where the progress goes (default stderr).

    Returns:
        list of `(path, reason)` in the order of `paths`.
    """
    paths = [Path(p) for p in paths]
    stream = sys.stderr if stream is None else stream
    workers = workers or min(
        8,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )
    bar = _progress(len(paths), stream)
    failures = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for path, reason in zip(paths, pool.map(_decode, paths)):
                bar.update(1)
                if reason is not None:
                    failures.append((path, reason))
    finally:
        bar.close()
    return failures


def check_dataset_files(data_dir, *, verify=None, stream=None):
    """The `inspect` keys about the data set's files; decodes them all when `verify`.

    Without `verify`, every image file found is checked to exist and to be non-empty, and its
    header's claimed size to be within `common.image_io.max_image_pixels()`.

    Args:
        data_dir: the data folder.
        verify: decode every file (True), only check the files (False), or None: decode when
            there are fewer than `VERIFY_DEFAULT_LIMIT` files.
        stream: where progress goes (default stderr).

    Returns:
        dict: `verified` (bool), `image_files` (count), `unreadable` (count),
        `unreadable_files` (the first few `"path: reason"` lines).
    """
    files = dataset_image_files(data_dir)
    if verify is None:
        verify = len(files) < VERIFY_DEFAULT_LIMIT
    if verify:
        failures = verify_files(files, stream=stream)
    else:
        failures = []
        for path in files:
            try:
                if path.is_dir():
                    raise DataError("a folder in place of an image file", path=path)
                if path.stat().st_size == 0:
                    raise DataError("empty file", path=path)
                if path.suffix.lower() == ".mha":
                    check_metaimage_header(path)
                else:
                    check_image_header(path)
            except DataError as error:
                failures.append((path, str(error)))
            except OSError as error:
                failures.append((path, f"{path}: {error.strerror}"))
    unreadable = failures
    return {
        "verified": bool(verify),
        "image_files": len(files),
        "unreadable": len(unreadable),
        "unreadable_files": [reason for _, reason in unreadable[:FIRST_PATHS]],
    }


def missing_report(missing, *, line=False):
    """The `missing` keys of `inspect` from `common.errors.collect_missing_files`, or one line.

    Args:
        missing: the `(path, DataError)` pairs the readers recorded.
        line: return the one-line message (count, then the first error: label file, row,
            column and the absent file) instead of the dict.

    Returns:
        dict `{"missing": n, "missing_files": [first few paths]}`, or str.
    """
    if line:
        more = f"{len(missing)} listed image files are missing; the first: " if missing else ""
        return more + (str(missing[0][1]) if missing else "no listed file is missing")
    return {
        "missing": len(missing),
        "missing_files": [os.fspath(p) for p, _ in missing[:FIRST_PATHS]],
    }


def raise_for_unreadable(report):
    """Raises the one-line `DataError` for a `check_dataset_files` report with unreadable files.

    Args:
        report: the dict `check_dataset_files` returned.

    Raises:
        DataError: naming the first unreadable file and the count.
    """
    count = report["unreadable"]
    if count:
        more = f" (and {count - 1} more unreadable files)" if count > 1 else ""
        raise DataError(f"{report['unreadable_files'][0]}{more}")
