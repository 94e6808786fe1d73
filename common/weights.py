"""Pretrained starts for every package: `--weights imagenet|coco|none|FILE`.

One place resolves the flag, downloads through Keras' own cache and says what was loaded:

- `imagenet`: the keras.applications "no top" file of a trunk (VGG16, ResNet50, DenseNet169,
  InceptionV3, EfficientNetB3-B5), fetched with `keras.utils.get_file` from the same URL, under the
  same file name and with the same hash as `keras.applications` uses, into Keras' cache
  (`$KERAS_HOME/models`, default `~/.keras/models`). A second run, or a user whose Keras already
  downloaded the file, needs no network. Offline, `fetch_imagenet` raises a `DataError` whose one
  line names the URL, the cache path and `--weights FILE` as the way round it.
- `coco`: deepra's RetinaNet backbone (ResNet-50 + feature pyramid) from keras-hub's preset
  `retinanet_resnet50_fpn_coco` (`load_keras_hub_backbone`, which tests replace).
- `none`: random initialisation.
- a file: the package's own loader (a `.weights.h5`, `.h5` or `.keras` file).

`None` (no flag) means the preset's own start: `default_spec`.

Where the model differs from the pretrained network (a width-scaled InceptionV3, one input
channel on a three-channel trunk, a new head), `copy_overlap` loads what fits and every loader
returns a record `{"spec", "source", "loaded", "partial", "fresh"}` (layer names; `partial` maps
a layer to what was taken). `record_weights` writes it into `RUN/config.json` (key `weights`) and
prints a summary to the log: nothing is loaded silently.
"""

from __future__ import annotations

import json
import os

import numpy as np

from common.errors import DataError

SPECS = ("imagenet", "coco", "none")

_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_EFFICIENTNET = "https://storage.googleapis.com/keras-applications/"

