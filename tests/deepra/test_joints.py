"""Stage 2 joint models: paper presets (Table 2, §4.3.1, Fig. 2), demo model, explanation maps."""

import keras
import numpy as np
import pytest

from common.layers import AttentionBranch
from common.layers import LocallyConnected2D
from common.testing import TestCase
from deepra.joints import JOINT_PRESETS
from deepra.joints import joint_config
from deepra.model import build_model
from deepra.model import explain_model

# preset -> (input size §4.3.1, backbone Table 2, backbone feature map, outputs Table 2)
PAPER_SPECS = {
    "hand-erosion": ((256, 256), "efficientnetb3", (8, 8, 1536), 2),
    "hand-narrowing": ((256, 256), "efficientnetb3", (8, 8, 1536), 2),
    "foot-narrowing": ((256, 256), "efficientnetb4", (8, 8, 1792), 1),
    "foot-erosion": ((256, 256), "efficientnetb4", (8, 8, 1792), 1),
    "wrist": ((300, 300), "efficientnetb5", (10, 10, 2048), 6),
}
# keras.applications EfficientNet parameter counts without the classifier (Keras' table minus the
# 1000-class top), i.e. the B3/B4/B5 backbones of Table 2 exactly.
BACKBONE_PARAMS = {
    "efficientnetb3": 10_783_535,
    "efficientnetb4": 17_673_823,
    "efficientnetb5": 28_513_527,
}


@pytest.fixture(scope="module", params=sorted(PAPER_SPECS))
def paper_model(request):
    return request.param, build_model(request.param)


def test_paper_preset_spec(paper_model):
    name, model = paper_model
    size_hw, backbone, feature_shape, n_outputs = PAPER_SPECS[name]
    config = joint_config(name)
    assert config["backbone"] == backbone
    assert tuple(model.input.shape[1:3]) == size_hw  # §4.3.1: 256x256 fingers, 300x300 wrists
    assert len(model.outputs) == n_outputs  # Table 2, "Number of Predictions"
    bb = model.get_layer("backbone")
    assert bb.count_params() == BACKBONE_PARAMS[backbone]
    TestCase().run_paper_spec_test(
        model,
        expected_shapes={"backbone": feature_shape, **{o: (1,) for o in config["output_names"]}},
    )
    # Fig. 2: attention = BN, 1x1 convs, 1x1 LocallyConnected2D with sigmoid, over the features
    attention = model.get_layer("attention")
    assert isinstance(attention, AttentionBranch)
    assert isinstance(attention.mask_layer, LocallyConnected2D)
    assert attention.mask_layer.kernel_size == (1, 1)
    assert keras.activations.serialize(attention.mask_layer.activation) == "sigmoid"
    assert tuple(attention.output[1].shape[1:]) == feature_shape[:2] + (1,)
    # §4.3.1: 70% of the backbone trainable, the first layers frozen
    body = [layer for layer in bb.layers if not isinstance(layer, keras.layers.InputLayer)]
    flags = [layer.trainable for layer in body]
    assert abs(sum(flags) - 0.7 * len(body)) <= 1
    assert not any(flags[: len(body) - sum(flags)]) and all(flags[len(body) - sum(flags) :])
    momenta = {b.momentum for b in body if isinstance(b, keras.layers.BatchNormalization)}
    assert momenta == {0.99}  # Keras' EfficientNet as it is


@pytest.mark.parametrize(
    "preset, key, expected",
    [  # §4.3.1 training specification
        ("hand-erosion", "learning_rate", 1e-3),
        ("wrist", "reduce_lr_factor", 0.2),
        ("foot-erosion", "reduce_lr_patience", 5),
        ("hand-narrowing", "epochs", 200),
        ("foot-narrowing", "batch_size", 32),
        ("wrist", "trainable_fraction", 0.7),
        ("wrist", "test_fraction", 0.2),
        ("hand-erosion", "loss", "mse"),
        ("hand-erosion", "flip_lr", True),
        ("hand-erosion", "balance_zero_scores", True),
    ],
)
def test_paper_training_configuration(preset, key, expected):
    assert JOINT_PRESETS[preset][key] == expected


def test_paper_is_hand_erosion():
    paper = joint_config("paper")
    assert paper["backbone"] == "efficientnetb3"
    assert paper["output_names"] == ("distal_erosion", "proximal_erosion")


@pytest.mark.parametrize(
    "task, names",
    [
        (
            "erosion",
            [
                "erosion_mc1",
                "erosion_mul",
                "erosion_nav",
                "erosion_lunate",
                "erosion_radius",
                "erosion_ulna",
            ],
        ),
        (
            "narrowing",
            [
                "narrowing_cmc3",
                "narrowing_cmc4",
                "narrowing_cmc5",
                "narrowing_mna",
                "narrowing_capnlun",
                "narrowing_radcar",
            ],
        ),
    ],
)
def test_wrist_outputs_by_task(task, names):
    assert list(joint_config("wrist", task=task)["output_names"]) == names


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "papr"}, "Unknown preset 'papr'. Available: \\["),
        ({"preset": "demo", "colour": 3}, "Unknown override 'colour'"),
        ({"preset": "demo", "trainable_fraction": 1.5}, "trainable_fraction must be in"),
        ({"preset": "demo", "backbone": "vgg"}, "Unknown backbone 'vgg'"),
    ],
)
def test_bad_presets_and_overrides(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


@pytest.fixture(scope="module")
def demo_model():
    return build_model("demo")


def test_demo_forward_explain_and_one_step(demo_model):
    model = demo_model
    x = np.random.default_rng(0).uniform(size=(2, 96, 96, 1)).astype("float32")
    out = model(x)
    assert sorted(out) == ["distal_erosion", "proximal_erosion"]
    assert all(tuple(v.shape) == (2, 1) for v in out.values())
    maps = explain_model(model)(x)
    assert tuple(maps["attention_mask"].shape) == (2, 12, 12, 1)
    assert tuple(maps["features"].shape) == (2, 12, 12, 640)
    mask = np.asarray(maps["attention_mask"])
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={k: "mse" for k in out})
    y = {k: np.full((2, 1), 2.0, "float32") for k in out}
    before = [np.array(w) for w in model.trainable_weights]
    model.train_on_batch(x, y)
    after = [np.array(w) for w in model.trainable_weights]
    changed = sum(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
    assert changed > 0.9 * len(before)


def test_demo_saving_round_trip(tmp_path):
    model = build_model("demo")
    x = np.random.default_rng(1).uniform(size=(2, 96, 96, 1)).astype("float32")
    TestCase().run_model_saving_test(model, x, tmp_path)


def test_demo_batch_norm_momentum(demo_model):
    backbone = demo_model.get_layer("backbone")
    momenta = {
        b.momentum for b in backbone.layers if isinstance(b, keras.layers.BatchNormalization)
    }
    assert momenta == {0.9}


def test_trainable_fraction_override():
    model = build_model("demo", trainable_fraction=0.5)
    layers = model.get_layer("backbone").layers
    body = [layer for layer in layers if not isinstance(layer, keras.layers.InputLayer)]
    assert abs(sum(layer.trainable for layer in body) - 0.5 * len(body)) <= 1
    assert not body[0].trainable and body[-1].trainable
