"""Captum's own random draws, for the drop-in classes constructed with
``seed=None`` (their default): the same calls on NumPy's and torch's global
RNGs, in the same order and shapes, as Captum 0.9's ``NoiseTunnel`` and
``GradientShap`` make, so that a script that seeds the global RNGs gets
Captum's numbers after the import swap. With ``seed=<int>`` the drop-ins use
fastattr's keyed draws instead (the same result on every call, for any
batch, chunking or device), which no global-RNG draw can give.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .. import _validate as v
from ..attr._call import repeat_examples

Stdevs = Union[float, Tuple[float, ...]]


def pick_references(references: Tuple[Any, ...], count: int) -> Tuple[Any, ...]:
    """Captum's ``draw_baseline_from_distrib``: per input, ``count`` rows of
    its distribution by ``np.random.choice`` (an input whose baseline is a
    number draws nothing and keeps it)."""
    return tuple(
        r[np.random.choice(r.shape[0], count).tolist()] if isinstance(r, Tensor) else r for r in references
    )


def add_noise(xs: Tuple[Tensor, ...], stdevs: Stdevs, n_samples: int) -> Tuple[Tensor, ...]:
    """Captum's ``NoiseTunnel._add_noise_to_inputs``: each input repeated
    ``n_samples`` times per example plus ``torch.normal`` noise (drawn in
    float32, as Captum's ``torch.tensor(stdev)``), input after input."""
    scales = v.check_scales(stdevs, "stdevs", len(xs))
    out = []
    for x, s in zip(xs, scales):
        size = (x.shape[0] * n_samples, *x.shape[1:])
        noise = torch.normal(0, torch.tensor(s, device=x.device).repeat(size))
        out.append(x.repeat_interleave(n_samples, dim=0) + noise)
    return tuple(out)


def positions(rows: Tensor) -> Tensor:
    """Captum's ``InputBaselineXGradient`` coefficients: ``np.random.uniform``,
    one per row, in the rows' dtype."""
    return torch.tensor(np.random.uniform(0.0, 1.0, rows.shape[0]), device=rows.device, dtype=rows.dtype)


def gradient_shap_draws(inputs: v.TensorOrTuple, baselines: Any, n_samples: int, stdevs: Stdevs
                        ) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...], Tensor, bool]:
    """``(noisy rows, their references, positions, inputs_was_tuple)`` for
    ``B * n_samples`` rows (example-major), drawn as Captum's ``GradientShap``
    draws them: reference rows, then noise, then positions."""
    xs, was_tuple = v.format_inputs(inputs)
    n_samples = v.check_positive_int(n_samples, "n_samples")
    resolved = v.resolve_callable_baselines(baselines, xs, was_tuple)
    formatted = v.format_baseline_distribution(resolved, xs, was_tuple)  # the checks
    items = resolved if isinstance(resolved, tuple) else (resolved,) * len(xs)
    picked = pick_references(tuple(f if isinstance(r, Tensor) else None for f, r in zip(formatted, items)),
                             xs[0].shape[0] * n_samples)
    rows = add_noise(xs, stdevs, n_samples)
    references = tuple(p if p is not None else f[:1].expand(r.shape) for p, f, r in zip(picked, formatted, rows))
    return rows, references, positions(rows[0]), was_tuple


def mean_over_samples(per_row: v.TensorOrTuple, batch: int, n_samples: int) -> v.TensorOrTuple:
    """``[B * N, *F]`` -> ``[B, *F]``: the sum over each example's samples
    times ``1 / N``, as Captum's ``NoiseTunnel`` averages."""
    items = per_row if isinstance(per_row, tuple) else (per_row,)
    out = tuple(a.view(batch, n_samples, *a.shape[1:]).sum(1) * 1 / n_samples for a in items)
    return out if isinstance(per_row, tuple) else out[0]


def explain_on_captum_draws(explain_at: Callable[..., Any], inputs: v.TensorOrTuple, baselines: Any,
                            n_samples: int, stdevs: Stdevs, target: Any, additional_forward_args: Any,
                            return_convergence_delta: bool) -> Any:
    """A GradientSHAP-style drop-in's call on Captum's draws:
    ``explain_at(rows, references, positions, target, args)`` gives each
    drawn row's term (``rows`` a tensor or a tuple like ``inputs``; target
    and arguments repeated per row), averaged here over each example's
    samples; deltas, when asked, per row ``[B * n_samples]``."""
    rows, references, alphas, was_tuple = gradient_shap_draws(inputs, baselines, n_samples, stdevs)
    batch = rows[0].shape[0] // n_samples
    row_target, row_args = repeat_examples(target, additional_forward_args, n_samples)
    out = explain_at(rows if was_tuple else rows[0], references, alphas, row_target, row_args)
    if return_convergence_delta:
        attributions, deltas = out
        return mean_over_samples(attributions, batch, n_samples), deltas
    return mean_over_samples(out, batch, n_samples)
