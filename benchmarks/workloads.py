"""The benchmark workloads: one definition of each model, input and timed
callable, shared by ``benchmarks/run.py`` (plain table) and
``benchmarks/test_bench.py`` (pytest-benchmark).

A workload is (model, batch, method). For each there are three callables that
must compute over exactly the same rows:

* ``fastattr``: the functional call (``fastattr.integrated_gradients`` /
  ``fastattr.smoothgrad``), in its default model form (``"fast"``).
* ``captum``: Captum with its defaults (``IntegratedGradients(model).attribute``
  / ``NoiseTunnel(Saliency(model)).attribute(nt_type="smoothgrad")``), one batch.
* ``floor``: one bare forward + backward of the eager model over the ``B * 50``
  rows the method evaluates (rows and one-hot grad_outputs made once, outside
  the timing).
* ``bare``: the least any implementation on this engine does (:func:`bare_call`):
  the fused row generation, the floor's forward + backward and the fused
  accumulation, with nothing checked, formatted or planned. ``bare / floor``
  is the lowest ``fastattr / floor`` a call can reach on this machine.

:func:`check` verifies before any timing that they all really evaluate the
same rows, that fastattr's attributions equal Captum's and that ``bare``
gives fastattr's numbers. The model forms' calls (the fast floor, fastattr
with each ``model_form``) are ``forms.py``'s.
"""
from __future__ import annotations

import copy
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

try:  # run from a checkout without an install: the repo root holds fastattr/
    import fastattr  # noqa: F401
except ImportError:  # pragma: no cover - depends on how it is run
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    import fastattr  # noqa: F401

try:  # optional, so that the GPU check still times fastattr and the floor without it
    import captum
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
except ImportError:  # pragma: no cover
    captum = None

from fastattr import ops
from fastattr.attr.quadrature import path_rule
from fastattr.engine import PURPOSE_SMOOTHGRAD, PointPlan
from fastattr.heap import keep_freed_memory

SEED = 0
N_STEPS = 50  # IG points per example
N_SAMPLES = 50  # SmoothGrad noisy copies per example
STDEV = 0.15  # SmoothGrad noise: 0.15 of the data range (inputs are in [0, 1])
N_CLASSES = 10
IMPLEMENTATIONS = ("fastattr", "captum", "floor", "bare")
HAVE_CAPTUM = captum is not None
METHODS = ("ig", "smoothgrad")
BATCHES = (1, 8)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def small_conv() -> nn.Module:
    """Conv(3,16,3)-ReLU-MaxPool-Conv(16,32,3)-ReLU-AdaptiveAvgPool-Linear(32,10), on 3x32x32."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, N_CLASSES),
    )


def small_mlp() -> nn.Module:
    """64 -> 128 -> 128 -> 10 with ReLU."""
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, N_CLASSES),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # Two ReLU modules, one per use: Captum's DeepLift and guided backprop
        # hook modules and need each nonlinearity to run once per forward.
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18-shaped (torchvision layout): 7x7/2 stem, max pool, BasicBlocks
    [2, 2, 2, 2] at 64-128-256-512 channels, global average pool, Linear(512, 1000)."""

    def __init__(self, n_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            for j in range(2):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, n_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


# name -> (constructor, input shape of one example, number of classes)
MODELS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...], int]] = {
    "conv": (small_conv, (3, 32, 32), N_CLASSES),
    "mlp": (small_mlp, (64,), N_CLASSES),
}


def resnet_spec(size: int) -> Tuple[Callable[[], nn.Module], Tuple[int, ...], int]:
    return (ResNet18, (3, size, size), 1000)


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    model: str  # a key of MODELS, or "resnet18"
    batch: int
    method: str  # "ig" | "smoothgrad"
    resnet_size: int = 224

    @property
    def name(self) -> str:
        model = self.model if self.model != "resnet18" else f"resnet18@{self.resnet_size}"
        method = f"ig{N_STEPS}" if self.method == "ig" else f"sg{N_SAMPLES}"
        return f"{model}-b{self.batch}-{method}"

    @property
    def rows(self) -> int:
        return self.batch * (N_STEPS if self.method == "ig" else N_SAMPLES)


def standard_specs() -> List[Spec]:
    """The 8 workloads of the issue: {conv, mlp} x {B=1, B=8} x {IG, SmoothGrad}."""
    return [Spec(m, b, meth) for m in ("conv", "mlp") for b in BATCHES for meth in METHODS]


