#!/usr/bin/env bash
# One prepared GPU check, under 8 minutes on a lent H100, build included
# (see benchmarks/README.md). Steps, each under its own timeout:
#   machine      nvidia-smi
#   python env   a venv of its own ($GPU_CHECK_VENV) that sees the base
#                Python's packages (torch), so pip works under PEP 668
#   packages     torch, setuptools, wheel, ninja, numpy, pytest and the audit's
#                packages from the package index where missing; the carried
#                wheels of .whl/ (benchmarks/gpu_wheels.sh: Captum, Quantus,
#                Zennit, pytorch-grad-cam); Captum from the index if still missing
#   toolkit      a CUDA toolkit of torch's CUDA major (csrc/toolchain.py), else
#                the pip one (nvidia-cuda-nvcc and friends) installed into the venv
#   build        fastattr._C for the GPU (sm_90), CUDA kernels required; any
#                fastattr/_C*.so carried from elsewhere is deleted first
#   load         the extension loads, sees the GPU, runs IG there
#   CUDA tests   the CUDA cases (-k cuda): every method, metric and drop-in, CUDA ==
#                CPU (bit for bit where the contract says so), kernels past the
#                grid and 2 GiB, half types, streams, host syncs, the audit
#   benchmark    the benchmark table on the GPU, ResNet-18-shaped model added, then
#                the metrics' table (benchmarks/metrics.py --quick) into metrics.txt
# After every step summary.txt is rewritten, so a timeout keeps what finished;
# the end prints the summary and `GPU CHECK: PASS` (exit 0) or `FAIL` (exit 1)
# (a dry run: `GPU CHECK DRY RUN (nothing ran on a GPU): PASS` or `FAIL`).
#
#   bash benchmarks/gpu_check.sh          (from anywhere; it works in the repo root)
#
# Environment:
#   OUT                 results folder (default: build/gpu_check in the repo root):
#                       summary.txt, <step>.log, tests.xml, bench.json, metrics.txt
#   PYTHON              the base Python (default python3); it should have torch
#   GPU_CHECK_VENV      the venv (default /tmp/fastattr-gpu-check-venv; reused if it runs)
#   GPU_CHECK_BUDGET_S  total seconds (default 450): step timeouts are cut to fit
#   GPU_CHECK_ARCH      TORCH_CUDA_ARCH_LIST of the build (default 9.0: H100/H200)
#   GPU_CHECK_DRY_RUN=1 rehearsal without a GPU: every step's setup runs, the
#                       build is CPU-only and goes to $OUT/dry_build (the tree's
#                       fastattr/_C*.so is left alone), the GPU-only steps are
#                       SKIP with the reason (the CUDA tests are only collected)
#   GPU_CHECK_SKIP_BUILD=1   (dry run only) skip the build, e.g. in the tests
#   GPU_CHECK_FAIL_STEP=ID   (for the tests) step ID fails at once; IDs: machine
#                       python_env packages toolkit build load cuda_tests benchmark
set -uo pipefail  # no -e: a failing step is recorded and the next one runs

SELF=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.."
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export OUT_DIR=${OUT:-$PWD/build/gpu_check}
export VENV=${GPU_CHECK_VENV:-/tmp/fastattr-gpu-check-venv}
export DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
export VPY=$VENV/bin/python
# Import fastattr from this tree whatever an (editable) install elsewhere says.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# ---- step bodies: each runs as `bash gpu_check.sh --step ID`, under its timeout ----

step_machine() {
    if ((DRY_RUN)); then echo "dry run: nvidia-smi not run"; return 0; fi
    nvidia-smi
}

