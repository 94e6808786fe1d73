"""MURA: abnormality detection in upper-extremity radiographs with DenseNet169 (paper 004).

Importing the package registers its Keras objects, so saved `.h5` and `.keras` models reload with
`keras.models.load_model` after `import mura`.

Public API (CONTRACT.md): `PRESETS`, `build_model(preset="paper", **overrides)`,
`write_phantom_dataset(root, *, num_subjects=600, seed=0)`, `inspect_dataset(root)`,
`train(data_dir, out_dir, *, preset="demo", ...)`, `evaluate(model, data_dir, out_dir, *,
ensemble=None)`, `predict(model, inputs, out_dir, *, explain=False, ensemble=None)`; and
`explain_model`, `class_activation_map`, `load_records`, `make_dataset`, `study_probabilities`,
`TopKWeights`.
"""

from common.cli import positive_int
from common.lazy import lazy_package
from mura.presets import PRESETS

_ENSEMBLE = (
    ("--ensemble",),
    {
        "type": positive_int,
        "default": None,
        "metavar": "K",
        "help": "average the run's K best epochs by validation loss (MURA paper: 5; "
        "default: the run's ensemble_size, 1)",
    },
)

# Package-specific flags of `python -m mura` (see common.cli).
CLI_ARGUMENTS = {
    "evaluate": [_ENSEMBLE],
    "predict": [_ENSEMBLE],
}

__all__ = [
    "CLI_ARGUMENTS",
    "PRESETS",
    "TopKWeights",
    "build_model",
    "class_activation_map",
    "evaluate",
    "explain_model",
    "inspect_dataset",
    "load_records",
    "make_dataset",
    "predict",
    "study_probabilities",
    "train",
    "write_phantom_dataset",
]


# Public names load on first use (common.lazy): `import mura` imports neither TensorFlow nor Keras.
__getattr__, __dir__ = lazy_package(
    __name__,
    {
        "inspect_dataset": "mura.data",
        "load_records": "mura.data",
        "make_dataset": "mura.data",
        "study_probabilities": "mura.data",
        "TopKWeights": "mura.ensemble",
        "evaluate": "mura.evaluate",
        "predict": "mura.evaluate",
        "class_activation_map": "mura.explain",
        "build_model": "mura.model",
        "explain_model": "mura.model",
        "write_phantom_dataset": "mura.synthetic",
        "train": "mura.train",
    },
)
