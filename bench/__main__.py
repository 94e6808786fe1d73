"""Run the benchmarks: `python -m bench [--only NAME ...] [--quick] [--results FILE]` from the repository root.

Discovers the modules `bench/bench_*.py`, runs each one's `run(workdir)` in sorted order (work files
under `bench/_work/<module>/`, git-ignored), prints a table of name, ratio, goal, whether the goal is
met and the raw figures, and writes `bench/results.json` atomically. Entries of modules not run this
time (not selected, or failed) are kept from the previous file; a module that ran replaces all of
its entries. `--quick` runs each module's small version (`run(workdir, quick=True)`: fewer images
and steps, still 5 alternating passes) and writes `bench/_work/results_quick.json` instead, so
smoke figures never replace the measured ones. Every ratio is the median of at least 5 alternating
passes (`bench.timing`), with the best and worst pass, CPU times and thread counts beside it.
Exit status: 0 when every selected module ran, 1 when one failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_PATH = BENCH_DIR / "results.json"
WORK_DIR = BENCH_DIR / "_work"
QUICK_RESULTS_PATH = WORK_DIR / "results_quick.json"
_GOAL_PATTERN = re.compile(r"^\s*(>=|<=|>|<|≥|≤)\s*([-+0-9.eE]+)\s*$")


def discover(bench_dir=BENCH_DIR):
    """The benchmark module names (`bench_*`) in `bench_dir`, sorted.

    Args:
        bench_dir: folder to search (default: this package).

    Returns:
        list of module names without `.py`, e.g. `["bench_lc2d", "bench_pipeline"]`.
    """
    return sorted(p.stem for p in Path(bench_dir).glob("bench_*.py") if p.is_file())


def select(modules, only):
    """The modules named by `--only` (with or without the `bench_` prefix), in sorted order.

    Args:
        modules: all module names.
        only: names asked for, or None/empty for all.

    Returns:
        list of module names.

    Raises:
        ValueError: an unknown name, in Keras' form.
    """
    if not only:
        return list(modules)
    chosen = []
    for name in only:
        module = name if name.startswith("bench_") else f"bench_{name}"
        if module not in modules:
            raise ValueError(f"Unknown benchmark '{name}'. Available: {list(modules)}")
        chosen.append(module)
    return sorted(set(chosen))


def check_entries(module, entries):
    """Check the shape of what a module's `run` returned and tag each entry with its module.

    Args:
        module: the module's name.
        entries: `{name: {"ratio": float, "goal": str, ...}}`.

    Returns:
        a new dict with `"module": module` added to each entry.

    Raises:
        ValueError: the result is not of that shape.
    """
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{module}.run must return a non-empty dict, got {entries!r}")
    out = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "ratio" not in entry or "goal" not in entry:
            raise ValueError(f"{module}: entry '{name}' needs 'ratio' and 'goal', got {entry!r}")
        ratio = float(entry["ratio"])
        out[str(name)] = {**entry, "ratio": ratio, "goal": str(entry["goal"]), "module": module}
    return out


def merge(previous, new, ran_modules):
    """Merge this run's entries into the previous results.

    Entries of a module that ran this time are replaced as a whole (an entry it no longer produces
    disappears); entries of other modules are kept as they were.

    Args:
        previous: the previous results `{name: entry}`.
        new: this run's entries `{name: entry}` (each tagged with its "module").
        ran_modules: the modules that ran successfully this time.

    Returns:
        the merged results, sorted by name.
    """
    ran = set(ran_modules)
    merged = {
        name: entry
        for name, entry in previous.items()
        if not (isinstance(entry, dict) and entry.get("module") in ran)
    }
    merged.update(new)
    return dict(sorted(merged.items()))


def goal_met(ratio, goal):
    """Whether `ratio` meets a goal written like ">= 5", "≥2" or "<= 0.1"; None if not parseable.

    Args:
        ratio: the measured ratio.
        goal: the goal text.

    Returns:
        True, False or None.
    """
    match = _GOAL_PATTERN.match(str(goal))
    if match is None or ratio is None:
        return None
    op, value = match.group(1), float(match.group(2))
    ratio = float(ratio)
    return {
        ">=": ratio >= value,
        "≥": ratio >= value,
        "<=": ratio <= value,
        "≤": ratio <= value,
        ">": ratio > value,
        "<": ratio < value,
    }[op]


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def format_table(results):
    """A plain-text table: name, ratio, goal, met, raw figures (key=value, in the entry's order).

    Args:
        results: `{name: entry}`.

    Returns:
        str, one line per entry after a header.
    """
    rows = [("name", "ratio", "goal", "met", "raw figures")]
    skip = {"ratio", "goal", "module", "measured_at"}
    for name, entry in sorted(results.items()):
        met = goal_met(entry.get("ratio"), entry.get("goal"))
        figures = ", ".join(f"{k}={_format_value(v)}" for k, v in entry.items() if k not in skip)
        rows.append(
            (
                name,
                _format_value(float(entry.get("ratio", float("nan")))),
                str(entry.get("goal", "")),
                {True: "yes", False: "NO", None: "?"}[met],
                figures,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[c].ljust(widths[c]) for c in range(4)] + [row[4]]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 11)
    return "\n".join(lines)


def load_results(path):
    """The results in `path`, or {} when it is missing or not valid JSON (with a warning).

    Args:
        path: a results.json file.

    Returns:
        dict.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"warning: {path}: unreadable results ({e}); starting afresh", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def write_results(path, results):
    """Write `results` as JSON atomically (a temporary file in the same folder, then rename).

    Args:
        path: destination file.
        results: dict to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_modules(modules, work_dir=WORK_DIR, *, quick=False):
    """Import and run each module; returns (entries, modules that ran, modules that failed).

    Args:
        modules: module names in `bench`.
        work_dir: parent of each module's work folder.
        quick: call `run(workdir, quick=True)` (the modules' small versions).

    Returns:
        (dict of entries, list of modules that ran, list of modules that failed).
    """
    entries, ran, failed = {}, [], []
    for module in modules:
        workdir = Path(work_dir) / module
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"[bench] running {module} ...", file=sys.stderr, flush=True)
        try:
            run = importlib.import_module(f"bench.{module}").run
            result = run(workdir, quick=True) if quick else run(workdir)
            tagged = check_entries(module, result)
        except Exception:  # noqa: BLE001  (one failing benchmark must not lose the others)
            traceback.print_exc()
            print(f"[bench] {module} FAILED; its previous results are kept", file=sys.stderr)
            failed.append(module)
            continue
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        for entry in tagged.values():
            entry["measured_at"] = stamp
        entries.update(tagged)
        ran.append(module)
    return entries, ran, failed


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this module (bench_NAME.py or NAME); repeat for several",
    )
    parser.add_argument(
        "--results",
        default=None,
        help=f"results file to update (default {RESULTS_PATH}; with --quick {QUICK_RESULTS_PATH})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small versions of the benchmarks (a smoke run)"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    modules = discover()
    if args.list:
        print("\n".join(modules))
        return 0
    try:
        chosen = select(modules, args.only)
    except ValueError as e:
        print(f"python -m bench: {e}", file=sys.stderr)
        return 2
    if args.results is None:
        args.results = str(QUICK_RESULTS_PATH if args.quick else RESULTS_PATH)
    entries, ran, failed = run_modules(chosen, WORK_DIR, quick=args.quick)
    results = merge(load_results(args.results), entries, ran)
    write_results(args.results, results)
    print(format_table(results))
    print(f"\nwrote {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
