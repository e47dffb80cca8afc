"""LRP propagation rules and the composite that assigns them per layer.

A rule says how a layer with weights (or a pooling / addition layer) splits
the relevance ``R`` of its outputs among its inputs. Every rule here is a
*z-rule*: the layer is evaluated on modified inputs with modified parameters
in one or more branches ``k``, and

    z'   = sum_k layer_k(x_k)                     (the rule's outputs)
    d    = z' + eps * sign(z')                    (sign(0) = +1, Captum's stabilizer)
    R_in = sum_k x_k * J_k^T (R / d)              (J_k: the Jacobian of layer_k)

EpsilonRule is one branch with nothing modified; GammaRule and
Alpha1_Beta0_Rule modify the weights as Captum 0.9's rules of the same names
(``captum/attr/_utils/lrp_rules.py``); ZPlusRule is the z+ rule of Zennit
(positive inputs with positive weights plus negative inputs with negative
weights). IdentityRule passes ``R`` through unchanged.

Zennit's rules that one z-rule cannot express, several denominators or
layer copies on inputs other than x's parts, are :class:`MultiTermRule`s
(Zennit's ``BasicHook`` terms): AlphaBetaRule (any alpha - beta = 1),
GeneralizedGammaRule (Zennit 0.5's Gamma), FlatRule, WSquareRule, ZBoxRule.
Zennit's named composites are in :mod:`fastattr.attr.lrp_zennit`.

A :class:`Composite` picks the rule of every leaf module that does not set
one itself (``module.rule = ...``, Captum's way; Captum's own rule objects
are translated by :func:`as_rule`). :func:`default_composite` gives Captum's
``SUPPORTED_LAYERS_WITH_RULES`` for the layers Captum knows, plus the 1-d/3-d
variants, more elementwise layers it does not (Hardswish, SiLU, GELU,
StochasticDepth...: relevance passes them unchanged), and the layers left to
the function rules (:data:`FUNCTIONS`: LayerNorm, attention, Embedding,
shape ops); :func:`captum_composite` gives Captum's and nothing more.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from .. import ops

# A branch's input part: the input itself, its positive or its negative part.
INPUT_PARTS = ("all", "positive", "negative")
BATCHNORM_MODES = ("rule", "identity", "fold")


@dataclass(frozen=True)
class Branch:
    """One term of a z-rule: which part of the input it sees and the
    parameters it uses instead of the layer's (name -> detached tensor)."""

    input_part: str
    params: Mapping[str, Tensor]


class PropagationRule:
    """Base of the z-rules. Subclasses set ``epsilon`` and override
    :meth:`branches` when they change the inputs or parameters."""

    epsilon: float = 1e-9

    def branches(self, params: Mapping[str, Tensor]) -> Optional[Tuple[Branch, ...]]:
        """The rule's branches given the layer's ``weight`` / ``bias`` (those
        it has); None: one branch on the layer as it is (no recomputation)."""
        return None


@dataclass(frozen=True)
class EpsilonRule(PropagationRule):
    """LRP-epsilon: ``R_in = x * W^T (R / (z + eps sign z))``. Captum's default."""

    epsilon: float = 1e-9


@dataclass(frozen=True)
class GammaRule(PropagationRule):
    """LRP-gamma: weights ``w + gamma * max(w, 0)`` (bias zeroed when asked)."""

    gamma: float = 0.25
    set_bias_to_zero: bool = False
    epsilon: float = 1e-9

    def branches(self, params: Mapping[str, Tensor]) -> Optional[Tuple[Branch, ...]]:
        new = {}
        if "weight" in params:
            w = params["weight"]
            new["weight"] = w + self.gamma * w.clamp(min=0)
        if self.set_bias_to_zero and "bias" in params:
            new["bias"] = torch.zeros_like(params["bias"])
        return (Branch("all", new),) if new else None


