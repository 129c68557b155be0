#!/usr/bin/env bash
# Wheels that benchmarks/gpu.py needs on a GPU machine that has torch, torchvision and transformers but no
# network and none of omnimill's data stack (Python 3.12, x86-64 Linux). Run here, with network:
#     bash benchmarks/gpu_wheels.sh [DIR]          # DIR defaults to wheels/ (git-ignored locally by this script)
# then carry DIR to the GPU machine and install with
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site
# Versions are the ones omnimill is tested with here; --no-deps because the GPU image already has the rest
# (numpy, pyyaml, click, cloudpickle, toolz, fsspec, msgpack, psutil, sortedcontainers, jinja2, typer, rich, pyarrow).
set -euo pipefail
dir="${1:-wheels}"
cd "$(dirname "$0")/.."
case "$dir" in  # a folder in the checkout: ignore it locally, so it is never committed (and `run` can carry it)
    /*) ;;
    *) grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude ;;
esac
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$dir" \
    dask==2026.7.1 distributed==2026.7.1 partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1 \
    zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c \
    webdataset==1.0.2 braceexpand==0.1.7 segment-anything==1.0 \
    vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 torch-einops-utils==0.2.0
ls -l "$dir"
du -sh "$dir"
