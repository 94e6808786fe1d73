"""kneeoa.model: the paper's shapes and sizes (Tables 1-5), presets, heads, explanation, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.errors import DataError
from common.testing import TestCase
from kneeoa import model as kmodel

# Table 1: every cell is a named configuration.
TABLE1_CELLS = ["att0", "att1", "att2", "early-fusion", "multi-loss"]
TABLE1_BASES = ["vgg16", "resnet50", "antony-clsf", "antony-ext"]

# Table 3 (Antony et al., classification) and Table 4 (extended): output shapes of each layer.
TABLE3_SHAPES = {
    "conv1": (100, 150, 32),
    "pool1": (49, 74, 32),
    "conv2": (49, 74, 64),
    "pool2": (24, 36, 64),
    "conv3": (24, 36, 96),
    "pool3": (11, 17, 96),
    "conv4": (11, 17, 128),
    "pool4": (5, 8, 128),
}
TABLE4_SHAPES = {
    "conv1": (100, 150, 32),
    "pool1": (49, 74, 32),
    "conv2_1": (49, 74, 64),
    "conv2_2": (49, 74, 64),
    "pool2": (24, 36, 64),
    "conv3_1": (24, 36, 96),
    "conv3_2": (24, 36, 96),
    "pool3": (11, 17, 96),
    "conv4_1": (11, 17, 128),
    "conv4_2": (11, 17, 128),
    "pool4": (5, 8, 128),
}
# Table 5 (ResNet-50) at 224 x 224: conv2_x 56x56x256, conv3_x 28x28x512; conv4_x and conv5_x
# are 14x14 and 7x7 as the table says, with the depths of its own last 1x1 rows (1024, 2048);
# the table's depth column (512) for them is a typo.
TABLE5_SHAPES = {
    "conv2_block3_out": (56, 56, 256),
    "conv3_block4_out": (28, 28, 512),
    "conv4_block6_out": (14, 14, 1024),
    "conv5_block3_out": (7, 7, 2048),
}


@pytest.fixture(scope="module")
def paper_model():
    return kmodel.build_model("paper")


@pytest.fixture(scope="module")
def demo_model():
    return kmodel.build_model("demo")


class TestPaperPreset(TestCase):
    def test_parameter_count_and_shapes(self, paper_model):
        # Table 2: "VGG-16: Multi-loss (att0) ... ~7.7 M" parameters.
        self.run_paper_spec_test(
            paper_model,
            expected_params=7_700_000,
            rtol=0.01,
            expected_shapes={
                # §3.2 / Fig. 2: 320 x 224 input, branches on the pools after blocks 3 and 4.
                "block3_pool": (40, 28, 256),
                "block4_pool": (20, 14, 512),
                "att0": (5,),
                "att1": (5,),
            },
        )
        assert paper_model.count_params() == 7_717_346  # our exact figure (trunk + 2 branches)

    def test_trunk_stops_at_block4_pool(self, paper_model):
        trunk = [layer for layer in paper_model.layers if layer.name.startswith("block")]
        # Issue 4: VGG16 up to block4_pool alone is 7,635,264 parameters.
        assert sum(layer.count_params() for layer in trunk) == 7_635_264
        assert trunk[-1].name == "block4_pool"
        assert not any(layer.name.startswith("block5") for layer in paper_model.layers)

    def test_input_and_outputs(self, paper_model):
        assert tuple(paper_model.input.shape) == (None, 320, 224, 3)
        assert sorted(paper_model.output) == ["att0", "att1"]
        config = kmodel.resolve_config("paper")
        # §3.3: multi-loss weights w0 = 1, w1 = 0.8; att0 is used at test time (Table 1).
        assert config["loss_weights"] == {"att0": 1.0, "att1": 0.8}
        assert config["test_branch"] == "att0"
        # §3.5 hyper-parameters.
        assert config["learning_rate"] == 1e-5
        assert config["batch_size"] == 64
        assert (config["beta_1"], config["beta_2"]) == (0.9, 0.999)
        assert (config["reduce_lr_patience"], config["early_stopping_patience"]) == (2, 3)

    def test_explain_masks_at_branch_resolution(self, paper_model):
        explained = kmodel.explain_model(paper_model)
        shapes = {k: tuple(v.shape[1:]) for k, v in explained.output.items()}
        assert shapes["att0_mask"] == (40, 28, 1)
        assert shapes["att1_mask"] == (20, 14, 1)
        assert shapes["att0_features"] == (40, 28, 256)


@pytest.mark.parametrize("base", TABLE1_BASES)
@pytest.mark.parametrize("cell", TABLE1_CELLS)
def test_every_table1_cell_is_a_preset(base, cell):
    config = kmodel.resolve_config(f"{base}-{cell}")
    assert config["base"] == base
    outputs = kmodel.output_names(config)
    assert set(config["loss_weights"]) == set(outputs)
    assert config["test_branch"] in outputs
    if cell.startswith("att"):
        assert config["branches"] == (cell,) and outputs == [cell]
    elif cell == "early-fusion":
        assert outputs == ["fusion"] and len(config["branches"]) == 2
    else:
        assert outputs == list(config["branches"]) and len(outputs) == 2
        # Table 1's multi-loss rows name the branches combined.
        assert set(outputs) == set(kmodel.TABLE1_ACCURACY[base]["multi-loss"])


@pytest.mark.parametrize(
    "preset, shapes",
    [
        ("antony-clsf-multi-loss", TABLE3_SHAPES),
        ("antony-ext-multi-loss", TABLE4_SHAPES),
    ],
)
def test_antony_shapes_match_tables_3_and_4(preset, shapes):
    model = kmodel.build_model(preset)
    assert tuple(model.input.shape) == (None, 200, 300, 1)  # derived from Tables 3/4
    for name, shape in shapes.items():
        assert tuple(model.get_layer(name).output.shape[1:]) == shape, name
    # Tables 3/4: att1 on pool3, att2 on pool4.
    explained = kmodel.explain_model(model)
    assert tuple(explained.output["att1_mask"].shape[1:]) == (11, 17, 1)
    assert tuple(explained.output["att2_mask"].shape[1:]) == (5, 8, 1)


@pytest.mark.parametrize(
    "preset, built, missing",
    [
        ("antony-clsf-att0", "pool2", "pool3"),
        ("antony-ext-att1", "pool3", "pool4"),
        ("antony-clsf-early-fusion", "pool4", None),
    ],
)
def test_only_needed_layers_are_built(preset, built, missing):
    model = kmodel.build_model(preset)
    names = {layer.name for layer in model.layers}
    assert built in names
    assert missing is None or missing not in names


def test_resnet50_shapes_match_table5():
    model = kmodel.build_model("resnet50-att2")
    assert tuple(model.input.shape) == (None, 224, 224, 3)
    for name, shape in TABLE5_SHAPES.items():
        assert tuple(model.get_layer(name).output.shape[1:]) == shape, name
    assert tuple(kmodel.explain_model(model).output["att2_mask"].shape[1:]) == (7, 7, 1)


def test_vgg16_att2_on_block5_pool():
    model = kmodel.build_model("vgg16-att2")
    # Fig. 2 at 320 x 224: block5_pool is 10 x 7 x 512.
    assert tuple(model.get_layer("block5_pool").output.shape[1:]) == (10, 7, 512)
    assert list(model.output) == ["att2"]


def test_early_fusion_head():
    model = kmodel.build_model("antony-ext-early-fusion")
    assert list(model.output) == ["fusion"]
    # §3.3: concatenated branch features F_A of size sum N_b (att1: 96, att2: 128).
    assert tuple(model.get_layer("fusion_concat").output.shape[1:]) == (96 + 128,)
    assert model.get_layer("fusion_logits").units == 5


class TestDemo(TestCase):
    def test_forward_pass(self, demo_model):
        x = np.random.default_rng(0).uniform(size=(2, 128, 96, 1)).astype("float32")
        out = demo_model(x, training=False)
        assert sorted(out) == ["att0", "att1"]
        for probs in out.values():
            probs = np.asarray(probs)
            assert probs.shape == (2, 5)
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    def test_one_gradient_step_changes_weights(self):
        model = kmodel.build_model("demo")
        weights = kmodel.resolve_config("demo")["loss_weights"]
        x = np.random.default_rng(1).uniform(size=(4, 128, 96, 1)).astype("float32")
        y = np.array([0, 1, 3, 4])
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            # §3.3 multi-loss: L = sum_b w_b L_b
            loss = sum(w * loss_fn(y, out[name]) for name, w in weights.items())
        grads = tape.gradient(loss, model.trainable_weights)
        assert np.isfinite(float(loss))
        by_name = {w.path: g for w, g in zip(model.trainable_weights, grads)}
        for path in ("block1_conv1/kernel", "att0_attention/att0_attention_mask/kernel"):
            grad = next(g for p, g in by_name.items() if p.endswith(path))
            assert float(tf.reduce_max(tf.abs(grad))) > 0.0, path
        before = [np.array(w) for w in model.trainable_weights]
        keras.optimizers.Adam(1e-2).apply(grads, model.trainable_weights)
        changed = [not np.allclose(b, np.array(w)) for b, w in zip(before, model.trainable_weights)]
        assert all(changed)

    def test_explain_and_logits(self, demo_model):
        x = np.random.default_rng(2).uniform(size=(3, 128, 96, 1)).astype("float32")
        maps = kmodel.explain_model(demo_model)(x)
        assert maps["att0_mask"].shape == (3, 16, 12, 1)
        assert maps["att1_mask"].shape == (3, 8, 6, 1)
        mask = np.asarray(maps["att0_mask"])
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        logits = {k: np.asarray(v) for k, v in kmodel.logits_model(demo_model)(x).items()}
        probs = demo_model(x)
        for name in ("att0", "att1"):
            # each head's softmax of its own logits is the model's output
            expected = kmodel.average_logits_probabilities([logits[name]])
            np.testing.assert_allclose(np.asarray(probs[name]), expected, atol=1e-5)
        mean = (logits["att0"] + logits["att1"]) / 2
        ensemble = kmodel.average_logits_probabilities(logits)
        np.testing.assert_allclose(
            ensemble, np.exp(mean) / np.exp(mean).sum(1, keepdims=True), atol=1e-5
        )

    def test_saving_round_trip(self, demo_model, tmp_path):
        x = np.random.default_rng(3).uniform(size=(2, 128, 96, 1)).astype("float32")
        self.run_model_saving_test(demo_model, x, tmp_path, fresh_process_import="kneeoa")

    def test_explain_a_reloaded_model(self, demo_model, tmp_path):
        path = tmp_path / "demo.keras"
        demo_model.save(path)
        reloaded = keras.models.load_model(path)
        x = np.random.default_rng(5).uniform(size=(2, 128, 96, 1)).astype("float32")
        expected = kmodel.explain_model(demo_model)(x)
        got = kmodel.explain_model(reloaded)(x)
        assert sorted(got) == sorted(expected)
        self.assertAllClose(got["att0_mask"], expected["att0_mask"], atol=1e-6)
        assert sorted(kmodel.logits_model(reloaded).output) == ["att0", "att1"]

    def test_weights_file(self, demo_model, tmp_path):
        path = tmp_path / "demo.weights.h5"
        demo_model.save_weights(path)
        reloaded = kmodel.build_model("demo", weights=str(path))
        x = np.random.default_rng(4).uniform(size=(2, 128, 96, 1)).astype("float32")
        self.assertAllClose(reloaded(x), demo_model(x), atol=1e-6)
        with pytest.raises(DataError, match="missing.weights.h5"):
            kmodel.build_model("demo", weights=str(tmp_path / "missing.weights.h5"))


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("papr", {}, r"Unknown preset 'papr'\. Available: \['antony-clsf-att0'"),
        ("demo", {"imagesize": (64, 64)}, r"Unknown override \['imagesize'\]"),
        ("demo", {"branches": ("att5",)}, r"Unknown branches \['att5'\]"),
        ("demo", {"combination": "late"}, r"Unknown combination 'late'"),
        ("demo", {"loss_weights": {"att0": 1.0}}, r"loss_weights keys"),
        ("antony-clsf-att0", {"backbone_weights": "x.h5"}, r"backbone_weights applies"),
        ("vgg16-att0", {"combination": "multi-loss"}, r"needs two or more branches"),
    ],
)
def test_bad_configuration(preset, overrides, message):
    with pytest.raises(ValueError, match=message):
        kmodel.build_model(preset, **overrides)


def test_overrides_apply():
    model = kmodel.build_model("demo", image_size_hw=(64, 48), trunk_filters=(4, 4, 8, 8))
    assert tuple(model.input.shape) == (None, 64, 48, 1)
    assert tuple(model.get_layer("block4_pool").output.shape[1:]) == (4, 3, 8)