@dataclass(frozen=True)
class Alpha1_Beta0_Rule(PropagationRule):  # noqa: N801 (Captum's name)
    """Captum's alpha=1, beta=0 rule: weights ``max(w, 0)``, inputs as they are
    (the z+ rule when the inputs are non-negative, e.g. after a ReLU)."""

    set_bias_to_zero: bool = False
    epsilon: float = 1e-9

    def branches(self, params: Mapping[str, Tensor]) -> Optional[Tuple[Branch, ...]]:
        new = {}
        if "weight" in params:
            new["weight"] = params["weight"].clamp(min=0)
        if self.set_bias_to_zero and "bias" in params:
            new["bias"] = torch.zeros_like(params["bias"])
        return (Branch("all", new),) if new else None


@dataclass(frozen=True)
class ZPlusRule(PropagationRule):
    """The z+ rule for inputs of any sign (Zennit's ``ZPlus``): the positive
    contributions ``max(x, 0) max(w, 0) + min(x, 0) min(w, 0) (+ max(b, 0))``
    share the relevance. ``epsilon`` defaults to Zennit's stabilizer."""

    epsilon: float = 1e-6

    def branches(self, params: Mapping[str, Tensor]) -> Tuple[Branch, Branch]:
        pos = {name: p.clamp(min=0) for name, p in params.items()}
        neg = {name: (torch.zeros_like(p) if name == "bias" else p.clamp(max=0))
               for name, p in params.items()}
        return Branch("positive", pos), Branch("negative", neg)


# ---------------------------------------------------------------------------
# Zennit's rules with several denominators or inputs other than x's parts
# ---------------------------------------------------------------------------

# What a term's layer copy sees: a part of the input (INPUT_PARTS) or ones.
TERM_INPUTS = (*INPUT_PARTS, "ones")
# Which outputs keep a term's relevance: all, or those where the layer's own
# output (unmodified parameters) is > 0 / < 0 (Zennit's generalized Gamma).
OUTPUT_MASKS = ("none", "positive", "negative")


@dataclass(frozen=True, eq=False)
class Term:
    """One term of a :class:`MultiTermRule` (one of Zennit's ``BasicHook``
    modifier triples): the layer evaluated on ``input`` (a part of the
    input, ``"ones"``, or a constant tensor broadcast to the input) with
    ``params`` in place of its parameters, counted with ``sign`` in the
    denominator of its ``group`` and in the relevance, where the relevance is
    also scaled by ``scale``."""

    input: Any  # a TERM_INPUTS name or a Tensor
    params: Mapping[str, Tensor]
    group: int = 0
    sign: float = 1.0
    scale: float = 1.0
    output_mask: str = "none"


class MultiTermRule:
    """Base of the rules that :class:`PropagationRule`'s single z-rule cannot
    express (Zennit's ``BasicHook`` in general): for terms ``k`` with inputs
    ``x_k`` and layer copies ``layer_k``,

        d_g  = stab(sum_{k in g} sign_k layer_k(x_k), stabilizer)   (per group g)
        R_in = sum_k sign_k scale_k x_k * J_k^T (mask_k R / d_g(k))

    Subclasses set ``stabilizer`` and :meth:`terms`; :meth:`output` gives a
    layer's output this backward (``fastattr.lrp`` runs it once
    ``fastattr/attr/lrp.py`` dispatches it; until then it refuses the rule)."""

    stabilizer: float = 1e-6

    def terms(self, params: Mapping[str, Tensor]) -> Tuple[Term, ...]:
        """The rule's terms given the layer's detached ``weight`` / ``bias`` (those it has)."""
        raise NotImplementedError

    def output(self, value: Tensor, layer: Callable[[Tensor, Mapping[str, Tensor]], Tensor], x: Tensor,
               params: Mapping[str, Tensor]) -> Tensor:
        """``value`` (the layer's output ``[B, *O]`` for input ``x`` ``[B, *I]``)
        with this rule's backward: the relevance at ``x``. ``layer(x_k,
        overrides)`` is the layer on ``x_k`` with ``overrides`` in place of
        ``params`` (the parameters the layer has)."""
        return _MultiTermRelevance.apply(value, x, self, layer, dict(params))


