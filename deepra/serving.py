"""DeepRA's joint models as served models: a joint crop in, its damage scores out.

`predict` grades a patient from four films in two stages: RetinaNet detectors find every finger,
toe and wrist (stage 1), then six joint models score the crops (stage 2). Stage 2's preprocessing
(a crop resized by stretching to the joint model's input, gray repeated to its channels) goes into
the served graph here; the detectors are keras-hub RetinaNets whose box decoding (non-max
suppression) is not part of a joint model, so the served model is one joint model (the run's
`model.keras` is the hand-erosion model of Table 2 row 1; `--model RUN/models/<name>.keras` serves
another) and its input is a joint crop, e.g. one `predict --explain` shows. Detectors are exported
by `export` as they are (their input is the film already resized by `deepra.detector`).
"""

from __future__ import annotations

import numpy as np

from common.serving_layers import RepeatChannels
from common.serving_layers import ResizeFilm
from common.serving_layers import ServingModel

TASK = "joint_scores"
EXTRA_INPUTS = {}
INPUT_SPEC = {
    "image": "one joint crop (a finger, toe or wrist box cut from a hand or foot film; PNG, JPEG "
    "or DICOM; uint8, uint16 or float in [0, 1]), any size",
    "laterality": "right-limb films are mirrored to look like left ones before detection "
    "(deepra.pipeline); a crop of a right limb should be mirrored the same way",
    "units": "Sharp/van der Heijde joint scores: erosion 0-5 (hands) or 0-10 (feet), narrowing 0-4",
}


def is_detector(network):
    """Whether a deepra model is a RetinaNet detector (not a joint model)."""
    return not any(t.name.split(":")[0] == "crop" for t in getattr(network, "inputs", None) or [])


def serving_model(network, model_path=None, metadata=None):
    """A joint model behind stage 2's preprocessing (stretch resize, channels)."""
    from common.errors import DataError

    if is_detector(network):
        raise DataError(
            "a RetinaNet detector is served by `predict` (four films); serve a joint model",
            path=model_path,
        )
    height, width, channels = (int(v) for v in network.input_shape[1:])
    layers = [ResizeFilm((height, width), name="resize"), RepeatChannels(channels, name="channels")]
    meta = {"joints": list(network.output_names), **(metadata or {})}
    return ServingModel(network, layers, metadata=meta, name="deepra_serving")


def score(outputs, metadata):
    """The explained quantity per crop: the sum of its joint scores."""
    import tensorflow as tf

    return tf.add_n([tf.reshape(tf.cast(outputs[n], tf.float32), [-1]) for n in metadata["joints"]])


def describe(outputs, metadata, extras=None):
    """One crop's answer: each joint's predicted score."""
    scores = {n: round(float(np.asarray(outputs[n]).reshape(-1)[0]), 4) for n in metadata["joints"]}
    return {
        "prediction": scores,
        "label": ", ".join(f"{n} {v:.2f}" for n, v in scores.items()),
        "probabilities": None,
    }


def summarise(results):
    """No grouping: each crop stands alone."""
    return None
