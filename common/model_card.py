"""Model cards: what a trained model is, what it takes, what it was trained on and how well it did.

Every run writes `RUN/model_card.json` and `RUN/model_card.md` (`write_run_card`), and the card is
also stored inside the run's `.keras` files as a `model_card.json` entry of the archive, read back
by `read_embedded_card` (Keras ignores the extra entry when loading). Served models return it at
`GET /metadata`.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import zipfile
from pathlib import Path

from common.fileio import atomic_write_bytes

CARD_ENTRY = "model_card.json"
INTENDED_USE = "research use only; not a medical device"

# The headline keys of each package's metrics.json (CONTRACT.md), shown first in the card.
HEADLINE_METRICS = {
    "kneeoa": ("accuracy", "kappa_quadratic", "kappa_linear", "mae_kl"),
    "deepra": ("weighted_rmse_narrowing", "weighted_rmse_erosion", "weighted_mae_overall"),
    "spinenet": ("mean_per_class_accuracy", "per_class_accuracy"),
    "boneage": ("mae_months", "baseline_mae_months", "mae_months_by_sex"),
    "mura": ("study_kappa", "study_auroc", "study_sensitivity", "study_specificity"),
}
LIMITATIONS = [
    "Trained and evaluated on the data set named under training_data; figures on phantoms say "
    "nothing about real films.",
    "Not validated for clinical use, for other scanners, populations or acquisition protocols, "
    "or for images unlike the training films.",
    "The answer of a single model: no calibration to a local population was done.",
]


def suite_version():
    """The suite's version: installed metadata, else `setup.cfg`, else 'unknown'."""
    try:
        from importlib.metadata import version

        return version("msk-radiology-suite")
    except Exception:
        pass
    setup = Path(__file__).resolve().parent.parent / "setup.cfg"
    if setup.is_file():
        for line in setup.read_text().splitlines():
            if line.replace(" ", "").startswith("version="):
                return line.split("=", 1)[1].strip()
    return "unknown"


