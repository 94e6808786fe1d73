"""The run's `config.json`: written once by `train`, read back beside a model by `evaluate`.

`write_config` records the resolved configuration of a run in `RUN/config.json` (atomic) and logs
each start in `RUN/train.log`; `read_run_config(model_path)` is the one reader of the file saved
beside a model (`RUN/model.h5`, `RUN/model.keras`): a file that is there but is not a JSON object
stops with a `DataError` that names it. Nothing here imports a package, the CLI or Keras.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common.errors import DataError

CONFIG_NAME = "config.json"
# The run's log file: the configuration of every start of the run (see `write_config`).
TRAIN_LOG = "train.log"


def write_config(run_dir, config, *, echo=True):
    """Writes the resolved configuration of a run to `RUN/config.json` (atomic) and logs it.

    The full dump (about 50 lines) goes to `RUN/train.log`, appended with a time stamp, so that a
    resumed run keeps the configuration of each start; the screen gets one line naming both files.

    Args:
        run_dir: the run folder (created when missing).
        config: the configuration, a JSON-able dict (NumPy values and paths are converted).
        echo: also append to `RUN/train.log` and print where both files are.
    """
    # `common.reports.files` imports NumPy and pandas; the CLI imports this module for --help.
    from common.reports.files import write_json

    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, CONFIG_NAME)
    write_json(config_path, config)
    if echo:
        log_path = os.path.join(run_dir, TRAIN_LOG)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        dump = json.dumps(config, indent=1, default=str)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"[{stamp}] Configuration:\n{dump}\n")
        print(f"Configuration: {config_path} (logged in {log_path})", flush=True)


def run_config_path(model_path):
    """Where the run that wrote `model_path` keeps its configuration: `config.json` beside it."""
    return Path(model_path).with_name(CONFIG_NAME)


def read_config_file(path, *, required=False, missing="no such file"):
    """A run's configuration file as a dict.

    Args:
        path: the `config.json` file.
        required: raise when the file is absent (default: return `{}`).
        missing: the reason given when a required file is absent.

    Returns:
        The configuration dict, or `{}` when the file is absent and not `required`.

    Raises:
        DataError: naming the file, when it is unreadable, not JSON (with the parser's line and
            column), or JSON but not an object; or when a `required` file is absent.
    """
    path = Path(path)
    if not path.is_file():
        if required:
            raise DataError(missing, path=path)
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"unreadable run configuration: {error}", path=path) from None
    if not isinstance(config, dict):
        raise DataError(
            f"unreadable run configuration: a JSON object was expected, not "
            f"{type(config).__name__}",
            path=path,
        )
    return config


def read_run_config(model_path, *, required=False):
    """The `config.json` saved beside a model by the run that trained it.

    Args:
        model_path: the model file (`RUN/model.h5`, `RUN/model.keras`), or None.
        required: raise when there is no `config.json` beside the model (default: return `{}`,
            e.g. for a bare model file whose settings come from the model itself).

    Returns:
        The run's configuration dict; `{}` for `model_path=None` or when the file is absent and
        not `required`.

    Raises:
        DataError: the file is there but unreadable or not a JSON object, or it is absent and
            `required` (the message names the file).
    """
    if model_path is None:
        if required:
            raise ValueError("read_run_config(required=True) needs a model path")
        return {}
    return read_config_file(
        run_config_path(model_path),
        required=required,
        missing="no run configuration beside the model",
    )
