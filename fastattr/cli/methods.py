"""The explanation methods an audit can compare: every input-space attribution
method of :mod:`fastattr.attr`, each with its settings (declared with
:class:`~fastattr.cli.options.Setting`, set by ``--method-option`` or
``--config``) and how the audit calls it.

Every method returns attributions shaped like the inputs ``[b, *F]``, so every
metric can score it:

- Grad-CAM's map ``[b, 1, h, w]`` (and layer integrated gradients' ``[b, C', h,
  w]``, summed over the layer's channels) is upsampled to the input's last two
  dims with ``F.interpolate`` (mode: the ``interpolate_mode`` setting,
  default ``"bilinear"``) and spread over the input's channels (every dim
  between the batch and the last two), divided by their number ``C``. The
  division keeps the sum over an input's features equal to the upsampled
  map's sum: a pixel's evidence is shared by its channels, not counted once
  per channel, so a map's total (what infidelity and the deletion curves
  weigh) does not depend on whether the input is RGB or grayscale. The
  upsampling itself multiplies the total by about ``H W / (h w)``.
- The ``layer`` of the CAM and layer methods is a name from
  ``model.named_modules()``, or ``"auto"``: the module that computes the last
  4-D output ``[1, C, H, W]`` with ``H * W > 1`` of a forward of one example,
  among the modules that run once per forward (:func:`find_auto_layer`; for
  torchvision's resnet18 ``layer4``, for mobilenet_v3_small, efficientnet_b0,
  densenet121 and convnext_tiny ``features``, for vgg11 ``avgpool``, for
  vit_b_16 its patch embedding ``conv_proj``). A model without one (an MLP, a
  ViT whose patches are cut without a convolution) cannot be explained by
  them (:func:`check_applicable` says why).
- Noise settings (``stdev`` of SmoothGrad and GradientSHAP) are fractions of
  the audited data set's value range ``max(x) - min(x)``, as the SmoothGrad
  paper's noise level ``sigma / (x_max - x_min)``; fastattr (like Captum)
  takes an absolute standard deviation, ``stdev * range``. One range for the
  whole data set, so a batch's noise does not depend on its neighbours.
- Random draws are keyed by the seed and each example's data-set index
  (``example_offset``), so a batch's result does not depend on where it runs.
- Reference sets (expected gradients, DeepLIFT SHAP, GradientSHAP with
  ``baselines = "background"``) are the first ``background`` examples of one
  permutation of the audited data set drawn from the seed
  (:func:`make_context`): the same for every batch, and a method's set does
  not depend on what the other methods ask for.

Left out: the ``neuron_*`` functions (they explain one neuron of a layer, not
the class score) and the other layer functions (``layer_activation`` is no
attribution; ``layer_conductance``, ``internal_influence``,
``layer_gradient_x_activation``, ``layer_gradient_shap``, ``layer_deeplift``,
``layer_deeplift_shap`` and ``layer_lrp`` attribute to a layer's units, and
only Grad-CAM and layer integrated gradients have a customary map back to the
input). Of the CAM family, the gradient maps (Grad-CAM++, XGrad-CAM, HiResCAM,
LayerCAM; raw and signed, before pytorch-grad-cam's ReLU and min-max
scaling) are offered; Eigen-CAM ignores the target, and Score-CAM and
Ablation-CAM cost a forward per channel of the layer for every explained
row (512 per example at a ResNet's ``layer4``, again for every perturbed
copy a metric explains): call :func:`fastattr.score_cam` and
:func:`fastattr.ablation_cam` directly.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import attr as _attr
from ..attr import lrp_rules
from ..attr.quadrature import METHODS as QUADRATURES
from ..attr.smoothgrad import EXPLAINERS as SMOOTHGRAD_EXPLAINERS
from ..attr.smoothgrad import KINDS as SMOOTHGRAD_KINDS
from .config import AuditError
from .options import Resolved, Setting, boolean, choice, choice_or_number, describe, integer, number

Model = Callable[..., Tensor]
Explainer = Union[str, Callable[..., Tensor]]


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What some methods take from the audited data set, made once per audit by :func:`make_context`."""

    background: Tensor  # [K, *F]: the first K of a seed-keyed permutation of the data set
    mean: Tensor  # [1, *F]: the data-set mean (the "mean" baselines)
    value_range: float  # max(x) - min(x) over the data set: the unit of the noise settings
    auto_layer: Optional[str]  # the "auto" layer's name, None when the model has none
    auto_layer_problem: Optional[str] = None  # why there is no "auto" layer (when one was looked for)
    # Where the user's model sits inside the audit's wrappers (input normalization,
    # output selection): layer names are the user's, looked up under this prefix.
    layer_prefix: str = ""
    # The form the rows of a method that takes model_form run the model in (--model-form).
    model_form: str = "fast"


