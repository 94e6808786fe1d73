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
    return _atomic_folder(
        directory, lambda tmp: model.export(tmp, format="tf_saved_model", verbose=False)
    )


def save_all(model, run_dir, *, stem="model"):
    """Writes `RUN/model.h5` and `RUN/model.keras` (both atomic) and returns their paths."""
    run_dir = os.fspath(run_dir)
    return {
        "h5": save_model(model, os.path.join(run_dir, f"{stem}.h5")),
        "keras": save_model(model, os.path.join(run_dir, f"{stem}.keras")),
    }


# ------------------------------------------------------------------------------------------------
# Serving models: the trained network behind its preprocessing, in every export format

EXPORT_FORMATS = ("saved_model", "keras", "h5", "onnx")
SERVING_DTYPES = {"serve": "float32", "serve_uint8": "uint8", "serve_uint16": "uint16"}


def serving_module(package):
    """`PKG.serving` of a package module (its preprocessing layers, task and input spec)."""
    import importlib

    return importlib.import_module(f"{package.__name__}.serving")


def is_serving_model(model):
    """Whether `model` already takes raw films (a `common.serving_layers.ServingModel`)."""
    from common.serving_layers import ServingModel

    return isinstance(model, ServingModel)


def wrap_for_serving(package, model, model_path=None, metadata=None):
    """The serving model of a trained network (`PKG.serving.serving_model`); served models pass through."""
    if is_serving_model(model):
        if metadata:
            model.metadata.update(metadata)
        return model
    return serving_module(package).serving_model(model, model_path, metadata=metadata)


def _atomic_folder(directory, write):
    """Runs `write(tmp)` into a temporary folder beside `directory`, then renames it into place."""
    directory = os.fspath(directory).rstrip("/")
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    tmp = f"{directory}.tmp{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    try:
        write(tmp)
        if os.path.exists(directory):
            old = f"{directory}.old{os.getpid()}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return directory


def export_serving_saved_model(serving, directory, endpoints=tuple(SERVING_DTYPES)):
    """Writes a serving model as a SavedModel (atomic) with one signature per film dtype.

    Signatures (`endpoints`): `serve` (float32 films in [0, 1]), `serve_uint8`, `serve_uint16`; each takes the
    film batch `image` `(B, H, W, 1)` of any size and the network's other inputs (`(B, 1)`
    float32, e.g. boneage's `sex`), and returns the network's outputs by name.
    """
    import tensorflow as tf

    from common.serving_layers import film_signature

    extras = list(serving.extra_input_names)

    def write(tmp):
        archive = keras.export.ExportArchive()
        archive.track(serving)
        for endpoint in endpoints:
            dtype = SERVING_DTYPES[endpoint]
            signature = film_signature(extras, getattr(tf, dtype), serving.film_channels)
            if extras:

                def fn(inputs):
                    return serving(inputs, training=False)

            else:

                def fn(image):
                    return serving(image, training=False)

            archive.add_endpoint(endpoint, fn, input_signature=signature)
        archive.write_out(tmp, verbose=False)

    return _atomic_folder(directory, write)


ONNX_NOTE = (
    "ONNX holds the trained network alone: its input is the preprocessed film (the network's "
    "input shape, float32), not the raw film. tf2onnx converts TensorFlow's area resize "
    "(ResizeArea) to a different resampling (0.21 max difference measured on a test film), so "
    "the preprocessing layers stay out of the ONNX graph; the model card lists them."
)


