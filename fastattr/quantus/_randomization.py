"""Quantus 0.6's randomisation metrics: ``MPRT`` (model parameter
randomisation test), ``SmoothMPRT`` (the same on explanations averaged over
noisy copies of each input), ``EfficientMPRT`` (the change of the
explanation's complexity) and ``RandomLogit`` (the explanation of a random
other class): the same constructors, calls and results (a dict of
per-example scores per layer, or one list), on
:mod:`fastattr.metrics.randomization` and :mod:`fastattr.metrics.random_logit`.

What differs from Quantus: the randomized parameters. Quantus calls each
layer's ``reset_parameters()`` after ``torch.manual_seed(seed + 1)`` (the
global RNG, reseeded per layer); here a layer's parameters are redrawn from
keyed uniforms (:func:`~fastattr.metrics.randomization.keyed_uniform_init`)
unless ``randomize=`` (a fastattr extension) says how. Given the same
randomized layers, the scores are Quantus's. Explanations are normalised
per example (Quantus's ``normalise_by_max`` and
``normalise_by_average_second_moment_estimate`` span the batch array;
Spearman does not see the difference, SSIM can). SmoothMPRT's noise and
RandomLogit's other class are keyed draws (``(seed, example, sample)``),
not numpy's global RNG: SmoothMPRT uses the same noise for every model it
explains, so its ``"original"`` score is 1 when no ``a_batch`` is given
(Quantus draws new noise for each explanation). The models run as they are
(``model_form="eager"``: the contract is Quantus's numbers).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..metrics.explained_rows import block_examples
from ..metrics.random_logit import off_classes
from ..metrics.randomization import (
    Randomize, discrete_entropy, keyed_uniform_init, noisy_rows, randomized_models, smoothed_explanation,
    spearman_with,
)
from ..metrics.similarity import pearson, spearman, ssim
from ._base import QuantusCall, QuantusMetric, quantus_function_name
from ._continuity import rows_explainer
from ._stability import second_moment_normaliser

_ORDERS = {"top_down": "cascading", "independent": "independent", "bottom_up": "bottom_up"}
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
    (cascading), ``"bottom_up"`` (cascading from the first layer) or ``"independent"``. ``randomize`` (fastattr):
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

    def explanations(self, call: QuantusCall) -> Callable[[nn.Module], Tensor]:
        """``f(model)``: the explanation ``[B, *A]`` of ``call.x`` by ``model``
        (the original or a randomized copy), finished (normalise, abs) as Quantus does."""
        return lambda model: dataclasses.replace(call, model=model).explain(call.x, call.y)

    def layer_scores(self, call: QuantusCall, layers: List[str]) -> Dict[str, Tensor]:
        """float64 ``[B]`` similarity per entry: ``"original"`` (the given or
        computed explanation vs the original model's), then each randomized layer."""
        batch = call.x.shape[0]
        explanation = self.explanations(call)

        def explained(m: nn.Module) -> Tensor:
            return explanation(m).reshape(batch, -1)

        # The original model's explanation, computed once: it is the reference
        # when no a_batch was given.
        original = explained(call.model)
        reference = original if call.a is None else call.a.reshape(batch, -1)
        # Spearman ranks the reference once for every model compared with it.
        compare = spearman_with(reference) if self.similarity_func is spearman else (
            functools.partial(self.similarity_func, reference))

        def similarity(a: Tensor) -> Tensor:
            return compare(a).to(torch.float64)

        scores = {"original": similarity(original)}
        order = _ORDERS[self.layer_order]
        randomize = self.randomize or keyed_uniform_init(self.seed)
        steps = randomized_models(call.model, layers, order, randomize)
        for i, (name, twin) in enumerate(steps):
            if self.skip_layers and i + 1 < len(layers):
                continue
            scores[name] = similarity(explained(twin))
        return scores


def _similarity(similarity_func: Optional[Callable[..., Any]], default: str) -> Callable[[Tensor, Tensor], Tensor]:
    """One of Quantus's similarity functions supported here (by name)."""
    key = default if similarity_func is None else quantus_function_name(
        similarity_func, "quantus.functions.similarity_func")
    if key not in _SIMILARITIES:
        raise NotImplementedError(
            f"similarity_func={similarity_func!r}: fastattr supports Quantus's {sorted(_SIMILARITIES)}"
        )
    return _SIMILARITIES[key]


class SmoothMPRT(MPRT):
    """Quantus's ``SmoothMPRT`` (Hedström et al. 2023): :class:`MPRT` on
    explanations averaged over ``nr_samples`` copies of each input, the last
    noise-free and the others with Gaussian noise of standard deviation
    ``noise_magnitude * (max - min)`` of the example, then normalised
    (``normalise_by_average_second_moment_estimate``, per example) and made
    absolute. Quantus's defaults: bottom-up randomisation, 50 samples.

    Quantus 0.6 explains the noisy copies with ``quantus.explain`` whatever
    ``explain_func`` is; here ``explain_func`` is used (a fastattr explainer
    runs every copy of the batch as one engine plan).
    """

    name = "Smooth Model Parameter Randomisation Test"

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None, layer_order: str = "bottom_up",
                 seed: int = 42, nr_samples: int = 50, noise_magnitude: float = 0.1,
                 return_average_correlation: bool = False, return_last_correlation: bool = False,
                 skip_layers: bool = False, abs: bool = True, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, randomize: Optional[Randomize] = None,
                 **kwargs: Any) -> None:
        super().__init__(similarity_func=similarity_func, layer_order=layer_order, seed=seed,
                         return_average_correlation=return_average_correlation,
                         return_last_correlation=return_last_correlation, skip_layers=skip_layers, abs=abs,
                         normalise=False, return_aggregate=return_aggregate, aggregate_func=aggregate_func,
                         default_plot_func=default_plot_func, disable_warnings=disable_warnings,
                         display_progressbar=display_progressbar, randomize=randomize, **kwargs)
        self.normalise = bool(normalise)
        self.normalise_func = second_moment_normaliser(normalise, normalise_func, normalise_func_kwargs)
        self.nr_samples = v.check_positive_int(nr_samples, "nr_samples")
        if isinstance(noise_magnitude, bool) or not isinstance(noise_magnitude, (int, float)) \
                or not 0 <= noise_magnitude < float("inf"):
            raise ValueError(f"noise_magnitude: expected a finite number >= 0, got {noise_magnitude!r}")
        self.noise_magnitude = float(noise_magnitude)

    def explanations(self, call: QuantusCall) -> Callable[[nn.Module], Tensor]:
        """``f(model)``: the mean explanation ``[B, *A]`` over each example's
        noisy copies, then normalised and made absolute (Quantus's
        ``explain_smooth_batch``). The copies are made once per call for
        every model (a fastattr explainer leaves them as they are)."""
        blocks = block_examples((call.x,), self.nr_samples, None)
        rows_for = noisy_rows((call.x,), self.nr_samples, self.noise_magnitude, self.seed, 0, blocks,
                              keep=call.explainer is not None)

        def explanation(model: nn.Module) -> Tensor:
            rows = rows_explainer(dataclasses.replace(call, model=model), finish=False)
            (mean,) = smoothed_explanation(rows, rows_for, call.x.shape[0], self.nr_samples, blocks, call.x.device)
            return call.finish(mean)

        return explanation


