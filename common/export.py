"""Saving and loading models: atomic `.h5` / `.keras` files, SavedModel export for serving.

`.h5` is a legacy format in Keras 3: objects registered with `register_keras_serializable` reload by
name; keras-hub classes are not found by name in `.h5` files, so `load_model` passes them as custom
objects. Loading always uses Keras' `safe_mode` (no arbitrary code, hence no Lambda layers).
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import warnings

import keras

FORMATS = (".keras", ".h5")


def _temporary_path(path):
    folder, name = os.path.split(os.fspath(path))
    for suffix in FORMATS:
        if name.endswith(suffix):
            return os.path.join(folder, f".{name[: -len(suffix)]}.tmp{os.getpid()}{suffix}")
    raise ValueError(f"{path}: a model file must end in one of {list(FORMATS)}")


def save_model(model, path):
    """Saves `model` to `path` (`.keras` or `.h5`): written to a temporary name, then renamed.

    An interrupted save never leaves a half-written file under `path`, and an existing file there
    is replaced only by a complete one.
    """
    path = os.fspath(path)
    tmp = _temporary_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    try:
        if path.endswith(
            ".h5"
        ):  # the suite writes .h5 on purpose: Keras' "legacy" warning is noise
            absl_logger.setLevel(logging.ERROR)
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        absl_logger.setLevel(level)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _keras_hub_objects():
    """keras-hub's public Keras classes by name, when keras-hub is installed."""
    try:
        import keras_hub
    except ImportError:  # pragma: no cover - keras-hub is a dependency of the suite
        return {}
    objects = {}
    for namespace in (keras_hub.models, keras_hub.layers):
        for name, value in vars(namespace).items():
            if inspect.isclass(value) and issubclass(value, (keras.layers.Layer, keras.Model)):
                objects[name] = value
    return objects


def registered_objects():
    """Every Keras object registered by the suite's packages (those imported so far) and keras-hub."""
    objects = _keras_hub_objects()
    for key, value in keras.saving.get_custom_objects().items():
        objects[key] = value
        objects[key.split(">")[-1]] = value
    return objects


def load_model(path, *, custom_objects=None, compile=False, safe_mode=True):
    """Loads a `.keras` or `.h5` model saved by the suite, with every registered object known.

    Args:
        path: the model file.
        custom_objects: more objects by name.
        compile: restore the training configuration too (off: the suite's models are used for
            inference or retrained through `common.training`).
        safe_mode: Keras' safe mode (refuses to deserialise arbitrary code).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    if not path.endswith(FORMATS):
        raise ValueError(f"{path}: a model file must end in one of {list(FORMATS)}")
    objects = registered_objects()
    objects.update(custom_objects or {})
    with keras.saving.custom_object_scope(objects), warnings.catch_warnings():
        if not compile:
            # keras-hub tasks (the RetinaNet detector) compile themselves when rebuilt, with a fresh
            # optimizer that cannot take the saved one's slots; without `compile` they are unused.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        try:
            model = keras.models.load_model(
                path, custom_objects=objects, compile=compile, safe_mode=safe_mode
            )
        except ValueError as error:
            _raise_naming_model(path, error)
            raise
        from common.precision import convert_model

        return convert_model(model)  # to the run's --precision, if one was set


def _raise_naming_model(path, error):
    """Keras' safe-mode refusal does not name the file: a one-line `DataError` that does."""
    from common.errors import DataError

    text = str(error)
    if "safe_mode" in text or "safe mode" in text:
        first = " ".join(text.split())[:300]
        raise DataError(
            f"refused to load the model: Keras safe mode does not run code stored in a model "
            f"file (e.g. a Lambda layer) ({first})",
            path=path,
        ) from None


def export_saved_model(model, directory):
    """Exports a TensorFlow SavedModel for serving (`model.export`), atomically (temporary folder, then rename).

    The result serves with TF Serving or `tf.saved_model.load(directory).serve(inputs)`.
    """
    directory = os.fspath(directory).rstrip("/")
    tmp = f"{directory}.tmp{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    model.export(tmp, format="tf_saved_model", verbose=False)
    if os.path.exists(directory):
        old = f"{directory}.old{os.getpid()}"
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


def save_all(model, run_dir, *, stem="model"):
    """Writes `RUN/model.h5` and `RUN/model.keras` (both atomic) and returns their paths."""
    run_dir = os.fspath(run_dir)
    return {
        "h5": save_model(model, os.path.join(run_dir, f"{stem}.h5")),
        "keras": save_model(model, os.path.join(run_dir, f"{stem}.keras")),
    }
