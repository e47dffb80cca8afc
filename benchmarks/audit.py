"""The audit's speed, from one run: fastattr's audit time per example, its
ratio to the floor (a bare batched forward+backward of the unique rows it
needs, and forward-only for forward-only rows), and the same audit written as
a plain Captum + Quantus script. Two workloads (``--workload``):

``digits`` (default): the default digits CNN and data, methods saliency and
integrated gradients (16 steps), metrics max/avg sensitivity (10 samples,
L-inf radius 0.05), infidelity (10 samples) and FGSM/PGD accuracy (eps 0.1,
PGD 10 steps).

``resnet18-224``: torchvision's ``resnet18(num_classes=10)``, random weights
(seed 0, eval mode), given to the audit as ``--model module:factory`` with
ImageNet ``--mean/--std``; N smooth random images 3x224x224 in [0, 1]
(bicubic upsampling of seeded 7x7 noise), labels ``i % 10``; the audit's
DEFAULT methods and metrics; batch size 8 (a one-row method such as saliency
then runs the model at batch 8, where a CPU pass costs about what it costs
per row at any larger batch; 64 images make 8 shards to checkpoint; the
metrics' perturbed rows are chunked by the engine's memory budget anyway).
Its rows per example at the defaults (3x224x224 = 150,528 values, so the
perturbation metrics take 4 samples; ``fastattr.cli.measures.samples_for``),
counted by hand and checked against the audit's own plan at every run:

* the methods: saliency 1, input x gradient 1, integrated gradients 16,
  SmoothGrad 8 (8 noisy saliency rows), guided backprop 1: R = 27
  forward+backward rows;
* sensitivity (max, avg, relative input stability share them): 4 x R = 108;
* local Lipschitz: 4 x R = 108;
* randomization: 7 cascading blocks (conv1, bn1, layer1-4, fc), 7 x R = 189
  (the clean explanation is the audit's own, handed over);
* FGSM 1, PGD 10 steps: 11 forward+backward rows;
* infidelity: 5 methods x (4 + 1) = 25 forward rows; deletion and insertion:
  5 x 17 each = 170; the FGSM and PGD judges 2;

the plan's 443 forward+backward and 197 forward rows. The floor runs the
UNIQUE ones: the prediction's forward at x (1, not in the plan) is every
method's infidelity f(x) (-5), deletion's first point (-5) and insertion's
last (-5); deletion's last point (all removed) and insertion's first (all
blurred) do not depend on the method (-4 each): 443 forward+backward and
175 forward rows per example.

Captum + Quantus runs the same methods with Captum 0.9 (``Saliency(abs)``,
``InputXGradient``, ``IntegratedGradients`` 16 Gauss-Legendre steps,
``NoiseTunnel(Saliency)`` smoothgrad 8 samples at the same absolute stdev,
``GuidedBackprop``) and the metrics with Quantus 0.6 and Captum: Max/Avg
Sensitivity (uniform radius 0.05, 4 samples each; Quantus draws them twice),
RelativeInputStability, LocalLipschitzEstimate (std 0.1, 4 samples), MPRT
(cascading top-down over the SAME 7 blocks: Quantus sees the model through
:class:`QuantusBlocks`; Quantus's own per-layer cascade would be 41 steps),
``captum.metrics.infidelity`` (4 gaussian samples, std 0.1), deletion and
insertion as a hand loop with the audit's 17 points, one batched forward per
point (Quantus has no insertion, and its PixelFlipping cannot take 16 steps
of a 3x224x224 input: its step must divide 224 x 224; its AUC also calls
``np.trapz``, gone in numpy 2), and ``captum.robust`` FGSM / PGD. It is slow, so it runs on ``--cq-examples``
(default 2) examples and is reported per example.

Two floors are printed: the bare eager model's, and the same rows through
the model as ``model_form="fast"`` runs it (BatchNorm folded, channels-last;
``docs/model_form.md``), the audit's default form (``--model-form`` picks
the audit's form; both floors are printed whatever it is).

Run: ``python benchmarks/audit.py [--workload digits|resnet18-224]
[--examples N] [--repeats R] [--model-form fast|eager|compiled]``.
"""
import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastattr.cli.audit as audit_module  # noqa: E402
from fastattr.cli import main as fastattr_main  # noqa: E402
from fastattr.cli.data import load_dataset  # noqa: E402
from fastattr.cli.default_model import default_model  # noqa: E402
from fastattr.engine.model_form import model_in_form  # noqa: E402
from fastattr.cli.measures import Group, available_groups  # noqa: E402
from fastattr.cli.methods import method_rows  # noqa: E402
from fastattr.cli.plan import rows_per_example  # noqa: E402
from fastattr.cli.transforms import Normalized  # noqa: E402

