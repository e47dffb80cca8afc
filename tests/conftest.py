"""Shared fixtures: every explainer test runs on both backends.

The compiled extension is required unless FASTATTR_BACKEND=reference is set,
so a broken build fails the suite instead of silently testing only the
reference.
"""
import os

import pytest

from fastattr import _backend
from fastattr.testing import BACKENDS, intra_op_threads

if not _backend.extension_available and os.environ.get("FASTATTR_BACKEND") != "reference":
    raise pytest.UsageError(
        "fastattr._C is not built; build it with `pip install -e . --no-build-isolation` "
        "or run the reference-only suite with FASTATTR_BACKEND=reference"
    )


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test body on each available backend."""
    with _backend.use(request.param):
        yield request.param


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """The test models are tiny: intra-op threads only add synchronization,
    and on the 2 shared cores a 2-thread conv on one row measured 16 ms
    against 0.02 ms with 1 thread. Restored afterwards."""
    with intra_op_threads(1):
        yield


@pytest.fixture
def rules_skip_at_every_size(monkeypatch):
    """Backward rules that replace a module's gradient skip its ordinary
    backward on inputs of any size (by default only on large ones, where
    that pays): the test models are small, and this path must match
    Captum too."""
    from fastattr.attr import relu_rules

    monkeypatch.setattr(relu_rules, "_SKIP_MIN_NUMEL", 0)
