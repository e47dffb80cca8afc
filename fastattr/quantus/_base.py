"""What every Quantus drop-in shares: Quantus 0.6's ``Metric`` constructor
options and ``__call__`` plumbing (numpy or tensor ``x_batch`` / ``y_batch`` /
``a_batch``, channel order, ``explain_func`` + ``explain_func_kwargs``,
``device``, ``return_aggregate``), returning what Quantus returns.

A subclass implements :meth:`QuantusMetric.evaluate` on a
:class:`QuantusCall`. A fastattr explainer given as ``explain_func`` runs on
the engine (:attr:`QuantusCall.explainer`); ``quantus.explain`` or any other
callable is called as Quantus calls it (numpy in, numpy out,
:meth:`QuantusCall.explain`). Quantus's ``normalise_by_max`` spans the whole
batch array, which makes an example's score depend on the rest of its batch;
here explanations are normalised per example.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import _validate as v
from ..captum._base import reject
from ..metrics._explain import Explainer


def quantus_function_name(fn: Any, module: str) -> Optional[str]:
    """The name of ``fn`` if it is Quantus's own function from ``module``
    (e.g. ``"quantus.functions.norm_func"``), else None. Quantus is not imported."""
    mod = getattr(fn, "__module__", None) or ""
    return getattr(fn, "__name__", None) if mod == module or mod.startswith(module + ".") else None


def _normalise_by_max(a: Tensor) -> Tensor:
    """``a / max|a|`` per example (Quantus's ``normalise_by_max`` on one example;
    an all-zero example is left as it is)."""
    peak = a.abs().reshape(a.shape[0], -1).amax(dim=1)
    peak = torch.where(peak == 0, torch.ones_like(peak), peak)
    return a / peak.view(-1, *([1] * (a.dim() - 1)))


def _normalise_by_average_second_moment_estimate(a: Tensor) -> Tensor:
    """``a / sqrt(mean(a^2))`` per example (Quantus's
    ``normalise_by_average_second_moment_estimate`` on one example; an
    example whose second moment is 0 is left as it is)."""
    flat = a.reshape(a.shape[0], -1)
    root = (flat.square().sum(1) / flat.shape[1]).sqrt()
    root = torch.where(root == 0, torch.ones_like(root), root)
    return a / root.view(-1, *([1] * (a.dim() - 1)))


# Quantus's normalise functions, per example, by name.
PER_EXAMPLE_NORMALISERS: Dict[str, Callable[[Tensor], Tensor]] = {
    "normalise_by_max": _normalise_by_max,
    "normalise_by_average_second_moment_estimate": _normalise_by_average_second_moment_estimate,
}


def per_example_normaliser(normalise_func: Optional[Callable[..., Any]],
                           normalise_func_kwargs: Optional[Dict[str, Any]],
                           default: str = "normalise_by_max") -> Callable[[Tensor], Tensor]:
    """The per-example twin of Quantus's ``normalise_func`` (None: the
    metric's Quantus default, ``default``); NotImplementedError for others."""
    name = default if normalise_func is None else quantus_function_name(
        normalise_func, "quantus.functions.normalise_func")
    if name not in PER_EXAMPLE_NORMALISERS:
        raise NotImplementedError(
            f"normalise_func={normalise_func!r}: fastattr normalises per example with "
            f"{sorted(PER_EXAMPLE_NORMALISERS)} only"
        )
    reject("normalise_func_kwargs", normalise_func_kwargs, None)
    return PER_EXAMPLE_NORMALISERS[name]


def _as_tensor(value: Any, name: str, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).to(device)
    if isinstance(value, (list, tuple)):
        return torch.as_tensor(np.asarray(value), device=device)
    raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(value).__name__}")


def infer_channel_first(shape: Sequence[int]) -> bool:
    """Quantus's ``infer_channel_first`` on a batch shape: the channel axis is the smallest."""
    if len(shape) == 2:
        return True
    if len(shape) == 3 and shape[-2] != shape[-1]:
        return shape[-2] < shape[-1]
    if len(shape) == 4:
        if shape[-1] < shape[-2] and shape[-1] < shape[-3]:
            return False
        if shape[-3] < shape[-1] and shape[-3] < shape[-2]:
            return True
    raise ValueError(
        f"channel_first: cannot infer the channel axis of x_batch of shape {tuple(shape)}; pass channel_first"
    )


