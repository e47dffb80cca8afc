"""Quantus 0.6's ``Infidelity``: the same constructor, call and scores.

Quantus replaces the square patches of an image one after another
(cumulatively, row-major over the patch grid, all channels) by a baseline,
and scores the mean over steps of ``((f(x) - f(x_k)) - sum a * (x - x_k))**2``,
averaged over patch sizes and ``n_perturb_samples``. Here every step of every
example is one generated row (:class:`~fastattr.metrics.deletion.ReplacedRows`)
run in budgeted chunks, and ``sum a * (x - x_k)`` is a cumulative sum of
per-patch sums. A deterministic baseline (``"black"``, ``"white"``, a number)
gives identical samples, evaluated once; ``"uniform"`` draws one keyed value
per (example, sample, step), where Quantus calls ``np.random.uniform``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..engine import PURPOSE_INFIDELITY
from ..engine.draws import group_uniforms
from ..metrics.deletion import ReplacedRows, curve_outputs, softmax_outputs
from ._base import QuantusCall, QuantusMetric, baseline_replacement, quantus_function_name

# Uniform baselines of patch size number p: a sub-stream of the infidelity
# purpose that no per-input stream (index < 32768) uses.
_UNIFORM_STREAM = PURPOSE_INFIDELITY * 65536 + 32768


def _prepend_zero(t: Tensor) -> Tensor:
    return torch.cat((t.new_zeros(1), t))


def patch_map(height: int, width: int, patch: int, device: torch.device) -> Tensor:
    """int64 ``[H, W]``: the row-major index of the ``patch``-square block of each pixel."""
    rows = torch.arange(height, device=device) // patch
    cols = torch.arange(width, device=device) // patch
    return rows.unsqueeze(1) * (width // patch) + cols.unsqueeze(0)


def explanation_like(call: QuantusCall) -> Tensor:
    """The clean explanation broadcast to ``x_batch``'s shape ``[B, *F]``, as
    Quantus's ``np.broadcast_to(a_batch, x_batch.shape)``."""
    a, x = call.clean_attributions(), call.x
    try:
        return a.expand(x.shape)
    except RuntimeError:
        raise ValueError(
            f"a_batch: explanations of shape {tuple(a.shape)} do not broadcast to x_batch's {tuple(x.shape)}"
        ) from None


