#!/usr/bin/env bash
# One-shot GPU check: on a machine with an NVIDIA GPU and torch 2.14.1 installed, build imtok_cuda for that
# GPU, run the `cuda`-marked tests, run every benchmark on the GPU, and write everything into OUTDIR:
#   build.log, info.txt (imtok info), nvidia-smi.txt, cuda_tests.xml (JUnit) + cuda_tests.txt,
#   bench.json + bench.md (+ machine.json), gpu_check.txt (summary with exit codes).
# Usage: bash benchmarks/gpu_check.sh OUTDIR [--quick]      (about 5-8 minutes on an H100/H200)
set -uo pipefail
OUT="${1:-gpu_out}"
QUICK="${2:-}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
summary="$OUT/gpu_check.txt"
: > "$summary"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
# the GPU is visible, so torch picks its arch; CUDA_HOME is found from nvcc by setup.py
unset TORCH_CUDA_ARCH_LIST
export FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
start=$(date +%s)
python -m pip install -q "setuptools>=64" wheel ninja numpy einops pytest hypothesis expecttest >> "$OUT/build.log" 2>&1
python -m pip install --no-build-isolation -e . >> "$OUT/build.log" 2>&1
rc_build=$?
echo "build rc=$rc_build ($(( $(date +%s) - start )) s)" | tee -a "$summary"
[ $rc_build -eq 0 ] || { tail -n 40 "$OUT/build.log"; exit 1; }
python -m imtok_cuda > "$OUT/info.txt" 2>&1
cat "$OUT/info.txt"
timeout 240 python -m pytest tests -m cuda -q -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" > "$OUT/cuda_tests.txt" 2>&1
rc_tests=$?
tail -n 3 "$OUT/cuda_tests.txt"
echo "cuda tests rc=$rc_tests ($(( $(date +%s) - start )) s)" | tee -a "$summary"
timeout 300 imtok bench --device cuda --out "$OUT" $QUICK > "$OUT/bench.txt" 2>&1
rc_bench=$?
tail -n 40 "$OUT/bench.txt"
echo "bench rc=$rc_bench ($(( $(date +%s) - start )) s)" | tee -a "$summary"
[ $rc_tests -eq 0 ] && [ $rc_bench -eq 0 ]
