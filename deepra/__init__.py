"""DeepRA: RA joint damage from hand and foot radiographs (Chaturvedi, paper 001).

Two stages: RetinaNet detectors of fingers, toes and wrists (`deepra.detector`), then EfficientNet
+ attention regressors of the Sharp/van der Heijde joint scores from each crop (`deepra.joints`),
on the RA2-DREAM layout (`deepra.data`, phantoms in `deepra.synthetic`); `deepra.pipeline` joins
them (films -> boxes -> crops -> 86 scores), `deepra.train` trains all eight models of a run and
`deepra.evaluate` scores, reports and predicts. Importing the package registers its Keras objects
(and the detector's keras-hub classes), so saved models reload with `keras.models.load_model`.

Public API (CONTRACT.md): `PRESETS`, `build_model(preset="paper", **overrides)`,
`write_phantom_dataset(root, *, num_subjects=64, seed=0)`, `inspect_dataset(root)`,
`train(data_dir, out_dir, *, preset="demo", ...)`, `evaluate(model, data_dir, out_dir)`,
`predict(model, inputs, out_dir, *, explain=False)`; and `explain_model`, `load_run`,
`TRAIN_PRESETS`.
"""

from common.lazy import lazy_package
from deepra.presets import PRESETS

# Package-specific flags of `python -m deepra` (see common.cli); None keeps the preset's value.
CLI_ARGUMENTS = {
    "train": [
        (
            ("--detector-epochs",),
            {
                "type": int,
                "default": None,
                "help": "epochs of the two detectors (default: preset's)",
            },
        ),
        (
            ("--joint-epochs",),
            {
                "type": int,
                "default": None,
                "help": "epochs of the six joint models (default: preset's)",
            },
        ),
        (
            ("--joint-batch-size",),
            {
                "type": int,
                "default": None,
                "help": "batch of the six joint models (default: the preset's; --batch-size sets "
                "every model's)",
            },
        ),
        (
            ("--crop-size",),
            {
                "type": int,
                "default": None,
                "help": "side of the demo joint models' crops in pixels",
            },
        ),
        (
            ("--crop-source",),
            {
                "choices": ("detected", "annotated"),
                "default": None,
                "help": "train the joint models on the detected crops (default, as the paper) "
                "or on the annotated boxes",
            },
        ),
        (
            ("--column-weights",),
            {
                "default": None,
                "help": "CSV 'column,weight' of the weighted metrics (default: every weight 1)",
            },
        ),
    ],
    "evaluate": [
        (
            ("--column-weights",),
            {
                "default": None,
                "help": "CSV 'column,weight' of the weighted metrics (default: the run's)",
            },
        ),
    ],
}

# The shared flags, in deepra's terms (a run is eight models; a patient is four films).
_RUN_MODEL = (
    "a run's model.h5 or model.keras (the two detectors and six joint models are read from "
    "beside it)"
)
_BATCH = "films per detector pass (the joint models take 8x as many crops per pass)"
CLI_HELP = {
    "evaluate": {"--model": _RUN_MODEL, "--batch-size": _BATCH},
    "predict": {
        "--model": _RUN_MODEL,
        "--batch-size": _BATCH,
        "--input": "films named <Patient_ID>-<LH|RH|LF|RF>.jpg (JPEG, PNG or DICOM), folders of "
        "them (a test folder with template.csv is read in its order), or one patient's four "
        "films in the order LH RH LF RF",
        "--explain": "also write each film's attention weights over every joint crop",
    },
}

__all__ = [
    "CLI_ARGUMENTS",
    "CLI_HELP",
    "PRESETS",
    "TRAIN_PRESETS",
    "build_model",
    "evaluate",
    "explain_model",
    "inspect_dataset",
    "load_run",
    "predict",
    "train",
    "write_phantom_dataset",
]


# Public names load on first use (common.lazy): `import deepra` imports neither TensorFlow nor Keras.
__getattr__, __dir__ = lazy_package(
    __name__,
    {
        "inspect_dataset": "deepra.data",
        "evaluate": "deepra.evaluate",
        "predict": "deepra.evaluate",
        "build_model": "deepra.model",
        "explain_model": "deepra.model",
        "load_run": "deepra.pipeline",
        "write_phantom_dataset": "deepra.synthetic",
        "TRAIN_PRESETS": "deepra.train",
        "train": "deepra.train",
    },
)
