"""Bone-age regression from hand radiographs with BoneAgeNet (paper 003), RSNA 2017 layouts.

Importing the package imports `boneage.model` (and `common`, which registers the shared Keras
objects), so saved models reload with `keras.models.load_model` in a fresh process.

Public API (CONTRACT.md): `PRESETS`, `build_model(preset="paper", weights=None, **overrides)`,
`write_phantom_dataset(root, *, num_subjects=1200, seed=0)`, `inspect_dataset(root)`,
`train(data_dir, out_dir, *, preset="demo", ...)`, `evaluate(model, data_dir, out_dir)`,
`predict(model, inputs, out_dir, *, explain=False, sex=None, sex_csv=None)`; and
`class_activation_map`, `count_params`, `explain_model`, `load_records`, `make_dataset`,
`read_records`, `split_records`.
"""

from boneage.presets import PRESETS
from common.lazy import lazy_package

# Package-specific flags of `python -m boneage` (see common.cli): the sex input of `predict`.
CLI_ARGUMENTS = {
    "predict": [
        (
            ("--sex",),
            {
                "default": None,
                "metavar": "M|F",
                "help": "the sex of every input image, M (male) or F (female); the model has a "
                "sex input (a --sex-csv entry wins for the files it lists)",
            },
        ),
        (
            ("--sex-csv",),
            {
                "default": None,
                "metavar": "FILE",
                "help": "CSV with columns file,sex (sex M or F) giving each input's sex by file name",
            },
        ),
    ],
}

__all__ = [
    "CLI_ARGUMENTS",
    "PRESETS",
    "build_model",
    "class_activation_map",
    "count_params",
    "evaluate",
    "explain_model",
    "inspect_dataset",
    "load_records",
    "make_dataset",
    "predict",
    "read_records",
    "split_records",
    "train",
    "write_phantom_dataset",
]


# Public names load on first use (common.lazy): `import boneage` imports neither TensorFlow nor Keras.
__getattr__, __dir__ = lazy_package(
    __name__,
    {
        "inspect_dataset": "boneage.data",
        "load_records": "boneage.data",
        "make_dataset": "boneage.data",
        "read_records": "boneage.data",
        "split_records": "boneage.data",
        "evaluate": "boneage.evaluate",
        "predict": "boneage.evaluate",
        "class_activation_map": "boneage.explain",
        "build_model": "boneage.model",
        "count_params": "boneage.model",
        "explain_model": "boneage.model",
        "write_phantom_dataset": "boneage.synthetic",
        "train": "boneage.train",
    },
)
