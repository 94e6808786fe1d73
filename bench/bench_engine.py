"""`engine_overhead_vs_fit`: the suite's training engine against `model.fit(steps_per_execution=N)`.

Both sides train the same tiny model (8 -> 32 -> 1 Dense, MSE, SGD) on the same batches (one
in-memory `tf.data` pipeline, batch 32) for one epoch of `STEPS` steps, with `N` steps per compiled
call (`common.training.DEFAULT_STEPS_PER_EXECUTION`). Passes alternate between the two (engine,
fit, engine, fit, ...) after a warm-up pass of each (tracing); the ratio is the median engine
time per step over the median `fit` time per step (an overhead: lower is better, goal <= 1.1),
with the best and worst passes, the CPU time per step of each side and the thread counts beside
it. The engine's time per step for other N is reported too (`engine_ms_per_step_by_n`): that
sweep chose the default N.
"""

from __future__ import annotations

import statistics
import time

from bench import timing

GOAL = "<= 1.1"
STEPS = 256
BATCH = 32
SWEEP = (1, 4, 16, 64)


def _build():
    import keras

    inputs = keras.Input((8,), name="x")
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, name="y")(hidden))


def _dataset():
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 8)).astype("float32")
    y = (x[:, :1] - 2.0 * x[:, 1:2]).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _engine(steps_per_execution):
    import keras

    from common.training import Trainer

    trainer = Trainer(
        _build,
        losses="mse",
        optimizer=lambda: keras.optimizers.SGD(0.01),
        steps_per_execution=steps_per_execution,
        tensorboard=False,
        verbose=0,
    )
    return trainer


def run(workdir=None, *, quick=False, passes=7, sweep=SWEEP):
    import keras

    from common.training import DEFAULT_STEPS_PER_EXECUTION

    n = DEFAULT_STEPS_PER_EXECUTION
    if quick:
        passes, sweep = timing.MIN_PASSES, (1, n)
    dataset = _dataset()
    trainer = _engine(n)
    model = _build()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", steps_per_execution=n)

    def ours():
        trainer.fit(dataset, epochs=1)

    def theirs():
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)

    ours()
    theirs()  # warm-up: tracing
    times = {"engine": [], "fit": []}
    for _ in range(int(passes)):
        for name, fn in (("engine", ours), ("fit", theirs)):
            times[name].append(_timed(fn))
    ms = {k: [1000.0 * wall / STEPS for wall, _ in v] for k, v in times.items()}
    cpu_ms = {k: [1000.0 * cpu / STEPS for _, cpu in v] for k, v in times.items()}
    by_n = {}
    for value in sweep:
        other = _engine(value)
        other.fit(dataset, epochs=1)
        walls = [_timed(lambda o=other: o.fit(dataset, epochs=1))[0] for _ in range(3)]
        by_n[str(value)] = round(1000.0 * statistics.median(walls) / STEPS, 4)
    median = {k: statistics.median(v) for k, v in ms.items()}
    ratios = sorted(a / b for a, b in zip(ms["engine"], ms["fit"]))
    return {
        "engine_overhead_vs_fit": {
            "ratio": round(median["engine"] / median["fit"], 3),
            "goal": GOAL,
            "steps_per_execution": n,
            "engine_ms_per_step": round(median["engine"], 4),
            "fit_ms_per_step": round(median["fit"], 4),
            "engine_ms_best_worst": [round(min(ms["engine"]), 4), round(max(ms["engine"]), 4)],
            "fit_ms_best_worst": [round(min(ms["fit"]), 4), round(max(ms["fit"]), 4)],
            "pass_ratio_best_worst": [round(ratios[0], 3), round(ratios[-1], 3)],
            "engine_cpu_ms_per_step": round(statistics.median(cpu_ms["engine"]), 4),
            "fit_cpu_ms_per_step": round(statistics.median(cpu_ms["fit"]), 4),
            "cpu_ratio": round(
                statistics.median(cpu_ms["engine"]) / statistics.median(cpu_ms["fit"]), 3
            ),
            "engine_ms_per_step_by_n": by_n,
            "steps": STEPS,
            "batch": BATCH,
            "passes": int(passes),
            "machine_shared_with_other_jobs": True,
            **timing.threads(),
        }
    }


if __name__ == "__main__":
    print(run())