def _term_input(term_input: Any, x: Tensor) -> Tensor:
    """A term's input for layer input ``x``, a new leaf requiring its gradient."""
    if isinstance(term_input, Tensor):
        part = term_input.to(x).expand(x.shape)
    elif term_input == "positive":
        part = x.clamp(min=0)
    elif term_input == "negative":
        part = x.clamp(max=0)
    elif term_input == "ones":
        part = torch.ones_like(x)
    else:
        part = x
    return part.detach().clone().requires_grad_(True)


def multi_term_relevance(rule: MultiTermRule, layer: Callable[[Tensor, Mapping[str, Tensor]], Tensor],
                         x: Tensor, params: Mapping[str, Tensor], relevance: Tensor) -> Tensor:
    """``R_in`` ``[B, *I]`` of ``rule`` (:class:`MultiTermRule`'s formula) for
    the relevance ``[B, *O]`` at the output of ``layer`` at input ``x``."""
    terms = rule.terms(params)
    with torch.enable_grad():
        inputs = [_term_input(t.input, x.detach()) for t in terms]
        outputs = [layer(i, {**params, **t.params}) for i, t in zip(inputs, terms)]
    with torch.no_grad():
        own = layer(x.detach(), dict(params)) if any(t.output_mask != "none" for t in terms) else None
        sums: Dict[int, Tensor] = {}
        for t, z in zip(terms, outputs):
            sums[t.group] = sums[t.group] + t.sign * z if t.group in sums else t.sign * z
        denominators = {g: ops.stabilize(z, rule.stabilizer) for g, z in sums.items()}
        seeds = [_masked(relevance, own, t.output_mask) / denominators[t.group] for t in terms]
    grads = torch.autograd.grad(outputs, inputs, seeds)
    return sum(t.sign * t.scale * i.detach() * g for t, i, g in zip(terms, inputs, grads))


def _masked(relevance: Tensor, own: Optional[Tensor], mask: str) -> Tensor:
    if mask == "positive":
        return relevance * (own > 0)
    if mask == "negative":
        return relevance * (own < 0)
    return relevance


class _MultiTermRelevance(torch.autograd.Function):
    """Forward: the layer's output ``value``; backward: the rule's relevance at ``x``."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, x: Tensor, rule: MultiTermRule,
                layer: Callable[[Tensor, Mapping[str, Tensor]], Tensor], params: Dict[str, Tensor]) -> Tensor:
        ctx.save_for_backward(x.detach())
        ctx.rule, ctx.layer, ctx.params = rule, layer, params
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        (x,) = ctx.saved_tensors
        return None, multi_term_relevance(ctx.rule, ctx.layer, x, ctx.params, grad), None, None, None


def _clamped(params: Mapping[str, Tensor], positive: bool, bias: bool = True) -> Dict[str, Tensor]:
    """``max(p, 0)`` (``min(p, 0)``) of every parameter; the bias zeroed unless ``bias``."""
    out = {name: p.clamp(min=0) if positive else p.clamp(max=0) for name, p in params.items()}
    if not bias and "bias" in out:
        out["bias"] = torch.zeros_like(out["bias"])
    return out


@dataclass(frozen=True)
class AlphaBetaRule(MultiTermRule):
    """Zennit's ``AlphaBeta``: ``alpha`` times the relevance split by the
    positive contributions ``x+ w+ (+ b+)``, ``x- w-`` minus ``beta`` times
    that split by the negative ones ``x+ w- (+ b-)``, ``x- w+``, each with its
    own denominator. ``alpha, beta >= 0``, ``alpha - beta = 1``."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        if not (self.alpha >= 0 and self.beta >= 0 and abs(self.alpha - self.beta - 1) <= 1e-12):
            raise ValueError(f"AlphaBetaRule: expected alpha >= 0, beta >= 0 and alpha - beta == 1, "
                             f"got alpha={self.alpha!r}, beta={self.beta!r}")

    def terms(self, params: Mapping[str, Tensor]) -> Tuple[Term, ...]:
        pos, neg = _clamped(params, True), _clamped(params, False)
        pos0, neg0 = _clamped(params, True, bias=False), _clamped(params, False, bias=False)
        return (Term("positive", pos, 0, 1.0, self.alpha), Term("negative", neg0, 0, 1.0, self.alpha),
                Term("positive", neg, 1, 1.0, -self.beta), Term("negative", pos0, 1, 1.0, -self.beta))


