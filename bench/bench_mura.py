"""`predict_vs_forward`: images/s of `mura.predict` over a folder of phantom PNGs vs the pure forward pass.

Both sides run the same model on the same number of images at its input size, side by side in one
process, alternating, best of several repeats:

- predict: one whole call of `mura.predict(model, [folder], out_dir)` on a folder of phantom PNGs
  (192-256 px, drawn by `mura.write_phantom_dataset`): listing the folder, checking each file's
  header, building the `tf.data` pipeline (decoding and resizing in parallel maps, prefetching, so
  reading overlaps compute), the compiled forward pass, the study means and writing both CSVs.
- forward: the same compiled forward pass on in-memory tensors of the same shape, no reading.

The model is handed to `predict` already loaded, and the first call, which traces the forward
pass, is a warm-up: `python -m mura predict` pays those once per command before its first image,
so they are reported apart (`cold_predict_s`; `startup_s`: a fresh interpreter importing mura and
loading the saved `.keras` file) rather than charged to every image.

The ratio is measured on the `paper` preset (DenseNet169 at 320 x 320 x 3, the model `predict` is
for). The `demo` preset is measured too (`demo_*`, 128 x 128 x 3, 0.09 G multiply-adds per image,
75x fewer): its forward pass costs about as much CPU per image as decoding and resizing the PNG
(`read_images_per_s` is the pipeline alone, no model), and on a 2-core machine the two compete for
the same cores, so however well reading is overlapped its ratio is about
forward / (forward + reading) time, 0.45-0.77 in our runs on a loaded machine.
Ratio = predict images/s / forward images/s (goal >= 0.9).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

GOAL = ">= 0.9"
# (preset, images, batch size, repeats): the paper model is slow on a CPU, so it reads fewer images.
SETUPS = {"paper": (64, 16, 2), "demo": (512, 32, 3)}


def _phantom_folder(workdir, num_images, source_images):
    """A flat folder of `num_images` phantom PNGs, copied from a phantom set of at least
    `source_images` images (both written once, then reused)."""
    import mura
    from common.image_io import list_images

    folder = Path(workdir) / f"png_{num_images}"
    if folder.is_dir() and len(list_images(folder)) == num_images:
        return folder
    source = Path(workdir) / "phantoms"
    images = list_images(source / "MURA-v1.1") if source.is_dir() else []
    if len(images) < max(num_images, source_images):
        if source.exists():
            shutil.rmtree(source)
        subjects = max(num_images, source_images) // 3 + 10  # ~3.4 images per subject
        mura.write_phantom_dataset(source, num_subjects=subjects, seed=0)
        images = list_images(source / "MURA-v1.1")
    if len(images) < num_images:
        raise RuntimeError(f"only {len(images)} phantom images for {num_images}")
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for i, path in enumerate(images[:num_images]):
        shutil.copyfile(path, tmp / f"image{i:04d}.png")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _startup_seconds(model_path):
    """Wall time of a fresh interpreter that imports mura and loads the saved model."""
    from common.testing import subprocess_env

    script = f"import mura; from common.export import load_model; load_model({model_path!r})"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env()
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return time.perf_counter() - start


def _measure(preset, workdir, num_images, batch_size, repeats, source_images):
    """Seconds of predict, forward and reading alone (best of `repeats`), and the cold call."""
    import mura
    from mura.data import make_dataset
    from mura.evaluate import make_forward
    from mura.model import get_config

    folder = _phantom_folder(workdir, num_images, source_images)
    model = mura.build_model(preset)
    height, width, channels = model.input_shape[1:]
    forward = make_forward([model])
    batches = [
        tf.constant(
            np.random.default_rng(i)
            .uniform(size=(min(batch_size, num_images - start), height, width, channels))
            .astype("float32")
        )
        for i, start in enumerate(range(0, num_images, batch_size))
    ]
    records = pd.DataFrame({"image_path": sorted(str(p) for p in folder.glob("*.png"))})
    config = get_config(preset)
    out_dir = Path(workdir) / f"predict_{preset}"

    def forward_pass():
        for batch in batches:
            out = forward(batch)
        out["probability"].numpy()

    def predict_pass():
        frame = mura.predict(model, [folder], out_dir, batch_size=batch_size, verbose=0)
        if int(frame["num_images"].sum()) != num_images:
            raise RuntimeError(f"predict saw {int(frame['num_images'].sum())} images")

    def read_pass():
        for _ in make_dataset(records, config=config, training=False, batch_size=batch_size):
            pass

    start = time.perf_counter()
    predict_pass()  # traces predict's forward pass (kept for later calls on this model)
    cold = time.perf_counter() - start
    forward_pass()  # traces the baseline
    best = {"predict": float("inf"), "forward": float("inf"), "read": float("inf")}
    for _ in range(repeats):
        for name, fn in (("predict", predict_pass), ("forward", forward_pass), ("read", read_pass)):
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return model, best, cold, [int(height), int(width), int(channels)]


def run(workdir, *, setups=None):
    from common.export import save_model

    setups = dict(SETUPS if setups is None else setups)
    workdir = Path(workdir)
    results = {}
    source_images = max(n for n, _, _ in setups.values())
    for preset, (num_images, batch_size, repeats) in setups.items():
        model, best, cold, shape = _measure(
            preset, workdir, num_images, batch_size, repeats, source_images
        )
        figures = {
            "ratio": (num_images / best["predict"]) / (num_images / best["forward"]),
            "predict_images_per_s": num_images / best["predict"],
            "forward_images_per_s": num_images / best["forward"],
            "read_images_per_s": num_images / best["read"],
            "predict_s": best["predict"],
            "forward_s": best["forward"],
            "cold_predict_s": cold,
            "n_images": num_images,
            "batch_size": batch_size,
            "input_shape": shape,
            "repeats": repeats,
        }
        if preset == "paper":
            path = save_model(model, workdir / "model_paper.keras")
            try:
                figures["startup_s"] = _startup_seconds(os.fspath(path))
            finally:
                os.remove(path)  # 50 MB, rewritten by every run
        results[preset] = {
            k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()
        }
    head = "paper" if "paper" in results else next(iter(results))
    entry = {"ratio": results[head]["ratio"], "goal": GOAL, "preset": head}
    entry.update({k: v for k, v in results[head].items() if k != "ratio"})
    for preset, figures in results.items():
        if preset != head:
            entry.update({f"{preset}_{k}": v for k, v in figures.items()})
    entry["cpu_count"] = os.cpu_count()
    return {"predict_vs_forward": entry}


if __name__ == "__main__":
    print(run(Path(__file__).resolve().parent / "_work" / "bench_mura"))
