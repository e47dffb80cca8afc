"""Infidelity (Yeh et al. 2019): the expected squared gap between an
explanation's linear prediction of the output change, ``I . a``, and the real
change ``f(x) - f(x - I)``, over random perturbations ``I``.

The perturbations are keyed Gaussian noise (purpose ``PURPOSE_INFIDELITY``) or
a user function as Captum's ``perturb_func``; the perturbed copies are made
chunk by chunk inside :func:`fastattr.engine.forward_rows`, never all at once,
and ``f(x)`` runs once.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_INFIDELITY, forward_rows, row_examples
from ..engine.model_form import check_model_form
from ..ops import generate_rows
from ._explain import Explainer, ExplainerType

# Precomputed attributions (shaped like the inputs) or the explainer that makes them.
AttributionsOrExplainer = Union[Tensor, Tuple[Tensor, ...], ExplainerType, Explainer]
PerturbFunc = Callable[..., Tuple[v.TensorOrTuple, v.TensorOrTuple]]


def check_model(model: Any) -> None:
    """A TypeError naming ``model`` unless it is callable."""
    if not callable(model):
        raise TypeError(f"model: expected a callable (an nn.Module or a function), got {type(model).__name__}")


def resolve_attributions(
    attributions: AttributionsOrExplainer,
    model: Callable[..., Tensor],
    xs: Tuple[Tensor, ...],
    was_tuple: bool,
    target: Any,
    additional_forward_args: Any,
    explainer_kwargs: Optional[Mapping[str, Any]],
    memory_budget: Optional[int],
    example_offset: int = 0,
    model_form: str = "eager",
) -> Tuple[Tensor, ...]:
    """The clean explanation, one tensor per input: ``attributions`` as given
    (a tensor or tuple, each ``[B, *F_i]`` or broadcastable to it, checked
    finite) or computed once by ``attributions`` as an explainer (a fastattr
    explainer, its name, a user callable, run in ``model_form``, or an
    :class:`Explainer`, in its own; a random one keyed from example
    ``example_offset``)."""
    if isinstance(attributions, (Tensor, tuple)):
        if explainer_kwargs is not None:
            raise ValueError("explainer_kwargs: only used when attributions is an explainer, not tensors")
        attrs = attributions if isinstance(attributions, tuple) else (attributions,)
        if isinstance(attributions, tuple) != was_tuple or len(attrs) != len(xs):
            expected = f"a tuple of {len(xs)} tensors" if was_tuple else "a tensor"
            got = f"a tuple of {len(attrs)}" if isinstance(attributions, tuple) else "a tensor"
            raise ValueError(f"attributions: expected {expected} like the inputs, got {got}")
        for i, (a, x) in enumerate(zip(attrs, xs)):
            name = f"attributions[{i}]" if was_tuple else "attributions"
            if not isinstance(a, Tensor) or not (a.is_floating_point() or a.dtype in (torch.int32, torch.int64)):
                raise TypeError(f"{name}: expected a numeric tensor, got {getattr(a, 'dtype', type(a).__name__)}")
            if a.device != x.device:
                raise ValueError(f"{name}: on {a.device}, expected {x.device} like the input")
            if a.shape != x.shape:
                raise ValueError(f"{name}: expected shape {tuple(x.shape)} like the input, got {tuple(a.shape)}")
            if not v._all_finite(a):
                raise ValueError(f"{name}: contains NaN or Inf")
        return tuple(a.detach() for a in attrs)
    explainer = attributions if isinstance(attributions, Explainer) else Explainer(attributions, explainer_kwargs,
                                                                                   model_form)
    return tuple(a.detach() for a in explainer(model, xs, was_tuple, target, additional_forward_args, memory_budget,
                                               example_offset))


class _PerturbedRows:
    """``rows_for`` of :func:`forward_rows` for infidelity, ``N + 1`` rows per
    example: row ``b * (N + 1)`` is the clean example ``b``, whose output the
    metric compares against, and row ``b * (N + 1) + 1 + n`` its perturbed
    copy ``x - I`` of sample ``n``, so that both come from one forward. The
    perturbations of a chunk are made once (by ``make``, for a contiguous
    range of samples ``g = b * N + n``) and dropped with it; each sample's
    ``I . a`` (float64) is recorded on the way."""

    def __init__(self, xs: Tuple[Tensor, ...], attrs: Tuple[Tensor, ...], n_samples: int,
                 make: Callable[[Tensor, int, int], Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]]):
        self.xs, self.n_samples, self.make = xs, n_samples, make
        self.per_example = n_samples + 1
        self.flat_attrs = tuple(a.reshape(a.shape[0], -1).to(torch.float64) for a in attrs)
        self.dots = torch.empty(xs[0].shape[0] * n_samples, dtype=torch.float64, device=xs[0].device)

    def _sample_index(self, r: int) -> int:
        """The first sample ``g`` at or after row ``r``."""
        b, k = divmod(r, self.per_example)
        return b * self.n_samples + max(k - 1, 0)

    def __call__(self, r0: int, r1: int) -> Tuple[Tensor, ...]:
        device = self.xs[0].device
        rows_examples = row_examples(r0, r1, self.per_example, device)
        g0, g1 = self._sample_index(r0), self._sample_index(r1)
        if g0 == g1:  # clean rows only
            return tuple(x.index_select(0, rows_examples) for x in self.xs)
        examples = row_examples(g0, g1, self.n_samples, device)
        perturbations, perturbed = self.make(examples, g0, g1)
        dot = None
        for a, p in zip(self.flat_attrs, perturbations):
            term = (a.index_select(0, examples) * p.reshape(g1 - g0, -1)).sum(1)
            dot = term if dot is None else dot + term
        self.dots[g0:g1] = dot
        if g1 - g0 == r1 - r0:  # no clean row in this chunk
            return perturbed
        clean = torch.arange(r0, r1, device=device) % self.per_example == 0
        out = []
        for x, p in zip(self.xs, perturbed):
            chunk = p.new_empty((r1 - r0, *x.shape[1:]))
            chunk[clean] = x.index_select(0, rows_examples[clean])
            chunk[~clean] = p
            out.append(chunk)
        return tuple(out)


def _keyed_gaussian(xs: Tuple[Tensor, ...], n_samples: int, stdevs: Tuple[float, ...], seed: int,
                    example_offset: int):
    """Perturbations ``I = stdev * z`` (``z`` keyed by (seed, PURPOSE_INFIDELITY
    stream of input i, example, sample, element)) and the rows ``x - I``."""
    # generate_rows adds the noise to its input: from zeros it is I itself, in
    # the input dtype, exactly as a noise tensor handed to x - I would be.
    zeros = tuple(torch.zeros((), dtype=x.dtype, device=x.device).expand(x.shape) for x in xs)

    def make(examples: Tensor, r0: int, r1: int):
        noise = tuple(
            generate_rows(z, None, None, n_samples, "gaussian", s, seed, PURPOSE_INFIDELITY * 65536 + i,
                          r0, r1 - r0, example_offset)
            for i, (z, s) in enumerate(zip(zeros, stdevs))
        )
        return noise, tuple(x.index_select(0, examples) - n for x, n in zip(xs, noise))

    return make


def _user_perturbations(xs: Tuple[Tensor, ...], was_tuple: bool, baselines: Optional[Tuple[Any, ...]],
                        perturb_func: PerturbFunc):
    """Rows from Captum's ``perturb_func(inputs[, baselines]) -> (perturbations,
    perturbed_inputs)``, called on each chunk's repeated inputs (and baselines,
    a ``[B, ...]`` tensor gathered per row, anything else passed as is)."""

    def make(examples: Tensor, r0: int, r1: int):
        n = r1 - r0
        rows = tuple(x.index_select(0, examples) for x in xs)
        args: Tuple[Any, ...] = (rows if was_tuple else rows[0],)
        if baselines is not None:
            bases = tuple(
                b.index_select(0, examples) if isinstance(b, Tensor) and b.dim() == x.dim() and b.shape[0] == x.shape[0] > 1 else b
                for b, x in zip(baselines, xs)
            )
            args += (bases if was_tuple else bases[0],)
        out = perturb_func(*args)
        if not isinstance(out, tuple) or len(out) != 2:
            raise ValueError("perturb_func: expected it to return (perturbations, perturbed_inputs)")
        pert, perturbed = ((t if isinstance(t, tuple) else (t,)) for t in out)
        for what, ts in (("perturbations", pert), ("perturbed inputs", perturbed)):
            if len(ts) != len(xs) or any(
                not isinstance(t, Tensor) or t.shape != (n, *x.shape[1:]) for t, x in zip(ts, xs)
            ):
                got = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in ts]
                raise ValueError(
                    f"perturb_func: expected {what} shaped like the {n} repeated input rows "
                    f"{[(n, *x.shape[1:]) for x in xs]}, got {got}"
                )
        return pert, perturbed

    return make


def infidelity(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    n_samples: int = 10,
    stdev: Union[float, Tuple[float, ...]] = 0.1,
    normalize: bool = False,
    seed: int = 0,
    additional_forward_args: Any = None,
    baselines: Any = None,
    perturb_func: Optional[PerturbFunc] = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Infidelity of an explanation: float64 ``[B]``,
    ``mean_n (I_n . a - (f(x)[t] - f(x - I_n)[t]))**2``.

    With ``normalize``, the explanation is first scaled by Captum's optimal
    ``beta = sum_n (I_n . a) d_n / sum_n (I_n . a)**2`` (``d_n`` the output
    change; 1 when the denominator is 0).

    Args:
        model: a callable mapping the inputs (and ``additional_forward_args``)
            to ``[B, C]`` or ``[B]`` outputs.
        inputs: ``[B, *F]`` or a tuple of such tensors.
        attributions: the explanation of ``inputs``, shaped like them, or the
            explainer that makes it (a fastattr explainer or its name, a user
            callable, an :class:`Explainer`; options in ``explainer_kwargs``),
            run once on the clean inputs.
        target: None, a class, or one class per example.
        n_samples: perturbations per example (>= 1).
        stdev: standard deviation of the Gaussian perturbations ``I``, > 0, or
            one per input. ``I`` of example ``b``, sample ``n``, element ``d``
            of input ``i`` is keyed by ``(seed, PURPOSE_INFIDELITY * 65536 + i,
            b, n, d)``: the same seed gives the same values for any chunking
            or batch composition.
        perturb_func: instead of the Gaussian, Captum's
            ``perturb_func(inputs[, baselines]) -> (perturbations, perturbed_inputs)``,
            called per chunk on the chunk's rows (row ``b * n_samples + n``).
        baselines: passed to ``perturb_func`` (a ``[B, ...]`` tensor gathered per row).
        memory_budget, chunk_rows: bytes and an optional row cap per forward chunk.
        example_offset: example ``b``'s perturbations are keyed as example
            ``example_offset + b`` (its index in a data set scored batch by batch).
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        float64 ``[B]``.
    """
    check_model(model)
    check_model_form(model_form)
    xs, was_tuple = v.format_inputs(inputs)
    xs = tuple(x.detach() for x in xs)
    batch, device = xs[0].shape[0], xs[0].device
    fmt_target = v.format_target(target, batch, device)
    args = v.format_additional_args(additional_forward_args, batch)
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
    chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")
    if perturb_func is None:
        stdevs = v.check_scales(stdev, "stdev", len(xs))
        if min(stdevs) <= 0:
            raise ValueError(f"stdev: expected values > 0, got {stdev!r}")
        if baselines is not None:
            raise ValueError("baselines: only used by a perturb_func; the Gaussian perturbations take none")
        make = _keyed_gaussian(xs, n_samples, stdevs, seed, example_offset)
    else:
        if not callable(perturb_func):
            raise TypeError(f"perturb_func: expected a callable, got {type(perturb_func).__name__}")
        bases = None if baselines is None else (baselines if isinstance(baselines, tuple) else (baselines,) * len(xs))
        if bases is not None and len(bases) != len(xs):
            raise ValueError(f"baselines: expected {len(xs)} baselines (one per input), got {len(bases)}")
        make = _user_perturbations(xs, was_tuple, bases, perturb_func)
    attrs = resolve_attributions(attributions, model, xs, was_tuple, target, additional_forward_args,
                                 explainer_kwargs, memory_budget, example_offset, model_form)

    rows = _PerturbedRows(xs, attrs, n_samples, make)
    outputs = forward_rows(model, rows, batch * rows.per_example, rows.per_example, xs, fmt_target, args,
                           memory_budget, chunk_rows, model_form).view(batch, rows.per_example)
    predicted = rows.dots.view(batch, n_samples)  # I . a
    actual = outputs[:, :1] - outputs[:, 1:]  # f(x) - f(x - I)
    return infidelity_from_gaps(predicted, actual, normalize)


def infidelity_from_gaps(predicted: Tensor, actual: Tensor, normalize: bool) -> Tensor:
    """float64 ``[B]`` from the predicted and actual output changes, each
    ``[B, N]``: the mean squared gap, after Captum's optimal scale of the
    prediction when ``normalize``."""
    n = predicted.shape[1]
    if not normalize:
        return (predicted - actual).pow(2).sum(1) / n
    pp = predicted.pow(2).sum(1)
    pa = (predicted * actual).sum(1)
    aa = actual.pow(2).sum(1)
    beta = pa / torch.where(pp != 0, pp, torch.ones_like(pp))
    return (beta * beta * pp - 2 * beta * pa + aa) / n
