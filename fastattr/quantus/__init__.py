"""Quantus drop-in: Quantus 0.6's metric classes, constructors and calls,
computed on fastattr's engine with keyed perturbations."""
