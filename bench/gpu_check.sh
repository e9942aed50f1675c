#!/usr/bin/env bash
# The GPU kit: run on a lent GPU machine (no network, its own torch/triton) from the repo root:
#   OUT=/some/folder bash bench/gpu_check.sh
# Builds the extension there, runs the GPU-marked tests (and compute-sanitizer memcheck on a
# small case when available), measures the copy-bandwidth and cuBLAS-GEMM ceilings, runs the
# benchmark, and writes everything (logs, reports, results) to $OUT.
#
# Stages (build tests sanitize ceilings ce_probe ce_ncu mlp_probe mlp_vector_loads mlp_tf32x3 triton_tiles
# mlp_ncu host_probe bench) run in the order given (default: all but the probes and ncu stages),
# e.g. for one call of under 10 minutes, numbers first:
#   OUT=o DEADLINE=540 bash bench/gpu_check.sh build ceilings bench tests sanitize
# DEADLINE (seconds from the start) bounds every stage's timeout, so the kit ends in time to pack
# what it wrote; a stage that would start with under 20 s left is skipped and says so.
# (A later call on the same machine reuses the build; on a fresh machine include `build`.)
set -uo pipefail
STAGES=${*:-build tests sanitize ceilings bench}
OUT=${OUT:-gpu_out}
DEADLINE=${DEADLINE:-100000}
# The tests stage's pytest paths (default: the whole suite; a short call may name some files).
TEST_PATHS=${TEST_PATHS:-tests}
# Suites in the order they run: the training step (issue 7) and cross-entropy (issue 3) first.
BENCH_SUITES=${BENCH_SUITES:-mlp,cross_entropy,sgd,linear_relu}
# Extra flags for the benchmark, e.g. BENCH_FLAGS=--full for the whole matrix.
BENCH_FLAGS=${BENCH_FLAGS:-}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
started=$(date +%s)
step() { echo "== $(( $(date +%s) - started ))s: $*" | tee -a "$OUT/summary.txt"; }
# limit N: N seconds, or what is left before the deadline if that is less.
limit() { local left=$(( DEADLINE - ($(date +%s) - started) )); echo $(( left < $1 ? left : $1 )); }
enough_time() { (( $(limit 20) >= 20 )) || { step "SKIPPED $1: deadline near"; return 1; }; }

stage_build() {
  step "build (CUDA kernels required)"
  # sm_90 only: the H200 is the only GPU this script meets, and it halves the build time.
  if ! FUSEDMLP_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
      timeout "$(limit 300)" $PY -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
    step "BUILD FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1
  fi
  # _C must not export a libstdc++ of its own (setup.py's --exclude-libs): the two build tests
  # that say so, which the tests stage's `-m gpu` does not select.
  timeout "$(limit 60)" $PY -m pytest -q -p no:cacheprovider tests/test_build.py::test_extension_exports_no_cxx_runtime \
    tests/test_build.py::test_cpp_error_messages_format_numbers 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
}

stage_tests() {
  # The errors probe runs beside the tests (its cases are tiny and the tests are not timed).
  step "C++ errors probe (one TORCH_CHECK per part of the extension, each in its own process), beside the tests"
  ( timeout "$(limit 300)" $PY bench/gpu_error_probe.py > "$OUT/error_probe.txt" 2>&1
    echo "error probe exit $?" >> "$OUT/summary.txt"
    grep -c CRASH "$OUT/error_probe.txt" | sed 's/^/error probe crashed cases: /' >> "$OUT/summary.txt" ) &
  local probe=$!
  step "GPU tests"
  # Workers in parallel where pytest-xdist is there (Triton's JIT compiles are CPU-bound): a
  # crash (a signal, e.g. a segfault) then fails its test alone, named in the report. Without
  # xdist a crash ends pytest: faulthandler's traceback names the test that was running, and the
  # run is repeated once without it.
  local parallel=() deselect=() rc crashed
  $PY -c "import xdist" 2> /dev/null && parallel=(-n "${TEST_WORKERS:-8}")
  $PY -c "import pytest_timeout" 2> /dev/null && parallel+=(--timeout 180)
  for attempt in 1 2; do
    timeout "$(limit 420)" $PY -X faulthandler -m pytest $TEST_PATHS -m gpu -q -rs --durations=25 -p no:cacheprovider \
      "${parallel[@]}" "${deselect[@]}" --junitxml="$OUT/tests_gpu.xml" > "$OUT/tests_gpu.log" 2>&1
    rc=$?
    echo "pytest exit $rc" | tee -a "$OUT/summary.txt"; tail -3 "$OUT/tests_gpu.log" | tee -a "$OUT/summary.txt"
    (( rc > 128 && rc != 137 )) || break
    crashed=$(grep -oE 'tests/test_[A-Za-z0-9_]+\.py", line [0-9]+ in test_[A-Za-z0-9_]+' "$OUT/tests_gpu.log" | tail -1 |
      sed -E 's/", line [0-9]+ in /::/')
    [[ -n "$crashed" ]] || break
    step "CRASH in $crashed: rerunning the GPU tests without it"
    grep -B2 -A30 "Fatal Python error" "$OUT/tests_gpu.log" > "$OUT/crash.txt"
    deselect=(--deselect "$crashed")
  done
  wait "$probe"
}

