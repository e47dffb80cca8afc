"""Quantus drop-in: Quantus 0.6's metric classes, constructors and calls,
computed on fastattr's engine with keyed perturbations."""
from ._infidelity import Infidelity
from ._pixel_flipping import PixelFlipping
from ._randomization import MPRT
from ._sensitivity import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity

__all__ = ["AvgSensitivity", "Infidelity", "LocalLipschitzEstimate", "MPRT", "MaxSensitivity", "PixelFlipping"]
