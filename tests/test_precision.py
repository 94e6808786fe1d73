"""Mixed precision in every package: bfloat16 steps match float32's, outputs stay float32, reload."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.export import load_model
from common.precision import convert_model
from common.precision import reset_precision
from common.precision import resolve_precision
from common.precision import set_precision
from common.testing import TestCase
from common.training import Trainer

PACKAGES = ("kneeoa", "deepra", "spinenet", "boneage", "mura")
# each package's demo architecture at a small input (a few seconds per step in bfloat16 on a CPU)
TINY = {
    "kneeoa": {"image_size_hw": (48, 32), "trunk_filters": (8, 8, 8, 8)},
    "deepra": {"image_size_hw": (48, 48), "dropout": 0.0},
    "spinenet": {"input_shape": (48, 96, 9), "dropout": 0.0},
    "boneage": {"image_size_hw": (80, 80)},
    "mura": {"input_shape": (48, 48, 3), "blocks": (2, 2, 2)},
}  # dropout off: the two steps must draw no different random masks
_CCE = "sparse_categorical_crossentropy"
LOSSES = {
    "kneeoa": {"att0": _CCE, "att1": _CCE},
    "deepra": {"distal_erosion": "mse", "proximal_erosion": "mse"},
    "spinenet": {
        "pfirrmann": _CCE,
        "narrowing": _CCE,
        "upper_endplate": _CCE,
        "lower_endplate": _CCE,
        "upper_marrow": _CCE,
        "lower_marrow": _CCE,
    },
    "boneage": {"age_months": "mse"},
    "mura": {"abnormal": "mse"},
}


@pytest.fixture(autouse=True)
def _float32_afterwards():
    reset_precision()
    yield
    reset_precision()


def _batch(model, size=2, seed=0):
    """Random inputs and targets for a model: class indices for softmax outputs, else values."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        shape = [size if d is None else int(d) for d in tensor.shape]
        inputs[name] = rng.uniform(size=shape).astype("float32")
    targets, losses = {}, {}
    for name, tensor in zip(model.output_names, model.outputs):
        classes = int(tensor.shape[-1])
        if classes > 1:
            targets[name] = rng.integers(0, classes, size=(size,)).astype("int32")
            losses[name] = "sparse_categorical_crossentropy"
        else:
            targets[name] = rng.uniform(size=(size, 1)).astype("float32")
            losses[name] = "mse"
    return inputs, targets, losses


def _one_step_loss(package, precision, weights=None):
    set_precision(precision)
    build = lambda: importlib.import_module(package).build_model("demo", **TINY[package])  # noqa: E731
    trainer = Trainer(
        build, losses=LOSSES[package], optimizer="sgd", seed=0, verbose=0, tensorboard=False
    )
    inputs, targets, _ = _batch(trainer.model)
    if weights is not None:
        trainer.model.set_weights(weights)
    dtypes = {t.dtype for t in trainer.model.outputs}
    weights_before = [np.array(w) for w in trainer.model.get_weights()]
    history = trainer.fit(tf.data.Dataset.from_tensors((inputs, targets)), epochs=1)
    return history[0]["loss"], dtypes, weights_before, trainer


@pytest.mark.parametrize("package", PACKAGES)
def test_one_bfloat16_step_matches_float32_and_outputs_stay_float32(package):
    loss32, dtypes32, weights, _ = _one_step_loss(package, "float32")
    loss16, dtypes16, _, trainer = _one_step_loss(package, "mixed_bfloat16", weights)
    assert dtypes32 == dtypes16 == {"float32"}
    computing = {layer.compute_dtype for layer in trainer.model._flatten_layers()}
    assert "bfloat16" in computing, computing  # the control: bfloat16 really computed
    assert np.isfinite(loss16)
    assert abs(loss16 - loss32) <= 0.05 * abs(loss32), (loss16, loss32)


def test_auto_picks_float16_only_on_a_recent_gpu():
    assert resolve_precision("auto", capabilities=[]) == "float32"
    assert resolve_precision("auto", capabilities=[(6, 1)]) == "float32"
    assert resolve_precision("auto", capabilities=[(8, 0), (7, 0)]) == "mixed_float16"
    assert resolve_precision("mixed-bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError, match="Unknown precision 'half'"):
        resolve_precision("half")


class TestMixedReload(TestCase):
    def test_mixed_model_saves_reloads_in_a_fresh_process_and_predicts_float32(self, tmp_path):
        import kneeoa

        set_precision("mixed_bfloat16")
        model = kneeoa.build_model("demo", **TINY["kneeoa"])
        inputs, targets, losses = _batch(model)
        model.compile(optimizer="sgd", loss=losses)
        model.fit(inputs, targets, epochs=1, verbose=0)
        x = inputs["image"]
        # .h5 and .keras, reloaded here and in a fresh process that imports only kneeoa
        self.run_model_saving_test(
            model, x, tmp_path, fresh_process_import="kneeoa", plain_keras=False, atol=1e-3
        )
        expected = model(x)
        for suffix in (".h5", ".keras"):
            reloaded = load_model(tmp_path / f"model{suffix}")  # as saved: bfloat16 inside
            assert reloaded.get_layer("att0").compute_dtype == "float32"
            assert "bfloat16" in {layer.compute_dtype for layer in reloaded._flatten_layers()}
            assert {v.dtype.name for v in reloaded(x).values()} == {"float32"}
            set_precision("float32")  # evaluate/predict --precision float32
            converted = load_model(tmp_path / f"model{suffix}")
            assert {layer.compute_dtype for layer in converted._flatten_layers()} == {"float32"}
            for name, value in converted(x).items():
                assert value.dtype.name == "float32"
                np.testing.assert_allclose(np.asarray(value), expected[name], atol=0.03)
            set_precision("mixed_bfloat16")


def test_convert_model_to_float16_keeps_outputs_float32_and_weights():
    import mura

    model = mura.build_model("demo")
    converted = convert_model(model, "mixed_float16")
    assert converted is not model
    assert converted.get_layer(model.output_names[0]).compute_dtype == "float32"
    assert {layer.compute_dtype for layer in converted.layers[1:-1]} == {"float16"}
    for a, b in zip(model.get_weights(), converted.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert convert_model(model, "float32") is model  # nothing to change
    assert convert_model(model) is model  # no precision requested
    assert isinstance(load_model, object) and keras.config.dtype_policy().name == "float32"
