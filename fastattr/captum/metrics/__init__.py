"""Captum drop-in for ``captum.metrics``: the same signatures, defaults and
results (same explicit perturbations, same numbers), on fastattr's engine."""
