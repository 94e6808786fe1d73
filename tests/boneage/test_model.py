"""BoneAgeNet: the InceptionV3 builder against Keras', Table 1's presets, the head, CAM."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from boneage import model as boneage_model
from boneage.explain import cam_mass_fraction
from boneage.explain import class_activation_map
from common.testing import TestCase

# Table 1 of the paper (β, n.Mixed5, n.Mixed7, n.Mixed9, "n.params" in millions) beside our exact
# count on a 300x300x1 input (all weights, BatchNormalization moving statistics included).
TABLE1 = [
    # preset, β, Mixed5, Mixed7, Mixed9, paper ~M (Table 1), ours (exact)
    ("baseline", 1.0, 2, 1, 2, 28, 21_804_353),
    ("modified_1", 1.2, 4, 1, 2, 36, 36_243_552),
    ("modified_2", 1.3, 5, 1, 3, 55, 55_688_354),
    ("modified_3", 1.2, 4, 3, 3, 51, 51_152_674),
    ("modified_4", 1.0, 6, 4, 4, 47, 47_167_041),
    ("modified_5", 1.2, 5, 4, 4, 65, 65_419_824),
    ("modified_6", 1.1, 6, 5, 5, 66, 66_928_016),
    ("final_no_fc", 1.4, 4, 3, 3, 69, 69_709_920),
    ("final_no_fc_no_sex", 1.4, 4, 3, 3, 69, 69_709_824),
    ("paper", 1.4, 4, 3, 3, 78, 78_029_920),
]


def _layer_signature(model):
    return [
        (type(layer).__name__, tuple(layer.output.shape), layer.count_params())
        for layer in model.layers
    ]


@pytest.mark.parametrize("size", [299])
def test_backbone_equals_keras_inception_v3(size):
    """β = 1, repeats 2/1/2, RGB input: layer by layer the shapes and parameters of Keras' model."""
    reference = keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    ours = boneage_model.build_backbone((size, size, 3))
    assert _layer_signature(ours) == _layer_signature(reference)
    assert ours.count_params() == reference.count_params()
    assert ours.output.shape == reference.output.shape
    # Every mixed block carries Keras' name.
    keras_blocks = [f"mixed{i}" for i in range(11)]
    for name in keras_blocks:
        assert ours.get_layer(name).output.shape == reference.get_layer(name).output.shape


def test_backbone_keras_parameter_count():
    # keras.applications.InceptionV3(include_top=False) has 21,802,784 parameters.
    assert (
        boneage_model.backbone_params({"channels": 3})["trainable"]
        + boneage_model.backbone_params({"channels": 3})["non_trainable"]
        == 21_802_784
    )


@pytest.mark.parametrize("row", TABLE1, ids=[r[0] for r in TABLE1])
def test_table1_presets_and_parameter_counts(row):
    name, beta, n5, n7, n9, paper_millions, ours = row
    config = boneage_model.PRESETS[name]
    assert (config.width_factor, config.num_mixed5, config.num_mixed7, config.num_mixed9) == (
        beta,
        n5,
        n7,
        n9,
    )
    assert config.image_size_hw == (300, 300) and config.channels == 1  # §III: 300x300x1
    counted = boneage_model.count_params(name)["params"]
    assert counted == ours
    if name == "baseline":
        # Table 1 says ~28M; the architecture the text describes has 21.8M (see model.py).
        assert abs(counted / 1e6 - 21.8) < 0.05
    else:
        # Table 1 rounds to whole millions ("~36M"): within 1M of the table.
        assert abs(counted / 1e6 - paper_millions) < 1.0


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"hidden_units": 0, "dropout_rate": 0.0},
        {"use_sex": False, "width_factor": 0.3, "num_mixed5": 3, "num_mixed7": 2, "num_mixed9": 3},
        {"channels": 3, "width_factor": 0.7, "image_size_hw": (96, 80)},
        {"stem_pool1": True, "image_size_hw": (96, 96)},
    ],
)
def test_count_params_equals_built_model(overrides):
    model = boneage_model.build_model("demo", **overrides)
    counted = boneage_model.count_params("demo", **overrides)
    assert model.count_params() == counted["params"]
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == counted["trainable_params"]
    assert model.get_layer("gap").output.shape[-1] == counted["features"]


@pytest.fixture(scope="module")
def paper_model():
    """The ~78M-parameter Final model, built once for the module (no training)."""
    return boneage_model.build_model("paper")


