"""Presets of DeepRA's models: data only, no Keras (keras-hub's `*_presets.py` shape).

`JOINT_PRESETS` (stage 2, one per row of Table 2, plus `paper` = `hand-erosion` and `demo`) and
`DETECTOR_PRESETS` (stage 1: `paper-hand`, `paper-foot`, `demo-hand`, `demo-foot`) map a name to
the configuration dict `deepra.joints.joint_config` / `deepra.detector.detector_config` check and
`deepra.model.build_model` builds; `PRESETS` holds both. Importing this module imports nothing but
`deepra.columns` (plain data), so `python -m deepra --help` lists the presets without TensorFlow,
Keras or keras-hub. The models and the meaning of each key: `deepra.joints`, `deepra.detector`.

Reference:
    Chaturvedi, "DeepRA: predicting joint damage from radiographs using CNN with attention",
    §4.2-4.3, Tables 1-2.
"""

from __future__ import annotations

import copy

from deepra.columns import FOOT_CLASSES
from deepra.columns import HAND_CLASSES

# Table 2: model type, crops, backbone, total joint images, number of predictions.
TABLE2 = {
    "hand-erosion": {
        "model_type": "Erosion",
        "crops": "Hand Fingers & Thumb/Toe",
        "backbone": "B3",
        "total_joint_images": 4404,
        "predictions": 2,
    },
    "hand-narrowing": {
        "model_type": "Narrowing",
        "crops": "Hand Fingers & Toe",
        "backbone": "B3",
        "total_joint_images": 3670,
        "predictions": 2,
    },
    "foot-narrowing": {
        "model_type": "Narrowing",
        "crops": "Feet Fingers & Thumb",
        "backbone": "B4",
        "total_joint_images": 3670,
        "predictions": 1,
    },
    "foot-erosion": {
        "model_type": "Erosion",
        "crops": "Feet Fingers",
        "backbone": "B4",
        "total_joint_images": 2936,
        "predictions": 1,
    },
    "wrist": {
        "model_type": "Erosion & Narrowing",
        "crops": "Wrist",
        "backbone": "B5",
        "total_joint_images": 734,
        "predictions": 6,
    },
}

_JOINT_TRAINING = {
    # §4.3.1: MSE, Adam 1e-3, lr x0.2 when the validation RMSE has not improved for 5 epochs,
    # 200 epochs keeping the best validation RMSE, batch 32, horizontal flips, 80:20 split by
    # patient, as many zero-score joints as non-zero ones.
    "loss": "mse",
    "learning_rate": 1e-3,
    "reduce_lr_factor": 0.2,
    "reduce_lr_patience": 5,
    "monitor": "val_rmse",
    "epochs": 200,
    "batch_size": 32,
    "flip_lr": True,
    "balance_zero_scores": True,
    "test_fraction": 0.2,
}


def _joint_preset(backbone, size, task, head, description, **extra):
    config = {
        "kind": "joint",
        "backbone": backbone,
        "image_size_hw": (size, size),
        "channels": 1,
        "task": task,
        "head": head,
        "trainable_fraction": 0.7,
        "attention_filters": (64, 16),
        "attention_dropout": 0.0,
        "dense_units": (128,),
        "dropout": 0.25,
        "backbone_weights": None,
        "weights": None,
        "tiny_width": 0.5,
        "tiny_depth": 0.5,
        "tiny_stages": 3,
        "batch_norm_momentum": None,
        **_JOINT_TRAINING,
        "description": description,
    }
    config.update(extra)
    return config


JOINT_PRESETS = {
    "hand-erosion": _joint_preset(
        "efficientnetb3", 256, "erosion", "pair", "Table 2 row 1: hand fingers, thumbs, big toes"
    ),
    "hand-narrowing": _joint_preset(
        "efficientnetb3", 256, "narrowing", "pair", "Table 2 row 2: hand fingers, big toes"
    ),
    "foot-narrowing": _joint_preset(
        "efficientnetb4", 256, "narrowing", "single", "Table 2 row 3: toes 2-5, thumbs"
    ),
    "foot-erosion": _joint_preset(
        "efficientnetb4", 256, "erosion", "single", "Table 2 row 4: toes 2-5"
    ),
    "wrist": _joint_preset(
        "efficientnetb5",
        300,
        "erosion",
        "wrist",
        "Table 2 row 5: wrists (task='erosion' or 'narrowing', six outputs each)",
    ),
    "demo": _joint_preset(
        "tiny-efficientnet",
        96,
        "erosion",
        "pair",
        "tiny EfficientNet (width/depth 0.5, 3 stages) on 96x96 phantom crops",
        trainable_fraction=1.0,
        batch_norm_momentum=0.9,
        attention_filters=(32, 8),
        dense_units=(32,),
        dropout=0.1,
        learning_rate=2e-3,
        reduce_lr_patience=5,
        epochs=25,
        batch_size=32,
    ),
}
# `paper` is the first row of Table 2 (the hand erosion model), so `summary --preset paper` works.
JOINT_PRESETS["paper"] = copy.deepcopy(JOINT_PRESETS["hand-erosion"])
JOINT_PRESETS["paper"]["description"] = "alias of hand-erosion (Table 2 row 1)"


