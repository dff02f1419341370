#!/usr/bin/env bash
# SNGD vs SGD per step on ResNet-18 and VGG-16 (CIFAR-10 size, synthetic data), JAX then PyTorch, one command.
#
# Meant for a GPU machine with JAX and CUDA but no TensorFlow and no network. Keras and its small missing
# dependencies travel as wheels in .whl/ at the repository root (git-ignored), made beforehand on a
# machine with PyPI access by:
#
#     bash benchmarks/gpu.sh --download-wheels      # keras, namex, optree for CPython 3.12 x86-64
#
# Then, on the GPU machine, from the repository root:
#
#     bash benchmarks/gpu.sh                        # 120 steps per run, batch 128
#     bash benchmarks/gpu.sh --steps 8 --warmup 2 --batch 8 --width 0.125   # a smoke run on CPU
#
# It installs the wheels and this package (without its TensorFlow dependency) into a private folder,
# runs the correctness checks and the timings of benchmarks/gpu_bench.py on each backend of
# GPU_BENCH_BACKENDS (default "jax torch"; one missing is reported and skipped), and exits non-zero if a
# check fails. Extra arguments go to gpu_bench.py. Matrix products run at each backend's default precision
# (TensorFloat-32 for JAX's float32 products on a GPU), as a user's would; the layer's refresh runs in full
# float32 by itself (keras_sngd.compiled). If $OUT is set, each backend's output is also saved there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--download-wheels" ]; then
    KERAS_VERSION=$($PYTHON -c "import keras; print(keras.__version__)" 2>/dev/null || echo 3.15.1)
    rm -rf .whl && mkdir -p .whl
    $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        "keras==${KERAS_VERSION}" namex optree
    ls -l .whl
    exit 0
fi

SITE=${SNGD_SITE:-/tmp/keras_sngd_site}
mkdir -p "$SITE"
if ! $PYTHON -c "import keras, namex, optree" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    # Only what is missing there travels (keras, namex, optree); the machine's own jax/numpy/h5py stay.
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
# This package without its dependencies (TensorFlow is not needed on the JAX backend).
if ! $PYTHON -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . 2> /dev/null; then
    echo "gpu.sh: pip could not install the package (no setuptools>=77?); using the source tree instead"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
for backend in ${GPU_BENCH_BACKENDS:-jax torch}; do
    if ! $PYTHON -c "import $backend" 2> /dev/null; then
        echo "gpu.sh: $backend is not installed here; skipped"
        continue
    fi
    echo "=== KERAS_BACKEND=$backend"
    log=${OUT:-/tmp}/gpu_bench_$backend${GPU_BENCH_TAG:+_$GPU_BENCH_TAG}.log
    KERAS_BACKEND=$backend $PYTHON -c "import keras, keras_sngd; print('keras', keras.__version__, keras.backend.backend(), 'keras_sngd from', keras_sngd.__file__)"
    KERAS_BACKEND=$backend PYTHONUNBUFFERED=1 $PYTHON benchmarks/gpu_bench.py "$@" 2>&1 | tee "$log" | grep -v -E "^(W|I)0000|absl::" || true
    tail -n 1 "$log" | grep -q '"finite": true' && ! grep -q FAILED "$log" || status=1
done
exit $status