@dataclasses.dataclass(frozen=True)
class Method:
    """An audit method: a fastattr function, its settings and how they become its options."""

    function: str  # the fastattr.attr function
    summary: str
    settings: Tuple[Setting, ...]
    # (settings, x [b, *F], context) -> the function's keyword options (not model, inputs, target, budget, layer, keys)
    options: Callable[[Dict[str, Any], Tensor, MethodContext], Dict[str, Any]]
    keyed: bool = False  # takes seed and example_offset
    # (the function's output, x, settings) -> [b, *F]: a layer map brought to input space
    to_input: Optional[Callable[[Any, Tensor, Dict[str, Any]], Tensor]] = None
    # settings -> a problem no single setting shows (None: fine)
    check: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None
    # settings -> model rows (forward and backward) per explained example: the method's cost
    rows: Callable[[Dict[str, Any]], int] = lambda settings: 1
    # settings -> whether the function's own options make it return (attributions, accuracy report)
    reports_error: Callable[[Dict[str, Any]], bool] = lambda settings: False
    # settings -> options that make the function also return its error (when it has one)
    error_options: Callable[[Dict[str, Any]], Dict[str, Any]] = lambda settings: {}

    @property
    def uses_layer(self) -> bool:
        return any(s.name == "layer" for s in self.settings)


# --- settings shared by several methods ---

_BASELINES = ("zeros", "blur", "mean")
_BLUR_SIGMA, _BLUR_KERNEL = 5.0, 11  # the insertion curve's blur (fastattr.metrics.deletion)
# F.interpolate's modes for a [b, 1, h, w] map.
_MAP_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # where the chosen LRP rule goes


def _baseline_setting() -> Setting:
    return Setting("baseline", "zeros", choice_or_number(_BASELINES),
                   "zeros | blur (the input blurred by an 11x11 Gaussian, sigma 5) | mean (the data-set mean) "
                   "| a number")


def _steps_setting() -> Setting:
    return Setting("n_steps", 16, integer(1), "points on the path (integer >= 1)")


def _quadrature_setting() -> Setting:
    return Setting("method", "gausslegendre", choice(*QUADRATURES), f"quadrature rule: {' | '.join(QUADRATURES)}")


def _samples_setting() -> Setting:
    return Setting("n_samples", 8, integer(1), "random draws per example (integer >= 1)")


def _stdev_setting(default: float) -> Setting:
    return Setting("stdev", default, number(0.0),
                   "input noise, a fraction of the data set's value range max - min (number >= 0)")


def _background_setting(default: int, minimum: int) -> Setting:
    return Setting("background", default, integer(minimum),
                   f"reference examples drawn from the audited data set, keyed by the seed (integer >= {minimum})")


def _layer_setting() -> Setting:
    return Setting("layer", "auto", _layer_name,
                   "a module name from model.named_modules(), or auto: the last 4-D output [C, H, W] with H*W > 1")


def _mode_setting() -> Setting:
    return Setting("interpolate_mode", "bilinear", choice(*_MAP_MODES),
                   f"upsampling of the layer map to the input: {' | '.join(_MAP_MODES)}")