class TestPaperPreset(TestCase):
    def test_parameter_count_and_shapes(self, paper_model):
        # Table 1, "Final": β 1.4, 4/3/3, ~78M; exact count of our build in TABLE1.
        shapes = {
            "stem_pool2": (35, 35, 269),  # 192 * 1.4 = 268.8 -> 269
            "mixed2": (35, 35, 404),  # 90 + 90 + 134 + 90 (β-scaled 64, 64, 96, 64)
            "mixed3": (17, 17, 1076),  # 538 + 134 + 404 (reduction: max-pooled input passes)
            "mixed11": (17, 17, 1076),  # last of 4 Mixed5 + 3 Mixed7 blocks: 4 x 269
            "mixed12": (8, 8, 1793),  # reduction: 448 + 269 + 1076
            "mixed15": (8, 8, 2869),  # last of 3 Mixed9 blocks: 448 + 2 * 1076 + 269
            "gap": (2869,),
            "sex_dense": (32,),
            "concat": (2901,),
            "hidden_dense": (2867,),
            "age_months": (1,),
        }
        self.run_paper_spec_test(paper_model, expected_params=78_029_920, expected_shapes=shapes)
        assert abs(paper_model.count_params() - 78e6) < 0.5e6  # Table 1: ~78M

    def test_inputs_outputs_and_blocks(self, paper_model):
        assert [t.name for t in paper_model.inputs] == ["image", "sex"]
        assert tuple(paper_model.inputs[0].shape[1:]) == (300, 300, 1)
        assert list(paper_model.output) == ["age_months"]
        blocks = [layer.name for layer in paper_model.layers if layer.name.startswith("mixed")]
        blocks = [b for b in blocks if b[5:].isdigit()]
        assert blocks == [f"mixed{i}" for i in range(16)]  # 5 + 4 + 3 + 1 + 3 blocks
        assert boneage_model.last_conv_layer_name(paper_model) == "mixed15"
        assert paper_model.get_layer("gap_dropout").rate == 0.5
        regularizer = paper_model.get_layer("age_months").kernel_regularizer
        assert isinstance(regularizer, keras.regularizers.L2)


