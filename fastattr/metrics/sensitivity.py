"""Max- and avg-sensitivity of explanations (Yeh et al. 2019, "On the
(in)fidelity and sensitivity of explanations"), and the perturbed-explanation
runner that the Lipschitz and stability metrics share.

Every perturbation metric here is: keyed perturbations ``x'`` of each example
(``csrc/README.md`` section 2, stream ``PURPOSE_PERTURBATION * 65536 + input``,
so example ``b``'s ``n``-th perturbation never depends on the batch), the
explainer evaluated at every ``x'``, and a per-sample value comparing
``(x', a(x'))`` with the clean ``(x, a(x))``, reduced over samples (max or
mean). The clean explanation is computed once (or passed in). For saliency,
input x gradient and integrated gradients the perturbed copies are folded into
the explainer's own engine plan: one chunked engine run whose per-sample
attributions go to a sink that reduces them to one number each. Any other
explainer is called on byte-budgeted chunks of perturbed rows.
"""
from __future__ import annotations

import dataclasses
import math
from numbers import Real
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..attr._call import build_request
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_PERTURBATION, Request, row_examples, run, sample_inputs, single_point_plan
from ..engine import budget as _budget
from ..engine.outputs import per_example_flags, rows_args
from ._explain import Explainer, ExplainerType

Norm = Union[str, float]
# (perturbed inputs [g, *F_i], their attributions [g, *A_i], examples int64 [g]) -> float64 [g]
SampleValue = Callable[[Tuple[Tensor, ...], Tuple[Tensor, ...], Tensor], Tensor]
# (perturbed inputs [g, *F_i], target of each row, additional args of each row,
#  example of each row int64 [g], key of the first row) -> attributions [g, *A_i].
# Row r of a chunk is the (example, sample) group keyed first_key + r: a random
# explainer keys its own draws by it, whatever the chunking.
ExplainRows = Callable[[Tuple[Tensor, ...], Any, Any, Tensor, int], Tuple[Tensor, ...]]


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """Keyed perturbations ``x' = x + shift + scale * z``: ``z`` uniform in
    ``[-1, 1)`` per element (``"uniform"``, an L-infinity ball of radius
    ``scale``) or standard normal (``"gaussian"``, stdev ``scale``)."""

    noise: str
    scales: Tuple[float, ...]  # one per input
    n_samples: int
    seed: int
    # A constant offset (Quantus's uniform noise on [low, high) and Gaussian
    # mean): the engine adds zero-centred noise, so the inputs are shifted first.
    shift: float = 0.0
    # Example b is keyed as example_offset + b (its index in a data set).
    example_offset: int = 0


def check_radius(value: Any, name: str, n_inputs: int) -> Tuple[float, ...]:
    """A finite number > 0, or one per input."""
    scales = v.check_scales(value, name, n_inputs)
    if any(s <= 0 for s in scales):
        raise ValueError(f"{name}: expected finite numbers > 0, got {value!r}")
    return scales


def check_norm(norm: Any, name: str = "norm") -> float:
    """``"fro"`` (the 2-norm of the flattened explanation, as Captum's
    ``norm_ord="fro"``) or a real order (``inf`` included) for
    :func:`torch.linalg.vector_norm`."""
    if norm == "fro":
        return 2.0
    if isinstance(norm, bool) or not isinstance(norm, Real) or math.isnan(norm):
        raise ValueError(f"{name}: expected 'fro' or a number (inf allowed), got {norm!r}")
    return float(norm)


def flat_norm(parts: Sequence[Tensor], ord: float) -> Tensor:
    """float64 ``[g]``: the ``ord``-norm of each row of ``parts`` (each
    ``[g, *F_i]``) flattened and concatenated across the tuple."""
    flat = [p.reshape(p.shape[0], -1).to(torch.float64) for p in parts]
    return torch.linalg.vector_norm(flat[0] if len(flat) == 1 else torch.cat(flat, dim=1), ord, dim=1)


def float64_copies(tensors: Sequence[Tensor]) -> List[Tensor]:
    """Each tensor in float64 (itself if it already is)."""
    return [t.to(torch.float64) for t in tensors]


