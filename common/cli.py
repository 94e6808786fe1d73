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

from common.distribute import STRATEGIES
from common.errors import DataError

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


def build_parser(package):
    """The argparse parser of `python -m PKG` for a package module."""
    name = package.__name__
    presets = sorted(getattr(package, "PRESETS", {}))
    doc = (package.__doc__ or "").strip().splitlines()
    parser = _Parser(prog=f"python -m {name}", description=doc[0] if doc else name)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("synthesize", help="write a phantom data set in the real on-disk layout")
    p.add_argument("--out-dir", required=True, help="folder to write the data set into")
    p.add_argument("--num-subjects", type=positive_int, default=None, help="subjects to draw")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = sub.add_parser(
        "inspect", help="read a data set in its real layout and print one JSON object"
    )
    p.add_argument("--data-dir", required=True, help="the data set's root or the folder holding it")

    p = sub.add_parser("summary", help="build a model (no training) and describe it")
    p.add_argument(
        "--preset", default="paper", choices=presets, help="model preset (default paper)"
    )
    p.add_argument("--json", action="store_true", help="print JSON only")

    p = sub.add_parser("train", help="train, then evaluate on the held-out split")
    p.add_argument("--data-dir", required=True, help="the data set's root or the folder holding it")
    p.add_argument("--out-dir", required=True, help="run folder (model, report, checkpoints)")
    p.add_argument("--preset", default="demo", choices=presets, help="model preset (default demo)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: preset's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="global batch size")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES, help="tf.distribute strategy")
    p.add_argument("--resume", action="store_true", help="continue from RUN's last checkpoint")
    p.add_argument("--weights", default=None, help="local weights file for the backbone")

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


def write_config(run_dir, config, *, echo=True):
    """Writes the resolved configuration of a run to `RUN/config.json` (atomic) and prints it."""
    from common.reports import write_json

    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"), config)
    if echo:
        print("Configuration:", json.dumps(config, indent=1, default=str), flush=True)


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
    from common.distribute import strategy_from_name

    return strategy_from_name(name)


def dispatch(package, args):
    """Runs one parsed subcommand against the package API."""
    command = args.command
    extras = _extras(package, command, args)
    if command == "synthesize":
        kwargs = {"seed": args.seed, **extras}
        if args.num_subjects is not None:
            kwargs["num_subjects"] = args.num_subjects
        root = package.write_phantom_dataset(args.out_dir, **kwargs)
        print(f"Phantom data set written to {root or args.out_dir}")
    elif command == "inspect":
        if not os.path.exists(args.data_dir):
            raise DataError("no such folder", path=args.data_dir)
        print(json.dumps(package.inspect_dataset(args.data_dir, **extras), sort_keys=False))
    elif command == "summary":
        model = package.build_model(args.preset, **extras)
        summary = model_summary(model, args.preset)
        if not args.json:
            model.summary(line_length=110)
        print(json.dumps(summary))
    elif command == "train":
        # first: before anything reads data or builds a model (see `create_strategy_first`)
        strategy = create_strategy_first(args.strategy)
        if not os.path.exists(args.data_dir):
            raise DataError("no such folder", path=args.data_dir)
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
        )
        from common.distribute import wait_for_all_workers
        from common.export import finish_run  # RUN/saved_model/ and the model card (chief)

        finish_run(package, args.out_dir)
        wait_for_all_workers(strategy)  # the workers leave together, after the chief's files
    elif command == "evaluate":
        package.evaluate(model=args.model, data_dir=args.data_dir, out_dir=args.out_dir, **extras)
    elif command == "predict":
        package.predict(
            model=args.model,
            inputs=args.input,
            out_dir=args.out_dir,
            explain=args.explain,
            **extras,
        )
    elif command == "export":
        from common.export import export_model

        print(f"Exported to {export_model(package, args.model, args.out_dir, args.format)}")
    elif command == "serve":
        from common.serve import serve

        return serve(package, args.model, host=args.host, port=args.port, root_path=args.root_path)
    return 0


def main(package, argv=None):
    """Entry point of `python -m PKG`; returns the exit status."""
    parser = build_parser(package)
    args = parser.parse_args(argv)
    try:
        return dispatch(package, args)
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
