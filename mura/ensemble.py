"""The k best epochs of a run by validation loss, kept on disk and averaged as an ensemble.

The training engine keeps only the best and the last epoch's weights (`checkpoints/best.weights.h5`,
`checkpoints/last.weights.h5`). The MURA paper averages the five best checkpoints by validation
loss, so `train` adds `TopKWeights`, which keeps the k best epochs' weights in
`RUN/checkpoints/topk/`:

    RUN/checkpoints/topk/epoch-0007.weights.h5      one file per kept epoch
    RUN/checkpoints/topk/index.json                 [{"epoch", "val_loss", "file"}, ...] best first

Every file is written under a temporary name and renamed, and `index.json` is rewritten (atomically)
only after the weights it names are complete, so a run killed at any moment leaves a consistent
index. On resume the entries of epochs at or after the epoch being rerun are dropped (they belong to
the interrupted attempt). `evaluate --ensemble K` / `predict --ensemble K` load the K best entries
into copies of the saved model and average their probabilities (and class activation maps).

Reference:
    Rajpurkar et al., "MURA: Large Dataset for Abnormality Detection in Musculoskeletal
    Radiographs", 2018, §3: "we use an ensemble of the 5 models with the lowest validation loss".
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras

from common.errors import DataError
from common.fileio import atomic_write_text

TOPK_DIR = os.path.join("checkpoints", "topk")
INDEX_FILE = "index.json"


def topk_dir(run_dir):
    """The folder of a run's top-k checkpoints, `RUN/checkpoints/topk`.

    Args:
        run_dir: the run folder (the one holding `model.h5`).

    Returns:
        `pathlib.Path`.
    """
    return Path(run_dir) / TOPK_DIR


def read_index(folder):
    """The entries of a top-k folder, best first, whose weight files exist.

    Args:
        folder: a `checkpoints/topk` folder.

    Returns:
        list of dicts `{"epoch": int, "monitor": str, "value": float, "file": str}` (file names
        relative to `folder`); empty when there is no index.
    """
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable top-k index ({exc})", path=path) from None
    if not isinstance(entries, list):
        raise DataError("the top-k index is not a list", path=path)
    return [e for e in entries if (Path(folder) / str(e.get("file", ""))).is_file()]


class TopKWeights(keras.callbacks.Callback):
    """Keeps the weights of the `k` best epochs by a monitored value in a folder (see the module).

    Args:
        folder: where the weights and `index.json` go (created).
        k: how many epochs to keep (>= 1).
        monitor: the logged value ranking the epochs, e.g. `"val_loss"`.
        mode: `"min"` or `"max"`.
    """

    def __init__(self, folder, k=5, monitor="val_loss", mode="min"):
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if mode not in ("min", "max"):
            raise ValueError(f"Unknown mode '{mode}'. Available: ['max', 'min']")
        self.folder = Path(folder)
        self.k = int(k)
        self.monitor = monitor
        self.mode = mode
        self.entries = []

    def on_train_begin(self, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.entries = read_index(self.folder)

    def on_epoch_begin(self, epoch, logs=None):
        # Entries of this epoch or later come from an interrupted attempt of a resumed run.
        stale = [e for e in self.entries if int(e["epoch"]) >= int(epoch)]
        if stale:
            self.entries = [e for e in self.entries if int(e["epoch"]) < int(epoch)]
            self._write_index()
            self._remove(stale)

    def _sort_key(self, entry):
        value = float(entry["value"])
        return value if self.mode == "min" else -value

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        entry = {
            "epoch": int(epoch),
            "monitor": self.monitor,
            "value": float(value),
            "file": f"epoch-{int(epoch):04d}.weights.h5",
        }
        ranked = sorted([*self.entries, entry], key=self._sort_key)
        if entry not in ranked[: self.k]:
            return
        final = self.folder / entry["file"]
        temporary = self.folder / f"epoch-{int(epoch):04d}.tmp.weights.h5"
        self.model.save_weights(temporary, overwrite=True)
        os.replace(temporary, final)
        dropped = ranked[self.k :]
        self.entries = ranked[: self.k]
        self._write_index()
        self._remove(dropped)

    def _write_index(self):
        atomic_write_text(self.folder / INDEX_FILE, json.dumps(self.entries, indent=1))

    def _remove(self, entries):
        for entry in entries:
            path = self.folder / entry["file"]
            if path.exists():
                path.unlink()


def member_weight_files(model_path, k):
    """The weight files of the `k` best epochs of the run that saved `model_path`.

    Args:
        model_path: a `model.h5` / `model.keras` written by `train` (its run folder holds
            `checkpoints/topk/`).
        k: ensemble size (>= 1).

    Returns:
        list of `k` paths, best first.

    Raises:
        DataError: no top-k checkpoints beside the model, or fewer than `k`.
    """
    k = int(k)
    if k < 1:
        raise ValueError(f"ensemble size must be at least 1, got {k}")
    folder = topk_dir(Path(model_path).parent)
    entries = read_index(folder)
    if len(entries) < k:
        found = f"only {len(entries)}" if entries else "no"
        raise DataError(
            f"an ensemble of {k} needs the run's {k} best checkpoints, {found} found in {folder} "
            "(train keeps top_k_checkpoints of them)",
            path=model_path,
        )
    return [folder / e["file"] for e in entries[:k]]


def ensemble_members(model, model_path, k):
    """`k` copies of `model` holding the weights of the run's `k` best epochs (best first).

    Args:
        model: the model loaded from `model_path`.
        model_path: its file (see `member_weight_files`).
        k: ensemble size; 1 returns `[model]` (the saved model holds the best epoch's weights).

    Returns:
        list of `keras.Model`.
    """
    if int(k) == 1:
        return [model]
    members = []
    for path in member_weight_files(model_path, k):
        member = keras.models.clone_model(model)
        member.load_weights(path)
        members.append(member)
    return members
