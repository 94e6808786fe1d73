"""The models on any Keras backend, a fast command line, and Keras objects registered on import.

- Every package's demo model (and deepra's demo detector) builds, runs and trains one `fit` step
  under `KERAS_BACKEND=jax` in a process where `import tensorflow` raises, with the parameter
  count of the TensorFlow build, and reads the TensorFlow build's `.weights.h5` with outputs
  equal within 1e-4.
- `import PKG` and building the CLI parser import neither TensorFlow nor Keras; `python -m PKG
  --help` takes a small multiple of a bare `python -c pass` (a ratio measured side by side).
- `import PKG` first, Keras after: `keras.models.load_model` still reads each package's `.keras`.

This module imports no TensorFlow or Keras at its top: the TensorFlow-free child processes import
it for `DEMO_MODELS` and the helpers below.
"""

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("kneeoa", "deepra", "spinenet", "boneage", "mura")

# key -> (package, preset, overrides): the smallest model of each package (the `demo` presets).
DEMO_MODELS = {
    "kneeoa": ("kneeoa", "demo", {}),
    "deepra-joints": ("deepra", "demo", {}),
    "deepra-detector": ("deepra", "demo-hand", {}),
    "spinenet": ("spinenet", "demo", {}),
    "boneage": ("boneage", "demo", {}),
    "mura": ("mura", "demo", {}),
}
DETECTOR_IMAGE_HW = (128, 128)  # a multiple of 2**max_level (16) of the demo detector
BATCH = 2
# XLA's CPU compiler without its expensive LLVM passes: half the CPU time of the JAX child, same
# numbers within the test's tolerances.
FAST_XLA_CPU = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# Prepended to a child's code: `import tensorflow` (and what needs it) raises ImportError, as on a
# machine where TensorFlow is not installed.
BLOCK_TENSORFLOW = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_text", "tf_keras"):
                raise ModuleNotFoundError(f"TensorFlow is blocked: import {name}", name=name)
            return None

    sys.meta_path.insert(0, _NoTensorFlow())
    """
)


def child_env(**extra):
    """Environment of a child process: this checkout importable, quiet TensorFlow."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra)
    return env


def run_python(code, *, timeout=600, **env):
    """Runs `python -c code` in the repository; returns the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=child_env(**env),
    )


def build_demo(key):
    """Builds one of `DEMO_MODELS` with the process's Keras backend."""
    import importlib

    package, preset, overrides = DEMO_MODELS[key]
    return importlib.import_module(package).build_model(preset, **overrides)


