#!/usr/bin/env bash
# Builds, here (with an index), what benchmarks/device/run_gpu.sh installs on
# a GPU machine that has JAX and optax but no Keras, no TensorFlow and no
# network: Keras (the version installed here), keras-sam, and what Keras
# imports that a JAX install may lack (rich and its three, namex, absl-py,
# packaging, typing-extensions; optree for CPython 3.10-3.13 on x86_64 and
# aarch64). Into dist/device-wheels (ignored by git; carried to the
# machine, about 7.5 MB). Usage, from the repository root:
#   bash benchmarks/device/build_wheels.sh [python]   # python with Keras
set -euo pipefail
PYTHON=${1:-python3}
OUT=dist/device-wheels
KERAS=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('keras'))")
rm -rf "$OUT" && mkdir -p "$OUT"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$OUT" "keras==$KERAS" .
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$OUT" \
    rich markdown-it-py mdurl pygments namex absl-py packaging typing-extensions
for version in 3.10 3.11 3.12 3.13; do
    for platform in manylinux2014_x86_64 manylinux2014_aarch64; do
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
            --python-version "$version" --platform "$platform" -d "$OUT" optree
    done
done
ls -la "$OUT"
du -sh "$OUT"
