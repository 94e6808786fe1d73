"""Presets of SpineNet: data only, no Keras (keras-hub's `*_presets.py` shape).

`PRESETS` maps a name to the configuration dict `spinenet.model.get_config` checks and
`spinenet.model.build_model` builds: `paper` (branch after Conv5), `spider` (SPIDER's binary
narrowing), `paper_branch_<point>` (Table 2's other branch points) and `demo`. Importing this module
imports nothing but the standard library, so `python -m spinenet --help` lists the presets without
TensorFlow or Keras. The architecture and its parameter table: `spinenet.model`.

Reference:
    Jamaludin, Kadir, Zisserman, "SpineNet: Automatically pinpointing classification evidence in
    spinal MRIs", MICCAI 2016, §2, §4, Table 2.
"""

#: The six tasks of the paper with their class counts (§2, §4, Table 1).
PAPER_TASKS = {
    "pfirrmann": 5,
    "narrowing": 4,
    "upper_endplate": 2,
    "lower_endplate": 2,
    "upper_marrow": 2,
    "lower_marrow": 2,
}
#: The same tasks as SPIDER grades them: `Disc narrowing` is binary there.
SPIDER_TASKS = {**PAPER_TASKS, "narrowing": 2}

_PAPER = {
    # --- architecture (§4, Fig. 2)
    "input_shape": (112, 224, 9),
    "conv_filters": (96, 256, 512, 512, 512),
    "fc_units": (4096, 1024),
    "dropout": 0.5,  # VGG-M's dropout after FC6 and FC7 (the paper does not change it)
    "branch_point": "conv5",
    "tasks": dict(PAPER_TASKS),
    "input_mean": 0.5,  # initial per-channel mean until `set_input_mean` sets the training mean
    # --- training (§4); used by the training engine, not by build_model
    "batch_size": 256,
    "learning_rate": 1e-3,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "global_clipnorm": None,  # optional gradient clipping (not in the paper: None)
    "lr_decay_factor": 0.1,
    "lr_patience": 5,  # epochs without val-loss improvement before x0.1 (not given in the paper)
    "epochs": 1000,
    "task_weights": None,  # omega_t; None = 1 for every task (§2)
    # --- augmentation (§4, "Data augmentation details")
    "rotation_deg": 15.0,
    "shift_x_px": 32,
    "shift_y_px": 24,
    "shift_slices": 2,
    "scale_range": (0.9, 1.1),
    "intensity_delta": 0.1,
    "slice_flip": True,
    # --- test-time augmentation: 9 patches x 2 reflections x 3 slice windows = 54 (§4)
    "tta": True,
    "tta_shift_px": 16,
    "tta_slice_shift": 1,
    # --- evidence hotspots (§3): randomly augmented copies averaged per map
    "hotspot_copies": 16,
}

PRESETS = {
    "paper": _PAPER,
    # SPIDER's gradings: narrowing is binary, otherwise the paper's network.
    "spider": {**_PAPER, "tasks": dict(SPIDER_TASKS)},
    # Table 2's other branch points (same network, different sharing).
    **{
        f"paper_branch_{point}": {**_PAPER, "branch_point": point}
        for point in ("none", "conv3", "conv4", "fc6", "fc7")
    },
    # Small enough to train on the phantoms on a 2-core CPU in a few minutes.
    "demo": {
        **_PAPER,
        "conv_filters": (16, 32, 32, 32, 32),
        "fc_units": (64, 32),
        "dropout": 0.25,
        "tasks": dict(SPIDER_TASKS),
        "batch_size": 32,
        "learning_rate": 0.01,
        "epochs": 40,
        "tta": True,
    },
}

# The training schedule as `common.callbacks.callback_preset` builds it (its fields), from the
# numbers of §4 above. `spinenet.train` passes the chosen preset's values over these.
CALLBACK_PRESETS = {
    "spine": {
        "lr_factor": _PAPER["lr_decay_factor"],
        "lr_patience": _PAPER["lr_patience"],
        "reference": "paper 002 §4: LR x0.1 as the error plateaus (patience not given: 5)",
    },
}
