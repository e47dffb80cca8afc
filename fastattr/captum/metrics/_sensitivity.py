"""Captum 0.9's ``sensitivity_max``: the same signature and results.

Three routes, one result definition:

* a caller's ``perturb_func``: Captum's own loop (the same calls of
  ``perturb_func`` and ``explanation_func``, the same arithmetic), so a
  deterministic or identically seeded ``perturb_func`` gives Captum's numbers;
* the default perturbation with the ``attribute`` of a fastattr drop-in
  ``Saliency`` / ``InputXGradient`` / ``IntegratedGradients``: one fused
  engine run (:func:`fastattr.metrics.sensitivity.max_sensitivity`);
* the default perturbation with any other ``explanation_func``: fastattr's
  keyed perturbations, explained in chunks of rows.

The default perturbation is uniform in the L-infinity ball, keyed by
``(seed, example, sample, element)`` instead of drawn from the global RNG: the
same ``seed`` gives the same scores for any ``max_examples_per_batch`` or
batch composition, and the last two routes give the same perturbations.
"""
from __future__ import annotations

import warnings
from copy import deepcopy
from inspect import signature
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from ... import _validate as v
from ... import ops
from ...attr._call import build_request
from ...attr.smoothgrad import check_seed
from ...engine import PURPOSE_PERTURBATION, single_point_plan
from ...metrics.sensitivity import (
    Perturbation, PerturbedExplanations, check_norm, check_radius, max_sensitivity, sensitivity_values,
)
from ..gradient import InputXGradient, Saliency
from ..integrated_gradients import IntegratedGradients


def default_perturb_func(inputs: v.TensorOrTuple, perturb_radius: float = 0.02, seed: int = 0) -> Tuple[Tensor, ...]:
    """Keyed uniform noise in the L-infinity ball of radius ``perturb_radius``:
    ``x + perturb_radius * z``, ``z`` in ``[-1, 1)`` keyed by ``(seed, row,
    sample 0, element)``. Captum's ``default_perturb_func`` with reproducible
    noise; as ``sensitivity_max``'s default it stands for keyed samples
    ``(seed, example, sample)`` of every example.

    Returns:
        One ``[B, *F]`` tensor per input.
    """
    xs, _ = v.format_inputs(inputs)
    scales = check_radius(perturb_radius, "perturb_radius", len(xs))
    check_seed(seed)
    return tuple(
        ops.generate_rows(x, None, None, 1, "uniform", r, seed, PURPOSE_PERTURBATION * 65536 + i, 0, x.shape[0], 0)
        for i, (x, r) in enumerate(zip(xs, scales))
    )


# The drop-in methods whose attribute() is folded into one engine run, with
# the attribute() arguments that route takes.
_FUSED: Dict[type, Tuple[str, ...]] = {
    Saliency: ("target", "abs", "additional_forward_args"),
    InputXGradient: ("target", "additional_forward_args"),
    IntegratedGradients: ("baselines", "target", "additional_forward_args", "n_steps", "method",
                          "internal_batch_size"),
}