def make_channel_first(x: Tensor, channel_first: bool) -> Tensor:
    """Quantus's ``make_channel_first``: channel-last ``[B, *S, C]`` to ``[B, C, *S]``."""
    return x if channel_first or x.dim() == 2 else x.movedim(-1, 1)


def expand_attribution_channel(a: Tensor, x_shape: Sequence[int], name: str) -> Tensor:
    """Quantus's ``expand_attribution_channel``: an explanation with fewer axes
    than the input (e.g. ``[B, H, W]`` for ``[B, C, H, W]``) gets size-1 axes
    where the input's do not match."""
    if a.dim() == 0 or a.shape[0] != x_shape[0]:
        raise ValueError(f"{name}: expected {x_shape[0]} explanations (one per example), got shape {tuple(a.shape)}")
    if a.dim() > len(x_shape):
        raise ValueError(f"{name}: has more axes than x_batch: {tuple(a.shape)} vs {tuple(x_shape)}")
    if a.dim() == len(x_shape):
        return a
    # Quantus's infer_attribution_axes: the explanation's axes are a run of the input's.
    feat, x_feat = list(a.shape[1:]), list(x_shape[1:])
    for start in range(len(x_feat) - len(feat) + 1):
        if x_feat[start:start + len(feat)] == feat:
            return a.view(a.shape[0], *([1] * start), *feat, *([1] * (len(x_feat) - len(feat) - start)))
    raise ValueError(f"{name}: shape {tuple(a.shape)} does not match the axes of x_batch {tuple(x_shape)}")


@dataclasses.dataclass
class QuantusCall:
    """One ``metric(...)`` call, checked and formatted.

    ``x`` is channel-first on ``device``; ``y`` int64 ``[B]``; ``a`` the caller's
    ``a_batch`` (normalised / abs as the metric asks) or None; exactly one of
    ``explainer`` (a fastattr explainer: engine) and ``explain_func`` (called
    as Quantus calls it) is set when an explanation function was given.
    """

    model: Any
    x: Tensor  # [B, *F] channel-first
    y: Tensor  # int64 [B]
    a: Optional[Tensor]  # [B, *A] or None
    s: Optional[Tensor]  # [B, *S] or None
    explainer: Optional[Explainer]
    explain_func: Optional[Callable[..., Any]]
    explain_func_kwargs: Dict[str, Any]
    device: torch.device
    batch_size: int
    normalise: Optional[Callable[[Tensor], Tensor]]
    abs: bool
    model_predict_kwargs: Dict[str, Any]
    softmax: bool
    channel_first: bool

    def finish(self, a: Tensor) -> Tensor:
        """Quantus's post-processing of an explanation: normalise (per example here), then abs."""
        if self.normalise is not None:
            a = self.normalise(a)
        return a.abs() if self.abs else a

    def explain_raw(self, x: Tensor, y: Tensor) -> Tensor:
        """Explanations ``[n, *A]`` of rows ``x`` ``[n, *F]`` for classes ``y``
        (int64 ``[n]``), before normalise / abs: the fastattr explainer, or
        ``explain_func`` on numpy arrays with Quantus's channel expansion."""
        if self.explainer is not None:
            (a,) = self.explainer(self.model, (x,), False, target=y)
            return a
        out = self.explain_func(model=self.model, inputs=x.detach().cpu().numpy(),
                                targets=y.detach().cpu().numpy(), **self.explain_func_kwargs)
        return expand_attribution_channel(_as_tensor(out, "explain_func", x.device), tuple(x.shape),
                                          "explain_func")

    def explain(self, x: Tensor, y: Tensor) -> Tensor:
        """Explanations as Quantus's ``explain_batch`` makes them (explainer,
        channel expansion, normalise, abs)."""
        return self.finish(self.explain_raw(x, y))

    def clean_attributions(self) -> Tensor:
        """The explanation of ``x``: the caller's ``a_batch`` or, computed here, ``explain(x, y)``."""
        return self.a if self.a is not None else self.explain(self.x, self.y)