def row_differences(rows: Sequence[Tensor], per_example: Sequence[Tensor], examples: Tensor) -> List[Tensor]:
    """float64 ``rows[i] - per_example[i][examples]`` (each ``[g, *F_i]``;
    ``per_example`` float64 ``[B, *F_i]``). Type promotion computes in float64
    from the rows as they are: no float64 copy of the rows is made first."""
    return [r - c.index_select(0, examples) for r, c in zip(rows, per_example)]


def rows_target(target: Union[None, int, Tensor], examples: Tensor) -> Union[None, int, Tensor]:
    """The formatted target of rows whose examples are ``examples`` (int64 ``[g]``)."""
    return target.index_select(0, examples) if isinstance(target, Tensor) else target


class PerturbedExplanations:
    """An explainer audited on one batch: the formatted call, the clean
    explanation (computed once), and per-sample values over keyed perturbations.

    Build it with :meth:`prepare` (a fastattr explainer or a user callable),
    or directly with a ``Request`` and an ``explain_rows`` callable (the
    Quantus and Captum drop-ins do, for their own calling conventions).
    """

    def __init__(self, req: Request, was_tuple: bool, clean: Tuple[Tensor, ...],
                 explain_rows: Optional[ExplainRows],
                 finish: Optional[Callable[[Tuple[Tensor, ...]], Tuple[Tensor, ...]]] = None) -> None:
        # req.plan: the explainer's engine plan when explain_rows is None,
        # else unused (rows are explained by explain_rows).
        self.req, self.was_tuple, self.clean, self.explain_rows = req, was_tuple, clean, explain_rows
        # Applied to every perturbed explanation before it is compared (e.g.
        # Quantus's normalise / abs); ``clean`` is given already finished.
        self.finish = finish

    @classmethod
    def prepare(cls, model: Callable[..., Tensor], inputs: v.TensorOrTuple, target: v.TargetType,
                explainer: ExplainerType, explainer_kwargs: Optional[Mapping[str, Any]],
                additional_forward_args: Any, attributions: Optional[v.TensorOrTuple],
                memory_budget: Optional[int], chunk_rows: Optional[int],
                example_offset: int = 0, model_form: str = "eager") -> "PerturbedExplanations":
        """Check and format the call; explain the clean inputs unless
        ``attributions`` are given (a random explainer keyed from example
        ``example_offset``). The explainer runs in ``model_form``
        (:class:`~fastattr.metrics._explain.Explainer`), and so does the
        engine plan that extends an engine-native explainer's."""
        exp = Explainer(explainer, explainer_kwargs, model_form)
        if exp.engine_name is not None:
            plan, needs_baselines, baselines = exp.plan()
        else:
            plan, needs_baselines, baselines = single_point_plan("grad"), False, None
        req, was_tuple = build_request(
            model, inputs, target, additional_forward_args, lambda xs: plan,
            memory_budget, chunk_rows, baselines=baselines, needs_baselines=needs_baselines,
            model_form=exp.model_form,
        )
        if attributions is not None:
            clean = check_attributions(attributions, req.inputs, was_tuple)
        else:
            clean = exp(req.model, req.inputs, was_tuple, target=req.target,
                        additional_forward_args=additional_forward_args, memory_budget=memory_budget,
                        example_offset=example_offset)

        def explain_rows(xs: Tuple[Tensor, ...], t: Any, args: Any, _examples: Tensor,
                         first_key: int) -> Tuple[Tensor, ...]:
            return exp(req.model, xs, was_tuple, target=t, additional_forward_args=args,
                       memory_budget=memory_budget, example_offset=first_key)

        return cls(req, was_tuple, clean, explain_rows if exp.engine_name is None else None)

    @property
    def batch(self) -> int:
        return self.req.inputs[0].shape[0]

    def sample_values(self, perturbation: Perturbation, sample_value: SampleValue,
                      needs_inputs: bool = False) -> Tensor:
        """float64 ``[B, n_samples]``: ``sample_value`` of every (example, sample).

        ``needs_inputs``: hand ``sample_value`` the perturbed inputs (on the
        engine route, the rows the engine ran when they are those, else
        remade bit-identically from their keys)."""
        req, n = self.req, perturbation.n_samples
        device = req.inputs[0].device
        total = self.batch * n
        values = torch.empty(total, dtype=torch.float64, device=device)
        inputs = req.inputs
        if perturbation.shift != 0.0:
            inputs = tuple(x + perturbation.shift for x in inputs)
        base_plan = req.plan if self.explain_rows is None else single_point_plan("grad")
        plan = dataclasses.replace(
            base_plan, n_samples=n, noise=perturbation.noise, noise_scales=perturbation.scales,
            seed=perturbation.seed, example_offset=perturbation.example_offset,
            purpose=PURPOSE_PERTURBATION,
        )
        noisy = dataclasses.replace(req, inputs=inputs, plan=plan)

        def perturbed(g0: int, g1: int) -> Tuple[Tensor, ...]:
            return tuple(sample_inputs(noisy, i, g0, g1) for i in range(len(inputs)))

        finish = self.finish or (lambda attrs: attrs)

        if total == 0:
            return values.view(self.batch, n)
        if self.explain_rows is None:
            def sink(attrs: Tuple[Tensor, ...], g0: int, g1: int,
                     groups_inputs: Callable[[], Tuple[Tensor, ...]]) -> None:
                xs = groups_inputs() if needs_inputs else ()
                values[g0:g1] = sample_value(xs, finish(attrs), row_examples(g0, g1, n, device))

            run(dataclasses.replace(noisy, sample_sink=sink))
            return values.view(self.batch, n)

        chunk = _budget.unmeasured_chunk_rows(inputs, req.memory_budget, total, req.chunk_rows)
        batched = per_example_flags(req.additional_args)
        for g0 in range(0, total, chunk):
            g1 = min(total, g0 + chunk)
            examples = row_examples(g0, g1, n, device)
            xs = perturbed(g0, g1)
            args = rows_args(req.additional_args, batched, examples, g1 - g0)
            first_key = perturbation.example_offset * n + g0
            attrs = self.explain_rows(xs, rows_target(req.target, examples), args or None, examples, first_key)
            values[g0:g1] = sample_value(xs, finish(attrs), examples)
        return values.view(self.batch, n)


