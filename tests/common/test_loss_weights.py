"""The engine's `loss_weights` (paper 000's multi-loss, w = 1 and 0.8) change both the loss and the step.

Each test has a control that must fail it: the same run with the weight ignored (1.0) or zeroed.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.training import Trainer


def _two_heads():
    inputs = keras.Input((3,), name="x")
    a = keras.layers.Dense(1, name="att0")(inputs)
    b = keras.layers.Dense(1, name="att1")(inputs)
    return keras.Model(inputs, {"att0": a, "att1": b})


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = {
        "att0": rng.normal(size=(32, 1)).astype("float32") + 2.0,
        "att1": rng.normal(size=(32, 1)).astype("float32") - 3.0,
    }
    return x, y


def _trainer(weights):
    return Trainer(
        _two_heads,
        losses={"att0": "mse", "att1": "mse"},
        optimizer=lambda: keras.optimizers.SGD(0.1),
        loss_weights=weights,
        seed=0,
        verbose=0,
    )


@pytest.mark.parametrize("w1", [0.8, 0.0, 2.5])
def test_loss_is_the_weighted_sum_of_the_branch_losses(w1):
    x, y = _data()
    trainer = _trainer({"att0": 1.0, "att1": w1})
    logs = trainer.evaluate(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    pred = trainer.model.predict(x, verbose=0)
    mse = {k: float(np.mean((pred[k] - y[k]) ** 2)) for k in y}
    assert logs["att0_loss"] == pytest.approx(mse["att0"], rel=1e-5)
    assert logs["att1_loss"] == pytest.approx(mse["att1"], rel=1e-5)
    assert logs["loss"] == pytest.approx(mse["att0"] + w1 * mse["att1"], rel=1e-5)
    # Control: the unweighted sum differs by more than the tolerance, so ignoring w1 fails above.
    if w1 != 1.0:
        assert abs(mse["att0"] + mse["att1"] - logs["loss"]) > 1e-3 * logs["loss"]


def test_the_step_follows_the_weights():
    """A branch of weight 0 gets no gradient; 0.8 moves it by 0.8 of the unweighted step."""
    x, y = _data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    moves = {}
    for w1 in (0.0, 0.8, 1.0):
        trainer = _trainer({"att0": 1.0, "att1": w1})
        before = [v.numpy().copy() for v in trainer.model.get_layer("att1").weights]
        trainer.fit(data, epochs=1)
        after = [v.numpy() for v in trainer.model.get_layer("att1").weights]
        moves[w1] = np.concatenate([(b - a).ravel() for a, b in zip(before, after)])
    np.testing.assert_array_equal(moves[0.0], 0.0)
    assert np.abs(moves[1.0]).max() > 1e-2  # the control moves: a zero weight is visible
    # SGD, one step from the same start: the update scales with the branch weight.
    np.testing.assert_allclose(moves[0.8], 0.8 * moves[1.0], rtol=1e-4, atol=1e-7)
