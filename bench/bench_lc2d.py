"""`lc2d_speedup_vs_tf_keras`: our 1x1 `LocallyConnected2D` against tf_keras' on the knee att0 mask.

Measures forward + backward (gradient of the summed output with respect to the input and the
weights) for batch 8, input 40x28x16, one filter: the shape of the att0 mask layer of the paper
preset. Both sides run the same `tf.function` training-style step, side by side in one process;
tf_keras' three implementations are timed briefly and the fastest is then timed against ours in
alternating passes of `iterations` steps (`bench.timing.alternate`, at least 5 each). Ratio =
median tf_keras time / median time of ours (higher is better, goal >= 2), with the best and worst
pass ratios, CPU times and thread counts.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from bench import timing

GOAL = ">= 2"
SHAPE = (8, 40, 28, 16)


def _step_fn(layer, variables):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y)
        return tape.gradient(loss, [x, *variables])

    return step


def _time(step, x, iterations):
    step(x)  # trace and warm up
    start = time.perf_counter()
    for _ in range(iterations):
        out = step(x)
    _ = [np.asarray(o) for o in out]
    return (time.perf_counter() - start) / iterations


def _pass(step, x, iterations):
    def run():
        for _ in range(iterations):
            out = step(x)
        _ = [np.asarray(o) for o in out]
        return iterations

    return run


def run(workdir=None, *, quick=False, iterations=200, passes=timing.MIN_PASSES):
    import tf_keras

    from common.layers import LocallyConnected2D

    iterations = 20 if quick else int(iterations)
    x = tf.constant(np.random.default_rng(0).normal(size=SHAPE).astype("float32"))
    ours = LocallyConnected2D(1, 1, activation="sigmoid")
    ours.build(SHAPE)
    steps = {"ours": _step_fn(ours, ours.trainable_variables)}
    for implementation in (1, 2, 3):
        layer = tf_keras.layers.LocallyConnected2D(
            1, 1, activation="sigmoid", implementation=implementation
        )
        layer.build(SHAPE)
        steps[f"tf_keras_impl{implementation}"] = _step_fn(layer, layer.trainable_variables)
    # implementations 1 and 2 are two orders of magnitude slower at this size (one op per position):
    # a short timing finds the fastest, which is then timed side by side with ours
    screen = {name: _time(step, x, 3) for name, step in steps.items() if name != "ours"}
    reference_name = min(screen, key=screen.get)
    steps["ours"](x)
    runs = timing.alternate(
        {
            "ours": _pass(steps["ours"], x, iterations),
            "tf_keras": _pass(steps[reference_name], x, iterations),
        },
        passes,
    )
    value, pass_range = timing.ratio(runs["tf_keras"], runs["ours"])
    return {
        "lc2d_speedup_vs_tf_keras": {
            "ratio": round(value, 3),
            "goal": GOAL,
            "measure": "time per step (wall clock)",
            "pass_ratio_best_worst": pass_range,
            "tf_keras_fastest": reference_name,
            **timing.summarize("ours", runs["ours"], unit="ms_per_step"),
            **timing.summarize("tf_keras", runs["tf_keras"], unit="ms_per_step"),
            **{f"screen_{n}_ms": round(v * 1e3, 4) for n, v in screen.items()},
            "input_shape": list(SHAPE),
            "iterations": iterations,
            "passes": int(passes),
            "machine_shared_with_other_jobs": True,
            **timing.threads(),
        }
    }


if __name__ == "__main__":
    print(run())