def _gamma_params(params: Mapping[str, Tensor], gamma: float, positive: bool, bias: bool) -> Dict[str, Tensor]:
    """``p + gamma * max(p, 0)`` (``min(p, 0)``) of every parameter; the bias zeroed unless ``bias``."""
    clamped = _clamped(params, positive)
    out = {name: p + gamma * clamped[name] for name, p in params.items()}
    if not bias and "bias" in out:
        out["bias"] = torch.zeros_like(out["bias"])
    return out


@dataclass(frozen=True)
class GeneralizedGammaRule(MultiTermRule):
    """Zennit 0.5's ``Gamma`` (for inputs of any sign): where the layer's
    output is positive, the relevance is split by ``x+ (w + gamma w+) (+ b
    + gamma b+)`` and ``x- (w + gamma w-)``; where it is negative, by ``x+
    (w + gamma w-) (+ b + gamma b-)`` and ``x- (w + gamma w+)``; where it is
    0, it is dropped. (Captum's :class:`GammaRule` is ``x (w + gamma w+)``.)"""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"GeneralizedGammaRule: expected gamma >= 0, got {self.gamma!r}")

    def terms(self, params: Mapping[str, Tensor]) -> Tuple[Term, ...]:
        g = self.gamma
        return (Term("positive", _gamma_params(params, g, True, True), 0, output_mask="positive"),
                Term("negative", _gamma_params(params, g, False, False), 0, output_mask="positive"),
                Term("positive", _gamma_params(params, g, False, True), 1, output_mask="negative"),
                Term("negative", _gamma_params(params, g, True, False), 1, output_mask="negative"))


@dataclass(frozen=True)
class FlatRule(MultiTermRule):
    """Zennit's ``Flat``: the relevance spread over each output's receptive
    field evenly (weights one, bias zero, inputs one)."""

    stabilizer: float = 1e-6

    def terms(self, params: Mapping[str, Tensor]) -> Tuple[Term, ...]:
        flat = {name: torch.ones_like(p) if name == "weight" else torch.zeros_like(p) for name, p in params.items()}
        return (Term("ones", flat),)


@dataclass(frozen=True)
class WSquareRule(MultiTermRule):
    """Zennit's ``WSquare``: the relevance split by the squared weights
    (inputs one; the bias squared too, as Zennit)."""

    stabilizer: float = 1e-6

    def terms(self, params: Mapping[str, Tensor]) -> Tuple[Term, ...]:
        return (Term("ones", {name: p ** 2 for name, p in params.items()}),)


@dataclass(frozen=True, eq=False)
class ZBoxRule(MultiTermRule):
    """Zennit's ``ZBox`` for inputs bounded by ``low <= x <= high`` (floats,
    or tensors broadcastable to the input without its batch dimension, e.g.
    ``[1, C, 1, 1]`` per channel): ``z = w x + b - (w+ low + b+) - (w- high + b-)``,
    ``R_in = (x J_w^T - low J_{w+}^T - high J_{w-}^T)(R / stab(z))``."""

    low: Any = 0.0
    high: Any = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        low, high = torch.as_tensor(self.low, dtype=torch.float64), torch.as_tensor(self.high, dtype=torch.float64)
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("ZBoxRule: low and high must be finite")
        if not (low <= high).all():
            raise ValueError("ZBoxRule: expected low <= high everywhere")

    def terms(self, params: Mapping[str, Tensor]) -> Tuple[Term, ...]:
        low = torch.as_tensor(self.low).detach()
        high = torch.as_tensor(self.high).detach()
        return (Term("all", {}), Term(low, _clamped(params, True), sign=-1.0),
                Term(high, _clamped(params, False), sign=-1.0))