_COMPLEXITY_KWARGS = {"n_bins", "n_bins_default", "min_n_bins", "max_n_bins", "debug", "rule"}


def _bins(complexity_func: Optional[Callable[..., Any]], complexity_func_kwargs: Optional[Dict[str, Any]]) -> int:
    """The histogram bins of Quantus's ``discrete_entropy`` as EfficientMPRT
    sets them: ``n_bins``, else ``n_bins_default`` (100) when no ``rule`` picks them."""
    if complexity_func is not None and quantus_function_name(
            complexity_func, "quantus.functions.complexity_func") != "discrete_entropy":
        raise NotImplementedError(
            f"complexity_func={complexity_func!r}: fastattr supports Quantus's discrete_entropy only"
        )
    kwargs = dict(complexity_func_kwargs or {})
    unknown = sorted(set(kwargs) - _COMPLEXITY_KWARGS)
    if unknown:
        raise NotImplementedError(
            f"complexity_func_kwargs: {unknown} not supported (known: {sorted(_COMPLEXITY_KWARGS)})")
    if "n_bins" not in kwargs and kwargs.get("rule") is not None:
        raise NotImplementedError(
            f"complexity_func_kwargs: rule={kwargs['rule']!r} picks the bins from the whole batch's "
            "explanations; fastattr scores each example alone: pass n_bins"
        )
    return v.check_positive_int(kwargs.get("n_bins", kwargs.get("n_bins_default", 100)), "n_bins")


