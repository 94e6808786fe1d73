"""Session set-up shared by every test: quiet TensorFlow, one thread per pytest-xdist worker."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: oversubscribing threads only adds contention
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
