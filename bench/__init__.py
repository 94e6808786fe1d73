"""Benchmarks of the suite, run with `python -m bench` (or `make bench`).

Each module `bench/bench_*.py` exposes `run(workdir: pathlib.Path) -> dict[str, dict]`, mapping entry
names to `{"ratio": float, "goal": str, ...raw figures...}`. `bench/__main__.py` runs them, prints a
table and writes `bench/results.json`.
"""
