"""Imports TensorFlow with its C++ start-up chatter kept off stderr, when it is needed at all.

TensorFlow's C++ runtime writes lines such as "oneDNN custom operations are on" to file
descriptor 2 before its logging is configured, whatever `TF_CPP_MIN_LOG_LEVEL` says; they would
break the CLI's promise of one stderr line per error. File descriptor 2 is pointed at /dev/null
for the import only (Python exceptions raised by the import still reach the caller). Set
`TF_CPP_MIN_LOG_LEVEL=0` (or `MSK_DEBUG=1`) to see them.

Importing this module imports nothing heavy: `common.lazy` calls `import_tensorflow_quietly()`
before it imports a module that uses TensorFlow, or any Keras module under the TensorFlow backend.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def keras_backend():
    """The backend Keras will use, read as Keras reads it, without importing Keras.

    Returns:
        `KERAS_BACKEND` if set, else the `"backend"` of `$KERAS_HOME/keras.json` (default
        `~/.keras/keras.json`), else `"tensorflow"` (Keras' default).
    """
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    if "keras" in sys.modules and hasattr(sys.modules["keras"], "backend"):
        return sys.modules["keras"].backend.backend()
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as handle:
            return str(json.load(handle).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def import_tensorflow_quietly():
    """Imports TensorFlow (once) with file descriptor 2 silenced; a no-op if already imported."""
    if "tensorflow" in sys.modules or os.environ.get("MSK_DEBUG"):
        return
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow

        # probing the platforms (CUDA's cuInit on a machine without a GPU) logs too; physical
        # devices only, so logical devices can still be configured afterwards
        tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