def export_onnx(serving, path):
    """Writes the trained network of a serving model as ONNX (Keras' exporter, tf2onnx), atomically.

    See `ONNX_NOTE`: the graph takes the network's preprocessed input, not the raw film.
    """
    import numpy as np
    import tensorflow as tf

    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        raise ValueError(
            f"{path}: ONNX export needs tf2onnx (pip install tf2onnx onnx), which is not installed"
        ) from None
    network = serving.network
    specs = [
        tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=t.name.split(":")[0])
        for t in network.inputs
    ]
    zeros = [np.zeros([1, *s.shape[1:]], s.dtype.as_numpy_dtype) for s in specs]
    network(zeros[0] if len(zeros) == 1 else dict(zip([s.name for s in specs], zeros)))
    signature = [specs[0]] if len(specs) == 1 else [{s.name: s for s in specs}]
    try:
        network.export(tmp, format="onnx", input_signature=signature, verbose=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_model(package, model_file, out_dir, fmt, *, metadata=None):
    """`python -m PKG export`: a saved model (run's or exported) as a raw-film serving model.

    Args:
        package: the package module.
        model_file: `.keras` or `.h5` (the run's `config.json` beside it gives the preprocessing).
        out_dir: folder for `saved_model/`, `model.keras`, `model.h5` or `model.onnx`, and the
            model card (`model_card.json`, `.md`).
        fmt: one of `EXPORT_FORMATS`.
        metadata: extra metadata for the card.

    Returns:
        The path written.
    """
    from common.model_card import build_card
    from common.model_card import embed_card
    from common.model_card import write_card_files

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format '{fmt}', expected one of {list(EXPORT_FORMATS)}")
    hook = getattr(package, "export_model", None)
    if hook is not None:  # packages whose model is a run of several (deepra)
        return hook(model_file, out_dir, fmt)
    network = load_model(model_file)
    if getattr(serving_module(package), "is_detector", lambda m: False)(network):
        return _export_as_is(network, out_dir, fmt)
    run_dir = os.path.dirname(os.path.abspath(model_file))
    card = build_card(
        package,
        run_dir if os.path.isfile(os.path.join(run_dir, "config.json")) else None,
        network.network if is_serving_model(network) else network,
        inspect_summary=False,
    )
    card.update(metadata or {})
    if fmt == "onnx":
        card["onnx"] = ONNX_NOTE
    serving = wrap_for_serving(package, network, model_file, metadata={"model_card": card})
    os.makedirs(out_dir, exist_ok=True)
    write_card_files(card, out_dir)
    if fmt == "saved_model":
        return export_serving_saved_model(serving, os.path.join(out_dir, "saved_model"))
    if fmt == "onnx":
        return export_onnx(serving, os.path.join(out_dir, "model.onnx"))
    path = save_model(serving, os.path.join(out_dir, f"model.{fmt}"))
    if fmt == "keras":
        embed_card(path, card)
    return path


def _export_as_is(network, out_dir, fmt):
    """Exports a model that takes its own input (deepra's keras-hub detectors) without a wrapper."""
    os.makedirs(out_dir, exist_ok=True)
    if fmt == "saved_model":
        return export_saved_model(network, os.path.join(out_dir, "saved_model"))
    if fmt == "onnx":
        try:
            return export_onnx(_Unwrapped(network), os.path.join(out_dir, "model.onnx"))
        except Exception as exc:  # noqa: BLE001  (tf2onnx raises many types)
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ValueError(
                f"{out_dir}: this detector cannot be exported to ONNX ({reason}); "
                "use --format saved_model"
            ) from None
    return save_model(network, os.path.join(out_dir, f"model.{fmt}"))


class _Unwrapped:
    """`export_onnx`'s view of a bare network (it exports `.network`)."""

    def __init__(self, network):
        self.network = network


def _is_chief_process():
    """False on the non-chief workers of a multi-worker run (by `TF_CONFIG`), else True."""
    import json

    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
    except ValueError:
        return True
    kind, index = task.get("type"), int(task.get("index", 0) or 0)
    return kind in (None, "chief") or (
        kind == "worker"
        and index == 0
        and "chief" not in (json.loads(os.environ["TF_CONFIG"]).get("cluster") or {})
    )


def finish_run(package, run_dir, *, stem="model"):
    """What every `train` writes after its model files: `RUN/saved_model/` and the model card.

    The card goes to `RUN/model_card.json` + `.md` and into `RUN/<stem>.keras`; the SavedModel is
    the serving model (raw films in). Does nothing where no `RUN/<stem>.keras` was written, nor on
    the non-chief workers of a multi-worker run (`TF_CONFIG`).
    """
    from common.model_card import build_card
    from common.model_card import embed_card
    from common.model_card import write_card_files

    keras_path = os.path.join(os.fspath(run_dir), f"{stem}.keras")
    if not os.path.isfile(keras_path) or not _is_chief_process():
        return None
    hook = getattr(package, "finish_run", None)
    if hook is not None:
        return hook(run_dir)
    network = load_model(keras_path)
    card = build_card(package, run_dir, network)
    write_card_files(card, run_dir)
    embed_card(keras_path, card)
    serving = wrap_for_serving(package, network, keras_path, metadata={"model_card": card})
    # `serve` only: each signature traces the network once more, and `train` runs often in tests;
    # `export --format saved_model` adds `serve_uint8` and `serve_uint16`.
    export_serving_saved_model(
        serving, os.path.join(os.fspath(run_dir), "saved_model"), endpoints=("serve",)
    )
    return card
