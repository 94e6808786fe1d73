"""One progress display for every long step: a tqdm bar on a terminal, plain lines otherwise.

On a terminal (`sys.stderr.isatty()`) the step shows tqdm's bar. When stderr is a file or a pipe
(a log, CI, `2> log.txt`), tqdm's carriage returns and ANSI codes would clutter it, so the step
prints plain lines instead: `<desc>: 40/200 files (20%)`, at most about ten per step plus the last.
"""

from __future__ import annotations

import sys
import time


def _is_tty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _PlainProgress:
    """An iterable wrapper that prints plain progress lines (no ANSI, no carriage returns)."""

    def __init__(self, iterable, *, desc, total, unit, stream, lines):
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.unit = unit
        self.stream = stream
        self.every = max(1, (total or 0) // max(1, lines)) if total else None
        self.count = 0
        self.start = time.monotonic()

    def _line(self):
        if self.stream is None:
            return
        elapsed = time.monotonic() - self.start
        if self.total:
            done = f"{self.count}/{self.total} {self.unit} ({100 * self.count // self.total}%)"
        else:
            done = f"{self.count} {self.unit}"
        print(f"{self.desc}: {done}, {elapsed:.0f} s", file=self.stream, flush=True)

    def update(self, n=1):
        """Counts `n` more items done (for steps that are not a loop over an iterable)."""
        before = self.count
        self.count += int(n)
        if self.every is None:
            if self.count == 1 or self.count // 100 > before // 100:
                self._line()
        elif self.count == self.total or self.count // self.every > before // self.every:
            self._line()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self):
        return self.total or 0

    def close(self):
        """Nothing to release (tqdm's interface)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable=None, *, desc, total=None, unit="items", enabled=True, stream=None, lines=10):
    """Wraps `iterable` (or counts `update(n)` calls) with the suite's progress display.

    Args:
        iterable: what the step loops over; None for a manual counter (`with progress(...) as bar:
            bar.update(1)`).
        desc: the step's name, e.g. "inspect: reading films".
        total: the number of items (default: `len(iterable)` when it has one).
        unit: what is counted ("files", "batches", "subjects").
        enabled: False returns the iterable untouched (quiet runs, `verbose=0`).
        stream: where progress goes (default `sys.stderr`).
        lines: about how many plain lines a step prints when the stream is not a terminal.

    Returns:
        An iterable with `update(n)` and `close()`, usable as a context manager.
    """
    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    if enabled and _is_tty(stream):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=f" {unit}", file=stream)
    return _PlainProgress(
        iterable if iterable is not None else (),
        desc=desc,
        total=total,
        unit=unit,
        stream=stream if enabled else None,
        lines=lines,
    )


def progress_callback(bar):
    """A `callback(n_done)` (total done so far) that advances `bar` by the new items."""
    state = {"done": 0}

    def callback(done):
        bar.update(int(done) - state["done"])
        state["done"] = int(done)

    return callback