def git_commit():
    """The suite's git commit (with `-dirty` when the tree differs), or None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions():
    """TensorFlow, Keras, keras-hub, NumPy and Python versions."""
    import platform

    import keras
    import numpy as np
    import tensorflow as tf

    try:
        import keras_hub

        hub = keras_hub.__version__
    except ImportError:  # pragma: no cover - a dependency of the suite
        hub = None
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": hub,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _read_json(path):
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _is_phantom(data_dir):
    if not data_dir or not os.path.isdir(data_dir):
        return None
    for folder, dirs, _ in os.walk(data_dir):
        if "_phantom_truth" in dirs:
            return True
        if folder.count(os.sep) - os.fspath(data_dir).count(os.sep) >= 2:
            dirs[:] = []
    return False


def headline_metrics(package_name, metrics):
    """The package's headline metrics with their 95% intervals, and the phantom oracle's if any."""
    ci = metrics.get("ci", {})
    out = {}
    for key in HEADLINE_METRICS.get(package_name, ()):
        if key in metrics:
            out[key] = {"value": metrics[key], "ci95": ci.get(key)}
    if "oracle" in metrics:
        out["oracle"] = metrics["oracle"]
    return out


def _input_shapes(model):
    shapes = {}
    for tensor in getattr(model, "inputs", None) or []:
        name = tensor.name.split(":")[0]
        shapes[name] = {
            "shape": [None if d is None else int(d) for d in tensor.shape],
            "dtype": str(tensor.dtype),
        }
    return shapes


def build_card(package, run_dir=None, model=None, *, inspect_summary=True):
    """The model card of a run (or of a bare model file) as a dict.

    Args:
        package: the package module (`kneeoa`, ...); its `serving` module gives the input spec.
        run_dir: the run folder (`config.json`, `metrics.json` are read when present).
        model: the trained network (its input shapes are recorded).
        inspect_summary: run the package's `inspect_dataset` on the training data (when present).

    Returns:
        A JSON-able dict.
    """
    import importlib

    name = package.__name__
    serving = importlib.import_module(f"{name}.serving")
    config = _read_json(Path(run_dir) / "config.json") if run_dir else {}
    metrics = _read_json(Path(run_dir) / "metrics.json") if run_dir else {}
    data_dir = config.get("data_dir")
    summary = None
    if inspect_summary and data_dir and os.path.isdir(data_dir):
        try:
            summary = package.inspect_dataset(data_dir)
        except Exception as exc:  # the card records what went wrong rather than failing a run
            summary = {"error": " ".join(str(exc).split())[:300]}
    doc = (package.__doc__ or "").strip().splitlines()
    phantom = _is_phantom(data_dir)
    return {
        "package": name,
        "suite_version": suite_version(),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "paper": doc[0] if doc else name,
        "preset": config.get("preset"),
        "task": serving.TASK,
        "input_spec": {
            **serving.INPUT_SPEC,
            "served_inputs": {
                "image": "(B, H, W, 1) uint8, uint16 or float32 in [0, 1]; any H, W",
                **{k: "(B, 1) float32" for k in serving.EXTRA_INPUTS},
            },
            "network_inputs": _input_shapes(model) if model is not None else None,
        },
        "training_data": {
            "path": data_dir,
            "kind": None if phantom is None else ("phantom" if phantom else "real"),
            "inspect": summary,
            "split_sizes": config.get("split_counts") or config.get("split_sizes"),
        },
        "metrics": headline_metrics(name, metrics),
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def card_markdown(card):
    """The card as Markdown (`RUN/model_card.md`)."""

    def value(v):
        return json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)

    lines = [f"# Model card: {card['package']}", ""]
    lines += [f"**Intended use:** {card['intended_use']}.", ""]
    lines += ["## Model", ""]
    for key in ("paper", "preset", "task", "suite_version", "git_commit", "date"):
        lines.append(f"- {key}: {value(card.get(key))}")
    for key, v in card["versions"].items():
        lines.append(f"- {key}: {v}")
    lines += ["", "## Input", ""]
    for key, v in card["input_spec"].items():
        lines.append(f"- {key}: {value(v)}")
    lines += ["", "## Training data", ""]
    for key, v in card["training_data"].items():
        lines.append(f"- {key}: {value(v)}")
    lines += ["", "## Metrics (test split, 95% bootstrap intervals)", ""]
    if not card["metrics"]:
        lines.append("- none recorded")
    for key, v in card["metrics"].items():
        lines.append(f"- {key}: {value(v)}")
    lines += ["", "## Limitations", ""]
    lines += [f"- {text}" for text in card["limitations"]]
    return "\n".join(lines) + "\n"


def write_card_files(card, folder):
    """Writes `model_card.json` and `model_card.md` into `folder` (atomic each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(card, indent=1, default=str)
    atomic_write_bytes(folder / "model_card.json", text.encode("utf-8"))
    atomic_write_bytes(folder / "model_card.md", card_markdown(card).encode("utf-8"))
    return folder / "model_card.json"


def embed_card(keras_path, card):
    """Adds (or replaces) the `model_card.json` entry of a `.keras` archive, atomically."""
    keras_path = Path(keras_path)
    data = json.dumps(card, indent=1, default=str).encode("utf-8")
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(keras_path) as source, zipfile.ZipFile(buffer, "w") as target:
        for item in source.infolist():
            if item.filename != CARD_ENTRY:
                target.writestr(item, source.read(item.filename))
        target.writestr(CARD_ENTRY, data)
    atomic_write_bytes(keras_path, buffer.getvalue())
    return keras_path


def read_embedded_card(path):
    """The model card stored in a `.keras` file (or None when it holds none)."""
    path = Path(path)
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        if CARD_ENTRY not in archive.namelist():
            return None
        return json.loads(archive.read(CARD_ENTRY).decode("utf-8"))
