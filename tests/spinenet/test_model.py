"""SpineNet model: the paper preset's shapes and parameters, branch points, demo, training step."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from common.losses import MaskedSparseCategoricalCrossentropy
from common.testing import TestCase
from spinenet.model import BRANCH_POINTS
from spinenet.model import PRESETS
from spinenet.model import ChannelMeanSubtraction
from spinenet.model import build_model
from spinenet.model import count_parameters
from spinenet.model import explain_model
from spinenet.model import get_config
from spinenet.model import parameter_table
from spinenet.model import set_input_mean

# Paper 002, §4 and Fig. 2: VGG-M 1024 with 112x224x9 inputs, Conv1 96 7x7/2, Conv2 256 5x5/2,
# Conv3-5 512 3x3, 2x2 max-pooling, FC6 4096, FC7 1024, FC8 per task, branch after Conv5.
# The paper gives no parameter count; these follow from those layer sizes with VGG-M's paddings
# (Conv1 unpadded, Conv2 padded by 1, Conv3-5 "same"), the derivation in spinenet/model.py.
PAPER_SHAPES = {
    "conv1": (53, 109, 96),
    "pool1": (26, 54, 96),
    "conv2": (12, 26, 256),
    "pool2": (6, 13, 256),
    "conv3": (6, 13, 512),
    "conv4": (6, 13, 512),
    "conv5": (6, 13, 512),
    "pool5": (3, 6, 512),
    "flatten": (9216,),
    "pfirrmann_fc6": (4096,),
    "narrowing_fc7": (1024,),
    "pfirrmann_fc8": (5,),
    "narrowing_fc8": (4,),
    "upper_endplate": (2,),
    "lower_marrow": (2,),
}
PAPER_LAYER_PARAMS = {
    "conv1": 7 * 7 * 9 * 96 + 96,
    "conv2": 5 * 5 * 96 * 256 + 256,
    "conv3": 3 * 3 * 256 * 512 + 512,
    "conv4": 3 * 3 * 512 * 512 + 512,
    "conv5": 3 * 3 * 512 * 512 + 512,
    "upper_marrow_fc6": 3 * 6 * 512 * 4096 + 4096,
    "upper_marrow_fc7": 4096 * 1024 + 1024,
    "pfirrmann_fc8": 1024 * 5 + 5,
    "narrowing_fc8": 1024 * 4 + 4,
    "lower_endplate_fc8": 1024 * 2 + 2,
}
PAPER_TRUNK = 42_432 + 614_656 + 1_180_160 + 2 * 2_359_808
PAPER_PARAMS = PAPER_TRUNK + 6 * (37_752_832 + 4_195_328) + 1025 * (5 + 4 + 2 + 2 + 2 + 2)
TINY = {"conv_filters": (4, 4, 4, 4, 4), "fc_units": (8, 8), "input_mean": 0.0}


@pytest.fixture(scope="module")
def paper_model():
    return build_model("paper")


class TestPaperPreset(TestCase):
    def test_parameter_count_and_shapes(self, paper_model):
        assert PAPER_PARAMS == 258_263_249
        self.run_paper_spec_test(
            paper_model, expected_params=PAPER_PARAMS + 9, expected_shapes=PAPER_SHAPES
        )
        trainable = sum(int(np.prod(w.shape)) for w in paper_model.trainable_weights)
        assert trainable == PAPER_PARAMS
        assert count_parameters(get_config("paper")) == PAPER_PARAMS

    @pytest.mark.parametrize("layer, params", sorted(PAPER_LAYER_PARAMS.items()))
    def test_layer_parameters(self, paper_model, layer, params):
        assert paper_model.get_layer(layer).count_params() == params

    def test_branch_after_conv5(self, paper_model):
        names = {layer.name for layer in paper_model.layers}
        assert {"conv1", "conv2", "conv3", "conv4", "conv5"} <= names
        for task in PRESETS["paper"]["tasks"]:
            assert f"{task}_fc6" in names and f"{task}_fc7" in names
            assert f"{task}_conv5" not in names
        assert "fc6" not in names
        assert sorted(paper_model.output_names) == sorted(PRESETS["paper"]["tasks"])

    def test_table_rows_match_layers(self, paper_model):
        for row in parameter_table(get_config("paper")):
            name = row["layer"]
            if row["copies"] > 1:
                name = f"pfirrmann_{name}"
            layer = paper_model.get_layer(name)
            assert tuple(layer.output.shape[1:]) == tuple(row["output_shape"])
            assert layer.count_params() == row["params"]


@pytest.mark.parametrize("branch_point", BRANCH_POINTS)
def test_branch_points_duplicate_the_later_stages(branch_point):
    model = build_model("paper", branch_point=branch_point, **TINY)
    config = get_config("paper", branch_point=branch_point, **TINY)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == count_parameters(config)
    names = {layer.name for layer in model.layers}
    stages = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    shared = 0 if branch_point == "none" else stages.index(branch_point) + 1
    for i, stage in enumerate(stages):
        per_task = {f"{task}_{stage}" for task in config["tasks"]}
        if i < shared:
            assert stage in names and not per_task & names
        else:
            assert per_task <= names and stage not in names


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "papr"}, "Unknown preset 'papr'. Available: ["),
        ({"branch_point": "conv9"}, "Unknown branch_point 'conv9'"),
        ({"dropuot": 0.1}, "Unknown override 'dropuot'"),
        ({"tasks": {"pfirrmann": 1}}, "at least 2 classes"),
        ({"conv_filters": (1, 2)}, "conv_filters"),
    ],
)
def test_bad_configuration_raises(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_model(**({"preset": "paper"} | kwargs))


def test_class_counts_are_configuration():
    model = build_model("spider", **TINY)
    assert model.get_layer("narrowing").output.shape[-1] == 2
    model = build_model("paper", tasks={"pfirrmann": 5, "narrowing": 3}, **TINY)
    assert sorted(model.output_names) == ["narrowing", "pfirrmann"]
    assert model.get_layer("narrowing").output.shape[-1] == 3


def test_demo_forward_pass_and_explain_outputs():
    model = build_model("demo")
    assert model.count_params() < 1_000_000
    x = np.random.default_rng(0).random((2, 112, 224, 9)).astype("float32")
    out = model(x, training=False)
    assert sorted(out) == sorted(PRESETS["demo"]["tasks"])
    for task, classes in PRESETS["demo"]["tasks"].items():
        probs = np.asarray(out[task])
        assert probs.shape == (2, classes)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    maps = explain_model(model)(x, training=False)
    for task in PRESETS["demo"]["tasks"]:
        logits = np.asarray(maps[f"{task}_fc8"])
        softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(softmax, np.asarray(out[task]), atol=1e-5)
        assert maps[f"{task}_conv5"].shape == (2, 6, 13, PRESETS["demo"]["conv_filters"][4])


def test_gradient_step_ignores_a_task_without_labels():
    """One SGD step: the losses fall, and a task whose labels are all missing is left untouched."""
    keras.utils.set_random_seed(1)
    model = build_model("demo", dropout=0.0)
    tasks = PRESETS["demo"]["tasks"]
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05),
        loss={task: MaskedSparseCategoricalCrossentropy() for task in tasks},
    )
    rng = np.random.default_rng(0)
    x = rng.random((4, 112, 224, 9)).astype("float32")
    y = {task: rng.integers(0, classes, 4).astype("int32") for task, classes in tasks.items()}
    y["lower_marrow"][:] = -1
    before = {w.path: np.array(w) for w in model.trainable_weights}
    first = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    model.train_on_batch(x, y)
    after = {w.path: np.array(w) for w in model.trainable_weights}
    changed = {path for path in before if not np.allclose(before[path], after[path])}
    assert any(path.startswith("conv1/") for path in changed)
    assert any(path.startswith("pfirrmann_fc8/") for path in changed)
    assert not any(path.startswith("lower_marrow_") for path in changed)
    assert model.evaluate(x, y, verbose=0, return_dict=True)["loss"] < first


class TestSaving(TestCase):
    def test_save_and_reload(self, tmp_path):
        model = build_model("paper", **TINY)
        set_input_mean(model, np.linspace(0.3, 0.6, 9))
        x = np.random.default_rng(2).random((2, 112, 224, 9)).astype("float32")
        self.run_model_saving_test(model, x, tmp_path)

    def test_weights_argument_loads_a_local_file(self, tmp_path):
        model = build_model("paper", **TINY)
        path = tmp_path / "tiny.weights.h5"
        model.save_weights(path)
        again = build_model("paper", weights=path, **TINY)
        for a, b in zip(model.get_weights(), again.get_weights()):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match="weights file not found"):
            build_model("paper", weights=tmp_path / "missing.weights.h5", **TINY)


def test_channel_mean_subtraction_layer():
    layer = ChannelMeanSubtraction(mean=[0.1, 0.2, 0.3], name="m")
    x = np.ones((1, 2, 2, 3), "float32")
    np.testing.assert_allclose(np.asarray(layer(x))[0, 0, 0], [0.9, 0.8, 0.7], atol=1e-6)
    clone = ChannelMeanSubtraction.from_config(layer.get_config())
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(layer(x)))
    assert not layer.trainable_weights
