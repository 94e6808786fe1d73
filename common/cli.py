"""The shared command line behind every `python -m PKG`: the same subcommands, flags and exit codes.

A package's `__main__.py` is two lines: `from common.cli import main` and
`raise SystemExit(main(<package module>))`. The package module provides the CONTRACT.md API
(`PRESETS`, `build_model`, `write_phantom_dataset`, `inspect_dataset`, `train`, `evaluate`,
`predict`) and may add flags per subcommand through `CLI_ARGUMENTS = {"predict": [(("--sex",),
{"help": ...})], ...}`; the extra values reach the function as keyword arguments. It may also
reword the help of a shared flag through `CLI_HELP = {"predict": {"--input": "a patient's four
films"}, ...}` (a flag the subcommand lacks is an error at start-up, not silently ignored).

Exit status: 0 on success; 2 on bad input or usage, with ONE line on stderr that names the file,
row and column at fault (set `MSK_DEBUG=1` for the traceback); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from common.errors import DataError
from common.options import VERIFY_DEFAULT_LIMIT
from common.options import option_names
from common.precision import PRECISIONS
from common.run_config import TRAIN_LOG  # noqa: F401  (moved there; still importable here)
from common.run_config import write_config  # noqa: F401  (moved there; still importable here)

# The names of `--strategy`, as `common.distribute.STRATEGIES` (a test keeps the two equal):
# building the parser must not import TensorFlow, so `--help` and `--version` stay fast.
STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
DISTRIBUTION = "msk-radiology-suite"

SUBCOMMANDS = (
    "synthesize",
    "inspect",
    "summary",
    "train",
    "evaluate",
    "predict",
    "export",
    "serve",
)
# The splits `evaluate --split` takes: every package's train makes these three.
SPLITS = ("test", "val", "train")


def positive_int(text):
    """argparse `type` of a flag that takes a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def suite_version():
    """The suite's version: the installed distribution's metadata, else `setup.cfg` beside it.

    Returns:
        A version string such as `"0.1.0"` (`"unknown"` when neither is found). Reads no module
        of the suite and imports neither TensorFlow nor Keras.
    """
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    import configparser

    setup_cfg = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg"
    )
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    return config.get("metadata", "version", fallback="unknown")


