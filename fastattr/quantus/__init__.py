"""Quantus drop-in: Quantus 0.6's metric classes, constructors and calls,
computed on fastattr's engine with keyed perturbations."""
from ._axiomatic import Completeness, InputInvariance, NonSensitivity
from ._complexity import Complexity, EffectiveComplexity, Sparseness
from ._consistency import Consistency
from ._continuity import Continuity
from ._faithfulness import (
    FaithfulnessCorrelation, FaithfulnessEstimate, Monotonicity, MonotonicityCorrelation, SensitivityN,
)
from ._faithfulness_regions import RegionPerturbation, Selectivity
from ._faithfulness_sufficiency import Sufficiency
from ._infidelity import Infidelity
from ._irof import IROF
from ._localisation import (
    AUC, AttributionLocalisation, Focus, PointingGame, RelevanceMassAccuracy, RelevanceRankAccuracy,
    TopKIntersection,
)
from ._pixel_flipping import PixelFlipping
from ._randomization import MPRT, EfficientMPRT, RandomLogit, SmoothMPRT
from ._road import ROAD
from ._sensitivity import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity
from ._stability import RelativeInputStability, RelativeOutputStability, RelativeRepresentationStability

__all__ = [
    "AUC", "AttributionLocalisation", "AvgSensitivity", "Completeness", "Complexity", "Consistency", "Continuity",
    "EffectiveComplexity", "EfficientMPRT", "RandomLogit", "RelativeInputStability", "RelativeOutputStability",
    "RelativeRepresentationStability", "SmoothMPRT",
    "FaithfulnessCorrelation", "FaithfulnessEstimate", "Focus", "IROF", "Infidelity", "InputInvariance",
    "LocalLipschitzEstimate", "MPRT", "MaxSensitivity", "Monotonicity", "MonotonicityCorrelation",
    "NonSensitivity", "PixelFlipping", "PointingGame", "ROAD", "RegionPerturbation", "RelevanceMassAccuracy",
    "RelevanceRankAccuracy", "Selectivity", "SensitivityN", "Sparseness", "Sufficiency", "TopKIntersection",
]
