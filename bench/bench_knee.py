"""`attention_step_overhead`: training-step time of the knee paper model over its bare VGG-16 trunk.

Both models take the paper's input (320 x 224 x 3) and stop at `block4_pool`; the paper model adds
the att0 / att1 attention branches (BatchNorm, 1x1 convolutions 64 and 16, the 1x1 locally
connected mask, masked GAP) and their softmax heads, the bare trunk reads the same two feature
maps through plain global average pooling into the same heads. One training step (forward,
backward, Adam update) on the same batch of 4; passes of `iterations` steps alternate between the
two models (`bench.timing.alternate`, at least 5 each, after a warm-up). Ratio = median paper
model step / median bare trunk step (an overhead: lower is better, goal <= 1.10), with the best
and worst pass ratios, the CPU time per step of each side and the thread counts.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bench import timing

GOAL = "<= 1.10"
BATCH = 4


def _bare_trunk(paper_model):
    """The paper model's trunk and heads with GAP in place of the attention branches."""
    from kneeoa.model import apply_vgg16

    inputs = keras.Input(paper_model.input_shape[1:], name="image")
    maps = apply_vgg16(inputs, last_layer="block4_pool")
    outputs = {}
    for branch, layer in (("att0", "block3_pool"), ("att1", "block4_pool")):
        pooled = keras.layers.GlobalAveragePooling2D(name=f"{branch}_gap")(maps[layer])
        outputs[branch] = keras.layers.Dense(5, activation="softmax", name=branch)(pooled)
    return keras.Model(inputs, outputs, name="bare_vgg16_trunk")


def _step_fn(model):
    optimizer = keras.optimizers.Adam(1e-5)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = loss_fn(y, out["att0"]) + 0.8 * loss_fn(y, out["att1"])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def _pass(step, x, y, iterations):
    def run():
        for _ in range(iterations):
            loss = step(x, y)
        float(loss)
        return iterations

    return run


def run(workdir=None, *, quick=False, iterations=2, passes=timing.MIN_PASSES):
    import kneeoa

    iterations = 1 if quick else int(iterations)
    paper = kneeoa.build_model("paper")
    bare = _bare_trunk(paper)
    x = tf.constant(
        np.random.default_rng(0).uniform(size=(BATCH, *paper.input_shape[1:])).astype("float32")
    )
    y = tf.constant(np.arange(BATCH) % 5)
    steps = {"paper": _step_fn(paper), "bare_trunk": _step_fn(bare)}
    for step in steps.values():
        step(x, y)  # trace, warm up
    runs = timing.alternate(
        {name: _pass(step, x, y, iterations) for name, step in steps.items()}, passes
    )
    value, pass_range = timing.ratio(runs["paper"], runs["bare_trunk"])
    return {
        "attention_step_overhead": {
            "ratio": round(value, 3),
            "goal": GOAL,
            "measure": "time per training step (wall clock)",
            "pass_ratio_best_worst": pass_range,
            **timing.summarize("paper", runs["paper"], unit="ms_per_step"),
            **timing.summarize("bare_trunk", runs["bare_trunk"], unit="ms_per_step"),
            "paper_params": int(paper.count_params()),
            "bare_params": int(bare.count_params()),
            "batch": BATCH,
            "input_shape": list(paper.input_shape[1:]),
            "iterations": iterations,
            "passes": int(passes),
            "machine_shared_with_other_jobs": True,
            **timing.threads(),
        }
    }


if __name__ == "__main__":
    print(run())