@dataclass(frozen=True)
class IdentityRule:
    """Relevance passes through the layer unchanged (``R_in = R_out``); for
    layers whose input and output have the same number of elements."""


PASS = IdentityRule()
# BatchNorm in "fold" mode: merged into the Linear/Conv that produces its input.
FOLD = "fold"
# The module runs as it is and the function rules apply to the torch calls in
# its forward (fastattr.attr.lrp_functional): shape ops keep their gradient,
# which moves relevance with the elements; LayerNorm gets the LN-rule,
# attention the AH-rule. Without Composite.function_rules: its plain gradient.
FUNCTIONS = "functions"

Rule = Any  # a PropagationRule, MultiTermRule, IdentityRule, FOLD or FUNCTIONS

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Composite:
    """Which rule each leaf module gets when it does not set ``module.rule``.

    ``rules_by_type``: exact module type -> rule (as Captum, subclasses are
    not matched; a type with children and a rule is one unit, its children
    get none); ``batchnorm``: ``"rule"`` (BatchNorm gets its
    ``rules_by_type`` rule, Captum's way), ``"identity"`` (relevance passes
    it unchanged) or ``"fold"`` (merged into the Linear/Conv whose output it
    normalizes; that layer's rule then applies to the merged layer);
    ``function_rules``: rules for the torch functions the forward calls
    outside the layers (residual additions, gates, ``F.batch_norm`` in
    timm's ``BatchNormAct2d``, attention; :mod:`fastattr.attr.lrp_functional`).
    Without them (Captum's way) their plain gradient carries the relevance,
    and an addition gives each term all of it; pass-through layers then
    use Captum's hooks (a pass-through layer taking another's output loses
    its rule there, as in Captum). ``first_rules``: exact module
    type -> rule for the first leaf layer (registration order) whose type is
    in it, ahead of ``rules_by_type`` (Zennit's ``first_map``: the input
    layer's ZBox or Flat rule).
    """

    rules_by_type: Mapping[Type[nn.Module], Rule]
    batchnorm: str = "rule"
    function_rules: bool = True
    first_rules: Mapping[Type[nn.Module], Rule] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm: expected one of {list(BATCHNORM_MODES)}, got {self.batchnorm!r}")


def _optional_types(*paths: str) -> Tuple[Type[nn.Module], ...]:
    """The classes at ``module:Name`` paths whose packages are installed."""
    import importlib
    found = []
    for path in paths:
        module, name = path.split(":")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# Elementwise layers relevance passes unchanged (the relevance of an
# activation is that of its output, as for ReLU; dropout and stochastic
# depth are identities in eval mode): Captum's SUPPORTED_NON_LINEAR_LAYERS
# (ReLU, Dropout, Tanh) and their kin.
PASSTHROUGH_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.ReLU, nn.Dropout, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softplus,
    nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.SELU, nn.CELU,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten,
    *_optional_types("torchvision.ops:StochasticDepth", "timm.layers:DropPath"),
)
# Layers whose torch calls get the function rules: shape ops (relevance
# follows the elements), Embedding (its output's relevance stays there: the
# indices take none), LayerNorm (LN-rule) and attention (AH-rule).
FUNCTION_RULE_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.LayerNorm, nn.Embedding, nn.Unflatten, nn.MultiheadAttention,
    *_optional_types("torchvision.ops.misc:Permute", "torchvision.models.convnext:LayerNorm2d",
                     "timm.layers:LayerNorm", "timm.layers:LayerNorm2d"),
)
# Layers with Captum's default epsilon rule, and their 1-d / 3-d variants.
EPSILON_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    *_BATCHNORMS,
)