class QuantusMetric:
    """Base of the drop-ins (Quantus's ``quantus.metrics.base.Metric``).

    Subclasses call ``super().__init__`` with the common options, list their
    own in ``__init__``, and implement :meth:`evaluate`. Options fastattr does
    not implement raise :class:`NotImplementedError` naming them.
    """

    name = "Metric"

    def __init__(self, abs: bool = False, normalise: bool = False,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 return_aggregate: bool = False, aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword arguments {sorted(kwargs)}")
        self.abs, self.normalise = bool(abs), bool(normalise)
        self.normalise_func = (per_example_normaliser(normalise_func, normalise_func_kwargs)
                               if self.normalise else None)
        self.return_aggregate = bool(return_aggregate)
        self.aggregate_func = np.mean if aggregate_func is None else aggregate_func
        self.default_plot_func = default_plot_func
        self.disable_warnings = bool(disable_warnings)
        self.display_progressbar = bool(display_progressbar)
        self.evaluation_scores: List[Any] = []
        self.all_evaluation_scores: List[Any] = []

    # -- the call ---------------------------------------------------------
    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Mapping[str, Any]] = None,
                 model_predict_kwargs: Optional[Mapping[str, Any]] = None, softmax: Optional[bool] = False,
                 device: Optional[Any] = None, batch_size: int = 64, **kwargs: Any) -> List[Any]:
        """Scores of every example (a list, as Quantus), or ``[aggregate]``
        with ``return_aggregate``.

        Args:
            model: the ``torch.nn.Module`` to explain.
            x_batch: inputs ``[B, *F]`` (numpy or tensor; channel-last is moved first as Quantus does).
            y_batch: classes ``[B]``.
            a_batch: explanations of ``x_batch`` (``[B, *A]``), or None to compute them.
            s_batch, model_predict_kwargs, softmax: as Quantus (used by metrics that need them).
            channel_first: the axis order of ``x_batch`` (None: inferred as Quantus does).
            explain_func: a fastattr explainer (runs on the engine) or a Quantus-style
                callable ``explain_func(model=, inputs=, targets=, **explain_func_kwargs)``.
            explain_func_kwargs: its options.
            device: where to compute (default: the model's device, else the CPU).
            batch_size: rows per Quantus batch (>= 1); scores here do not depend on it.
        """
        if kwargs:
            raise TypeError(f"{type(self).__name__}(): unexpected keyword arguments {sorted(kwargs)}")
        call = self.prepare(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                            explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size)
        scores = self.evaluate(call)
        if isinstance(scores, Tensor):  # a device tensor: numpy reads host memory only
            scores = scores.detach().cpu()
        self.evaluation_scores = list(np.asarray(scores, dtype=np.float64))
        if self.return_aggregate:
            self.evaluation_scores = [self.aggregate_func(self.evaluation_scores)]
        self.all_evaluation_scores.extend(self.evaluation_scores)
        return self.evaluation_scores

    def evaluate(self, call: QuantusCall) -> Any:
        """Per-example scores ``[B]`` (numpy or tensor) of one call."""
        raise NotImplementedError

    def requires_explain_func(self) -> bool:
        """Whether the metric explains perturbed inputs (so ``explain_func`` is needed even with ``a_batch``)."""
        return True

    def prepare(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any, s_batch: Any,
                channel_first: Optional[bool], explain_func: Optional[Callable[..., Any]],
                explain_func_kwargs: Optional[Mapping[str, Any]], model_predict_kwargs: Optional[Mapping[str, Any]],
                softmax: Optional[bool], device: Optional[Any], batch_size: int) -> QuantusCall:
        """Check and format the arguments of ``__call__`` (before any compute)."""
        if model is None or not callable(model):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if device is None:
            param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
            dev = param.device if param is not None else torch.device("cpu")
        else:
            dev = torch.device(device)
        x = _as_tensor(x_batch, "x_batch", dev)
        if not x.is_floating_point():
            raise TypeError(f"x_batch: expected floating-point values, got {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"x_batch: expected shape [B, ...] with features, got {tuple(x.shape)}")
        if channel_first is None:
            channel_first = infer_channel_first(tuple(x.shape))
        x = make_channel_first(x, bool(channel_first)).contiguous()
        y = _as_tensor(y_batch, "y_batch", dev)
        if y.is_floating_point() or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y_batch: expected {x.shape[0]} integer classes (one per example), got "
                f"{y.dtype} of shape {tuple(y.shape)}"
            )
        y = y.to(torch.int64)
        if not v._all_finite(x):
            raise ValueError("x_batch: contains NaN or Inf")
        kwargs = dict(explain_func_kwargs or {})
        explainer = func = None
        if explain_func is not None:
            if not callable(explain_func):
                raise TypeError(f"explain_func: expected a callable, got {type(explain_func).__name__}")
            if Explainer(explain_func).is_fastattr:
                kwargs.pop("device", None)  # Quantus adds it for its own explain functions
                explainer = Explainer(explain_func, kwargs, model_form="eager")  # Quantus's numbers
            else:
                if device is not None and "device" not in kwargs:
                    kwargs["device"] = device
                func = explain_func
        elif a_batch is None or self.requires_explain_func():
            raise ValueError("explain_func: required (a fastattr explainer or a Quantus-style callable)")
        a = None
        if a_batch is not None:
            a = expand_attribution_channel(_as_tensor(a_batch, "a_batch", dev), tuple(x.shape), "a_batch")
            if not a.is_floating_point() or not v._all_finite(a):
                raise ValueError("a_batch: expected finite floating-point values")
        s = None if s_batch is None else _as_tensor(s_batch, "s_batch", dev)
        call = QuantusCall(
            model=model, x=x, y=y, a=None, s=s, explainer=explainer, explain_func=func,
            explain_func_kwargs=kwargs, device=dev, batch_size=v.check_positive_int(batch_size, "batch_size"),
            normalise=self.normalise_func, abs=self.abs, model_predict_kwargs=dict(model_predict_kwargs or {}),
            softmax=bool(softmax), channel_first=bool(channel_first),
        )
        call.a = None if a is None else call.finish(a)
        return call