def _layer_name(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError("expected a module name from model.named_modules(), or auto")


def _riemann_steps(settings: Dict[str, Any]) -> Optional[str]:
    if settings["method"] != "gausslegendre" and settings["n_steps"] < 2:
        return f"the {settings['method']} rule needs n_steps >= 2, got {settings['n_steps']}"
    return None


def _ig_check(settings: Dict[str, Any]) -> Optional[str]:
    if settings["rtol"] == "off":
        return _riemann_steps(settings)
    if settings["rtol"] <= 0:
        return f"rtol must be > 0 (or off), got {settings['rtol']}"
    if settings["method"] != "gausslegendre":
        return (f"method={settings['method']} is a fixed rule, but rtol={settings['rtol']} refines each path "
                "with its own (the adaptive trapezoid): set rtol=off to use a fixed rule")
    return None


def _ig_rows(settings: Dict[str, Any]) -> int:
    # With rtol each example takes the steps it needs (5 to max_steps): the
    # plan counts n_steps for it, the fixed rule's count, as its estimate.
    return settings["n_steps"] if settings["rtol"] == "off" else min(max(5, settings["n_steps"]), settings["max_steps"])


# --- settings to options ---

def _baseline(value: Union[str, float], x: Tensor, context: MethodContext) -> Union[float, Tensor]:
    """A path baseline: a number, the mean ``[1, *F]`` or the blurred inputs ``[b, *F]``."""
    if value == "zeros":
        return 0.0
    if value == "mean":
        return context.mean.to(x.dtype)
    if value == "blur":
        from ..metrics.deletion import gaussian_blur

        return gaussian_blur(x, _BLUR_SIGMA, _BLUR_KERNEL)
    return float(value)


def _background(settings: Dict[str, Any], x: Tensor, context: MethodContext) -> Tensor:
    """The method's reference set ``[M, *F]``."""
    return context.background[:settings["background"]].to(x.dtype)


def _noise(settings: Dict[str, Any], context: MethodContext) -> float:
    return settings["stdev"] * context.value_range


def _smoothgrad_rows(settings: Dict[str, Any]) -> int:
    return settings["n_samples"] * (settings["n_steps"] if settings["explainer"] == "integrated_gradients" else 1)


def _no_options(settings: Dict[str, Any], x: Tensor, context: MethodContext) -> Dict[str, Any]:
    return {}


def _path_options(settings: Dict[str, Any], x: Tensor, context: MethodContext) -> Dict[str, Any]:
    return {"n_steps": settings["n_steps"], "method": settings["method"],
            "baselines": _baseline(settings["baseline"], x, context)}


def _ig_options(settings: Dict[str, Any], x: Tensor, context: MethodContext) -> Dict[str, Any]:
    if settings["rtol"] == "off":
        return _path_options(settings, x, context)
    return {"rtol": settings["rtol"], "max_steps": settings["max_steps"],
            "baselines": _baseline(settings["baseline"], x, context)}


def _smoothgrad_error(settings: Dict[str, Any]) -> Dict[str, Any]:
    """SmoothGrad's standard error where it has one: the mean (or mean of
    squares) over at least two independent units (antithetic pairs)."""
    units = settings["n_samples"] // 2 if settings["n_samples"] % 2 == 0 else 0
    return {"return_standard_error": True} if settings["kind"] != "vargrad" and units >= 2 else {}


def _smoothgrad_options(settings: Dict[str, Any], x: Tensor, context: MethodContext) -> Dict[str, Any]:
    inner = {"saliency": {"abs": settings["abs"]}, "input_x_gradient": {},
             "integrated_gradients": {"n_steps": settings["n_steps"]}}[settings["explainer"]]
    return {"n_samples": settings["n_samples"], "stdev": _noise(settings, context), "kind": settings["kind"],
            "explainer": settings["explainer"], "explainer_kwargs": inner}


def _gradient_shap_options(settings: Dict[str, Any], x: Tensor, context: MethodContext) -> Dict[str, Any]:
    chosen = settings["baselines"]
    if chosen == "background":
        baselines: Union[float, Tensor] = _background(settings, x, context)
    else:
        baselines = context.mean.to(x.dtype) if chosen == "mean" else (0.0 if chosen == "zeros" else float(chosen))
    return {"baselines": baselines, "n_samples": settings["n_samples"], "stdev": _noise(settings, context)}


def lrp_composite(settings: Dict[str, Any]) -> lrp_rules.Composite:
    """The LRP composite of ``settings``: :func:`fastattr.attr.default_composite`
    (Captum's epsilon rule, its ``batchnorm`` mode and ``epsilon``) with
    ``rule`` on the Linear and Conv layers."""
    base = _attr.default_composite(settings["batchnorm"], settings["epsilon"])
    eps = settings["epsilon"]
    rule = {"epsilon": lrp_rules.EpsilonRule(eps), "gamma": lrp_rules.GammaRule(settings["gamma"], epsilon=eps),
            "alpha1beta0": lrp_rules.Alpha1_Beta0_Rule(epsilon=eps),
            "zplus": lrp_rules.ZPlusRule(epsilon=eps)}[settings["rule"]]
    rules = {t: (rule if t in _WEIGHTED else r) for t, r in base.rules_by_type.items()}
    return lrp_rules.Composite(rules, base.batchnorm)


# --- layer maps to input space ---

def spread_map(cam: Tensor, x: Tensor, mode: str) -> Tensor:
    """``[b, *F]``: the map ``cam`` ``[b, 1, h, w]`` upsampled to ``x``'s last two
    dims ``(H, W)`` by ``F.interpolate(mode)`` and divided evenly among the
    ``C = prod(F[:-2])`` features of every pixel (``x``: ``[b, *F]``, at least 3 dims)."""
    if x.dim() < 3:
        raise ValueError(f"a layer map needs inputs [b, ..., H, W] to be upsampled to, got {list(x.shape)}")
    if not isinstance(cam, Tensor) or cam.dim() != 4 or cam.shape[1] != 1:
        got = list(cam.shape) if isinstance(cam, Tensor) else type(cam).__name__
        raise ValueError(f"the layer's map is not [b, 1, h, w] (a 4-D layer output), got {got}")
    height, width = x.shape[-2:]
    channels = math.prod(x.shape[1:-2])
    up = F.interpolate(cam, size=(height, width), mode=mode)
    return (up / channels).expand(x.shape[0], channels, height, width).reshape(x.shape).to(x.dtype)


def _cam_to_input(out: Any, x: Tensor, settings: Dict[str, Any]) -> Tensor:
    return spread_map(out, x, settings["interpolate_mode"])


def _family_map_to_input(out: Any, x: Tensor, settings: Dict[str, Any]) -> Tensor:
    # the CAM family's raw maps are [b, h, w]: signed, before pytorch-grad-cam's ReLU and min-max scaling
    return spread_map(out.unsqueeze(1) if isinstance(out, Tensor) and out.dim() == 3 else out, x,
                      settings["interpolate_mode"])


def _gradient_cam(function: str, summary: str) -> Method:
    return Method(function, f"{summary} of a layer, upsampled to the input (one backward to the layer)",
                  (_layer_setting(), _mode_setting()), _no_options, to_input=_family_map_to_input)


def _layer_attributions_to_input(out: Any, x: Tensor, settings: Dict[str, Any]) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() != 4:
        got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the layer's attributions are not [b, C, h, w] (a 4-D layer output), got {got}")
    return spread_map(out.sum(1, keepdim=True), x, settings["interpolate_mode"])


# --- the registry ---

_LRP_RULES = ("epsilon", "gamma", "alpha1beta0", "zplus")

METHODS: Dict[str, Method] = {
    "saliency": Method(
        "saliency", "gradient of the class score (one backward)",
        (Setting("abs", True, boolean, "absolute value of the gradient (true | false)"),),
        lambda s, x, c: {"abs": s["abs"]}),
    "input_x_gradient": Method("input_x_gradient", "input times gradient (one backward)", (), _no_options),
    "integrated_gradients": Method(
        "integrated_gradients",
        "path integral of gradients from a baseline, each example's path refined to rtol (up to max_steps "
        "backwards, planned at n_steps; exactly n_steps with rtol = off)",
        (Setting("rtol", 0.05, choice_or_number(("off",)),
                 "relative error each example's attribution is refined to, as estimated (docs/accuracy.md), "
                 "or off for a fixed n_steps rule"),
         Setting("max_steps", 64, integer(5), "rtol: the most path points per example (integer >= 5)"),
         _steps_setting(), _quadrature_setting(), _baseline_setting()),
        _ig_options, check=_ig_check, rows=_ig_rows, reports_error=lambda s: s["rtol"] != "off"),
    "smoothgrad": Method(
        "smoothgrad", "an explainer averaged over noisy copies (n_samples x its cost)",
        (_samples_setting(), _stdev_setting(0.1),
         Setting("kind", "smoothgrad", choice(*SMOOTHGRAD_KINDS), f"{' | '.join(SMOOTHGRAD_KINDS)}"),
         Setting("explainer", "saliency", choice(*SMOOTHGRAD_EXPLAINERS),
                 f"the smoothed explainer: {' | '.join(SMOOTHGRAD_EXPLAINERS)}"),
         Setting("abs", True, boolean, "explainer = saliency: absolute gradient (true | false)"),
         Setting("n_steps", 16, integer(1),
                 "explainer = integrated_gradients: Gauss-Legendre steps from a zero baseline (integer >= 1)")),
        _smoothgrad_options, keyed=True, rows=_smoothgrad_rows, error_options=_smoothgrad_error),
    "gradient_shap": Method(
        "gradient_shap", "gradients at random points between the noisy input and drawn baselines (n_samples backwards)",
        (_samples_setting(), _stdev_setting(0.1),
         Setting("baselines", "zeros", choice_or_number(("zeros", "mean", "background")),
                 "zeros | mean (the data-set mean) | background (the drawn reference examples) | a number"),
         _background_setting(16, 1)),
        _gradient_shap_options, keyed=True, rows=lambda s: s["n_samples"]),
    "expected_gradients": Method(
        "expected_gradients", "gradient SHAP over reference examples from the data set (n_samples backwards)",
        (_samples_setting(), _background_setting(16, 1)),
        lambda s, x, c: {"baselines": _background(s, x, c), "n_samples": s["n_samples"]}, keyed=True,
        rows=lambda s: s["n_samples"]),
    "deeplift": Method(
        "deeplift", "DeepLIFT rescale rule against a baseline (one backward; an nn.Module)",
        (_baseline_setting(),), lambda s, x, c: {"baselines": _baseline(s["baseline"], x, c)},
        rows=lambda s: 2),  # the model runs on the rows beside their baselines
    "deeplift_shap": Method(
        "deeplift_shap", "DeepLIFT averaged over reference examples (background backwards; an nn.Module)",
        (_background_setting(8, 2),), lambda s, x, c: {"baselines": _background(s, x, c)},
        rows=lambda s: 2 * s["background"]),
    "guided_backprop": Method("guided_backprop", "guided backpropagation (one backward; an nn.Module)", (),
                              _no_options),
    "deconvolution": Method("deconvolution", "deconvolution (one backward; an nn.Module)", (), _no_options),
    "lrp": Method(
        "lrp", "layer-wise relevance propagation (one backward; an nn.Module with LRP rules for its layers)",
        (Setting("rule", "epsilon", choice(*_LRP_RULES),
                 f"rule of the Linear/Conv layers: {' | '.join(_LRP_RULES)} (others: epsilon, Captum's default)"),
         Setting("epsilon", 1e-9, number(0.0, above=True), "stabilizer of every rule (number > 0)"),
         Setting("gamma", 0.25, number(0.0), "rule = gamma: weight of the positive weights (number >= 0)"),
         Setting("batchnorm", "rule", choice(*lrp_rules.BATCHNORM_MODES),
                 f"BatchNorm layers: {' | '.join(lrp_rules.BATCHNORM_MODES)}")),
        lambda s, x, c: {"composite": lrp_composite(s)}),
    "grad_cam": Method(
        "grad_cam", "Grad-CAM map of a layer, upsampled to the input (one backward to the layer)",
        (_layer_setting(),
         Setting("relu_attributions", True, boolean, "keep the positive part, as the Grad-CAM paper (true | false)"),
         _mode_setting()),
        lambda s, x, c: {"relu_attributions": s["relu_attributions"]}, to_input=_cam_to_input),
    "grad_cam_plus_plus": _gradient_cam("grad_cam_plus_plus", "Grad-CAM++ map"),
    "xgrad_cam": _gradient_cam("xgrad_cam", "XGrad-CAM map"),
    "hires_cam": _gradient_cam("hires_cam", "HiResCAM map (gradient times activation, no pooling)"),
    "layer_cam": _gradient_cam("layer_cam", "LayerCAM map"),
    "guided_grad_cam": Method(
        "guided_grad_cam", "guided backpropagation times the upsampled Grad-CAM map (two backwards; an nn.Module)",
        (_layer_setting(), _mode_setting()),
        lambda s, x, c: {"interpolate_mode": s["interpolate_mode"]}, rows=lambda s: 2),
    "layer_integrated_gradients": Method(
        "layer_integrated_gradients",
        "integrated gradients at a layer, summed over its channels and upsampled to the input (n_steps backwards)",
        (_layer_setting(), _steps_setting(), _quadrature_setting(), _baseline_setting(), _mode_setting()),
        _path_options, to_input=_layer_attributions_to_input, check=_riemann_steps, rows=lambda s: s["n_steps"]),
}

METHOD_SETTINGS: Dict[str, Tuple[Setting, ...]] = {name: m.settings for name, m in METHODS.items()}

DEFAULT_METHODS: Tuple[str, ...] = (
    "saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop",
)


def method_rows(settings: Resolved) -> Dict[str, int]:
    """Model rows (a forward and a backward each) per explained example of
    every method in ``settings`` (method -> its resolved settings): the plan's cost."""
    return {name: METHODS[name].rows(values) for name, values in settings.items()}


def describe_methods() -> str:
    """The ``--methods list`` text: every method, its cost, its settings with defaults."""
    return describe(METHOD_SETTINGS, {name: m.summary for name, m in METHODS.items()})


def check_settings(settings: Resolved, option: str) -> None:
    """Settings that are fine one by one but not together (a Riemann rule with
    one step) raise AuditError naming ``option``. ``settings``: method -> its resolved settings."""
    for name, values in settings.items():
        problem = METHODS[name].check(values) if METHODS[name].check else None
        if problem:
            raise AuditError(f"{option}: {name}: {problem}")


# --- the audit's context ---

def find_auto_layer(model: Model, x_one: Tensor) -> str:
    """The name of the module whose output is the last 4-D tensor ``[1, C, H, W]``
    with ``H * W > 1`` computed in ``model(x_one)`` (``x_one``: ``[1, *F]``),
    among the modules that run once (a parent that returns its child's tensor
    completes later, so it is the one named). ValueError with the reason when there is none."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"the layer methods need an nn.Module model, got a {type(model).__name__}")
    calls: Dict[str, int] = {}
    spatial = []  # names, in the order their 4-D outputs were computed

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
                spatial.append(name)
        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook_for(name)))
        with torch.no_grad():
            model(x_one)
    except RuntimeError as e:  # TorchScript modules take no Python hooks
        raise ValueError(f"cannot look for the auto layer: {str(e).splitlines()[0]}") from None
    finally:
        for h in handles:
            h.remove()
    once = [n for n in spatial if calls[n] == 1]
    if not once:
        raise ValueError("the model has no module with a 4-D output [1, C, H, W] (H*W > 1) that runs once "
                         "per forward: no layer for the CAM and layer methods")
    return once[-1]


def make_context(model: Model, data_x: Tensor, seed: int, settings: Resolved, device: torch.device,
                 layer_prefix: str = "", model_form: str = "fast") -> MethodContext:
    """The audit's :class:`MethodContext` for the chosen methods' ``settings``
    (method -> resolved settings): the data set ``data_x`` ``[N, *F]``'s mean
    and range, a seed-keyed permutation's first ``max(background)`` examples,
    and the "auto" layer (looked for only when a chosen layer method asks for
    it). A named layer the model lacks raises AuditError. ``layer_prefix``:
    the user's model's path inside ``model`` (layer names are the user's).
    ``model_form``: what the methods that take one run the model in."""
    data = torch.as_tensor(data_x)
    wanted = max((s["background"] for s in settings.values() if "background" in s), default=0)
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))[:wanted]
    layers = {name: s["layer"] for name, s in settings.items() if METHODS[name].uses_layer}
    _check_named_layers(model, {m: n for m, n in layers.items() if n != "auto"}, layer_prefix)
    auto, problem = None, None
    if "auto" in layers.values():
        try:
            auto = find_auto_layer(model, data[:1].to(device))
        except ValueError as e:
            problem = str(e)
        if auto is not None and not auto.startswith(layer_prefix):
            auto, problem = None, f"the last spatial module {auto!r} is not part of the model"
        auto = auto[len(layer_prefix):] if auto is not None else None
    return MethodContext(
        background=data[order].to(device),
        mean=data.mean(0, keepdim=True, dtype=torch.float64).to(data.dtype).to(device),
        value_range=float(data.max()) - float(data.min()) if data.numel() else 0.0,
        auto_layer=auto, auto_layer_problem=problem, layer_prefix=layer_prefix, model_form=model_form,
    )


def _check_named_layers(model: Model, layers: Mapping[str, str], prefix: str) -> None:
    if not layers:
        return
    modules = dict(model.named_modules()) if isinstance(model, nn.Module) else {}
    for method, name in layers.items():
        if prefix + name not in modules:
            raise AuditError(f"--method-option: {method}.layer: the model has no module {name!r} "
                             f"(names as in model.named_modules(), or auto)")


def _layer(model: Model, settings: Dict[str, Any], context: MethodContext) -> nn.Module:
    name = settings["layer"] if settings["layer"] != "auto" else context.auto_layer
    if name is None:
        raise ValueError(context.auto_layer_problem or "no auto layer was looked for (make_context)")
    if not isinstance(model, nn.Module):
        raise ValueError(f"the layer methods need an nn.Module model, got a {type(model).__name__}")
    return dict(model.named_modules())[context.layer_prefix + name]


# --- the explanations ---

def explain(method: str, model: Model, x: Tensor, target: Tensor, seed: int, offset: int,
            memory_budget: Optional[int], settings: Dict[str, Any], context: MethodContext) -> Tensor:
    """Attributions ``[b, *F]`` of ``model(x)[i, target[i]]`` (``x``: ``[b, *F]``,
    ``target``: int64 ``[b]``) by ``method`` with its resolved ``settings``;
    random draws keyed by ``seed`` and example ``offset + i`` (``offset``: the
    data-set index of ``x[0]``). Raises what the fastattr function raises, and
    ValueError when the result is not shaped like ``x``."""
    return explain_with_error(method, model, x, target, seed, offset, memory_budget, settings, context,
                              want_error=False)[0]


def explain_with_error(method: str, model: Model, x: Tensor, target: Tensor, seed: int, offset: int,
                       memory_budget: Optional[int], settings: Dict[str, Any], context: MethodContext,
                       want_error: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`explain`'s attributions and, with ``want_error``, the method's
    own estimate of each example's relative error, float64 ``[b]`` (IG with
    ``rtol``: the path's estimated error; SmoothGrad: the standard error of
    its noise average), or None for a method without one."""
    m = METHODS[method]
    kwargs = m.options(settings, x, context)
    error_options = m.error_options(settings) if want_error else {}
    kwargs.update(error_options)
    if m.uses_layer:
        kwargs["layer"] = _layer(model, settings, context)
    if m.keyed:
        kwargs.update(seed=seed, example_offset=offset)
    if m.function in FORM_FUNCTIONS:
        kwargs["model_form"] = context.model_form
    out = getattr(_attr, m.function)(model, x, target=target, memory_budget=memory_budget, **kwargs)
    error = None
    if m.reports_error(settings) or error_options:
        out, report = out
        error = getattr(report, "error", report).to(torch.float64)
    if m.to_input is not None:
        out = m.to_input(out, x, settings)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{method} gave attributions shaped {got}, not like the inputs {list(x.shape)}")
    return out, error


def _reads_input_values(settings: Dict[str, Any]) -> bool:
    """Whether the method's options depend on the explained inputs' values (a blurred baseline)."""
    return settings.get("baseline") == "blur"


def explainer_for(method: str, x: Tensor, seed: int, memory_budget: Optional[int], settings: Dict[str, Any],
                  context: MethodContext) -> Tuple[Explainer, Dict[str, Any]]:
    """``(explainer, explainer_kwargs)`` for a :mod:`fastattr.metrics` function
    that re-explains perturbed copies of the batch ``x`` ``[b, *F]`` (only its
    shape, dtype and device are used) exactly as :func:`explain` does.

    A method whose options are fixed tensors and numbers gives its fastattr
    function's name and options (the metric keys the draws itself by its
    ``example_offset``, and folds saliency, input x gradient and integrated
    gradients into its own engine run; fragility can differentiate those).
    The others (layer methods, a ``"blur"`` baseline, which is the blur of
    each perturbed copy, IG refined to ``rtol``, whose function returns its
    accuracy report too) give a callable with the metrics' explainer
    signature that runs :func:`explain` on the model it is handed (a
    randomized copy in the randomization test), with ``memory_budget`` in
    its kwargs (the metrics pass a budget to fastattr's own functions only)."""
    m = METHODS[method]
    # (a method that reports its error returns a pair: run through explain, which unpacks it)
    if m.uses_layer or m.to_input is not None or _reads_input_values(settings) or m.reports_error(settings):
        def explainer(model: Model, inputs: Tensor, target: Any = None, additional_forward_args: Any = None,
                      memory_budget: Optional[int] = None, example_offset: int = 0) -> Tensor:
            if additional_forward_args is not None:
                raise ValueError(f"{method}: the audit's explainer takes no additional_forward_args")
            return explain(method, model, inputs, target, seed, example_offset, memory_budget, settings, context)
        return explainer, {"memory_budget": memory_budget}
    kwargs = m.options(settings, x, context)
    if m.keyed:
        kwargs["seed"] = seed
    if m.function in FORM_FUNCTIONS:
        kwargs["model_form"] = context.model_form
    return m.function, kwargs


# The fastattr functions that take model_form (the others hook the caller's modules).
FORM_FUNCTIONS = frozenset(n for n in _attr.__all__ if n[0].islower() and n not in _attr.HELPERS
                           and "model_form" in inspect.signature(getattr(_attr, n)).parameters)

_LIBRARY_REFUSALS = (ValueError, TypeError, NotImplementedError, RuntimeError)


def check_applicable(method: str, model: Model, x_one: Tensor, target_one: Tensor, settings: Dict[str, Any],
                     context: MethodContext) -> Optional[str]:
    """None when ``method`` explains ``model`` on the example ``x_one``
    ``[1, *F]`` (target ``[1]``) with finite attributions shaped like it; else
    a one-line reason (what the library refused, or the non-finite values).
    Out-of-memory errors are raised, not reasons."""
    try:
        a = explain(method, model, x_one, target_one, 0, 0, None, settings, context)
    except torch.cuda.OutOfMemoryError:
        raise
    except _LIBRARY_REFUSALS as e:
        lines = str(e).strip().splitlines()
        return f"{method}: {lines[0] if lines else type(e).__name__}"
    if not bool(torch.isfinite(a).all()):
        return f"{method}: non-finite attributions (NaN or Inf) on the first example"
    return None