def check_attributions(attributions: Any, inputs: Tuple[Tensor, ...], was_tuple: bool,
                       name: str = "attributions") -> Tuple[Tensor, ...]:
    """The caller's clean explanation: tensors shaped like the inputs, finite."""
    items = attributions if isinstance(attributions, tuple) else (attributions,)
    if isinstance(attributions, tuple) != was_tuple or len(items) != len(inputs) or any(
        not isinstance(a, Tensor) or a.shape != x.shape for a, x in zip(items, inputs)
    ):
        got = [tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__ for a in items]
        raise ValueError(
            f"{name}: expected the explanation of the inputs, shaped like them "
            f"{[tuple(x.shape) for x in inputs]}, got {got}"
        )
    for a in items:
        if not a.is_floating_point() or not v._all_finite(a):
            raise ValueError(f"{name}: expected finite floating-point values")
    return tuple(a.detach() for a in items)


def sensitivity_values(audit: PerturbedExplanations, perturbation: Perturbation, ord: float,
                       normalize: bool, ord_denominator: Optional[float] = None) -> Tensor:
    """float64 ``[B, n_samples]``: ``||a(x') - a(x)||_ord``, divided by
    ``||a(x)||_ord_denominator`` (default ``ord``) when ``normalize`` (a zero
    norm divides by 1, as Captum)."""
    clean = float64_copies(audit.clean)
    scale = None
    if normalize:
        norms = flat_norm(clean, ord if ord_denominator is None else ord_denominator)
        scale = torch.where(norms == 0, torch.ones_like(norms), norms)

    def value(_xs: Tuple[Tensor, ...], attrs: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        num = flat_norm(row_differences(attrs, clean, examples), ord)
        return num if scale is None else num / scale.index_select(0, examples)

    return audit.sample_values(perturbation, value)


def _sensitivity(model: Callable[..., Tensor], inputs: v.TensorOrTuple, target: v.TargetType,
                 explainer: ExplainerType, explainer_kwargs: Optional[Mapping[str, Any]],
                 radius: Union[float, Tuple[float, ...]], n_samples: int, norm: Norm, normalize: bool,
                 seed: int, additional_forward_args: Any, attributions: Optional[v.TensorOrTuple],
                 memory_budget: Optional[int], chunk_rows: Optional[int], example_offset: int,
                 model_form: str) -> Tensor:
    """float64 ``[B, n_samples]`` of :func:`max_sensitivity` / :func:`avg_sensitivity`."""
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    ord = check_norm(norm)
    n_inputs = len(inputs) if isinstance(inputs, tuple) else 1
    scales = check_radius(radius, "radius", n_inputs)
    audit = PerturbedExplanations.prepare(
        model, inputs, target, explainer, explainer_kwargs, additional_forward_args,
        attributions, memory_budget, chunk_rows, example_offset, model_form,
    )
    perturbation = Perturbation("uniform", scales, n_samples, seed, example_offset=example_offset)
    return sensitivity_values(audit, perturbation, ord, normalize)


def max_sensitivity(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    radius: Union[float, Tuple[float, ...]] = 0.02,
    n_samples: int = 10,
    norm: Norm = "fro",
    normalize: bool = True,
    seed: int = 0,
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Max-sensitivity: ``max_n ||a(x + d_n) - a(x)|| / ||a(x)||`` per example.

    ``d_n`` is uniform in the L-infinity ball of radius ``radius``, keyed by
    ``(seed, example, n, element)``: the same seed gives the same values for
    any batch size, chunk size or batch composition. The defaults are
    Captum's ``sensitivity_max`` (``perturb_radius=0.02``,
    ``n_perturb_samples=10``, L-infinity uniform, Frobenius norm, normalized).

    Args:
        model, inputs, target, additional_forward_args: as :func:`fastattr.saliency`
            (inputs ``[B, *F]`` or a tuple; norms are over all inputs' elements together).
        explainer: a fastattr explainer (function or name) or a callable
            ``fn(model, inputs, target=..., additional_forward_args=..., **explainer_kwargs)``
            returning attributions shaped like ``inputs``. Saliency, input x
            gradient and integrated gradients run all perturbed copies as one engine plan.
        explainer_kwargs: the explainer's options (e.g. ``{"abs": False}``, IG's ``baselines``).
        radius: L-infinity radius (> 0), or one per input.
        n_samples: perturbations per example (>= 1).
        norm: ``"fro"`` (2-norm of the flattened explanation) or a vector-norm order.
        normalize: divide by the clean explanation's norm (a zero norm by 1).
        seed: key of the perturbations (int >= 0).
        attributions: the clean explanation ``a(x)`` if already computed (shaped like ``inputs``).
        memory_budget, chunk_rows: bytes per chunk and an optional row cap.
        example_offset: example ``b``'s perturbations are keyed as example
            ``example_offset + b`` (its index in a data set scored batch by batch).
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        float64 ``[B]``.
    """
    values = _sensitivity(model, inputs, target, explainer, explainer_kwargs, radius, n_samples, norm,
                          normalize, seed, additional_forward_args, attributions, memory_budget, chunk_rows,
                          example_offset, model_form)
    return values.amax(dim=1)


def avg_sensitivity(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    radius: Union[float, Tuple[float, ...]] = 0.02,
    n_samples: int = 10,
    norm: Norm = "fro",
    normalize: bool = True,
    seed: int = 0,
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Avg-sensitivity: ``mean_n ||a(x + d_n) - a(x)|| / ||a(x)||`` per example,
    with the perturbations and arguments of :func:`max_sensitivity`.

    Returns:
        float64 ``[B]``.
    """
    values = _sensitivity(model, inputs, target, explainer, explainer_kwargs, radius, n_samples, norm,
                          normalize, seed, additional_forward_args, attributions, memory_budget, chunk_rows,
                          example_offset, model_form)
    return values.mean(dim=1)
