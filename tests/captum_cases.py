"""Models, cases and comparison helpers shared by the tests that check
fastattr against Captum: seeded models (a conv net with BatchNorm and
pooling, an MLP, a two-input model with additional_forward_args, a
single-output model), relative-error assertions, and Captum runs given
fastattr's keyed noise (``torch.normal`` patched) and Quantus runs given
fastattr's keyed draws (``np.random.uniform`` patched)."""
from __future__ import annotations

import copy

import contextlib
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum.attr import NoiseTunnel
from fastattr import ops


# ---------------------------------------------------------------------------
# Models, seeded and built here
# ---------------------------------------------------------------------------


class ConvNet(nn.Module):
    """[B, 3, 8, 8] -> [B, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(32, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(torch.relu(self.bn(self.conv1(x))))
        x = torch.relu(self.conv2(x))
        return self.fc(self.gap(x).flatten(1))


class MLP(nn.Module):
    """[B, 64] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TwoInput(nn.Module):
    """(img [B, 2, 6, 6], vec [B, 10]) plus additional args (extra [B, 10], scale: float) -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc_img = nn.Linear(4 * 4 * 4, 8)
        self.fc_vec = nn.Linear(10, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, img: Tensor, vec: Tensor, extra: Tensor, scale: float) -> Tensor:
        if not isinstance(scale, float):  # the non-tensor argument must arrive untouched
            raise TypeError(f"scale: expected a float, got {type(scale).__name__}")
        h = torch.tanh(self.fc_img(torch.relu(self.conv(img)).flatten(1)))
        v = torch.tanh(self.fc_vec(vec * extra))
        return self.head(h * (1.0 + scale * v))


class ScalarOut(nn.Module):
    """[B, 12] -> [B] (one output per example: explained with target=None)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.fc2 = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x))).squeeze(1) + (x * x).sum(1) * 0.1


class ForwardOnly(torch.autograd.Function):
    """``fn(x)`` forward; a backward that must never run: a module built on it
    shows whether a backward rule skipped the module's ordinary gradient."""

    @staticmethod
    def forward(ctx: Any, fn: Any, x: Tensor) -> Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        raise AssertionError("the module's ordinary backward ran")


def _build(cls: type, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A seeded ``cls()`` in eval mode; batch norms get non-trivial statistics.
    The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls()
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.5, 0.5)
                    mod.running_var.uniform_(0.3, 2.0)
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.3, 0.3)
    return model.to(dtype).eval()


