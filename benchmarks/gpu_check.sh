#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, with the torch that machine already has (2.11 or newer) and
# no network, build imtok_cuda for the visible GPU only, run the `cuda`-marked tests, the quick benchmarks on
# the GPU and compute-sanitizer over a few kernels, and write at most 8 files into OUTDIR:
#   gpu_check.txt   summary: each step's exit code and duration, nvidia-smi, python/torch/nvcc, `imtok info`
#   build.log       the build's output          cuda_tests.xml / cuda_tests.txt   JUnit XML and pytest's output
#   bench.json / bench.md / machine.json         `imtok bench --device cuda` (quick shapes unless --full)
#   sanitizer.txt   compute-sanitizer memcheck and racecheck over a subset of the `cuda` tests
# Usage: bash benchmarks/gpu_check.sh OUTDIR [--full]
# Budget (cold start, 16 cores): build <= 4 min, tests <= 1.5 min, bench <= 2 min, sanitizer <= 1.5 min; every step
# has its own timeout, so a hung step costs its slot and the rest still run. Nothing is downloaded: pip runs with
# --no-index --no-deps --no-build-isolation, so the machine's own torch, numpy, einops, pytest... are used as they are.
# PYTHON=... picks the interpreter (default python3, the one that holds torch on the lent GPU machines).
set -uo pipefail
OUT="${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [--full]}"
MODE="${2:---quick}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
T_BUILD="${T_BUILD:-270}" T_TESTS="${T_TESTS:-100}" T_BENCH="${T_BENCH:-130}" T_SAN="${T_SAN:-90}"
summary="$OUT/gpu_check.txt"
: > "$summary"
t0=$(date +%s)
say() { echo "$*" | tee -a "$summary"; }
step() {  # step NAME TIMEOUT_S LOGFILE CMD...: run with a timeout, record rc and seconds
  local name=$1 limit=$2 log=$3 s rc
  shift 3
  s=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  [ $rc -eq 124 ] && say "$name: TIMED OUT after ${limit} s" || say "$name: rc=$rc ($(( $(date +%s) - s )) s)"
  return $rc
}

export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
{
  echo "== gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') mode=$MODE"
  nvidia-smi 2>&1 || echo "nvidia-smi: not found"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| cuda", torch.version.cuda, "| gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))' 2>&1
  nvcc --version 2>&1 | tail -n 1
} >> "$summary"
# Only the visible GPU's arch (e.g. 9.0 on an H100/H200): half the device code of the 8.0;9.0 default.
arch=$("$PY" -c 'import torch; c = torch.cuda.get_device_capability(0); print(f"{c[0]}.{c[1]}")' 2>/dev/null)
if [ -z "$arch" ]; then
  say "no GPU visible to torch: building for ${TORCH_CUDA_ARCH_LIST:-9.0} and stopping before the GPU-only steps"
  arch="${TORCH_CUDA_ARCH_LIST:-9.0}"
  no_gpu=1
fi
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
unset IMTOK_EMULATE_CUDA
say "build for sm_${arch/./} with $MAX_JOBS jobs"
step build "$T_BUILD" "$OUT/build.log" \
  "$PY" -m pip install --no-index --no-deps --no-build-isolation -v -e .
rc_build=$?
if [ $rc_build -ne 0 ]; then tail -n 40 "$OUT/build.log"; exit 1; fi
grep -E "^\[[0-9]+/[0-9]+\]" "$OUT/build.log" | tail -n 3 >> "$summary"
"$PY" -m imtok_cuda >> "$summary" 2>&1
if [ -n "${no_gpu:-}" ]; then say "total $(( $(date +%s) - t0 )) s; the next step needs a GPU"; exit 2; fi

step cuda_tests "$T_TESTS" "$OUT/cuda_tests.txt" \
  "$PY" -m pytest tests -m cuda -q -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml"
rc_tests=$?
tail -n 3 "$OUT/cuda_tests.txt" | tee -a "$summary"

bench_mode=$([ "$MODE" = "--full" ] && echo "" || echo "--quick")
step bench "$T_BENCH" "$OUT/bench.md.log" "$PY" -m imtok.cli bench --device cuda $bench_mode --out "$OUT"
rc_bench=$?
# bench.md is written by `imtok bench` at the end; keep its console output only if it did not get that far
if [ -f "$OUT/bench.md" ]; then rm -f "$OUT/bench.md.log"; else mv "$OUT/bench.md.log" "$OUT/bench.md"; fi

# compute-sanitizer needs a runtime that supports it (Firecracker machines do, gVisor ones do not).
rc_san=0
if command -v compute-sanitizer > /dev/null; then
  subset="test_splat or test_merge or test_shuffle"
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool: -m cuda -k '$subset'" >> "$OUT/sanitizer.txt"
    step "sanitizer_$tool" "$(( T_SAN / 2 ))" "$OUT/sanitizer.txt" compute-sanitizer --tool "$tool" \
      --error-exitcode 3 "$PY" -m pytest tests -m cuda -q -p no:cacheprovider -x -k "$subset" || rc_san=1
  done
else
  say "compute-sanitizer: not found, skipped"
fi
say "total $(( $(date +%s) - t0 )) s: build $rc_build, tests $rc_tests, bench $rc_bench, sanitizer $rc_san"
[ $rc_tests -eq 0 ] && [ $rc_bench -eq 0 ] && [ $rc_san -eq 0 ]
