"""ROAD, RemOve And Debias (Rong et al. 2022), as Quantus 0.6's ``ROAD``:
for each percentage ``p``, the ``int(H * W * p / 100)`` pixels with the
largest attributions are replaced by their noisy linear imputation
(:mod:`fastattr.metrics.imputation`), and the model's top class on the
imputed image is compared with the target class.

Every (example, percentage) pair is one generated row, ``b * P + i``: the
imputation is solved for a chunk of rows at once, inside
:func:`fastattr.engine.forward_rows`, so the rows are never all in memory
and the model runs on as many rows as the budget allows. The imputation
noise is keyed by ``(seed, ROAD_NOISE_STREAM, example, percentage index,
element)``, so a row does not depend on its batch or chunk.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from .. import ops
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_PERTURBATION, forward_rows, row_examples
from ..engine import budget as _budget
from .deletion import prepare_curve_call, descending_order, ranks_of
from .imputation import DEFAULT_TOL, check_tol, noisy_linear_imputation
from .infidelity import AttributionsOrExplainer
from .ordering import check_order

# The imputation noise: a sub-stream of the perturbation purpose above every per-input stream
# (< 32768), pixel flipping's (32768), the faithfulness metrics' (32768 + 0 .. 95) and the axiomatic
# ones' (32768 + 96, 97).
ROAD_NOISE_STREAM = PURPOSE_PERTURBATION * 65536 + 32768 + 98
DEFAULT_PERCENTAGES = tuple(range(1, 100, 2))
# Float64 copies of a row the imputation's conjugate gradients hold at once.
_SOLVER_ROW_COPIES = 12


def removed_counts(percentages: Sequence[Any], n_pixels: int) -> Tuple[int, ...]:
    """Pixels removed at each percentage, ``int(n_pixels * p / 100)`` as
    Quantus; each ``p`` a number in ``[0, 100)`` (at least one pixel stays)."""
    if isinstance(percentages, (str, bytes)) or not hasattr(percentages, "__iter__"):
        raise TypeError(f"percentages: expected a sequence of numbers in [0, 100), got {percentages!r}")
    percentages = list(percentages)
    if not percentages:
        raise ValueError("percentages: expected at least one percentage")
    for p in percentages:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 100:
            raise ValueError(f"percentages: expected numbers in [0, 100), got {p!r}")
    return tuple(int(n_pixels * p / 100) for p in percentages)


class TopClassIs:
    """A model whose output per row is 1.0 where the top class of
    ``model(rows, *args)`` ``[n, C]`` (the first on ties, as ``argmax``) is
    the row's class, else 0.0: ``[n, 1]``."""

    def __init__(self, model: Callable[..., Tensor]):
        self.model = model  # the engine finds the caller's module behind it (train mode)

    def __call__(self, rows: Tensor, classes: Tensor, *args: Any) -> Tensor:
        out = self.model(rows, *args)
        if not isinstance(out, Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"model: ROAD compares top classes and needs [n, C] outputs, got {shape}")
        return (out.argmax(dim=1) == classes).to(torch.float64).unsqueeze(1)


class ImputedRows:
    """``rows_for`` of :func:`forward_rows`: row ``b * P + i`` is ``x[b]`` with
    its pixels of rank ``< counts[i]`` imputed, plus keyed Gaussian noise of
    stdev ``noise`` there."""

    def __init__(self, x: Tensor, ranks: Tensor, counts: Tensor, noise: float, seed: int, example_offset: int,
                 tol: float):
        self.x, self.ranks, self.counts = x, ranks, counts  # [B, C, H, W], [B, H * W], int64 [P]
        self.noise, self.seed, self.example_offset, self.tol = noise, seed, example_offset, tol
        self.points = counts.shape[0]
        self.zeros = torch.zeros(x.shape, dtype=torch.float64, device=x.device) if noise else None

    def __call__(self, r0: int, r1: int) -> Tuple[Tensor]:
        n = r1 - r0
        b, c, h, w = self.x.shape
        examples = row_examples(r0, r1, self.points, self.x.device)
        points = torch.arange(r0, r1, device=self.x.device) % self.points
        mask = (self.ranks.index_select(0, examples) < self.counts.index_select(0, points).unsqueeze(1)).view(n, h, w)
        noise = None
        if self.zeros is not None:
            noise = ops.generate_rows(self.zeros, None, None, self.points, "gaussian", self.noise, self.seed,
                                      ROAD_NOISE_STREAM, r0, n, self.example_offset)
        return (noisy_linear_imputation(self.x.index_select(0, examples), mask, noise, self.tol),)


