"""The KL grader as a served model: a raw knee film in, KL grade probabilities out.

`predict` reads a knee (PNG/JPEG/DICOM, [0, 1]), resizes it to the model's input by stretching
(area averaging when shrinking), equalises its histogram (when the run did), repeats gray to the
trunk's channels, and reads the run's test branch. `serving_model` puts those steps as Keras layers
in front of the trained network (`common.serving_layers`).
"""

from __future__ import annotations

import numpy as np

from common.serving_layers import EqualizeHistogram
from common.serving_layers import RepeatChannels
from common.serving_layers import ResizeFilm
from common.serving_layers import ServingModel

TASK = "kl_grade"
EXTRA_INPUTS = {}
INPUT_SPEC = {
    "image": "one knee, grayscale film (PNG, JPEG or DICOM; uint8, uint16 or float in [0, 1]), any size",
    "laterality": "one knee per image; a bilateral PA film is cut in two by `predict --bilateral` "
    "(the image's left half is the patient's right knee); the serving model takes one knee",
    "units": "Kellgren-Lawrence grade 0-4",
}


def _config(network, model_path=None):
    from kneeoa.evaluate import model_config

    return model_config(network, model_path)


def serving_model(network, model_path=None, metadata=None):
    """The trained network behind `predict`'s preprocessing (resize, equalisation, channels)."""
    config = _config(network, model_path)
    layers = [ResizeFilm(config["image_size_hw"], name="resize")]
    if config["histogram_equalization"]:
        layers.append(EqualizeHistogram(name="equalize"))
    layers.append(RepeatChannels(config["channels"], name="channels"))
    meta = {"test_branch": config["test_branch"], **(metadata or {})}
    return ServingModel(network, layers, metadata=meta, name="kneeoa_serving")


def score(outputs, metadata):
    """The explained quantity per image: the expected KL grade of the test branch."""
    import tensorflow as tf

    probs = tf.cast(outputs[metadata["test_branch"]], tf.float32)
    return tf.reduce_sum(probs * tf.range(probs.shape[-1], dtype=tf.float32), axis=-1)


def describe(outputs, metadata, extras=None):
    """One image's answer: KL grade and its probabilities (test branch), every branch's grade."""
    probs = np.asarray(outputs[metadata["test_branch"]], np.float64)
    return {
        "prediction": {"kl_grade": int(probs.argmax())},
        "label": f"KL {int(probs.argmax())}",
        "probabilities": {f"KL{k}": round(float(p), 6) for k, p in enumerate(probs)},
        "branches": {
            name: int(np.asarray(v).argmax())
            for name, v in outputs.items()
            if np.asarray(v).ndim == 1
        },
    }


def summarise(results):
    """No grouping across images: each knee stands alone."""
    return None
