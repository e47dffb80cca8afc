"""Build configuration shared by ``setup.py``, ``CMakeLists.txt`` and
``benchmarks/gpu_check.sh``.

One place knows the source list (``csrc/sources.txt``), the compiler flags and
GPU architectures (so the CMake compile check compiles what the real build
compiles), which CUDA toolkit to build with, and where the pip ``nvidia-*``
wheels keep the CUDA library headers (cuSPARSE, cuBLAS, ...) that torch's
CUDA headers include and a bare system toolkit may lack.

The toolkit: a system one (``$CUDA_HOME``, ``$CUDA_PATH``,
``/usr/local/cuda``, the ``nvcc`` on ``PATH``) counts only when its CUDA major
equals torch's; otherwise the pip toolkit (``nvidia-cuda-nvcc`` and friends,
``site-packages/nvidia/<name>/bin/nvcc`` with its libraries in ``lib``).

Run as a script it prints, for CMake and the GPU check, one ``;``-separated list::

    python csrc/toolchain.py sources            # every source in sources.txt
    python csrc/toolchain.py torch-includes     # torch's C++ include directories
    python csrc/toolchain.py nvidia-includes    # site-packages/nvidia/*/include
    python csrc/toolchain.py cuda-home          # the toolkit to build with ('' if none)
    python csrc/toolchain.py cuda-architectures # TORCH_CUDA_ARCH_LIST as CMake architectures
    python csrc/toolchain.py nvcc-flags         # every nvcc flag of the build but arches and includes
    python csrc/toolchain.py pip-toolkit        # pip requirements of the toolkit torch needs
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping

ROOT = Path(__file__).resolve().parent.parent

EXTENSION_NAME = "fastattr._C"
# Ampere and Hopper, plus PTX for newer GPUs (TORCH_CUDA_ARCH_LIST syntax).
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"

# -ffp-contract=off / --fmad=false: no fused multiply-add, which is part of the
# bit-identity contract (csrc/README.md). -fno-math-errno: sqrt need not set
# errno, so it is one instruction and the CPU noise loop vectorizes (values
# are unchanged: sqrt stays correctly rounded). -fopenmp: at::parallel_for is
# an inline template that runs serially unless the extension itself is
# compiled with OpenMP (ATen/Parallel-inl.h tests _OPENMP); linked with it, the
# extension needs libgomp.so.1, which resolves to the copy a pip torch bundles
# and has already loaded, so the kernels share torch's thread pool. No -std:
# torch's BuildExtension adds the standard its headers need (C++20 for torch 2.14).
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
# One token per option: CMake de-duplicates repeated options such as -Xcompiler.
NVCC_FLAGS = ["-O3", "--fmad=false", "-Xcompiler=-ffp-contract=off"]

_SYSTEM_TOOLKIT_DIRS = ("/usr/local/cuda",)


def read_sources() -> list[str]:
    """Paths (relative to the repository root) listed in ``csrc/sources.txt``."""
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def cuda_arch_list() -> str:
    """The GPU architectures to build for, in ``TORCH_CUDA_ARCH_LIST`` syntax."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCH_LIST


def cmake_cuda_architectures(arch_list: str) -> list[str]:
    """``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0+PTX"``) as ``CMAKE_CUDA_ARCHITECTURES``
    (``["80-real", "90"]``): SASS for each, PTX too where ``+PTX`` asks for it,
    as torch's ``_get_cuda_arch_flags`` does."""
    architectures = []
    for item in re.split(r"[;\s]+", arch_list.strip()):
        if not item:
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)(a?)(\+PTX)?", item)
        if match is None:
            raise ValueError(f"TORCH_CUDA_ARCH_LIST entry {item!r}: expected e.g. 8.0 or 9.0+PTX")
        major, minor, suffix, ptx = match.groups()
        number = f"{major}{minor}{suffix}"
        architectures.append(number if ptx else f"{number}-real")
    if not architectures:
        raise ValueError("TORCH_CUDA_ARCH_LIST is empty")
    return architectures