def _randn(shape: Sequence[int], dtype: torch.dtype, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


class Case:
    """A model with inputs, a target and additional_forward_args that suit it."""

    def __init__(self, name: str, model: nn.Module, inputs: Union[Tensor, Tuple[Tensor, ...]],
                 target: Any, afa: Any = None) -> None:
        self.name, self.model, self.inputs, self.target, self.afa = name, model, inputs, target, afa

    @property
    def xs(self) -> Tuple[Tensor, ...]:
        return self.inputs if isinstance(self.inputs, tuple) else (self.inputs,)

    @property
    def batch(self) -> int:
        return self.xs[0].shape[0]


MODELS = ("conv", "mlp", "two_input", "scalar")


def _case(name: str, dtype: torch.dtype = torch.float64, batch: int = 3, seed: int = 1) -> Case:
    """Each model with a different target form: conv a list, MLP a 1-D tensor,
    the two-input model an int, the scalar model None."""
    if name == "conv":
        x = _randn((batch, 3, 8, 8), dtype, seed)
        return Case(name, _build(ConvNet, dtype), x, [i % 5 for i in range(2, 2 + batch)])
    if name == "mlp":
        x = _randn((batch, 64), dtype, seed)
        return Case(name, _build(MLP, dtype), x, torch.arange(batch) % 4)
    if name == "two_input":
        img = _randn((batch, 2, 6, 6), dtype, seed)
        vec = _randn((batch, 10), dtype, seed + 1)
        extra = _randn((batch, 10), dtype, seed + 2)
        return Case(name, _build(TwoInput, dtype), (img, vec), 1, (extra, 0.5))
    if name == "scalar":
        x = _randn((batch, 12), dtype, seed)
        return Case(name, _build(ScalarOut, dtype), x, None)
    raise ValueError(name)


class RowLog(nn.Module):
    """Wraps a model and records the rows of every call made with grad enabled
    (the engine's forward/backward chunks; convergence-delta endpoints run
    under no_grad), so a chunking test can see that it really chunked."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.grad_rows: List[int] = []

    def forward(self, *args: Any) -> Tensor:
        if torch.is_grad_enabled():
            self.grad_rows.append(args[0].shape[0])
        return self.inner(*args)


def _expected_chunks(total: int, chunk: Dict[str, int]) -> List[int]:
    """Rows per chunk for ``total`` rows under ``chunk_rows`` (or a 1-byte budget: 1)."""
    cap = chunk.get("chunk_rows", 1)
    return [min(cap, total - r) for r in range(0, total, cap)]


# ---------------------------------------------------------------------------
# Comparison helpers
# ---------------------------------------------------------------------------


def _as_tuple(a: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
    return a if isinstance(a, tuple) else (a,)


def _rel_err(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected| (absolute when expected is all 0)."""
    a, e = actual.detach().to(torch.float64), expected.detach().to(torch.float64)
    err = (a - e).abs().max().item() if e.numel() else 0.0
    scale = e.abs().max().item() if e.numel() else 0.0
    return err / scale if scale > 0 else err


def assert_same_attr(actual: Any, expected: Any, tol: float, what: str = "") -> None:
    """Same structure (tensor vs tuple), shapes, dtypes; values within ``tol``
    relative to the largest |expected| of each tensor."""
    assert isinstance(actual, tuple) == isinstance(expected, tuple), (
        f"{what}: fastattr returned {type(actual).__name__}, Captum {type(expected).__name__}"
    )
    acts, exps = _as_tuple(actual), _as_tuple(expected)
    assert len(acts) == len(exps), f"{what}: {len(acts)} outputs vs Captum's {len(exps)}"
    for i, (a, e) in enumerate(zip(acts, exps)):
        assert isinstance(a, Tensor), f"{what}[{i}]: got {type(a).__name__}"
        assert a.shape == e.shape, f"{what}[{i}]: shape {tuple(a.shape)} vs Captum's {tuple(e.shape)}"
        assert a.dtype == e.dtype, f"{what}[{i}]: dtype {a.dtype} vs Captum's {e.dtype}"
        assert torch.isfinite(a).all(), f"{what}[{i}]: non-finite values"
        err = _rel_err(a, e)
        assert err <= tol, f"{what}[{i}]: relative error {err:.3g} > {tol:.3g}"


def _delta_scale(attrs: Any) -> float:
    """Largest per-example sum of |attributions|: what a delta is a difference of."""
    per_row = sum(a.detach().double().abs().reshape(a.shape[0], -1).sum(1) for a in _as_tuple(attrs))
    return max(float(per_row.max()), 1e-30)


def assert_same_delta(actual: Tensor, expected: Tensor, attrs: Any, tol: float, what: str = "") -> None:
    assert isinstance(actual, Tensor), f"{what}: delta is {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{what}: delta shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: delta dtype {actual.dtype} vs {expected.dtype}"
    err = (actual.double() - expected.double()).abs().max().item()
    rel = err / _delta_scale(attrs)
    assert rel <= tol, f"{what}: delta error {err:.3g} = {rel:.3g} x scale > {tol:.3g}"


def upcast(a: Any) -> Any:
    """Floating tensors (in tuples too) as float64, exactly; anything else as it is."""
    if isinstance(a, tuple):
        return tuple(upcast(t) for t in a)
    return a.double() if isinstance(a, Tensor) and a.is_floating_point() else a


def float64_twin(case: "Case") -> "Case":
    """The same model, inputs and arguments in float64: the float32 case's
    values exactly, computed without its rounding (the truth a float32
    result is measured against)."""
    return Case(case.name, copy.deepcopy(case.model).double(), upcast(case.inputs), case.target, upcast(case.afa))


# A low-precision result may be this many times less accurate than Captum's
# own in the same dtype (both against a float64 run of the same model): the
# two round differently (other batch sizes, another summation order), and
# on a small model the largest of a few dozen errors fluctuates by ~2x.
ACCURACY_FACTOR = 3.0


def assert_as_accurate_as_captum(actual: Any, captum: Any, truth: Any, what: str = "",
                                 factor: float = ACCURACY_FACTOR) -> None:
    """Low-precision results: fastattr's error against ``truth`` (Captum in
    float64 on the float64 copy of the same model and inputs) is at most
    ``factor`` times Captum's own error in that dtype, measured in this run,
    so the bound holds on any CPU (AVX2 or AVX-512 round differently)."""
    acts, caps, truths = _as_tuple(actual), _as_tuple(captum), _as_tuple(truth)
    assert len(acts) == len(caps) == len(truths), what
    for i, (a, c, t) in enumerate(zip(acts, caps, truths)):
        assert a.shape == c.shape and a.dtype == c.dtype, f"{what}[{i}]: {a.shape} {a.dtype} vs {c.shape} {c.dtype}"
        ours, theirs = _rel_err(a, t), _rel_err(c, t)
        floor = torch.finfo(a.dtype).eps  # Captum exact to the last bit: allow our last bit
        assert ours <= factor * max(theirs, floor), (
            f"{what}[{i}]: error {ours:.3g} against float64, Captum's {theirs:.3g} (x{factor} allowed)")


def assert_delta_as_accurate_as_captum(actual: Tensor, captum: Tensor, truth: Tensor, captum_attrs: Any,
                                       truth_attrs: Any, what: str = "",
                                       factor: float = ACCURACY_FACTOR) -> None:
    """Convergence deltas in low precision: fastattr's error against the
    float64 deltas is at most ``factor`` times the larger of Captum's delta
    error and Captum's summed attribution error per example (what a delta,
    a sum of attributions, inherits from them; deltas per sample, ``[B * N]``,
    take their example's)."""
    assert actual.shape == captum.shape and actual.dtype == captum.dtype, what
    summed = sum((c.double() - t.double()).abs().reshape(c.shape[0], -1).sum(1)
                 for c, t in zip(_as_tuple(captum_attrs), _as_tuple(truth_attrs)))
    ours = (actual.double() - truth.double()).abs()
    # Deltas per (example, sample), row b * N + n, inherit example b's attribution error.
    per_row = summed.repeat_interleave(ours.numel() // summed.numel())
    theirs = torch.maximum((captum.double() - truth.double()).abs(), per_row.reshape(ours.shape))
    assert (ours <= factor * theirs).all(), (
        f"{what}: delta errors {ours.tolist()}, Captum's (or its attributions') {theirs.tolist()}")


def _clone(a: Any) -> Any:
    return tuple(t.clone() for t in a) if isinstance(a, tuple) else a.clone()


# ---------------------------------------------------------------------------
# Captum with fastattr's noise
# ---------------------------------------------------------------------------


def fastattr_noise(x: Tensor, input_index: int, n_samples: int, stdev: float, seed: int) -> Tensor:
    """``stdev * z`` of fastattr's SmoothGrad for input ``input_index``, in
    Captum's NoiseTunnel layout (row ``b * n_samples + n``): the noisy copies
    (csrc/README.md, stream ``1 * 65536 + input_index``) minus the repeated input."""
    b = x.shape[0]
    noisy = ops.generate_rows(
        x, None, None, n_samples, "gaussian", stdev, seed, 65536 + input_index, 0, b * n_samples, 0
    )
    return noisy - x.repeat_interleave(n_samples, dim=0)


@contextlib.contextmanager
def captum_uses_noise(noises: List[Tuple[Tensor, float]]):
    """While active, the k-th ``torch.normal`` call returns ``noises[k][0]``.

    Captum's NoiseTunnel draws ``torch.normal(0, stdev_expanded)`` once per
    input; each call is checked to ask for mean 0, the expected shape and a std
    tensor filled with the expected stdev, and all calls must be made."""
    calls: List[Tuple[int, ...]] = []
    real_normal = torch.normal

    def fake_normal(mean: Any, std: Any = None, *args: Any, **kwargs: Any) -> Tensor:
        k = len(calls)
        assert not args and not kwargs, f"torch.normal call {k}: unexpected arguments {args} {kwargs}"
        assert k < len(noises), f"Captum called torch.normal {k + 1} times, expected {len(noises)}"
        noise, stdev = noises[k]
        assert isinstance(mean, (int, float)) and mean == 0, f"torch.normal call {k}: mean {mean!r}"
        assert isinstance(std, Tensor), f"torch.normal call {k}: std is {type(std).__name__}"
        assert tuple(std.shape) == tuple(noise.shape), (
            f"torch.normal call {k}: Captum asked for {tuple(std.shape)}, expected {tuple(noise.shape)}"
        )
        assert bool((std == torch.tensor(stdev, dtype=std.dtype)).all()), (
            f"torch.normal call {k}: Captum's std is not {stdev}"
        )
        calls.append(tuple(std.shape))
        return noise.clone()

    torch.normal = fake_normal
    try:
        yield calls
    finally:
        torch.normal = real_normal
    assert len(calls) == len(noises), f"Captum called torch.normal {len(calls)} times, expected {len(noises)}"


def captum_noise_tunnel(
    attribution: Any, case: Case, n_samples: int, stdev: Union[float, Tuple[float, ...]],
    kind: str, seed: int, **kwargs: Any,
) -> Any:
    """Captum's ``NoiseTunnel(attribution).attribute`` given fastattr's noise."""
    stdevs = stdev if isinstance(stdev, tuple) else (stdev,) * len(case.xs)
    noises = [
        (fastattr_noise(x, i, n_samples, s, seed), s) for i, (x, s) in enumerate(zip(case.xs, stdevs))
    ]
    with captum_uses_noise(noises):
        return NoiseTunnel(attribution).attribute(
            case.inputs, nt_type=kind, nt_samples=n_samples, stdevs=stdev,
            target=case.target, additional_forward_args=case.afa, **kwargs,
        )


@contextlib.contextmanager
def numpy_uniform_returns(values: List[np.ndarray], low: float, high: float):
    """The k-th ``np.random.uniform(low=, high=, size=B)`` returns ``values[k]`` (arguments checked)."""
    calls = []
    real = np.random.uniform

    def fake(low_=0.0, high_=1.0, size=None, **kw):
        lo, hi = kw.get("low", low_), kw.get("high", high_)
        k = len(calls)
        assert k < len(values) and (lo, hi) == (low, high) and size == values[k].shape[0], (k, lo, hi, size)
        calls.append(size)
        return values[k]

    np.random.uniform = fake
    try:
        yield calls
    finally:
        np.random.uniform = real
    assert len(calls) == len(values)
