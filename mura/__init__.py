"""MURA: abnormality detection in upper-extremity radiographs with DenseNet169 (paper 004).

Importing the package registers its Keras objects, so saved `.h5` and `.keras` models reload with
`keras.models.load_model` after `import mura`.
"""

from mura.data import inspect_dataset
from mura.model import PRESETS
from mura.model import build_model
from mura.model import explain_model
from mura.synthetic import write_phantom_dataset

__all__ = ["PRESETS", "build_model", "explain_model", "inspect_dataset", "write_phantom_dataset"]
