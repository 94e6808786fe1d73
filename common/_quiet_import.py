"""Imports TensorFlow with its C++ start-up chatter kept off stderr.

TensorFlow's C++ runtime writes lines such as "oneDNN custom operations are on" to file
descriptor 2 before its logging is configured, whatever `TF_CPP_MIN_LOG_LEVEL` says; they would
break the CLI's promise of one stderr line per error. File descriptor 2 is pointed at /dev/null
for the import only (Python exceptions raised by the import still reach the caller). Set
`TF_CPP_MIN_LOG_LEVEL=0` (or `MSK_DEBUG=1`) to see them.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly():
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


_import_tensorflow_quietly()
