"""Quantus 0.6's ``MPRT`` (model parameter randomisation test): the same
constructor, call and result (a dict of per-example scores per layer, or
one list with ``return_average_correlation`` / ``return_last_correlation``),
on :mod:`fastattr.metrics.randomization`.

What differs from Quantus: the randomized parameters. Quantus calls each
layer's ``reset_parameters()`` after ``torch.manual_seed(seed + 1)`` (the
global RNG, reseeded per layer); here a layer's parameters are redrawn from
keyed uniforms (:func:`~fastattr.metrics.randomization.keyed_uniform_init`)
unless ``randomize=`` (a fastattr extension) says how. Given the same
randomized layers, the scores are Quantus's. Explanations are normalised
per example (Quantus's ``normalise_by_max`` spans the batch array; Spearman
does not see the difference, SSIM can).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..attr.smoothgrad import check_seed
from ..metrics.randomization import Randomize, keyed_uniform_init, randomized_models
from ..metrics.similarity import pearson, spearman, ssim
from ._base import QuantusCall, QuantusMetric, quantus_function_name

_ORDERS = {"top_down": "cascading", "independent": "independent"}
# Quantus's similarity functions on flat [B, D] explanations.
_SIMILARITIES: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "correlation_spearman": spearman,
    "correlation_pearson": pearson,
    "ssim": ssim,
}


def quantus_layers(model: nn.Module) -> List[str]:
    """The modules Quantus randomizes: those with ``reset_parameters``, in ``named_modules()`` order."""
    return [name for name, m in model.named_modules() if hasattr(m, "reset_parameters")]


class MPRT(QuantusMetric):
    """Quantus's ``MPRT`` (Adebayo et al. 2018) on fastattr.

    ``similarity_func``: Quantus's ``correlation_spearman`` (default),
    ``correlation_pearson`` or ``ssim``. ``layer_order``: ``"top_down"``
    (cascading) or ``"independent"``. ``randomize`` (fastattr):
    ``randomize(name, module, module_index)`` redraws one module in place;
    None: keyed uniform draws under ``seed``.
    """

    name = "Model Parameter Randomisation Test"

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None, layer_order: str = "top_down",
                 seed: int = 42, return_sample_correlation: Optional[bool] = None,
                 return_average_correlation: bool = False, return_last_correlation: bool = False,
                 skip_layers: bool = False, abs: bool = True, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, randomize: Optional[Randomize] = None,
                 **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        if return_sample_correlation is not None:  # Quantus's deprecated name
            return_average_correlation = return_sample_correlation
        key = "correlation_spearman" if similarity_func is None else quantus_function_name(
            similarity_func, "quantus.functions.similarity_func")
        if key not in _SIMILARITIES:
            raise NotImplementedError(
                f"similarity_func={similarity_func!r}: fastattr supports Quantus's {sorted(_SIMILARITIES)}"
            )
        if layer_order not in _ORDERS:
            raise ValueError(f"layer_order: expected one of {list(_ORDERS)}, got {layer_order!r}")
        check_seed(seed)
        if return_average_correlation and return_last_correlation:
            raise ValueError("return_average_correlation, return_last_correlation: at most one may be True")
        if return_average_correlation and skip_layers:
            raise ValueError("return_average_correlation, skip_layers: the average needs every layer")
        if randomize is not None and not callable(randomize):
            raise TypeError(f"randomize: expected None or a callable, got {type(randomize).__name__}")
        self.similarity_func = _SIMILARITIES[key]
        self.layer_order = layer_order
        self.seed = seed
        self.return_average_correlation = bool(return_average_correlation)
        self.return_last_correlation = bool(return_last_correlation)
        self.skip_layers = bool(skip_layers)
        self.randomize = randomize
        self.evaluation_scores: Any = {}

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Dict[str, Any]] = None,
                 model_predict_kwargs: Optional[Dict[str, Any]] = None, softmax: Optional[bool] = False,
                 device: Optional[Any] = None, batch_size: int = 64,
                 **kwargs: Any) -> Union[Dict[str, List[float]], List[float]]:
        """Scores as Quantus's ``MPRT.__call__``: ``{"original": [B], layer: [B], ...}``
        (layers in randomization order), or one ``[B]`` list with
        ``return_average_correlation`` (the mean over every entry, "original"
        included, as Quantus) / ``return_last_correlation``; ``[aggregate]``
        with ``return_aggregate``. Arguments as :meth:`QuantusMetric.__call__`."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}(): unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module (its layers are randomized), got {type(model).__name__}")
        if self.return_aggregate and not (self.return_average_correlation or self.return_last_correlation):
            raise ValueError("return_aggregate: needs return_average_correlation or return_last_correlation")
        call = self.prepare(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                            explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size)
        layers = quantus_layers(model)
        if not layers:
            raise ValueError("model: has no layer with reset_parameters to randomize")
        scores = {name: values.tolist() for name, values in self.layer_scores(call, layers).items()}
        if self.return_average_correlation:
            result: Any = np.mean(np.array(list(scores.values())), axis=0).tolist()
        elif self.return_last_correlation:
            result = list(scores.values())[-1]
        else:
            result = scores
        if self.return_aggregate:
            result = [self.aggregate_func(result)]
        self.evaluation_scores = result
        self.all_evaluation_scores.append(result)
        return result

    def layer_scores(self, call: QuantusCall, layers: List[str]) -> Dict[str, Tensor]:
        """float64 ``[B]`` similarity per entry: ``"original"`` (the given or
        computed explanation vs the original model's), then each randomized layer."""
        batch = call.x.shape[0]

        def explained(m: nn.Module) -> Tensor:
            return dataclasses.replace(call, model=m).explain(call.x, call.y).reshape(batch, -1)

        # The original model's explanation, computed once: it is the reference
        # when no a_batch was given.
        original = explained(call.model)
        reference = original if call.a is None else call.a.reshape(batch, -1)

        def similarity(a: Tensor) -> Tensor:
            return self.similarity_func(reference, a).to(torch.float64)

        scores = {"original": similarity(original)}
        order = _ORDERS[self.layer_order]
        randomize = self.randomize or keyed_uniform_init(self.seed)
        steps = randomized_models(call.model, layers, order, randomize)
        for i, (name, twin) in enumerate(steps):
            if self.skip_layers and i + 1 < len(layers):
                continue
            scores[name] = similarity(explained(twin))
        return scores
