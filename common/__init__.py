"""Shared core of the suite: layers, losses, metrics, data augmentation, image I/O, training engine.

Importing `common` is cheap: it imports neither TensorFlow nor Keras (`common.lazy`). Its Keras
objects (`common.layers`, `common.losses`) are registered as soon as Keras is imported, so models
that use them reload with `keras.models.load_model` in a fresh process after `import common`.
`common.layers` and `common.<module>` are imported on first access.
"""

from common.errors import DataError  # noqa: F401,I001
from common.lazy import lazy_package

__getattr__, __dir__ = lazy_package(
    __name__,
    {"layers": "common.layers"},
    backend_free=("common.layers", "common.losses"),
    keras_modules=("common.layers", "common.losses"),
)
