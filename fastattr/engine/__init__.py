"""The chunked gradient engine: plans, chunk sizing and the fwd/bwd loop."""
from .plan import (
    PURPOSE_GRADIENT_SHAP, PURPOSE_REFERENCE_DRAW, PURPOSE_SMOOTHGRAD, PointPlan, single_point_plan,
)
from .loop import Request, Result, accumulator_dtype, run, sample_inputs

__all__ = [
    "PURPOSE_GRADIENT_SHAP", "PURPOSE_REFERENCE_DRAW", "PURPOSE_SMOOTHGRAD", "PointPlan", "Request", "Result", "accumulator_dtype", "run",
    "sample_inputs", "single_point_plan",
]
