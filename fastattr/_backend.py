"""Which implementation of the fused ops runs: the compiled extension or the
pure-PyTorch reference.

The compiled library loads softly: without it the package still imports and
gives the same results through ``fastattr._reference`` (slower), and says once
why. ``FASTATTR_BACKEND=reference`` forces the reference. A library built
without the CUDA kernels (no toolkit at build time) runs the reference for
CUDA tensors, op by op, and says so once (:func:`compiled_for`,
:func:`report`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Dict, Iterator, Optional

import torch  # noqa: F401  (loads libc10/libtorch, which fastattr._C links against)

_EXTENSION = "extension"
_REFERENCE = "reference"

_load_error: Optional[str] = None
try:
    from . import _C  # noqa: F401  (importing registers torch.ops.fastattr.*)
except ImportError as exc:  # the compiled library is optional by design
    _load_error = f"{type(exc).__name__}: {exc}"

_forced = os.environ.get("FASTATTR_BACKEND", "").strip().lower()
if _forced not in ("", _EXTENSION, _REFERENCE):
    raise ValueError(
        f"FASTATTR_BACKEND must be 'extension' or 'reference', got {_forced!r}"
    )
if _forced == _EXTENSION and _load_error is not None:
    raise ImportError(
        "FASTATTR_BACKEND=extension but the compiled library fastattr._C could "
        f"not be loaded ({_load_error}); build it with "
        "`pip install -e . --no-build-isolation`"
    )

extension_available: bool = _load_error is None
_current: str = _REFERENCE if (_forced == _REFERENCE or not extension_available) else _EXTENSION

if _load_error is not None and _forced != _REFERENCE:
    warnings.warn(
        "fastattr: the compiled extension fastattr._C is not available "
        f"({_load_error}); using the pure-PyTorch reference backend (same "
        "results, slower). Build it with `pip install -e . --no-build-isolation`.",
        RuntimeWarning,
        stacklevel=2,
    )


def backend() -> str:
    """Name of the backend the fused ops run on: ``"extension"`` or ``"reference"``."""
    return _current


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the enclosed block on backend ``name`` (``"extension"`` or ``"reference"``).

    Used by the tests to check both backends in one process.
    """
    global _current
    if name not in (_EXTENSION, _REFERENCE):
        raise ValueError(f"backend must be 'extension' or 'reference', got {name!r}")
    if name == _EXTENSION and not extension_available:
        raise RuntimeError(f"the compiled extension is not available: {_load_error}")
    previous, _current = _current, name
    try:
        yield
    finally:
        _current = previous


# The dispatch keys of the devices whose kernels a build may lack.
_KERNEL_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@functools.lru_cache(maxsize=None)
def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded library registered ``fastattr::op`` for ``device_type``."""
    return extension_available and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"fastattr::{op}", _KERNEL_KEYS[device_type])


@functools.lru_cache(maxsize=None)
def _say_fallback(op: str, device_type: str) -> None:
    warnings.warn(
        f"fastattr: this build of fastattr._C has no {device_type.upper()} kernel for {op} (built without "
        f"the CUDA toolkit?); {device_type} tensors use the pure-PyTorch reference for it (same results, "
        "slower). Rebuild with the toolkit: FASTATTR_REQUIRE_CUDA=1 pip install -e . --no-build-isolation",
        RuntimeWarning,
        stacklevel=3,
    )


def compiled_for(op: str, device: torch.device) -> bool:
    """Whether ``op`` runs compiled on ``device``: the extension backend is
    active and, for the CPU and CUDA, the library has a kernel for the
    device (other devices, such as ``meta`` under tracing, are the
    dispatcher's). False: the caller runs the reference."""
    if _current != _EXTENSION:
        return False
    if device.type not in _KERNEL_KEYS or has_kernel(op, device.type):
        return True
    _say_fallback(op, device.type)
    return False


OPS = ("philox4x32", "generate_rows", "accumulate_", "stabilize", "relative_squares")


def report() -> Dict[str, str]:
    """What each device runs: ``{"cpu": ..., "cuda": ...}``, each
    ``"extension"``, ``"reference"`` or ``"reference for <ops>"``."""
    out = {}
    for device_type in _KERNEL_KEYS:
        if _current != _EXTENSION:
            out[device_type] = _REFERENCE
            continue
        missing = [op for op in OPS if not has_kernel(op, device_type)]
        out[device_type] = _EXTENSION if not missing else (
            _REFERENCE if len(missing) == len(OPS) else f"reference for {', '.join(missing)}")
    return out
