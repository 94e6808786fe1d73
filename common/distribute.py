"""`tf.distribute` strategies by name, and who writes files in a multi-worker run."""

from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")


def configure_logical_cpus(count):
    """Split the physical CPU into `count` logical devices (for mirrored runs and tests on a CPU).

    Must run before TensorFlow initialises its devices; later calls are ignored with a warning.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(int(count))]
        )
    except RuntimeError as exc:  # devices already initialised
        current = len(tf.config.list_logical_devices("CPU"))
        if current < count:
            raise RuntimeError(
                f"Cannot create {count} logical CPUs after TensorFlow started ({current} exist)."
            ) from exc


def strategy_from_name(name="auto", *, devices=None):
    """Returns a `tf.distribute.Strategy` for a name of `--strategy`.

    Args:
        name: `"auto"` (mirrored when more than one GPU is visible, else default), `"default"`
            (no distribution), `"mirrored"` (all local GPUs, or `devices`; with no GPU, every
            logical CPU) or `"multi-worker"` (`MultiWorkerMirroredStrategy`, configured by the
            standard `TF_CONFIG` environment variable; every worker runs the same command).
        devices: optional device names for `"mirrored"`.

    Returns:
        The strategy.
    """
    key = str(name).lower().replace("_", "-")
    if key not in STRATEGIES:
        raise ValueError(f"Unknown strategy '{name}'. Available: {list(STRATEGIES)}")
    if key == "auto":
        key = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if key == "default":
        return tf.distribute.get_strategy()
    if key == "mirrored":
        if devices is None and not tf.config.list_logical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise ValueError(
            "--strategy multi-worker needs the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}).'
        )
    try:
        json.loads(config)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_chief(strategy=None):
    """True for the worker that writes files: the only one, the `chief`, or worker 0 without a chief."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    spec = resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in spec


def worker_dir(run_dir, strategy=None):
    """`run_dir` on the chief; a private temporary folder on other workers (their writes are thrown away)."""
    if is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"worker{resolver.task_id}_")