# The venv sees the base Python's packages through a .pth file (like
# --system-site-packages, but also when the base is itself a venv), so the
# image's torch is used and pip installs go into the venv, never the system.
step_python_env() {
    local base=${PYTHON:-python3}
    if [[ -x $VPY ]] && "$VPY" -c '' 2>/dev/null; then
        echo "reusing $VENV"
    else
        rm -rf "$VENV"
        "$base" -m venv --without-pip "$VENV"
        "$base" -c 'import site, sys
dirs = [*site.getsitepackages(), *(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))]
print("\n".join(dict.fromkeys(dirs)))' >"$("$VPY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_base_python.pth"
    fi
    if ! "$VPY" -m pip --version >/dev/null 2>&1; then
        "$VPY" -m ensurepip --default-pip ||
            { echo "no pip for $base: install python3-pip (or python3-venv)"; return 1; }
    fi
    "$VPY" - <<'EOF'
import sys
print(sys.executable, sys.version.split()[0], "| pip:", __import__("pip").__version__)
try:
    import torch
except ImportError:
    print("torch: none in the base Python (the packages step installs it)")
else:
    print("torch", torch.__version__, "cuda", torch.version.cuda, "| GPU visible:", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
}

step_packages() {
    local missing=() pkg
    for pkg in torch setuptools wheel ninja numpy pytest; do  # each imports under its own name
        "$VPY" -c "import $pkg" 2>/dev/null || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        echo "installing from the package index: ${missing[*]}"
        "$VPY" -m pip install -q "${missing[@]}"
    else
        echo "torch, setuptools, wheel, ninja, numpy, pytest: all there"
    fi
    # The audit's packages (fastattr[audit]): tests/test_cuda.py audits on the GPU.
    local audit=() spec
    for spec in scikit-learn:sklearn pandas:pandas pyarrow:pyarrow matplotlib:matplotlib pillow:PIL; do
        "$VPY" -c "import ${spec#*:}" 2>/dev/null || audit+=("${spec%%:*}")
    done
    if ((${#audit[@]})); then
        if ((DRY_RUN)); then
            echo "dry run: would pip install ${audit[*]}"
        else
            echo "installing the audit's packages: ${audit[*]}"
            "$VPY" -m pip install -q "${audit[@]}"
        fi
    fi
    # The anchors (Captum, Quantus, Zennit, pytorch-grad-cam): the lent
    # machines reach no index, so benchmarks/gpu_wheels.sh fills .whl/ here
    # and the device call carries it; every carried wheel goes into the venv
    # (pure Python, pinned versions, no dependency resolution).
    if compgen -G '.whl/*.whl' >/dev/null; then
        "$VPY" -m pip install -q --no-index --no-deps .whl/*.whl || echo "carried wheels did not install"
    fi
    # Captum only adds the benchmark's Captum column: its absence is no failure.
    if ! "$VPY" -c 'import captum' 2>/dev/null; then
        if ((DRY_RUN)); then
            echo "dry run: would pip install captum==0.9.0"
        else
            "$VPY" -m pip install -q captum==0.9.0 || echo "captum not installed: no Captum column"
        fi
    fi
    "$VPY" -c 'import captum; print("captum", captum.__version__)' 2>/dev/null || echo "captum: none"
}

toolchain() { "$VPY" csrc/toolchain.py "$1"; }

step_toolkit() {
    local home
    home=$(toolchain cuda-home)
    if [[ -z $home ]]; then
        local reqs
        IFS=';' read -r -a reqs <<<"$(toolchain pip-toolkit)"
        if ((DRY_RUN)); then
            echo "dry run: no toolkit of torch's CUDA major; would pip install ${reqs[*]}"
            return 0
        fi
        echo "no toolkit of torch's CUDA major: pip install ${reqs[*]}"
        "$VPY" -m pip install -q "${reqs[@]}"
        home=$(toolchain cuda-home)
    fi
    [[ -n $home ]] || { echo "no CUDA toolkit of torch's CUDA major found"; return 1; }
    echo "$home" >"$OUT_DIR/cuda_home.txt"
    echo "toolkit: $home ($("$home/bin/nvcc" --version | grep release))"
}

step_build() {
    local mode where
    if ((DRY_RUN)); then
        mode=(FASTATTR_CPU_ONLY=1)
        where=(--build-lib "$OUT_DIR/dry_build" --build-temp "$OUT_DIR/dry_build/tmp")
    else
        [[ -s $OUT_DIR/cuda_home.txt ]] || { echo "no toolkit (see the toolkit step)"; return 1; }
        mode=(FASTATTR_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST="${GPU_CHECK_ARCH:-9.0}"
              CUDA_HOME="$(<"$OUT_DIR/cuda_home.txt")")
        where=(--inplace)
        # Never a .so built elsewhere: whatever loads later is built here.
        rm -f fastattr/_C*.so
    fi
    # The lent machines' default g++ (/opt/gcc) was seen to build a _C.so that
    # segfaults when an op throws; the system compiler builds a sound one.
    local compilers=()
    if [[ -x /usr/bin/gcc && -x /usr/bin/g++ ]]; then compilers=(CC=/usr/bin/gcc CXX=/usr/bin/g++); fi
    env "${compilers[@]}" "${mode[@]}" MAX_JOBS="$(nproc)" "$VPY" setup.py -q build_ext "${where[@]}"
    if ((DRY_RUN)); then ls -l "$OUT_DIR"/dry_build/fastattr/_C*.so; else ls -l fastattr/_C*.so; fi
}

step_load() {
    "$VPY" -c '
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
}

# Every test file that asks for a GPU; -k cuda keeps their CUDA cases
# (tests/test_ops.py: CUDA == CPU bit for bit, noise included). Not this
# script's own tests (tests/test_gpu_check.py), which are about the CPU side, nor
# the CPU rehearsal of tests/test_cuda.py (tests/test_cuda_rehearsal.py).
cuda_test_files() {
    grep -l -E 'torch\.cuda\.is_available\(\)|type == "cuda"' tests/test_*.py |
        grep -v -x -e tests/test_gpu_check.py -e tests/test_cuda_rehearsal.py || echo tests/test_ops.py
}

step_cuda_tests() {
    local files
    mapfile -t files < <(cuda_test_files)
    if ((DRY_RUN)); then
        # Collection only, on the reference backend when the build was skipped.
        local backend=()
        compgen -G 'fastattr/_C*.so' >/dev/null || backend=(FASTATTR_BACKEND=reference)
        env "${backend[@]}" "$VPY" -m pytest "${files[@]}" -q -k cuda --collect-only -p no:cacheprovider
        return
    fi
    local rc=0
    "$VPY" -m pytest "${files[@]}" -q -k cuda -rfEs -p no:cacheprovider \
        --junitxml="$OUT_DIR/tests.xml" || rc=$?
    ((rc == 0)) || return "$rc"
    # All skipped (no GPU seen) is a failure here.
    "$VPY" - "$OUT_DIR/tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
suites = ET.parse(sys.argv[1]).getroot().iter("testsuite")
ran = sum(int(s.get("tests", 0)) - int(s.get("skipped", 0)) for s in suites)
print(f"{ran} CUDA tests ran")
sys.exit(0 if ran > 0 else "no CUDA test ran (all skipped)")
EOF
}

step_benchmark() {
    local rc=0
    # The model forms beside the eager floor: the fast floor and fastattr
    # eager, fast and compiled (CUDA graphs), as ratios of it. "compiled" on
    # the ResNet workloads only: each new chunk size is a torch.compile of
    # the forward and backward (tens of seconds of this machine's CPU), and
    # the small nets' four more sizes would not fit this step's share of
    # BUDGET_S beside the timing and the metrics' table. --min-total-s 0:
    # 15 repeats of >= 50 ms each (GPU times scatter little), not >= 1.5 s
    # per call and workload, for the same reason.
    "$VPY" benchmarks/run.py --device cuda --resnet --forms eager,fast,compiled --compiled-only resnet \
        --min-total-s 0 --json "$OUT_DIR/bench.json" || rc=$?
    # The metrics' table on the GPU (every Quantus class on the small conv
    # nets, one call each; Quantus's column where it is installed), written
    # as it goes: the step's time limit may cut it short.
    "$VPY" benchmarks/metrics.py --device cuda --quick 2>&1 | tee "$OUT_DIR/metrics.txt" || rc=$?
    return "$rc"
}

if [[ ${1:-} == --step ]]; then
    set -e
    "step_$2"
    exit
fi

# ---- the step runner -------------------------------------------------------------

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/{summary.txt,cuda_home.txt,tests.xml,bench.json,metrics.txt} "$OUT_DIR"/*.log
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
declare -a SUMMARY=()
FAILED=0

say() { printf '\n=== %s (t=%ss)\n' "$*" "$SECONDS"; }
# The summary so far, rewritten after each step: a timeout keeps what finished.
write_summary() {  # write_summary STATE
    local check="GPU CHECK"
    if ((DRY_RUN)); then check="GPU CHECK DRY RUN (nothing ran on a GPU)"; fi
    printf '%s\n' "${SUMMARY[@]}" "$check: $1" >"$OUT_DIR/summary.txt"
}
record() {  # record STEP STATUS [NOTE]
    SUMMARY+=("$(printf '%-12s %s%s' "$1" "$2" "${3:+  ($3)}")")
    if [[ $2 == FAIL ]]; then FAILED=1; fi
    write_summary "RUNNING"
}
# Seconds a step may take: at most $1, and never past the budget (keeping 15 s for the summary).
limit() {
    local left=$((BUDGET_S - SECONDS - 15))
    if ((left < 10)); then left=10; fi
    if (($1 < left)); then echo "$1"; else echo "$left"; fi
}
# run_step ID MAX_SECONDS [DRY_NOTE]: runs step ID under timeout, output to the
# screen and $OUT_DIR/ID.log; PASS/FAIL, or in a dry run SKIP with DRY_NOTE when
# given (the step was only rehearsed) and FAIL if the rehearsal failed.
run_step() {
    local id=$1 t rc=0 cmd=(bash "$SELF" --step "$1")
    t=$(limit "$2")
    if [[ ${GPU_CHECK_FAIL_STEP:-} == "$id" ]]; then
        cmd=(bash -c 'echo "failure injected by GPU_CHECK_FAIL_STEP"; exit 3')
    fi
    say "$id (timeout ${t}s)"
    timeout --kill-after=10 "$t" "${cmd[@]}" 2>&1 | tee "$OUT_DIR/$id.log" || rc=$?
    if ((rc == 124 || rc == 137)); then
        record "$id" FAIL "timed out after ${t}s"
    elif ((rc != 0)); then
        record "$id" FAIL "exit $rc, see $id.log"
    elif ((DRY_RUN)) && [[ -n ${3:-} ]]; then
        record "$id" SKIP "$3"
    else
        record "$id" PASS
    fi
}
skip_step() {  # skip_step ID REASON
    say "$1: skipped, $2"
    record "$1" SKIP "$2"
}

run_step machine 30 "dry run: no GPU, nvidia-smi not run"
run_step python_env 120
run_step packages 120
run_step toolkit 150 # the pip toolkit download
if ((DRY_RUN)) && [[ ${GPU_CHECK_SKIP_BUILD:-0} == 1 ]]; then
    skip_step build "dry run: GPU_CHECK_SKIP_BUILD=1"
else
    run_step build 240 "dry run: built CPU-only, not for the GPU"
fi
if ((DRY_RUN)); then
    skip_step load "dry run: needs a GPU"
else
    run_step load 60
fi
run_step cuda_tests 150 "dry run: collected only, none run: needs a GPU"
if ((DRY_RUN)); then
    skip_step benchmark "dry run: needs a GPU"
else
    run_step benchmark 240
fi

say "summary"
if ((FAILED)); then write_summary FAIL; else write_summary PASS; fi
cat "$OUT_DIR/summary.txt"
echo "results in $OUT_DIR; total ${SECONDS}s"
exit "$FAILED"