stage_sanitize() {
  if ! command -v compute-sanitizer > /dev/null; then step "compute-sanitizer not found: memcheck skipped"; return; fi
  for part in kernels providers; do
    enough_time "memcheck $part" || return
    step "compute-sanitizer memcheck: $part"
    timeout "$(limit 150)" compute-sanitizer --tool memcheck --error-exitcode 9 $PY bench/gpu_sanitize_case.py $part \
      > "$OUT/sanitizer_$part.log" 2>&1
    echo "memcheck $part exit $?" | tee -a "$OUT/summary.txt"
  done
}

stage_ce_probe() {
  step "cross-entropy probe: kernel alone, fwd+bwd, eager, a copy of the same bytes"
  timeout "$(limit 90)" $PY bench/gpu_ce_probe.py > "$OUT/ce_probe.json" 2>> "$OUT/summary.txt"
  cat "$OUT/ce_probe.json" >> "$OUT/summary.txt"
}

# ncu NAME SECONDS KERNEL_REGEX LAUNCHES SECTIONS PROGRAM...: Nsight Compute's SECTIONS (space
# separated) for the first LAUNCHES kernels matching KERNEL_REGEX that PROGRAM launches, into
# $OUT/NAME.txt (ncu reads the counters on the H200's Firecracker machines; clocks left alone,
# as the device notes ask).
ncu_stage() {
  local name=$1 seconds=$2 kernels=$3 launches=$4 sections=() section
  for section in $5; do sections+=(--section "$section"); done
  shift 5
  if ! command -v ncu > /dev/null; then step "ncu not found: $name skipped"; return; fi
  timeout "$(limit "$seconds")" ncu --clock-control none --kernel-name "regex:$kernels" --launch-count "$launches" \
    "${sections[@]}" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name exit $?" | tee -a "$OUT/summary.txt"
}

stage_ce_ncu() {
  step "ncu: the CUDA cross-entropy kernel at issue 3's shape (speed of light, occupancy, memory)"
  ncu_stage ce_ncu 120 cross_entropy 1 "SpeedOfLight Occupancy LaunchStats MemoryWorkloadAnalysis" \
    $PY bench/gpu_ce_probe.py --kernel-only
}

stage_mlp_probe() {
  step "fused MLP probe: forward and backward kernels alone, eager's forward and backward"
  timeout "$(limit 120)" $PY bench/gpu_mlp_probe.py > "$OUT/mlp_probe.json" 2>> "$OUT/summary.txt"
  cat "$OUT/mlp_probe.json" >> "$OUT/summary.txt"
}