import workloads as W  # noqa: E402  (benchmarks/, this script's folder)

METHODS = ("saliency", "integrated_gradients")
METRICS = ("max_sensitivity", "avg_sensitivity", "infidelity", "fgsm_accuracy", "pgd_accuracy")
STEPS, SAMPLES, RADIUS, STDEV, EPS, PGD_STEPS = 16, 10, 0.05, 0.1, 0.1, 10


def run_fastattr(argv: Sequence[str]) -> Tuple[float, float, bool]:
    """``(shards, the rest, succeeded)`` seconds of one ``fastattr`` command:
    the time inside ``audit_shard`` (the work on the examples), timed as it
    runs, and the rest (loading, the plan's probes, merge, summary, report).
    A crash after the shards (merge, summary, report) still times them."""
    spent = [0.0]
    inner = audit_module.audit_shard

    def timed_shard(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    audit_module.audit_shard = timed_shard
    t = time.perf_counter()
    try:
        ok = fastattr_main(list(argv)) == 0
    except Exception as e:  # report it, keep the shards' time
        print(f"fastattr audit failed: {type(e).__name__}: {e}", file=sys.stderr)
        ok = False
    finally:
        audit_module.audit_shard = inner
    return spent[0], time.perf_counter() - t - spent[0], ok


# The audit refines IG to a tolerance by default; Captum + Quantus run a
# fixed rule, so the comparison pins the audit's to the same n_steps rule.
FIXED_IG = ["--method-option", "integrated_gradients.rtol=off"]


def digits_args(n: int, batch: int, out: str, form: str) -> List[str]:
    return ["audit", "--quiet", "--limit", str(n), "--batch-size", str(batch), "--shard-batches", "1",
            "--methods", ",".join(METHODS), "--metrics", ",".join(METRICS), *FIXED_IG, "--model-form", form,
            "--out", out]


def fast_form(model: nn.Module, x: Tensor) -> nn.Module:
    """The model as ``model_form="fast"`` runs it (the fast floor's model),
    or the model itself where no rewrite applies (the floors are then equal)."""
    return model_in_form(model, "fast", (x[:1],)).model


def print_floors(t_fast: float, t_eager_floor: float, t_fast_floor: float, unit: str,
                 n: int = 0) -> None:
    """The two floors' lines: the bare eager model's and the fast form's, each with fastattr's ratio to it."""
    for name, t in (("eager floor", t_eager_floor), ("fast floor", t_fast_floor)):
        rate = f"  {n / t:8.1f} ex/s" if n else ""
        print(f"{name:<18} {t:8.2f} {unit}{rate}  fastattr/{name} = {t_fast / t:.2f}")


def floor(model, x):
    """Seconds for the unique rows: per method, the clean explanation and its
    SAMPLES perturbed copies (1 row for saliency, STEPS for IG) forward+backward;
    infidelity's SAMPLES + 1 forward-only rows; FGSM 1 + PGD PGD_STEPS fwd+bwd
    rows and 2 forward-only judging rows."""
    n = x.shape[0]
    grad_rows = n * ((1 + STEPS) * (1 + SAMPLES) + 1 + PGD_STEPS)
    fwd_rows = n * (len(METHODS) * (SAMPLES + 1) + 2)
    gx = x.repeat((grad_rows + n - 1) // n, 1, 1, 1)[:grad_rows]
    # One leaf per chunk: a gradient with respect to all the rows would fill
    # a whole-size zero gradient for every chunk, on the floor's clock.
    leaves = [gx[i:i + 4096].clone().requires_grad_(True) for i in range(0, grad_rows, 4096)]
    fx = x.repeat((fwd_rows + n - 1) // n, 1, 1, 1)[:fwd_rows]
    t = time.perf_counter()
    for rows in leaves:
        torch.autograd.grad(model(rows)[:, 0].sum(), rows)
    with torch.no_grad():
        for i in range(0, fwd_rows, 4096):
            model(fx[i:i + 4096])
    return time.perf_counter() - t


def run_captum_quantus(model, x, y, batch):
    import captum.attr as ca
    import quantus
    from captum.metrics import infidelity
    from captum.robust import FGSM, PGD

    def explain(model, inputs, targets, method="saliency", **_):
        inputs = torch.as_tensor(inputs, dtype=torch.float32)
        targets = torch.as_tensor(targets)
        if method == "saliency":
            a = ca.Saliency(model).attribute(inputs, target=targets, abs=True)
        else:
            a = ca.IntegratedGradients(model).attribute(inputs, target=targets, n_steps=STEPS)
        return a.detach().numpy()

    def perturb(inputs):
        noise = torch.randn_like(inputs) * STDEV
        return noise, inputs - noise

    t = time.perf_counter()
    for b0 in range(0, len(y), batch):
        xb, yb = x[b0:b0 + batch], y[b0:b0 + batch]
        with torch.no_grad():
            pred = model(xb).argmax(1)
        for method in METHODS:
            a = torch.from_numpy(explain(model, xb, pred, method))
            for metric in (quantus.MaxSensitivity, quantus.AvgSensitivity):
                metric(nr_samples=SAMPLES, lower_bound=RADIUS, disable_warnings=True, normalise=False,
                       abs=False)(model=model, x_batch=xb.numpy(), y_batch=pred.numpy(), a_batch=a.numpy(),
                                  explain_func=explain, explain_func_kwargs={"method": method}, device="cpu")
            infidelity(model, perturb, xb, a, target=pred, n_perturb_samples=SAMPLES)
        for attack in (FGSM(model), PGD(model)):
            kw = {} if isinstance(attack, FGSM) else {"step_size": 2.5 * EPS / PGD_STEPS, "step_num": PGD_STEPS,
                                                      "random_start": True}
            adv = attack.perturb(xb, EPS, target=yb, **kw)
            with torch.no_grad():
                (model(adv).argmax(1) == yb).float()
    return time.perf_counter() - t


def main_digits(args: argparse.Namespace) -> None:
    heap = W.steady_heap()
    model = default_model()
    data = load_dataset(None, args.examples)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    n = len(y)
    with tempfile.TemporaryDirectory() as folder:
        warm = digits_args(min(n, 8), args.batch_size, os.path.join(folder, "warm"), args.model_form)
        run_fastattr(warm)  # imports, first calls
        runs = [run_fastattr(digits_args(n, args.batch_size, os.path.join(folder, str(r)), args.model_form))
                for r in range(args.repeats)]
    t_fast = t_outputs = t_floor = t_fast_floor = t_cq = float("inf")
    for shards, rest, _ in runs:
        if shards < t_fast:
            t_fast, t_outputs = shards, rest
    fast_model = fast_form(model, x)
    for _ in range(args.repeats):
        t_floor = min(t_floor, floor(model, x))
        t_fast_floor = min(t_fast_floor, floor(fast_model, x))
        t_cq = min(t_cq, run_captum_quantus(model, x, y, args.batch_size))
    print(f"device: cpu, {torch.get_num_threads()} threads; {n} examples; methods {METHODS}; metrics {METRICS}; "
          f"--model-form {args.model_form}; best of {args.repeats} runs")
    print(heap)
    print(f"fastattr audit     {t_fast:8.2f} s  {n / t_fast:8.1f} ex/s  (shards; loading, merge, summary and "
          f"report another {t_outputs:.2f} s)")
    print_floors(t_fast, t_floor, t_fast_floor, "s", n)
    print(f"Captum + Quantus   {t_cq:8.2f} s  {n / t_cq:8.1f} ex/s  speed-up = {t_cq / t_fast:.1f}x")



# --- the ResNet-18 3x224x224 workload ---

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNET_BATCH = 8
RESNET_FACTORY_MODULE = "fastattr_bench_resnet18"
RESNET_FACTORY = f"{RESNET_FACTORY_MODULE}:resnet18_10"
FACTORY_SOURCE = """import torch
import torchvision


def resnet18_10():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()
"""
HAND_COUNTED_ROWS = (443, 197)  # the plan's (forward+backward, forward) rows per example: module docstring
RESNET_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")  # the audit's randomization steps
IG_STEPS, SG_SAMPLES, SG_STDEV, METRIC_SAMPLES, CURVE_STEPS, BLUR_SIGMA, BLUR_KERNEL = 16, 8, 0.1, 4, 16, 5.0, 11


def smooth_images(n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(x float32 [n, 3, 224, 224] in [0, 1], y int64 [n] = i % 10)``: seeded
    7x7 noise upsampled bicubically, so the images have structure to explain."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 7, 7, generator=g)
    x = F.interpolate(low, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)
    return x.numpy().astype(np.float32), np.arange(n, dtype=np.int64) % 10


def resnet_workload(folder: str, n: int, form: str) -> Tuple[List[str], nn.Module, Tensor, Tensor]:
    """Writes the factory module and the data into ``folder`` (put on sys.path);
    ``(audit arguments, the audited model with its normalization, x [n, 3, 224, 224], y [n])``."""
    with open(os.path.join(folder, RESNET_FACTORY_MODULE + ".py"), "w") as f:
        f.write(FACTORY_SOURCE)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    x, y = smooth_images(n)
    data = os.path.join(folder, "images.npz")
    np.savez(data, x=x, y=y)
    from fastattr_bench_resnet18 import resnet18_10  # noqa: E402  (the module just written)

    model = Normalized(resnet18_10(), IMAGENET_MEAN, IMAGENET_STD).eval()
    args = ["audit", "--model", RESNET_FACTORY, "--data", data, "--batch-size", str(RESNET_BATCH),
            "--mean", ",".join(map(str, IMAGENET_MEAN)), "--std", ",".join(map(str, IMAGENET_STD)), *FIXED_IG,
            "--model-form", form]
    return args, model, torch.from_numpy(x), torch.from_numpy(y)


def groups_of(run: Mapping) -> Tuple[List[Group], Dict[str, Dict]]:
    """The audit's metric groups and each group's settings, from its ``run.json``."""
    recorded = run["fingerprinted"]["metric_settings"]
    groups = [g for g in available_groups() if any(m in recorded for m in g.metrics)]
    return groups, {g.name: next(recorded[m] for m in g.metrics if m in recorded) for g in groups}


def planned_and_unique_rows(out: str) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Rows per example ``(forward+backward, forward)``: the plan's (from the run's
    recorded settings) and the unique ones the floor runs (module docstring)."""
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    rows = method_rows(run["fingerprinted"]["method_settings"])
    groups, settings = groups_of(run)
    planned = rows_per_example(rows, groups, settings)
    names, m = {g.name for g in groups}, len(rows)
    gradient, forward = planned
    forward += 1  # the batch's prediction, f(x): not in the plan
    forward -= m * ("infidelity" in names)  # each method's f(x)
    forward -= (2 * m - 1) * ("deletion" in names)  # first point x; last (all removed) method-free
    forward -= (2 * m - 1) * ("insertion" in names)  # last point x; first (all blurred) method-free
    return planned, (gradient, forward)


def printed_plan(base: Sequence[str], out: str) -> Tuple[int, int, float, float]:
    """The audit's ``--plan-only`` line: ``(forward+backward rows, forward rows,
    measured seconds per forward+backward row, per forward row)`` per example."""
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        assert fastattr_main([*base, "--plan-only", "--out", out]) == 0
    text = captured.getvalue()
    found = re.search(r"per example: (\d+) forward\+backward rows and (\d+) forward rows; "
                      r"measured ([\d.e+-]+) ms and ([\d.e+-]+) ms per row", text)
    if found is None:
        raise RuntimeError(f"no plan line in the audit's --plan-only output:\n{text}")
    g, f, tg, tf = found.groups()
    return int(g), int(f), float(tg) / 1e3, float(tf) / 1e3


def rows_floor(model: nn.Module, x: Tensor, gradient_rows: int, forward_rows: int, chunk: int) -> float:
    """Seconds of a bare ``model`` forward+backward over ``gradient_rows`` rows and
    a forward over ``forward_rows`` rows, ``chunk`` rows per pass. The rows are
    ``x`` ``[n, *F]`` repeated with uniform noise of radius 0.05 (made before the
    clock): pooling and ReLU see perturbed inputs, as in the audit."""
    g = torch.Generator().manual_seed(1)
    pool = x.repeat((chunk + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:chunk]
    pool = (pool + (torch.rand(pool.shape, generator=g) - 0.5) * 0.1).clamp(0, 1)
    t = time.perf_counter()
    for start in range(0, gradient_rows, chunk):
        rows = pool[:min(chunk, gradient_rows - start)].detach().requires_grad_(True)
        torch.autograd.grad(model(rows)[:, 0].sum(), rows)
    with torch.no_grad():
        for start in range(0, forward_rows, chunk):
            model(pool[:min(chunk, forward_rows - start)])
    return time.perf_counter() - t


class _BlockReset:
    """One block as Quantus's MPRT sees a layer: ``reset_parameters`` resets
    every parameterized module inside it."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def reset_parameters(self) -> None:
        for m in self.block.modules():
            if hasattr(m, "reset_parameters") and next(m.parameters(recurse=False), None) is not None:
                m.reset_parameters()


class QuantusBlocks(nn.Module):
    """``model`` whose ``named_modules`` are its blocks only, so that Quantus's
    MPRT cascades over the audit's 7 blocks, not its 41 layers. Captum gets
    ``.model`` (its guided backprop hooks walk ``modules()``)."""

    def __init__(self, model: nn.Module, blocks: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.blocks = tuple(blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def named_modules(self, *args, **kwargs):
        for name in self.blocks:
            yield name, _BlockReset(self.model.get_submodule(name))


def captum_methods(stdev: float) -> Dict[str, object]:
    """Method name -> ``explain(model, inputs [b, *F], targets [b]) -> [b, *F]``
    with Captum, at the audit's default settings (SmoothGrad's absolute ``stdev``)."""
    import captum.attr as ca

    return {
        "saliency": lambda m, x, t: ca.Saliency(m).attribute(x, target=t, abs=True),
        "input_x_gradient": lambda m, x, t: ca.InputXGradient(m).attribute(x, target=t),
        "integrated_gradients": lambda m, x, t: ca.IntegratedGradients(m).attribute(
            x, target=t, n_steps=IG_STEPS, method="gausslegendre"),
        "smoothgrad": lambda m, x, t: ca.NoiseTunnel(ca.Saliency(m)).attribute(
            x, nt_type="smoothgrad", nt_samples=SG_SAMPLES, stdevs=stdev, target=t, abs=True),
        "guided_backprop": lambda m, x, t: ca.GuidedBackprop(m).attribute(x, target=t),
    }


def quantus_explain_func(explain):
    """Quantus's ``explain_func`` (numpy in, numpy out) over a Captum ``explain``."""
    def explain_func(model, inputs, targets, **_):
        model = model.model if isinstance(model, QuantusBlocks) else model
        a = explain(model, torch.as_tensor(inputs, dtype=torch.float32), torch.as_tensor(targets))
        return a.detach().numpy()
    return explain_func


def curve_by_hand(model: nn.Module, start: Tensor, end: Tensor, a: Tensor, target: Tensor) -> Tensor:
    """``[b, CURVE_STEPS + 1]`` target probabilities as the ``k / CURVE_STEPS``
    most relevant features (by ``a`` ``[b, *F]``) of ``start`` ``[b, *F]`` take
    ``end``'s values, ``k = 0 .. CURVE_STEPS``: one batched forward per point,
    as Quantus's PixelFlipping runs its steps."""
    order = a.reshape(len(a), -1).argsort(1, descending=True)
    n = order.shape[1]
    points = []
    with torch.no_grad():
        for k in range(CURVE_STEPS + 1):
            rows = start.reshape(len(a), -1).clone()
            idx = order[:, :k * n // CURVE_STEPS]
            rows.scatter_(1, idx, end.reshape(len(a), -1).gather(1, idx))
            points.append(model(rows.view_as(start)).softmax(1).gather(1, target[:, None])[:, 0])
    return torch.stack(points, 1)


def run_resnet_captum_quantus(model: nn.Module, x: Tensor, y: Tensor, stdev: float) -> float:
    """Seconds of the default audit of ``x`` ``[n, 3, 224, 224]`` written with
    Captum 0.9 and Quantus 0.6 (module docstring), as one batch."""
    import quantus
    from captum.metrics import infidelity
    from captum.robust import FGSM, PGD
    from torchvision.transforms.functional import gaussian_blur

    eps = 0.1
    blocks = QuantusBlocks(model, ["model." + b for b in RESNET_BLOCKS])
    t = time.perf_counter()
    xn = x.numpy()
    with torch.no_grad():
        pred = model(x).argmax(1)
    yn = pred.numpy()
    blurred = gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    common = {"disable_warnings": True, "normalise": False, "abs": False}
    ball = {"nr_samples": METRIC_SAMPLES, "lower_bound": 0.05, "return_nan_when_prediction_changes": False}
    for name, explain in captum_methods(stdev).items():
        a = explain(model, x, pred).detach()
        an = a.numpy()
        func = quantus_explain_func(explain)
        call = {"x_batch": xn, "y_batch": yn, "a_batch": an, "explain_func": func, "device": "cpu"}
        quantus.MaxSensitivity(**ball, **common)(model=model, **call)
        quantus.AvgSensitivity(**ball, **common)(model=model, **call)
        quantus.RelativeInputStability(nr_samples=METRIC_SAMPLES, return_nan_when_prediction_changes=False,
                                       perturb_func_kwargs={"lower_bound": 0.05, "upper_bound": None},
                                       **common)(model=model, **call)
        quantus.LocalLipschitzEstimate(nr_samples=METRIC_SAMPLES, perturb_std=0.1, **common)(model=model, **call)
        quantus.MPRT(layer_order="top_down", similarity_func=quantus.similarity_func.correlation_spearman,
                     return_average_correlation=True, disable_warnings=True, normalise=False, abs=True,
                     )(model=blocks, **call)
        infidelity(model, lambda inp: (lambda z: (z, inp - z))(torch.randn_like(inp) * 0.1), x, a, target=pred,
                   n_perturb_samples=METRIC_SAMPLES)
        curve_by_hand(model, x, torch.zeros_like(x), a, pred)  # deletion
        curve_by_hand(model, blurred, x, a, pred)  # insertion
    adv = FGSM(model, lower_bound=0.0, upper_bound=1.0).perturb(x, eps, target=y)
    with torch.no_grad():
        model(adv).argmax(1)
    adv = PGD(model, lower_bound=0.0, upper_bound=1.0).perturb(x, eps, 2.5 * eps / 10, 10, target=y,
                                                              random_start=True)
    with torch.no_grad():
        model(adv).argmax(1)
    return time.perf_counter() - t


def main_resnet(args: argparse.Namespace) -> None:
    repeats = args.repeats or 1
    n, n_cq = args.examples, min(args.cq_examples, args.examples)
    with tempfile.TemporaryDirectory() as folder:
        base, model, x, y = resnet_workload(folder, n, args.model_form)
        fast_model = fast_form(model, x)
        plan_g, plan_f, cost_g, cost_f = printed_plan(base, os.path.join(folder, "plan"))
        stdev = SG_STDEV * float(x.max() - x.min())
        t_fast = t_outputs = t_floor = t_fast_floor = t_cq = math.inf
        outputs_ok = True
        for r in range(repeats):  # interleaved, so that slow spells of the machine hit all three
            out = os.path.join(folder, f"out{r}")
            shards, rest, ok = run_fastattr([*base, "--quiet", "--shard-batches", "1", "--out", out])
            outputs_ok &= ok
            if shards < t_fast:
                t_fast, t_outputs = shards, rest
            planned, unique = planned_and_unique_rows(out)
            if planned != (plan_g, plan_f) or planned != HAND_COUNTED_ROWS:
                raise RuntimeError(f"rows per example: recorded settings give {planned}, the printed plan "
                                   f"{(plan_g, plan_f)}, the hand count {HAND_COUNTED_ROWS}: the defaults changed")
            t_floor = min(t_floor, rows_floor(model, x, unique[0] * n, unique[1] * n, args.floor_chunk))
            t_fast_floor = min(t_fast_floor, rows_floor(fast_model, x, unique[0] * n, unique[1] * n,
                                                        args.floor_chunk))
            t_cq = min(t_cq, run_resnet_captum_quantus(model, x[:n_cq], y[:n_cq], stdev))
    fast, cq = t_fast / n, t_cq / n_cq
    print(f"workload resnet18-224: torchvision resnet18(num_classes=10), random weights, ImageNet --mean/--std; "
          f"{n} images 3x224x224; batch {RESNET_BATCH}; the audit's default methods and metrics; "
          f"--model-form {args.model_form}")
    print(f"device: cpu, {torch.get_num_threads()} threads; best of {repeats} run(s) (one run is minutes: "
          f"--repeats defaults to 1 here)")
    print(f"rows per example: plan {plan_g} forward+backward + {plan_f} forward; unique (the floor) "
          f"{unique[0]} + {unique[1]}; floor chunk {args.floor_chunk} rows")
    print(f"fastattr audit     {fast:8.2f} s/example  (shards; loading, merge, summary and report another "
          f"{t_outputs:.2f} s"
          f"{'' if outputs_ok else ', FAILED: shards timed only'})")
    print_floors(fast, t_floor / n, t_fast_floor / n, "s/example")
    print(f"Captum + Quantus   {cq:8.2f} s/example  (on {n_cq} examples)  Captum+Quantus/fastattr = {cq / fast:.1f}")
    print(f"default audit of 64 images: {64 * fast:.0f} s = 64 x fastattr's time per example; the audit's plan "
          f"estimate {64 * (plan_g * cost_g + plan_f * cost_f):.0f} s ({cost_g * 1e3:.3g} ms per forward+backward "
          f"row, {cost_f * 1e3:.3g} ms per forward row, measured by the plan)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", choices=("digits", "resnet18-224"), default="digits")
    p.add_argument("--examples", type=int, default=None, help="default: 64 (digits), 4 (resnet18-224)")
    p.add_argument("--batch-size", type=int, default=64, help="digits only (resnet18-224: 8)")
    p.add_argument("--repeats", type=int, default=None,
                   help="best of this many interleaved runs of each (single runs scatter by +-30%%); "
                        "default 3 (digits), 1 (resnet18-224: one run takes minutes)")
    p.add_argument("--cq-examples", type=int, default=2, help="resnet18-224: examples Captum + Quantus runs on")
    p.add_argument("--floor-chunk", type=int, default=16, help="resnet18-224: rows per pass of the floor")
    p.add_argument("--model-form", choices=("fast", "eager", "compiled"), default="fast",
                   help="the audit's --model-form (default: its default, fast); both floors are printed")
    args = p.parse_args()
    if args.workload == "resnet18-224":
        args.examples = args.examples or 4
        heap = W.steady_heap()
        print(heap)
        main_resnet(args)
    else:
        args.examples = args.examples or 64
        args.repeats = args.repeats or 3
        main_digits(args)


if __name__ == "__main__":
    main()
