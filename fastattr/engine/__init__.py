"""The chunked gradient engine: plans, chunk sizing, the fwd/bwd loop, and
forward-only evaluation of generated rows."""
from .forward import forward_rows
from .loop import Request, Result, accumulator_dtype, row_examples, run, sample_inputs
from .model_form import FORMS as MODEL_FORMS
from .model_form import ModelForm, model_in_form
from .plan import (
    PURPOSE_ATTACK, PURPOSE_GRADIENT_SHAP, PURPOSE_INFIDELITY, PURPOSE_PERTURBATION,
    PURPOSE_RANDOMIZATION, PURPOSE_REFERENCE_DRAW, PURPOSE_SMOOTHGRAD, PointPlan, single_point_plan,
)

__all__ = [
    "MODEL_FORMS", "ModelForm", "model_in_form", "PURPOSE_ATTACK", "PURPOSE_GRADIENT_SHAP", "PURPOSE_INFIDELITY", "PURPOSE_PERTURBATION",
    "PURPOSE_RANDOMIZATION", "PURPOSE_REFERENCE_DRAW", "PURPOSE_SMOOTHGRAD", "PointPlan", "Request",
    "Result", "accumulator_dtype", "forward_rows", "row_examples", "run", "sample_inputs",
    "single_point_plan",
]
