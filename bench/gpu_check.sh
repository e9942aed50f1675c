#!/usr/bin/env bash
# The GPU kit: run on a lent GPU machine (no network, its own torch/triton) from the repo root:
#   OUT=/some/folder bash bench/gpu_check.sh
# Builds the extension there, runs the GPU-marked tests (and compute-sanitizer memcheck on a
# small case when available), measures the copy-bandwidth and cuBLAS-GEMM ceilings, runs the
# benchmark, and writes everything (logs, reports, results) to $OUT. Budget: two calls of under 10 minutes.
#
# Stages can be picked (default: all, in order), so that the kit fits calls with a time limit:
#   OUT=o1 bash bench/gpu_check.sh build tests      then      OUT=o2 bash bench/gpu_check.sh sanitize ceilings bench
# (a later call on the same machine reuses the build; on a fresh machine include `build`).
set -uo pipefail
STAGES=${*:-build tests sanitize ceilings bench}
want() { [[ " $STAGES " == *" $1 "* ]]; }
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
started=$(date +%s)
step() { echo "== $(( $(date +%s) - started ))s: $*" | tee -a "$OUT/summary.txt"; }

step "environment"
{ nvidia-smi; $PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda)";
  $PY -c "import triton; print('triton', triton.__version__)"; nvcc --version; } > "$OUT/env.txt" 2>&1

if want build; then
step "build (CUDA kernels required)"
# sm_90 only: the H200 is the only GPU this script meets, and it halves the build time.
if ! FUSEDMLP_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    timeout 300 $PY -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
  step "BUILD FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1
fi

fi

if want tests; then
step "C++ errors probe (one TORCH_CHECK per part of the extension, each in its own process)"
timeout 300 $PY bench/gpu_error_probe.py > "$OUT/error_probe.txt" 2>&1
echo "error probe exit $?" | tee -a "$OUT/summary.txt"; grep -c CRASH "$OUT/error_probe.txt" | sed 's/^/crashed cases: /' | tee -a "$OUT/summary.txt"

step "GPU tests"
# A crash (a signal, e.g. a segfault) ends pytest with no report: faulthandler's traceback
# names the test that was running; it is recorded (with a gdb backtrace when gdb is there) and
# the run repeated without it, once, so one crash does not hide every later result.
deselect=()
for attempt in 1 2; do
  timeout 420 $PY -X faulthandler -m pytest tests -m gpu -q -rs --durations=25 -p no:cacheprovider "${deselect[@]}" \
    --junitxml="$OUT/tests_gpu.xml" > "$OUT/tests_gpu.log" 2>&1
  rc=$?
  echo "pytest exit $rc" | tee -a "$OUT/summary.txt"; tail -3 "$OUT/tests_gpu.log" | tee -a "$OUT/summary.txt"
  (( rc > 128 && rc != 137 )) || break
  crashed=$(grep -oE 'tests/test_[A-Za-z0-9_]+\.py", line [0-9]+ in test_[A-Za-z0-9_]+' "$OUT/tests_gpu.log" | tail -1 |
    sed -E 's/", line [0-9]+ in /::/')
  [[ -n "$crashed" ]] || break
  step "CRASH in $crashed: rerunning the GPU tests without it"
  grep -B2 -A30 "Fatal Python error" "$OUT/tests_gpu.log" > "$OUT/crash.txt"
  if command -v gdb > /dev/null; then
    timeout 120 gdb -q -batch -ex run -ex bt --args "$($PY -c 'import sys; print(sys.executable)')" -m pytest "$crashed" -x -q -p no:cacheprovider \
      >> "$OUT/crash.txt" 2>&1
  fi
  deselect=(--deselect "$crashed")
done

fi

if ! want sanitize; then
  :
elif command -v compute-sanitizer > /dev/null; then
  for part in kernels providers; do
    step "compute-sanitizer memcheck: $part"
    timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $PY bench/gpu_sanitize_case.py $part \
      > "$OUT/sanitizer_$part.log" 2>&1
    echo "memcheck $part exit $?" | tee -a "$OUT/summary.txt"
  done
else
  step "compute-sanitizer not found: memcheck skipped"
fi

if want ceilings; then
step "ceilings: copy bandwidth and cuBLAS GEMM"
timeout 60 $PY bench/gpu_ceilings.py > "$OUT/ceilings.json" 2>> "$OUT/summary.txt"
cat "$OUT/ceilings.json" >> "$OUT/summary.txt"

fi

if want bench; then
step "benchmark"
timeout 200 $PY -m fusedmlp.bench --out "$OUT" > "$OUT/bench.txt" 2>&1
echo "bench exit $?" | tee -a "$OUT/summary.txt"
fi
step "done"
