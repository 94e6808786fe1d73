"""Tiny untrained models and one phantom input per package, for the export and serving tests.

Each entry builds the package's model at a small size, saves it as a run's `model.keras` with a
`config.json` beside it, writes one raw input the package's `predict` reads (a phantom film, or a
disc volume `.npy` for spinenet), and names the outputs to compare.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from common.export import save_all

PACKAGES = ("kneeoa", "mura", "boneage", "spinenet", "deepra")


def _film(path, height, width, seed, bits=8):
    """A phantom-like film: a bright blob on a gradient, with noise (PNG, 8 or 16 bits)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = np.exp(
        -(((yy - height * 0.4) / (height / 5)) ** 2 + ((xx - width * 0.6) / (width / 6)) ** 2)
    )
    image = np.clip(
        0.2 + 0.3 * yy / height + 0.5 * blob + rng.normal(0, 0.05, (height, width)), 0, 1
    )
    scale = 255 if bits == 8 else 65535
    cv2.imwrite(
        os.fspath(path), np.round(image * scale).astype(np.uint8 if bits == 8 else np.uint16)
    )
    return path


_BUILT = {}


def build_all(root):
    """`build` for every package, once per test process (both serving test modules share them)."""
    if root not in _BUILT:
        _BUILT[root] = {name: build(name, os.path.join(root, name)) for name in PACKAGES}
    return _BUILT[root]


def build(package_name, folder):
    """Builds, saves and describes one package's tiny model.

    Returns:
        dict: `model` (the `.keras` path), `input` (the raw input file), `extras` (form fields),
        `network` (the loaded model).
    """
    import importlib

    import keras

    package = importlib.import_module(package_name)
    os.makedirs(folder, exist_ok=True)
    keras.utils.set_random_seed(0)  # the same tiny weights in every run
    extras = {}
    config = {"preset": "demo", "seed": 0}
    if package_name == "kneeoa":
        model = package.build_model("demo", image_size_hw=(48, 32), trunk_filters=(4, 4, 4, 4))
        # a phantom knee film (the viewer's screenshot shows it), renamed: 8-bit PNG, 224 x 224
        data = package.write_phantom_dataset(
            os.path.join(folder, "data"), num_subjects=2, seed=0, layout="folders"
        )
        films = sorted(p for p in Path(data).rglob("*.png") if "_phantom" not in str(p))
        source = os.path.join(folder, "knee.png")
        shutil.copyfile(films[0], source)
        config.update(image_size_hw=[48, 32], histogram_equalization=True)
    elif package_name == "mura":
        model = package.build_model(
            "demo", input_shape=(48, 48, 3), blocks=(1, 1, 1), growth_rate=4
        )
        source = _film(os.path.join(folder, "image1.png"), 80, 64, 1)
    elif package_name == "boneage":
        model = package.build_model("demo", image_size_hw=(80, 80))
        source = _film(os.path.join(folder, "hand.png"), 100, 80, 2)
        extras = {"sex": "M"}
    elif package_name == "spinenet":
        model = package.build_model(
            "demo", input_shape=(56, 112, 9), conv_filters=(4, 4, 4, 4, 4), fc_units=(8, 8)
        )
        rng = np.random.default_rng(3)
        source = os.path.join(folder, "volumes.npy")
        np.save(source, rng.uniform(0, 1, (2, 56, 112, 9)).astype(np.float32))
    elif package_name == "deepra":
        model = package.build_model("demo", image_size_hw=(32, 32))
        source = _film(os.path.join(folder, "crop.png"), 50, 44, 4)
    else:
        raise ValueError(package_name)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config, handle)
    save_all(model, folder)
    return {
        "model": os.path.join(folder, "model.keras"),
        "input": source,
        "extras": extras,
        "network": model,
    }
