"""One pass of perturbed explanations shared by several metrics: max/avg
sensitivity and relative input stability use the same keyed L-infinity
perturbations, so the audit explains each perturbed copy once and hands the
result to every metric's per-sample value."""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ..metrics.sensitivity import Perturbation, PerturbedExplanations


class SharedSamples:
    """Stands in for a :class:`PerturbedExplanations`: the metrics'
    ``sample_values`` calls are recorded (each gets an empty ``[B, n_samples]``
    tensor back) and filled by :meth:`run`, one engine pass for all of them."""

    def __init__(self, audit: PerturbedExplanations) -> None:
        self.audit = audit
        self.perturbation: Optional[Perturbation] = None
        self.pending: List[Tuple[Callable[..., Tensor], bool, Tensor]] = []

    def __getattr__(self, name: str) -> Any:  # clean, req, batch, ...: the audited batch's
        return getattr(self.audit, name)

    def sample_values(self, perturbation: Perturbation, sample_value: Callable[..., Tensor],
                      needs_inputs: bool = False) -> Tensor:
        if self.perturbation is not None and perturbation != self.perturbation:
            raise ValueError("SharedSamples: every metric must use the same perturbations")
        self.perturbation = perturbation
        out = torch.empty(self.audit.batch, perturbation.n_samples, dtype=torch.float64,
                          device=self.audit.req.inputs[0].device)
        self.pending.append((sample_value, needs_inputs, out.view(-1)))
        return out

    def run(self) -> None:
        """Explain every perturbed copy once; fill every recorded metric's values."""
        done = [0]

        def every_value(xs: Tuple[Tensor, ...], attrs: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
            # chunks arrive in row order (row = example * n_samples + sample)
            g0, g1 = done[0], done[0] + examples.shape[0]
            for value, _, out in self.pending:
                out[g0:g1] = value(xs, attrs, examples)
            done[0] = g1
            return torch.zeros(g1 - g0, dtype=torch.float64, device=examples.device)

        self.audit.sample_values(self.perturbation, every_value, any(n for _, n, _ in self.pending))
        if done[0] != self.audit.batch * self.perturbation.n_samples:
            raise RuntimeError(f"SharedSamples: {done[0]} rows explained, expected "
                               f"{self.audit.batch * self.perturbation.n_samples}")