def _fused_call(explanation_func: Callable[..., Any], kwargs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The :func:`max_sensitivity` arguments of an engine-native drop-in
    ``attribute`` called with ``kwargs``, or None when it is anything else."""
    owner = getattr(explanation_func, "__self__", None)
    allowed = _FUSED.get(type(owner))
    if allowed is None or getattr(explanation_func, "__func__", None) is not type(owner).attribute:
        return None
    if any(k not in allowed for k in kwargs):
        return None
    options = {k: kwargs[k] for k in ("abs", "baselines", "n_steps", "method") if k in kwargs}
    name = {Saliency: "saliency", InputXGradient: "input_x_gradient"}.get(type(owner), "integrated_gradients")
    if name == "integrated_gradients":
        options["multiply_by_inputs"] = owner.multiplies_by_inputs
    return {
        "model": owner.forward_func,
        "explainer": name,
        "explainer_kwargs": options,
        "target": kwargs.get("target"),
        "additional_forward_args": kwargs.get("additional_forward_args"),
        "chunk_rows": kwargs.get("internal_batch_size"),
    }


def _rows_kwargs(kwargs: Dict[str, Any], inputs: Tuple[Tensor, ...], examples: Tensor) -> Dict[str, Any]:
    """``kwargs`` of rows whose examples are ``examples``: per-example
    baselines (tensors shaped like the inputs, as Captum expands them) gathered
    per row. Target and additional args come from the engine request."""
    out = dict(kwargs)
    base = kwargs.get("baselines")
    if base is not None:
        items = base if isinstance(base, tuple) else (base,)
        if isinstance(items[0], Tensor) and items[0].shape == inputs[0].shape:
            rows = tuple(b.index_select(0, examples.to(b.device)) if isinstance(b, Tensor) and b.dim() > 0
                         and b.shape[0] == inputs[0].shape[0] else b for b in items)
            out["baselines"] = rows if isinstance(base, tuple) else rows[0]
    return out


def _keyed_sensitivity_max(explanation_func: Callable[..., Any], inputs: Tuple[Tensor, ...],
                           radius: float, n_samples: int, ord: float, rows_per_call: Optional[int],
                           seed: int, kwargs: Dict[str, Any]) -> Tensor:
    """``[B]``: sensitivity max over keyed perturbations, ``explanation_func``
    called on chunks of perturbed rows (as Captum calls it: a tensor for one input)."""
    other = {k: a for k, a in kwargs.items() if k not in ("target", "additional_forward_args")}
    req, _ = build_request(
        explanation_func, inputs, kwargs.get("target"), kwargs.get("additional_forward_args"),
        lambda _: single_point_plan("grad"), None, rows_per_call,
    )
    with torch.no_grad():
        clean = explanation_func(req.inputs, **kwargs)
    clean = clean if isinstance(clean, tuple) else (clean,)

    def explain_rows(xs: Tuple[Tensor, ...], target: Any, args: Any, examples: Tensor,
                     _first_key: int) -> Tuple[Tensor, ...]:
        extra = _rows_kwargs(other, req.inputs, examples)
        if "target" in kwargs:
            extra["target"] = target
        if "additional_forward_args" in kwargs:
            extra["additional_forward_args"] = args
        with torch.no_grad():
            out = explanation_func(xs if len(xs) > 1 else xs[0], **extra)
        return out if isinstance(out, tuple) else (out,)

    audit = PerturbedExplanations(req, True, clean, explain_rows)
    scales = check_radius(radius, "perturb_radius", len(inputs))
    values = sensitivity_values(audit, Perturbation("uniform", scales, n_samples, seed), ord, True)
    return values.amax(dim=1).to(clean[0].dtype)


def _captum_sensitivity_max(explanation_func: Callable[..., Any], inputs: Tuple[Tensor, ...],
                            perturb_func: Callable[..., Any], perturb_radius: float, n_perturb_samples: int,
                            norm_ord: Union[str, float], max_examples_per_batch: Optional[int],
                            kwargs: Dict[str, Any]) -> Tensor:
    """Captum 0.9's loop, call for call, for a caller's ``perturb_func``."""
    bsz = inputs[0].size(0)
    takes_radius = len(signature(perturb_func).parameters) > 1
    with torch.no_grad():
        clean = explanation_func(inputs, **kwargs)
        clean = clean if isinstance(clean, tuple) else (clean,)
        clean_norm = torch.norm(torch.cat([e.view(e.size(0), -1) for e in clean], dim=1),
                                p=norm_ord, dim=1, keepdim=True)
        clean_norm = torch.where(clean_norm == 0.0, torch.tensor(1.0, device=clean_norm.device,
                                                                 dtype=clean_norm.dtype), clean_norm)
        per_call = n_perturb_samples if max_examples_per_batch is None else min(
            max(max_examples_per_batch // bsz, 1), n_perturb_samples)
        best: Optional[Tensor] = None
        done = 0
        while done < n_perturb_samples:
            k = min(per_call, n_perturb_samples - done)
            done += k
            expanded = tuple(torch.repeat_interleave(x, k, dim=0) for x in inputs)
            given = expanded if len(expanded) > 1 else expanded[0]
            perturbed = perturb_func(given, perturb_radius) if takes_radius else perturb_func(given)
            out = explanation_func(perturbed, **_expanded_kwargs(kwargs, inputs, k))
            out = out if isinstance(out, tuple) else (out,)
            diffs = torch.cat([(e.repeat_interleave(k, dim=0) - o).view(o.size(0), -1)
                               for o, e in zip(out, clean)], dim=1)
            norms = torch.norm(diffs, p=norm_ord, dim=1, keepdim=True) / clean_norm.repeat_interleave(k, dim=0)
            chunk_max = torch.max(norms.view(bsz, -1), dim=1).values
            best = chunk_max if best is None else torch.max(best, chunk_max)
    return best


def _expanded_kwargs(kwargs: Dict[str, Any], inputs: Tuple[Tensor, ...], k: int) -> Dict[str, Any]:
    """Captum's expansion of ``target``, ``additional_forward_args`` and
    per-example ``baselines`` to ``k`` rows per example (repeat-interleaved)."""
    out = deepcopy(kwargs)
    args = out.get("additional_forward_args")
    if args is not None:
        args = args if isinstance(args, tuple) else (args,)
        out["additional_forward_args"] = tuple(
            a.repeat_interleave(k, dim=0) if isinstance(a, Tensor) and a.dim() > 0 else a for a in args)
    target = out.get("target")
    if isinstance(target, list):
        out["target"] = [t for t in target for _ in range(k)]
    elif isinstance(target, Tensor) and target.numel() > 1:
        out["target"] = target.repeat_interleave(k, dim=0)
    if kwargs.get("baselines") is not None:
        base = kwargs["baselines"]
        bases = base if isinstance(base, tuple) else (base,)
        if isinstance(bases[0], Tensor) and bases[0].shape == inputs[0].shape:
            out["baselines"] = tuple(
                b.repeat_interleave(k, dim=0) if isinstance(b, Tensor) and b.dim() > 0
                and b.shape[0] == x.shape[0] > 1 else b for b, x in zip(bases, inputs))
    return out


def sensitivity_max(
    explanation_func: Callable[..., v.TensorOrTuple],
    inputs: v.TensorOrTuple,
    perturb_func: Callable[..., v.TensorOrTuple] = default_perturb_func,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm_ord: Union[str, float] = "fro",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    **kwargs: Any,
) -> Tensor:
    """Captum's ``sensitivity_max``: per example, the max over
    ``n_perturb_samples`` perturbations of ``||e(x') - e(x)|| / ||e(x)||``.

    Args:
        explanation_func: any explanation callable, called as
            ``explanation_func(inputs, **kwargs)`` (e.g. an ``attribute`` method).
        inputs: ``[B, *F]`` or a tuple of them.
        perturb_func: the default is fastattr's keyed L-infinity-ball noise;
            any other function is called exactly as Captum calls it.
        perturb_radius: L-infinity radius (> 0) of the default perturbation,
            passed to ``perturb_func`` if it takes two arguments.
        n_perturb_samples: perturbations per example (>= 1).
        norm_ord: ``"fro"`` or a vector-norm order.
        max_examples_per_batch: rows per ``explanation_func`` call, as Captum
            (the fused engine route sizes its chunks by bytes instead).
        seed: key of the default perturbation (int >= 0; fastattr's addition).
        **kwargs: passed to ``explanation_func`` (``target``,
            ``additional_forward_args``, ``baselines``, ...), expanded per row as Captum does.

    Returns:
        ``[B]`` sensitivities, in the explanations' dtype.
    """
    if not callable(explanation_func):
        raise TypeError(f"explanation_func: expected a callable, got {type(explanation_func).__name__}")
    if not callable(perturb_func):
        raise TypeError(f"perturb_func: expected a callable, got {type(perturb_func).__name__}")
    n_perturb_samples = v.check_positive_int(n_perturb_samples, "n_perturb_samples")
    ord = check_norm(norm_ord, "norm_ord")
    check_seed(seed)
    max_examples_per_batch = v.check_optional_positive_int(max_examples_per_batch, "max_examples_per_batch")
    xs, _ = v.format_inputs(inputs)
    bsz = xs[0].shape[0]
    if max_examples_per_batch is not None and not 1 <= max_examples_per_batch // bsz <= n_perturb_samples:
        warnings.warn(
            f"`max_examples_per_batch` must be at least equal to the input batch size and at most to "
            f"`input batch size` * `n_perturb_samples`. `max_examples_per_batch` is: "
            f"{max_examples_per_batch} and the input batch size is: {bsz}.", stacklevel=2,
        )
    if perturb_func is not default_perturb_func:
        return _captum_sensitivity_max(explanation_func, xs, perturb_func, perturb_radius, n_perturb_samples,
                                       norm_ord, max_examples_per_batch, kwargs)
    check_radius(perturb_radius, "perturb_radius", len(xs))
    fused = _fused_call(explanation_func, kwargs)
    if fused is not None:
        values = max_sensitivity(inputs=inputs, radius=perturb_radius, n_samples=n_perturb_samples,
                                 norm=norm_ord, seed=seed, **fused)
        return values.to(xs[0].dtype)
    rows_per_call = None if max_examples_per_batch is None else bsz * min(
        max(max_examples_per_batch // bsz, 1), n_perturb_samples)
    return _keyed_sensitivity_max(explanation_func, xs, perturb_radius, n_perturb_samples, ord, rows_per_call,
                                  seed, kwargs)
