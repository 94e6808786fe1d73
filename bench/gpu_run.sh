#!/usr/bin/env bash
# Runs bench/gpu.py on a GPU machine that has JAX (CUDA), PyTorch + torchvision and numpy but not
# necessarily Keras, keras-hub or TensorFlow, and no network: the keras and keras-hub wheels travel
# with the tree in bench/_wheels (never committed), prepared beforehand on a machine with an index:
#
#   python -m pip download --no-deps -d bench/_wheels "keras==$(python -c 'import keras; print(keras.__version__)')" keras-hub==0.32.0
#
# keras-hub's and keras' own pure-Python dependencies (absl-py, rich, namex, h5py, optree,
# ml-dtypes, packaging, regex, kagglehub) must then be present on the GPU machine or be
# downloaded the same way. Usage: bench/gpu_run.sh [bench/gpu.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=bench/_site
if ! "$PY" -c 'import keras, keras_hub' 2>/dev/null; then
  if ! ls bench/_wheels/keras-*.whl >/dev/null 2>&1; then
    echo "keras/keras-hub are not installed and bench/_wheels holds no wheels (see this script's header)" >&2
    exit 2
  fi
  "$PY" -m pip install --quiet --no-deps --no-index --target "$SITE" bench/_wheels/*.whl
  export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax
"$PY" -c 'import jax; print("JAX devices:", jax.devices())'
exec "$PY" bench/gpu.py "$@"