def default_composite(batchnorm: str = "rule", epsilon: float = 1e-9) -> Composite:
    """Captum 0.9's defaults (``EpsilonRule()`` on Linear, Conv, pooling and
    BatchNorm layers, Captum's ``Addition_Module``; ReLU, Dropout, Tanh passed
    through) extended to the 1-d/3-d variants and the layers in
    :data:`PASSTHROUGH_TYPES`, the layers in :data:`FUNCTION_RULE_TYPES`
    left to the function rules, which are on."""
    rules = _rules(EPSILON_TYPES, PASSTHROUGH_TYPES, epsilon)
    rules.update({t: FUNCTIONS for t in FUNCTION_RULE_TYPES})
    return Composite(rules, batchnorm)


def _rules(epsilon_types: Tuple[Type[nn.Module], ...], passthrough_types: Tuple[Type[nn.Module], ...],
           epsilon: float) -> Dict[Type[nn.Module], Rule]:
    """The epsilon rule on ``epsilon_types`` and Captum's ``Addition_Module``,
    relevance passed through ``passthrough_types``."""
    rule = EpsilonRule(epsilon)
    rules: Dict[Type[nn.Module], Rule] = {t: rule for t in epsilon_types}
    rules.update({t: PASS for t in passthrough_types})
    addition = _captum_addition_module()
    if addition is not None:
        rules[addition] = rule
    return rules


# Captum 0.9's SUPPORTED_LAYERS_WITH_RULES (epsilon rule) and
# SUPPORTED_NON_LINEAR_LAYERS (passed through), exactly.
CAPTUM_EPSILON_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.Linear, nn.BatchNorm2d,
)
CAPTUM_PASSTHROUGH_TYPES: Tuple[Type[nn.Module], ...] = (nn.ReLU, nn.Dropout, nn.Tanh)


@functools.lru_cache(maxsize=None)
def captum_composite() -> Composite:
    """Captum 0.9's default rules and nothing more, read-only: the Captum
    drop-in's, so that a layer Captum has no default for is refused there
    too (a TypeError), as Captum's users expect. :func:`default_composite`
    knows more layers."""
    return Composite(MappingProxyType(_rules(CAPTUM_EPSILON_TYPES, CAPTUM_PASSTHROUGH_TYPES, EpsilonRule.epsilon)),
                     function_rules=False)


@functools.lru_cache(maxsize=None)
def shared_default_composite() -> Composite:
    """:func:`default_composite` made once, read-only (``lrp`` without a
    composite uses it on every call)."""
    composite = default_composite()
    return Composite(MappingProxyType(dict(composite.rules_by_type)), composite.batchnorm, composite.function_rules)


def _captum_addition_module() -> Optional[Type[nn.Module]]:
    """Captum's ``Addition_Module`` when Captum is installed (it is optional)."""
    try:
        from captum.attr._utils.custom_modules import Addition_Module
    except ImportError:
        return None
    return Addition_Module


