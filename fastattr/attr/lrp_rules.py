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
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Collection, Dict, FrozenSet, List, Mapping, Optional, Tuple, Type

import torch
from torch import Tensor, nn

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

Rule = Any  # a PropagationRule, IdentityRule, FOLD or FUNCTIONS

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
    and an addition gives each term all of it.
    """

    rules_by_type: Mapping[Type[nn.Module], Rule]
    batchnorm: str = "rule"
    function_rules: bool = True

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
    if rule is None or isinstance(rule, (PropagationRule, IdentityRule)):
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
    ``module.rule`` if set, else the composite's; a layer with neither is a
    TypeError naming it (as Captum)."""
    out = []
    for name, module in leaf_layers(model, [t for t, r in composite.rules_by_type.items() if r == FUNCTIONS]):
        rule = _own_rule(module)
        if rule is not None:
            rule = as_rule(rule, f"model.{name}")
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
