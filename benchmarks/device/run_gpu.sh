#!/usr/bin/env bash
# On the GPU machine, from the repository root, with dist/device-wheels
# carried: a venv over the machine's own JAX and optax, Keras and keras-sam
# from the wheels (nothing from the network), then the ResNet-18 benchmark in
# float32 and mixed bfloat16 (DTYPES="float32" for one). Arguments go to the
# benchmark. Output goes to stdout and to $OUT (or results/).
set -euo pipefail
ROOT=$(pwd)
OUT=${OUT:-results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
# PY=<python> installs into that interpreter instead (a rehearsal elsewhere).
if [ -z "${PY:-}" ]; then
    python3 -m venv --system-site-packages /tmp/keras-sam-venv
    PY=/tmp/keras-sam-venv/bin/python
fi
WHEELS=$ROOT/dist/device-wheels
# Keras without h5py (a declared dependency, used only for legacy .h5 files);
# then what it imports, from the machine where present, else from the wheels.
"$PY" -m pip install --quiet --no-index --no-deps "$WHEELS"/keras-*.whl
"$PY" -m pip install --quiet --no-index --find-links "$WHEELS" \
    rich namex optree absl-py packaging ml-dtypes numpy
"$PY" -m pip install --quiet --no-index --no-deps "$WHEELS"/keras_sam-*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    | tee "$OUT/gpu.txt" || echo "no nvidia-smi" | tee "$OUT/gpu.txt"
"$PY" -m pip list 2>/dev/null | grep -iE "^(jax|jaxlib|jax-cuda|optax|keras|numpy|tensorflow) " | tee -a "$OUT/gpu.txt"
cd /tmp  # import keras_sam from the wheel, not from the working tree
for dtype in ${DTYPES:-float32 mixed_bfloat16}; do
    "$PY" "$ROOT/benchmarks/gpu_resnet18_jax.py" --dtype "$dtype" "$@" 2>&1 \
        | tee "$OUT/resnet18-$dtype.txt" || echo "exit status $? ($dtype)"
done