def as_rule(rule: Any, where: str) -> Optional[Rule]:
    """A ``module.rule`` value as a fastattr rule: fastattr's rules as they
    are, Captum's EpsilonRule / GammaRule / Alpha1_Beta0_Rule / IdentityRule
    translated with their settings; None stays None (no rule set). ``where``
    names the module in errors."""
    if rule is None or isinstance(rule, (PropagationRule, MultiTermRule, IdentityRule)):
        return rule
    try:
        from captum.attr._utils import lrp_rules as captum_rules
    except ImportError:
        captum_rules = None
    if captum_rules is not None and isinstance(rule, captum_rules.PropagationRule):
        eps = float(rule.STABILITY_FACTOR)
        kind = type(rule)
        if kind is captum_rules.IdentityRule:
            return PASS
        if kind is captum_rules.EpsilonRule:
            return EpsilonRule(eps)
        if kind is captum_rules.GammaRule:
            return GammaRule(float(rule.gamma), bool(rule.set_bias_to_zero), eps)
        if kind is captum_rules.Alpha1_Beta0_Rule:
            return Alpha1_Beta0_Rule(bool(rule.set_bias_to_zero), eps)
        raise NotImplementedError(
            f"{where}.rule: Captum rule class {kind.__name__} is not supported by fastattr "
            "(only EpsilonRule, GammaRule, Alpha1_Beta0_Rule, IdentityRule); subclass "
            "fastattr.attr.lrp_rules.PropagationRule instead"
        )
    raise TypeError(
        f"{where}.rule: expected an LRP propagation rule (fastattr.attr.lrp_rules or "
        f"captum.attr._utils.lrp_rules), got {type(rule).__name__}"
    )


def leaf_layers(model: nn.Module, units: Collection[Type[nn.Module]] = ()) -> List[Tuple[str, nn.Module]]:
    """The modules without children, root excluded, in registration order
    (Captum's ``LRP._get_layers``); a module registered twice appears once.
    A module whose exact type is in ``units`` counts as one layer, children and all."""
    out: List[Tuple[str, nn.Module]] = []
    _collect_leaves(model, "", {id(model)}, out, frozenset(units))
    return out


def _collect_leaves(module: nn.Module, prefix: str, seen: set, out: List[Tuple[str, nn.Module]],
                    units: FrozenSet[Type[nn.Module]]) -> None:
    """``named_modules`` order, walked over ``_modules`` directly: the
    generator's per-module prefix and memo work is most of a small model's
    rule assignment, which runs on every call."""
    for name, child in module._modules.items():
        if child is None or id(child) in seen:
            continue
        seen.add(id(child))
        if type(child) not in units and any(c is not None for c in child._modules.values()):
            _collect_leaves(child, f"{prefix}{name}.", seen, out, units)
        else:
            out.append((prefix + name, child))


def _own_rule(module: nn.Module) -> Any:
    """``module.rule`` or None, without nn.Module.__getattr__ raising (and
    catching) an AttributeError for the usual module that sets none."""
    attrs = module.__dict__
    if "rule" in attrs:
        return attrs["rule"]
    return getattr(module, "rule", None) if hasattr(type(module), "rule") else None


def assign_rules(model: nn.Module, composite: Composite) -> List[Tuple[str, nn.Module, Rule]]:
    """``(name, module, rule)`` for every leaf layer of ``model``: its own
    ``module.rule`` if set, else the composite's (``first_rules`` for the
    first layer of a type there, then ``rules_by_type``); a layer with neither is a
    TypeError naming it (as Captum)."""
    out = []
    first_pending = bool(composite.first_rules)
    for name, module in leaf_layers(model, [t for t, r in composite.rules_by_type.items() if r == FUNCTIONS]):
        rule = _own_rule(module)
        # the first layer of a first_rules type, own rule or not (as Zennit's first_map)
        first = first_pending and type(module) in composite.first_rules
        first_pending = first_pending and not first
        if rule is not None:
            rule = as_rule(rule, f"model.{name}")
        elif first:
            rule = composite.first_rules[type(module)]
        elif isinstance(module, _BATCHNORMS) and composite.batchnorm != "rule" \
                and type(module) in composite.rules_by_type:
            rule = PASS if composite.batchnorm == "identity" else FOLD
        else:
            rule = composite.rules_by_type.get(type(module))
        if rule is None:
            raise TypeError(
                f"model: module model.{name} of type {type(module).__name__} has no LRP rule and "
                "the composite has no default for its type; set `module.rule` or add the "
                "type to the composite's rules_by_type"
            )
        out.append((name, module, rule))
    return out
