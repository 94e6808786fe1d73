"""`reader_peak_memory_vs_cache`: peak memory of mura's and spinenet's readers and pipelines over their caches.

Each package's training input is run in a fresh interpreter (`python -m bench.bench_memory
--worker PACKAGE WORKDIR`), on phantoms written once into `bench/_work/bench_memory/`:

- mura: `mura.data.make_dataset(records, config="paper", training=True, cache=True)` over about
  340 phantom radiographs, one epoch (decoding, resizing, filling the in-memory cache, shuffle,
  augmentation, batches). The cache is the gray uint8 images at 320 x 320
  (`common.augment.cache_dtype`): N x 320 x 320 bytes.
- spinenet: `spinenet.data.load_volumes(records)` (the reader, which keeps the volumes it extracts
  in its module cache and returns them stacked), the per-slice training mean as `spinenet/train.py`
  computes it, and one epoch of `spinenet.data.make_dataset(..., volumes=...)`. The cache is the
  returned float16 array.

Memory is the process's resident set (`/proc/self/status`): after the imports and one tiny
`tf.data` pass (TensorFlow's runtime allocated), the peak is reset (`/proc/self/clear_refs`) and
the baseline read; the peak over that baseline during the work is divided by the cache's bytes.
Goal <= 1.2 for both: reading and the pipeline add at most a fifth of the cache on top of it.
Five fresh-process passes per package, alternating, give a median per package (`mura_ratio`,
`spinenet_ratio`, best and worst beside them); the entry's ratio is the higher of the two.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

GOAL = "<= 1.2"
PACKAGES = ("mura", "spinenet")
SIZES = {"mura": 100, "spinenet": 12}  # phantom subjects: ~340 images, 72 discs
QUICK_SIZES = {"mura": 20, "spinenet": 4}


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


def _phantoms(package, workdir, subjects):
    folder = Path(workdir) / f"{package}_{subjects}"
    stamp = folder / ".complete"
    if not stamp.exists():
        if package == "mura":
            from mura.synthetic import write_phantom_dataset

            write_phantom_dataset(folder, num_subjects=subjects, seed=0)
        else:
            from spinenet.synthetic import write_phantom_dataset

            write_phantom_dataset(folder, num_subjects=subjects, seed=0, write_t1=False)
        stamp.write_text("ok\n")
    return folder


def _work_mura(folder):
    from common.augment import cache_dtype
    from common.augment import scan_image_files
    from mura.data import load_records
    from mura.data import make_dataset
    from mura.model import get_config

    records = load_records(folder, config="paper")
    config = get_config("paper")
    height, width, _ = config.input_shape
    itemsize = cache_dtype(scan_image_files(records["image_path"].tolist())).size
    cache_bytes = len(records) * height * width * itemsize

    def work():
        ds = make_dataset(records, config=config, training=True, cache=True)
        n = 0
        for batch in ds:
            n += int(batch[0].shape[0])
        return n

    return work, cache_bytes, {"n_images": len(records), "cache_dtype": f"uint{8 * itemsize}",
                               "image_size_hw": [int(height), int(width)]}  # fmt: skip


def _work_spinenet(folder):
    import numpy as np

    from spinenet import data
    from spinenet.model import get_config

    records = data.read_dataset(folder)
    config = get_config("paper")
    holder = {}

    def work():
        data.clear_cache()
        volumes = data.load_volumes(records, progress=False)
        # the training mean as spinenet/train.py computes it (issue 19.3: without a float64 copy)
        holder["mean"] = np.mean(volumes, axis=(0, 1, 2), dtype=np.float64)
        ds = data.make_dataset(
            records, config=config, training=True, batch_size=int(config["batch_size"]),
            volumes=volumes,
        )  # fmt: skip
        n = sum(int(x.shape[0]) for x, _ in ds)
        holder["nbytes"] = volumes.nbytes
        holder["shape"] = list(volumes.shape)
        return n

    probe = data.load_volumes(records.iloc[:1], cache=False, progress=False)
    cache_bytes = len(records) * probe[0].nbytes
    return work, cache_bytes, {"n_volumes": len(records), "cache_dtype": str(probe.dtype),
                               "volume_shape": list(probe.shape[1:])}  # fmt: skip


def worker(package, workdir, subjects):
    """Run one package's reader and pipeline once in this process; print a JSON line of figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    folder = _phantoms(package, workdir, subjects)
    work, cache_bytes, extra = (_work_mura if package == "mura" else _work_spinenet)(folder)
    for _ in tf.data.Dataset.range(8).map(lambda x: x * 2).batch(4):  # runtime warm-up
        pass
    reset = _reset_peak()
    baseline_kib = _status_kib("VmRSS")
    n = work()
    peak_kib = _status_kib("VmHWM")
    figures = {
        "items": n,
        "cache_mb": round(cache_bytes / 2**20, 2),
        "baseline_rss_mb": round(baseline_kib / 1024, 1),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "peak_over_baseline_mb": round((peak_kib - baseline_kib) / 1024, 2),
        "ratio": (peak_kib - baseline_kib) * 1024 / cache_bytes,
        "peak_reset": reset,
        **extra,
    }
    print("BENCH_MEMORY " + json.dumps(figures), flush=True)


def _run_worker(package, workdir, subjects):
    from common.testing import subprocess_env

    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_memory", "--worker", package, str(workdir),
         str(subjects)],
        capture_output=True, text=True, env=subprocess_env(),
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_MEMORY ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{package} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH_MEMORY ") :])


def run(workdir, *, quick=False, passes=5):
    """Measure `reader_peak_memory_vs_cache`; see the module docstring.

    Args:
        workdir: folder of the phantoms.
        quick: smaller phantom sets.
        passes: fresh-process passes per package, alternating (median counts).

    Returns:
        `{"reader_peak_memory_vs_cache": {...}}`.
    """
    from bench import timing

    sizes = QUICK_SIZES if quick else SIZES
    runs = {package: [] for package in PACKAGES}
    for package in PACKAGES:  # write the phantoms outside the timed passes
        _phantoms(package, workdir, sizes[package])
    for _ in range(int(passes)):
        for package in PACKAGES:
            runs[package].append(_run_worker(package, workdir, sizes[package]))
    entry = {}
    medians = {}
    for package, figures in runs.items():
        ratios = [f["ratio"] for f in figures]
        medians[package] = statistics.median(ratios)
        last = figures[-1]
        entry.update(
            {
                f"{package}_ratio": round(medians[package], 3),
                f"{package}_ratio_best_worst": [round(min(ratios), 3), round(max(ratios), 3)],
                f"{package}_peak_over_baseline_mb": [f["peak_over_baseline_mb"] for f in figures],
                f"{package}_baseline_rss_mb": [f["baseline_rss_mb"] for f in figures],
                **{
                    f"{package}_{k}": v
                    for k, v in last.items()
                    if k not in {"ratio", "baseline_rss_mb", "peak_over_baseline_mb"}
                },
            }
        )
    worst = max(medians, key=medians.get)
    results = {
        "reader_peak_memory_vs_cache": {
            "ratio": round(medians[worst], 3),
            "goal": GOAL,
            "measure": "peak resident memory over baseline / cache bytes (the higher package)",
            "package": worst,
            **entry,
            "passes": int(passes),
            "machine_shared_with_other_jobs": True,
            **timing.threads(),
        }
    }
    return results


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        print(run(Path(__file__).resolve().parent / "_work" / "bench_memory"))
