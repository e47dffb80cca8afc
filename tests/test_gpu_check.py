"""The GPU check and its build configuration, rehearsed without a GPU:
``benchmarks/gpu_check.sh`` in dry run (every step reported, results written,
a failing step still summarized), the toolkit chooser of ``csrc/toolchain.py``
on fake toolkit layouts, setup.py's word on a build without CUDA kernels, and
CMake's CUDA compile check against the flags setup.py's build uses."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "csrc"))
import toolchain  # noqa: E402

STEPS = ["machine", "python_env", "packages", "toolkit", "build", "load", "cuda_tests", "benchmark"]
DRY_RUN_STATUS = {  # what a dry run may claim: PASS only for what really ran here
    "machine": "SKIP", "python_env": "PASS", "packages": "PASS", "toolkit": "PASS",
    "build": "SKIP", "load": "SKIP", "cuda_tests": "SKIP", "benchmark": "SKIP",
}


# ---- benchmarks/gpu_check.sh in dry run ------------------------------------------

def _copy_repo(dest: Path) -> Path:
    """The repository's files (no venv, git, build outputs) copied to ``dest``:
    the check deletes and builds things in its tree."""
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.so", "__pycache__", ".whl")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _dry_run(tmp: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs the check in dry run in a copy of the repository, with this
    test's Python as the base; returns the run and its OUT folder."""
    repo = _copy_repo(tmp / "repo")
    out = tmp / "out"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    run_env = {**inherited, "GPU_CHECK_DRY_RUN": "1", "PYTHON": sys.executable, "GPU_CHECK_VENV": str(tmp / "venv"), "OUT": str(out),
               **env}
    proc = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh")], env=run_env,
                          capture_output=True, text=True, timeout=240)
    return proc, out


def _summary(out: Path) -> tuple[dict[str, tuple[str, str]], str]:
    """summary.txt as {step: (status, note)} and its verdict line."""
    *lines, verdict = (out / "summary.txt").read_text().splitlines()
    steps = {}
    for line in lines:
        match = re.fullmatch(r"(\S+)\s+(PASS|FAIL|SKIP)(?:  \((.*)\))?", line)
        assert match, f"bad summary line {line!r}"
        steps[match[1]] = (match[2], match[3] or "")
    return steps, verdict


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return _dry_run(tmp_path_factory.mktemp("gpu_check"))