@pytest.mark.parametrize(
    "filters, beta, expected",
    [(32, 1.0, 32), (192, 1.4, 269), (80, 1.2, 96), (48, 1.3, 62), (160, 1.1, 176), (5, 0.1, 1)],
)
def test_scaled_filters_rounds_half_up(filters, beta, expected):
    assert boneage_model.scaled_filters(filters, beta) == expected


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: boneage_model.build_model("papr"), "Unknown preset 'papr'. Available: ["),
        (
            lambda: boneage_model.build_model("demo", widht_factor=2),
            "Unknown option 'widht_factor'",
        ),
        (lambda: boneage_model.build_model("demo", image_size_hw=(64, 64)), "at least (75, 75)"),
        (lambda: boneage_model.build_model("demo", num_mixed7=0), "num_mixed7 must be >= 1"),
        (lambda: boneage_model.build_model("demo", dropout_rate=1.0), "dropout_rate"),
        (lambda: boneage_model.build_model("demo", weights="/nonexistent.weights.h5"), "weights"),
    ],
)
def test_bad_configuration_raises(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


@pytest.fixture(scope="module")
def demo_model():
    keras.utils.set_random_seed(0)  # a fixed initialisation: no test depends on luck
    return boneage_model.build_model("demo")


def _batch(config, n=2, seed=0):
    rng = np.random.default_rng(seed)
    h, w = config.image_size_hw
    return {
        "image": rng.uniform(size=(n, h, w, config.channels)).astype("float32"),
        "sex": np.array([[1.0], [0.0]] * (n // 2), dtype="float32"),
    }


def test_demo_forward_pass(demo_model):
    config = boneage_model.PRESETS["demo"]
    out = demo_model(_batch(config), training=False)
    assert list(out) == ["age_months"]
    assert tuple(out["age_months"].shape) == (2, 1)
    assert np.all(np.isfinite(out["age_months"]))
    assert demo_model.count_params() < 2_000_000  # small enough for a 2-core CPU


def _head_by_hand(model, pooled, sex):
    """The demo's head after GAP in float64 NumPy: sex_dense (ReLU), concat, hidden_dense (ReLU),
    age_months; from the layers' weights, so that the model's own graph is not reused."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("sex_dense").get_weights())
    x = np.concatenate([pooled, relu(sex @ kernel + bias)], axis=1)
    kernel, bias = (
        np.asarray(w, np.float64) for w in model.get_layer("hidden_dense").get_weights()
    )
    x = relu(x @ kernel + bias)
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("age_months").get_weights())
    return (x @ kernel + bias)[:, 0]


def test_sex_input_changes_prediction(demo_model):
    """The same image read as a boy's and as a girl's: the two ages differ by exactly what the
    head makes of the sex features (computed by hand from the weights), and by far more than the
    float32 rounding of the output; with the sex layer's weights zeroed (sex ignored) the
    difference is 0, so the check fails when the sex input is cut off."""
    config = boneage_model.PRESETS["demo"]
    batch = _batch(config)
    batch["image"][1] = batch["image"][0]
    out = demo_model(batch, training=False)["age_months"].numpy()[:, 0].astype(np.float64)
    pooled = np.asarray(boneage_model.explain_model(demo_model)(batch, training=False)["gap"])
    expected = _head_by_hand(demo_model, pooled.astype(np.float64), batch["sex"].astype(np.float64))
    # a few float32 ulps of the output (about 127 months at initialisation: the output bias)
    rounding = 16 * np.finfo(np.float32).eps * np.abs(out).max()
    np.testing.assert_allclose(out[0] - out[1], expected[0] - expected[1], rtol=1e-3, atol=rounding)
    assert abs(out[0] - out[1]) > 10 * rounding, (out, rounding)
    layer = demo_model.get_layer("sex_dense")
    saved = layer.get_weights()
    try:
        layer.set_weights([np.zeros_like(w) for w in saved])
        cut = demo_model(batch, training=False)["age_months"].numpy()[:, 0]
    finally:
        layer.set_weights(saved)
    assert abs(float(cut[0] - cut[1])) <= rounding


@pytest.mark.parametrize("seed", [0])
def test_one_gradient_step_changes_weights_and_lowers_loss(seed):
    keras.utils.set_random_seed(seed)
    model = boneage_model.build_model("demo", image_size_hw=(80, 80), dropout_rate=0.0)
    config = boneage_model.get_config("demo", image_size_hw=(80, 80))
    batch = _batch(config, n=4, seed=seed)
    target = np.array([[30.0], [200.0], [30.0], [200.0]], dtype="float32")

    def loss_fn():
        pred = model(batch, training=True)["age_months"]
        return tf.reduce_mean((pred - target) ** 2) + tf.add_n(model.losses)

    assert len(model.losses) == 1  # the L2 penalty on the output kernel (§V)
    weights = model.trainable_weights
    before = [w.numpy().copy() for w in weights]
    with tf.GradientTape() as tape:
        loss0 = float(loss_fn())
        loss = loss_fn()
    grads = tape.gradient(loss, weights)
    assert all(g is not None for g in grads)
    # A short step (length 1e-4) down the gradient lowers the loss (first order; the raw
    # gradient is ~1e5 long, so a plain SGD rate would have to be ~1e-9).
    norm = float(tf.sqrt(tf.add_n([tf.reduce_sum(g * g) for g in grads])))
    for w, g in zip(weights, grads):
        w.assign_sub(g * (1e-4 / norm))
    assert float(loss_fn()) < loss0
    # One optimizer step moves every trainable weight.
    keras.optimizers.Adam(1e-3).apply_gradients(zip(grads, weights))
    assert all(np.any(b != w.numpy()) for b, w in zip(before, weights))


@pytest.mark.parametrize(
    "size_hw, stem_pool1, block_hw",
    [((192, 160), True, (4, 3)), ((192, 160), False, (10, 8)), ((299, 299), True, (8, 8))],
)
def test_stem_pool1_sets_the_last_block_resolution(size_hw, stem_pool1, block_hw):
    # Keras' InceptionV3 (stem_pool1=True) gives 8 x 8 at 299 px; without pool1 every later map
    # is about twice as high and wide, and no weight changes.
    overrides = {"image_size_hw": size_hw, "stem_pool1": stem_pool1, "width_factor": 0.1}
    model = boneage_model.build_model("demo", **overrides)
    assert tuple(model.get_layer("gap").input.shape[1:3]) == block_hw
    assert ("stem_pool1" in [layer.name for layer in model.layers]) == stem_pool1
    assert model.count_params() == boneage_model.count_params("demo", **overrides)["params"]


def test_model_without_sex_has_image_input_only():
    model = boneage_model.build_model("demo", use_sex=False, image_size_hw=(80, 80))
    assert [t.name for t in model.inputs] == ["image"]
    assert "sex_dense" not in [layer.name for layer in model.layers]
    out = model({"image": np.zeros((1, 80, 80, 1), "float32")}, training=False)
    assert tuple(out["age_months"].shape) == (1, 1)


def test_explain_model_exposes_last_conv_block(demo_model):
    explainer = boneage_model.explain_model(demo_model)
    config = boneage_model.PRESETS["demo"]
    batch = _batch(config)
    out = explainer(batch, training=False)
    assert set(out) == {"age_months", "last_conv_block", "gap"}
    # 192 x 160 px without the stem's pool1 -> a 10 x 8 block; β 0.14: 45 + 2 * (54 + 54) + 27
    assert tuple(out["last_conv_block"].shape) == (2, 10, 8, 288)
    np.testing.assert_allclose(
        out["age_months"], demo_model(batch, training=False)["age_months"], rtol=1e-5
    )
    np.testing.assert_allclose(out["gap"], np.mean(out["last_conv_block"], axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("sex", [0.0, 1.0])
def test_cam_of_linear_head_sums_to_the_prediction(sex):
    """Without the hidden layer, mean(CAM) + the prediction at zero features = the prediction."""
    model = boneage_model.build_model(
        "demo", hidden_units=0, dropout_rate=0.0, image_size_hw=(160, 160)
    )
    image = np.random.default_rng(3).uniform(size=(160, 160)).astype("float32")
    cam, age = class_activation_map(model, image, sex, upsample=False, reference=None)
    assert cam.shape == (8, 8)  # 160 px without the stem's pool1 -> 8 x 8
    s = model.get_layer("sex_dense")(np.array([[sex]], "float32"))
    zero = np.zeros((1, model.get_layer("gap").output.shape[-1]), "float32")
    at_zero = model.get_layer("age_months")(model.get_layer("concat")([zero, s])).numpy()[0, 0]
    np.testing.assert_allclose(cam.mean() + at_zero, age[0], rtol=1e-4, atol=1e-3)
    # The CAM weights are the output kernel's rows for the pooled features.
    kernel = model.get_layer("age_months").kernel.numpy()[: zero.shape[1], 0]
    features = boneage_model.explain_model(model)(
        {"image": image[None, ..., None], "sex": np.array([[sex]], "float32")}
    )["last_conv_block"].numpy()[0]
    np.testing.assert_allclose(cam, features @ kernel, rtol=1e-4, atol=1e-4)
    # Relative to an empty film, the map's mean is the age above the empty film's prediction.
    relative, _ = class_activation_map(model, image, sex, upsample=False)
    blank = np.full((1, 160, 160, 1), np.percentile(image, 1.0), "float32")
    age_blank = model({"image": blank, "sex": np.array([[sex]], "float32")})["age_months"]
    np.testing.assert_allclose(
        relative.mean(), age[0] - float(age_blank[0, 0]), rtol=1e-3, atol=1e-3
    )


def test_cam_upsampled_to_image_size_and_mass_fraction(demo_model):
    image = np.zeros((150, 120), "float32")
    image[40:110, 30:90] = 0.8
    cam, age = class_activation_map(demo_model, image, 1)
    assert cam.shape == (150, 120) and age.shape == (1,)
    mask = np.zeros_like(image, dtype=bool)
    assert cam_mass_fraction(cam, mask) == 0.0
    assert cam_mass_fraction(cam, ~mask) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        class_activation_map(demo_model, image, None)  # the model takes a sex input


def test_weights_file_loads_into_a_fresh_build(tmp_path, demo_model):
    path = tmp_path / "demo.weights.h5"
    demo_model.save_weights(path)
    rebuilt = boneage_model.build_model("demo", weights=path)
    batch = _batch(boneage_model.PRESETS["demo"])
    np.testing.assert_allclose(
        rebuilt(batch, training=False)["age_months"],
        demo_model(batch, training=False)["age_months"],
        rtol=1e-5,
    )


# The .h5 / .keras round trip (also in a fresh process) is in test_train.py, on the trained model.


@pytest.mark.parametrize(
    "epoch, expected",
    [(0, 1e-2), (9, 1e-2), (10, 5e-3), (95, 1e-2 * 0.5**9), (150, 1e-5)],
)
def test_paper_learning_rate_schedule(epoch, expected):
    # §V: Adam from 1e-2 with stepwise decay down to a floor of 1e-5; batch 32; 100 epochs (§VI).
    assert boneage_model.stepwise_learning_rate(epoch, "paper") == pytest.approx(expected)
    paper = boneage_model.PRESETS["paper"]
    assert (paper.batch_size, paper.epochs, paper.learning_rate) == (32, 100, 1e-2)


@pytest.mark.parametrize("name", sorted(boneage_model.PRESETS))
def test_every_preset_is_described_and_valid(name):
    config = boneage_model.get_config(name)
    assert config.description
    assert config.to_dict()["image_size_hw"] == list(config.image_size_hw)
    assert boneage_model.count_params(name)["params"] > 0
