#!/usr/bin/env bash
# The prepared GPU call of issue 16: everything a lent GPU machine should
# measure, in one command, in under 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run OUT_DIR  # anywhere: every step, the GPU parts skipped with the reason
#
# Steps, in order of importance (each under its own time limit and the
# call's deadline, GPU_CHECK_TOTAL_S = 470; a step that fails or times out
# is recorded and the next one runs):
#   1. install the project against the machine's torch (pip, no build
#      isolation, no dependencies; pykeops/keopscore from .whl/ if carried)
#   2. device, driver, versions; the ceilings: float32 / TF32 / bfloat16
#      matmul and a device-to-device copy
#   3. pytest -m cuda (the op tests on CUDA tensors), in parallel processes
#      (pytest-xdist) when available: Triton compiles every kernel variant once
#   4. the float32 accuracy contract at N = 65536, k = 3 and 32, every precision mode
#   5. the CUDA C++ backend's steps (csrc/cuda/gpu_check_steps.sh), if present
#   6. comhe-bench --preset gpu (the benchmark matrix with its targets): what is left
#   7. Thomson N = 10^5: time per iteration of a fixed number of descent steps
#   8. the summary table (printed last: only the tail of the output comes back)
#
# Writes at most 8 files under OUT_DIR: gpu_check.log (everything printed,
# the CUDA steps' logs included), summary.json (versions, ceilings,
# accuracy, Thomson, step status), pytest_cuda.xml, cuda_ptxas.txt,
# bench/gpu_cuda.{txt,csv,json,log}.
# Time limits (seconds) can be changed through the environment:
# GPU_CHECK_{INSTALL,DEVICE,CUDA,PYTEST,ACCURACY,BENCH,THOMSON}_S.
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ $# -ne 1 ]]; then
    echo "usage: bash benchmarks/gpu_check.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
OUT="$1"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
# Triton's tile configs are autotuned in the benchmark only (its warm-up
# calls); the tests compile the default config of each variant.
export COMHE_TRITON_AUTOTUNE="${COMHE_TRITON_AUTOTUNE:-1}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"  # the CUDA C++ backend for the H200 alone
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
WORK="$(mktemp -d)"  # run from outside the checkout, so that the installed package is the one imported
HELPER="$REPO/benchmarks/gpu_check.py"
DRYFLAG=()
[[ $DRY -eq 1 ]] && DRYFLAG=(--dry-run)

say() { echo "$@" | tee -a "$LOG"; }

# The whole call's deadline: each step's limit is cut to what is left of
# it (keeping 20 s for the summary), a step with under 10 s left is skipped.
TOTAL="${GPU_CHECK_TOTAL_S:-470}"

# step NAME SECONDS COMMAND...: run, log, record the status in summary.json
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((TOTAL - SECONDS - 20))
    (( limit > left )) && limit=$left
    say ""
    if (( limit < 10 )); then
        say "==== $name: skipped, the call's ${TOTAL} s are spent"
        "$PY" "$HELPER" status "$OUT" "$name" -1 0 >> "$LOG" 2>&1 || true
        return
    fi
    say "==== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    (cd "$WORK" && timeout --kill-after=10 "$limit" "$@") 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    local dt=$((SECONDS - t0))
    say "==== $name: exit $rc after ${dt} s"
    "$PY" "$HELPER" status "$OUT" "$name" "$rc" "$dt" >> "$LOG" 2>&1 || true
}

say "gpu_check.sh $([[ $DRY -eq 1 ]] && echo '(dry run) ')in $REPO, results in $OUT"
rm -f "$OUT/summary.json"

# 1. install
if [[ $DRY -eq 1 ]]; then
    # the package as this environment has it (CI: installed, extension built)
    say "==== install: skipped in the dry run (would run: $PY -m pip install --no-build-isolation --no-deps $REPO)"
else
    if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
        step install-wheels "${GPU_CHECK_INSTALL_S:-120}" "$PY" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target /tmp/site "$REPO"/.whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    step install "${GPU_CHECK_INSTALL_S:-180}" "$PY" -m pip install -q --no-build-isolation --no-deps "$REPO"
