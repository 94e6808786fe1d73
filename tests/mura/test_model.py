"""MURA classifier: the slides' DenseNet169 presets, the demo DenseNet, preprocessing, saving, CAM."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import mura
from common.testing import TestCase
from mura import model as mura_model
from mura.explain import class_activation_map

# Slides, "DenseNet - Dense connectivity" (Huang et al. 2017, Table 1), DenseNet-169 column: output
# sizes at a 224x224 input, and the dense blocks' repeats 6, 12, 32, 32. Channels follow from the
# growth rate 32 and compression 0.5 (64 -> 256 -> 128 -> 512 -> 256 -> 1280 -> 640 -> 1664).
DENSENET169_SHAPES_224 = {
    "conv1_relu": (112, 112, 64),  # "Convolution 112 x 112, 7x7 conv, stride 2"
    "pool1": (56, 56, 64),  # "Pooling 56 x 56, 3x3 max pool, stride 2"
    "conv2_block6_concat": (56, 56, 256),  # "Dense Block (1) 56 x 56, x6"
    "pool2_pool": (28, 28, 128),  # "Transition Layer (1) 28 x 28"
    "conv3_block12_concat": (28, 28, 512),  # "Dense Block (2) 28 x 28, x12"
    "pool3_pool": (14, 14, 256),  # "Transition Layer (2) 14 x 14"
    "conv4_block32_concat": (14, 14, 1280),  # "Dense Block (3) 14 x 14, x32"
    "pool4_pool": (7, 7, 640),  # "Transition Layer (3) 7 x 7"
    "conv5_block32_concat": (7, 7, 1664),  # "Dense Block (4) 7 x 7, x32"
    "relu": (7, 7, 1664),
    "avg_pool": (1664,),  # "Classification 1 x 1, 7 x 7 global average pool"
    "abnormal": (1,),  # the slides' replacement classifier: "dense layer with 1 neuron", sigmoid
}
# The same network at the modified model's 320x320x3 input ("Modified DenseNet169 Model").
DENSENET169_SHAPES_320 = {
    "conv1_relu": (160, 160, 64),
    "pool1": (80, 80, 64),
    "conv2_block6_concat": (80, 80, 256),
    "pool2_pool": (40, 40, 128),
    "conv3_block12_concat": (40, 40, 512),
    "pool3_pool": (20, 20, 256),
    "conv4_block32_concat": (20, 20, 1280),
    "pool4_pool": (10, 10, 640),
    "conv5_block32_concat": (10, 10, 1664),
    "relu": (10, 10, 1664),
    "avg_pool": (1664,),
    "abnormal": (1,),
}
# Issue 8: DenseNet169 without its top has 12,642,880 parameters, the sigmoid unit 1,664 + 1 = 1,665.
DENSENET169_NOTOP_PARAMS = 12_642_880
HEAD_PARAMS = 1_665
# Of those, the BatchNormalization moving means and variances are not trained: 2 x 79,200.
DENSENET169_NON_TRAINABLE = 158_400


@pytest.fixture(scope="module")
def paper_models():
    """The `base` and `paper` presets, built once for the whole module (DenseNet169 is slow)."""
    return {name: mura.build_model(name) for name in ("base", "paper")}


@pytest.fixture(scope="module")
def demo_model():
    keras.utils.set_random_seed(0)
    return mura.build_model("demo")


class TestPaperPresets(TestCase):
    @pytest.mark.parametrize(
        "preset, shapes, input_shape",
        [
            ("base", DENSENET169_SHAPES_224, (224, 224, 3)),
            ("paper", DENSENET169_SHAPES_320, (320, 320, 3)),
        ],
    )
    def test_parameter_count_and_shapes(self, paper_models, preset, shapes, input_shape):
        model = paper_models[preset]
        self.run_paper_spec_test(
            model,
            expected_params=DENSENET169_NOTOP_PARAMS + HEAD_PARAMS,
            expected_shapes=shapes,
        )
        assert tuple(model.inputs[0].shape[1:]) == input_shape
        non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
        assert non_trainable == DENSENET169_NON_TRAINABLE
        head = model.get_layer("abnormal")
        assert head.count_params() == HEAD_PARAMS
        assert head.activation is keras.activations.sigmoid
        assert list(model.output_names) == ["abnormal"]

    @pytest.mark.parametrize("preset", ["base", "paper"])
    def test_dense_block_repeats(self, paper_models, preset):
        # Slides' table, DenseNet-169 column: 6, 12, 32 and 32 composite functions per dense block.
        names = [layer.name for layer in paper_models[preset].layers]
        for block, repeats in zip((2, 3, 4, 5), (6, 12, 32, 32), strict=True):
            concats = [
                n for n in names if n.startswith(f"conv{block}_block") and n.endswith("_concat")
            ]
            assert len(concats) == repeats

    def test_layer_names_are_stable(self, paper_models):
        # `paper` is built after `base` in this process: the same layer names (no `_1` suffixes
        # from Keras' process-wide counters), so CAM and weight-loading code can find them.
        base = [layer.name for layer in paper_models["base"].layers]
        assert [layer.name for layer in paper_models["paper"].layers] == base
        assert len(set(base)) == len(base)
        assert base[:4] == ["image", "preprocessing", "conv1_pad", "conv1_conv"]
        assert "pool1_pad" in base and base[-3:] == ["relu", "avg_pool", "abnormal"]

    def test_paper_recipe(self):
        # Slides: Adam(learning_rate=0.0001, beta_1=0.9, beta_2=0.999), batch size 8,
        # ReduceLROnPlateau(monitor='val_loss', factor=0.1, patience=1), horizontal flip,
        # "random rotation of 30 degrees"; the base model: 224x224, 10 epochs, no augmentation.
        paper = mura_model.PRESETS["paper"]
        assert (paper.learning_rate, paper.beta_1, paper.beta_2) == (1e-4, 0.9, 0.999)
        assert paper.batch_size == 8
        assert paper.reduce_lr_on_plateau and paper.reduce_lr_factor == 0.1
        assert paper.reduce_lr_patience == 1
        assert paper.horizontal_flip and paper.rotation_deg == 30.0
        base = mura_model.PRESETS["base"]
        assert base.input_shape == (224, 224, 3) and base.epochs == 10
        assert not base.horizontal_flip and base.rotation_deg == 0.0


def _signature(model):
    # Keras leaves its two ZeroPadding2D layers unnamed (a process-wide counter); ours are named.
    return [
        (
            "pad" if isinstance(layer, keras.layers.ZeroPadding2D) else layer.name,
            type(layer).__name__,
            tuple(layer.output.shape[1:]),
            layer.count_params(),
        )
        for layer in model.layers[1:]
    ]


def test_own_densenet_equals_keras_densenet169(paper_models):
    """`apply_densenet` (the demo's builder) with DenseNet-169's blocks is Keras' DenseNet169."""
    inputs = keras.Input((224, 224, 3))
    ours = keras.Model(inputs, mura_model.apply_densenet(inputs, (6, 12, 32, 32), 32, 64, 0.5))
    reference = paper_models["base"]
    names = [layer.name for layer in reference.layers]
    backbone = keras.Model(
        reference.get_layer("conv1_pad").input, reference.get_layer("relu").output
    )
    assert names[:3] == ["image", "preprocessing", "conv1_pad"]
    assert _signature(ours) == _signature(backbone)
    assert ours.count_params() == DENSENET169_NOTOP_PARAMS


class TestDemo(TestCase):
    def test_forward_pass(self, demo_model):
        x = np.random.default_rng(0).uniform(size=(2, 128, 128, 3)).astype("float32")
        out = demo_model(x, training=False)
        assert set(out) == {"abnormal"}
        prob = np.asarray(out["abnormal"])
        assert prob.shape == (2, 1)
        assert np.all((prob > 0) & (prob < 1))
        # Small enough for a 2-core CPU: under 2% of the paper model's parameters.
        assert demo_model.count_params() < 0.02 * (DENSENET169_NOTOP_PARAMS + HEAD_PARAMS)
        assert demo_model.get_layer("relu").output.shape[1:3] == (8, 8)

    def test_one_gradient_step_changes_weights_and_lowers_loss(self):
        keras.utils.set_random_seed(1)
        model = mura.build_model("demo", input_shape=(64, 64, 3))
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss={"abnormal": "binary_crossentropy"},
            run_eagerly=True,  # tracing the training graph alone takes most of a minute on 2 cores
        )
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(4, 64, 64, 3)).astype("float32")
        y = {"abnormal": np.array([[0], [1], [0], [1]], "float32")}
        before = [np.array(w) for w in model.trainable_weights]
        first = model.train_on_batch(x, y, sample_weight=np.array([0.4, 0.6, 0.4, 0.6], "float32"))
        after = [np.array(w) for w in model.trainable_weights]
        assert all(np.isfinite(first) for first in np.atleast_1d(first))
        changed = sum(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
        assert changed == len(before)
        for _ in range(5):
            last = model.train_on_batch(x, y)
        assert float(np.atleast_1d(last)[0]) < float(np.atleast_1d(first)[0])

    def test_save_and_reload_h5_and_keras(self, demo_model, tmp_path):
        x = np.random.default_rng(2).uniform(size=(2, 128, 128, 3)).astype("float32")
        self.run_model_saving_test(demo_model, x, tmp_path, fresh_process_import="mura")


class TestPreprocessing(TestCase):
    def test_layer_config_and_call(self):
        self.run_layer_test(
            mura_model.RadiographPreprocessing,
            {},
            (2, 8, 8, 1),
            expected_output_shape=(2, 8, 8, 3),
            expected_num_trainable_weights=0,
        )

    @pytest.mark.parametrize("channels", [1, 3])
    def test_matches_keras_densenet_preprocess_input(self, channels):
        gray = np.random.default_rng(3).uniform(size=(2, 6, 5, 1)).astype("float32")
        x = np.repeat(gray, channels, axis=-1)
        got = np.asarray(mura_model.RadiographPreprocessing()(x))
        want = keras.applications.densenet.preprocess_input(np.repeat(gray, 3, axis=-1) * 255.0)
        np.testing.assert_allclose(got, want, atol=1e-5)

    def test_gray_input_model(self):
        model = mura.build_model("demo", input_shape=(64, 64, 1))
        assert tuple(model.inputs[0].shape[1:]) == (64, 64, 1)
        assert model.get_layer("preprocessing").output.shape[-1] == 3


class TestBuildArguments:
    def test_unknown_preset(self):
        with pytest.raises(
            ValueError, match=r"Unknown preset 'papr'\. Available: \['base', 'demo', 'paper'\]"
        ):
            mura.build_model("papr")

    def test_unknown_override(self):
        with pytest.raises(ValueError, match="Unknown override 'input_size'"):
            mura.build_model("demo", input_size=(64, 64, 3))

    @pytest.mark.parametrize(
        "override, message",
        [
            ({"input_shape": (64, 64, 2)}, "input_shape"),
            ({"backbone": "resnet50"}, "Unknown backbone 'resnet50'"),
            ({"dropout_rate": 1.0}, "dropout_rate"),
            ({"bn_momentum": 1.0}, "bn_momentum"),
            ({"ensemble_size": 0}, "ensemble_size"),
            ({"val_fraction": 1.0}, "val_fraction"),
            ({"weights": "/nonexistent/weights.h5"}, "weights file not found"),
        ],
    )
    def test_bad_values(self, override, message):
        with pytest.raises(ValueError, match=message):
            mura.build_model("demo", **override)

    def test_overrides_apply(self):
        model = mura.build_model("demo", input_shape=(96, 80, 3), dropout_rate=0.2, bn_momentum=0.9)
        assert tuple(model.inputs[0].shape[1:]) == (96, 80, 3)
        assert model.get_layer("top_dropout").rate == 0.2
        assert model.get_layer("bn").momentum == 0.9
        assert model.get_layer("conv2_block1_0_bn").momentum == 0.9
        assert mura_model.get_config("demo", epochs=3).epochs == 3

    def test_presets_listed(self):
        assert {"base", "paper", "demo"} <= set(mura.PRESETS)


def test_backbone_weights_from_local_file(tmp_path):
    """`weights=<file>` loads a backbone weights file, as keras.applications does for ImageNet's."""
    keras.utils.set_random_seed(4)
    source = mura.build_model("demo", input_shape=(64, 64, 3))
    backbone = keras.Model(source.inputs, source.get_layer("relu").output)
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    keras.utils.set_random_seed(5)
    loaded = mura.build_model("demo", input_shape=(64, 64, 3), weights=path)
    fresh = mura.build_model("demo", input_shape=(64, 64, 3))
    for layer_name in ("conv1_conv", "conv2_block1_1_conv", "bn"):
        want = source.get_layer(layer_name).get_weights()
        got = loaded.get_layer(layer_name).get_weights()
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(w, g)
        if layer_name != "bn":  # BatchNormalization starts at gamma 1, beta 0 in every model
            assert not np.array_equal(fresh.get_layer(layer_name).get_weights()[0], want[0])


class TestClassActivationMap:
    def test_explain_model_outputs(self, demo_model):
        explainer = mura.explain_model(demo_model)
        assert set(explainer.output_names) == {"abnormal", "relu"}
        x = np.random.default_rng(6).uniform(size=(1, 128, 128, 3)).astype("float32")
        out = explainer(x)
        np.testing.assert_allclose(out["abnormal"], demo_model(x)["abnormal"], atol=1e-6)
        assert out["relu"].shape == (1, 8, 8, demo_model.get_layer("relu").output.shape[-1])

    def test_cam_mean_is_the_logit(self, demo_model):
        # GAP then one unit: mean over positions of sum_k w_k f_k(x, y), plus the bias, is the logit.
        image = np.random.default_rng(7).uniform(size=(150, 110)).astype("float32")
        cam, prob = class_activation_map(demo_model, image, upsample=False, return_probability=True)
        assert cam.shape == (8, 8)
        bias = float(np.asarray(demo_model.get_layer("abnormal").bias)[0])
        logit = float(np.log(prob / (1 - prob)))
        assert abs(float(cam.mean()) + bias - logit) < 1e-4

    def test_cam_upsampled_and_normalised(self, demo_model):
        images = np.random.default_rng(8).uniform(size=(3, 128, 128, 1)).astype("float32")
        cams = class_activation_map(demo_model, images, normalize=True)
        assert cams.shape == (3, 128, 128)
        assert np.allclose(cams.min(axis=(1, 2)), 0) and np.allclose(cams.max(axis=(1, 2)), 1)

    def test_cam_is_the_weighted_sum_of_features(self):
        """With a unit that reads only channel 0, the CAM is that channel's feature map."""
        model = mura.build_model("demo", input_shape=(64, 64, 3))
        channels = model.get_layer("relu").output.shape[-1]
        kernel = np.zeros((channels, 1), "float32")
        kernel[0, 0] = 1.0
        model.get_layer("abnormal").set_weights([kernel, np.zeros(1, "float32")])
        explainer = mura.explain_model(model)
        image = np.random.default_rng(9).uniform(size=(64, 64)).astype("float32")
        features = np.asarray(explainer(np.repeat(image[None, ..., None], 3, -1))["relu"])[
            0, ..., 0
        ]
        cam = class_activation_map(model, image, upsample=False)
        np.testing.assert_allclose(cam, features, atol=1e-6)