def resnet_specs(size: int) -> List[Spec]:
    return [Spec("resnet18", b, meth, size) for b in BATCHES for meth in METHODS]


@dataclass
class Bench:
    """A ready workload: model and inputs on the device and the three callables."""

    spec: Spec
    device: torch.device
    model: nn.Module
    x: Tensor  # [B, *F]
    target: Tensor  # int64 [B]
    floor_rows: Tensor  # [rows, *F], requires_grad leaf
    floor_onehot: Tensor  # [rows, C]
    calls: Dict[str, Callable[[], Tensor]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


_MODEL_CACHE: Dict[Tuple[str, int, str], nn.Module] = {}


def _model(spec: Spec, device: torch.device) -> Tuple[nn.Module, Tuple[int, ...], int]:
    ctor, shape, n_classes = (
        resnet_spec(spec.resnet_size) if spec.model == "resnet18" else MODELS[spec.model]
    )
    key = (spec.model, spec.resnet_size if spec.model == "resnet18" else 0, str(device))
    if key not in _MODEL_CACHE:
        torch.manual_seed(SEED)
        _MODEL_CACHE[key] = ctor().to(device).eval()
    return _MODEL_CACHE[key], shape, n_classes


def ig_rows(x: Tensor, n_steps: int = N_STEPS) -> Tensor:
    """The IG points (zero baseline, Gauss-Legendre rule), example-major: ``[B*S, *F]``."""
    alphas, _ = path_rule("gausslegendre", n_steps)
    a = alphas.to(device=x.device, dtype=x.dtype).view(1, n_steps, *([1] * (x.dim() - 1)))
    return (a * x.unsqueeze(1)).reshape(-1, *x.shape[1:])


def smoothgrad_rows(x: Tensor, stdev: float, n_samples: int = N_SAMPLES) -> Tensor:
    """Noisy copies ``x_b + stdev * z``, example-major: ``[B*N, *F]``."""
    g = torch.Generator(device=x.device).manual_seed(SEED + 1)
    rows = x.repeat_interleave(n_samples, dim=0)
    return rows + stdev * torch.randn(rows.shape, generator=g, device=x.device, dtype=x.dtype)


def build(spec: Spec, device="cpu") -> Bench:
    """Model, inputs and the three callables of ``spec`` on ``device``."""
    device = torch.device(device)
    model, shape, n_classes = _model(spec, device)
    g = torch.Generator().manual_seed(SEED + spec.batch)
    x = torch.rand((spec.batch, *shape), generator=g).to(device)  # data in [0, 1]
    target = (torch.arange(spec.batch) * 3 + 1).remainder(n_classes).to(device)
    per_example = N_STEPS if spec.method == "ig" else N_SAMPLES
    rows = ig_rows(x) if spec.method == "ig" else smoothgrad_rows(x, STDEV)
    rows = rows.detach().requires_grad_()
    onehot = torch.zeros(rows.shape[0], n_classes, device=device)
    onehot.scatter_(1, target.repeat_interleave(per_example).unsqueeze(1), 1.0)
    bench = Bench(spec, device, model, x, target, rows, onehot)

    bench.calls = {"fastattr": fastattr_call(spec, model, x, target)}
    if HAVE_CAPTUM:
        bench.calls["captum"] = captum_call(spec, model, x, target)
    bench.calls.update(floor=floor_call(model, rows, onehot), bare=bare_call(spec, model, x, onehot))
    return bench


def fastattr_call(spec: Spec, model: nn.Module, x: Tensor, target: Tensor,
                  model_form: Optional[str] = None) -> Callable[[], Tensor]:
    """fastattr's functional call of ``spec`` on ``x`` ``[B, *F]`` (result
    ``[B, *F]``): with ``model_form`` where given, else the function's
    default form."""
    form = {} if model_form is None else {"model_form": model_form}
    if spec.method == "ig":
        return lambda: fastattr.integrated_gradients(model, x, target=target, n_steps=N_STEPS, **form)
    return lambda: fastattr.smoothgrad(model, x, target=target, n_samples=N_SAMPLES, stdev=STDEV, **form)


def captum_call(spec: Spec, model: nn.Module, x: Tensor, target: Tensor) -> Callable[[], Tensor]:
    """Captum's call of ``spec`` with its defaults (all rows in one batch);
    needs Captum (``HAVE_CAPTUM``)."""
    if spec.method == "ig":
        ig = IntegratedGradients(model)
        return lambda: ig.attribute(x, target=target, n_steps=N_STEPS)
    nt = NoiseTunnel(Saliency(model))
    return lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=N_SAMPLES, stdevs=STDEV, target=target)


