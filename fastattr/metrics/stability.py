"""Relative input, output and representation stability of an explanation
(Agarwal et al. 2022, "Rethinking stability for attribution-based
explanations").

Each compares, for keyed perturbations ``x'`` of an example ``x``, the
relative change of the explanation ``||(a - a') / a||`` with a change of
what the model sees or computes: the relative input change
``||(x - x') / x||`` (RIS), the change of the model's outputs
``||h(x) - h(x')||`` (ROS), or the relative change of an internal layer's
representation ``||(L(x) - L(x')) / L(x)||`` (RRS). The perturbed
explanations run as in :mod:`fastattr.metrics.sensitivity` (one engine plan
for saliency, input x gradient and integrated gradients); what the metric
reads of the model at the perturbed rows (outputs, a layer's activations
caught by forward hooks that are removed again) is read chunk by chunk, on
the rows the explainer just ran.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from numbers import Integral, Real
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..engine import Request
from ..engine import budget as _budget
from ..engine.outputs import per_example_flags, rows_args
from ..engine.train_mode import train_mode_guarded
from ._explain import ExplainerType
from .sensitivity import (
    Perturbation, PerturbedExplanations, check_norm, check_radius, flat_norm, float64_copies,
)

# (perturbed inputs [g, *F_i], examples int64 [g]) -> float64 [g]: what the
# explanation's relative change is divided by.
Denominator = Callable[[Tuple[Tensor, ...], Tensor], Tensor]
OUTPUTS = ("logit", "probability")


# Values per block of relative_squares on the CPU (8 MiB of float64): a
# block's temporaries stay near the cache (measured 4-9x faster than
# whole-chunk temporaries for 1,600 rows of a 16,384-value layer); small
# rows make one block, without Python work per block.
_BLOCK_VALUES = 1 << 20


def relative_squares(old: Tensor, inverse: Tensor, new: Tensor, examples: Tensor) -> Tensor:
    """float64 ``[g]``: ``sum_d ((old - new) * inverse)^2`` per row of ``new``
    ``[g, D]`` against its example's row of ``old`` / ``inverse`` (float64
    ``[B, D]``; ``examples`` int64 ``[g]``, example-major). On the CPU in
    blocks of rows, and a block of one example's rows broadcasts that
    example's row instead of gathering it per row."""
    if new.device.type != "cpu":
        return ((old.index_select(0, examples) - new) * inverse.index_select(0, examples)).square().sum(1)
    g = new.shape[0]
    total = torch.empty(g, dtype=torch.float64)
    rows_example = examples.tolist()
    block = max(1, _BLOCK_VALUES // max(1, new.shape[1]))
    for r0 in range(0, g, block):
        r1 = min(g, r0 + block)
        first, last = rows_example[r0], rows_example[r1 - 1]
        if first == last:
            o, i = old[first], inverse[first]
        else:
            o, i = old.index_select(0, examples[r0:r1]), inverse.index_select(0, examples[r0:r1])
        total[r0:r1] = (o - new[r0:r1]).mul_(i).square_().sum(1)
    return total


def _relative_change(new: Sequence[Tensor], old: Sequence[Tensor], examples: Tensor,
                     eps_min: float) -> Tuple[Tensor, ...]:
    """float64 ``(old - new) / old`` per element (``old`` float64, one row
    per example, gathered per row), a zero ``old`` counted as ``eps_min``
    (Quantus's guard against division by 0)."""
    out = []
    for n, o in zip(new, old):
        o = o.index_select(0, examples)
        out.append((o - n) / torch.where(o == 0, eps_min, o))
    return tuple(out)


def relative_norm(references: Sequence[Tensor], eps_min: float,
                  ord: float) -> Callable[[Sequence[Tensor], Tensor], Tensor]:
    """``f(rows, examples) -> float64 [g]``: ``||(x - x') / x||_ord`` of rows
    ``x'`` (each ``[g, *F_i]``) against their examples' ``references``
    (each ``[B, *F_i]``), over all parts together; a zero ``x`` element
    counts as ``eps_min``. The 2-norm runs blockwise (:func:`relative_squares`)."""
    olds = float64_copies(references)
    if ord != 2.0:
        return lambda rows, examples: flat_norm(_relative_change(rows, olds, examples, eps_min), ord)
    flat = [o.reshape(o.shape[0], -1) for o in olds]
    pairs = [(o, 1 / torch.where(o == 0, eps_min, o)) for o in flat]

    def norm(rows: Sequence[Tensor], examples: Tensor) -> Tensor:
        squares = [relative_squares(o, i, r.reshape(r.shape[0], -1), examples) for (o, i), r in zip(pairs, rows)]
        return (squares[0] if len(squares) == 1 else torch.stack(squares).sum(0)).sqrt()

    return norm


def relative_stability_values(audit: PerturbedExplanations, perturbation: Perturbation, eps_min: float,
                              denominator: Denominator, floor_denominator: bool = True,
                              ord: float = 2.0, reads: Optional["ModelReads"] = None) -> Tensor:
    """float64 ``[B, n_samples]``: ``||(a - a') / a||_ord / d(x')`` per (example, sample).

    ``floor_denominator``: divide by ``max(d, eps_min)`` (True), or by
    ``eps_min`` only where ``d == 0`` (Quantus's ``d += (d == 0) * eps_min``).
    A NaN ``d`` (a changed prediction) makes the value NaN. ``reads``: the
    model reads the denominator makes; on the engine route, the outputs of
    the explainer's own forward at each perturbed row are handed to them."""
    explanation_change = relative_norm(audit.clean, eps_min, ord)

    def value(perturbed: Tuple[Tensor, ...], attrs: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        num = explanation_change(attrs, examples)
        den = denominator(perturbed, examples)
        den = den.clamp_min(eps_min) if floor_denominator else torch.where(den == 0, eps_min, den)
        return num / den

    # The engine restores train-mode buffers around its own passes; the
    # model reads in the denominators run between them, so the whole call is guarded.
    with train_mode_guarded(audit.req.model):
        return _capturing(audit, reads).sample_values(perturbation, value, needs_inputs=True)


def _capturing(audit: PerturbedExplanations, reads: Optional["ModelReads"]) -> PerturbedExplanations:
    """``audit`` with its engine plan run on ``reads.capturing_model()`` when
    each chunk's forward is at the perturbed rows themselves (single-point
    plans, no backward rules), so that ``reads`` need not run them again."""
    req = audit.req
    if reads is None or audit.explain_rows is not None or req.plan.alphas is not None or req.rules is not None \
            or req.leaves is not None:
        return audit
    # Measured activation sizes stay cached under the caller's model.
    engine_req = dataclasses.replace(req, model=reads.capturing_model(),
                                     activation_key=req.activation_key or (req.model, None))
    return PerturbedExplanations(engine_req, audit.was_tuple, audit.clean, None, audit.finish)


def input_change(audit: PerturbedExplanations, eps_min: float, ord: float = 2.0) -> Denominator:
    """The relative input change ``||(x - x') / x||_ord`` (RIS's denominator)."""
    return relative_norm(audit.req.inputs, eps_min, ord)


def stability_values(audit: PerturbedExplanations, perturbation: Perturbation, ord: float,
                     eps_min: float, floor_denominator: bool = True) -> Tensor:
    """float64 ``[B, n_samples]``:
    ``||(a - a') / a||_ord / max(||(x - x') / x||_ord, eps_min)`` (see
    :func:`relative_stability_values` for ``floor_denominator``)."""
    return relative_stability_values(audit, perturbation, eps_min, input_change(audit, eps_min, ord),
                                      floor_denominator, ord)


# -- what the metrics read of the model ---------------------------------------


def hidden_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Quantus's candidate layers for an internal representation:
    ``named_modules()`` but the model's own class and ``nn.Sequential``
    containers, in ``named_modules()`` order."""
    return [(name, m) for name, m in model.named_modules()
            if not isinstance(m, (type(model), nn.Sequential))]


def representation_layers(model: Any, layer_names: Optional[Sequence[str]],
                          layer_indices: Optional[Sequence[int]]) -> List[nn.Module]:
    """The modules whose outputs form the representation: those of
    :func:`hidden_layers` named in ``layer_names`` or at ``layer_indices``
    (positions in that list, negative from its end); both None: all of them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module (its layers' outputs are read), got {type(model).__name__}")
    if layer_names is not None and layer_indices is not None:
        raise ValueError("layer_names, layer_indices: pass one of them, not both")
    hidden = hidden_layers(model)
    if not hidden:
        raise ValueError("model: has no layer whose output could be read (only containers)")
    if layer_names is None and layer_indices is None:
        return [m for _, m in hidden]
    if layer_names is not None:
        names = list(layer_names) if not isinstance(layer_names, str) else [layer_names]
        known = {n for n, _ in hidden}
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            raise ValueError(f"layer_names: expected names of the model's layers {sorted(known)}, unknown: {unknown}")
        chosen = set(names)
        return [m for n, m in hidden if n in chosen]
    indices = list(layer_indices)
    bad = [i for i in indices
           if isinstance(i, bool) or not isinstance(i, Integral) or not -len(hidden) <= i < len(hidden)]
    if not indices or bad:
        raise ValueError(f"layer_indices: expected positions in the model's {len(hidden)} layers, got {bad or indices}")
    chosen_at = {int(i) % len(hidden) for i in indices}
    return [m for j, (_, m) in enumerate(hidden) if j in chosen_at]


class ModelReads:
    """What a stability metric reads of the model, under ``no_grad``: its
    outputs (``[n, C]``; probabilities with ``output="probability"``) and,
    with ``layers``, the relative change of its internal representation
    (every output of those layers, in call order) from the clean inputs'.

    The clean inputs are read once, when first needed. At perturbed rows,
    the outputs of the explainer's own forward are reused when the engine
    ran exactly those rows (:meth:`capturing_model`); anything else is a
    forward of its own. Forward hooks are on the layers only while a read runs.
    """

    def __init__(self, req: Request, output: str = "logit", layers: Sequence[nn.Module] = (),
                 eps_min: float = 1e-6) -> None:
        self.req = req
        self.probability = output == "probability"
        self.args, self.batched = req.additional_args, per_example_flags(req.additional_args)
        self.layers = list(layers)
        self.eps_min = eps_min
        # (rows the engine's last forward ran, its outputs), until used
        self.captured: Optional[Tuple[Tensor, Tensor]] = None

    @functools.cached_property
    def clean(self) -> Tuple[Tensor, List[Tensor]]:
        """``(outputs [B, C], representation)`` at the clean inputs, read in
        chunks: the representation is one float64 ``[B, D_k]`` per layer call."""
        req = self.req
        batch, device = req.inputs[0].shape[0], req.inputs[0].device
        chunk = _budget.unmeasured_chunk_rows(req.inputs, req.memory_budget, batch, req.chunk_rows)
        outputs: List[Tensor] = []
        pieces: List[List[Tensor]] = []
        with train_mode_guarded(req.model):
            for e0 in range(0, batch, chunk):
                caught: List[Tensor] = []
                outputs.append(self._forward(tuple(x[e0:e0 + chunk] for x in req.inputs),
                                             torch.arange(e0, min(batch, e0 + chunk), device=device),
                                             lambda k, out: caught.append(out.to(torch.float64, copy=True))))
                pieces.append(caught)
        return torch.cat(outputs), [torch.cat(layer) for layer in zip(*pieces)]

    @functools.cached_property
    def predictions(self) -> Tensor:
        """int64 ``[B]``: the predicted class of each clean input."""
        return self.clean[0].argmax(-1)

    def _forward(self, xs: Tuple[Tensor, ...], examples: Tensor,
                 on_layer: Callable[[int, Tensor], None]) -> Tensor:
        """The outputs ``[n, C]`` at rows ``xs`` (each ``[n, *F_i]``) of
        examples ``examples`` (int64 ``[n]``); ``on_layer(k, out [n, D_k])``
        gets the ``k``-th layer output of the forward."""
        n = xs[0].shape[0]
        calls = [0]

        def catch(module: nn.Module, _inputs: Any, out: Any) -> None:
            if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != n:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"layer_names / layer_indices: layer {type(module).__name__} returns {got}, "
                                 f"expected a tensor with {n} rows")
            on_layer(calls[0], out.detach().reshape(n, -1))
            calls[0] += 1

        handles = [m.register_forward_hook(catch) for m in self.layers]
        try:
            with torch.no_grad():
                out = self.req.model(*xs, *rows_args(self.args, self.batched, examples, n))
        finally:
            for h in handles:
                h.remove()
        return self._outputs(out, n)

    def _outputs(self, out: Any, n: int) -> Tensor:
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"model output: expected [n, C] class scores (one row per input row), got {shape}")
        out = out.detach()
        return torch.softmax(out, dim=1) if self.probability else out

    def read(self, xs: Tuple[Tensor, ...], examples: Tensor) -> Tuple[Tensor, Tensor]:
        """``(outputs [n, C], squared relative representation change float64 [n])``
        at rows ``xs`` of examples ``examples``: the change
        ``sum ((L(x) - L(x')) / L(x))^2`` is added up layer call by layer call
        (a zero clean element divides by ``eps_min``); 0 without layers."""
        n = xs[0].shape[0]
        segments = self.inverse_clean if self.layers else []
        total = torch.zeros(n, dtype=torch.float64, device=xs[0].device)

        def compare(k: int, out: Tensor) -> None:
            if k >= len(segments) or segments[k][0].shape[1] != out.shape[1]:
                raise ValueError("layer_names / layer_indices: the layers ran differently at a perturbed input "
                                 "than at the clean one (another number or size of outputs)")
            total.add_(relative_squares(*segments[k], out, examples))

        return self._forward(xs, examples, compare), total

    @functools.cached_property
    def inverse_clean(self) -> List[Tuple[Tensor, Tensor]]:
        """Per layer call, ``(L(x), 1 / L(x))`` float64 ``[B, D_k]`` at the
        clean inputs (a zero element's inverse is ``1 / eps_min``)."""
        return [(old, 1 / torch.where(old == 0, self.eps_min, old)) for old in self.clean[1]]

    def capturing_model(self) -> Callable[..., Tensor]:
        """The model, keeping its last forward's rows and outputs (detached)
        for :meth:`outputs_at`: give it to the engine in the model's place."""
        model = self.req.model

        def forward(*args: Any) -> Tensor:
            out = model(*args)
            if isinstance(out, Tensor):
                self.captured = (args[0], out.detach())
            return out

        forward.model = model  # type: ignore[attr-defined]  # the engine finds the module behind it
        return forward

    def outputs_at(self, xs: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        """The outputs ``[n, C]`` at rows ``xs``: those of the engine's last
        forward when it ran exactly these rows, else read."""
        captured, self.captured = self.captured, None
        x = xs[0]
        if captured is not None and captured[0].data_ptr() == x.data_ptr() and captured[0].shape == x.shape \
                and captured[0].stride() == x.stride():
            return self._outputs(captured[1], x.shape[0])
        return self._forward(xs, examples, lambda k, out: None)

    def unchanged_or_nan(self, den: Tensor, outputs: Tensor, examples: Tensor) -> Tensor:
        """``den`` (float64 ``[g]``), NaN where the predicted class at the
        rows (``outputs [g, C]``) differs from the clean input's."""
        changed = outputs.argmax(-1) != self.predictions.index_select(0, examples)
        return torch.where(changed, torch.nan, den)


def output_change(reads: ModelReads, nan_when_prediction_changes: bool) -> Denominator:
    """``||h(x) - h(x')||_2`` over the model's outputs (ROS's denominator)."""
    clean = reads.clean[0].to(torch.float64)

    def den(perturbed: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        outputs = reads.outputs_at(perturbed, examples)
        d = flat_norm((outputs - clean.index_select(0, examples),), 2.0)
        return reads.unchanged_or_nan(d, outputs, examples) if nan_when_prediction_changes else d

    return den


def representation_change(reads: ModelReads, nan_when_prediction_changes: bool) -> Denominator:
    """``||(L(x) - L(x')) / L(x)||_2`` over the representation (RRS's denominator)."""

    def den(perturbed: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        outputs, squared = reads.read(perturbed, examples)
        d = squared.sqrt()
        return reads.unchanged_or_nan(d, outputs, examples) if nan_when_prediction_changes else d

    return den


def nan_where_prediction_changes(reads: ModelReads, den: Denominator) -> Denominator:
    """``den``, NaN where the perturbation changed the predicted class."""

    def changed(perturbed: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        outputs = reads.outputs_at(perturbed, examples)
        return reads.unchanged_or_nan(den(perturbed, examples), outputs, examples)

    return changed


# -- the functions ----------------------------------------------------------------


def _check_eps_min(eps_min: Any) -> float:
    if isinstance(eps_min, bool) or not isinstance(eps_min, Real) or not math.isfinite(eps_min) or eps_min <= 0:
        raise ValueError(f"eps_min: expected a finite number > 0, got {eps_min!r}")
    return float(eps_min)


def _prepare(model: Callable[..., Tensor], inputs: v.TensorOrTuple, target: v.TargetType,
             explainer: ExplainerType, explainer_kwargs: Optional[Mapping[str, Any]], radius: Any,
             n_samples: int, eps_min: Any, seed: int, additional_forward_args: Any,
             attributions: Optional[v.TensorOrTuple], memory_budget: Optional[int], chunk_rows: Optional[int],
             example_offset: int) -> Tuple[PerturbedExplanations, Perturbation, float]:
    """Check everything (before any compute), explain the clean inputs, and
    return the audit, the keyed L-infinity perturbations and ``eps_min``."""
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    eps = _check_eps_min(eps_min)
    scales = check_radius(radius, "radius", len(inputs) if isinstance(inputs, tuple) else 1)
    audit = PerturbedExplanations.prepare(
        model, inputs, target, explainer, explainer_kwargs, additional_forward_args,
        attributions, memory_budget, chunk_rows, example_offset,
    )
    return audit, Perturbation("uniform", scales, n_samples, seed, example_offset=example_offset), eps


def relative_input_stability(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    radius: Union[float, Tuple[float, ...]] = 0.02,
    n_samples: int = 10,
    norm: Union[str, float] = 2.0,
    eps_min: float = 1e-6,
    seed: int = 0,
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    nan_when_prediction_changes: bool = False,
) -> Tensor:
    """Relative input stability: ``max_n ||(a - a_n) / a||_p / max(||(x - x_n) / x||_p, eps_min)``
    per example (elementwise ratios; a zero ``a`` or ``x`` element divides by ``eps_min``).

    ``x_n`` is uniform in the L-infinity ball of radius ``radius`` around
    ``x``, keyed by ``(seed, example, n, element)`` as in
    :func:`fastattr.metrics.max_sensitivity` (same keys, same perturbations).

    Args:
        model, inputs, target, additional_forward_args, explainer,
            explainer_kwargs, radius, n_samples, seed, attributions,
            memory_budget, chunk_rows, example_offset: as :func:`fastattr.metrics.max_sensitivity`.
        norm: ``p`` (default 2; ``"fro"`` is 2), over all inputs' elements together.
        eps_min: floor of the input change and stand-in for zero elements (> 0).
        nan_when_prediction_changes: a sample whose perturbation changes the
            model's predicted class (argmax of ``[B, C]`` outputs) is NaN, and
            so is the example's value (Quantus's default).

    Returns:
        float64 ``[B]``.
    """
    ord = check_norm(norm)
    audit, perturbation, eps = _prepare(model, inputs, target, explainer, explainer_kwargs, radius, n_samples,
                                        eps_min, seed, additional_forward_args, attributions, memory_budget,
                                        chunk_rows, example_offset)
    den, reads = input_change(audit, eps, ord), None
    if nan_when_prediction_changes:
        reads = ModelReads(audit.req)
        den = nan_where_prediction_changes(reads, den)
    return relative_stability_values(audit, perturbation, eps, den, True, ord, reads).amax(dim=1)


def relative_output_stability(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    radius: Union[float, Tuple[float, ...]] = 0.02,
    n_samples: int = 10,
    eps_min: float = 1e-6,
    seed: int = 0,
    output: str = "logit",
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    nan_when_prediction_changes: bool = False,
) -> Tensor:
    """Relative output stability: ``max_n ||(a - a_n) / a||_2 / max(||h(x) - h(x_n)||_2, eps_min)``
    per example, ``h`` the model's ``[B, C]`` outputs.

    Perturbations and arguments as :func:`relative_input_stability`; the
    model is read once more at each perturbed row (no gradient), on the
    rows the explainer just ran.

    Args:
        output: ``"logit"`` (the model's outputs) or ``"probability"`` (their softmax).
        nan_when_prediction_changes: as :func:`relative_input_stability`.

    Returns:
        float64 ``[B]``.
    """
    v.check_choice(output, "output", OUTPUTS)
    audit, perturbation, eps = _prepare(model, inputs, target, explainer, explainer_kwargs, radius, n_samples,
                                        eps_min, seed, additional_forward_args, attributions, memory_budget,
                                        chunk_rows, example_offset)
    reads = ModelReads(audit.req, output)
    den = output_change(reads, nan_when_prediction_changes)
    return relative_stability_values(audit, perturbation, eps, den, reads=reads).amax(dim=1)


def relative_representation_stability(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    layer_names: Optional[Sequence[str]] = None,
    layer_indices: Optional[Sequence[int]] = None,
    radius: Union[float, Tuple[float, ...]] = 0.02,
    n_samples: int = 10,
    eps_min: float = 1e-6,
    seed: int = 0,
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    nan_when_prediction_changes: bool = False,
) -> Tensor:
    """Relative representation stability:
    ``max_n ||(a - a_n) / a||_2 / max(||(L(x) - L(x_n)) / L(x)||_2, eps_min)``
    per example, ``L`` the outputs of the chosen layers, flattened and joined.

    Layers are chosen as Quantus does, among ``model.named_modules()`` but
    the model's own class and ``nn.Sequential`` containers: by name, or by
    position in that list (negative from its end); neither: all of them.
    Their outputs are caught by forward hooks that are removed after each read.

    Args:
        model: an ``nn.Module``.
        layer_names, layer_indices: the layers (at most one of the two).
        inputs, target, explainer, explainer_kwargs, radius, n_samples,
            eps_min, seed, additional_forward_args, attributions,
            memory_budget, chunk_rows, example_offset,
            nan_when_prediction_changes: as :func:`relative_input_stability`.

    Returns:
        float64 ``[B]``.
    """
    layers = representation_layers(model, layer_names, layer_indices)
    audit, perturbation, eps = _prepare(model, inputs, target, explainer, explainer_kwargs, radius, n_samples,
                                        eps_min, seed, additional_forward_args, attributions, memory_budget,
                                        chunk_rows, example_offset)
    den = representation_change(ModelReads(audit.req, layers=layers, eps_min=eps), nan_when_prediction_changes)
    return relative_stability_values(audit, perturbation, eps, den).amax(dim=1)
