"""Shared test helpers, in the spirit of keras-hub's `TestCase`: one call per kind of check.

- `run_layer_test`: config round trip, symbolic and eager call, one training step.
- `run_model_saving_test`: `.h5` and `.keras` save and reload (in this process, and optionally in a
  fresh one that only imports the package), outputs equal.
- `run_paper_spec_test`: build a paper preset without training; check the parameter count and the
  named layers' output shapes.
- `run_module`: run `python -m PKG ...` in a subprocess and return (exit status, stdout, stderr).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

from common.export import load_model
from common.export import save_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _as_list(outputs):
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o) for o in outputs]
    return [np.asarray(outputs)]


def subprocess_env(**extra):
    """Environment for child Python processes: quiet TensorFlow, the repository importable."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_ports(count):
    """`count` TCP ports free on localhost right now (for multi-worker `TF_CONFIG`s in tests)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_module(module, *args, timeout=600, env=None, cwd=None):
    """Runs `python -m module args...`; returns `(returncode, stdout, stderr)`."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or subprocess_env(),
        cwd=cwd or REPO_ROOT,
    )
    return proc.returncode, proc.stdout, proc.stderr


class TestCase:
    """Mix-in for pytest test classes (plain methods; no unittest machinery)."""

    def assertAllClose(self, actual, expected, atol=1e-6, rtol=1e-6):  # noqa: N802 (Keras' naming)
        for a, e in zip(_as_list(actual), _as_list(expected), strict=True):
            np.testing.assert_allclose(a, e, atol=atol, rtol=rtol)

    def run_layer_test(
        self,
        layer_cls,
        init_kwargs,
        input_shape,
        *,
        expected_output_shape=None,
        expected_num_trainable_weights=None,
        seed=0,
    ):
        """Config round trip, symbolic and eager calls agree on shapes, one training step runs.

        Args:
            layer_cls: the layer class.
            init_kwargs: constructor arguments.
            input_shape: full input shape including the batch (e.g. `(2, 8, 8, 3)`).
            expected_output_shape: shape (or tuple of shapes for several outputs) of an eager call.
            expected_num_trainable_weights: count of trainable weights after building.
        """
        layer = layer_cls(**init_kwargs)
        config = layer.get_config()
        clone = layer_cls.from_config(config)
        assert clone.get_config() == config, "get_config/from_config does not round-trip"
        x = np.random.default_rng(seed).uniform(size=input_shape).astype("float32")
        eager = layer(x)
        symbolic = layer_cls(**init_kwargs)(keras.Input(batch_shape=input_shape))
        eager_shapes = [tuple(o.shape) for o in tf.nest.flatten(eager)]
        symbolic_shapes = [tuple(o.shape) for o in tf.nest.flatten(symbolic)]
        assert eager_shapes == symbolic_shapes, (eager_shapes, symbolic_shapes)
        if expected_output_shape is not None:
            expected = expected_output_shape
            if not isinstance(expected[0], (tuple, list)):
                expected = [expected]
            assert eager_shapes == [tuple(s) for s in expected], (eager_shapes, expected)
        if expected_num_trainable_weights is not None:
            assert len(layer.trainable_weights) == expected_num_trainable_weights
        # one training step: the loss must change the weights
        inputs = keras.Input(batch_shape=input_shape)
        outputs = layer_cls(**init_kwargs)(inputs)
        flat = [keras.layers.Flatten()(o) for o in tf.nest.flatten(outputs)]
        merged = flat[0] if len(flat) == 1 else keras.layers.Concatenate()(flat)
        model = keras.Model(inputs, keras.layers.Dense(1)(merged))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [np.array(w) for w in model.trainable_weights]
        model.train_on_batch(x, np.ones((input_shape[0], 1), "float32"))
        after = [np.array(w) for w in model.trainable_weights]
        assert any(not np.allclose(b, a) for b, a in zip(before, after)), (
            "a training step changed nothing"
        )
        return layer

    def run_model_saving_test(
        self, model, inputs, tmp_path, *, fresh_process_import=None, plain_keras=True, atol=1e-5
    ):
        """Saves `model` as `.h5` and `.keras`, reloads, compares outputs with the original.

        Args:
            model: a built Keras model.
            inputs: a batch the model accepts (array or dict of arrays).
            tmp_path: a folder for the files.
            fresh_process_import: a module name (e.g. `"kneeoa"`): also reload both files in a new
                Python process that imports only that module, and compare there.
            atol: tolerance.
        """
        expected = _as_list(model(inputs, training=False))
        for suffix in (".h5", ".keras"):
            path = os.path.join(os.fspath(tmp_path), f"model{suffix}")
            save_model(model, path)
            reloaded = load_model(path)
            self.assertAllClose(reloaded(inputs, training=False), expected, atol=atol, rtol=1e-5)
            assert [w.shape for w in reloaded.weights] == [w.shape for w in model.weights]
        if fresh_process_import:
            data_path = os.path.join(os.fspath(tmp_path), "io.npz")
            flat_inputs = inputs if isinstance(inputs, dict) else {"__single__": inputs}
            np.savez(
                data_path,
                **{f"in_{k}": np.asarray(v) for k, v in flat_inputs.items()},
                **{f"out_{i:03d}": v for i, v in enumerate(expected)},
            )
            script = textwrap.dedent(
                f"""
                import sys, numpy as np, keras
                import {fresh_process_import}
                data = np.load({data_path!r})
                inputs = {{k[3:]: data[k] for k in data.files if k.startswith("in_")}}
                if list(inputs) == ["__single__"]:
                    inputs = inputs["__single__"]
                expected = [data[k] for k in sorted(data.files) if k.startswith("out_")]
                from common.export import load_model
                loader = keras.models.load_model if {plain_keras!r} else load_model
                for suffix in (".h5", ".keras"):
                    model = loader({os.fspath(tmp_path)!r} + "/model" + suffix)
                    out = model(inputs, training=False)
                    out = [np.asarray(out[k]) for k in sorted(out)] if isinstance(out, dict) else \\
                        [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
                    for a, e in zip(out, expected, strict=True):
                        np.testing.assert_allclose(a, e, atol={atol}, rtol=1e-5)
                print("RELOAD-OK")
                """
            )
            proc = subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                text=True,
                env=subprocess_env(),
                timeout=600,
            )
            assert proc.returncode == 0 and "RELOAD-OK" in proc.stdout, proc.stderr[-3000:]

    def run_paper_spec_test(self, model, *, expected_params=None, expected_shapes=None, rtol=0.0):
        """Checks a paper preset's parameter count and named layers' output shapes (no training).

        Args:
            model: the built model.
            expected_params: the paper's parameter count (exact unless `rtol` > 0).
            expected_shapes: dict layer name -> output shape without the batch dimension.
            rtol: relative tolerance on the parameter count (for papers that round, e.g. "~7.7M").
        """
        if expected_params is not None:
            params = model.count_params()
            if rtol:
                assert abs(params - expected_params) <= rtol * expected_params, (
                    f"{params:,} parameters, paper {expected_params:,} (rtol {rtol})"
                )
            else:
                assert params == expected_params, (
                    f"{params:,} parameters, paper {expected_params:,}"
                )
        for name, shape in (expected_shapes or {}).items():
            layer = model.get_layer(name)
            got = tuple(layer.output.shape[1:])
            assert got == tuple(shape), f"{name}: {got}, paper {tuple(shape)}"
