"""Builds the compiled kernels ``fastattr._C`` (package metadata: pyproject.toml).

The CUDA kernels are compiled whenever a CUDA toolkit is found (``CUDA_HOME``,
``/usr/local/cuda`` or ``nvcc`` on ``PATH``) and torch is a CUDA build, with or
without a GPU on the build machine; ``FASTATTR_CPU_ONLY=1`` skips them.
``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures (default: Ampere and
Hopper, plus PTX for newer GPUs).
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
sys.path.insert(0, str(CSRC))
import toolchain  # noqa: E402  (csrc/toolchain.py, shared with CMakeLists.txt)

DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"

# -ffp-contract=off / --fmad=false: no fused multiply-add, which is part of the
# bit-identity contract (csrc/README.md). -fno-math-errno: sqrt need not set
# errno, so it is one instruction and the CPU noise loop vectorizes (values
# are unchanged: sqrt stays correctly rounded). -fopenmp: at::parallel_for is
# an inline template that runs serially unless the extension itself is
# compiled with OpenMP (ATen/Parallel-inl.h tests _OPENMP); linked with it, the
# extension needs libgomp.so.1, which resolves to the copy a pip torch bundles
# and has already loaded, so the kernels share torch's thread pool (a torch
# built on another OpenMP runtime would get a second pool). No -std: torch's
# BuildExtension adds the standard its headers need (C++20 for torch 2.14).
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--fmad=false", "-Xcompiler", "-ffp-contract=off"]


def _cuda_home() -> str | None:
    """The toolkit to build the CUDA kernels with, or None for a CPU-only build."""
    if os.environ.get("FASTATTR_CPU_ONLY", "0").lower() not in ("", "0", "false", "no"):
        return None
    home = toolchain.find_cuda_home()
    if home is None:
        return None
    import torch

    if torch.version.cuda is None:
        print(f"fastattr: CUDA toolkit at {home} ignored: torch {torch.__version__} is a "
              "CPU-only build", file=sys.stderr)
        return None
    return home


def _extension():
    cuda_home = _cuda_home()
    if cuda_home is not None:
        # Set before cpp_extension is imported: it reads CUDA_HOME once, and its
        # own guess from nvcc on PATH can miss the toolkit.
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
    from torch.utils import cpp_extension

    sources = toolchain.read_sources()
    if cuda_home is None:
        return cpp_extension.CppExtension(
            "fastattr._C",
            [s for s in sources if not s.endswith(".cu")],
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=LINK_FLAGS,
        )
    # -isystem keeps the wheels' headers behind the toolkit's own, which win
    # where both ship a header (cuda_runtime.h, ...).
    wheel_includes = [f for d in toolchain.nvidia_include_dirs() for f in ("-isystem", d)]
    print(f"fastattr: building CUDA kernels with {cuda_home} for "
          f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}", file=sys.stderr)
    return cpp_extension.CUDAExtension(
        "fastattr._C",
        sources,
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS + wheel_includes},
        extra_link_args=LINK_FLAGS,
    )


def _put_ninja_on_path() -> None:
    """Let BuildExtension find the pip ``ninja`` (parallel, incremental builds)
    when its scripts directory is not on PATH, e.g. ``.venv/bin/pip install``
    without an activated venv."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def main() -> None:
    ext = _extension()  # first: it sets CUDA_HOME before cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension):
        """Keeps object files in build/ext between builds: editable installs
        otherwise compile in a fresh temporary directory every time, while
        with a kept one ninja recompiles only what changed."""

        def finalize_options(self) -> None:
            super().finalize_options()
            self.build_temp = str(ROOT / "build" / "ext")

    _put_ninja_on_path()
    setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})


if __name__ == "__main__":
    main()
