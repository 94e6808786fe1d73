"""Shared core of the suite: layers, losses, metrics, data augmentation, image I/O, training engine.

Importing `common` registers its Keras objects (`common.layers`), so models that use them reload
with `keras.models.load_model` in a fresh process.
"""

from common import _quiet_import  # noqa: F401,I001  (first: TensorFlow without start-up noise)
from common import layers  # noqa: F401  (registers the Keras objects)
from common.errors import DataError  # noqa: F401
