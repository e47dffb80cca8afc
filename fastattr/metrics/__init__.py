"""Robustness and faithfulness metrics of explanations, one module each, on
the engine: keyed perturbations run in byte-budgeted chunks, the clean
explanation computed once and shared."""
from ._explain import Explainer

__all__ = ["Explainer"]