class EfficientMPRT(QuantusMetric):
    """Quantus's ``EfficientMPRT`` (Hedström et al. 2023): per example, the
    relative change ``(H_L - H_0) / H_0`` of the explanation's discrete
    entropy (``n_bins`` equal bins, default 100) from the original model
    (``H_0``) to the model after the last randomization step (``H_L``; every
    layer with bottom-up or top-down order). Only those two models are
    explained. ``a_batch`` is not used (Quantus explains the original model
    anew). ``compute_extra_scores`` is not supported.
    """

    name = "Efficient Model Parameter Randomisation Test"

    def __init__(self, complexity_func: Optional[Callable[..., Any]] = None,
                 complexity_func_kwargs: Optional[Dict[str, Any]] = None,
                 similarity_func: Optional[Callable[..., Any]] = None, layer_order: str = "bottom_up",
                 seed: int = 42, compute_extra_scores: bool = False, skip_layers: bool = True, abs: bool = False,
                 normalise: bool = False, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, randomize: Optional[Randomize] = None,
                 **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=False, return_aggregate=return_aggregate, aggregate_func=aggregate_func,
                         default_plot_func=default_plot_func, disable_warnings=disable_warnings,
                         display_progressbar=display_progressbar, **kwargs)
        self.normalise = bool(normalise)
        self.normalise_func = second_moment_normaliser(normalise, normalise_func, normalise_func_kwargs)
        self.n_bins = _bins(complexity_func, complexity_func_kwargs)
        self.similarity_func = _similarity(similarity_func, "correlation_spearman")
        reject("compute_extra_scores", compute_extra_scores, False,
               "the per-layer model entropies and their correlations are not implemented")
        if layer_order not in _ORDERS:
            raise ValueError(f"layer_order: expected one of {list(_ORDERS)}, got {layer_order!r}")
        check_seed(seed)
        if randomize is not None and not callable(randomize):
            raise TypeError(f"randomize: expected None or a callable, got {type(randomize).__name__}")
        self.layer_order, self.seed, self.skip_layers, self.randomize = layer_order, seed, bool(skip_layers), randomize
        self.evaluation_scores: Any = []

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Dict[str, Any]] = None,
                 model_predict_kwargs: Optional[Dict[str, Any]] = None, softmax: Optional[bool] = True,
                 device: Optional[Any] = None, batch_size: int = 64, **kwargs: Any) -> List[float]:
        """Scores of every example (a list; ``[aggregate]`` with
        ``return_aggregate``), as Quantus's ``EfficientMPRT.__call__``."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}(): unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model: expected a torch.nn.Module (its layers are randomized), got {type(model).__name__}")
        call = self.prepare(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                            explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size)
        layers = quantus_layers(model)
        if not layers:
            raise ValueError("model: has no layer with reset_parameters to randomize")
        result: Any = self.complexity_change(call, layers).tolist()
        if self.return_aggregate:
            result = [self.aggregate_func(result)]
        self.evaluation_scores = result
        self.all_evaluation_scores.append(result)
        return result

    def complexity_change(self, call: QuantusCall, layers: List[str]) -> Tensor:
        """float64 ``[B]``: ``(H_L - H_0) / H_0``."""
        def entropy(m: nn.Module) -> Tensor:
            return discrete_entropy(dataclasses.replace(call, model=m).explain(call.x, call.y), self.n_bins)

        original = entropy(call.model)
        twin = call.model
        randomize = self.randomize or keyed_uniform_init(self.seed)
        for _, twin in randomized_models(call.model, layers, _ORDERS[self.layer_order], randomize):
            pass  # each step randomizes the copy further; only the last is explained
        return (entropy(twin) - original) / original


class RandomLogit(QuantusMetric):
    """Quantus's ``RandomLogit`` (Sixt et al. 2020): per example, the
    similarity (default SSIM) of the explanation of ``y`` with the
    explanation of a class drawn uniformly among the ``num_classes - 1``
    others, keyed by ``(seed, example)`` (Quantus reseeds numpy's global RNG
    with ``seed`` per batch and draws one per example)."""

    name = "Random Logit"

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None, num_classes: int = 1000,
                 seed: int = 42, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        self.similarity_func = _similarity(similarity_func, "ssim")
        self.num_classes = v.check_positive_int(num_classes, "num_classes", minimum=2)
        check_seed(seed)
        self.seed = seed

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        y = call.y
        if y.numel() and not (0 <= int(y.min()) and int(y.max()) < self.num_classes):
            raise ValueError(f"y_batch: classes must lie in [0, num_classes={self.num_classes}), got {y.tolist()}")
        batch = call.x.shape[0]
        others = off_classes(y, self.num_classes, self.seed)
        a = call.clean_attributions().reshape(batch, -1)
        return self.similarity_func(a, call.explain(call.x, others).reshape(batch, -1)).cpu().numpy()
