"""Where a phantom data set keeps its lesion truth (`_phantom_truth/`), found from a data path.

Every package's `synthetic.py` writes, beside the data set's own layout, a folder
`_phantom_truth/` with `index.csv` (one row per drawn lesion) and the lesion masks. Real data sets
have no such folder; `evaluate` scores its explanation maps against the truth (issue 15.1) only
when `phantom_truth_root` finds one.
"""

from __future__ import annotations

from pathlib import Path

TRUTH_DIR = "_phantom_truth"
INDEX_CSV = "index.csv"


def phantom_truth_root(path, max_depth=2):
    """The data set folder that holds `_phantom_truth/index.csv`, or None.

    Args:
        path: the data path a user gave (the data set folder or a folder above it, as the
            packages' readers accept), or None.
        max_depth: how many folder levels below `path` are searched (the readers search two).

    Returns:
        `Path` of the folder whose `_phantom_truth/index.csv` exists (breadth first, `path`
        itself first), or None when `path` is None, not a folder, or holds no phantom truth.
    """
    if path is None:
        return None
    root = Path(path)
    if not root.is_dir():
        return None
    queue = [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        if (folder / TRUTH_DIR / INDEX_CSV).is_file():
            return folder
        if depth < int(max_depth):
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                continue
            queue.extend(
                (child, depth + 1)
                for child in children
                if child.name != TRUTH_DIR and not child.name.startswith(".")
            )
    return None