#: keras.applications' ImageNet "no top" files: trunk -> (file name, URL, md5), as Keras has them.
IMAGENET_WEIGHTS = {
    "vgg16": (
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _APPS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
    ),
    "resnet50": (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _APPS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "densenet121": (
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _APPS + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    "densenet169": (
        "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _APPS + "densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b8c4d4c20dd625c148057b9ff1c1176b",
    ),
    "densenet201": (
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _APPS + "densenet/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c13680b51ded0fb44dff2d8f86ac8bb1",
    ),
    "inception_v3": (
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _APPS + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63",
    ),
    "efficientnetb3": (
        "efficientnetb3_notop.h5",
        _EFFICIENTNET + "efficientnetb3_notop.h5",
        "af6d107764bb5b1abb91932881670226",
    ),
    "efficientnetb4": (
        "efficientnetb4_notop.h5",
        _EFFICIENTNET + "efficientnetb4_notop.h5",
        "ebc24e6d6c33eaebbd558eafbeedf1ba",
    ),
    "efficientnetb5": (
        "efficientnetb5_notop.h5",
        _EFFICIENTNET + "efficientnetb5_notop.h5",
        "38879255a25d3c92d5e44e04ae6cec6f",
    ),
}

#: keras-hub's COCO RetinaNet (ResNet-50 v1, FPN P3-P7 from C5, no FPN batch norm): the
#: configuration of deepra's `paper-hand` / `paper-foot` detectors.
COCO_RETINANET_PRESET = "retinanet_resnet50_fpn_coco"


def resolve_spec(spec):
    """Checks a `--weights` value and returns it normalised.

    Args:
        spec: None (the preset's default), `"imagenet"`, `"coco"`, `"none"` (any case) or the path
            of an existing local file.

    Returns:
        None, one of `SPECS`, or the file's path (str).

    Raises:
        DataError: a path that is not an existing file.
    """
    if spec is None:
        return None
    text = os.fspath(spec)
    if text.lower() in SPECS:
        return text.lower()
    if not os.path.exists(text):
        raise DataError(
            "weights file not found (--weights takes imagenet, coco, none or a file)", path=text
        )
    return text


def default_spec(spec, paper_default, preset, *, paper_presets=("paper",)):
    """The spec a run uses: the flag's value, else the paper's start for the paper's presets.

    Args:
        spec: the `--weights` value (None when the flag is absent).
        paper_default: what the package's paper started from (`"imagenet"`, `"coco"`, `"none"`).
        preset: the preset's name.
        paper_presets: the presets that start as the paper did (others, `demo` among them,
            start from `none`).

    Returns:
        One of `SPECS` or a file path.
    """
    spec = resolve_spec(spec)
    if spec is not None:
        return spec
    return paper_default if preset in paper_presets else "none"


def keras_cache_dir():
    """The folder `keras.utils.get_file(..., cache_subdir="models")` keeps downloads in."""
    try:
        from keras.src.backend import config as keras_config

        base = keras_config.keras_home()
    except (ImportError, AttributeError):  # pragma: no cover - older Keras layouts
        base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    base = os.path.expanduser(base)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "models")


def _get_file(fname, origin, file_hash):
    """`keras.utils.get_file` into Keras' model cache (a function of its own so tests replace it)."""
    import keras

    return keras.utils.get_file(fname, origin, cache_subdir="models", file_hash=file_hash)


def fetch_imagenet(trunk):
    """Returns the local path of a trunk's ImageNet "no top" file, downloading it once.

    Args:
        trunk: a key of `IMAGENET_WEIGHTS` (e.g. `"densenet169"`).

    Returns:
        The file's path in Keras' cache.

    Raises:
        DataError: unknown trunk, or the download failed (one line: URL, cache path, way round).
    """
    if trunk not in IMAGENET_WEIGHTS:
        raise DataError(f"no ImageNet weights for '{trunk}'. Available: {sorted(IMAGENET_WEIGHTS)}")
    fname, url, md5 = IMAGENET_WEIGHTS[trunk]
    target = os.path.join(keras_cache_dir(), fname)
    try:
        return _get_file(fname, url, md5)
    except Exception as exc:  # get_file raises a bare Exception for network errors
        reason = " ".join(str(exc).split())[:200]
        raise DataError(
            f"cannot download the ImageNet weights of {trunk} from {url} to {target} ({reason}); "
            f"download that file there, or pass --weights FILE (a local copy of it)"
        ) from None


def load_keras_hub_backbone(preset):
    """`keras_hub.models.RetinaNetBackbone.from_preset(preset)` (tests replace this function)."""
    import keras_hub

    return keras_hub.models.RetinaNetBackbone.from_preset(preset)


def fetch_coco_backbone(preset=COCO_RETINANET_PRESET):
    """Loads keras-hub's COCO RetinaNet backbone, turning a failed download into one line.

    Args:
        preset: a keras-hub RetinaNet preset name.

    Returns:
        The preset's `RetinaNetBackbone` (ResNet-50 encoder + feature pyramid).

    Raises:
        DataError: the preset could not be loaded (offline, no Kaggle access).
    """
    try:
        return load_keras_hub_backbone(preset)
    except Exception as exc:
        cache = os.environ.get("KAGGLEHUB_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "kagglehub"
        )
        reason = " ".join(str(exc).split())[:200]
        raise DataError(
            f"cannot load keras-hub's preset {preset} (kaggle://keras/retinanet/keras/{preset}) "
            f"into {cache} ({reason}); run once with network access, or pass --weights FILE "
            "(a detector .weights.h5)"
        ) from None


# --------------------------------------------------------------------------- files


def read_legacy_h5(path):
    """The layers of a keras.applications weights file, in the file's order.

    Args:
        path: an `.h5` file in the format Keras' ImageNet downloads use (root attribute
            `layer_names`, one group per layer with attribute `weight_names`).

    Returns:
        A list of `(layer_name, [arrays])` for the layers that hold weights.
    """
    import h5py

    def text(value):
        return value.decode("utf8") if isinstance(value, bytes) else str(value)

    out = []
    with h5py.File(os.fspath(path), "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        for name in (text(n) for n in group.attrs["layer_names"]):
            layer = group[name]
            arrays = [np.asarray(layer[text(w)]) for w in layer.attrs.get("weight_names", [])]
            if arrays:
                out.append((name, arrays))
    return out


def write_legacy_h5(model, path):
    """Writes a model's weights in the format of keras.applications' downloads (`*_notop.h5`).

    Args:
        model: a Keras model (e.g. `keras.applications.VGG16(include_top=False, weights=None)`).
        path: the `.h5` file to write.
    """
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(os.fspath(path), "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


# --------------------------------------------------------------------------- partial loads


def copy_overlap(target, source, *, in_segments=None, sum_inputs=False):
    """Copies the part of `source` that fits into `target` (a kernel, bias or BN vector).

    Outputs (the last axis) are matched from the first one on. For a kernel `(kh, kw, in, out)`
    the inputs are matched segment by segment (`in_segments`: pairs `(target_sizes,
    source_sizes)` of the concatenated parts that make up the input channels, as a width-scaled
    network widens each branch on its own), and inputs of the target that no source channel feeds
    are set to 0 for the copied filters, so those filters compute what the pretrained ones did.
    `sum_inputs` sums the source over its input channels first (a one-channel input on a
    three-channel trunk: exact for a gray image repeated over three channels).

    Args:
        target: numpy array, the target variable's current value (fresh initialisation).
        source: numpy array, the pretrained value.
        in_segments: `(target_sizes, source_sizes)` for kernels, or None (one segment).
        sum_inputs: sum the source kernel over its input channels.

    Returns:
        `(array, note)`: the new value and a short description (`""` when nothing was taken).
    """
    target = np.array(target, copy=True)
    source = np.asarray(source, dtype=target.dtype)
    if target.ndim != source.ndim:
        return target, ""
    if target.ndim == 4:
        if target.shape[:2] != source.shape[:2]:
            return target, ""
        if sum_inputs:
            source = source.sum(axis=2, keepdims=True)
        outputs = min(target.shape[3], source.shape[3])
        t_sizes, s_sizes = in_segments or ([target.shape[2]], [source.shape[2]])
        if sum(t_sizes) != target.shape[2] or sum(s_sizes) != source.shape[2]:
            return target, ""
        target[:, :, :, :outputs] = 0.0
        t0 = s0 = 0
        for t_len, s_len in zip(t_sizes, s_sizes):
            n = min(t_len, s_len)
            target[:, :, t0 : t0 + n, :outputs] = source[:, :, s0 : s0 + n, :outputs]
            t0, s0 = t0 + t_len, s0 + s_len
        note = f"{outputs}/{target.shape[3]} filters"
        if sum_inputs:
            note += ", inputs summed"
        return target, note
    if target.ndim == 1:
        n = min(target.shape[0], source.shape[0])
        target[:n] = source[:n]
        return target, f"{n}/{target.shape[0]} channels"
    return target, ""


def apply_layer_weights(layer, arrays, **options):
    """Sets a layer's weights from pretrained arrays, whole or in part.

    Args:
        layer: a built Keras layer.
        arrays: the pretrained arrays, in the layer's weight order.
        **options: `in_segments`, `sum_inputs` of `copy_overlap` (for the kernel).

    Returns:
        `"loaded"` (every shape equal, nothing adapted), `"partial: ..."` or `"fresh"`.
    """
    current = layer.get_weights()
    if len(current) != len(arrays):
        return "fresh"
    if not options.get("sum_inputs") and all(
        c.shape == np.shape(a) for c, a in zip(current, arrays)
    ):
        layer.set_weights([np.asarray(a, dtype=c.dtype) for c, a in zip(current, arrays)])
        return "loaded"
    new, notes = [], []
    for c, a in zip(current, arrays):
        value, note = copy_overlap(c, a, **(options if c.ndim == 4 else {}))
        if not note:
            return "fresh"
        new.append(value)
        notes.append(note)
    layer.set_weights(new)
    return "partial: " + "; ".join(dict.fromkeys(notes))


def new_record(spec, source):
    """An empty load record for `spec` loaded from `source` (a file or a preset name).

    For ImageNet files the record also names the URL the file came from.
    """
    record = {"spec": spec, "source": source, "loaded": [], "partial": {}, "fresh": []}
    for fname, url, _ in IMAGENET_WEIGHTS.values():
        if spec == "imagenet" and os.path.basename(os.fspath(source)) == fname:
            record["url"] = url
    return record


def pretrained_file(spec, trunk, *, what):
    """The local file a trunk starts from under `spec` (downloaded for `imagenet`), or None.

    Args:
        spec: a resolved spec (`default_spec`).
        trunk: the model's keras.applications trunk (a key of `IMAGENET_WEIGHTS`), or None when
            it has none.
        what: the model in words, for errors (e.g. `"kneeoa preset 'demo' (small-vgg)"`).

    Returns:
        A file path, or None for `none`.

    Raises:
        DataError: `coco` (only deepra's detectors have COCO weights), `imagenet` on a model
            without an ImageNet trunk, or a failed download.
    """
    if spec == "none":
        return None
    if spec == "coco":
        raise DataError(
            f"--weights coco: only deepra's detectors have COCO weights; {what} takes "
            "imagenet, none or a file"
        )
    if spec == "imagenet":
        if trunk not in IMAGENET_WEIGHTS:
            raise DataError(
                f"--weights imagenet: {what} has no ImageNet trunk; use --weights none or FILE"
            )
        return fetch_imagenet(trunk)
    return spec


def record_trunk(model, trunk_layers, *, spec, source, run_dir, key=None, verbose=1):
    """Records a start (`trunk_record`, or random initialisation) in `RUN/config.json` and the log.

    Args:
        model: the built model.
        trunk_layers: names of the layers `source` filled (ignored when `source` is None).
        spec: the resolved spec.
        source: the file loaded, or None (random initialisation).
        run_dir: the run folder (None: log only).
        key: see `record_weights`.
        verbose: 0 quiet.

    Returns:
        The record.
    """
    if source is None:
        record = {"spec": spec, "source": None}
    else:
        record = trunk_record(model, trunk_layers, spec=spec, source=source)
    record_weights(run_dir, record, key=key, verbose=verbose)
    return record


def add_result(record, name, result):
    """Files one layer's `apply_layer_weights` result into a record."""
    if result == "loaded":
        record["loaded"].append(name)
    elif result.startswith("partial"):
        record["partial"][name] = result[len("partial: ") :]
    else:
        record["fresh"].append(name)


def trunk_record(model, trunk_layers, *, spec, source):
    """The record of a whole pretrained trunk: its layers loaded, every other weighted layer fresh.

    Args:
        model: the built model.
        trunk_layers: names of the layers the pretrained file filled.
        spec: `"imagenet"`, `"coco"` or a file path.
        source: where the weights came from (URL, file, preset).

    Returns:
        A record (see `new_record`).
    """
    record = new_record(spec, source)
    trunk = set(trunk_layers)
    for layer in weighted_layers(model):
        (record["loaded"] if layer.name in trunk else record["fresh"]).append(layer.name)
    return record


def weighted_layers(model):
    """Layers that own weights, nested models flattened (keras-hub backbones, joint backbones).

    Args:
        model: a Keras model.

    Returns:
        list of layers, in the model's order.
    """
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out.extend(weighted_layers(layer))
        elif layer.weights:
            out.append(layer)
    return out


def copy_model_weights(target, source, *, spec, source_name):
    """Copies `source`'s weights into `target` layer by layer, in order, where shapes agree.

    Both models must be built from the same architecture (e.g. keras-hub's COCO RetinaNet
    backbone and ours); a layer whose weights differ in count or shape starts fresh.

    Args:
        target: the model to fill.
        source: the pretrained model.
        spec: the `--weights` value.
        source_name: where `source` came from (for the record).

    Returns:
        A record (see `new_record`).
    """
    record = new_record(spec, source_name)
    ours, theirs = weighted_layers(target), weighted_layers(source)
    if len(ours) != len(theirs):
        raise DataError(
            f"{source_name} does not fit this model: {len(theirs)} layers with weights, "
            f"the model has {len(ours)}"
        )
    for layer, other in zip(ours, theirs):
        current, arrays = layer.get_weights(), other.get_weights()
        if len(current) == len(arrays) and all(c.shape == a.shape for c, a in zip(current, arrays)):
            layer.set_weights(arrays)
            record["loaded"].append(layer.name)
        else:
            record["fresh"].append(layer.name)
    return record


# --------------------------------------------------------------------------- records


def describe(record, *, limit=12):
    """One log line for a record: the source, and how many layers loaded, partly, fresh (named).

    Args:
        record: a load record.
        limit: names listed per group before "...".

    Returns:
        str.
    """

    def names(items):
        items = list(items)
        shown = ", ".join(items[:limit])
        return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

    parts = [
        f"Weights {record['spec']} from {record['source']}: {len(record['loaded'])} layers loaded"
    ]
    if record["partial"]:
        parts.append(f"{len(record['partial'])} partly ({names(record['partial'])})")
    parts.append(f"{len(record['fresh'])} fresh ({names(record['fresh'])})")
    return "; ".join(parts) + " [full lists: config.json 'weights']"


def record_weights(run_dir, record, *, key=None, verbose=1, chief=None):
    """Writes a load record into `RUN/config.json` (key `weights`) and prints it.

    Args:
        run_dir: the run folder (its `config.json` is read, updated and rewritten atomically).
        record: a load record, or a dict `{"spec": ...}` without layer lists (nothing loaded).
        key: for runs that train several models (deepra): the record goes to
            `weights["models"][key]`.
        verbose: 0 quiet.
        chief: whether this process writes; None asks the current `tf.distribute` strategy
            (only the chief of a multi-worker run writes).
    """
    if verbose:
        prefix = f"[{key}] " if key else ""
        line = describe(record) if "loaded" in record else f"Weights {record['spec']}: random start"
        print(prefix + line, flush=True)
    if chief is None:
        from common.distribute import is_chief

        chief = is_chief()
    if not chief or run_dir is None:
        return
    from common.reports import write_json

    path = os.path.join(os.fspath(run_dir), "config.json")
    config = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    block = config.get("weights") if isinstance(config.get("weights"), dict) else {}
    if key is None:
        block.update(record)
    else:
        block.setdefault("models", {})[key] = record
    config["weights"] = block
    os.makedirs(os.fspath(run_dir), exist_ok=True)
    write_json(path, config)