# Table 1: AP per class at IoU 0.6 on 50 held-out films per detector, and the mAP.
TABLE1_AP = {
    "hand": {
        "thumb": 0.986,
        "finger1": 0.979,
        "finger2": 0.983,
        "finger3": 0.971,
        "finger4": 0.977,
        "wrist": 0.993,
        "mAP": 0.981,
    },
    "foot": {
        "toe": 0.983,
        "finger1": 0.973,
        "finger2": 0.955,
        "finger3": 0.947,
        "finger4": 0.965,
        "mAP": 0.965,
    },
}

_DETECTOR_TRAINING = {
    # §4.2.1: Adam 1e-3, x0.1 when the validation mAP has not improved for 4 epochs, early stop
    # after 5, batch 8.
    "learning_rate": 1e-3,
    "reduce_lr_factor": 0.1,
    "reduce_lr_patience": 4,
    "early_stopping_patience": 5,
    "monitor": "val_mAP",
    "batch_size": 8,
    "epochs": 50,
    "eval_iou_threshold": 0.6,
}


def _detector_preset(limb_kind, *, demo, description):
    class_names = HAND_CLASSES if limb_kind == "hand" else FOOT_CLASSES
    config = {
        "kind": "detector",
        "limb_kind": limb_kind,
        "class_names": tuple(class_names),
        "num_classes": len(class_names),
        "encoder": "tiny-resnet" if demo else "resnet50",
        "image_min_side": 192 if demo else 1000,
        "image_max_side": 240 if demo else 1400,
        "min_level": 3,
        "max_level": 4 if demo else 7,
        "use_p5": False,
        "anchor_size": 4.0,
        "num_scales": 3,
        "aspect_ratios": (1.0, 2.0, 4.0) if demo else (0.5, 1.0, 2.0),
        "pre_logits_num_conv_layers": 1 if demo else 4,
        "nms_iou_threshold": 0.5,
        "confidence_threshold": 0.05,
        "max_detections": 100,
        "encoder_weights": None,
        "weights": None,
        "pretrained": None,
        "box_loss_weight": 20.0,
        **_DETECTOR_TRAINING,
        "description": description,
    }
    if demo:
        # On 68 phantom hand films (batch 4, 600 steps, ~4.5 min on the shared 2-core machine)
        # the demo hand detector reached mAP 0.40 at IoU 0.6 and 0.99 at IoU 0.3 on held-out films.
        config.update({"batch_size": 4, "epochs": 30})
    return config


DETECTOR_PRESETS = {
    "paper-hand": _detector_preset(
        "hand", demo=False, description="RetinaNet ResNet-50 FPN, hands: 6 classes (§4.2)"
    ),
    "paper-foot": _detector_preset(
        "foot", demo=False, description="RetinaNet ResNet-50 FPN, feet: 5 classes (§4.2)"
    ),
    "demo-hand": _detector_preset(
        "hand", demo=True, description="tiny RetinaNet for hand phantoms (P3-P4, small films)"
    ),
    "demo-foot": _detector_preset(
        "foot", demo=True, description="tiny RetinaNet for foot phantoms (P3-P4, small films)"
    ),
}


PRESETS = {**JOINT_PRESETS, **DETECTOR_PRESETS}

# The training schedules as `common.callbacks.callback_preset` builds them (its fields), from the
# numbers of §4.2.1 and §4.3.1 above. `deepra.train` passes the chosen preset's values over these.
CALLBACK_PRESETS = {
    "ra": {
        "monitor": _JOINT_TRAINING["monitor"],
        "lr_factor": _JOINT_TRAINING["reduce_lr_factor"],
        "lr_patience": _JOINT_TRAINING["reduce_lr_patience"],
        "reference": "paper 001 §4.3.1: LR x0.2 after 5 epochs without val-RMSE improvement, "
        "keep the best",
    },
    "ra-detector": {
        # logged by `deepra.train` as `val_map` (the preset's "val_mAP" names the same quantity)
        "monitor": "val_map",
        "mode": "max",
        "lr_factor": _DETECTOR_TRAINING["reduce_lr_factor"],
        "lr_patience": _DETECTOR_TRAINING["reduce_lr_patience"],
        "stop_patience": _DETECTOR_TRAINING["early_stopping_patience"],
        "reference": "paper 001 §4.2: LR x0.1 after 4 epochs without val-mAP improvement, "
        "stop after 5",
    },
}
