"""How often a call makes the host wait for the device.

On a GPU every ``.item()``, ``.tolist()``, ``bool(tensor)`` or copy to the
host waits for all queued work. fastattr reads device values only where a
check needs them: the finiteness of each floating input (one scalar per
input, "bad input fails before any compute") and the range of a target
given as a tensor (one read). Everything else (plans, step weights, noise
keys) stays on the device. The counts below are those reads, counted on the
CPU by intercepting the torch calls that would synchronize on a GPU; on a
GPU the profiler's device-to-host copies are checked against the same
budget.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Dict

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import fastattr
import fastattr.metrics as metrics

# The torch calls that read a tensor's values back to the host.
_HOST_READS = frozenset({
    "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy",
})


class HostReads(TorchFunctionMode):
    """Counts the calls in :data:`_HOST_READS` made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: "collections.Counter[str]" = collections.Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _HOST_READS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


# name -> (call(model, x, conv, images, device), reads allowed, why)
CASES: Dict[str, Any] = {
    "saliency": (lambda m, x, c, xi, d: fastattr.saliency(m, x, target=1), 1, "input finiteness"),
    "integrated_gradients, int target": (
        lambda m, x, c, xi, d: fastattr.integrated_gradients(m, x, target=2, n_steps=20), 1, "input finiteness"),
    "integrated_gradients, tensor target": (
        lambda m, x, c, xi, d: fastattr.integrated_gradients(m, x, target=torch.tensor([0, 1, 2, 0], device=d), n_steps=20),
        2, "input finiteness, target range"),
    "smoothgrad": (lambda m, x, c, xi, d: fastattr.smoothgrad(m, x, target=1, n_samples=6), 1, "input finiteness"),
    "gradient_shap": (
        lambda m, x, c, xi, d: fastattr.gradient_shap(m, x, baselines=torch.zeros(5, 8, device=d), target=1, n_samples=3),
        2, "finiteness of inputs and baselines"),
    "lrp": (lambda m, x, c, xi, d: fastattr.lrp(m, x, target=1), 1, "input finiteness"),
    "grad_cam": (lambda m, x, c, xi, d: fastattr.grad_cam(c, xi, c[0], target=1), 1, "input finiteness"),
    "max_sensitivity": (
        lambda m, x, c, xi, d: metrics.max_sensitivity(m, x, target=1, n_samples=4), 2,
        "input finiteness, checked by the metric and by its explainer"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_host_reads_per_call(name: str) -> None:
    call, allowed, why = CASES[name]
    model, conv = _mlp(), _conv()
    x, images = torch.randn(4, 8), torch.randn(4, 3, 8, 8)
    call(model, x, conv, images, "cpu")  # first call: measurements and caches
    with HostReads() as reads:
        call(model, x, conv, images, "cpu")
    assert sum(reads.counts.values()) <= allowed, f"{name}: {dict(reads.counts)} (allowed {allowed}: {why})"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(CASES))
def test_device_to_host_copies_on_cuda(name: str) -> None:
    """The profiler's device-to-host copies of a warm call stay within the
    same budget as the CPU count."""
    call, allowed, why = CASES[name]
    model, conv = _mlp().cuda(), _conv().cuda()
    x, images = torch.randn(4, 8, device="cuda"), torch.randn(4, 3, 8, 8, device="cuda")
    run: Callable[[], Any] = lambda: call(model, x, conv, images, "cuda")  # noqa: E731
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    copies = [e for e in prof.events() if "DtoH" in e.name or "Device -> Pageable" in e.name]
    assert len(copies) <= allowed, f"{name}: {len(copies)} device-to-host copies (allowed {allowed}: {why})"
