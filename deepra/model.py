"""DeepRA's models: presets and `build_model` for both stages (Chaturvedi, paper 001).

Stage 1 (`deepra.detector`): RetinaNet detectors of fingers, toes and wrists, presets `paper-hand`,
`paper-foot` (ResNet-50 FPN, films resized to 1000/1400) and `demo-hand`, `demo-foot`.

Stage 2 (`deepra.joints`): EfficientNet + attention regressors of SvH scores from one crop, one
preset per row of Table 2:

| preset | backbone | crop size | outputs | crops (see `deepra.columns`) |
|---|---|---|---|---|
| `hand-erosion` (= `paper`) | B3 | 256 x 256 | 2 | hand fingers, thumbs, big toes |
| `hand-narrowing` | B3 | 256 x 256 | 2 | hand fingers, big toes |
| `foot-narrowing` | B4 | 256 x 256 | 1 | toes 2-5, thumbs |
| `foot-erosion` | B4 | 256 x 256 | 1 | toes 2-5 |
| `wrist` | B5 | 300 x 300 | 6 | wrists (`task="erosion"` or `"narrowing"`) |
| `demo` | tiny EfficientNet | 96 x 96 | 2 (any head/task by override) | phantoms |

`build_model(preset, **overrides)` builds either kind; `explain_model(model)` returns a model that
also outputs the attention weights (joint models) or the feature pyramid (detectors).

Reference:
    Chaturvedi, "DeepRA: predicting joint damage from radiographs using CNN with attention",
    §3-4, Fig. 1-2, Tables 1-2.
"""

from __future__ import annotations

import keras

from common.options import look_up_option
from deepra.detector import build_detector
from deepra.detector import register_keras_hub_objects
from deepra.joints import build_joint_model
from deepra.joints import explain_joint_model
from deepra.joints import joint_config
from deepra.presets import DETECTOR_PRESETS
from deepra.presets import PRESETS

register_keras_hub_objects()


def get_config(preset="paper", **overrides):
    """The configuration dict of any preset (joint model or detector) with overrides applied.

    Args:
        preset: a key of `PRESETS`.
        **overrides: configuration keys of that preset.

    Returns:
        dict.
    """
    preset = look_up_option(preset, PRESETS)  # hyphens or underscores (common.options)
    if preset in DETECTOR_PRESETS:
        from deepra.detector import detector_config

        return detector_config(preset, **overrides)
    return joint_config(preset, **overrides)


def build_model(preset="paper", **overrides):
    """Builds a DeepRA model: a joint-level regressor or, for detector presets, a RetinaNet.

    Args:
        preset: a key of `PRESETS` ("paper" = "hand-erosion", "hand-narrowing", "foot-narrowing",
            "foot-erosion", "wrist", "demo", "paper-hand", "paper-foot", "demo-hand", "demo-foot").
        **overrides: configuration keys, e.g. `weights="model.weights.h5"` (a local file),
            `trainable_fraction=1.0`, `task="narrowing"` (wrist), `image_size_hw=(128, 128)`.

    Returns:
        `keras.Model`. Joint models: functional, input `crop`, a dict of `(B, 1)` outputs named by
        joint (e.g. `distal_erosion`, `proximal_erosion`). Detectors: `FingerDetector`.
    """
    config = get_config(preset, **overrides)
    if config["kind"] == "detector":
        return build_detector(preset, **overrides)
    return build_joint_model(config)


def explain_model(model):
    """A model exposing explanation maps by layer name, as keras-hub exposes `pyramid_outputs`.

    Args:
        model: a joint model or a detector from `build_model` (or reloaded).

    Returns:
        `keras.Model`. Joint models: the scores plus `attention_mask` (B, h, w, 1) and `features`
        (B, h, w, N). Detectors: the raw heads plus the feature pyramid levels `P3`... .
    """
    if isinstance(model, keras.Model) and _is_detector(model):
        backbone = model.backbone
        pyramid = backbone(model.inputs[0])
        outputs = {
            "bbox_regression": model.get_layer("bbox_regression").output,
            "cls_logits": model.get_layer("cls_logits").output,
        }
        return keras.Model(model.inputs[0], {**outputs, **pyramid}, name=f"{model.name}_explain")
    return explain_joint_model(model)


def _is_detector(model):
    import keras_hub

    return isinstance(model, keras_hub.models.RetinaNetObjectDetector)
