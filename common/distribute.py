"""`tf.distribute` strategies by name, and who writes files in a multi-worker run."""

from __future__ import annotations

import json
import os
import tempfile
import weakref

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
# strategy -> the `--strategy` name it was made from (for RUN/config.json), see `strategy_name`
_NAMES = weakref.WeakKeyDictionary()


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
    strategy = _make_strategy(key, devices)
    if key != "default":
        _NAMES[strategy] = key
    return strategy


def strategy_name(strategy):
    """The `--strategy` name a strategy was made from (`auto` resolved), else its class name.

    Args:
        strategy: a strategy, or a name (returned as it is).

    Returns:
        `"default"`, `"mirrored"`, `"multi-worker"` or the strategy's class name.
    """
    if isinstance(strategy, str):
        return strategy
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return "default"
    try:
        return _NAMES.get(strategy) or type(strategy).__name__
    except TypeError:  # not weakly referable
        return type(strategy).__name__


def _make_strategy(key, devices):
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


def average_across_replicas(variables, strategy):
    """Sets each float variable to its mean over every replica of `strategy` (all workers).

    Keras 3 creates non-trainable variables, such as BatchNormalization's moving mean and
    variance, as mirrored variables without aggregation: each replica updates its copy from its
    own share of the batch, so the copies drift apart (and every worker would save its own). Call
    it in cross-replica context, on every worker at the same point (it is a collective op).

    Args:
        variables: Keras variables created under `strategy`'s scope.
        strategy: the `tf.distribute.Strategy`; nothing is done with one replica.
    """
    if strategy.num_replicas_in_sync <= 1:
        return
    values = [getattr(v, "value", v) for v in variables]
    values = [v for v in values if v.dtype.is_floating]
    if not values:
        return
    dtype = values[0].dtype
    # one flat vector: a single all-reduce per call (and a nested reduce is no list under
    # MultiWorkerMirroredStrategy: it packs the values into one tensor)
    local = strategy.run(
        tf.function(lambda: tf.concat([tf.reshape(tf.cast(v, dtype), [-1]) for v in values], 0))
    )
    flat = strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)
    offset = 0
    for variable in values:
        size = int(tf.size(variable))
        part = tf.reshape(flat[offset : offset + size], variable.shape)
        variable.assign(tf.cast(part, variable.dtype))
        offset += size


def wait_for_all_workers(strategy):
    """Blocks until every worker of a multi-worker run reaches this call (one small all-reduce).

    The chief evaluates and writes the run's files after training while the other workers have
    nothing left to do; were they to exit first, the chief's coordination service would see them
    stop sending heartbeats and fail the run. Call it on every worker; without several workers it
    returns at once.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return
    ones = strategy.run(tf.function(lambda: tf.ones([1])))
    strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None).numpy()


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
