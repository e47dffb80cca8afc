"""Typed wrappers over the fused ops ``torch.ops.fastattr.*``.

Each wrapper runs the compiled kernel when the extension backend is active and
its pure-PyTorch twin in :mod:`fastattr._reference` otherwise; both follow the
arithmetic contract in ``csrc/README.md`` bit for bit. Fake (meta) kernels are
registered here so the ops trace under ``torch.compile`` / ``opcheck``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backend, _reference

NOISE_KINDS = ("none", "gaussian", "uniform", "gaussian_antithetic", "uniform_antithetic")


def philox4x32(counters: Tensor, key: Tensor) -> Tensor:
    """Philox4x32-10 block function.

    Args:
        counters: int64 ``[N, 4]``, values in ``[0, 2**32)``.
        key: int64 ``[2]``, values in ``[0, 2**32)``.

    Returns:
        int64 ``[N, 4]``: the four 32-bit outputs of each counter.
    """
    if _backend.compiled_for("philox4x32", counters.device):
        return torch.ops.fastattr.philox4x32.default(counters, key)
    return _reference.philox4x32(counters, key)


def generate_rows(
    inputs: Tensor,
    baselines: Optional[Tensor],
    alphas: Optional[Tensor],
    n_samples: int,
    noise: str,
    scale: float,
    seed: int,
    stream: int,
    row_start: int,
    row_count: int,
    example_offset: int,
) -> Tensor:
    """Rows ``row_start .. row_start + row_count`` of the evaluation points.

    Row ``r`` is example ``b = r // (n_samples * S)``, sample
    ``n = (r // S) % n_samples``, path step ``s = r % S`` (``S = len(alphas)``,
    or 1 without a path). Its value is ``x_n = x_b + scale * z`` (``z`` keyed
    noise, or no noise when ``noise == "none"``), moved along the path as
    ``base + alphas[s] * (x_n - base)`` when ``alphas`` is given. The
    ``"_antithetic"`` kinds pair the samples: sample ``n`` takes the draws of
    sample ``n // 2`` times ``(-1) ** n``, so samples ``2k`` and ``2k + 1`` are
    ``x + scale * z`` and ``x - scale * z``.

    Args:
        inputs: ``[B, *F]`` float16/bfloat16/float32/float64.
        baselines: ``[1, *F]`` or ``[B, *F]`` like ``inputs``; required with ``alphas``.
        alphas: float64 ``[S]`` path positions, or None.
        n_samples: noise samples per example (>= 1).
        noise: ``"none"``, ``"gaussian"`` (stdev ``scale``), ``"uniform"``
            (L-infinity radius ``scale``), or ``"gaussian_antithetic"`` /
            ``"uniform_antithetic"`` (the same, in antithetic pairs).
        scale, seed, stream, example_offset: noise parameters and key
            (see ``csrc/README.md``).
        row_start, row_count: the slice of the ``B * n_samples * S`` rows to make.

    Returns:
        ``[row_count, *F]`` contiguous, dtype of ``inputs``.
    """
    if _backend.compiled_for("generate_rows", inputs.device):
        return torch.ops.fastattr.generate_rows.default(
            inputs, baselines, alphas, n_samples, noise, scale, seed, stream,
            row_start, row_count, example_offset,
        )
    return _reference.generate_rows(
        inputs, baselines, alphas, n_samples, noise, scale, seed, stream,
        row_start, row_count, example_offset,
    )


def accumulate_(
    acc: Tensor,
    acc_sq: Optional[Tensor],
    values: Tensor,
    weights: Tensor,
    row_start: int,
    group_size: int,
    group_offset: int,
) -> None:
    """Fold weighted rows into per-group accumulators, in place.

    Row ``r`` (``values[r - row_start]``) belongs to group ``r // group_size``
    stored at ``acc[r // group_size - group_offset]`` and has weight
    ``weights[r % group_size]``; ``acc += w * v`` and ``acc_sq += w * v * v``,
    serially in row order (so any chunking of rows gives the same bits).

    Args:
        acc: ``[G, *F]`` float32 (for half/float32 values) or float64, contiguous.
        acc_sq: like ``acc``, or None.
        values: ``[n, *F]`` float16/bfloat16/float32/float64.
        weights: float64 ``[group_size]``.
        row_start, group_size, group_offset: row/group bookkeeping as above.
    """
    if _backend.compiled_for("accumulate_", acc.device):
        torch.ops.fastattr.accumulate_.default(
            acc, acc_sq, values, weights, row_start, group_size, group_offset
        )
    else:
        _reference.accumulate_(
            acc, acc_sq, values, weights, row_start, group_size, group_offset
        )


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """LRP's stabilized denominator in one pass: ``z + epsilon * sign(z)``,
    ``sign(0) = +1`` (also for ``-0.0``), as Captum's and Zennit's stabilizer.

    Args:
        z: a layer's output, float16/bfloat16/float32/float64, any shape.
        epsilon: the stabilizer, finite and ``>= 0`` (rounded to the dtype).

    Returns:
        A new tensor like ``z`` (its memory format when ``z`` is dense, else contiguous).
    """
    if _backend.compiled_for("stabilize", z.device):
        return torch.ops.fastattr.stabilize.default(z, epsilon)
    return _reference.stabilize(z, epsilon)


def relative_squares(new: Tensor, old: Tensor, inverse: Tensor, examples: Tensor) -> Tensor:
    """The squared relative change of rows from their examples' clean rows, in one pass:
    ``sum_d ((new[r, d] - old[e, d]) * inverse[e, d]) ** 2`` per row ``r``,
    ``e = examples[r]``, in float64, summed in the fixed order of
    ``csrc/README.md`` section 6 (so every device gives the same bits).

    Args:
        new: ``[g, D]`` float16/bfloat16/float32/float64, any strides.
        old: float64 ``[B, D]``: the clean rows.
        inverse: float64 ``[B, D]``: what each element's change is scaled by
            (``1 / old`` for a relative change).
        examples: int64 ``[g]``, values in ``[0, B)``: each row's example
            (any order, repeats and gaps allowed).

    Returns:
        float64 ``[g]`` (zeros when ``D == 0``).
    """
    if _backend.compiled_for("relative_squares", new.device):
        return torch.ops.fastattr.relative_squares.default(new, old, inverse, examples)
    return _reference.relative_squares(new, old, inverse, examples)


def _non_overlapping_and_dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill its memory exactly (any dimension order), as ATen's check."""
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(t.shape, t.stride()) if n != 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


if _backend.extension_available:

    @torch.library.register_fake("fastattr::philox4x32")
    def _philox4x32_fake(counters: Tensor, key: Tensor) -> Tensor:
        return torch.empty_like(counters, memory_format=torch.contiguous_format)

    @torch.library.register_fake("fastattr::generate_rows")
    def _generate_rows_fake(
        inputs, baselines, alphas, n_samples, noise, scale, seed, stream,
        row_start, row_count, example_offset,
    ) -> Tensor:
        return inputs.new_empty((row_count, *inputs.shape[1:]))

    @torch.library.register_fake("fastattr::accumulate_")
    def _accumulate_fake(
        acc, acc_sq, values, weights, row_start, group_size, group_offset
    ) -> None:
        return None

    @torch.library.register_fake("fastattr::relative_squares")
    def _relative_squares_fake(new: Tensor, old: Tensor, inverse: Tensor, examples: Tensor) -> Tensor:
        return new.new_empty((new.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("fastattr::stabilize")
    def _stabilize_fake(z: Tensor, epsilon: float) -> Tensor:
        if _non_overlapping_and_dense(z):
            return torch.empty_like(z)
        return torch.empty_like(z, memory_format=torch.contiguous_format)
