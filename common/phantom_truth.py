"""The lesion truth the phantoms write, read back for `evaluate`'s `localisation` block (issue 15.1).

Every `PKG/synthetic.py` writes, outside the real layout, `ROOT/_phantom_truth/index.csv` (one row
per lesion region: `image` relative to ROOT, `kind`, `mask` relative to ROOT, and package columns
such as kneeoa's `side`) and the binary masks (image size, 255 inside). A real data set has no such
folder, so `find_truth_root` returns None there and `evaluate` writes no `localisation` block.

Also here, because every package needs them for the block: the `untrained` control's network
(`untrained_copy`: the same architecture with fresh weights), the cap on the number of scored
images (`scored_subset`) and the report's panels (`localisation_panels`: the model's map beside
the untrained network's and the centre prior, over the image with the lesion outlined).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd

from common import reports
from common.image_io import read_image
from common.localisation import center_prior_maps
from common.localisation import localisation_block

TRUTH_DIR = "_phantom_truth"
INDEX_FILE = "index.csv"
INDEX_CSV = INDEX_FILE
# At most this many images are scored per evaluate: the untrained network's maps double the cost
# of the maps, and 64 images give bootstrap intervals of a few hundredths on the energy share.
MAX_SCORED = 64
# Bounds the walk up from an image to the data set's root (MURA: root/MURA-v1.1/valid/XR_*/
# patient/study/image.png is five folders deep).
MAX_LEVELS_UP = 6


def find_truth_root(paths, max_levels_up=MAX_LEVELS_UP):
    """The folder that holds `_phantom_truth/index.csv` above the first of `paths`, or None.

    Args:
        paths: image paths of the evaluated split (the first one is enough: one data set).
        max_levels_up: how many parent folders to try.

    Returns:
        `Path` of the phantom root (the `image` and `mask` columns are relative to it), or None
        on a data set without phantom truth (a real one).
    """
    paths = list(paths)
    if not paths:
        return None
    folder = Path(paths[0]).resolve().parent
    for _ in range(max_levels_up + 1):
        if (folder / TRUTH_DIR / INDEX_FILE).is_file():
            return folder
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def read_truth_index(root):
    """`ROOT/_phantom_truth/index.csv` as a DataFrame (with `image_key`: the image's resolved
    path, to match records whose paths are written another way)."""
    index = pd.read_csv(Path(root) / TRUTH_DIR / INDEX_FILE)
    index["image_key"] = [_key(Path(root) / p) for p in index["image"]]
    return index


def _key(path):
    return str(Path(path).resolve())


def read_mask(root, rel_mask, *, size_hw=None, crop="full"):
    """One truth mask as bool `(H, W)`.

    Args:
        root: the phantom root.
        rel_mask: the index's `mask` (relative to root).
        size_hw: resize (nearest neighbour) to this size, e.g. the model's input: the pipelines
            stretch the whole image to the input, so the mask stretched the same way stays on
            the lesion, and masks of images of different sizes stack into one array.
        crop: cut it like `kneeoa.data.load_knee` cuts a bilateral film (`left_half`,
            `right_half`) so that mask and knee stay aligned; `full` (default) keeps it whole.
    """
    mask = read_image(Path(root) / rel_mask) > 0.5
    width = mask.shape[1]
    if crop == "left_half":
        mask = mask[:, : width // 2]
    elif crop == "right_half":
        mask = mask[:, width - width // 2 :]
    elif crop not in (None, "full"):
        raise ValueError(f"Unknown crop '{crop}'. Available: ['full', 'left_half', 'right_half']")
    if size_hw is not None and tuple(mask.shape) != tuple(size_hw):
        height, width = (int(v) for v in size_hw)
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(mask > 0)


def match_truth(image_paths, kind, *, root=None, sides=None):
    """For each image, the row of its `kind` lesion in the truth index (or none).

    Args:
        image_paths: the evaluated images (any spelling of the path).
        kind: the index's `kind` to match (`joint_space`, `carpals`, ...), or None for any kind
            (MURA writes one lesion per image).
        root: the phantom root (default: `find_truth_root(image_paths)`).
        sides: optional side per image (kneeoa: a bilateral film holds two knees, one row each).

    Returns:
        `(root, positions, rows)`: the root (None without truth), the positions in `image_paths`
        that have a lesion row, and those rows (a DataFrame in the same order).
    """
    image_paths = list(image_paths)
    root = root or find_truth_root(image_paths)
    if root is None:
        return None, np.zeros(0, np.int64), pd.DataFrame()
    index = read_truth_index(root)
    if kind is not None:
        index = index[index["kind"] == kind]
    use_side = sides is not None and "side" in index
    lookup = {}
    for row in index.itertuples(index=False):
        key = (row.image_key, str(row.side)) if use_side else row.image_key
        lookup.setdefault(key, row)
    positions, rows = [], []
    for i, path in enumerate(image_paths):
        key = (_key(path), str(sides[i])) if use_side else _key(path)
        if key in lookup:
            positions.append(i)
            rows.append(lookup[key])
    return root, np.asarray(positions, np.int64), pd.DataFrame(rows, columns=index.columns)


def scored_subset(count, limit=MAX_SCORED):
    """Positions of at most `limit` of `count` items, evenly spread (deterministic, sorted)."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, num=limit).round().astype(np.int64))


