"""``NoiseTunnel`` as Captum 0.9's.

With ``seed=None`` (the default) the noise comes from torch's global RNG,
partition by partition, as Captum draws it (:mod:`._global_draws`), and the
wrapped ``attribute`` runs on each partition of noisy copies, as Captum's.
With an int ``seed`` the noise of example ``b``, sample ``n`` is keyed by
``(seed, input, b, n)``: the same for any batch and any partitioning; over
fastattr's ``Saliency``, ``InputXGradient`` and ``IntegratedGradients`` the
call then runs as one engine plan (:func:`fastattr.smoothgrad`), the noisy
copies made chunk by chunk, never all at once.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from .. import ops
from ..attr._call import repeat_examples
from ..attr.smoothgrad import KINDS, check_seed, smoothgrad
from ..engine import PURPOSE_REFERENCE_DRAW, PURPOSE_SMOOTHGRAD
from ..engine.draws import group_uniforms
from ._base import Attribution
from ._global_draws import add_noise, pick_references
from .gradient import InputXGradient, Saliency
from .integrated_gradients import IntegratedGradients


class NoiseTunnel(Attribution):
    """Captum's ``NoiseTunnel(attribution_method)``, and ``seed`` (fastattr's
    addition): None (default) draws the noise (and baselines) from torch's
    and NumPy's global RNGs exactly as Captum does, partition by partition
    (Captum's numbers under the same global seed); an int keys the noise by
    (seed, input, example, sample), so repeated calls, any batch and any
    ``nt_samples_batch_size`` give the same result, and over fastattr's
    ``Saliency``, ``InputXGradient`` and ``IntegratedGradients`` the noisy
    copies are made chunk by chunk in one engine plan, never all at once."""

    def __init__(self, attribution_method: Any, seed: Optional[int] = None) -> None:
        if not callable(getattr(attribution_method, "attribute", None)):
            raise TypeError(
                f"attribution_method: expected an attribution object with an attribute() "
                f"method (e.g. fastattr.captum.Saliency(model)), got {type(attribution_method).__name__}"
            )
        if seed is not None:
            check_seed(seed)
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method
        self.is_delta_supported = bool(attribution_method.has_convergence_delta())
        self.seed = seed

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.is_delta_supported

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: Optional[int] = None,
        stdevs: Union[float, Tuple[float, ...]] = 1.0,
        draw_baseline_from_distrib: bool = False,
        **kwargs: Any,
    ) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
        """The wrapped method's attributions averaged over ``nt_samples`` noisy
        copies (``nt_type`` ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``).

        ``kwargs`` go to the wrapped ``attribute``. With
        ``return_convergence_delta=True``: deltas ``[B * nt_samples]`` in Captum's
        order (partition-major when ``nt_samples_batch_size`` splits the samples).
        """
        v.check_choice(nt_type, "nt_type", KINDS)
        n = v.check_positive_int(nt_samples, "nt_samples")
        per_partition = min(n, v.check_optional_positive_int(nt_samples_batch_size, "nt_samples_batch_size") or n)
        want_delta = bool(kwargs.get("return_convergence_delta", False))
        if want_delta and not self.is_delta_supported:
            raise ValueError(
                f"return_convergence_delta: {type(self.attribution_method).__name__} has no convergence delta"
            )
        if "target" in kwargs:
            kwargs["target"] = kwargs["target"]
        native = _native_explainer(self.attribution_method)
        if native is not None and not draw_baseline_from_distrib and self.seed is not None:
            return self._engine_route(native, inputs, nt_type, n, per_partition, stdevs, kwargs)
        return self._partition_route(inputs, nt_type, n, per_partition, stdevs, draw_baseline_from_distrib, kwargs)

    # -- one engine plan ---------------------------------------------------
    def _engine_route(self, explainer: str, inputs: v.TensorOrTuple, nt_type: str, n: int,
                      per_partition: int, stdevs: Any, kwargs: Dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        common = {k: kwargs.pop(k) for k in ("target", "additional_forward_args") if k in kwargs}
        want_delta = bool(kwargs.pop("return_convergence_delta", False))
        method = self.attribution_method
        explainer_kwargs: Dict[str, Any] = {}
        steps = 1
        cap = None
        if explainer == "saliency":
            explainer_kwargs["abs"] = kwargs.pop("abs", True)
        elif explainer == "integrated_gradients":
            steps = kwargs.pop("n_steps", 50)
            explainer_kwargs.update(
                baselines=kwargs.pop("baselines", None), n_steps=steps,
                method=kwargs.pop("method", "gausslegendre"),
                multiply_by_inputs=method.multiplies_by_inputs,
            )
            cap = kwargs.pop("internal_batch_size", None)
        if kwargs:
            raise TypeError(f"{type(method).__name__}.attribute() got unexpected arguments {sorted(kwargs)}")
        xs, _ = v.format_inputs(inputs)
        if per_partition < n:
            # Captum evaluates B * nt_samples_batch_size noisy copies (x n_steps rows) at a time.
            partition_rows = xs[0].shape[0] * per_partition * v.check_positive_int(steps, "n_steps")
            cap = partition_rows if cap is None else min(cap, partition_rows)
        out = smoothgrad(
            self.forward_func, inputs, n_samples=n, stdev=stdevs, kind=nt_type, explainer=explainer,
            explainer_kwargs=explainer_kwargs, seed=self.seed, return_convergence_delta=want_delta,
            antithetic=False,  # Captum draws independent noise
            chunk_rows=cap, model_form="eager", **common,
        )
        if not want_delta:
            return out
        attributions, deltas = out
        return attributions, _partition_major(deltas, xs[0].shape[0], n, per_partition)

    # -- the wrapped attribute() on noisy copies ----------------------------
    def _partition_route(self, inputs: v.TensorOrTuple, nt_type: str, n: int, per_partition: int,
                         stdevs: Any, draw: bool, kwargs: Dict[str, Any]) -> Any:
        xs, was_tuple = v.format_inputs(inputs)
        xs = tuple(x.detach() for x in xs)
        batch = xs[0].shape[0]
        references = None
        if draw:
            if "baselines" not in kwargs:
                raise ValueError("draw_baseline_from_distrib: needs baselines, a distribution [M, *F] per input")
            kwargs = dict(kwargs)
            references = v.format_baseline_distribution(kwargs.pop("baselines"), xs, was_tuple)
        if self.seed is None:
            draws: Any = _GlobalDraws(xs, stdevs, n, per_partition, references)
        else:
            draws = _KeyedDraws(xs, stdevs, n, self.seed, references)
        sums: List[Tensor] = []
        squares: List[Tensor] = []
        deltas: List[Tensor] = []
        for n0 in range(0, n, per_partition):
            size = min(per_partition, n - n0)
            part, picked = draws.partition(n0, size)
            part_kwargs = _expand_kwargs(kwargs, size, batch)
            if picked is not None:
                part_kwargs["baselines"] = picked if was_tuple else picked[0]
            out = self.attribution_method.attribute(part if was_tuple else part[0], **part_kwargs)
            if part_kwargs.get("return_convergence_delta", False):
                out, delta = out
                deltas.append(delta)
            attrs = out if isinstance(out, tuple) else (out,)
            for i, a in enumerate(attrs):
                a = a.reshape(batch, size, *a.shape[1:])
                if len(sums) <= i:
                    sums.append(a.sum(1))
                    squares.append((a * a).sum(1))
                else:
                    sums[i] = sums[i] + a.sum(1)
                    squares[i] = squares[i] + (a * a).sum(1)
            out_was_tuple = isinstance(out, tuple)
        mean = [s / n for s in sums]
        mean_sq = [s / n for s in squares]
        if nt_type == "smoothgrad":
            values = mean
        elif nt_type == "smoothgrad_sq":
            values = mean_sq
        else:
            values = [sq - m * m for m, sq in zip(mean, mean_sq)]
        result = tuple(values) if out_was_tuple else values[0]
        return (result, torch.cat(deltas)) if deltas else result


class _KeyedDraws:
    """Noise keyed by (seed, input, example, sample), made once for all
    samples; drawn baselines keyed likewise (fastattr's draws)."""

    def __init__(self, xs: Tuple[Tensor, ...], stdevs: Any, n: int, seed: int,
                 references: Optional[Tuple[Tensor, ...]]) -> None:
        scales = v.check_scales(stdevs, "stdevs", len(xs))
        batch = xs[0].shape[0]
        self.n, self.examples = n, torch.arange(batch, device=xs[0].device)
        self.noisy = tuple(
            ops.generate_rows(x, None, None, n, "gaussian", s, seed, PURPOSE_SMOOTHGRAD * 65536 + i, 0,
                              batch * n, 0)
            for i, (x, s) in enumerate(zip(xs, scales))
        )
        self.drawn = None
        if references is not None:
            _, which = group_uniforms(seed, PURPOSE_REFERENCE_DRAW * 65536, batch, n, xs[0].device)
            rows = (which * references[0].shape[0]).to(torch.int64)
            self.drawn = tuple(r.index_select(0, rows) for r in references)  # [B * n, *F]

    def partition(self, n0: int, size: int) -> Tuple[Tuple[Tensor, ...], Optional[Tuple[Tensor, ...]]]:
        """Samples ``n0 .. n0+size-1`` of every example, rows ``b * size + j``:
        the noisy inputs and, when drawn, their baselines."""
        groups = (self.examples[:, None] * self.n + torch.arange(n0, n0 + size, device=self.examples.device)
                  ).flatten()
        picked = None if self.drawn is None else tuple(r.index_select(0, groups) for r in self.drawn)
        return tuple(t.index_select(0, groups) for t in self.noisy), picked


class _GlobalDraws:
    """Captum's draws from the global RNGs, in its order: the baselines of a
    full partition drawn once before the first (and reused by every full
    partition), each partition's noise when it runs, and a last, smaller
    partition's baselines after its noise."""

    def __init__(self, xs: Tuple[Tensor, ...], stdevs: Any, n: int, per_partition: int,
                 references: Optional[Tuple[Tensor, ...]]) -> None:
        self.xs, self.stdevs, self.references = xs, stdevs, references
        self.full_size = per_partition
        self.full = None if references is None else pick_references(references, xs[0].shape[0] * per_partition)

    def partition(self, n0: int, size: int) -> Tuple[Tuple[Tensor, ...], Optional[Tuple[Tensor, ...]]]:
        noisy = add_noise(self.xs, self.stdevs, size)
        if self.references is None:
            return noisy, None
        if size == self.full_size:
            return noisy, self.full
        return noisy, pick_references(self.references, self.xs[0].shape[0] * size)


def _native_explainer(method: Any) -> Optional[str]:
    """The :func:`fastattr.smoothgrad` explainer a fastattr class maps to."""
    for cls, name in ((Saliency, "saliency"), (InputXGradient, "input_x_gradient"),
                      (IntegratedGradients, "integrated_gradients")):
        if type(method) is cls:
            return name
    return None


def _partition_major(deltas: Tensor, batch: int, n: int, per_partition: int) -> Tensor:
    """Deltas in (example, sample) order reordered as Captum returns them:
    partition by partition of ``per_partition`` samples, example-major inside."""
    if per_partition >= n:
        return deltas
    order = [
        b * n + s
        for n0 in range(0, n, per_partition)
        for b in range(batch)
        for s in range(n0, min(n, n0 + per_partition))
    ]
    return deltas[torch.tensor(order, device=deltas.device)]


def _expand_kwargs(kwargs: Dict[str, Any], size: int, batch: int) -> Dict[str, Any]:
    """The wrapped method's arguments for ``batch * size`` noisy copies, as
    Captum expands them: per-example tensors, lists, targets and feature
    masks repeated ``size`` times each (row ``b * size + j``)."""
    out = dict(kwargs)
    target, args = repeat_examples(out.get("target"), out.get("additional_forward_args"), size)
    if "target" in out:
        out["target"] = target
    if "additional_forward_args" in out:
        out["additional_forward_args"] = args
    mask = out.get("feature_mask")
    if mask is not None:
        items = mask if isinstance(mask, tuple) else (mask,)
        expanded = tuple(m.repeat_interleave(size, dim=0) if m.shape[0] > 1 else m for m in items)
        out["feature_mask"] = expanded if isinstance(mask, tuple) else expanded[0]
    base = out.get("baselines")
    if base is not None:
        items = base if isinstance(base, tuple) else (base,)
        expanded = tuple(
            b.repeat_interleave(size, dim=0) if isinstance(b, Tensor) and b.dim() > 0 and b.shape[0] == batch > 1 else b
            for b in items
        )
        out["baselines"] = expanded if isinstance(base, tuple) else expanded[0]
    return out