# ------------------------------------------------------------------ defaults shown in every --help
class _DefaultsFormatter(argparse.HelpFormatter):
    """Adds `(default: X)` to a flag's help unless the help already names its default.

    A flag whose default is None but that carries `package_default = (function, parameter)`
    shows the package's own default, read from the signature of `PKG.<function>` only when that
    help is printed (e.g. `--num-subjects`, which differs per package).
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        default = action.default
        lookup = getattr(action, "package_default", None)
        if default is None and lookup is not None:
            default = _package_default(*lookup)
            if default is None:
                default = "the run's"
        if default is None or isinstance(default, bool):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def _package_default(package, function, parameter):
    """The default of `PKG.function(parameter=...)`, or None when it has none."""
    import inspect

    try:
        value = inspect.signature(getattr(package, function)).parameters[parameter].default
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return None if value is inspect.Parameter.empty else value


def _with_package_default(action, package, function, parameter):
    action.package_default = (package, function, parameter)
    return action


def _preset_type(presets):
    """argparse `type` of `--preset`: hyphenated names, with underscore aliases accepted."""
    from common.options import look_up_option

    def resolve(text):
        try:
            return look_up_option(text, presets)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    resolve.__name__ = "preset"
    return resolve


def parse_set_overrides(items):
    """`KEY=VALUE` strings of `--set` as a dict; a VALUE that parses as JSON is taken as JSON.

    Args:
        items: e.g. `["learning_rate=1e-3", "image_size_hw=[96,80]", "backbone=densenet"]`, or None.

    Returns:
        dict of configuration overrides (keys with hyphens read as underscores).

    Raises:
        ValueError: an item without `=` or with an empty key.
    """
    overrides = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got '{item}'")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        overrides[key] = value
    return overrides


def build_parser(package):
    """The argparse parser of `python -m PKG` for a package module."""
    name = package.__name__
    presets = getattr(package, "PRESETS", {})
    preset_options = {
        "type": _preset_type(presets),
        "metavar": "{" + ",".join(option_names(presets)) + "}",
    }
    doc = (package.__doc__ or "").strip().splitlines()
    parser = _Parser(prog=f"python -m {name}", description=doc[0] if doc else name)
    parser.add_argument(
        "--version",
        action="version",
        version=f"{DISTRIBUTION} {suite_version()}",
        help="print the suite's version and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    sub.required = True
    # Every subcommand (also those added further down) shows its flags' defaults in --help.
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, formatter_class=_DefaultsFormatter, **k)

    p = sub.add_parser("synthesize", help="write a phantom data set in the real on-disk layout")
    p.add_argument("--out-dir", required=True, help="folder to write the data set into")
    _with_package_default(
        p.add_argument("--num-subjects", type=positive_int, default=None, help="subjects to draw"),
        package,
        "write_phantom_dataset",
        "num_subjects",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = sub.add_parser(
        "inspect", help="read a data set in its real layout and print one JSON object"
    )
    p.add_argument("--data-dir", required=True, help="the data set's root or the folder holding it")
    # --verify / --no-verify: decode every image (default: on below VERIFY_DEFAULT_LIMIT images)
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode every image file and report unreadable and missing ones (default: on when "
        f"the set has fewer than {VERIFY_DEFAULT_LIMIT:,} images)",
    )

    p = sub.add_parser("summary", help="build a model (no training) and describe it")
    p.add_argument(
        "--preset", default="paper", help="model preset (default paper)", **preset_options
    )
    p.add_argument("--json", action="store_true", help="print JSON only")

    p = sub.add_parser("train", help="train, then evaluate on the held-out split")
    p.add_argument("--data-dir", required=True, help="the data set's root or the folder holding it")
    p.add_argument("--out-dir", required=True, help="run folder (model, report, checkpoints)")
    p.add_argument("--preset", default="demo", help="model preset (default demo)", **preset_options)
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: preset's)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="global batch size (default: preset's)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES, help="tf.distribute strategy")
    p.add_argument("--resume", action="store_true", help="continue from RUN's last checkpoint")
    p.add_argument(
        "--weights",
        default=None,
        metavar="imagenet|coco|none|FILE",
        help="the model's start: imagenet (keras.applications trunk, downloaded once into Keras' "
        "cache ~/.keras/models or $KERAS_HOME/models), coco (deepra's detectors), none, or a "
        "local weights file (default: the paper's start for the paper preset, none otherwise)",
    )
    # one run per folder (common.runlock): --overwrite starts afresh in a used folder
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run folder that holds an earlier run (its checkpoints, model and "
        "report files are removed first)",
    )

    p = sub.add_parser("evaluate", help="evaluate a saved .h5 or .keras model")
    p.add_argument("--model", required=True, help="model file (.h5 or .keras)")
    p.add_argument("--data-dir", required=True, help="the data set's root or the folder holding it")
    p.add_argument(
        "--out-dir", required=True, help="folder for metrics.json, report.html, predictions.csv"
    )

    p = sub.add_parser("predict", help="predict for image files, DICOM files or folders of them")
    p.add_argument("--model", required=True, help="model file (.h5 or .keras)")
    p.add_argument("--input", required=True, nargs="+", help="files or folders")
    p.add_argument("--out-dir", required=True, help="folder for predictions.csv (and overlays)")
    p.add_argument("--explain", action="store_true", help="write one explanation overlay per input")

    add_engine_arguments(sub)
    _add_shared_flags(sub.choices, package)

    # Serving and export (common.export, common.serve): heavy modules are imported in dispatch.
    p = sub.add_parser("export", help="write a model that takes raw films, in another format")
    p.add_argument("--model", required=True, help="model file (.h5 or .keras)")
    p.add_argument("--out-dir", required=True, help="folder for the exported model and its card")
    p.add_argument(
        "--format",
        required=True,
        choices=("saved_model", "keras", "h5", "onnx"),
        help="saved_model (DIR/saved_model/), keras, h5 or onnx (DIR/model.<format>)",
    )
    p = sub.add_parser("serve", help="REST service and browser viewer (FastAPI + uvicorn)")
    p.add_argument("--model", required=True, help="run folder or model file (.keras or .h5)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--root-path", default="", help="path prefix when published behind a reverse proxy"
    )

    for command, arguments in getattr(package, "CLI_ARGUMENTS", {}).items():
        target = sub.choices[command]
        for flags, options in arguments:
            target.add_argument(*flags, **options)
    for command, helps in getattr(package, "CLI_HELP", {}).items():
        actions = {flag: a for a in sub.choices[command]._actions for flag in a.option_strings}
        for flag, text in helps.items():
            if flag not in actions:
                raise KeyError(f"{name}.CLI_HELP: `{command}` has no flag {flag}")
            actions[flag].help = text
    return parser


# ---------------------------------------------------------------- precision and engine flags
def add_engine_arguments(sub):
    """Adds `--precision` (train, evaluate, predict) and the training engine's flags (train).

    Args:
        sub: the subparsers action of `build_parser`.
    """
    for command in ("train", "evaluate", "predict"):
        sub.choices[command].add_argument(
            "--precision",
            default="auto",
            choices=PRECISIONS,
            help="compute precision: auto = mixed_float16 on a CUDA GPU with compute "
            "capability >= 7.0, else float32 (default auto)",
        )
    p = sub.choices["train"]
    p.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    p.add_argument(
        "--steps-per-execution",
        type=positive_int,
        default=None,
        help="training steps per compiled call; per-batch callbacks run once per call "
        "(default 16, see README)",
    )
    p.add_argument(
        "--no-tensorboard",
        dest="tensorboard",
        action="store_false",
        help="do not write TensorBoard logs to RUN/tensorboard/ (default: they are written)",
    )


def configure_run(args):
    """Applies the precision and engine flags of a parsed command before the package runs.

    Sets Keras' dtype policy (`common.precision.set_precision`) for `train`, `evaluate` and
    `predict`, and the `Trainer` defaults (`common.training.engine_options`) for `train`.
    """
    if args.command not in ("train", "evaluate", "predict"):
        return
    from common._quiet_import import import_tensorflow_quietly

    import_tensorflow_quietly()  # the dtype policy imports Keras, and Keras TensorFlow
    from common.precision import set_precision

    set_precision(args.precision)
    if args.command == "train":
        from common.training import DEFAULT_STEPS_PER_EXECUTION
        from common.training import set_engine_defaults

        set_engine_defaults(
            steps_per_execution=args.steps_per_execution or DEFAULT_STEPS_PER_EXECUTION,
            jit_compile=bool(args.jit_compile),
            tensorboard=bool(args.tensorboard),
        )


def _add_shared_flags(parsers, package):
    """The flags every package shares on train, evaluate and predict (issue 18, "Command line").

    `--set` (train) reaches the package's `train(**overrides)`; `--batch-size` (evaluate,
    predict) and `--split` (evaluate) reach `evaluate` / `predict` as keyword arguments;
    `--link-uids` and `--dicom-out` (predict) decide how DICOM inputs are named and whether DICOM
    results are written (`common.identifiers`, `common.dicom_out`).
    """
    parsers["train"].add_argument(
        "--set",
        action="append",
        dest="set_overrides",
        default=None,
        metavar="KEY=VALUE",
        help="override one configuration key of the preset (VALUE is JSON when it parses as "
        "JSON, else text), e.g. --set learning_rate=1e-4; repeatable; an unknown KEY is an "
        "error listing the known ones",
    )
    for command in ("evaluate", "predict"):
        _with_package_default(
            parsers[command].add_argument(
                "--batch-size",
                type=positive_int,
                default=None,
                help="images per forward pass (memory, not results)",
            ),
            package,
            command,
            "batch_size",
        )
    parsers["evaluate"].add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="which split of the data set to evaluate, as train made it (test: the held-out one)",
    )
    parsers["predict"].add_argument(
        "--link-uids",
        action="store_true",
        help="name DICOM inputs by their SOP Instance UID and add their Study, Series and SOP "
        "Instance UIDs to predictions.csv (default off: DICOM inputs are named by a salted hash)",
    )
    parsers["predict"].add_argument(
        "--dicom-out",
        default=None,
        metavar="DIR",
        help="also write, per DICOM input, a Secondary Capture of its overlay and a "
        "Comprehensive SR with the prediction referencing the input (implies --explain)",
    )


def _extras(package, command, args):
    """Keyword arguments from package-specific flags of a subcommand."""
    extras = {}
    for flags, options in getattr(package, "CLI_ARGUMENTS", {}).get(command, []):
        dest = options.get("dest") or flags[0].lstrip("-").replace("-", "_")
        extras[dest] = getattr(args, dest)
    return extras


def model_summary(model, preset):
    """The JSON of `summary`: preset, parameter counts, input and output shapes."""
    import numpy as np

    def shape(tensor):
        return [None if d is None else int(d) for d in tensor.shape]

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    outputs = model.outputs
    names = list(model.output_names)
    inputs = {t.name.split(":")[0]: shape(t) for t in model.inputs}
    if hasattr(model, "input_names") and len(getattr(model, "input_names", [])) == len(
        model.inputs
    ):
        inputs = {n: shape(t) for n, t in zip(model.input_names, model.inputs)}
    return {
        "preset": preset,
        "params": total,
        "trainable_params": trainable,
        "inputs": inputs,
        "outputs": {n: shape(t) for n, t in zip(names, outputs)},
    }


def _set_overrides(args, extras):
    """The `--set` overrides of `train`, refusing keys that a flag of their own sets."""
    overrides = parse_set_overrides(args.set_overrides)
    named = {"data_dir", "out_dir", "preset", "epochs", "batch_size", "seed", "strategy"}
    named |= {"resume", "weights", "verbose", *extras}
    for key in overrides:
        if key in named:
            raise ValueError(f"--set {key}=...: use the --{key.replace('_', '-')} flag instead")
    return overrides


# Packages whose saved models name themselves: Keras objects registered as `PKG>Name`, and model
# names `PKG_<preset>` (kneeoa_demo, boneage_paper, mura_densenet169_..., spinenet_demo, deepra_...).
PACKAGES = ("kneeoa", "deepra", "spinenet", "boneage", "mura")


def model_package(path):
    """The package a saved `.keras` / `.h5` model belongs to, read from its stored config.

    Reads only the model's JSON configuration (no TensorFlow, no weights): the top model's name
    and the packages of its registered Keras objects.

    Args:
        path: a model file.

    Returns:
        A name of `PACKAGES`, or None when the file does not tell (unreadable, not ours).
    """
    import zipfile

    path = os.fspath(path)
    text = None
    try:
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as archive:
                text = archive.read("config.json").decode("utf-8")
        elif path.endswith((".h5", ".hdf5")):
            import h5py

            with h5py.File(path, "r") as handle:
                text = handle.attrs.get("model_config")
            if isinstance(text, bytes):
                text = text.decode("utf-8")
        if text is None:
            return None
        config = json.loads(text)
    except (OSError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile):
        return None
    found = []
    name = str((config.get("config") or {}).get("name", "")) if isinstance(config, dict) else ""
    found.append(name.split("_", 1)[0])

    def walk(node):
        if isinstance(node, dict):
            registered = node.get("registered_name")
            if isinstance(registered, str) and ">" in registered:
                found.append(registered.split(">", 1)[0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    for candidate in found:
        if candidate in PACKAGES:
            return candidate
    return None


def check_model_package(package, model_path):
    """Refuses, in one line, a model saved by another package of the suite (`evaluate --model`).

    Raises:
        DataError: the model belongs to another package; the message names it and the command to
            use instead.
    """
    if not os.path.isfile(os.fspath(model_path)):
        return
    owner = model_package(model_path)
    if owner is not None and owner != package.__name__:
        raise DataError(
            f"this is a {owner} model, not a {package.__name__} one: use python -m {owner}",
            path=model_path,
        )


def create_strategy_first(name):
    """Creates the `--strategy` of `train` before anything else touches TensorFlow's runtime.

    `MultiWorkerMirroredStrategy` configures collective ops, which TensorFlow accepts only before
    its eager context starts (else "RuntimeError: Collective ops must be configured at program
    startup"); reading data into `tf.data`, building a model or creating any tensor starts it.
    So `train` creates the strategy here, first, and hands the object on.

    Args:
        name: a name of `common.distribute.STRATEGIES`.

    Returns:
        The `tf.distribute.Strategy`.
    """
    from common._quiet_import import import_tensorflow_quietly

    import_tensorflow_quietly()  # TensorFlow's C++ start-up lines stay off stderr
    from common.distribute import strategy_from_name

    return strategy_from_name(name)


def parser_prog(package):
    """`python -m PKG`, the name every message of the command line starts with."""
    return f"python -m {package.__name__}"


def _writes_run_dir(strategy):
    """False on a multi-worker run's non-chief workers (they write nothing into the run folder)."""
    if strategy != "multi-worker":
        return True
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task = config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0) or 0)
    if kind == "chief" or not kind:
        return True
    return kind == "worker" and index == 0 and "chief" not in (config.get("cluster") or {})