def random_inputs(model, key, seed=0):
    """A batch of `BATCH` random inputs for `model`, keyed by input name."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        shape = list(tensor.shape)
        if key == "deepra-detector":
            shape = [None, *DETECTOR_IMAGE_HW, shape[-1]]
        shape = [BATCH] + [int(d) for d in shape[1:]]
        if name == "sex":
            inputs[name] = rng.integers(0, 2, size=shape).astype("float32")
        else:
            inputs[name] = rng.uniform(0.0, 1.0, size=shape).astype("float32")
    return inputs if len(inputs) > 1 else next(iter(inputs.values()))


def random_targets(model, key, seed=1):
    """Training targets for one step: one array per output (boxes and labels for a detector)."""
    rng = np.random.default_rng(seed)
    if key == "deepra-detector":
        height, width = DETECTOR_IMAGE_HW
        corner = rng.uniform(0, 0.5, size=(BATCH, 3, 2)) * [width, height]
        size = rng.uniform(0.2, 0.45, size=(BATCH, 3, 2)) * [width, height]
        boxes = np.concatenate([corner, corner + size], axis=-1).astype("float32")
        return {"boxes": boxes, "labels": rng.integers(0, 6, size=(BATCH, 3)).astype("int32")}
    return {
        name: rng.uniform(0.0, 1.0, size=(BATCH, *[int(d) for d in tensor.shape[1:]])).astype(
            "float32"
        )
        for name, tensor in zip(model.output_names, model.outputs)
    }


def outputs_as_list(outputs):
    """Model outputs as a list of numpy arrays, dict outputs in key order."""
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o) for o in outputs]
    return [np.asarray(outputs)]


def train_one_step(model, key):
    """Compiles `model` and runs one training step on random arrays; returns the loss.

    `model.fit` for the models; `train_on_batch` for the detector, whose keras-hub `fit` builds
    its input pipeline with TensorFlow or Grain (neither is there without TensorFlow).
    """
    import keras

    x, y = random_inputs(model, key, seed=2), random_targets(model, key)
    if key == "deepra-detector":
        model.compile(optimizer=keras.optimizers.SGD(1e-3))
        return float(np.ravel(model.train_on_batch(x, y))[0])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    return float(history.history["loss"][-1])


# The child of `test_demo_models_on_jax_without_tensorflow`: builds every demo model under JAX,
# loads the TensorFlow build's weights, compares outputs, trains one step.
JAX_CHILD = BLOCK_TENSORFLOW + textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import keras
    from tests.test_backends import (
        DEMO_MODELS, build_demo, outputs_as_list, random_inputs, train_one_step,
    )

    folder = sys.argv[1]
    report = {"backend": keras.backend.backend(), "models": {}}
    for key in DEMO_MODELS:
        start = time.perf_counter()
        model = build_demo(key)
        params = int(model.count_params())
        saved = np.load(f"{folder}/{key}.weights.npz")
        saved = [saved[k] for k in sorted(saved.files)]
        as_numpy = keras.ops.convert_to_numpy
        differed = any(not np.allclose(as_numpy(w), s) for w, s in zip(model.weights, saved))
        model.load_weights(f"{folder}/{key}.weights.h5")
        loaded = len(model.weights) == len(saved) and all(
            np.array_equal(as_numpy(w), s) for w, s in zip(model.weights, saved)
        )
        data = np.load(f"{folder}/{key}.npz")
        inputs = {k[3:]: data[k] for k in data.files if k.startswith("in_")}
        inputs = inputs["__single__"] if list(inputs) == ["__single__"] else inputs
        expected = [data[k] for k in sorted(data.files) if k.startswith("out_")]
        got = outputs_as_list(model(inputs, training=False))
        diff = max(float(np.max(np.abs(a - e))) for a, e in zip(got, expected, strict=True))
        before = [as_numpy(w) for w in model.trainable_weights]
        loss = train_one_step(model, key)
        changed = any(
            not np.array_equal(b, as_numpy(a)) for b, a in zip(before, model.trainable_weights)
        )
        report["models"][key] = {
            "params": params, "max_abs_diff": diff, "loss": loss, "weights_changed": changed,
            "differed_before_loading": differed, "loaded_exactly": loaded,
            "seconds": time.perf_counter() - start,
        }
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    print("REPORT " + json.dumps(report))
    """
)