def torch_nvcc_flags() -> list[str]:
    """The nvcc flags torch's ``BuildExtension`` adds to every ``.cu`` of the
    extension (its ``COMMON_NVCC_FLAGS`` and the extension's defines), but
    the architectures, ``-fPIC`` and the C++ standard."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    extension_defines = ["-DTORCH_API_INCLUDE_EXTENSION_H",
                         f"-DTORCH_EXTENSION_NAME={EXTENSION_NAME.rsplit('.', 1)[-1]}"]
    return [*COMMON_NVCC_FLAGS, *extension_defines]


def nvcc_flags() -> list[str]:
    """Every nvcc flag of the real build but the architectures, include
    directories, ``-fPIC`` and ``-std``: torch's, then the project's."""
    return [*torch_nvcc_flags(), *NVCC_FLAGS]


def _is_toolkit(home: str | None) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc"))


def nvcc_version(home: str) -> tuple[int, int] | None:
    """(major, minor) of the toolkit's ``bin/nvcc``, from ``nvcc --version``;
    None when it does not run or says no release."""
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else None


def site_roots() -> list[str]:
    """The site-packages directories (and ``sys.path``) of this interpreter."""
    return [*site.getsitepackages(), site.getusersitepackages(), *sys.path]


def system_cuda_homes(env: Mapping[str, str] | None = None,
                      system_dirs: Iterable[str] = _SYSTEM_TOOLKIT_DIRS) -> list[str]:
    """System toolkits, first choice first: ``$CUDA_HOME``, ``$CUDA_PATH``,
    ``/usr/local/cuda``, the toolkit of the ``nvcc`` on ``PATH`` (variables
    from ``env``, default ``os.environ``).

    ``nvcc`` on ``PATH`` may be a wrapper script outside the toolkit (so
    torch's own guess, two directories above it, can be wrong): only a
    directory holding ``bin/nvcc`` counts as a toolkit.
    """
    env = os.environ if env is None else env
    homes = [env.get("CUDA_HOME"), env.get("CUDA_PATH"), *system_dirs]
    nvcc = shutil.which("nvcc", path=env.get("PATH", ""))
    if nvcc is not None:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return _unique(os.path.realpath(h) for h in homes if _is_toolkit(h))


def pip_cuda_homes(roots: Iterable[str] | None = None) -> list[str]:
    """Toolkits of the pip ``nvidia-cuda-nvcc`` wheel: ``nvidia/<name>/bin/nvcc``
    under the site-packages (``nvidia/cuda_nvcc`` for CUDA 12, ``nvidia/cu13``
    for CUDA 13); their libraries are in ``lib``, not ``lib64``."""
    homes = []
    for root in site_roots() if roots is None else roots:
        homes += sorted(os.path.dirname(os.path.dirname(nvcc))
                        for nvcc in glob.glob(os.path.join(root, "nvidia", "*", "bin", "nvcc")))
    return _unique(os.path.realpath(h) for h in homes)


def choose_cuda_home(torch_cuda: str, candidates: Iterable[str],
                     version_of: Callable[[str], tuple[int, int] | None] = nvcc_version,
                     log: Callable[[str], None] = lambda message: None) -> str | None:
    """The first toolkit of ``candidates`` whose CUDA major equals torch's
    (``torch_cuda``, e.g. ``"13.0"``); None when none does. Those skipped are
    reported through ``log``."""
    torch_major = int(torch_cuda.split(".")[0])
    for home in candidates:
        version = version_of(home)
        if version is not None and version[0] == torch_major:
            return home
        found = "no version" if version is None else f"CUDA {version[0]}.{version[1]}"
        log(f"fastattr: CUDA toolkit {home} skipped: {found}, torch is built for CUDA {torch_cuda}")
    return None


def find_cuda_home(torch_cuda: str | None = None, env: Mapping[str, str] | None = None,
                   roots: Iterable[str] | None = None,
                   system_dirs: Iterable[str] = _SYSTEM_TOOLKIT_DIRS) -> str | None:
    """The toolkit to build the CUDA kernels with, for torch's CUDA version
    ``torch_cuda`` (default: the installed torch's; None for a CPU-only
    torch, then there is none): the first system toolkit of torch's CUDA
    major, else the pip one of that major (under ``roots``, default this
    interpreter's site-packages), else None."""
    if torch_cuda is None:
        import torch

        torch_cuda = torch.version.cuda
        if torch_cuda is None:
            return None
    candidates = [*system_cuda_homes(env, system_dirs), *pip_cuda_homes(roots)]
    return choose_cuda_home(torch_cuda, candidates, log=lambda m: print(m, file=sys.stderr))


def pip_toolkit_requirements(torch_cuda: str) -> list[str]:
    """The pip requirements of a toolkit for torch's CUDA ``major.minor``:
    nvcc, its C runtime headers, the runtime library, CCCL (CUB, Thrust)."""
    major, minor = torch_cuda.split(".")[:2]
    if int(major) >= 13:
        pinned = [f"nvidia-cuda-{name}=={major}.{minor}.*" for name in ("nvcc", "crt", "runtime")]
        return [*pinned, f"nvidia-cuda-cccl=={major}.*"]
    return [f"nvidia-cuda-{name}-cu{major}=={major}.{minor}.*"
            for name in ("nvcc", "runtime", "cccl")]


def cudart_link_dir(home: str, cuda_major: int, out_dir: str,
                    roots: Iterable[str] | None = None) -> str | None:
    """A directory where the linker finds ``libcudart.so`` for the toolkit
    ``home`` of CUDA ``cuda_major``: None when its ``lib64`` or ``lib`` has
    it; else ``out_dir``, made to hold a link to the ``libcudart.so.<major>``
    the pip wheels ship (in ``home/lib`` or another ``nvidia/*/lib``; they have
    no unversioned one, which ``-lcudart`` needs). None when there is none."""
    if any(os.path.exists(os.path.join(home, d, "libcudart.so")) for d in ("lib64", "lib")):
        return None
    search = [os.path.join(home, "lib")]
    for root in site_roots() if roots is None else roots:
        search += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
    for lib_dir in search:
        versioned = os.path.join(lib_dir, f"libcudart.so.{cuda_major}")
        if os.path.exists(versioned):
            os.makedirs(out_dir, exist_ok=True)
            link = os.path.join(out_dir, "libcudart.so")
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(versioned, link)
            return out_dir
    return None


def nvidia_include_dirs() -> list[str]:
    """Every ``nvidia/*/include`` directory of the installed pip wheels
    (e.g. ``nvidia/cu13/include``), searched on the site-packages and
    ``sys.path`` of this interpreter."""
    found: list[str] = []
    for root in site_roots():
        found += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
    return _unique(os.path.realpath(include) for include in found)


def torch_include_dirs() -> list[str]:
    """Include directories of the installed torch's C++ headers."""
    from torch.utils.cpp_extension import include_paths

    return include_paths()


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


if __name__ == "__main__":
    queries: dict[str, Callable[[], list[str]]] = {
        "sources": read_sources,
        "torch-includes": torch_include_dirs,
        "nvidia-includes": nvidia_include_dirs,
        "cuda-home": lambda: [home] if (home := find_cuda_home()) else [],
        "cuda-architectures": lambda: cmake_cuda_architectures(cuda_arch_list()),
        "nvcc-flags": nvcc_flags,
        "pip-toolkit": lambda: pip_toolkit_requirements(__import__("torch").version.cuda or ""),
    }
    if len(sys.argv) != 2 or sys.argv[1] not in queries:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(queries)}}}")
    print(";".join(queries[sys.argv[1]]()))
