"""The audit's speed, from one run: fastattr's audit examples/s, its ratio to
the floor (a bare batched forward+backward of the unique rows it needs, and
forward-only for forward-only rows), and the same audit written as a plain
Captum + Quantus script.

The compared audit: the default digits CNN and data, methods saliency and
integrated gradients (16 steps), metrics max/avg sensitivity (10 samples,
L-inf radius 0.05), infidelity (10 samples) and FGSM/PGD accuracy (eps 0.1,
PGD 10 steps). Run: ``python benchmarks/audit.py [--examples N] [--repeats R]``.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastattr.cli import main as fastattr_main  # noqa: E402
from fastattr.cli.data import load_dataset  # noqa: E402
from fastattr.cli.default_model import default_model  # noqa: E402

import workloads as W  # noqa: E402  (benchmarks/, this script's folder)

METHODS = ("saliency", "integrated_gradients")
METRICS = ("max_sensitivity", "avg_sensitivity", "infidelity", "fgsm_accuracy", "pgd_accuracy")
STEPS, SAMPLES, RADIUS, STDEV, EPS, PGD_STEPS = 16, 10, 0.05, 0.1, 0.1, 10


def run_fastattr(n, batch):
    """``(whole run, outputs only)`` seconds: the same command run again on its
    finished --out redoes no shard, so it times the merge, summary and report alone."""
    with tempfile.TemporaryDirectory() as out:
        args = ["audit", "--quiet", "--limit", str(n), "--batch-size", str(batch), "--shard-batches", "1",
                "--methods", ",".join(METHODS), "--metrics", ",".join(METRICS), "--out", out]
        t = time.perf_counter()
        assert fastattr_main(args) == 0
        whole = time.perf_counter() - t
        t = time.perf_counter()
        assert fastattr_main(args) == 0
        return whole, time.perf_counter() - t


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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3,
                   help="best of this many interleaved runs of each (single runs scatter by +-30%%)")
    args = p.parse_args()
    heap = W.steady_heap()
    model = default_model()
    data = load_dataset(None, args.examples)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    n = len(y)
    run_fastattr(min(n, 8), args.batch_size)  # warm-up: imports, first-call costs
    t_fast = t_outputs = t_floor = t_cq = float("inf")
    for _ in range(args.repeats):  # interleaved, so that slow spells of the machine hit all three
        whole, outputs = run_fastattr(n, args.batch_size)
        if whole - outputs < t_fast:
            t_fast, t_outputs = whole - outputs, outputs
        t_floor = min(t_floor, floor(model, x))
        t_cq = min(t_cq, run_captum_quantus(model, x, y, args.batch_size))
    print(f"device: cpu, {torch.get_num_threads()} threads; {n} examples; methods {METHODS}; metrics {METRICS}; "
          f"best of {args.repeats} runs")
    print(heap)
    print(f"fastattr audit     {t_fast:8.2f} s  {n / t_fast:8.1f} ex/s  (shards; merge, summary and report "
          f"another {t_outputs:.2f} s)")
    print(f"floor              {t_floor:8.2f} s  {n / t_floor:8.1f} ex/s  fastattr/floor = {t_fast / t_floor:.2f}")
    print(f"Captum + Quantus   {t_cq:8.2f} s  {n / t_cq:8.1f} ex/s  speed-up = {t_cq / t_fast:.1f}x")


if __name__ == "__main__":
    main()
