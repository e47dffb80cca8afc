"""Which implementation of the fused ops runs: the compiled extension or the
pure-PyTorch reference.

The compiled library loads softly: without it the package still imports and
gives the same results through ``fastattr._reference`` (slower), and says once
why. ``FASTATTR_BACKEND=reference`` forces the reference.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, Optional

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