def test_demo_models_on_jax_without_tensorflow(tmp_path):
    import keras

    assert keras.backend.backend() == "tensorflow"
    expected_params = {}
    for key in DEMO_MODELS:
        model = build_demo(key)
        expected_params[key] = int(model.count_params())
        inputs = random_inputs(model, key)
        outputs = outputs_as_list(model(inputs, training=False))
        flat = inputs if isinstance(inputs, dict) else {"__single__": inputs}
        np.savez(
            tmp_path / f"{key}.npz",
            **{f"in_{k}": v for k, v in flat.items()},
            **{f"out_{i:03d}": v for i, v in enumerate(outputs)},
        )
        model.save_weights(tmp_path / f"{key}.weights.h5")
        weights = {f"w{i:04d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
        np.savez(tmp_path / f"{key}.weights.npz", **weights)
    code = JAX_CHILD.replace("sys.argv[1]", repr(str(tmp_path)))
    proc = run_python(code, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_XLA_CPU)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")][-1]
    report = json.loads(line[len("REPORT ") :])
    assert report["backend"] == "jax"
    assert report["tensorflow_imported"] is False
    assert set(report["models"]) == set(DEMO_MODELS)
    for key, result in report["models"].items():
        assert result["params"] == expected_params[key], key
        # control: the JAX build starts from other random weights, and loading replaces them all
        assert result["differed_before_loading"] and result["loaded_exactly"], (key, result)
        assert result["max_abs_diff"] <= 1e-4, (key, result)
        assert np.isfinite(result["loss"]), (key, result)
        assert result["weights_changed"], (key, result)


def test_the_tensorflow_blocker_blocks():
    # the control of the test above: the same blocker makes the TensorFlow-using modules fail
    proc = run_python(BLOCK_TENSORFLOW + "import kneeoa\nkneeoa.train\n", KERAS_BACKEND="jax")
    assert proc.returncode != 0
    assert "TensorFlow is blocked" in proc.stderr


def test_import_and_parser_import_neither_tensorflow_nor_keras():
    code = textwrap.dedent(
        f"""
        import sys
        from common.cli import build_parser
        for name in {PACKAGES!r}:
            package = __import__(name)
            build_parser(package).format_help()
            assert sorted(package.PRESETS), name
        heavy = sorted(m for m in ("tensorflow", "keras", "jax", "keras_hub") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY []" in proc.stdout


def test_strategy_names_match_common_distribute():
    from common import cli
    from common import distribute

    assert cli.STRATEGIES == distribute.STRATEGIES


def _median_wall_time(argv, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, env=child_env())
        times.append(time.perf_counter() - start)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return statistics.median(times), proc.stdout


def test_help_and_version_are_fast():
    # Ratio to a bare interpreter, measured side by side: `--help` imports argparse, json and the
    # package's data (~3x `python -c pass` here). Importing Keras alone is ~100x, TensorFlow
    # ~500x, so a bound of 15x fails on either while leaving room for a busy machine.
    bare, _ = _median_wall_time([sys.executable, "-c", "pass"], 5)
    for package in PACKAGES:
        helped, out = _median_wall_time([sys.executable, "-m", package, "--help"], 3)
        assert "--version" in out and "SUBCOMMAND" in out
        assert helped < 15 * bare, f"{package} --help {helped:.3f} s, python -c pass {bare:.3f} s"
    versioned, out = _median_wall_time([sys.executable, "-m", "mura", "--version"], 3)
    assert versioned < 15 * bare
    from common.cli import suite_version

    assert out.strip() == f"msk-radiology-suite {suite_version()}"
    assert suite_version()[0].isdigit()


def test_version_on_every_package():
    import kneeoa
    from common.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser(kneeoa).parse_args(["--version"])
    assert exit_info.value.code == 0
    for package in PACKAGES:
        proc = subprocess.run(
            [sys.executable, "-m", package, "--version"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=child_env(),
        )
        assert proc.returncode == 0 and proc.stdout.startswith("msk-radiology-suite "), package


# The child of `test_keras_objects_registered_when_keras_comes_after_the_package`.
REGISTRATION_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    packages = {packages!r}
    for name in packages:
        __import__(name)
    assert "keras" not in sys.modules and "tensorflow" not in sys.modules
    import keras  # after the packages: the post-import hook registers their Keras objects

    ours = lambda: sorted(k for k in keras.saving.get_custom_objects() if ">" in k)
    registered = ours()
    folder = {folder!r}
    for key in {keys!r}:
        model = keras.models.load_model(f"{{folder}}/{{key}}.keras", compile=False)
        data = np.load(f"{{folder}}/{{key}}.npz")
        inputs = {{k[3:]: data[k] for k in data.files if k.startswith("in_")}}
        inputs = inputs["__single__"] if list(inputs) == ["__single__"] else inputs
        out = model(inputs, training=False)
        out = [np.asarray(out[k]) for k in sorted(out)] if isinstance(out, dict) else [np.asarray(out)]
        expected = [data[k] for k in sorted(data.files) if k.startswith("out_")]
        for a, e in zip(out, expected, strict=True):
            np.testing.assert_allclose(a, e, atol=1e-5, rtol=1e-5)
    # every public name, TensorFlow-using modules included: nothing registers more
    for name in packages:
        package = sys.modules[name]
        for attribute in package.__all__:
            getattr(package, attribute)
    print("REGISTERED " + json.dumps({{"hook": registered, "all": ours()}}))
    """
)


def test_keras_objects_registered_when_keras_comes_after_the_package(tmp_path):
    from common.export import save_model

    keys = ("kneeoa", "deepra-detector", "spinenet", "mura")
    for key in keys:
        model = build_demo(key)
        inputs = random_inputs(model, key)
        outputs = outputs_as_list(model(inputs, training=False))
        flat = inputs if isinstance(inputs, dict) else {"__single__": inputs}
        np.savez(
            tmp_path / f"{key}.npz",
            **{f"in_{k}": v for k, v in flat.items()},
            **{f"out_{i:03d}": v for i, v in enumerate(outputs)},
        )
        save_model(model, str(tmp_path / f"{key}.keras"))
    code = REGISTRATION_CHILD.format(packages=PACKAGES, folder=str(tmp_path), keys=keys)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("REGISTERED ")][-1]
    found = json.loads(line[len("REGISTERED ") :])
    assert found["hook"] == found["all"]
    assert {
        "common>AttentionBranch",
        "spinenet>ChannelMeanSubtraction",
        "mura>RadiographPreprocessing",
        "deepra>FingerDetector",
    } <= set(found["hook"])


def test_a_submodule_import_does_not_hide_the_public_function():
    code = textwrap.dedent(
        """
        import kneeoa
        import kneeoa.train  # binds the module kneeoa.train on the package
        from kneeoa.evaluate import predict  # noqa: F401
        assert callable(kneeoa.train) and kneeoa.train.__module__ == "kneeoa.train"
        assert callable(kneeoa.evaluate) and kneeoa.evaluate.__name__ == "evaluate"
        print("OK")
        """
    )
    proc = run_python(code)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
