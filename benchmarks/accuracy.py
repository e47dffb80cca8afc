"""How accurate fixed-step IG and SmoothGrad are, and what the adaptive IG
(``rtol``) and antithetic noise cost for the same accuracy, on three digit
classifiers trained here (sklearn's digits, no download):

* ``mlp``: 64 -> 128 -> 128 -> 10, ReLU (``workloads.small_mlp``);
* ``cnn``: Conv(1,16,3)-ReLU-Conv(16,32,3,/2)-ReLU-Linear(32*4*4, 10) on 1x8x8;
* ``resnet``: ResNet-18-shaped as ``workloads.ResNet18`` (7x7/2 stem, max
  pool, ``workloads.BasicBlock`` x [2,2,2,2], BatchNorm in eval mode) at
  ``--resnet-width`` (64: 64-512 channels, as torchvision), 10 classes, on the
  digits upsampled to 3x32x32.

    python benchmarks/accuracy.py                          # all three, the defaults below
    python benchmarks/accuracy.py --models mlp,cnn --examples 32
    python benchmarks/accuracy.py --quick                  # smoke run (seconds)

IG (zero baseline, the predicted class): the reference is Gauss-Legendre with
``--reference-steps`` points (its own error, against half as many, is
printed); "error" is each example's relative L2 error ``|a - ref| / |ref|``
over its features. Rows are the model rows the call evaluated (counted by a
forward hook; GL-50 without its convergence delta, whose forwards the
adaptive rule gets from its own rows), time the best of ``--repeats`` calls,
GL-50 and the adaptive calls taking turns. The adaptive rule runs at
``rtol`` = GL-50's median error and at 1%. On a CPU shared with other work
the times scatter; the rows do not.

SmoothGrad (saliency with ``abs``, the default, stdev 0.15 of the [0, 1]
range): the reference is ``--reference-samples`` independent samples; the
error at N samples is the RMS over examples and ``--seeds`` seeds of the
relative L2 error, less the reference's own (its standard error, in
quadrature). "samples for iid-50's error" interpolates each scheme's error
curve (N = 4 .. 64, log-log) at the error of 50 independent samples.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as W  # noqa: E402  (benchmarks/ is not a package)

import fastattr  # noqa: E402

STDEV = 0.15
SCHEME_SAMPLES = (4, 8, 16, 32, 64)


# ---------------------------------------------------------------------------
# Models, trained on sklearn's digits
# ---------------------------------------------------------------------------

def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


class ResNet18(nn.Module):
    """``workloads.ResNet18``'s layout at a chosen width (64: its own)."""

    def __init__(self, width: int, n_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for j in range(2):
                blocks.append(W.BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


def digits(model: str) -> Tuple[Tensor, Tensor]:
    """Inputs shaped for ``model`` (values in [0, 1]) and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    if model == "cnn":
        x = x.view(-1, 1, 8, 8)
    elif model == "resnet":
        x = F.interpolate(x.view(-1, 1, 8, 8), size=(32, 32), mode="bilinear", align_corners=False)
        x = x.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    return x, y


def train(name: str, device: torch.device, epochs: int, width: int) -> Tuple[nn.Module, Tensor, Tensor, float]:
    """``(model in eval mode, inputs, labels, held-out accuracy)``; the first 1500 digits train."""
    torch.manual_seed(0)
    model = {"mlp": W.small_mlp, "cnn": small_cnn, "resnet": lambda: ResNet18(width)}[name]().to(device)
    x, y = digits(name)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3 if name == "resnet" else 1e-2)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(1500, device=device)
        for i in range(0, 1500, 100):
            batch = order[i:i + 100]
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[1500:]).argmax(1) == y[1500:]).float().mean().item()
    return model, x, y, accuracy


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------

class RowCounter:
    """Counts the rows every forward of ``model`` runs (a forward pre-hook)."""

    def __init__(self, model: nn.Module):
        self.rows = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, _module: nn.Module, args: Tuple[Tensor, ...]) -> None:
        self.rows += args[0].shape[0]


def timed(fns: List[Callable[[], object]], repeats: int, device: torch.device) -> List[Tuple[object, float]]:
    """``(result, best seconds)`` of each callable over ``repeats`` rounds in
    which they take turns (so that the machine's drifts hit all alike)."""
    best = [math.inf] * len(fns)
    out: List[object] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out[i] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - t0)
    return list(zip(out, best))


def rel_errors(a: Tensor, ref: Tensor) -> Tensor:
    return ((a - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).double().cpu()


def spearman(a: Tensor, b: Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


# ---------------------------------------------------------------------------
# IG
# ---------------------------------------------------------------------------

def ig_rows(model: nn.Module, x: Tensor, t: Tensor, args: argparse.Namespace) -> List[List[str]]:
    device = x.device
    ref = fastattr.integrated_gradients(model, x, target=t, n_steps=args.reference_steps)
    half = fastattr.integrated_gradients(model, x, target=t, n_steps=args.reference_steps // 2)
    ref_error = rel_errors(half, ref).median().item()
    gl_err = rel_errors(fastattr.integrated_gradients(model, x, target=t), ref)
    rtols = ((f"rtol = GL-50 median ({pct(gl_err.median().item())})", gl_err.median().item()), ("rtol = 1%", 0.01))
    calls = [lambda: fastattr.integrated_gradients(model, x, target=t)]
    calls += [lambda rtol=rtol: fastattr.integrated_gradients(model, x, target=t, rtol=rtol, max_steps=args.max_steps)
              for _, rtol in rtols]
    results = timed(calls, args.repeats, device)
    counter = RowCounter(model)
    rows = []
    for call in calls:
        counter.rows = 0
        call()
        rows.append(counter.rows)
    _, delta = fastattr.integrated_gradients(model, x, target=t, return_convergence_delta=True)
    (_, gl_time), gl_rows = results[0], rows[0]
    delta_rank = spearman(delta.abs().double().cpu(), gl_err)
    out = [["GL-50", str(gl_rows), f"{1e3 * gl_time:.1f}", pct(gl_err.median().item()),
            pct(torch.quantile(gl_err, 0.95).item()), "", "", f"delta~error rank corr {delta_rank:.2f}"]]
    for (label, _), ((a, acc), t_ad), n_rows in zip(rtols, results[1:], rows[1:]):
        err = rel_errors(a, ref)
        ratio = err / acc.error.cpu()
        out.append([
            label, f"{n_rows} ({n_rows / gl_rows:.2f}x)", f"{1e3 * t_ad:.1f} ({t_ad / gl_time:.2f}x)",
            pct(err.median().item()), pct(torch.quantile(err, 0.95).item()),
            f"{ratio.median().item():.2f} / {torch.quantile(ratio, 0.95).item():.2f}",
            f"{spearman(acc.error.cpu(), err):.2f}",
            f"{int(acc.converged.sum())}/{x.shape[0]} converged, steps {int(acc.steps.min())}-{int(acc.steps.max())}",
        ])
    counter.handle.remove()
    out.append([f"(reference: GL-{args.reference_steps}, its median error vs GL-{args.reference_steps // 2}: "
                f"{pct(ref_error)})", "", "", "", "", "", "", ""])
    return out


# ---------------------------------------------------------------------------
# SmoothGrad
# ---------------------------------------------------------------------------

def smoothgrad_rows(model: nn.Module, x: Tensor, t: Tensor, args: argparse.Namespace) -> List[List[str]]:
    ref, ref_se = fastattr.smoothgrad(model, x, target=t, n_samples=args.reference_samples, stdev=STDEV,
                                      seed=10_000, antithetic=False, return_standard_error=True)
    ref_var = ref_se.double().cpu().pow(2).mean().item()

    def rms_error(n: int, antithetic: bool) -> float:
        sq = []
        for seed in range(args.seeds):
            a = fastattr.smoothgrad(model, x, target=t, n_samples=n, stdev=STDEV, seed=seed, antithetic=antithetic)
            sq.append(rel_errors(a, ref).pow(2))
        return math.sqrt(max(torch.cat(sq).mean().item() - ref_var, 0.0))

    target = rms_error(50, False)
    out = []
    for name, antithetic in (("iid", False), ("antithetic", True)):
        curve = [(n, rms_error(n, antithetic)) for n in SCHEME_SAMPLES]
        out.append([name, pct(target) if not antithetic else "", f"{samples_for(curve, target):.1f}",
                    "  ".join(f"{n}:{pct(e)}" for n, e in curve)])
    out.append([f"(reference: {args.reference_samples} iid samples, its standard error {pct(math.sqrt(ref_var))})",
                "", "", ""])
    return out


def samples_for(curve: List[Tuple[int, float]], target: float) -> float:
    """N at which the log-log interpolated error curve reaches ``target``
    (extrapolated along the Monte Carlo slope -1/2 beyond its ends)."""
    for (n0, e0), (n1, e1) in zip(curve, curve[1:]):
        if e1 <= target <= e0 and e0 > e1:
            s = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(n0) + s * (math.log(n1) - math.log(n0)))
    n, e = curve[0] if target > curve[0][1] else curve[-1]
    return n * (e / target) ** 2


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,cnn,resnet")
    p.add_argument("--examples", type=int, default=32, help="held-out digits explained per model")
    p.add_argument("--reference-steps", type=int, default=2048)
    p.add_argument("--reference-samples", type=int, default=2048)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30, help="training epochs (the ResNet takes a third)")
    p.add_argument("--resnet-width", type=int, default=64, help="channels of the ResNet's first stage")
    p.add_argument("--skip-smoothgrad", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 examples, small references")
    args = p.parse_args()
    if args.quick:
        args.examples, args.reference_steps, args.reference_samples, args.seeds, args.repeats = 4, 256, 256, 1, 1
        args.epochs = 3
    device = torch.device(args.device)
    print(W.environment(device))
    print(" ".join(sys.argv))
    for name in args.models.split(","):
        t0 = time.perf_counter()
        epochs = max(1, args.epochs // 3) if name == "resnet" else args.epochs
        model, x, _, accuracy = train(name, device, epochs, args.resnet_width)
        xs = x[1500:1500 + args.examples]
        with torch.no_grad():
            t = model(xs).argmax(1)
        print(f"\n## {name}: held-out accuracy {accuracy:.3f}, trained in {time.perf_counter() - t0:.0f} s, "
              f"{xs.shape[0]} examples")
        print(table(["IG", "rows", "ms", "error median", "error p95", "true/est median / p95",
                     "est~true rank corr", ""], ig_rows(model, xs, t, args)))
        if not args.skip_smoothgrad:
            print()
            print(table(["SmoothGrad noise", "error of iid N=50", "samples for iid-50's error",
                         "RMS error at N"], smoothgrad_rows(model, xs, t, args)))


if __name__ == "__main__":
    main()
