"""A build without CUDA kernels: CUDA tensors fall back to the reference op
by op (never the dispatcher's NotImplementedError), said once, and the
backend report says which device runs what."""
import warnings

import pytest
import torch

import fastattr
from fastattr import _backend, ops

needs_ext = pytest.mark.skipif(not _backend.extension_available, reason="compiled extension not built")


@needs_ext
def test_this_build_reports_its_kernels() -> None:
    report = fastattr.backend_report()
    assert report["cpu"] == "extension"
    cuda = all(_backend.has_kernel(op, "cuda") for op in _backend.OPS)
    assert report["cuda"] == ("extension" if cuda else "reference")
    with _backend.use("reference"):
        assert fastattr.backend_report() == {"cpu": "reference", "cuda": "reference"}


@needs_ext
def test_missing_device_kernel_falls_back_per_op(monkeypatch) -> None:
    """Pretend the CPU kernel of ``stabilize`` is missing: that op alone runs
    the reference (same bits, a warning once), the others stay compiled."""
    real = _backend.has_kernel
    monkeypatch.setattr(_backend, "has_kernel", lambda op, device: op != "stabilize" and real(op, device))
    _backend._say_fallback.cache_clear()
    calls = []
    monkeypatch.setattr(torch.ops.fastattr.stabilize, "default",
                        lambda *a: calls.append(a) or (_ for _ in ()).throw(AssertionError("compiled op ran")))
    z = torch.tensor([0.0, -0.0, 2.0, -3.0], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="no CPU kernel for stabilize"):
        got = ops.stabilize(z, 0.5)
    torch.testing.assert_close(got, torch.tensor([0.5, 0.5, 2.5, -3.5], dtype=torch.float64), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.stabilize(z, 0.5)  # said once
    assert not calls
    assert fastattr.backend_report()["cpu"] == "reference for stabilize"
    assert _backend.compiled_for("generate_rows", torch.device("cpu"))
    # tracing devices are the dispatcher's
    assert _backend.compiled_for("stabilize", torch.device("meta"))
    _backend._say_fallback.cache_clear()
