"""``LRP`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Tuple, Union

from torch import Tensor, nn

from .. import _validate as v
from ..attr.lrp import lrp
from ..attr.lrp_rules import PropagationRule, as_rule, assign_rules, default_composite
from ..attr.relu_rules import require_module
from ._base import Attribution, captum_target


class LRP(Attribution):
    """Captum's ``LRP(model)``: rules from each layer's ``module.rule``
    (Captum's rule classes or fastattr's), else Captum's defaults.

    Unlike Captum, the rules set on the modules are left in place after a
    call (Captum deletes them), and so is everything else on the model.
    """

    has_delta = True

    def __init__(self, model: nn.Module) -> None:
        require_module(model, "LRP")
        super().__init__(model, multiply_by_inputs=True)
        self.model = model
        for name, module in model.named_modules():
            as_rule(getattr(module, "rule", None), f"model.{name}" if name else "model")

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
        if verbose:
            for _, module, rule in assign_rules(self.model, default_composite()):
                if isinstance(rule, PropagationRule):
                    print(f"Applied {rule} on layer {module}")
        return lrp(self.model, inputs, target=captum_target(target),
                   additional_forward_args=additional_forward_args,
                   return_convergence_delta=return_convergence_delta)

    def attribute_future(self) -> None:
        """Not implemented for LRP (as in Captum)."""
        raise NotImplementedError("attribute_future is not implemented for LRP")



    def compute_convergence_delta(self, attributions: v.TensorOrTuple, output: Tensor) -> Tensor:
        """``output.flatten() - sum(attributions per example)``: ``attributions``
        ``[B, *F]`` (or a tuple of them), ``output`` ``[B]`` target outputs."""
        items = attributions if isinstance(attributions, tuple) else (attributions,)
        summed = sum(a.reshape(a.shape[0], -1).sum(1) for a in items)
        return output.flatten() - summed.flatten()
