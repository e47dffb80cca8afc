"""Quantus 0.6's ``RelativeInputStability``, ``RelativeOutputStability`` and
``RelativeRepresentationStability`` (Agarwal et al. 2022): the same
constructors, calls and scores, on :mod:`fastattr.metrics.stability`.

Differences from Quantus: the perturbations are keyed draws (``seed``): sample
``n`` of example ``b`` is keyed by ``(seed, b, n)``, not drawn from numpy's
global RNG, so a score does not depend on ``batch_size`` or on the rest of
the batch; ``normalise`` (default function ``normalise_by_average_second_moment_estimate``)
is per example, where Quantus's spans the batch array. Given the same
perturbations, the scores are Quantus's. The model runs as it is
(``model_form="eager"``: the contract is Quantus's numbers).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor, nn

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..metrics.sensitivity import PerturbedExplanations
from ..metrics.stability import (
    Denominator, ModelReads, hidden_layers, input_change, nan_where_prediction_changes, output_change,
    relative_stability_values, representation_change, representation_layers,
)
from ._base import QuantusCall, QuantusMetric, per_example_normaliser
from ._sensitivity import perturbation_of, quantus_explanations


# A denominator and the model reads it makes (None: it reads nothing of the model).
MadeDenominator = Tuple[Denominator, Optional[ModelReads]]


def second_moment_normaliser(normalise: bool, normalise_func: Optional[Callable[..., Any]],
                             normalise_func_kwargs: Optional[Dict[str, Any]]) -> Optional[Callable[[Tensor], Tensor]]:
    """The per-example normaliser of a metric whose Quantus default
    ``normalise_func`` is ``normalise_by_average_second_moment_estimate``
    (None when ``normalise`` is False)."""
    if not normalise:
        return None
    return per_example_normaliser(normalise_func, normalise_func_kwargs,
                                  "normalise_by_average_second_moment_estimate")


class _RelativeStability(QuantusMetric):
    """What the three metrics share: Quantus's constructor (uniform noise on
    ``[0.02, 0.2)`` by default, ``nr_samples=200``, NaN when a perturbation
    changes the prediction) and call (``channel_first=True`` by default)."""

    def __init__(self, nr_samples: int = 200, abs: bool = False, normalise: bool = False,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None,
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, eps_min: float = 1e-6,
                 default_plot_func: Optional[Callable[..., Any]] = None,
                 return_nan_when_prediction_changes: bool = True, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=False, return_aggregate=return_aggregate, aggregate_func=aggregate_func,
                         default_plot_func=default_plot_func, disable_warnings=disable_warnings,
                         display_progressbar=display_progressbar, **kwargs)
        self.normalise = bool(normalise)
        self.normalise_func = second_moment_normaliser(normalise, normalise_func, normalise_func_kwargs)
        self.nr_samples = v.check_positive_int(nr_samples, "nr_samples")
        check_seed(seed)
        self.seed = seed
        if isinstance(eps_min, bool) or not isinstance(eps_min, (int, float)) or not eps_min > 0:
            raise ValueError(f"eps_min: expected a number > 0, got {eps_min!r}")
        self.eps_min = float(eps_min)
        self.return_nan_when_prediction_changes = bool(return_nan_when_prediction_changes)
        self.perturbation = perturbation_of(perturb_func, perturb_func_kwargs, {"upper_bound": 0.2},
                                            self.nr_samples, seed)

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, model_predict_kwargs: Optional[Dict[str, Any]] = None,
                 explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Dict[str, Any]] = None, a_batch: Any = None,
                 device: Optional[Any] = None, softmax: bool = False, channel_first: Optional[bool] = True,
                 batch_size: int = 64, **kwargs: Any) -> List[Any]:
        """Scores of every example (a list), as Quantus's ``__call__`` (its argument order and defaults)."""
        return super().__call__(model, x_batch, y_batch, a_batch=a_batch, s_batch=None,
                                channel_first=channel_first, explain_func=explain_func,
                                explain_func_kwargs=explain_func_kwargs, model_predict_kwargs=model_predict_kwargs,
                                softmax=softmax, device=device, batch_size=batch_size, **kwargs)

    def denominator(self, call: QuantusCall) -> Callable[[PerturbedExplanations], MadeDenominator]:
        """What the explanation's relative change is divided by and the model
        reads it makes, built from the audit once it exists (the call's model
        and options are checked now)."""
        raise NotImplementedError

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        denominator = self.denominator(call)
        audit = quantus_explanations(call)
        den, reads = denominator(audit)
        values = relative_stability_values(audit, self.perturbation, self.eps_min, den, floor_denominator=False,
                                           reads=reads)
        return values.amax(dim=1).cpu().numpy()


