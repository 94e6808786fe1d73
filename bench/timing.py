"""Shared timing of the benchmarks: alternating passes, medians with best and worst, CPU time, threads.

Every ratio in `bench/results.json` comes from `alternate`: the sides being compared run one pass
each in turn (A, B, A, B, ...) in one process, so a burst of load from other processes falls on
both sides alike; each pass records its wall-clock time and the process CPU time
(`time.process_time`: all threads of this process, which other processes' load does not inflate).
`summarize` turns the passes into a median with the best and worst pass beside it, and the ratio of
two sides is the ratio of their medians, with the best and worst of the pass-by-pass ratios.
"""

from __future__ import annotations

import os
import statistics
import time

MIN_PASSES = 5


def threads():
    """The thread settings the figures were measured under.

    Returns:
        dict: `cpu_count`, TensorFlow's intra- and inter-op thread counts (0: TensorFlow chooses,
        one per core), `OMP_NUM_THREADS` (None when unset) and the threads this process runs now.
    """
    import tensorflow as tf

    try:
        process_threads = len(os.listdir("/proc/self/task"))
    except OSError:
        process_threads = None
    return {
        "cpu_count": os.cpu_count(),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "process_threads": process_threads,
    }


def timed(fn):
    """Run `fn()` once; returns (its result, wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def alternate(sides, passes=MIN_PASSES):
    """Time the sides in alternation, `passes` rounds of one pass each.

    Args:
        sides: `{name: fn}`; `fn()` runs one pass and returns how many items it handled (or None).
        passes: rounds (at least `MIN_PASSES`, so the median is of five or more).

    Returns:
        `{name: [(items, wall_s, cpu_s), ...]}`, one tuple per pass, in order.

    Raises:
        ValueError: fewer than `MIN_PASSES` passes.
    """
    if int(passes) < MIN_PASSES:
        raise ValueError(f"passes must be >= {MIN_PASSES} for a median, got {passes}")
    runs = {name: [] for name in sides}
    for _ in range(int(passes)):
        for name, fn in sides.items():
            items, wall, cpu = timed(fn)
            runs[name].append((items, wall, cpu))
    return runs


def _r(value, digits=4):
    return round(float(value), digits)


def per_item(runs, scale=1e3):
    """Wall and CPU time per item of each pass (milliseconds by default).

    Args:
        runs: passes of one side from `alternate` (items must be set).
        scale: 1e3 for milliseconds.

    Returns:
        (list of wall times per item, list of CPU times per item).
    """
    return (
        [scale * wall / items for items, wall, _ in runs],
        [scale * cpu / items for items, _, cpu in runs],
    )


def summarize(name, runs, *, unit="ms_per_image", scale=1e3):
    """Median, best and worst wall time per item of one side, its CPU time per item, raw passes.

    Args:
        name: prefix of the keys.
        runs: that side's passes from `alternate`.
        unit: suffix of the keys.
        scale: 1e3 for milliseconds.

    Returns:
        dict of figures (`{name}_{unit}`, `{name}_{unit}_best_worst`, `{name}_cpu_{unit}`,
        `{name}_pass_s`).
    """
    wall, cpu = per_item(runs, scale)
    return {
        f"{name}_{unit}": _r(statistics.median(wall)),
        f"{name}_{unit}_best_worst": [_r(min(wall)), _r(max(wall))],
        f"{name}_cpu_{unit}": _r(statistics.median(cpu)),
        f"{name}_pass_s": [_r(w, 3) for _, w, _ in runs],
    }


def ratio(numerator, denominator, *, cpu=False):
    """Median-over-median ratio of time per item, with the best and worst pass-by-pass ratios.

    Args:
        numerator: passes of one side.
        denominator: passes of the other, alternated with it (same number of passes).
        cpu: ratio of CPU time per item instead of wall time.

    Returns:
        (ratio of the medians, [lowest, highest] ratio of a pass to its partner pass).
    """
    a = per_item(numerator)[1 if cpu else 0]
    b = per_item(denominator)[1 if cpu else 0]
    pairs = sorted(x / y for x, y in zip(a, b))
    return statistics.median(a) / statistics.median(b), [_r(pairs[0], 3), _r(pairs[-1], 3)]
