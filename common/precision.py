"""Compute precision of a run (`--precision`): the Keras dtype policy, set before a model is built or loaded.

- `float32`: everything in float32.
- `mixed_float16`: layers compute in float16 and keep float32 variables; the training engine
  (`common.training.Trainer`) then scales the loss (`keras.optimizers.LossScaleOptimizer`).
- `mixed_bfloat16`: layers compute in bfloat16 (same exponent range as float32: no loss scaling).
- `auto`: `mixed_float16` on a CUDA GPU of compute capability 7.0 or higher (tensor cores), else
  `float32`. It never picks bfloat16 on a CPU: on the suite's 2-core CPU a bfloat16 training step
  measured slower than a float32 one (README, "Precision").

Outputs, losses and metrics stay float32: each package's output layers are built with
`dtype="float32"`, and the engine casts every loss to float32. A model saved under a mixed policy
keeps its layers' policies in the file; `convert_model` rebuilds a loaded model for the precision of
the current run (`evaluate`/`predict --precision`).
"""

from __future__ import annotations

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
_REQUESTED = {"policy": None}


def _gpu_compute_capabilities():
    import tensorflow as tf

    capabilities = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        if capability:
            capabilities.append(tuple(int(v) for v in capability))
    return capabilities


def resolve_precision(name="auto", *, capabilities=None):
    """The dtype policy name of a `--precision` value.

    Args:
        name: one of `PRECISIONS` (underscores or hyphens).
        capabilities: CUDA compute capabilities of the visible GPUs as `(major, minor)` tuples;
            default: asked from TensorFlow (which does not start its runtime for this).

    Returns:
        `"float32"`, `"mixed_float16"` or `"mixed_bfloat16"`.
    """
    key = str(name).lower().replace("-", "_")
    if key not in PRECISIONS:
        raise ValueError(f"Unknown precision '{name}'. Available: {list(PRECISIONS)}")
    if key != "auto":
        return key
    if capabilities is None:
        capabilities = _gpu_compute_capabilities()
    if capabilities and min(capabilities) >= (7, 0):
        return "mixed_float16"
    return "float32"


def set_precision(name="auto"):
    """Sets Keras' global dtype policy for a `--precision` value; call before building or loading.

    Models loaded afterwards through `common.export.load_model` are converted to this policy
    (`convert_model`).

    Args:
        name: one of `PRECISIONS`.

    Returns:
        The policy name set.
    """
    import keras

    policy = resolve_precision(name)
    keras.mixed_precision.set_global_policy(policy)
    _REQUESTED["policy"] = policy
    return policy


def requested_policy():
    """The policy a `set_precision` call asked for in this process, or None."""
    return _REQUESTED["policy"]


def reset_precision():
    """Back to float32 and no requested policy (tests)."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    _REQUESTED["policy"] = None


def _policy_entries(config):
    """Every serialised `DTypePolicy` dict inside a layer or model config."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and "name" in config.get("config", {}):
            return [config]
        return [entry for value in config.values() for entry in _policy_entries(value)]
    if isinstance(config, list):
        return [entry for value in config for entry in _policy_entries(value)]
    return []


def _output_layer_names(config):
    import keras

    names = set()
    for entry in keras.tree.flatten(config.get("output_layers", [])):
        if isinstance(entry, str):
            names.add(entry)
    return names


def convert_model(model, policy=None):
    """A functional model rebuilt so that its layers compute in `policy`; its outputs stay float32.

    Every layer (nested models included) takes `policy`, except the model's own output layers,
    which compute in float32. The weights are copied (variables are float32 under every policy).
    Models that are not functional (e.g. keras-hub's detector) and models already so are returned
    unchanged.

    Args:
        model: a loaded `keras.Model`.
        policy: a policy name; default: the one `set_precision` set (None: no change).

    Returns:
        The model, or a converted copy.
    """
    import copy

    policy = policy or requested_policy()
    if policy is None or type(model).__name__ != "Functional":
        return model
    config = copy.deepcopy(model.get_config())
    outputs = _output_layer_names(config)
    changed = False
    for layer in config.get("layers", []):
        wanted = "float32" if layer.get("name") in outputs else policy
        for entry in _policy_entries(layer.get("config", {})):
            if entry["config"]["name"] != wanted:
                entry["config"]["name"] = wanted
                changed = True
    if not changed:
        return model
    converted = model.__class__.from_config(config)
    converted.set_weights(model.get_weights())
    return converted