fi

# 2. device, versions, ceilings
step device "${GPU_CHECK_DEVICE_S:-60}" "$PY" "$HELPER" device "$OUT" "${DRYFLAG[@]}"

# 3. the op tests on CUDA tensors, every backend (triton, cuda, reference; tests/test_cuda.py too)
XDIST=()
if "$PY" -c "import xdist" 2> /dev/null; then XDIST=(-n "${GPU_CHECK_PYTEST_WORKERS:-12}"); fi
if [[ $DRY -eq 1 ]]; then
    # collect only: proves the selection and the imports, runs nothing (no GPU)
    step pytest-cuda "${GPU_CHECK_PYTEST_S:-120}" "$PY" -m pytest -q -p no:cacheprovider --rootdir "$REPO" \
        -m cuda --collect-only "$REPO/tests"
else
    # SIGINT 15 s before the step's limit: pytest stops as on Ctrl-C, reports the
    # failures so far and writes the junit file (a SIGTERM would lose both)
    PYTEST_S="${GPU_CHECK_PYTEST_S:-120}"
    step pytest-cuda "$PYTEST_S" env COMHE_TRITON_AUTOTUNE=0 timeout -s INT "$((PYTEST_S - 15))" "$PY" -m pytest -q \
        -p no:cacheprovider -rfE --rootdir "$REPO" -m cuda "${XDIST[@]}" --junitxml="$OUT/pytest_cuda.xml" \
        -o junit_family=xunit1 "$REPO/tests"
fi

# 4. the float32 accuracy contract at N = 65536, every precision
step accuracy "${GPU_CHECK_ACCURACY_S:-90}" "$PY" "$HELPER" accuracy "$OUT" "${DRYFLAG[@]}"

# 5. the CUDA C++ backend's own steps (csrc/cuda/gpu_check_steps.sh LOG: the CMake
#    build for sm_90a with the ptxas figures, ctest, compute-sanitizer memcheck
#    and racecheck), one log, folded into gpu_check.log to stay within the
#    files that come back
CUDA_STEPS="$REPO/csrc/cuda/gpu_check_steps.sh"
if [[ -f "$CUDA_STEPS" ]]; then
    step cuda-steps "${GPU_CHECK_CUDA_S:-150}" bash "$CUDA_STEPS" "$OUT/cuda_steps.log" "${DRYFLAG[@]}"
    if [[ -f "$OUT/cuda_steps.log" ]]; then
        grep -E "Compiling entry|registers|spill" "$OUT/cuda_steps.log" > "$OUT/cuda_ptxas.txt" || rm -f "$OUT/cuda_ptxas.txt"
        { echo "---- cuda_steps.log"; cat "$OUT/cuda_steps.log"; } >> "$LOG"
        rm -f "$OUT/cuda_steps.log"
    fi
else
    say "==== cuda-steps: skipped, $CUDA_STEPS is not in this checkout"
fi

# 6. the benchmark matrix
BENCH_S=$(( TOTAL - SECONDS - 60 ))  # the benchmark gets what is left, less Thomson's share
(( BENCH_S > ${GPU_CHECK_BENCH_S:-240} )) && BENCH_S=${GPU_CHECK_BENCH_S:-240}
(( BENCH_S < 30 )) && BENCH_S=30
step bench "$BENCH_S" "$PY" -m comhe_kernels.bench --preset gpu --out "$OUT/bench" \
    --time-budget "$(( BENCH_S - 15 ))" "${DRYFLAG[@]}"

# 7. Thomson N = 10^5
step thomson "${GPU_CHECK_THOMSON_S:-40}" "$PY" "$HELPER" thomson "$OUT" "${DRYFLAG[@]}"

# 8. the summary, last
say ""
"$PY" "$HELPER" summary "$OUT" 2>&1 | tee -a "$LOG"
rm -rf "$WORK"