def _begin_train(package, args):
    """Before `train` reads anything: the folder's lock and the `--overwrite` / `--resume`
    clean-up (`common.runlock`)."""
    from common.runlock import acquire
    from common.runlock import clean_orphans
    from common.runlock import clear_run

    if args.resume and args.overwrite:
        raise DataError("--resume and --overwrite exclude each other", path=args.out_dir)
    writer = _writes_run_dir(args.strategy)  # other workers of a multi-worker run touch nothing
    # a run that stops on bad input before writing anything leaves no folder behind (`_end_train`)
    args._created_run = not os.path.exists(args.out_dir)
    if writer and acquire(args.out_dir):
        args._release_lock = args.out_dir
    if writer and args.overwrite:
        clear_run(args.out_dir)
    elif writer and args.resume:
        clean_orphans(args.out_dir)
    from common.errors import collect_missing_files
    from common.verify import check_dataset_files
    from common.verify import missing_report
    from common.verify import raise_for_unreadable

    # Before any model is built: every image file's header (size limit, empty files, folders in
    # place of files), then every listed file absent (the count and the first one).
    raise_for_unreadable(check_dataset_files(args.data_dir, verify=False))
    try:
        with collect_missing_files() as missing:
            package.inspect_dataset(args.data_dir)
    except DataError:
        missing = []  # another fault in the labels: `train`'s own reading reports it
    if missing:
        raise DataError(missing_report(missing, line=True))