mlp_build_option() {
  # An experimental build of the CUDA MLP (setup.py's option $1=1, named $2) built in a copy of
  # this tree beside the default build, checked by the CUDA MLP GPU tests and timed by the MLP
  # probe in this same call: mlp_probe_$2.json against mlp_probe.json (run the mlp_probe stage
  # too), side by side.
  local option=$1 name=$2 copy=/tmp/fusedmlp_$2
  step "CUDA MLP built with $option=1 ($3): build a copy, its MLP GPU tests, the MLP probe"
  rm -rf "$copy" && mkdir -p "$copy" && cp -r csrc fusedmlp triton_kernels tests bench setup.py pyproject.toml "$copy"/
  rm -f "$copy"/fusedmlp/_C*.so
  ln -s ../triton_kernels "$copy/fusedmlp/triton_kernels"  # what the install's package_dir maps
  if ! ( cd "$copy" && env FUSEDMLP_BUILD_CUDA=1 "$option=1" TORCH_CUDA_ARCH_LIST=9.0 \
      MAX_JOBS=${MAX_JOBS:-16} timeout "$(limit 300)" $PY setup.py build_ext --inplace ) > "$OUT/${name}_build.log" 2>&1; then
    step "$name: BUILD FAILED (see ${name}_build.log)"; return
  fi
  ( cd "$copy" && PYTHONPATH="$copy" $PY -c "from fusedmlp import _C; print('$name: testing', _C.__file__)" ) 2>&1 |
    tee -a "$OUT/summary.txt"
  local parallel=()
  $PY -c "import xdist" 2> /dev/null && parallel=(-n "${TEST_WORKERS:-8}")
  ( cd "$copy" && PYTHONPATH="$copy" timeout "$(limit 240)" $PY -m pytest tests/test_cuda_mlp.py -m gpu -q -p no:cacheprovider \
      "${parallel[@]}" ) > "$OUT/${name}_tests.log" 2>&1
  echo "$name: MLP GPU tests exit $?" | tee -a "$OUT/summary.txt"; tail -2 "$OUT/${name}_tests.log" | tee -a "$OUT/summary.txt"
  ( cd "$copy" && PYTHONPATH="$copy" timeout "$(limit 120)" $PY bench/gpu_mlp_probe.py ) \
    > "$OUT/mlp_probe_$name.json" 2>> "$OUT/summary.txt"
  cat "$OUT/mlp_probe_$name.json" >> "$OUT/summary.txt"
}

stage_mlp_vector_loads() {
  mlp_build_option FUSEDMLP_MLP_VECTOR_LOADS vector_loads "16-byte shared loads in the fp32 / fp64 products"
}

stage_mlp_tf32x3() {
  mlp_build_option FUSEDMLP_MLP_TF32X3 tf32x3 "fp32 products on tensor cores as 3xTF32"
}

stage_triton_tiles() {
  step "Triton MLP kernels (fp32): the current tiles and the candidates, per benchmark network"
  timeout "$(limit 240)" $PY bench/gpu_mlp_probe.py --triton-tiles > "$OUT/triton_tiles.json" 2>> "$OUT/summary.txt"
  cat "$OUT/triton_tiles.json" >> "$OUT/summary.txt"
}

stage_mlp_ncu() {
  # Issue 7's largest case: occupancy, issue and memory, and where warps stall, for the forward,
  # backward and gradient-reduction kernels.
  step "ncu: the fused MLP kernels at 64x4, 2^20 rows"
  ncu_stage mlp_ncu 150 'mlp_(fwd|bwd|grad_reduce)_kernel' 3 \
    "SpeedOfLight Occupancy LaunchStats ComputeWorkloadAnalysis WarpStateStats" $PY bench/gpu_mlp_probe.py --kernel-only
}

stage_host_probe() {
  step "host probe: the smallest training step's wall time and Python profile per provider"
  timeout "$(limit 180)" $PY bench/gpu_host_probe.py > "$OUT/host_probe.txt" 2>&1
  echo "host probe exit $?" | tee -a "$OUT/summary.txt"
  grep "^== " "$OUT/host_probe.txt" | tee -a "$OUT/summary.txt"
}

stage_ceilings() {
  step "ceilings: copy bandwidth and cuBLAS GEMM"
  timeout "$(limit 60)" $PY bench/gpu_ceilings.py > "$OUT/ceilings.json" 2>> "$OUT/summary.txt"
  cat "$OUT/ceilings.json" >> "$OUT/summary.txt"
}

stage_bench() {
  step "benchmark (suites: $BENCH_SUITES; the .json is written after each suite)"
  timeout "$(limit 300)" $PY -m fusedmlp.bench --only "$BENCH_SUITES" $BENCH_FLAGS --out "$OUT" > "$OUT/bench.txt" 2>&1
  echo "bench exit $?" | tee -a "$OUT/summary.txt"
}

step "environment"
{ nvidia-smi; $PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda)";
  $PY -c "import triton; print('triton', triton.__version__)"; nvcc --version; } > "$OUT/env.txt" 2>&1

for stage in $STAGES; do
  case $stage in
    build | tests | sanitize | ceilings | ce_probe | ce_ncu | mlp_probe | mlp_vector_loads | mlp_tf32x3 | triton_tiles | mlp_ncu | host_probe | bench)
      enough_time "$stage" && "stage_$stage" ;;
    *) step "unknown stage $stage (build tests sanitize ceilings ce_probe ce_ncu mlp_probe mlp_vector_loads mlp_tf32x3 triton_tiles mlp_ncu host_probe bench)"
       exit 2 ;;
  esac
done
step "done"
