"""``LRP`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Tuple, Union

from torch import Tensor, nn

from .. import _validate as v
from ..attr.lrp import lrp
from ..attr.lrp_rules import PropagationRule, as_rule, assign_rules, captum_composite
from ..attr.relu_rules import require_module
from ._base import GradientAttribution
from ._reuse import refuse_reused_modules


class LRP(GradientAttribution):
    """Captum's ``LRP(model)``: rules from each layer's ``module.rule``
    (Captum's rule classes or fastattr's), else Captum's defaults
    (:func:`~fastattr.attr.lrp_rules.captum_composite`: a layer type Captum
    has no default for is a TypeError, as in Captum; :func:`fastattr.lrp`
    knows more).

    Unlike Captum, the rules set on the modules are left in place after a
    call (Captum deletes them), and so is everything else on the model.
    """

    has_delta = True

    def __init__(self, model: nn.Module) -> None:
        require_module(model, "LRP")
        super().__init__(model, multiply_by_inputs=True)
        self.model = model
        check_rules_set(model)

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        verbose: bool = False,
    ) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
        """Relevances ``[B, *F]`` (or a tuple) summing to the target output, as
        :func:`fastattr.attr.lrp.lrp`; with ``return_convergence_delta`` also
        ``[B]`` deltas. ``verbose`` prints the rule of each layer with one."""
        prepare_captum_rules(self.model, inputs, additional_forward_args, verbose, "LRP", "lrp")
        return lrp(self.model, inputs, target=target, additional_forward_args=additional_forward_args,
                   composite=captum_composite(), return_convergence_delta=return_convergence_delta)

    def compute_convergence_delta(self, attributions: v.TensorOrTuple, output: Tensor) -> Tensor:
        """``output.flatten() - sum(attributions per example)``: ``attributions``
        ``[B, *F]`` (or a tuple of them), ``output`` ``[B]`` target outputs."""
        items = attributions if isinstance(attributions, tuple) else (attributions,)
        summed = sum(a.reshape(a.shape[0], -1).sum(1) for a in items)
        return output.flatten() - summed.flatten()


def check_rules_set(model: nn.Module) -> None:
    """Every ``module.rule`` set on ``model`` is one fastattr takes (Captum's
    constructors check this)."""
    for name, module in model.named_modules():
        as_rule(getattr(module, "rule", None), f"model.{name}" if name else "model")


def prepare_captum_rules(model: nn.Module, inputs: v.TensorOrTuple, additional_forward_args: Any, verbose: bool,
                         method: str, native: str) -> None:
    """What Captum's LRP classes do before their backward: every layer gets a
    rule (its own or Captum's default, else a TypeError), ``verbose`` prints
    them, and a layer with a rule that runs twice is refused."""
    layers = assign_rules(model, captum_composite())
    if verbose:
        for _, module, rule in layers:
            if isinstance(rule, PropagationRule):
                print(f"Applied {rule} on layer {module}")
    refuse_reused_modules(model, [m for _, m, rule in layers if isinstance(rule, PropagationRule)],
                          inputs, additional_forward_args, method, native)