def floor_call(model: Callable[[Tensor], Tensor], rows: Tensor, onehot: Tensor) -> Callable[[], Tensor]:
    """One bare forward + backward of ``rows`` ``[R, *F]`` (a requires-grad
    leaf) seeded with ``onehot`` ``[R, C]``: the floor. Returns the rows'
    gradients ``[R, *F]``."""
    return lambda: torch.autograd.grad(model(rows), rows, grad_outputs=onehot)[0]


def bare_call(spec: Spec, model: nn.Module, x: Tensor, onehot: Tensor) -> Callable[[], Tensor]:
    """fastattr's attributions of ``spec`` from the fused ops and one forward +
    backward alone: no argument checks, no target handling (the floor's
    one-hot seeds), no planning, and IG's ``x - baseline`` made beforehand.
    Same rows, same noise keys, same numbers as the ``fastattr`` call."""
    acc_shape = x.shape
    if spec.method == "ig":
        n = x.shape[0] * N_STEPS
        alphas, weights = (t.to(x.device) for t in path_rule("gausslegendre", N_STEPS))
        base = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
        diff = x - base

        def bare() -> Tensor:
            rows = ops.generate_rows(x, base, alphas, 1, "none", 0.0, 0, 0, 0, n, 0).requires_grad_()
            grads = torch.autograd.grad(model(rows), rows, grad_outputs=onehot)[0]
            acc = torch.zeros(acc_shape, dtype=torch.float32, device=x.device)
            ops.accumulate_(acc, None, grads, weights, 0, N_STEPS, 0)
            return acc.mul_(diff)
        return bare

    stream = PointPlan(alphas=None, step_weights=torch.ones(1), purpose=PURPOSE_SMOOTHGRAD).stream(0)
    ones = torch.ones(N_SAMPLES, dtype=torch.float64, device=x.device)
    n = x.shape[0] * N_SAMPLES

    def bare() -> Tensor:
        # fastattr.smoothgrad's default noise: antithetic pairs
        rows = ops.generate_rows(x, None, None, N_SAMPLES, "gaussian_antithetic", STDEV, 0, stream, 0, n,
                                 0).requires_grad_()
        grads = torch.autograd.grad(model(rows), rows, grad_outputs=onehot)[0]
        acc = torch.zeros(acc_shape, dtype=torch.float32, device=x.device)
        ops.accumulate_(acc, None, grads.abs_(), ones, 0, N_SAMPLES, 0)
        return acc.div_(N_SAMPLES)
    return bare


def synced(fn: Callable[[], Tensor], device: torch.device) -> Callable[[], Tensor]:
    """``fn`` followed by a device synchronisation (CUDA), for wall-clock timing."""
    if device.type != "cuda":
        return fn

    def call() -> Tensor:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


# ---------------------------------------------------------------------------
# Checks: a wrong benchmark is worse than none
# ---------------------------------------------------------------------------


# fastattr and Captum sum the same float32 gradients in different orders:
# their difference may reach a few times one gradient's own float32 error.
TOLERANCE_FACTOR = 16


def tolerance(bench: "Bench") -> float:
    """Max |fastattr - captum| / max |captum| allowed, measured on the
    workload's device (TF32 as the caller left it; :func:`check` turns it
    off): ``TOLERANCE_FACTOR`` times the float32 error of a plain autograd
    gradient at the inputs against the float64 model's, at least 64 float32
    epsilons (a gradient that happens to come out exact)."""
    x = bench.x.detach()
    onehot = torch.nn.functional.one_hot(bench.target, bench.floor_onehot.shape[1])

    def gradient(model: nn.Module, dtype: torch.dtype) -> Tensor:
        rows = x.to(dtype).requires_grad_()
        return torch.autograd.grad(model(rows), rows, grad_outputs=onehot.to(dtype))[0]

    exact = gradient(copy.deepcopy(bench.model).double(), torch.float64)
    err = rel_err(gradient(bench.model, torch.float32).double(), exact)
    return max(TOLERANCE_FACTOR * err, 64 * torch.finfo(torch.float32).eps)


