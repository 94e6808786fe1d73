"""Knee OA KL grading with trainable attention branches (Górriz et al., MIDL 2019).

Importing the package registers its Keras objects (the attention module is
`common.layers.AttentionBranch`), so `keras.models.load_model` reads saved `kneeoa` models in a
fresh process.

Public API (CONTRACT.md): `PRESETS`, `build_model(preset="paper", *, weights=None, **overrides)`,
`write_phantom_dataset(root, *, num_subjects=400, seed=0, layout="oai")`,
`inspect_dataset(root, layout=None)`, `train(data_dir, out_dir, *, preset="demo", ...)`,
`evaluate(model, data_dir, out_dir)`, `predict(model, inputs, out_dir, *, explain=False,
bilateral=False)`; and `explain_model`, `logits_model`, `load_records`, `make_dataset`,
`resolve_config`.
"""

import common  # noqa: F401  (first: quiet TensorFlow import, shared Keras objects)
from kneeoa import model  # noqa: F401  (registers Keras objects)
from kneeoa.data import inspect_dataset
from kneeoa.data import load_records
from kneeoa.data import make_dataset
from kneeoa.evaluate import evaluate
from kneeoa.evaluate import predict
from kneeoa.model import PRESETS
from kneeoa.model import build_model
from kneeoa.model import explain_model
from kneeoa.model import logits_model
from kneeoa.model import resolve_config
from kneeoa.synthetic import write_phantom_dataset
from kneeoa.train import train

# Package-specific flags of `python -m kneeoa` (see common.cli).
_READ_LAYOUT = (
    ("--layout",),
    {
        "choices": ("folders", "oai", "most", "oai+most"),
        "default": None,
        "help": "which data set to read when --data-dir holds several (kneeKL224 folders, OAI, "
        "MOST or both releases); default: the one there, an error naming them when two",
    },
)
CLI_ARGUMENTS = {
    "synthesize": [
        (
            ("--layout",),
            {
                "choices": ("folders", "oai", "most", "oai+most", "both"),
                "default": "oai",
                "help": "kneeKL224 folders, the OAI layout (default), MOST, both releases "
                "(oai+most), or folders and OAI (both)",
            },
        )
    ],
    "inspect": [_READ_LAYOUT],
    "train": [_READ_LAYOUT],
    "evaluate": [_READ_LAYOUT],
    "predict": [
        (
            ("--bilateral",),
            {
                "action": "store_true",
                "help": "inputs are bilateral PA films: split each into right and left knees",
            },
        )
    ],
}

__all__ = [
    "CLI_ARGUMENTS",
    "PRESETS",
    "build_model",
    "evaluate",
    "explain_model",
    "inspect_dataset",
    "load_records",
    "logits_model",
    "make_dataset",
    "predict",
    "resolve_config",
    "train",
    "write_phantom_dataset",
]
