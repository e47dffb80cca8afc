"""Build configuration shared by ``setup.py`` and ``CMakeLists.txt``.

One place knows the source list (``csrc/sources.txt``), where the CUDA
toolkit is, and where the pip ``nvidia-*`` wheels keep the CUDA library
headers (cuSPARSE, cuBLAS, ...) that torch's CUDA headers include and a bare
system toolkit may lack.

Run as a script it prints, for CMake, one ``;``-separated list::

    python csrc/toolchain.py sources         # every source in sources.txt
    python csrc/toolchain.py torch-includes  # torch's C++ include directories
    python csrc/toolchain.py nvidia-includes # site-packages/nvidia/*/include
"""
from __future__ import annotations

import glob
import os
import shutil
import site
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def read_sources() -> list[str]:
    """Paths (relative to the repository root) listed in ``csrc/sources.txt``."""
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _is_toolkit(home: str | None) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc"))


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: ``$CUDA_HOME``/``$CUDA_PATH``, ``/usr/local/cuda``,
    or the toolkit of the ``nvcc`` on ``PATH``; None when there is none.

    ``nvcc`` on ``PATH`` may be a wrapper script outside the toolkit (so
    torch's own guess, two directories above it, can be wrong): only a
    directory holding ``bin/nvcc`` counts as a toolkit.
    """
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if _is_toolkit(home):
            return os.path.realpath(home)
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if _is_toolkit(home):
            return home
    return None


def nvidia_include_dirs() -> list[str]:
    """Every ``nvidia/*/include`` directory of the installed pip wheels
    (e.g. ``nvidia/cu13/include``), searched on the site-packages and
    ``sys.path`` of this interpreter."""
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    found: dict[str, None] = {}
    for root in roots:
        for include in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            found.setdefault(os.path.realpath(include))
    return list(found)


def torch_include_dirs() -> list[str]:
    """Include directories of the installed torch's C++ headers."""
    from torch.utils.cpp_extension import include_paths

    return include_paths()


if __name__ == "__main__":
    queries = {
        "sources": read_sources,
        "torch-includes": torch_include_dirs,
        "nvidia-includes": nvidia_include_dirs,
    }
    if len(sys.argv) != 2 or sys.argv[1] not in queries:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(queries)}}}")
    print(";".join(queries[sys.argv[1]]()))