def paired_ratio(times: Dict[str, List[float]], a: str, b: str) -> float:
    """``a / b`` within each repeat (adjacent calls), median over repeats: a
    second estimate beside the ratio of best times, robust to the machine's
    slow drifts; nan when either was not timed."""
    if a not in times or b not in times:
        return math.nan
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def rel_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (b all zero: max |a - b|)."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def record_rows(model: nn.Module, fn: Callable[[], Any]) -> Tuple[Any, Optional[Tensor], Optional[Tensor]]:
    """``(result, rows run with autograd, rows run without)`` of one call of
    ``fn``: copies of the first argument of every call of ``model``, in call
    order, concatenated (None where there were none).

    A floor runs exactly these rows, values included: kernels such as max
    pooling are data dependent, and measured 7-12% faster on repeated copies
    of the clean inputs than on the perturbed rows a metric evaluates."""
    out, *kinds = record_rows_by_model(model, fn)
    return (out, *(torch.cat([rows for _, rows in kind]) if kind else None for kind in kinds))


# Rows of one kind (autograd on / off), as runs of calls of one module state:
# (the module as it ran, the rows of those calls, concatenated).
Segments = List[Tuple[nn.Module, Tensor]]


def record_rows_by_model(model: nn.Module, fn: Callable[[], Any]) -> Tuple[Any, Segments, Segments]:
    """``(result, rows run with autograd, rows run without)`` of one call of
    ``fn``, as :func:`record_rows` records them, each kind split in
    runs of calls of one module state: ``model`` itself, or a frozen copy of a
    copy the metric made and changed (the randomization tests' randomized
    models, whose random weights run measurably slower: 11% on the 3x32x32
    conv net), so that the floor runs every row on the weights it ran on."""
    segments: Tuple[List[Tuple[nn.Module, List[Tensor]]], ...] = ([], [])
    states: Dict[Tuple[Any, ...], nn.Module] = {}
    original = (id(model),) + tuple((id(t), t._version) for t in model.parameters())

    def record(module: nn.Module, args: Tuple[Any, ...]) -> None:
        if not isinstance(args[0], Tensor):
            return
        key = (id(module),) + tuple((id(t), t._version) for t in module.parameters())
        if key not in states:
            states[key] = model if key == original else _frozen(module)
        ran = states[key]
        kind = segments[0 if torch.is_grad_enabled() else 1]
        if not kind or kind[-1][0] is not ran:
            kind.append((ran, []))
        kind[-1][1].append(args[0].detach().clone())

    handle = model.register_forward_pre_hook(record)
    try:
        out = fn()
    finally:
        handle.remove()
    return (out, *([(m, torch.cat(rows)) for m, rows in kind] for kind in segments))


def _frozen(module: nn.Module) -> nn.Module:
    """A copy of ``module`` as it is now, without the forward pre-hooks the
    benchmark put on it (which a copy made inside the metric inherited)."""
    twin = copy.deepcopy(module)
    twin._forward_pre_hooks.clear()
    return twin


def row_count(rows: Optional[Tensor]) -> int:
    return 0 if rows is None else rows.shape[0]


def plain_reference(bench: Bench, fa_rows: Tensor) -> Tensor:
    """IG by hand from the gradients at fastattr's own rows: ``x * sum_s w_s grad_s``."""
    _, weights = path_rule("gausslegendre", N_STEPS)
    rows = fa_rows.detach().requires_grad_()
    grads = torch.autograd.grad(bench.model(rows), rows, grad_outputs=bench.floor_onehot)[0]
    w = weights.to(device=rows.device, dtype=rows.dtype).view(1, N_STEPS, *([1] * (rows.dim() - 1)))
    return bench.x * (w * grads.reshape(bench.spec.batch, N_STEPS, *rows.shape[1:])).sum(1)


