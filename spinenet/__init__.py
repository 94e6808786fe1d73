"""SpineNet (paper 002): multi-task grading of lumbar discs on sagittal MRI, with evidence hotspots.

Importing the package registers its Keras objects (`ChannelMeanSubtraction`), so saved models
load with `keras.models.load_model` after `import spinenet`.

Public API (CONTRACT.md): `PRESETS`, `build_model(preset="paper", *, weights=None, **overrides)`,
`write_phantom_dataset(root, *, num_subjects=80, seed=0, ...)`, `inspect_dataset(root)`,
`train(data_dir, out_dir, *, preset="demo", ...)`, `evaluate(model, data_dir, out_dir, ...)`,
`predict(model, inputs, out_dir, *, explain=False, ...)`; and `read_dataset`, `make_dataset`,
`explain_model`, `evidence_hotspots`, `task_hotspots`, `predict_tta`.

Reference:
    Jamaludin, Kadir, Zisserman, "SpineNet: Automatically pinpointing classification evidence in
    spinal MRIs", MICCAI 2016.
"""

from common.lazy import lazy_package
from spinenet.presets import PRESETS

_NO_TTA = (
    ("--no-tta",),
    {
        "dest": "tta",
        "action": "store_const",
        "const": False,
        "default": None,
        "help": "predict from the centre view only, not the average of the 54 test-time views "
        "of the paper (9 patches x 2 slice reflections x 3 slice windows)",
    },
)

# Package-specific flags of `python -m spinenet` (see common.cli).
CLI_ARGUMENTS = {
    "train": [_NO_TTA],
    "evaluate": [
        _NO_TTA,
    ],
    "predict": [
        _NO_TTA,
        (
            ("--series",),
            {
                "choices": ("preferred", "all"),
                "default": "preferred",
                "help": "--input takes segmented sagittal series, not plain images: a SPIDER "
                "folder (images/ + masks/), its images/ folder, single images/<patient>_<t1|t2|"
                "t2_SPACE>.mha files (mask in ../masks/), or volumes.npy arrays of extracted "
                "(N, 112, 224, 9) disc volumes; every disc labelled in a mask (201-225) is "
                "graded. For folders, grade one series per patient ('preferred': T2, else T2 "
                "SPACE, else T1; default) or 'all' of them",
            },
        ),
        (
            ("--hotspot-copies",),
            {
                "type": int,
                "default": None,
                "metavar": "N",
                "help": "with --explain: randomly augmented copies averaged per evidence-hotspot "
                "map (default: the run's, 16)",
            },
        ),
    ],
}

# The shared flags, in SpineNet's terms (a forward pass takes discs, 54 views each with TTA).
_BATCH = "discs per forward pass (with test-time augmentation, 54 views each; default: 2, else 64)"
CLI_HELP = {"evaluate": {"--batch-size": _BATCH}, "predict": {"--batch-size": _BATCH}}

__all__ = [
    "CLI_ARGUMENTS",
    "CLI_HELP",
    "PRESETS",
    "build_model",
    "evaluate",
    "evidence_hotspots",
    "explain_model",
    "inspect_dataset",
    "make_dataset",
    "predict",
    "predict_tta",
    "read_dataset",
    "task_hotspots",
    "train",
    "write_phantom_dataset",
]


# Public names load on first use (common.lazy): `import spinenet` imports neither TensorFlow nor Keras.
__getattr__, __dir__ = lazy_package(
    __name__,
    {
        "inspect_dataset": "spinenet.data",
        "make_dataset": "spinenet.data",
        "read_dataset": "spinenet.data",
        "evaluate": "spinenet.evaluate",
        "predict": "spinenet.evaluate",
        "evidence_hotspots": "spinenet.explain",
        "predict_tta": "spinenet.explain",
        "task_hotspots": "spinenet.explain",
        "build_model": "spinenet.model",
        "explain_model": "spinenet.model",
        "write_phantom_dataset": "spinenet.synthetic",
        "train": "spinenet.train",
    },
)
