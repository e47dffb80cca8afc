"""Builds the compiled kernels ``fastattr._C`` (package metadata: pyproject.toml).

The CUDA kernels are compiled whenever torch is a CUDA build and a CUDA
toolkit of torch's CUDA major is found (``csrc/toolchain.py``: ``CUDA_HOME``,
``/usr/local/cuda``, ``nvcc`` on ``PATH``, or the pip ``nvidia-cuda-nvcc``),
with or without a GPU on the build machine; otherwise the build is CPU-only
and says so. ``FASTATTR_CPU_ONLY=1`` skips the CUDA kernels;
``FASTATTR_REQUIRE_CUDA=1`` makes a build without them an error.
``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures (default:
``toolchain.DEFAULT_CUDA_ARCH_LIST``, Ampere and Hopper plus PTX for newer
GPUs). Flags and architectures come from ``csrc/toolchain.py``, which
CMakeLists.txt's CUDA compile check reads too.
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


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() not in ("", "0", "false", "no")


def _cuda_home() -> str | None:
    """The toolkit to build the CUDA kernels with, or None for a CPU-only
    build (said on stderr, and an error under ``FASTATTR_REQUIRE_CUDA=1``)."""
    if _flag("FASTATTR_CPU_ONLY"):
        why = "FASTATTR_CPU_ONLY is set"
        home = None
    else:
        import torch

        home = toolchain.find_cuda_home()
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is a CPU-only build"
        else:
            why = (f"no CUDA {torch.version.cuda.split('.')[0]} toolkit found (CUDA_HOME, CUDA_PATH, "
                   "/usr/local/cuda, nvcc on PATH, pip nvidia-cuda-nvcc: "
                   f"pip install {' '.join(toolchain.pip_toolkit_requirements(torch.version.cuda))})")
    if home is None:
        if _flag("FASTATTR_REQUIRE_CUDA"):
            sys.exit(f"fastattr: FASTATTR_REQUIRE_CUDA is set but the CUDA kernels cannot be built: {why}")
        print(f"fastattr: WARNING: building WITHOUT the CUDA kernels ({why}); "
              "fastattr._C will run on the CPU only", file=sys.stderr)
    return home


def _extension():
    cuda_home = _cuda_home()
    if cuda_home is not None:
        # Set before cpp_extension is imported: it reads CUDA_HOME once, and its
        # own guess from nvcc on PATH can miss the toolkit.
        os.environ["CUDA_HOME"] = cuda_home
        os.environ["TORCH_CUDA_ARCH_LIST"] = toolchain.cuda_arch_list()
    from torch.utils import cpp_extension

    sources = toolchain.read_sources()
    if cuda_home is None:
        return cpp_extension.CppExtension(
            toolchain.EXTENSION_NAME,
            [s for s in sources if not s.endswith(".cu")],
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": toolchain.CXX_FLAGS},
            extra_link_args=toolchain.LINK_FLAGS,
        )
    # -isystem keeps the wheels' headers behind the toolkit's own, which win
    # where both ship a header (cuda_runtime.h, ...).
    wheel_includes = [f for d in toolchain.nvidia_include_dirs() for f in ("-isystem", d)]
    # The pip toolkit ships libcudart.so.<major> only; -lcudart needs a link.
    import torch

    cuda_major = int(torch.version.cuda.split(".")[0])  # the toolkit's major too (_cuda_home)
    cudart_dir = toolchain.cudart_link_dir(cuda_home, cuda_major, str(ROOT / "build" / "cudart"))
    cudart_dirs = [] if cudart_dir is None else [cudart_dir]
    print(f"fastattr: building CUDA kernels with {cuda_home} for "
          f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}", file=sys.stderr)
    return cpp_extension.CUDAExtension(
        toolchain.EXTENSION_NAME,
        sources,
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": toolchain.CXX_FLAGS,
                            "nvcc": toolchain.NVCC_FLAGS + wheel_includes},
        library_dirs=cudart_dirs,
        extra_link_args=toolchain.LINK_FLAGS,
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
        with a kept one ninja recompiles only what changed (``--build-temp``
        picks another folder)."""

        def finalize_options(self) -> None:
            chosen = self.build_temp is not None  # --build-temp on the command line
            super().finalize_options()
            if not chosen:
                self.build_temp = str(ROOT / "build" / "ext")

    _put_ninja_on_path()
    setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})


if __name__ == "__main__":
    main()