def _end_train(args, failed=False):
    """Releases the run folder's lock that `_begin_train` took (if any); after a failed run,
    removes the folder `_begin_train` created when nothing else was written into it."""
    folder = getattr(args, "_release_lock", None)
    if folder is not None:
        from common.runlock import release

        release(folder)
    if failed and getattr(args, "_created_run", False):
        try:
            os.rmdir(args.out_dir)  # only an empty folder: anything written stays for --resume
        except OSError:
            pass


def _check_inference(package, args, extras):
    """evaluate / predict: refuses another package's model; `--batch-size` when given."""
    check_model_package(package, args.model)
    if args.batch_size is not None:
        extras["batch_size"] = args.batch_size


def dispatch(package, args):
    """Runs one parsed subcommand against the package API."""
    command = args.command
    extras = _extras(package, command, args)
    if command == "train":
        # first: before anything reads data, sets a dtype policy or builds a model
        strategy = create_strategy_first(args.strategy)
    configure_run(args)
    if command == "synthesize":
        kwargs = {"seed": args.seed, **extras}
        if args.num_subjects is not None:
            kwargs["num_subjects"] = args.num_subjects
        root = package.write_phantom_dataset(args.out_dir, **kwargs)
        print(f"Phantom data set written to {root or args.out_dir}")
    elif command == "inspect":
        if not os.path.exists(args.data_dir):
            raise DataError("no such folder", path=args.data_dir)
        from common.errors import collect_missing_files
        from common.verify import check_dataset_files
        from common.verify import missing_report
        from common.verify import raise_for_unreadable

        with collect_missing_files() as missing:
            summary = package.inspect_dataset(args.data_dir, **extras)
        files = {
            **check_dataset_files(args.data_dir, verify=args.verify),
            **missing_report(missing),
        }
        print(json.dumps({**summary, **files}, sort_keys=False), flush=True)
        raise_for_unreadable(files)  # the error, when there is one, is the one line
        if missing:
            print(
                f"{parser_prog(package)} inspect: warning: {missing_report(missing, line=True)}",
                file=sys.stderr,
            )
    elif command == "summary":
        model = package.build_model(args.preset, **extras)
        summary = model_summary(model, args.preset)
        if not args.json:
            model.summary(line_length=110)
        print(json.dumps(summary))
    elif command == "train":
        if not os.path.exists(args.data_dir):
            raise DataError("no such folder", path=args.data_dir)
        _begin_train(package, args)
        package.train(
            data_dir=args.data_dir,
            out_dir=args.out_dir,
            preset=args.preset,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            strategy=strategy,
            resume=args.resume,
            weights=args.weights,
            **extras,
            **_set_overrides(args, extras),
        )
        from common.distribute import wait_for_all_workers
        from common.export import finish_run  # RUN/saved_model/ and the model card (chief)

        finish_run(package, args.out_dir)
        wait_for_all_workers(strategy)  # the workers leave together, after the chief's files
    elif command == "evaluate":
        _check_inference(package, args, extras)
        package.evaluate(
            model=args.model,
            data_dir=args.data_dir,
            out_dir=args.out_dir,
            split=args.split,
            **extras,
        )
    elif command == "predict":
        _check_inference(package, args, extras)
        package.predict(
            model=args.model,
            inputs=args.input,
            out_dir=args.out_dir,
            explain=args.explain or args.dicom_out is not None,
            link_uids=args.link_uids,
            dicom_out=args.dicom_out,
            **extras,
        )
    elif command == "export":
        from common.export import export_model

        print(f"Exported to {export_model(package, args.model, args.out_dir, args.format)}")
    elif command == "serve":
        from common.serve import serve

        return serve(package, args.model, host=args.host, port=args.port, root_path=args.root_path)
    return 0


def _dispatch_mapping_faults(package, args):
    """`dispatch`, with a fault that a `tf.data` pipeline raised (TensorFlow wraps the reader's
    error in an `OpError`) turned back into the one-line `DataError` naming the file."""
    failed = True
    try:
        result = dispatch(package, args)
        failed = False
        return result
    except (DataError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001  (only data faults are mapped; the rest re-raised)
        from common.image_io import as_data_error

        mapped = as_data_error(exc)
        if mapped is None:
            raise
        raise mapped from None
    finally:
        _end_train(args, failed)


def main(package, argv=None):
    """Entry point of `python -m PKG`; returns the exit status."""
    parser = build_parser(package)
    args = parser.parse_args(argv)
    try:
        return _dispatch_mapping_faults(package, args)
    except KeyboardInterrupt:
        print(
            f"{parser.prog}: interrupted; files already written are kept (train: rerun with --resume)",
            file=sys.stderr,
        )
        return 130
    except (DataError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if os.environ.get("MSK_DEBUG"):
            traceback.print_exc()
        message = " ".join(str(exc).split())
        if (
            isinstance(exc, OSError)
            and getattr(exc, "filename", None)
            and exc.filename not in message
        ):
            message = f"{exc.filename}: {message}"
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
