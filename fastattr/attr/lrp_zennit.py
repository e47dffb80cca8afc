"""Zennit 0.5.1's named LRP composites as fastattr composites.

:func:`zennit_composite` gives ``fastattr.lrp(..., composite=...)`` the
layer assignment of Zennit's ``EpsilonPlus``, ``EpsilonGammaBox``,
``EpsilonAlpha2Beta1`` and ``EpsilonPlusFlat`` (``zennit/composites.py``):

* convolutions (``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``): z+
  (:class:`~fastattr.attr.lrp_rules.ZPlusRule`), generalized gamma or
  alpha2-beta1; the first one ZBox in ``epsilon_gamma_box``;
* ``nn.Linear``: epsilon (``epsilon``); in ``epsilon_plus_flat`` the first
  Linear or convolution gets Flat;
* average pooling: Zennit's ``Norm``, the epsilon rule with ``stabilizer``;
  activations: relevance passed unchanged; max pooling: its gradient (Zennit
  has no rule for it);
* BatchNorm: ``"fold"`` (Zennit's ``SequentialMergeBatchNorm`` canonizer,
  which its ``ResNetCanonizer`` and ``VGGCanonizer`` apply) or
  ``"identity"`` (Zennit's ``Pass`` without a canonizer);
* residual additions (``ResNetCanonizer``'s ``Sum`` module with ``Norm``):
  fastattr's function rules split them by the z-rule, whose stabilizer is
  the ``nn.Linear`` rule's ``epsilon`` (equal to Zennit's when ``epsilon ==
  stabilizer``, the defaults).

Every other layer keeps :func:`~fastattr.attr.lrp_rules.default_composite`'s
rule. Zennit's ``Gradient`` attributor seeded with ``one_hot(target) *
f(x)`` gives the relevances ``fastattr.lrp`` returns (a seed of 1 times
``f_t(x)``: every rule is linear in the incoming relevance).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Type

from torch import nn

from .lrp_rules import (
    FUNCTIONS, PASS, AlphaBetaRule, Composite, EpsilonRule, FlatRule, GeneralizedGammaRule, Rule,
    ZBoxRule, ZPlusRule, default_composite,
)

ZENNIT_COMPOSITES = ("epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus_flat")
_BATCHNORM_MODES = ("fold", "identity")

# zennit.types.Convolution, AvgPool, MaxPool and Activation (less
# MultiheadAttention, which keeps fastattr's attention rule).
CONVOLUTION_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
AVGPOOL_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
MAXPOOL_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
ACTIVATION_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.ELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardtanh, nn.Hardswish, nn.LeakyReLU, nn.LogSigmoid, nn.PReLU,
    nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.CELU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Softplus, nn.Softshrink,
    nn.Softsign, nn.Tanh, nn.Tanhshrink, nn.Threshold,
)


def zennit_composite(name: str, *, epsilon: float = 1e-6, stabilizer: float = 1e-6, gamma: float = 0.25,
                     low: Any = None, high: Any = None, batchnorm: str = "fold") -> Composite:
    """Zennit 0.5.1's composite ``name`` with its defaults.

    Args:
        name: one of :data:`ZENNIT_COMPOSITES` (Zennit's registered names).
        epsilon: the epsilon of the ``nn.Linear`` layers (and of the residual additions).
        stabilizer: the stabilizer of every other rule.
        gamma: the generalized gamma rule's (``epsilon_gamma_box``).
        low, high: the input's bounds for the first layer's ZBox rule
            (``epsilon_gamma_box`` only, required there): floats or tensors
            broadcastable to one input without its batch dimension.
        batchnorm: ``"fold"`` (merged into the preceding Linear/Conv, as
            Zennit's canonizers) or ``"identity"`` (Zennit without one).

    Returns:
        A :class:`~fastattr.attr.lrp_rules.Composite` for ``fastattr.lrp``.
    """
    if name not in ZENNIT_COMPOSITES:
        raise ValueError(f"name: expected one of {list(ZENNIT_COMPOSITES)}, got {name!r}")
    if batchnorm not in _BATCHNORM_MODES:
        raise ValueError(f"batchnorm: expected one of {list(_BATCHNORM_MODES)}, got {batchnorm!r}")
    box = name == "epsilon_gamma_box"
    if box and (low is None or high is None):
        raise ValueError("low, high: epsilon_gamma_box needs the input's bounds for its ZBox rule")
    if not box and (low is not None or high is not None):
        raise ValueError(f"low, high: only epsilon_gamma_box takes them, not {name}")
    rules = _zennit_layer_map(_convolution_rule(name, gamma, stabilizer), epsilon, stabilizer)
    return Composite(rules, batchnorm, first_rules=_first_map(name, low, high, stabilizer))


def _convolution_rule(name: str, gamma: float, stabilizer: float) -> Rule:
    if name == "epsilon_gamma_box":
        return GeneralizedGammaRule(gamma, stabilizer)
    if name == "epsilon_alpha2_beta1":
        return AlphaBetaRule(2.0, 1.0, stabilizer)
    return ZPlusRule(stabilizer)


def _zennit_layer_map(convolution: Rule, epsilon: float, stabilizer: float) -> Dict[Type[nn.Module], Rule]:
    """Zennit's ``layer_map_base`` and its convolution / Linear rules over
    fastattr's defaults for the layers Zennit has no rule for."""
    rules = dict(default_composite().rules_by_type)
    norm = EpsilonRule(stabilizer)
    rules.update({t: PASS for t in ACTIVATION_TYPES})
    rules.update({t: norm for t in AVGPOOL_TYPES})
    rules.update({t: FUNCTIONS for t in MAXPOOL_TYPES})  # no rule: the plain gradient
    rules.update({t: convolution for t in CONVOLUTION_TYPES})
    rules[nn.Linear] = EpsilonRule(epsilon)
    return rules


def _first_map(name: str, low: Any, high: Any, stabilizer: float) -> Dict[Type[nn.Module], Rule]:
    if name == "epsilon_gamma_box":
        box = ZBoxRule(low, high, stabilizer)
        return {t: box for t in CONVOLUTION_TYPES}
    if name == "epsilon_plus_flat":
        flat = FlatRule(stabilizer)
        return {t: flat for t in (*CONVOLUTION_TYPES, nn.Linear)}
    return {}