class RelativeInputStability(_RelativeStability):
    """Quantus's ``RelativeInputStability``: per example, the max over
    ``nr_samples`` perturbations of ``||(a - a') / a||_2 / ||(x - x') / x||_2``
    (zero elements and a zero denominator count as ``eps_min``), NaN where a
    perturbation changes the predicted class."""

    name = "Relative Input Stability"

    def denominator(self, call: QuantusCall) -> Callable[[PerturbedExplanations], MadeDenominator]:
        def make(audit: PerturbedExplanations) -> MadeDenominator:
            den = input_change(audit, self.eps_min)
            if not self.return_nan_when_prediction_changes:
                return den, None
            reads = ModelReads(audit.req, model_form="eager")
            return nan_where_prediction_changes(reads, den), reads

        return make


class RelativeOutputStability(_RelativeStability):
    """Quantus's ``RelativeOutputStability``: :class:`RelativeInputStability`
    with ``||h(x) - h(x')||_2`` as denominator, ``h`` the model's outputs
    (their softmax with ``softmax=True``). A model with its own
    ``nn.Softmax`` module is refused: Quantus rewrites such a model."""

    name = "Relative Output Stability"

    def denominator(self, call: QuantusCall) -> Callable[[PerturbedExplanations], MadeDenominator]:
        if isinstance(call.model, nn.Module) and any(isinstance(m, nn.Softmax) for m in call.model.modules()):
            raise NotImplementedError(
                "model: has an nn.Softmax module, which Quantus's predict adds, keeps or removes "
                "depending on softmax; pass the model without it and choose with softmax="
            )
        output = "probability" if call.softmax else "logit"

        def make(audit: PerturbedExplanations) -> MadeDenominator:
            reads = ModelReads(audit.req, output, model_form="eager")
            return output_change(reads, self.return_nan_when_prediction_changes), reads

        return make


def quantus_layers(model: Any, layer_names: Optional[Sequence[str]],
                   layer_indices: Optional[Sequence[int]]) -> List[nn.Module]:
    """The layers Quantus's ``get_hidden_representations`` hooks: names it
    does not know are ignored, and a negative index counts back from the
    number of ALL ``named_modules()`` (containers included), as Quantus does,
    so ``-1`` selects no layer of a model whose first module is a container."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (its layers' outputs are read), got {type(model).__name__}")
    hidden = hidden_layers(model)
    names = list(layer_names or [])
    total = len(list(model.named_modules()))
    positive = {i if i >= 0 else total + i for i in (layer_indices or [])}
    if not names and not positive:
        return representation_layers(model, None, None)
    chosen = [j for j, (name, _) in enumerate(hidden) if j in positive or name in names]
    if not chosen:
        raise ValueError(
            f"layer_names={layer_names!r}, layer_indices={layer_indices!r}: no hidden representation selected "
            f"(Quantus's layers: {[n for n, _ in hidden]}; a negative index counts from {total}, "
            "the number of all modules)"
        )
    return representation_layers(model, None, chosen)


class RelativeRepresentationStability(_RelativeStability):
    """Quantus's ``RelativeRepresentationStability``: :class:`RelativeInputStability`
    with ``||(L(x) - L(x')) / L(x)||_2`` as denominator, ``L`` the outputs of
    the layers chosen by ``layer_names`` or ``layer_indices`` (Quantus's
    choice, :func:`quantus_layers`), read with forward hooks removed after
    each forward (with a fastattr saliency or input x gradient, in the
    forward that explains the perturbed rows)."""

    name = "Relative Representation Stability"

    def __init__(self, nr_samples: int = 200, abs: bool = False, normalise: bool = False,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None,
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, eps_min: float = 1e-6,
                 default_plot_func: Optional[Callable[..., Any]] = None,
                 layer_names: Optional[List[str]] = None, layer_indices: Optional[List[int]] = None,
                 return_nan_when_prediction_changes: bool = True, seed: int = 0, **kwargs: Any) -> None:
        if layer_names is not None and layer_indices is not None:
            raise ValueError("layer_names, layer_indices: provide either layer_names or layer_indices, not both")
        if layer_indices is not None and any(isinstance(i, bool) or not isinstance(i, int) for i in layer_indices):
            raise ValueError(f"layer_indices: expected a list of integers, got {layer_indices!r}")
        super().__init__(nr_samples=nr_samples, abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, perturb_func=perturb_func,
                         perturb_func_kwargs=perturb_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                         display_progressbar=display_progressbar, eps_min=eps_min,
                         default_plot_func=default_plot_func,
                         return_nan_when_prediction_changes=return_nan_when_prediction_changes, seed=seed, **kwargs)
        self.layer_names, self.layer_indices = layer_names, layer_indices

    def denominator(self, call: QuantusCall) -> Callable[[PerturbedExplanations], MadeDenominator]:
        layers = quantus_layers(call.model, self.layer_names, self.layer_indices)

        def make(audit: PerturbedExplanations) -> MadeDenominator:
            reads = ModelReads(audit.req, layers=layers, eps_min=self.eps_min, model_form="eager")
            return representation_change(reads, self.return_nan_when_prediction_changes), reads

        return make
