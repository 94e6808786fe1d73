"""Shared pieces of every package's `predict` and `evaluate`: inputs, metric tables with intervals."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import DataError
from common.image_io import is_image_file
from common.image_io import list_images
from common.metrics import bootstrap_ci


def collect_image_paths(inputs):
    """Image files named on the command line: files as given, folders searched recursively.

    macOS `._*` files and other non-images inside folders are skipped; a named file that is not an
    image, a missing path, or a folder without images is a `DataError` naming it.
    """
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path, recursive=True)
            if not found:
                raise DataError("no image files (PNG, JPEG or DICOM) in this folder", path=path)
            paths.extend(found)
        elif path.is_file():
            if not is_image_file(path):
                raise DataError("not an image file (PNG, JPEG or DICOM)", path=path)
            paths.append(path)
        else:
            raise DataError("no such file or folder", path=path)
    if not paths:
        raise DataError("no input images")
    return paths


def metrics_with_ci(metric_fns, *arrays, groups=None, n_boot=1000, seed=0):
    """Point values and seeded 95% bootstrap intervals of several metrics on the same rows.

    Args:
        metric_fns: dict name -> `fn(*arrays) -> float`.
        *arrays: the per-row arrays every metric takes (e.g. `y_true, y_pred`).
        groups: optional per-row group ids (patients): resampled whole.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        `(values, ci)`: dict name -> float, and dict name -> `[low, high]`.
    """
    values, ci = {}, {}
    for name, fn in metric_fns.items():
        try:
            values[name] = float(fn(*arrays))
        except ValueError:
            values[name] = float("nan")
        low, high = bootstrap_ci(fn, *arrays, n_boot=n_boot, seed=seed, groups=groups)
        ci[name] = [float(low), float(high)]
    return values, ci


def output_path(out_dir, name):
    """`out_dir/name`, creating `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(os.fspath(out_dir), name)


def compiled_forward(model):
    """The model's inference pass as one compiled `tf.function` (issue 19.2), for `evaluate`,
    `predict` and `--explain` loops that feed batches one by one.

    Calling a Keras model eagerly runs every layer op by op from Python; the compiled pass is
    traced once per input signature (`reduce_retracing`: the short last batch does not trace
    again) and keeps the weights' current values (it reads the variables, it does not copy
    them).

    Args:
        model: a Keras model (or any callable `model(inputs, training=False)`).

    Returns:
        `fn(inputs)` with the model's outputs (tensors, as the model returns them).
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(inputs):
        return model(inputs, training=False)

    return forward
