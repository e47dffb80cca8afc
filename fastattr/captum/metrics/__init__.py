"""Captum drop-in for ``captum.metrics``: the same signatures, defaults and
results (same explicit perturbations, same numbers), on fastattr's engine."""
from ._infidelity import infidelity, infidelity_perturb_func_decorator
from ._sensitivity import default_perturb_func, sensitivity_max

__all__ = ["default_perturb_func", "infidelity", "infidelity_perturb_func_decorator", "sensitivity_max"]