def check(bench: Bench) -> List[str]:
    """:func:`_check` with TF32 off on the GPU: with TF32, cuDNN picks
    batch-size-dependent algorithms whose ~1e-3 rounding grows through a
    ResNet, so a 1-row by-hand gradient would not match a 50-row one."""
    if bench.device.type != "cuda":
        return _check(bench)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _check(bench)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _check(bench: Bench) -> List[str]:
    """Problems found (empty: fine), before any timing. Checks that fastattr,
    Captum, the floor and bare run the model on the same number of rows, at the
    same points (IG) or with the same noise scale (SmoothGrad), that fastattr's
    attributions equal Captum's and a by-hand computation (IG: from the
    gradients at the rows; SmoothGrad with the noise off: |gradient at x|), and
    that bare gives fastattr's numbers."""
    problems = []
    spec, x, tol = bench.spec, bench.x, tolerance(bench)
    want_rows = spec.rows
    results, rows = {}, {}
    for who in IMPLEMENTATIONS:  # not the model forms' calls (a fast floor runs a copy of the model)
        if who not in bench.calls:
            continue
        results[who], with_grad, without = record_rows(bench.model, bench.calls[who])
        rows[who] = torch.cat([t for t in (with_grad, without) if t is not None])
        if rows[who].shape[0] != want_rows:
            problems.append(f"{who} ran the model on {rows[who].shape[0]} rows, expected {want_rows}")
    for who in ("fastattr", "captum"):
        if who in results and results[who].shape != x.shape:
            problems.append(f"{who}'s result has shape {tuple(results[who].shape)}, expected {tuple(x.shape)}")
    if problems:
        return problems
    fa = results["fastattr"]
    e = rel_err(results["bare"], fa)
    if e > 1e-6:  # the same fused ops on the same rows: only the final division may round differently
        problems.append(f"bare != fastattr (rel err {e:.2e}): it does not time the same work")
    if spec.method == "ig":
        if "captum" in rows:  # Captum builds its rows step-major, fastattr and the floor example-major
            rows["captum"] = rows["captum"].reshape(N_STEPS, spec.batch, -1).transpose(0, 1).reshape(rows["fastattr"].shape)
        for who in rows:
            e = rel_err(rows[who], rows["floor"])
            if e > 1e-6:
                problems.append(f"{who}'s IG points differ from the floor's (rel err {e:.2e})")
        refs = {"by hand": plain_reference(bench, rows["fastattr"])}
        if "captum" in results:
            refs["Captum"] = results["captum"]
        for who, ref in refs.items():
            e = rel_err(fa, ref)
            if e > tol:
                problems.append(f"fastattr IG != {who} (rel err {e:.2e} > {tol:.0e})")
    else:
        rep = x.repeat_interleave(N_SAMPLES, dim=0).reshape(want_rows, -1)
        for who, r in rows.items():
            sd = (r.reshape(want_rows, -1) - rep).std().item()
            if abs(sd / STDEV - 1) > 0.1:
                problems.append(f"{who}'s noise stdev is {sd:.4f}, expected {STDEV}")
        fa0 = fastattr.smoothgrad(bench.model, x, target=bench.target, n_samples=N_SAMPLES, stdev=0.0)
        x0 = x.detach().requires_grad_()
        onehot = torch.nn.functional.one_hot(bench.target, bench.floor_onehot.shape[1]).to(x.dtype)
        refs = {"by hand": torch.autograd.grad(bench.model(x0), x0, grad_outputs=onehot)[0].abs()}
        if HAVE_CAPTUM:
            refs["Captum"] = NoiseTunnel(Saliency(bench.model)).attribute(
                x, nt_type="smoothgrad", nt_samples=N_SAMPLES, stdevs=0.0, target=bench.target
            )
        for who, ref in refs.items():
            e = rel_err(fa0, ref)
            if e > tol:
                problems.append(f"fastattr SmoothGrad(stdev=0) != {who} (rel err {e:.2e} > {tol:.0e})")
    return problems


def steady_heap() -> str:
    """Keep freed memory in this process's heap, as the ``fastattr`` command
    does (``fastattr/heap.py``); return a line saying which heap the run uses.

    With glibc's defaults every call of a conv workload page-faults its
    activations back in: 9-28 thousand faults per call, 15-55 ms of kernel
    time (up to a third of the call), and how many depends on the process's
    allocation history, not on the implementation. Kept, the faults stop
    after the warm-up and all implementations are timed on the same footing.
    ``FASTATTR_DEFAULT_HEAP=1`` leaves glibc's defaults."""
    if keep_freed_memory():
        return "heap: freed memory kept (as the fastattr command does; FASTATTR_DEFAULT_HEAP=1 for glibc's defaults)"
    return "heap: the C library's defaults"


def environment(device: torch.device) -> str:
    """One line saying what the numbers were measured on."""
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    return (
        f"device {dev} | torch {torch.__version__} | "
        f"captum {captum.__version__ if HAVE_CAPTUM else 'NOT INSTALLED'} | "
        f"fastattr {fastattr.__version__} backend={fastattr.backend()} | "
        f"threads {torch.get_num_threads()} | cpus {os.cpu_count()}"
    )
