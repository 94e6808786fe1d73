"""SpineNet as a served model: a disc volume in, the six gradings' probabilities out.

SpineNet grades a disc VOLUME (112 x 224 pixels x 9 sagittal slices about the disc), cut from a
segmented sagittal series and normalised by `spinenet.data` (vertebral median 0.5); cutting needs
the series' mask, so it stays outside the graph. The served model takes such a volume of any
in-plane size (`(B, H, W, 9)` float) and resizes it to the network's input; its answer is that of
`predict --no-tta` (the centre view, not the mean of the 54 test-time views). The server accepts
volumes as `.npy` uploads (`(H, W, 9)` or `(N, H, W, 9)`, e.g. a run's `volumes.npy`).
"""

from __future__ import annotations

import numpy as np

from common.serving_layers import ResizeFilm
from common.serving_layers import ServingModel

TASK = "disc_grades"
EXTRA_INPUTS = {}
INPUT_KINDS = ("npy",)
INPUT_SPEC = {
    "image": "one lumbar disc volume (H, W, 9 sagittal slices) cut about the disc and normalised "
    "as spinenet.data does (vertebral median 0.5), float32; any H, W (resized to 112 x 224)",
    "laterality": "none: sagittal slices, the middle one through the disc",
    "units": "Pfirrmann grade 1-5, disc narrowing grade, and probabilities of the binary findings",
}


def serving_model(network, model_path=None, metadata=None):
    """The trained network behind a resize of the volume's slices to its input size."""
    height, width, slices = (int(v) for v in network.input_shape[1:])
    layers = [ResizeFilm((height, width), name="resize")]
    meta = {"tasks": list(network.output_names), **(metadata or {})}
    return ServingModel(
        network, layers, metadata=meta, film_channels=slices, name="spinenet_serving"
    )


def score(outputs, metadata):
    """The explained quantity per volume: the summed probability of every abnormal class."""
    import tensorflow as tf

    total = 0.0
    for task in metadata["tasks"]:
        probs = tf.cast(outputs[task], tf.float32)
        total = total + tf.reduce_sum(probs[:, 1:], axis=-1)
    return total


def describe(outputs, metadata, extras=None):
    """One disc's answer: each task's class (Pfirrmann as grade 1-5) and its probabilities."""
    from spinenet.evaluate import class_names

    prediction, probabilities, labels = {}, {}, []
    for task in metadata["tasks"]:
        probs = np.asarray(outputs[task], np.float64)
        names = class_names(task, len(probs))
        k = int(probs.argmax())
        prediction[task] = k + 1 if task == "pfirrmann" else k
        probabilities[task] = {n: round(float(p), 6) for n, p in zip(names, probs)}
        labels.append(f"{task} {names[k]}")
    return {"prediction": prediction, "label": ", ".join(labels), "probabilities": probabilities}


def summarise(results):
    """No grouping: each disc stands alone."""
    return None
