#!/usr/bin/env bash
# One prepared GPU check, under 8 minutes on a lent H100 (see benchmarks/README.md):
#   1. nvidia-smi and the Python/torch that will run everything
#   2. rebuild fastattr._C for the GPU (sm_90) when a CUDA compiler is found
#   3. the extension loads and sees the GPU
#   4. the CUDA tests: CUDA result == CPU result, noise bit-identical
#   5. the benchmark table on the GPU, ResNet-18-shaped model added
# then a PASS/FAIL summary; exit status 0 only if every step passed.
#
#   bash benchmarks/gpu_check.sh          (from anywhere; it works in the repo root)
#
# Environment: PYTHON (default .venv/bin/python if it runs, else python3);
# OUT (if set, logs and bench.json are written there); GPU_CHECK_BUDGET_S
# (default 470: the steps' timeouts are cut to fit it). Wheels in .whl/
# (e.g. captum, which the GPU image lacks) are installed to a temporary
# folder first.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
LOGDIR=${OUT:-$(mktemp -d)}
declare -a SUMMARY=()
FAILED=0

say() { printf '\n=== %s (t=%ss)\n' "$*" "$SECONDS"; }
record() {  # record STEP STATUS [NOTE]
    SUMMARY+=("$(printf '%-34s %s%s' "$1" "$2" "${3:+  ($3)}")")
    if [[ $2 == FAIL ]]; then FAILED=1; fi
}
# Seconds a step may take: at most $1, and never past the budget (keeping 15 s for the summary).
limit() {
    local left=$((BUDGET_S - SECONDS - 15))
    if ((left < 10)); then left=10; fi
    if (($1 < left)); then echo "$1"; else echo "$left"; fi
}
# run_step NAME MAX_SECONDS LOG CMD...: runs CMD under timeout, tees its output, records PASS/FAIL.
run_step() {
    local name=$1 max=$2 log=$3 t rc=0
    shift 3
    t=$(limit "$max")
    say "$name (timeout ${t}s)"
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$LOGDIR/$log" || rc=$?
    if ((rc == 0)); then
        record "$name" PASS
    elif ((rc == 124 || rc == 137)); then
        record "$name" FAIL "timed out after ${t}s"
    else
        record "$name" FAIL "exit $rc"
    fi
    return 0
}

# --- 1. the machine and the interpreter ------------------------------------
say "nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi || true
else
    echo "nvidia-smi not found"
fi

if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
elif [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
    PY=.venv/bin/python
else
    PY=python3
fi
# Import fastattr from this tree whatever an (editable) install elsewhere says.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G '.whl/*.whl' >/dev/null; then
    say "installing the carried wheels: $(cd .whl && echo *.whl)"
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$site"
fi
say "python"
"$PY" - <<'EOF'
import sys, torch
print(sys.executable, sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "| GPU visible:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import captum
    print("captum", captum.__version__)
except ImportError:
    print("captum NOT installed: the benchmark table will have no Captum column "
          "(carry its wheel in .whl/ to get one)")
EOF

# --- 2. rebuild the extension for the GPU -----------------------------------
# The toolkit setup.py would use (csrc/toolchain.py): $CUDA_HOME/$CUDA_PATH,
# /usr/local/cuda, or the toolkit behind the nvcc on PATH.
TOOLKIT=$("$PY" -c 'import sys; sys.path.insert(0, "csrc"); import toolchain; print(toolchain.find_cuda_home() or "")' || true)
if [[ -n $TOOLKIT ]]; then
    export CUDA_HOME=$TOOLKIT PATH="$TOOLKIT/bin:$PATH"
    say "nvcc: $TOOLKIT/bin/nvcc ($("$TOOLKIT/bin/nvcc" --version | tail -n 1))"
    # --no-deps --no-index: the machine has no network.
    # The lent machines' default g++ (/opt/gcc) was seen to build a _C.so that
    # segfaults when an op throws; the system compiler builds a sound one.
    compilers=()
    if [[ -x /usr/bin/gcc && -x /usr/bin/g++ ]]; then compilers=(CC=/usr/bin/gcc CXX=/usr/bin/g++); fi
    run_step "build fastattr._C (sm_90)" 240 build.log \
        env "${compilers[@]}" TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)" \
        "$PY" -m pip install -e . --no-build-isolation --no-deps --no-index -q
else
    say "no nvcc found (CUDA_HOME, CUDA_PATH, /usr/local/cuda, PATH): using the prebuilt fastattr/_C*.so as is"
    ls -l fastattr/_C*.so 2>/dev/null || echo "(and there is no fastattr/_C*.so)"
    record "build fastattr._C (sm_90)" SKIP "no nvcc; prebuilt .so used as is"
fi

# --- 3. the extension loads and sees the GPU --------------------------------
run_step "extension loads, GPU visible" 60 load.log "$PY" -c '
import torch, fastattr
from fastattr import _backend
print("fastattr.backend():", fastattr.backend(), "| load error:", _backend._load_error)
assert fastattr.backend() == "extension", "the compiled extension did not load"
assert torch.cuda.is_available(), "no GPU visible to torch"
x = torch.rand(2, 5, device="cuda")
a = fastattr.integrated_gradients(lambda t: (t * t).sum(1), x, n_steps=8)
torch.testing.assert_close(a, x * x)  # IG of sum(x^2) from 0 is x^2
print("IG on cuda OK")
'

# --- 4. the CUDA tests -------------------------------------------------------
# Every test file with device parameters; -k cuda keeps their CUDA cases
# (test_ops.py: CUDA == CPU bit for bit, noise included).
mapfile -t CUDA_TESTS < <(grep -l -E 'DEVICES|"cuda"|cuda' tests/test_*.py || true)
if ((${#CUDA_TESTS[@]} == 0)); then CUDA_TESTS=(tests/test_ops.py); fi
# pytest exits 5 when nothing was selected; all-skipped (no GPU seen) is a failure here too.
run_step "CUDA tests (-k cuda)" 150 tests.log \
    "$PY" -m pytest "${CUDA_TESTS[@]}" -q -k cuda -rfEs -p no:cacheprovider
if [[ ${SUMMARY[-1]} == *PASS* ]] && ! grep -qE '[0-9]+ passed' "$LOGDIR/tests.log"; then
    unset 'SUMMARY[-1]'
    record "CUDA tests (-k cuda)" FAIL "no CUDA test ran (all skipped)"
fi

# --- 5. the benchmark table on the GPU -----------------------------------------
bench_args=(--device cuda --resnet)
if [[ -n ${OUT:-} ]]; then bench_args+=(--json "$OUT/bench.json"); fi
run_step "benchmark table (cuda, resnet)" 240 bench.log "$PY" benchmarks/run.py "${bench_args[@]}"

# --- summary -------------------------------------------------------------------
say "summary"
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "logs in $LOGDIR; total ${SECONDS}s"
if ((FAILED)); then
    echo "GPU CHECK: FAIL"
    exit 1
fi
echo "GPU CHECK: PASS"
