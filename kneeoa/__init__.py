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

from common.lazy import lazy_package
from kneeoa.presets import PRESETS

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


# Public names load on first use (common.lazy): `import kneeoa` imports neither TensorFlow nor Keras.
__getattr__, __dir__ = lazy_package(
    __name__,
    {
        "inspect_dataset": "kneeoa.data",
        "load_records": "kneeoa.data",
        "make_dataset": "kneeoa.data",
        "evaluate": "kneeoa.evaluate",
        "predict": "kneeoa.evaluate",
        "build_model": "kneeoa.model",
        "explain_model": "kneeoa.model",
        "logits_model": "kneeoa.model",
        "resolve_config": "kneeoa.model",
        "write_phantom_dataset": "kneeoa.synthetic",
        "train": "kneeoa.train",
    },
)
