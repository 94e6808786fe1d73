"""One run per folder: the lock a `train` run holds on its `--out-dir`, and the run's state.

The lock is the file `RUN/.lock`: JSON with the holder's host, pid and start time, created
atomically (written under a temporary name, then hard-linked into place, which fails when the lock
exists). A second run into the same folder stops with one line naming the holder. A lock left by a
process that died (same host, pid no longer alive) is stale and taken over; a lock from another host
is never taken over (remove it by hand when that run is known to be gone).

A killed run can leave temporary files behind: `checkpoints/ckpt-NNNN.tmp.weights.h5` (a kill
during a checkpoint write), hidden `.model.tmpNNN.h5` / `.keras` (a kill during export) and the
atomic writer's hidden `.NAME.XXXX.tmp`. `clean_orphans` removes them; `train --resume` calls it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from common.errors import DataError

LOCK_NAME = ".lock"
# What `train` writes into a run folder; `--overwrite` removes these (and nothing else).
RUN_OUTPUTS = (
    "checkpoints",
    "history.csv",
    "config.json",
    "metrics.json",
    "report.html",
    "predictions.csv",
    "model.h5",
    "model.keras",
    "saved_model",
    "model_card.json",
    "model_card.md",
    "tensorboard",
    "train.log",
)
# Temporary names a kill can leave behind, relative to the run folder.
ORPHAN_PATTERNS = (
    "checkpoints/ckpt-*.tmp.weights.h5",
    "checkpoints/ckpt-*.tmp.npz",
    "checkpoints/.*.tmp",
    ".*.tmp[0-9]*.h5",
    ".*.tmp[0-9]*.keras",
    ".*.tmp",
    "history.csv.tmp[0-9]*",
    "saved_model.tmp[0-9]*",
)


class RunLockedError(DataError):
    """The run folder is in use by another run (its holder is named in the message)."""


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except (OverflowError, ValueError):
        return False
    return True


def read_lock(run_dir):
    """The holder of `run_dir`'s lock (`{"host", "pid", "started", ...}`), or None when unlocked.

    Args:
        run_dir: a run folder.

    Returns:
        dict or None; an unreadable lock file reads as `{"host": "?", "pid": -1}`.
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"host": "?", "pid": -1, "started": "?"}


def _is_stale(holder):
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    return not _pid_alive(holder.get("pid", -1))


def _describe(holder):
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}"


def acquire(run_dir):
    """Takes the lock of `run_dir` for this process (re-entrant within one process).

    Args:
        run_dir: the run folder (created when absent).

    Returns:
        True when this call created the lock (the caller releases it), False when this process
        already held it.

    Raises:
        RunLockedError: another live run holds the folder; the message names host, pid and start.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for _ in range(3):
        holder = read_lock(run_dir)
        if holder is not None:
            if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                return False
            if not _is_stale(holder):
                raise RunLockedError(
                    f"this run folder is in use by another run ({_describe(holder)}); wait for "
                    f"it, or remove {lock} if that run is gone",
                    path=run_dir,
                )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".lock.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
            os.link(tmp, lock)
            return True
        except FileExistsError:
            continue  # another run was faster: look at it again
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise RunLockedError("cannot take this run folder's lock", path=lock)


def release(run_dir):
    """Removes `run_dir`'s lock when this process holds it."""
    holder = read_lock(run_dir)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(run_dir) / LOCK_NAME)


@contextlib.contextmanager
def run_lock(run_dir, *, enabled=True):
    """Holds `run_dir`'s lock for the `with` block (nothing when `enabled` is False).

    Args:
        run_dir: the run folder.
        enabled: False on workers that write nothing to the folder (multi-worker, not chief).

    Raises:
        RunLockedError: as `acquire`.
    """
    if not enabled:
        yield
        return
    created = acquire(run_dir)
    try:
        yield
    finally:
        if created:
            release(run_dir)


def clean_orphans(run_dir):
    """Removes the temporary files a killed run left in `run_dir`; returns the removed paths.

    Call it only while holding the folder's lock: a live run's temporary files look the same.

    Args:
        run_dir: the run folder.

    Returns:
        list of removed paths (str).
    """
    removed = []
    for pattern in ORPHAN_PATTERNS:
        for path in glob.glob(os.path.join(glob.escape(os.fspath(run_dir)), pattern)):
            if os.path.basename(path).startswith(".lock"):
                continue
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            removed.append(path)
    return removed


def clear_run(run_dir):
    """Removes what an earlier `train` wrote into `run_dir` (`train --overwrite`).

    Only the names in `RUN_OUTPUTS` and the orphans of `clean_orphans` are removed; other files in
    the folder are kept.

    Args:
        run_dir: the run folder.

    Returns:
        list of removed paths (str).
    """
    removed = clean_orphans(run_dir)
    for name in RUN_OUTPUTS:
        path = os.path.join(os.fspath(run_dir), name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        else:
            continue
        removed.append(path)
    return removed


def run_state(run_dir):
    """Where a run folder stands: `"new"`, `"running"`, `"interrupted"` or `"finished"`.

    `finished`: `report.html` and `metrics.json` are there and newer than the last checkpoint;
    `interrupted`: a checkpoint without a newer report (`train --resume` continues it);
    `running`: a live run holds the lock; `new`: none of these.

    Args:
        run_dir: a run folder (it need not exist).

    Returns:
        str.
    """
    run_dir = Path(run_dir)
    holder = read_lock(run_dir)
    if holder is not None and not _is_stale(holder):
        return "running"
    state = run_dir / "checkpoints" / "state.json"
    report = run_dir / "report.html"
    metrics = run_dir / "metrics.json"
    if report.is_file() and metrics.is_file():
        if not state.exists() or report.stat().st_mtime >= state.stat().st_mtime:
            return "finished"
    if state.exists():
        return "interrupted"
    return "new"


def main(argv=None):
    """`python -m common.runlock RUN`: prints the run's state (as `run_state`), for the Makefile."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: python -m common.runlock RUN_DIR", file=sys.stderr)
        return 2
    print(run_state(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