def untrained_copy(model, seed=0):
    """The `untrained` control: `model`'s architecture (same config) with fresh initial weights.

    Built by `keras.models.clone_model` after `keras.utils.set_random_seed(seed)`, so the control
    is reproducible; BatchNormalization starts from its initial statistics (mean 0, variance 1).
    Note that this reseeds Python's, NumPy's and the backend's global generators.

    Args:
        model: a built model (trained or reloaded).
        seed: the fresh weights' seed.

    Returns:
        A new `keras.Model` with the same layers' names and configs and untrained weights.
    """
    keras.utils.set_random_seed(int(seed))
    return keras.models.clone_model(model)


def localisation_panels(images, masks, model_maps, untrained_maps, *, captions, count=3):
    """`(png, caption)` panels for `HTMLReport.add_localisation`: per image, the model's map, the
    untrained network's and the centre prior (leave one out) side by side, lesion outlined.

    Args:
        images: the scored images `(H, W)` or `(H, W, C)` in [0, 1], as the model read them.
        masks: their lesion masks, bool `(N, H, W)` on the images' grid.
        model_maps: the model's maps (any grid; drawn resized to the image).
        untrained_maps: the untrained network's maps.
        captions: one identifier-free caption per image.
        count: panels to draw (the first `count`, spread over the scored images).

    Returns:
        list of `(png_bytes, caption)`.
    """
    if len(masks) < 2:
        return []
    priors = center_prior_maps(masks)
    items = []
    for i in scored_subset(len(masks), count):
        image = np.asarray(images[i], np.float32)
        if image.ndim == 3:
            image = image.mean(axis=-1)
        low, high = float(image.min()), float(image.max())
        image = (image - low) / max(high - low, 1e-6)  # a normalised input back to [0, 1]
        heat = {
            "model": np.maximum(np.asarray(model_maps[i], np.float32), 0),
            "untrained": np.maximum(np.asarray(untrained_maps[i], np.float32), 0),
            "centre prior": priors[i],
        }
        png = reports.localisation_panel_png(image, heat, mask=masks[i], title=captions[i])
        items.append((png, captions[i]))
    return items


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


def score_and_draw(scored, captions, *, unit, group_column="patient_id", **details):
    """The `localisation` block and report panels of one package's scored maps.

    Args:
        scored: the package's `localisation_inputs` result: `maps`, `untrained`, `masks`,
            `images` and `records` (the scored rows).
        captions: one identifier-free caption per scored row.
        unit: what one score is about (`knee`, `image`).
        group_column: the records' column the bootstrap resamples whole (patients); None, or a
            column the records lack, resamples rows.
        **details: keys added to the block (`lesion`, `branch`, `untrained_seed`).

    Returns:
        `(block, panels)`.
    """
    records = scored["records"]
    groups = None
    if group_column is not None and group_column in records:
        groups = records[group_column].astype(str).to_numpy()
    block = localisation_block(
        scored["maps"],
        scored["masks"],
        untrained_maps=scored["untrained"],
        groups=groups,
        unit=unit,
    )
    block.update(details)
    panels = localisation_panels(
        scored["images"], scored["masks"], scored["maps"], scored["untrained"], captions=captions
    )
    return block, panels
