"""A tiny training run driven by `common.training.Trainer`, executed in a subprocess by the tests.

Usage: python engine_script.py MODE OUT_NPZ RUN_DIR [EPOCHS] [SLEEP_PER_STEP_S] [STEPS_PER_EXECUTION]
MODE: default | mirrored (two logical CPUs) | multi-worker (reads TF_CONFIG) | resume (default + resume)
ENGINE_PRECISION in the environment sets `common.precision.set_precision` (default float32).
6 batches per epoch: STEPS_PER_EXECUTION 4 (the tests' default) runs a chunk of 4, then a short one of 2.
"""

import os
import sys
import time

import numpy as np

MODE, OUT, RUN_DIR = sys.argv[1], sys.argv[2], sys.argv[3]
EPOCHS = int(sys.argv[4]) if len(sys.argv) > 4 else 4
SLEEP = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
STEPS = int(sys.argv[6]) if len(sys.argv) > 6 else 4

from common.distribute import configure_logical_cpus  # noqa: E402

if MODE == "mirrored":
    configure_logical_cpus(2)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.callbacks import callback_preset  # noqa: E402
from common.distribute import strategy_from_name  # noqa: E402
from common.losses import MaskedSparseCategoricalCrossentropy  # noqa: E402
from common.precision import set_precision  # noqa: E402
from common.training import Trainer  # noqa: E402
from kneeoa.presets import CALLBACK_PRESETS  # noqa: E402

set_precision(os.environ.get("ENGINE_PRECISION", "float32"))


def build():
    inputs = keras.Input((8,), name="x")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    outputs = {
        "grade": keras.layers.Dense(3, activation="softmax", name="grade")(hidden),
        "score": keras.layers.Dense(1, name="score")(hidden),
    }
    return keras.Model(inputs, outputs)


rng = np.random.default_rng(0)
X = rng.normal(size=(96, 8)).astype("float32")
grade = ((X[:, 0] > 0).astype("int32") + (X[:, 1] > 0.5)).astype("int32")
grade[::7] = -1  # missing labels: ignored by the masked loss
score = (2.0 * X[:, 2:3]).astype("float32")


def dataset(epoch=0):
    ds = tf.data.Dataset.from_tensor_slices((X, {"grade": grade, "score": score}))
    ds = ds.shuffle(96, seed=epoch, reshuffle_each_iteration=False).batch(16)
    if SLEEP:
        ds = ds.map(
            lambda x, y: (
                tf.numpy_function(lambda a: (time.sleep(SLEEP), a)[1], [x], tf.float32),
                y,
            )
        )
        ds = ds.map(lambda x, y: (tf.ensure_shape(x, [None, 8]), y))
    return ds


strategy = strategy_from_name(
    {
        "default": "default",
        "resume": "default",
        "mirrored": "mirrored",
        "multi-worker": "multi-worker",
    }[MODE]
)
trainer = Trainer(
    build,
    losses={"grade": MaskedSparseCategoricalCrossentropy(), "score": "mse"},
    loss_weights={"grade": 1.0, "score": 0.5},
    optimizer=lambda: keras.optimizers.SGD(0.05),
    strategy=strategy,
    run_dir=RUN_DIR if RUN_DIR != "-" else None,
    callbacks=lambda d: callback_preset(
        CALLBACK_PRESETS["knee"], d, lr_patience=1, stop_patience=None
    ),
    seed=1,
    verbose=0,
    steps_per_execution=STEPS,
)
history = trainer.fit(dataset, dataset(), epochs=EPOCHS, resume=MODE == "resume")
np.savez(
    OUT,
    *[np.asarray(w) for w in trainer.model.get_weights()],
    loss=np.array([row["loss"] for row in history]),
    epochs=np.array([row["epoch"] for row in history]),
    replicas=np.array(strategy.num_replicas_in_sync),
    loss_scaled=np.array(isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)),
)
print("DONE", strategy.num_replicas_in_sync, [round(row["loss"], 5) for row in history], flush=True)
