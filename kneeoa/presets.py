"""Presets of the KL-grade classifiers: data only, no Keras (keras-hub's `*_presets.py` shape).

`PRESETS` maps a name to the configuration dict `kneeoa.model.resolve_config` checks and
`kneeoa.model.build_model` builds: `paper`, `demo` and every cell of Table 1. Importing this module
imports nothing but the standard library, so `python -m kneeoa --help` lists the presets without
TensorFlow or Keras. The architecture and the meaning of each key: `kneeoa.model`.

Reference:
    Górriz, Antony, McGuinness, Giró-i-Nieto, O'Connor, "Assessing knee OA severity with CNN
    attention-based end-to-end architectures", MIDL 2019: §3.2-3.5, Tables 1-5.
"""

NUM_KL_GRADES = 5

# Test accuracy of every cell of Table 1 (OAI + MOST test set), for reports that put ours beside it.
TABLE1_ACCURACY = {
    "antony-clsf": {
        "att0": 0.4176,
        "att1": 0.419,
        "att2": 0.4453,
        "early-fusion": 0.525,
        "multi-loss": {"att1": 0.439, "att2": 0.466},
    },
    "antony-ext": {
        "att0": 0.40,
        "att1": 0.5326,
        "att2": 0.5383,
        "early-fusion": 0.5617,
        "multi-loss": {"att1": 0.5561, "att2": 0.5568},
    },
    "resnet50": {
        "att0": 0.593,
        "att1": 0.5867,
        "att2": 0.5647,
        "early-fusion": 0.59,
        "multi-loss": {"att0": 0.60, "att1": 0.5688},
    },
    "vgg16": {
        "att0": 0.622,
        "att1": 0.617,
        "att2": 0.588,
        "early-fusion": 0.63,
        "multi-loss": {"att0": 0.643, "att1": 0.632},
    },
}

_INPUTS = {
    "small-vgg": ((128, 96), 1),
    "vgg16": ((320, 224), 3),
    "resnet50": ((224, 224), 3),
    "antony-clsf": ((200, 300), 1),
    "antony-ext": ((200, 300), 1),
}

# The pair of branches the paper combines (Table 1, multi-loss row; Fig. 3 for VGG-16's fusion).
_PAIRS = {
    "vgg16": ("att0", "att1"),
    "resnet50": ("att0", "att1"),
    "antony-clsf": ("att1", "att2"),
    "antony-ext": ("att1", "att2"),
}

# §3.5: Adam (beta 0.9 / 0.999), lr 1e-5, batch 64, lr x0.1 after 2 epochs without val-loss
# improvement, early stop after 3.
_PAPER_TRAINING = {
    "learning_rate": 1e-5,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "batch_size": 64,
    "epochs": 100,
    "reduce_lr_factor": 0.1,
    "reduce_lr_patience": 2,
    "early_stopping_patience": 3,
    "monitor": "val_loss",
}


def _preset(base, branches, combination, loss_weights, test_branch, description):
    image_size_hw, channels = _INPUTS[base]
    return {
        "base": base,
        "image_size_hw": image_size_hw,
        "channels": channels,
        "branches": tuple(branches),
        "combination": combination,
        "loss_weights": dict(loss_weights),
        "test_branch": test_branch,
        "num_classes": NUM_KL_GRADES,
        "attention_filters": (64, 16),
        "attention_dropout": 0.0,
        "trunk_filters": None,
        "batchnorm_momentum": 0.99,
        "backbone_weights": None,
        "augment_flip": True,
        "histogram_equalization": True,
        **_PAPER_TRAINING,
        "description": description,
    }


def _table1_presets():
    presets = {}
    for base, pair in _PAIRS.items():
        for branch in ("att0", "att1", "att2"):
            presets[f"{base}-{branch}"] = _preset(
                base,
                (branch,),
                "single",
                {branch: 1.0},
                branch,
                f"Table 1, {base} {branch}: one attention branch and its softmax.",
            )
        presets[f"{base}-early-fusion"] = _preset(
            base,
            pair,
            "early-fusion",
            {"fusion": 1.0},
            "fusion",
            f"Table 1, {base} early fusion of {pair[0]} + {pair[1]}: concatenated branch "
            "features, one fully connected layer, softmax (§3.3).",
        )
        # w = (1, 0.8): the paper's grid-search optimum for VGG-16 (§3.3); the other bases reuse
        # it (the paper gives no weights for them). The test branch is Table 1's better one.
        best = max(TABLE1_ACCURACY[base]["multi-loss"], key=TABLE1_ACCURACY[base]["multi-loss"].get)
        presets[f"{base}-multi-loss"] = _preset(
            base,
            pair,
            "multi-loss",
            {pair[0]: 1.0, pair[1]: 0.8},
            best,
            f"Table 1, {base} multi-loss on {pair[0]} + {pair[1]} (w = 1, 0.8); {best} at test time.",
        )
    return presets


PRESETS = {
    "paper": _preset(
        "vgg16",
        ("att0", "att1"),
        "multi-loss",
        {"att0": 1.0, "att1": 0.8},
        "att0",
        "The paper's best model (Tables 1 and 2): VGG-16, multi-loss on att0 + att1 with "
        "w0 = 1, w1 = 0.8, input 320 x 224, att0 used at test time (64.3%, kappa 0.63).",
    ),
    "demo": {
        **_preset(
            "small-vgg",
            ("att0", "att1"),
            "multi-loss",
            {"att0": 1.0, "att1": 0.8},
            "att0",
            "",
        ),
        "trunk_filters": (16, 24, 32, 48),
        "attention_filters": (16, 8),
        "batchnorm_momentum": 0.9,
        "learning_rate": 1e-3,
        "batch_size": 16,
        "epochs": 12,
        "reduce_lr_patience": 2,
        "early_stopping_patience": 4,
        "description": "Small VGG-like trunk (4 blocks of two 3x3 conv + BN + ReLU, 2x2 pool) at "
        "128 x 96 x 1 with the paper's multi-loss att0 + att1 (w = 1, 0.8) after blocks 3 and 4; "
        "trains on the phantoms on a 2-core CPU in a few minutes (BN momentum 0.9, Adam 1e-3, "
        "batch 16: the paper's 1e-5 would need far more steps than a demo has).",
    },
    **_table1_presets(),
}

# The training schedule as `common.callbacks.callback_preset` builds it (its fields), from the
# numbers of §3.5 above. `kneeoa.train` passes the chosen preset's values over these.
CALLBACK_PRESETS = {
    "knee": {
        "monitor": _PAPER_TRAINING["monitor"],
        "lr_factor": _PAPER_TRAINING["reduce_lr_factor"],
        "lr_patience": _PAPER_TRAINING["reduce_lr_patience"],
        "stop_patience": _PAPER_TRAINING["early_stopping_patience"],
        "reference": "paper 000 §3.5: LR x0.1 after 2 epochs without val-loss improvement, "
        "stop after 3",
    },
}
