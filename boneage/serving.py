"""BoneAgeNet as a served model: a raw hand film (and the child's sex) in, bone age in months out.

`predict` reads each film (PNG/JPEG/DICOM, [0, 1]), resizes it to the model's input by stretching
(area averaging when shrinking), repeats gray to the trunk's channels, and feeds the sex (1 male,
0 female) to the sex input when the model has one. `serving_model` puts those image steps as Keras
layers in front of the trained network; `sex` stays an input of the served model.
"""

from __future__ import annotations

import numpy as np

from common.serving_layers import RepeatChannels
from common.serving_layers import ResizeFilm
from common.serving_layers import ServingModel

TASK = "bone_age_months"
EXTRA_INPUTS = {
    "sex": "M or F (1 male, 0 female in the model); read from DICOM PatientSex when not given",
}
INPUT_SPEC = {
    "image": "left-hand PA film, grayscale (PNG, JPEG or DICOM; uint8, uint16 or float in [0, 1]), "
    "any size",
    "sex": "(B, 1) float32, 1 = male, 0 = female (models trained with the sex input)",
    "laterality": "the RSNA films are left hands; a right hand is not flipped by the model",
    "units": "bone age in months",
}


def serving_model(network, model_path=None, metadata=None):
    """The trained network behind `predict`'s preprocessing (resize, channels)."""
    from boneage.evaluate import model_config
    from boneage.evaluate import read_run_config

    config = model_config(network, read_run_config(model_path))
    layers = [
        ResizeFilm(config.image_size_hw, name="resize"),
        RepeatChannels(config.channels, name="channels"),
    ]
    return ServingModel(network, layers, metadata=dict(metadata or {}), name="boneage_serving")


def score(outputs, metadata):
    """The explained quantity per image: the predicted age."""
    import tensorflow as tf

    return tf.reshape(tf.cast(outputs["age_months"], tf.float32), [-1])


def describe(outputs, metadata, extras=None):
    """One film's answer: bone age in months (and in years)."""
    months = float(np.asarray(outputs["age_months"]).reshape(-1)[0])
    mae = ((metadata.get("headline") or {}).get("mae_months") or {}).get("value")
    answer = {
        "prediction": {"bone_age_months": round(months, 3)},
        "label": f"{months:.1f} months ({months / 12:.1f} years)",
        "interval": None,
    }
    if mae is not None:  # the run's test MAE either side (a typical error, not a guarantee)
        answer["interval"] = {
            "low": round(months - mae, 3),
            "high": round(months + mae, 3),
            "kind": "prediction +- the run's test MAE",
        }
        answer["label"] += f", +-{mae:.1f} (test MAE)"
    return answer


def summarise(results):
    """No grouping across images: each hand stands alone."""
    return None