def test_dry_run_reports_every_step_and_claims_no_gpu_work(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps, verdict = _summary(out)
    assert list(steps) == STEPS
    assert {step: status for step, (status, _) in steps.items()} == DRY_RUN_STATUS
    for step in ("machine", "build", "load", "cuda_tests", "benchmark"):
        assert steps[step][1].startswith("dry run: "), steps[step]
    assert verdict == "GPU CHECK DRY RUN (nothing ran on a GPU): PASS"
    # The summary printed at the end is the one written to OUT.
    assert (out / "summary.txt").read_text() in proc.stdout


def test_dry_run_writes_each_step_log_and_no_gpu_results(dry_run):
    _, out = dry_run
    for step in ("machine", "python_env", "packages", "toolkit", "build", "cuda_tests"):
        assert (out / f"{step}.log").is_file(), step
    # The build ran, CPU-only, outside the tree, and said it had no CUDA kernels.
    assert "building WITHOUT the CUDA kernels" in (out / "build.log").read_text()
    assert list((out / "dry_build" / "fastattr").glob("_C*.so"))
    # The CUDA tests were collected, not run: the GPU cases of the files with
    # CUDA tests, none of this file's.
    collected = (out / "cuda_tests.log").read_text()
    assert re.search(r"[1-9]\d*/\d+ tests collected", collected)
    files = {line.split("::")[0] for line in collected.splitlines() if "::" in line}
    assert files == {"tests/test_cuda.py", "tests/test_ops.py", "tests/test_host_syncs.py"}
    # The toolkit found here has torch's CUDA major, and the check recorded it.
    import torch

    home = (out / "cuda_home.txt").read_text().strip()
    version = toolchain.nvcc_version(home)
    assert version is not None and str(version[0]) == torch.version.cuda.split(".")[0]
    # Nothing ran on a GPU, so no GPU results exist.
    assert not (out / "bench.json").exists() and not (out / "tests.xml").exists()
    assert not (out / "load.log").exists() and not (out / "benchmark.log").exists()


def test_dry_run_venv_runs_pip_and_sees_the_base_torch(dry_run):
    _, out = dry_run
    log = (out / "python_env.log").read_text()
    assert "torch" in log and "pip:" in log
    venv_python = re.search(r"^(\S+/venv/bin/python) ", log, re.M)
    assert venv_python, log


def test_a_failing_step_still_ends_in_the_summary(tmp_path):
    proc, out = _dry_run(tmp_path, GPU_CHECK_FAIL_STEP="toolkit", GPU_CHECK_SKIP_BUILD="1")
    assert proc.returncode == 1
    steps, verdict = _summary(out)
    assert list(steps) == STEPS  # the steps after the failure still ran and were reported
    assert steps["toolkit"] == ("FAIL", "exit 3, see toolkit.log")
    assert "failure injected" in (out / "toolkit.log").read_text()
    assert steps["packages"][0] == "PASS" and steps["cuda_tests"][0] == "SKIP"
    assert steps["build"] == ("SKIP", "dry run: GPU_CHECK_SKIP_BUILD=1")
    assert verdict == "GPU CHECK DRY RUN (nothing ran on a GPU): FAIL"
    assert "GPU CHECK DRY RUN (nothing ran on a GPU): FAIL" in proc.stdout


# ---- csrc/toolchain.py: which toolkit ------------------------------------------------

def _fake_toolkit(home: Path, release: str, lib: str = "lib64") -> Path:
    """A directory with a ``bin/nvcc`` that reports ``release`` (e.g. "12.4")
    and an empty library folder ``lib``."""
    (home / "bin").mkdir(parents=True)
    (home / lib).mkdir()
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    return home


def _find(tmp_path: Path, torch_cuda: str, env: dict | None = None) -> str | None:
    return toolchain.find_cuda_home(torch_cuda, env={"PATH": "", **(env or {})},
                                    roots=[str(tmp_path / "site")],
                                    system_dirs=[str(tmp_path / "usr-local-cuda")])


def test_nvcc_version_reads_the_release(tmp_path):
    assert toolchain.nvcc_version(str(_fake_toolkit(tmp_path / "t", "12.4"))) == (12, 4)
    assert toolchain.nvcc_version(str(tmp_path / "missing")) is None


def test_system_toolkit_of_torch_major_is_preferred_to_pip(tmp_path):
    system = _fake_toolkit(tmp_path / "usr-local-cuda", "13.0")
    _fake_toolkit(tmp_path / "site" / "nvidia" / "cu13", "13.0", lib="lib")
    assert _find(tmp_path, "13.0") == str(system.resolve())


def test_system_toolkit_of_another_major_gives_way_to_pip(tmp_path, capsys):
    _fake_toolkit(tmp_path / "usr-local-cuda", "12.4")
    pip_home = _fake_toolkit(tmp_path / "site" / "nvidia" / "cu13", "13.0", lib="lib")
    assert _find(tmp_path, "13.0") == str(pip_home.resolve())
    assert "CUDA 12.4, torch is built for CUDA 13.0" in capsys.readouterr().err


def test_cuda12_pip_layout_is_found(tmp_path):
    pip_home = _fake_toolkit(tmp_path / "site" / "nvidia" / "cuda_nvcc", "12.6", lib="lib")
    assert _find(tmp_path, "12.4") == str(pip_home.resolve())


def test_no_toolkit_of_torch_major_means_none(tmp_path):
    _fake_toolkit(tmp_path / "usr-local-cuda", "12.4")
    _fake_toolkit(tmp_path / "site" / "nvidia" / "cuda_nvcc", "12.4", lib="lib")
    assert _find(tmp_path, "13.0") is None
    assert _find(tmp_path / "empty", "13.0") is None


def test_cuda_home_comes_before_usr_local_cuda(tmp_path):
    _fake_toolkit(tmp_path / "usr-local-cuda", "13.0")
    chosen = _fake_toolkit(tmp_path / "chosen", "13.1")
    assert _find(tmp_path, "13.0", env={"CUDA_HOME": str(chosen)}) == str(chosen.resolve())


def test_nvcc_on_path_counts_only_inside_a_toolkit(tmp_path):
    wrapper_dir = tmp_path / "wrappers"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "nvcc"
    shutil.copy(_fake_toolkit(tmp_path / "elsewhere", "13.0") / "bin" / "nvcc", wrapper)
    assert _find(tmp_path, "13.0", env={"PATH": str(wrapper_dir)}) is None
    real = _fake_toolkit(tmp_path / "real", "13.0")
    assert _find(tmp_path, "13.0", env={"PATH": str(real / "bin")}) == str(real.resolve())


def test_cudart_link_for_the_cuda13_pip_layout(tmp_path):
    site_dir = tmp_path / "site"
    pip_home = _fake_toolkit(site_dir / "nvidia" / "cu13", "13.0", lib="lib")
    (pip_home / "lib" / "libcudart.so.13").write_text("")
    link_dir = toolchain.cudart_link_dir(str(pip_home), 13, str(tmp_path / "link"), roots=[str(site_dir)])
    assert link_dir == str(tmp_path / "link")
    assert os.readlink(tmp_path / "link" / "libcudart.so") == str(pip_home / "lib" / "libcudart.so.13")


def test_cudart_link_for_the_cuda12_pip_layout_takes_its_major(tmp_path):
    # CUDA 12 wheels: nvcc in cuda_nvcc, the runtime in cuda_runtime/lib;
    # a CUDA 13 runtime beside them is not the one.
    site_dir = tmp_path / "site"
    nvcc12 = _fake_toolkit(site_dir / "nvidia" / "cuda_nvcc", "12.4", lib="lib")
    for wheel, name in (("cu13", "libcudart.so.13"), ("cuda_runtime", "libcudart.so.12")):
        (site_dir / "nvidia" / wheel / "lib").mkdir(parents=True)
        (site_dir / "nvidia" / wheel / "lib" / name).write_text("")
    toolchain.cudart_link_dir(str(nvcc12), 12, str(tmp_path / "link"), roots=[str(site_dir)])
    assert os.readlink(tmp_path / "link" / "libcudart.so") == str(
        site_dir / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")
    assert toolchain.cudart_link_dir(str(nvcc12), 11, str(tmp_path / "link11"), roots=[str(site_dir)]) is None


def test_no_cudart_link_where_the_toolkit_has_one(tmp_path):
    system = _fake_toolkit(tmp_path / "cuda", "13.0")
    (system / "lib64" / "libcudart.so").write_text("")
    assert toolchain.cudart_link_dir(str(system), 13, str(tmp_path / "link"), roots=[]) is None
    assert not (tmp_path / "link").exists()


def test_pip_toolkit_requirements_follow_torch_cuda():
    assert toolchain.pip_toolkit_requirements("13.0") == [
        "nvidia-cuda-nvcc==13.0.*", "nvidia-cuda-crt==13.0.*", "nvidia-cuda-runtime==13.0.*",
        "nvidia-cuda-cccl==13.*"]
    assert toolchain.pip_toolkit_requirements("12.8") == [
        "nvidia-cuda-nvcc-cu12==12.8.*", "nvidia-cuda-runtime-cu12==12.8.*",
        "nvidia-cuda-cccl-cu12==12.8.*"]


@pytest.mark.parametrize("arch_list, expected", [
    ("8.0;9.0+PTX", ["80-real", "90"]),
    ("9.0", ["90-real"]),
    ("7.5 8.6+PTX", ["75-real", "86"]),
    ("9.0a", ["90a-real"]),
])
def test_cmake_cuda_architectures(arch_list, expected):
    assert toolchain.cmake_cuda_architectures(arch_list) == expected


@pytest.mark.parametrize("arch_list", ["", "sm_90", "9.0+ptx"])
def test_cmake_cuda_architectures_rejects_bad_lists(arch_list):
    with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST"):
        toolchain.cmake_cuda_architectures(arch_list)


# ---- setup.py ---------------------------------------------------------------------

@pytest.fixture
def setup_module(monkeypatch):
    """setup.py as a module (its main() is not run), under a copy of the
    environment: it sets CUDA_HOME and TORCH_CUDA_ARCH_LIST."""
    build_variables = ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "FASTATTR_CPU_ONLY", "FASTATTR_REQUIRE_CUDA")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in build_variables})
    spec = importlib.util.spec_from_file_location("fastattr_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_without_toolkit_says_so(setup_module, monkeypatch, capsys):
    monkeypatch.setattr(setup_module.toolchain, "find_cuda_home", lambda: None)
    assert setup_module._cuda_home() is None
    err = capsys.readouterr().err
    assert "building WITHOUT the CUDA kernels" in err
    import torch

    if torch.version.cuda is not None:
        assert "pip install nvidia-cuda-nvcc" in err


def test_required_cuda_build_without_toolkit_fails(setup_module, monkeypatch):
    monkeypatch.setenv("FASTATTR_CPU_ONLY", "1")
    monkeypatch.setenv("FASTATTR_REQUIRE_CUDA", "1")
    with pytest.raises(SystemExit, match="FASTATTR_CPU_ONLY is set"):
        setup_module._cuda_home()


# ---- CMake's CUDA compile check == setup.py's build -----------------------------------

def _gencode_pairs(flags: list[str]) -> set[tuple[str, str]]:
    """(virtual arch, code) pairs of nvcc's -gencode / --generate-code flags."""
    pairs = set()
    for flag in flags:
        match = re.fullmatch(r"(?:-gencode|--generate-code)=arch=(\w+),code=\[?([\w,]+)\]?", flag)
        if match:
            pairs |= {(match[1], code) for code in match[2].split(",")}
    return pairs


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_cuda_check_compiles_with_setup_py_flags(setup_module, monkeypatch, tmp_path):
    import torch

    if torch.version.cuda is None or toolchain.find_cuda_home() is None:
        pytest.skip("needs a CUDA torch and a toolkit of its CUDA major")
    # setup.py's CUDA extension as the real build makes it.
    ext = setup_module._extension()
    nvcc_args = ext.extra_compile_args["nvcc"]
    project_flags = [f for i, f in enumerate(nvcc_args)
                     if f != "-isystem" and (i == 0 or nvcc_args[i - 1] != "-isystem")]
    from torch.utils import cpp_extension

    # What torch's BuildExtension adds to every .cu of an extension named fastattr._C.
    torch_flags = [*cpp_extension.COMMON_NVCC_FLAGS,
                   "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    arch_flags = cpp_extension._get_cuda_arch_flags()  # reads TORCH_CUDA_ARCH_LIST as set by setup.py

    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}",
                    "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"], check=True, capture_output=True,
                   env={k: v for k, v in os.environ.items() if k not in ("TORCH_CUDA_ARCH_LIST", "CUDACXX")},
                   timeout=180)
    commands = json.loads((build / "compile_commands.json").read_text())
    (cuda,) = [c for c in commands if c["file"].endswith(".cu")]
    cmake_flags = cuda["command"].split()
    assert cmake_flags[0] == str(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc")
    for flag in [*torch_flags, *project_flags]:
        assert flag in cmake_flags, flag
    assert _gencode_pairs(cmake_flags) == _gencode_pairs(arch_flags) != set()
