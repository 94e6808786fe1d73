"""The abnormality detector as a served model: a raw musculoskeletal film in, P(abnormal) out.

`predict` reads each film (PNG/JPEG/DICOM, [0, 1]), resizes it to the model's input by stretching
(area averaging when shrinking) and repeats gray to the trunk's channels; a study's probability is
the mean over its films, abnormal at 0.5. `serving_model` puts the per-film steps as Keras layers
in front of the trained network; the server treats the films of one request as one study.
"""

from __future__ import annotations

import numpy as np

from common.serving_layers import RepeatChannels
from common.serving_layers import ResizeFilm
from common.serving_layers import ServingModel

TASK = "abnormality"
EXTRA_INPUTS = {}
INPUT_SPEC = {
    "image": "one view of an upper-extremity study, grayscale film (PNG, JPEG or DICOM; uint8, "
    "uint16 or float in [0, 1]), any size",
    "laterality": "none: left and right extremities are read alike; the films of one request "
    "form one study",
    "units": "probability of an abnormal study; abnormal at >= 0.5",
}
THRESHOLD = 0.5


def serving_model(network, model_path=None, metadata=None):
    """The trained network behind `predict`'s preprocessing (resize, channels)."""
    from mura.evaluate import model_config
    from mura.model import OUTPUT_NAME

    config, _ = model_config(network, model_path)
    height, width, channels = config.input_shape
    layers = [ResizeFilm((height, width), name="resize"), RepeatChannels(channels, name="channels")]
    meta = {"output": OUTPUT_NAME, **(metadata or {})}
    return ServingModel(network, layers, metadata=meta, name="mura_serving")


def score(outputs, metadata):
    """The explained quantity per image: P(abnormal)."""
    import tensorflow as tf

    return tf.reshape(tf.cast(outputs[metadata["output"]], tf.float32), [-1])


def describe(outputs, metadata, extras=None):
    """One film's answer: its probability of abnormality."""
    p = float(np.asarray(outputs[metadata["output"]]).reshape(-1)[0])
    return {
        "prediction": {"probability": round(p, 6)},
        "label": f"p(abnormal) {p:.2f}",
        "probabilities": {"abnormal": round(p, 6)},
    }


def summarise(results):
    """The study: the mean probability of its films, abnormal at 0.5 (as `predict`)."""
    p = float(np.mean([r["probabilities"]["abnormal"] for r in results]))
    finding = "abnormal" if p >= THRESHOLD else "normal"
    return {
        "probability": round(p, 6),
        "prediction": int(p >= THRESHOLD),
        "finding": finding,
        "label": f"study {finding} (p {p:.2f}, {len(results)} film(s))",
    }
