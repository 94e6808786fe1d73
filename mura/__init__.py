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

import common  # noqa: F401  (first: quiet TensorFlow import, shared Keras objects)
from common.cli import positive_int
from mura import model  # noqa: F401  (registers Keras objects)
from mura.data import inspect_dataset
from mura.data import load_records
from mura.data import make_dataset
from mura.data import study_probabilities
from mura.ensemble import TopKWeights
from mura.evaluate import evaluate
from mura.evaluate import predict
from mura.explain import class_activation_map
from mura.model import PRESETS
from mura.model import build_model
from mura.model import explain_model
from mura.synthetic import write_phantom_dataset
from mura.train import train

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
