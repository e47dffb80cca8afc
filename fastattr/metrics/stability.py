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
from .. import ops
from ..attr.smoothgrad import check_seed
from ..engine import Request
from ..engine import budget as _budget
from ..engine.model_form import check_model_form
from ..engine.outputs import per_example_flags, rows_args
from ..engine.train_mode import train_mode_guarded
from ._explain import Explainer, ExplainerType
from .formed_model import FormedModel
from .sensitivity import (
    Perturbation, PerturbedExplanations, check_norm, check_radius, flat_norm, float64_copies,
)

# (perturbed inputs [g, *F_i], examples int64 [g]) -> float64 [g]: what the
# explanation's relative change is divided by.
Denominator = Callable[[Tuple[Tensor, ...], Tensor], Tensor]
OUTPUTS = ("logit", "probability")


def relative_squares(old: Tensor, inverse: Tensor, new: Tensor, examples: Tensor) -> Tensor:
    """float64 ``[g]``: ``sum_d ((old - new) * inverse)^2`` per row of ``new``
    ``[g, D]`` against its example's row of ``old`` / ``inverse`` (float64
    ``[B, D]``; ``examples`` int64 ``[g]``): one fused pass on every device
    (:func:`fastattr.ops.relative_squares`; ``(new - old)`` there, the same
    squares), no float64 copy of the rows."""
    return ops.relative_squares(new, old, inverse, examples)


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
    counts as ``eps_min``. The 2-norm runs fused (:func:`relative_squares`)."""
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
    if reads is None or not _forward_at_the_rows(audit):
        return audit
    # The capturing function runs the model in the request's form itself (the
    # engine would run a function as it is). Measured activation sizes stay
    # cached under the caller's model, per form.
    tag = None if req.model_form == "eager" or reads.layers else ("capturing", req.model_form)
    engine_req = dataclasses.replace(req, model=reads.capturing_model(req.model_form), model_form="eager",
                                     activation_key=req.activation_key or (req.model, tag))
    return PerturbedExplanations(engine_req, audit.was_tuple, audit.clean, None, audit.finish)


def _forward_at_the_rows(audit: PerturbedExplanations) -> bool:
    """Whether each of the engine's forwards runs the perturbed rows
    themselves: an engine-native explainer of one point per row (not a path
    method), without backward rules or layer leaves."""
    req = audit.req
    return audit.explain_rows is None and req.plan.alphas is None and req.rules is None and req.leaves is None


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
    what the explainer's own forward computed is reused when the engine ran
    exactly those rows (:meth:`capturing_model`): its outputs, and the layers'
    outputs caught by forward hooks during that forward; anything else is a
    forward of its own. Forward hooks are on the layers only while a forward runs.

    ``model_form``: the form the reads without layers run the model in
    (:mod:`fastattr.engine.model_form`). Reads of layers always run the
    caller's model as it is: the layers are its modules, which the fast
    form's copy does not call (and where the copy folds a BatchNorm into
    the convolution before it, that convolution's output does not exist there).
    """

    def __init__(self, req: Request, output: str = "logit", layers: Sequence[nn.Module] = (),
                 eps_min: float = 1e-6, model_form: str = "eager") -> None:
        self.req = req
        self.probability = output == "probability"
        self.args, self.batched = req.additional_args, per_example_flags(req.additional_args)
        self.layers = list(layers)
        self.eps_min = eps_min
        self.model_form = check_model_form(model_form)
        # The engine's last forward: (its rows, its outputs, each layer call's
        # output [n, D_k] with the version counter it had then), until used.
        self.captured: Optional[Tuple[Tensor, Tensor, List[Tuple[Tensor, int]]]] = None

    @functools.cached_property
    def _reader(self) -> Callable[..., Any]:
        """What the reads' own forwards call: the caller's model when layers
        are read, else the model in ``model_form``."""
        if self.layers:
            return self.req.model
        return FormedModel(self.req.model, self.model_form, len(self.req.inputs))

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
                                             lambda out: caught.append(out.to(torch.float64, copy=True))))
                pieces.append(caught)
        return torch.cat(outputs), [torch.cat(layer) for layer in zip(*pieces)]

    @functools.cached_property
    def predictions(self) -> Tensor:
        """int64 ``[B]``: the predicted class of each clean input."""
        return self.clean[0].argmax(-1)

    def _layer_hooks(self, n: int, on_layer: Callable[[Tensor], None]) -> List[Any]:
        """Forward hooks on the layers handing ``on_layer(out [n, D_k])`` each
        layer call's output (detached), in call order; the caller removes them."""

        def catch(module: nn.Module, _inputs: Any, out: Any) -> None:
            if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != n:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"layer_names / layer_indices: layer {type(module).__name__} returns {got}, "
                                 f"expected a tensor with {n} rows")
            on_layer(out.detach().reshape(n, -1))

        return [m.register_forward_hook(catch) for m in self.layers]

    def _forward(self, xs: Tuple[Tensor, ...], examples: Tensor, on_layer: Callable[[Tensor], None]) -> Tensor:
        """The outputs ``[n, C]`` at rows ``xs`` (each ``[n, *F_i]``) of
        examples ``examples`` (int64 ``[n]``); ``on_layer(out [n, D_k])``
        gets each layer call's output during the forward, in call order."""
        n = xs[0].shape[0]
        handles = self._layer_hooks(n, on_layer)
        try:
            with torch.no_grad():
                out = self._reader(*xs, *rows_args(self.args, self.batched, examples, n))
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
        calls = [0]

        def compare(out: Tensor) -> None:
            k = calls[0]
            if k >= len(segments) or segments[k][0].shape[1] != out.shape[1]:
                raise ValueError("layer_names / layer_indices: the layers ran differently at a perturbed input "
                                 "than at the clean one (another number or size of outputs)")
            total.add_(relative_squares(*segments[k], out, examples))
            calls[0] += 1

        captured = self._captured_at(xs)
        # A layer output changed in place later in the forward (an in-place
        # ReLU after it) no longer holds the layer's values: read anew.
        if captured is not None and all(t._version == version for t, version in captured[2]):
            for out, _ in captured[2]:
                compare(out)
            outputs = self._outputs(captured[1], n)
        else:
            outputs = self._forward(xs, examples, compare)
        if calls[0] != len(segments):
            raise ValueError("layer_names / layer_indices: the layers ran differently at a perturbed input "
                             "than at the clean one (another number or size of outputs)")
        return outputs, total

    @functools.cached_property
    def inverse_clean(self) -> List[Tuple[Tensor, Tensor]]:
        """Per layer call, ``(L(x), 1 / L(x))`` float64 ``[B, D_k]`` at the
        clean inputs (a zero element's inverse is ``1 / eps_min``)."""
        return [(old, 1 / torch.where(old == 0, self.eps_min, old)) for old in self.clean[1]]

    def capturing_model(self, model_form: str = "eager") -> Callable[..., Tensor]:
        """The model for the engine to run the explainer's rows on, keeping
        its last forward's rows and outputs (detached) for :meth:`outputs_at`
        and, with layers, the layers' outputs for :meth:`read` (caught by
        hooks during that forward). It runs in ``model_form`` without layers;
        with layers, as it is (see the class)."""
        model = self.req.model
        run = model if self.layers else FormedModel(model, model_form, len(self.req.inputs))

        def forward(*args: Any) -> Tensor:
            caught: List[Tuple[Tensor, int]] = []
            handles = self._layer_hooks(args[0].shape[0], lambda out: caught.append((out, out._version)))
            try:
                out = run(*args)
            finally:
                for h in handles:
                    h.remove()
            if isinstance(out, Tensor):
                self.captured = (args[0], out.detach(), caught)
            return out

        forward.model = model  # type: ignore[attr-defined]  # the engine finds the module behind it
        return forward

    def _captured_at(self, xs: Tuple[Tensor, ...]) -> Optional[Tuple[Tensor, Tensor, List[Tuple[Tensor, int]]]]:
        """What the engine's last forward kept, when it ran exactly rows ``xs``
        (else None); used once."""
        captured, self.captured = self.captured, None
        x = xs[0]
        if captured is not None and captured[0].data_ptr() == x.data_ptr() and captured[0].shape == x.shape \
                and captured[0].stride() == x.stride():
            return captured
        return None

    def outputs_at(self, xs: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        """The outputs ``[n, C]`` at rows ``xs``: those of the engine's last
        forward when it ran exactly these rows, else read."""
        captured = self._captured_at(xs)
        if captured is not None:
            return self._outputs(captured[1], xs[0].shape[0])
        return self._forward(xs, examples, lambda out: None)

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
             example_offset: int, model_form: str) -> Tuple[PerturbedExplanations, Perturbation, float]:
    """Check everything (before any compute), explain the clean inputs (in
    ``model_form``), and return the audit, the keyed L-infinity perturbations
    and ``eps_min``."""
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_seed(seed)
    check_model_form(model_form)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    eps = _check_eps_min(eps_min)
    scales = check_radius(radius, "radius", len(inputs) if isinstance(inputs, tuple) else 1)
    audit = PerturbedExplanations.prepare(
        model, inputs, target, explainer, explainer_kwargs, additional_forward_args,
        attributions, memory_budget, chunk_rows, example_offset, model_form,
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
    model_form: str = "fast",
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
        model_form: as :func:`fastattr.saliency` (the form the model's rows run
            in): the explainer's rows (unless ``explainer_kwargs`` sets its
            own) and the metric's reads of the model's outputs.

    Returns:
        float64 ``[B]``.
    """
    ord = check_norm(norm)
    audit, perturbation, eps = _prepare(model, inputs, target, explainer, explainer_kwargs, radius, n_samples,
                                        eps_min, seed, additional_forward_args, attributions, memory_budget,
                                        chunk_rows, example_offset, model_form)
    den, reads = input_change(audit, eps, ord), None
    if nan_when_prediction_changes:
        reads = ModelReads(audit.req, model_form=model_form)
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
    model_form: str = "fast",
) -> Tensor:
    """Relative output stability: ``max_n ||(a - a_n) / a||_2 / max(||h(x) - h(x_n)||_2, eps_min)``
    per example, ``h`` the model's ``[B, C]`` outputs.

    Perturbations and arguments as :func:`relative_input_stability`; the
    model is read once more at each perturbed row (no gradient), on the
    rows the explainer just ran.

    Args:
        output: ``"logit"`` (the model's outputs) or ``"probability"`` (their softmax).
        nan_when_prediction_changes, model_form: as :func:`relative_input_stability`.

    Returns:
        float64 ``[B]``.
    """
    v.check_choice(output, "output", OUTPUTS)
    audit, perturbation, eps = _prepare(model, inputs, target, explainer, explainer_kwargs, radius, n_samples,
                                        eps_min, seed, additional_forward_args, attributions, memory_budget,
                                        chunk_rows, example_offset, model_form)
    reads = ModelReads(audit.req, output, model_form=model_form)
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
    model_form: str = "fast",
) -> Tensor:
    """Relative representation stability:
    ``max_n ||(a - a_n) / a||_2 / max(||(L(x) - L(x_n)) / L(x)||_2, eps_min)``
    per example, ``L`` the outputs of the chosen layers, flattened and joined.

    Layers are chosen as Quantus does, among ``model.named_modules()`` but
    the model's own class and ``nn.Sequential`` containers: by name, or by
    position in that list (negative from its end); neither: all of them.
    Their outputs are caught by forward hooks, removed after each forward:
    with saliency and input x gradient, during the forward that explains the
    perturbed rows (one forward per row serves both); with any other
    explainer, in a forward of their own.

    Args:
        model: an ``nn.Module``.
        layer_names, layer_indices: the layers (at most one of the two).
        inputs, target, explainer, explainer_kwargs, radius, n_samples,
            eps_min, seed, additional_forward_args, attributions,
            memory_budget, chunk_rows, example_offset,
            nan_when_prediction_changes: as :func:`relative_input_stability`.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run
            in), for the explainer's rows where they are not read for the
            layers too. Forwards that read the layers run the caller's model
            as it is, whatever the form: the hooks are on its modules, which
            the fast form's copy does not call, and where that copy folds a
            BatchNorm into the convolution before it, the convolution's output
            does not exist there. So with saliency and input x gradient
            (whose perturbed rows are read for the layers in their own
            forward) every row runs eager, the clean explanation included
            (whatever ``explainer_kwargs`` says); with other explainers their
            rows run in ``model_form``.

    Returns:
        float64 ``[B]``.
    """
    layers = representation_layers(model, layer_names, layer_indices)
    check_model_form(model_form)
    # Rows whose forward also reads the layers run the caller's model as it
    # is (ModelReads); the clean explanation then does too, so that the
    # explanations compared come from one function.
    explained_form = model_form
    if _explained_at_the_rows(explainer, explainer_kwargs):
        explained_form = "eager"
        explainer_kwargs = {k: a for k, a in (explainer_kwargs or {}).items() if k != "model_form"}
    audit, perturbation, eps = _prepare(model, inputs, target, explainer, explainer_kwargs, radius, n_samples,
                                        eps_min, seed, additional_forward_args, attributions, memory_budget,
                                        chunk_rows, example_offset, explained_form)
    reads = ModelReads(audit.req, layers=layers, eps_min=eps, model_form=model_form)
    den = representation_change(reads, nan_when_prediction_changes)
    return relative_stability_values(audit, perturbation, eps, den, reads=reads).amax(dim=1)


def _explained_at_the_rows(explainer: ExplainerType, explainer_kwargs: Optional[Mapping[str, Any]]) -> bool:
    """Whether the explainer's engine forwards run the perturbed rows
    themselves (:func:`_forward_at_the_rows`: saliency, input x gradient);
    the explainer and its options checked as the metric's audit checks them."""
    exp = Explainer(explainer, explainer_kwargs)
    return exp.engine_name is not None and exp.plan()[0].alphas is None
