"""README's multi-worker example, run as written: two `python -m PKG train --strategy multi-worker`.

Two worker processes on localhost (free ports, `TF_CONFIG` as README shows) train tiny phantoms:
kneeoa (killed after its first checkpoint, then continued with `--resume`) and spinenet (the
cheapest other package). Both workers must end with the same weights (worker 1 keeps its
checkpoints in its private temporary folder, `common.distribute.worker_dir`, under the `TMPDIR`
the test gives it), and only worker 0 may write the run folder: a `sitecustomize` audit hook in
each worker records every file it opens for writing, renames, creates or removes under the run
folder (worker 0's record is the control that the hook sees writes at all).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from common.testing import free_ports
from common.testing import subprocess_env

pytestmark = pytest.mark.multiworker

# Installed in each worker through PYTHONPATH: logs the paths it writes under $WATCH_DIR.
AUDIT_HOOK = """
import os
import sys

_watch = os.environ.get("WATCH_DIR")
_log = os.environ.get("WATCH_LOG")
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _record(path):
    try:
        path = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    if path == _watch or path.startswith(_watch + os.sep):
        with open(_log, "a") as handle:
            handle.write(path + "\\n")


def _hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE
        ):
            _record(args[0])
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
        for arg in args[:2]:
            if isinstance(arg, (str, bytes, os.PathLike)):
                _record(arg)


if _watch and _log:
    _watch = os.path.abspath(_watch)
    sys.addaudithook(_hook)
"""


def _start_workers(package, data_dir, run_dir, tmp_path, tag, *extra):
    """README's command on two localhost workers; returns the processes and their folders."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        folder = tmp_path / f"{tag}_worker{index}"
        (folder / "tmp").mkdir(parents=True)
        env = subprocess_env(
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            TMPDIR=folder / "tmp",
            WATCH_DIR=run_dir,
            WATCH_LOG=folder / "writes.txt",
        )
        env["PYTHONPATH"] = f"{hook_dir}{os.pathsep}{env['PYTHONPATH']}"
        command = [sys.executable, "-m", package, "train", "--data-dir", str(data_dir)]
        command += ["--out-dir", str(run_dir), "--strategy", "multi-worker", *extra]
        log = open(folder / "output.txt", "w")  # noqa: SIM115 (closed by _finish)
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        workers.append((proc, folder, log))
    return workers


def _finish(workers, timeout=600):
    """Waits for both workers; returns `[(returncode, output, writes under RUN, tmp folder)]`."""
    results = []
    for proc, folder, log in workers:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other, _, _ in workers:
                other.kill()
            raise
        finally:
            log.close()
        writes = folder / "writes.txt"
        written = writes.read_text().split() if writes.exists() else []
        results.append(
            (proc.returncode, (folder / "output.txt").read_text(), written, folder / "tmp")
        )
    return results


def _weights(path):
    """Every array of a `.weights.h5` file, by its path inside the file."""
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    return arrays


def _check_identical_workers(results, run_dir):
    """Both workers succeeded, worker 1 wrote nothing under RUN, and their last weights agree."""
    (rc0, out0, writes0, _), (rc1, out1, writes1, tmp1) = results
    assert rc0 == 0, out0[-3000:]
    assert rc1 == 0, out1[-3000:]
    assert writes0, "the audit hook saw no write of worker 0 (control)"
    assert writes1 == [], f"worker 1 wrote into the run folder: {writes1[:5]}"
    chief = _weights(run_dir / "checkpoints" / "last.weights.h5")
    (other_file,) = tmp1.glob("worker1_*/checkpoints/last.weights.h5")
    other = _weights(other_file)
    assert sorted(chief) == sorted(other) and len(chief) > 0
    max_diff = max(float(np.max(np.abs(chief[k] - other[k]), initial=0.0)) for k in chief)
    assert max_diff <= 1e-5, max_diff
    config = json.loads((run_dir / "config.json").read_text())
    assert config["strategy"] == "multi-worker" and config["replicas"] == 2
    return out0


def test_kneeoa_two_workers_killed_then_resumed(tmp_path):
    from kneeoa.synthetic import write_phantom_dataset

    data = tmp_path / "knee"
    write_phantom_dataset(data, num_subjects=10, seed=0, layout="oai")
    run_dir = tmp_path / "run"
    flags = ("--epochs", "2", "--batch-size", "4")
    workers = _start_workers("kneeoa", data, run_dir, tmp_path, "first", *flags)
    state = run_dir / "checkpoints" / "state.json"
    deadline = time.time() + 600
    while not state.exists():
        for proc, folder, _ in workers:
            assert proc.poll() is None, (folder / "output.txt").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint after 600 s"
        time.sleep(0.02)
    for proc, _, _ in workers:
        proc.send_signal(signal.SIGKILL)
    first = _finish(workers)
    assert all(rc == -signal.SIGKILL for rc, *_ in first)
    assert first[1][2] == [], f"worker 1 wrote into the run folder: {first[1][2][:5]}"
    done = json.loads(state.read_text())["epoch"] + 1
    assert done == 1, done  # killed after the first epoch's checkpoint, before the second's

    resumed = _finish(
        _start_workers("kneeoa", data, run_dir, tmp_path, "resumed", *flags, "--resume")
    )
    out0 = _check_identical_workers(resumed, run_dir)
    epochs = [
        int(line.split()[1].split("/")[0])
        for line in out0.splitlines()
        if line.startswith("Epoch ")
    ]
    assert epochs and epochs[0] == done + 1, epochs  # continued after the checkpointed epoch
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [0, 1]
    assert (run_dir / "model.keras").is_file() and (run_dir / "report.html").is_file()
    assert json.loads((run_dir / "config.json").read_text())["resume"] is True


def test_spinenet_two_workers_identical(tmp_path):
    from spinenet.synthetic import write_phantom_dataset

    data = Path(
        write_phantom_dataset(tmp_path / "spider", num_subjects=4, seed=0) or tmp_path / "spider"
    )
    run_dir = tmp_path / "run"
    results = _finish(
        _start_workers(
            "spinenet", data, run_dir, tmp_path, "spine", "--epochs", "1", "--batch-size", "4"
        )
    )
    _check_identical_workers(results, run_dir)
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [0]
    assert (run_dir / "metrics.json").is_file()
