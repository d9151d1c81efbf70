#!/usr/bin/env bash
# Prepares this checkout, on a machine where pip reaches the package registry, for a GPU
# machine that has torch and Lightning but no network and no pyro-ppl (Python 3.12). Writes
# three git-ignored folders, to travel with the working tree (the device tool's `carry`):
#   .whl/       the wheels gpu_check.sh and gpu_recipe.sh install first (pyro-ppl, arviz, ...)
#   .data/      binarized_mnist.npz, copied from DATA_DIR
#   .baseline/  the estimators before issue 19, for the old-against-new AIS table (no .git there)
#
#     benchmarks/gpu_prepare.sh DATA_DIR
#
# then, on the GPU machine, from the repository root:
#     benchmarks/gpu_check.sh .data OUT_DIR
set -euo pipefail
DATA=${1:?usage: gpu_prepare.sh DATA_DIR}
PY=${PYTHON:-.venv/bin/python}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    pyro-ppl==1.9.2 pyro-api==0.1.2 arviz==0.23.4 xarray-einstats==0.9.1 h5netcdf==1.8.3 \
    platformdirs==4.5.0
mkdir -p .data
cp "$DATA/binarized_mnist.npz" .data/
"$PY" benchmarks/_common.py --export-baseline > /dev/null
du -sh .whl .data .baseline
