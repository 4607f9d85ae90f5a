#!/usr/bin/env bash
# The test command of the README: installs what the tests need, builds imtok_cuda with the emulated CUDA
# kernels (and the real ones when a CUDA toolkit is present, or FORCE_CUDA=1), runs the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m cuda` on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
# torch and torchvision pinned in the same command so no extra can pull another torch build
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "setuptools>=64" wheel ninja numpy einops \
  safetensors tqdm pytest hypothesis expecttest huggingface_hub scikit-image matplotlib pillow timm diffusers \
  transformers tomesd
export IMTOK_EMULATE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-2}"
python -m pip install -q --no-build-isolation -e . 2>&1 | tail -n 3
python -m imtok_cuda
python -m pytest tests -q -p no:cacheprovider "$@"
