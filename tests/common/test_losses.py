"""common.losses against hand/numpy computations and Keras' built-in losses."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import losses

RNG_SEEDS = [0, 1]


def _probabilities(seed, batch=6, num_classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, num_classes)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return logits, probs.astype("float32")


# --------------------------------------------------------------------------------------------------
# class_balanced_weights
# --------------------------------------------------------------------------------------------------
def test_class_balanced_weights_hand_example():
    # Paper 002 §2: alpha_c = 1 / freq(c). Counts 3, 1, 2 over 6 labelled examples (one -1 and one
    # NaN missing): alpha = 6 / (3 * [3, 1, 2]) = [2/3, 2, 1].
    labels = [0, 0, 0, 1, -1, 2, 2, np.nan]
    np.testing.assert_allclose(losses.class_balanced_weights(labels, 3), [2 / 3, 2.0, 1.0])


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("num_classes", [2, 5])
def test_class_balanced_weights_mean_one_and_inverse_frequency(seed, num_classes):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(num_classes))
    labels = rng.choice(num_classes, size=500, p=probs)
    labels[rng.random(500) < 0.1] = -1
    weights = losses.class_balanced_weights(labels, num_classes)
    labelled = labels[labels >= 0]
    assert weights[labelled].mean() == pytest.approx(1.0)
    counts = np.bincount(labelled, minlength=num_classes)
    np.testing.assert_allclose(weights * counts, (weights * counts)[0])  # alpha_c * n_c constant


def test_class_balanced_weights_zero_for_absent_class_with_warning():
    with pytest.warns(UserWarning, match=r"Classes \[1, 3\]"):
        weights = losses.class_balanced_weights([0, 0, 2], 4)
    np.testing.assert_allclose(weights, [0.75, 0.0, 1.5, 0.0])


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        ([0, 3], 3, "outside 0..2"),
        ([0, 0.5], 3, "outside"),
        ([-1, -1], 3, "no labelled example"),
        ([], 3, "empty"),
        ([0, 1], 0, "num_classes"),
        ([0, -2], 3, "ignore_label=-1"),
    ],
)
def test_class_balanced_weights_bad_input(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        losses.class_balanced_weights(labels, num_classes)


# --------------------------------------------------------------------------------------------------
# MaskedSparseCategoricalCrossentropy
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_masked_sce_equals_keras_without_weights_or_missing(seed, from_logits, label_shape):
    logits, probs = _probabilities(seed)
    y_pred = logits if from_logits else probs
    labels = np.random.default_rng(seed).integers(0, 4, 6)
    y_true = labels if label_shape == "flat" else labels[:, None]
    loss = losses.MaskedSparseCategoricalCrossentropy(from_logits=from_logits, reduction="none")
    expected = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=from_logits)
    got = loss(y_true, y_pred)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    builtin = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    mean = losses.MaskedSparseCategoricalCrossentropy(from_logits=from_logits)
    np.testing.assert_allclose(mean(y_true, y_pred), builtin(labels, y_pred), rtol=1e-5)


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("from_logits", [False, True])
def test_masked_sce_class_weights_and_ignored_labels(seed, from_logits):
    logits, probs = _probabilities(seed)
    labels = np.array([0, 1, -1, 3, -1, 2])
    alpha = np.array([0.5, 1.0, 2.0, 4.0])
    loss = losses.MaskedSparseCategoricalCrossentropy(
        class_weights=alpha, from_logits=from_logits, reduction="none"
    )
    got = np.asarray(loss(labels, logits if from_logits else probs))
    for i, y in enumerate(labels):
        if y == -1:
            assert got[i] == 0.0  # exactly 0
        else:
            assert got[i] == pytest.approx(-np.log(probs[i, y]) * alpha[y], rel=1e-5)


def test_masked_sce_nan_and_custom_ignore_label():
    _, probs = _probabilities(0, batch=4)
    loss = losses.MaskedSparseCategoricalCrossentropy(ignore_label=255, reduction="none")
    got = np.asarray(loss(np.array([1.0, np.nan, 255.0, 2.0]), probs))
    np.testing.assert_allclose(got[[1, 2]], 0.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[[0, 3]], -np.log(probs[[0, 3], [1, 2]]), rtol=1e-5)


def test_masked_sce_default_reduction_divides_by_batch():
    _, probs = _probabilities(1)
    labels = np.array([0, -1, 2, 3, -1, 1])
    per_example = losses.MaskedSparseCategoricalCrossentropy(reduction="none")(labels, probs)
    mean = losses.MaskedSparseCategoricalCrossentropy()(labels, probs)
    assert float(mean) == pytest.approx(float(np.sum(per_example)) / 6, rel=1e-6)
    weighted = losses.MaskedSparseCategoricalCrossentropy(reduction="sum")(
        labels, probs, sample_weight=np.arange(6, dtype="float32")
    )
    assert float(weighted) == pytest.approx(float(np.sum(per_example * np.arange(6))), rel=1e-5)


@pytest.mark.parametrize("from_logits", [False, True])
def test_masked_sce_ignored_examples_have_zero_gradient(from_logits):
    logits, probs = _probabilities(2)
    y_pred = tf.Variable(logits if from_logits else probs)
    labels = tf.constant([-1, 1, -1, 3, 0, -1])
    loss = losses.MaskedSparseCategoricalCrossentropy(
        class_weights=[1.0, 2.0, 3.0, 4.0], from_logits=from_logits, reduction="none"
    )
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(loss(labels, y_pred))
    grad = tape.gradient(total, y_pred).numpy()
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[[0, 2, 5]], 0.0)
    assert np.all(np.abs(grad[[1, 3, 4]]).sum(axis=1) > 0)


def test_masked_sce_class_weights_size_must_match():
    _, probs = _probabilities(0)
    loss = losses.MaskedSparseCategoricalCrossentropy(class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="2 entries but the predictions have 4 classes"):
        loss(np.zeros(6), probs)
    with pytest.raises(ValueError, match="non-negative"):
        losses.MaskedSparseCategoricalCrossentropy(class_weights=[1.0, -2.0])


# --------------------------------------------------------------------------------------------------
# MURA weights
# --------------------------------------------------------------------------------------------------
def test_binary_group_weights_mura_formula():
    # MURA §3: w1 = N / (A + N) on abnormal, w0 = A / (A + N) on normal, per study type.
    labels = [1, 0, 0, 0, 1, 1, 0]
    groups = ["XR_WRIST"] * 4 + ["XR_HAND"] * 3
    table = losses.binary_group_weights(labels, groups)
    # Wrist: A = 1, N = 3 -> (w0, w1) = (1/4, 3/4). Hand: A = 2, N = 1 -> (2/3, 1/3).
    assert table == {"XR_HAND": pytest.approx((2 / 3, 1 / 3)), "XR_WRIST": (0.25, 0.75)}
    weights = losses.binary_sample_weights(labels, groups, table)
    np.testing.assert_allclose(weights, [0.75, 0.25, 0.25, 0.25, 1 / 3, 1 / 3, 2 / 3], rtol=1e-6)
    # Each group's weighted classes balance: w1 * A = w0 * N.
    for group, (w0, w1) in table.items():
        member = np.array(groups) == group
        abnormal = np.sum(np.array(labels)[member])
        assert w1 * abnormal == pytest.approx(w0 * (member.sum() - abnormal))


def test_binary_group_weights_single_class_group_warns():
    with pytest.warns(UserWarning, match="one class gets weight 0"):
        table = losses.binary_group_weights([0, 0, 1, 0], [3, 3, 4, 4])
    assert table == {3: (0.0, 1.0), 4: (0.5, 0.5)}
    assert all(type(key) is int for key in table)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: losses.binary_group_weights([0, 2], ["a", "b"]), "binary"),
        (lambda: losses.binary_group_weights([0, 1], ["a"]), "one entry per label"),
        (lambda: losses.binary_group_weights([0, 1], ["a", None]), "missing"),
        (
            lambda: losses.binary_sample_weights([0, 1], ["a", "c"], {"a": (0.5, 0.5)}),
            r"Unknown group 'c'. Available: \['a'\]",
        ),
    ],
)
def test_binary_weights_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------------
# Serialisation, tf.function, use in a model
# --------------------------------------------------------------------------------------------------
_LOSS_CASES = [
    (
        losses.MaskedSparseCategoricalCrossentropy(
            class_weights=[0.5, 1.5, 1.0], ignore_label=-1, from_logits=True, reduction="none"
        ),
        np.array([0, -1, 2, 1]),
        np.random.default_rng(0).normal(size=(4, 3)).astype("float32"),
    ),
    (
        losses.MaskedSparseCategoricalCrossentropy(ignore_label=-2, name="masked_minus2"),
        np.array([1, -2, 0, 2]),
        np.full((4, 3), 1 / 3, dtype="float32"),
    ),
]


@pytest.mark.parametrize("loss, y_true, y_pred", _LOSS_CASES)
def test_loss_serialisation_round_trip(loss, y_true, y_pred):
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    np.testing.assert_allclose(restored(y_true, y_pred), loss(y_true, y_pred), rtol=1e-6)
    name = keras.saving.get_registered_name(type(loss))
    assert name == f"common>{type(loss).__name__}"


@pytest.mark.parametrize("loss, y_true, y_pred", _LOSS_CASES)
def test_loss_inside_tf_function(loss, y_true, y_pred):
    @tf.function
    def compute(t, p):
        return loss(t, p)

    eager = np.asarray(loss(y_true, y_pred))
    graph = compute(tf.constant(y_true, tf.float32), tf.constant(y_pred)).numpy()
    assert np.all(np.isfinite(graph))
    np.testing.assert_allclose(graph, eager, rtol=1e-6)


def test_losses_compile_fit_and_reload_with_model(tmp_path):
    inputs = keras.Input((3,), name="features")
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    grade = keras.layers.Dense(3, activation="softmax", name="grade")(hidden)
    score = keras.layers.Dense(2, name="score")(hidden)
    model = keras.Model(inputs, {"grade": grade, "score": score}, name="tiny")
    model.compile(
        optimizer="sgd",
        loss={
            "grade": losses.MaskedSparseCategoricalCrossentropy(class_weights=[1.0, 2.0, 0.5]),
            "score": "mse",
        },
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = {
        "grade": np.where(rng.random(16) < 0.3, -1, rng.integers(0, 3, 16)),
        "score": rng.normal(size=(16, 2)),
    }
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    path = tmp_path / "tiny.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    grade_loss = reloaded.loss["grade"]
    assert isinstance(grade_loss, losses.MaskedSparseCategoricalCrossentropy)
    assert grade_loss.class_weights == [1.0, 2.0, 0.5]