def road(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType,
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
    noise: float = 0.01,
    output: str = "probability",
    seed: int = 0,
    order: Optional[Tensor] = None,
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Any] = None,
    tol: float = DEFAULT_TOL,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Whether the model still predicts the target class after the most
    important pixels are removed by noisy linear imputation, per example and
    percentage (ROAD's MoRF curve, Quantus's ``ROAD`` before it averages
    over examples).

    Args:
        model: maps ``[n, C, H, W]`` (and ``additional_forward_args``) to ``[n, classes]``.
        inputs: images ``[B, C, H, W]``.
        attributions: one value per pixel, ``[B, 1, H, W]``, or the
            explainer that makes them (options in ``explainer_kwargs``). Ties
            are removed in pixel order (a stable sort); ``order`` overrides.
        target: the class of each example (an int or int64 ``[B]``).
        percentages: numbers in ``[0, 100)``; at ``p`` the ``int(H W p / 100)``
            pixels of highest attribution are imputed (Quantus's
            ``range(1, 100, 2)`` by default).
        noise: stdev of the Gaussian noise added to imputed pixels (>= 0),
            keyed by ``(seed, ROAD_NOISE_STREAM, example_offset + b,
            percentage index, element)``.
        output: ``"probability"`` (top class of the softmax, Quantus's
            ``softmax=True``) or ``"logit"``.
        order: int64 ``[B, H * W]``, the pixel order to use instead of the
            attributions' (e.g. NumPy's ``argsort`` to reproduce Quantus's tie order).
        tol: relative residual of the imputation's linear solves
            (:func:`fastattr.metrics.imputation.linear_imputation`).
        memory_budget, chunk_rows: bytes and an optional row cap per chunk
            (the imputation's float64 solves count in the budget).
        example_offset: example ``b``'s noise (and a random explainer's
            draws) are keyed as example ``example_offset + b``.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        float64 ``[B, P]``: 1.0 where the top class of the imputed image is
        the target, else 0.0.
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    check_seed(seed)
    (noise,) = v.check_scales(noise, "noise", 1)
    tol = check_tol(tol)
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError(f"inputs: ROAD imputes pixels of images [B, C, H, W], got "
                         f"{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}")
    if target is None:
        raise ValueError("target: ROAD compares the model's top class with a class per example; got None")
    b, c, h, w = inputs.shape
    classes = v.format_target(target, b, inputs.device)
    if isinstance(classes, int):
        classes = torch.full((b,), classes, dtype=torch.int64, device=inputs.device)
    elif not (isinstance(classes, Tensor) and classes.dim() == 1):
        raise ValueError(f"target: expected a class per example (an int or int64 [{b}]), got {target!r}")
    counts = torch.tensor(removed_counts(percentages, h * w), dtype=torch.int64, device=inputs.device)
    if order is not None:
        order = check_order(order, b, h * w, inputs.device)
    x, attrs, _, args, evaluated, memory_budget, chunk_rows = prepare_curve_call(
        model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
        memory_budget, chunk_rows, example_offset, model_form=model_form)
    if attrs.shape[1] != 1:
        raise ValueError(f"attributions: ROAD ranks pixels and needs one value per pixel [{b}, 1, {h}, {w}], got "
                         f"{tuple(attrs.shape)}; reduce over the channels first (e.g. .sum(1, keepdim=True))")
    if order is None:
        order = descending_order(attrs)
    budget = memory_budget or _budget.default_budget(x.device)
    solver_rows = max(1, budget // (c * h * w * 8 * _SOLVER_ROW_COPIES))
    rows = ImputedRows(x, ranks_of(order.to(x.device)), counts, noise, seed, example_offset, tol)
    correct = forward_rows(TopClassIs(evaluated), rows, b * rows.points, rows.points, (x,), 0, (classes, *args),
                           memory_budget, min(chunk_rows or solver_rows, solver_rows))
    return correct.view(b, rows.points)