REPLACEMENT_BASELINES = ("black", "white", "uniform")


def require_perturb_func(perturb_func: Any, supported: str) -> None:
    """NotImplementedError unless ``perturb_func`` is None (the metric's
    default) or Quantus's own ``quantus.functions.perturb_func.<supported>``."""
    if perturb_func is not None and quantus_function_name(
            perturb_func, "quantus.functions.perturb_func") != supported:
        raise NotImplementedError(f"perturb_func={perturb_func!r}: fastattr supports Quantus's {supported} only")


def uniform_range(perturb_func_kwargs: Optional[Mapping[str, Any]]) -> Tuple[float, float]:
    """``(uniform_low, uniform_high)`` of a replacement's ``perturb_func_kwargs``
    (Quantus's 0 and 1 by default, the range of the ``"uniform"`` fill); any other key is refused."""
    extra = dict(perturb_func_kwargs or {})
    low, high = float(extra.pop("uniform_low", 0.0)), float(extra.pop("uniform_high", 1.0))
    reject("perturb_func_kwargs", extra or None, None, "only uniform_low and uniform_high are used")
    return low, high


def baseline_replacement(perturb_func: Any, perturb_baseline: Any,
                         perturb_func_kwargs: Optional[Mapping[str, Any]]) -> Tuple[Any, float, float]:
    """Check Quantus's ``batch_baseline_replacement_by_indices`` options (the
    perturbation of Infidelity and PixelFlipping): ``(perturb_baseline,
    uniform_low, uniform_high)``."""
    require_perturb_func(perturb_func, "batch_baseline_replacement_by_indices")
    if isinstance(perturb_baseline, str):
        if perturb_baseline == "mean":
            raise NotImplementedError(
                "perturb_baseline='mean': Quantus's fill value changes with every replaced step; "
                f"fastattr supports {list(REPLACEMENT_BASELINES)} or a number"
            )
        v.check_choice(perturb_baseline, "perturb_baseline", REPLACEMENT_BASELINES)
    elif isinstance(perturb_baseline, bool) or not isinstance(perturb_baseline, (int, float)):
        raise ValueError(
            f"perturb_baseline: expected one of {list(REPLACEMENT_BASELINES)} or a number, got {perturb_baseline!r}"
        )
    return (perturb_baseline, *uniform_range(perturb_func_kwargs))
