"""The knee paper model's training step under float32 and mixed_bfloat16, with and without XLA.

Reported with no goal (issue 12.2): the `paper` preset of `kneeoa` (VGG-16 to block4 with the
att0 / att1 attention branches, 320 x 224 x 3 input), one training step (forward, backward, Adam)
of a batch of 4 through `common.training.Trainer`, timed over `STEPS` steps per pass, passes
alternating between the configurations after a warm-up (tracing, XLA compilation) of each, 5
passes each (medians, best and worst beside them). Ratios:
`knee_step_mixed_bfloat16_vs_float32` (bfloat16 time over float32 time: above 1 means bfloat16 is
slower) and `knee_step_jit_vs_plain` (float32 with `jit_compile=True` over without). On a CPU
without bfloat16 matrix units, bfloat16 is emulated and slower; `--precision auto` never picks it
on a CPU.
"""

from __future__ import annotations

from bench import timing

BATCH = 4
STEPS = 2
NO_GOAL = "none (reported)"
CONFIGS = {
    "float32": {"precision": "float32", "jit_compile": False},
    "mixed_bfloat16": {"precision": "mixed_bfloat16", "jit_compile": False},
    "float32_jit": {"precision": "float32", "jit_compile": True},
}


def _trainer(precision, jit_compile):
    import functools

    import keras

    import kneeoa
    from common.precision import set_precision
    from common.training import Trainer

    set_precision(precision)
    return Trainer(
        functools.partial(kneeoa.build_model, "paper"),
        losses={
            "att0": "sparse_categorical_crossentropy",
            "att1": "sparse_categorical_crossentropy",
        },
        loss_weights={"att0": 1.0, "att1": 0.8},
        optimizer=lambda: keras.optimizers.Adam(1e-5),
        steps_per_execution=STEPS,
        jit_compile=jit_compile,
        tensorboard=False,
        verbose=0,
    )


def run(workdir=None, *, quick=False, passes=5):
    import numpy as np
    import tensorflow as tf

    from common.precision import reset_precision

    trainers = {}
    try:
        for name, config in CONFIGS.items():
            trainers[name] = _trainer(**config)
    finally:
        reset_precision()
    shape = tuple(trainers["float32"].model.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(BATCH, *shape)).astype("float32")
    y = (np.arange(BATCH) % 5).astype("int32")
    dataset = tf.data.Dataset.from_tensors((x, {"att0": y, "att1": y})).repeat(STEPS).cache()
    for trainer in trainers.values():
        trainer.fit(dataset, epochs=1)  # warm-up: tracing, XLA compilation

    def one_pass(trainer):
        def run():
            trainer.fit(dataset, epochs=1)
            return STEPS

        return run

    runs = timing.alternate({name: one_pass(t) for name, t in trainers.items()}, passes)
    bf16, bf16_range = timing.ratio(runs["mixed_bfloat16"], runs["float32"])
    jit, jit_range = timing.ratio(runs["float32_jit"], runs["float32"])
    raw = {
        **{
            k: v
            for name in trainers
            for k, v in timing.summarize(name, runs[name], unit="ms_per_step").items()
        },
        "batch": BATCH,
        "input_shape": list(shape),
        "steps_per_pass": STEPS,
        "passes": int(passes),
        "machine_shared_with_other_jobs": True,
        **timing.threads(),
    }
    return {
        "knee_step_mixed_bfloat16_vs_float32": {
            "ratio": round(bf16, 3),
            "goal": NO_GOAL,
            "pass_ratio_best_worst": bf16_range,
            **raw,
        },
        "knee_step_jit_vs_plain": {
            "ratio": round(jit, 3),
            "goal": NO_GOAL,
            "pass_ratio_best_worst": jit_range,
            **raw,
        },
    }


if __name__ == "__main__":
    print(run())