class Infidelity(QuantusMetric):
    """Quantus's ``Infidelity`` (Yeh et al. 2019, square-patch perturbations).

    Extra keywords: ``seed`` (key of the ``"uniform"`` baseline draws),
    ``memory_budget`` and ``chunk_rows`` (per forward chunk).
    Unsupported, raising :class:`NotImplementedError`: a ``loss_func`` other
    than Quantus's ``mse``, a ``perturb_func`` other than its
    ``batch_baseline_replacement_by_indices``, ``perturb_baseline="mean"``.
    """

    name = "Infidelity"

    def __init__(self, loss_func: Any = "mse", perturb_patch_sizes: Optional[List[int]] = None,
                 n_perturb_samples: int = 10, abs: bool = False, normalise: bool = False,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        if loss_func != "mse" and quantus_function_name(loss_func, "quantus.functions.loss_func") != "mse":
            raise NotImplementedError(f"loss_func={loss_func!r}: fastattr supports Quantus's 'mse' only")
        self.perturb_baseline, self.uniform_low, self.uniform_high = baseline_replacement(
            perturb_func, perturb_baseline, perturb_func_kwargs)
        sizes = [4] if perturb_patch_sizes is None else perturb_patch_sizes
        if not isinstance(sizes, (list, tuple)) or not sizes:
            raise ValueError(f"perturb_patch_sizes: expected a non-empty list of integers >= 1, got {sizes!r}")
        self.perturb_patch_sizes = [v.check_positive_int(p, "perturb_patch_sizes") for p in sizes]
        self.n_perturb_samples = v.check_positive_int(n_perturb_samples, "n_perturb_samples")
        check_seed(seed)
        self.seed = seed
        self.memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
        self.chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")

    def requires_explain_func(self) -> bool:
        return False

    def evaluate(self, call: QuantusCall) -> Tensor:
        """float64 ``[B]``."""
        x = call.x
        if x.dim() != 4:
            raise ValueError(f"x_batch: Infidelity's patches need images [B, C, H, W], got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        for p in self.perturb_patch_sizes:
            if height % p or width % p:
                raise ValueError(
                    f"perturb_patch_sizes: patch size {p} must divide the image's height and width "
                    f"({height} x {width}); Quantus fails on such sizes too"
                )
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        attrs = explanation_like(call)
        model = softmax_outputs(call.model) if call.softmax else call.model
        losses, clean = [], None
        for i, p in enumerate(self.perturb_patch_sizes):
            loss, clean = self._patch_losses(model, x, attrs, call.y, clean, p, i)
            losses.append(loss)
        return torch.stack(losses).mean(0).mean(1)

    def _patch_losses(self, model: Callable[..., Tensor], x: Tensor, attrs: Tensor, y: Tensor,
                      clean: Optional[Tensor], patch: int, size_index: int) -> Tuple[Tensor, Tensor]:
        """``(float64 [B, N], clean)``: the mean squared gap over the steps of
        patch size ``patch`` (``N = 1`` for a deterministic baseline: every
        sample is the same), and the float64 ``[B]`` target outputs at the
        clean inputs: made here, as a point with nothing replaced, when
        ``clean`` is None, so that they cost no forward of their own."""
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        patches = patch_map(height, width, patch, x.device)
        n_patches = (height // patch) * (width // patch)
        uniform = self.perturb_baseline == "uniform"
        samples = self.n_perturb_samples if uniform else 1
        points = samples * n_patches
        ranks = patches.expand(x.shape[1:]).reshape(1, -1).expand(batch, -1)
        step = torch.arange(points, device=x.device)
        counts = step % n_patches + 1
        # A point 0 that replaces nothing, when the clean outputs are still to be made.
        first = 1 if clean is None else 0
        if first:
            counts = _prepend_zero(counts)
        flat_patches = ranks[0]
        weighted = (attrs * x).reshape(batch, -1).to(torch.float64)
        per_patch_ax = torch.zeros(batch, n_patches, dtype=torch.float64, device=x.device).index_add_(
            1, flat_patches, weighted)
        per_patch_a = torch.zeros_like(per_patch_ax).index_add_(
            1, flat_patches, attrs.reshape(batch, -1).to(torch.float64))
        if uniform:
            u, _ = group_uniforms(self.seed, _UNIFORM_STREAM + size_index, batch, points, x.device)
            fill = (self.uniform_low + (self.uniform_high - self.uniform_low) * u).view(batch, points).to(x.dtype)
            offsets = step // n_patches * n_patches
            if first:
                offsets = _prepend_zero(offsets)
            rows = ReplacedRows(x, fill, ranks, tuple(x.shape[1:]), counts, 1, offsets)
            fill_values = fill.to(torch.float64).view(batch, samples, n_patches)
        else:
            fill = self._constant_fill(x)
            rows = ReplacedRows(x, fill, ranks, tuple(x.shape[1:]), counts)
            fill_values = fill.reshape(-1, 1, 1).to(torch.float64)
        outputs = curve_outputs(model, rows, x, y, (), self.memory_budget, self.chunk_rows)
        if first:
            clean = outputs[:, 0]
        perturbed = outputs[:, first:].reshape(batch, samples, n_patches)
        output_change = clean.view(batch, 1, 1) - perturbed
        # sum a * (x - x_k) over the patches replaced by step k
        predicted = (per_patch_ax.unsqueeze(1) - fill_values * per_patch_a.unsqueeze(1)).cumsum(2)
        return (output_change - predicted).pow(2).mean(2), clean

    def _constant_fill(self, x: Tensor) -> Tensor:
        """``[B or 1, 1, 1, 1]``: the example's min (``"black"``), max (``"white"``) or the number."""
        if self.perturb_baseline == "black":
            return x.reshape(x.shape[0], -1).amin(1).view(-1, 1, 1, 1)
        if self.perturb_baseline == "white":
            return x.reshape(x.shape[0], -1).amax(1).view(-1, 1, 1, 1)
        return torch.full((1, 1, 1, 1), float(self.perturb_baseline), dtype=x.dtype, device=x.device)
