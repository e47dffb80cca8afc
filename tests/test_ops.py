"""Op-level tests of the fused ops (csrc/README.md is the contract).

* Philox known answers, on every backend and device.
* The reference against an independent scalar implementation of the contract
  (plain Python ints/floats, one element at a time) - this is what decides who
  is right when the reference and the extension disagree.
* Reference == extension bit for bit on CPU over a grid of dtypes, noise kinds,
  paths, shapes, strides, row ranges and keys.
* Chunking invariance, on both backends.
* Against obviously-right float64 math and the statistics of the noise.
* opcheck, CUDA == CPU (only where a GPU is visible), bad input.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from fastattr import _backend, _reference, ops
from fastattr.testing import (
    BACKENDS,
    DEVICES,
    DTYPES,
    acc_dtype,
    assert_bitwise_equal,
    assert_error_within,
    intra_op_threads,
)

EXT = _backend.extension_available
needs_ext = pytest.mark.skipif(
    not EXT, reason="compiled extension fastattr._C is not built (pip install -e . --no-build-isolation)"
)
# Both names, so a missing extension shows up as skips rather than vanishing.
BACKEND_PARAMS = [
    pytest.param("reference", id="reference"),
    pytest.param("extension", id="extension", marks=needs_ext),
]
CUDA_DEVICES = [d for d in DEVICES if d.type == "cuda"]
NOISES = ("none", "gaussian", "uniform")


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _run(backend_name: str, fn, *args):
    with _backend.use(backend_name):
        return fn(*args)


# ---------------------------------------------------------------------------
# An independent scalar implementation of the contract (the arbiter)
# ---------------------------------------------------------------------------
# Written from csrc/README.md with Python ints and floats (IEEE double, one
# rounding per operation, no FMA) and numpy float32 for acc_t = float32. It
# shares no code with fastattr._reference.

_M32 = 0xFFFFFFFF


def scalar_philox(c: Tuple[int, int, int, int], k: Tuple[int, int]) -> List[int]:
    c0, c1, c2, c3 = c
    k0, k1 = k
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2  # exact Python ints
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _M32, (p0 >> 32) ^ c3 ^ k1, p0 & _M32
    return [c0, c1, c2, c3]


def scalar_log(u: float) -> float:
    m, e = math.frexp(u)
    if m < 0.70710678118654752440:
        m, e = m * 2, e - 1
    f = (m - 1) / (m + 1)
    f2 = f * f
    s = 1.0 / 13
    for k in range(4, -1, -1):
        s = 1.0 / (2 * k + 3) + f2 * s
    logm = 2 * f + (2 * f) * (f2 * s)
    return e * 0.693147180369123816490 + (e * 1.90821492927058770002e-10 + logm)


def _poly(x: float, coeffs: List[float]) -> Tuple[float, float]:
    x2 = x * x
    p = coeffs[-1]
    for ck in reversed(coeffs[:-1]):
        p = ck + x2 * p
    return p, x2


def scalar_cossin_2pi(n: int) -> Tuple[float, float]:
    """(cos, sin) of 2 pi n 2**-53 by the contract, for an integer n < 2**53."""
    cos_c = [(-1) ** (k + 1) / float(math.factorial(2 * k + 2)) for k in range(6)]
    sin_c = [(-1) ** (k + 1) / float(math.factorial(2 * k + 3)) for k in range(6)]

    def pcos(x):
        p, x2 = _poly(x, cos_c)
        return 1 + x2 * p

    def psin(x):
        p, x2 = _poly(x, sin_c)
        return x + x * (x2 * p)

    q, k = n >> 51, n % 2**51
    x = float(k if k <= 2**50 else 2**51 - k) * (1.57079632679489661923 * 2.0**-51)
    c, s = (pcos(x), psin(x)) if k <= 2**50 else (psin(x), pcos(x))
    return [(c, s), (-s, c), (-c, -s), (s, -c)][q]


def scalar_noise(noise: str, seed: int, stream: int, example: int, sample: int, element: int) -> float:
    word = element if noise == "uniform" else element >> 1  # Gaussian: one draw per pair
    x = scalar_philox(
        (word & _M32, sample & _M32, example & _M32, stream & _M32),
        (seed & _M32, (seed >> 32) & _M32),
    )
    n1, n2 = x[0] * 2**21 + (x[1] >> 11), x[2] * 2**21 + (x[3] >> 11)
    ua = float(n1) * 2.0**-53
    if noise == "uniform":
        return 2 * ua - 1
    rad = math.sqrt(-2 * scalar_log(1 - ua))
    return rad * scalar_cossin_2pi(n2)[element & 1]


def scalar_generate_row_element(
    inputs, baselines, alphas, n_samples, noise, scale, seed, stream, r, d, example_offset
) -> torch.Tensor:
    """out[r - row_start, d] by the contract, as a 0-dim tensor of inputs.dtype."""
    S = 1 if alphas is None else alphas.numel()
    P = n_samples * S
    b, n, s = r // P, (r // S) % n_samples, r % S
    f32 = acc_dtype(inputs.dtype) == torch.float32
    cast = (lambda v: np.float32(v)) if f32 else float  # (acc_t) v; np.float32 rounds to nearest
    x = cast(inputs[b].reshape(-1)[d].item())
    if noise != "none":
        z = scalar_noise(noise, seed, stream, example_offset + b, n, d)
        x = x + cast(scale) * cast(z)
    if alphas is not None:
        base_row = baselines[b if baselines.shape[0] > 1 else 0].reshape(-1)
        base = cast(base_row[d].item())
        x = base + cast(alphas[s].item()) * (x - base)
    return torch.tensor(float(x), dtype=torch.float64).to(inputs.dtype)


# ---------------------------------------------------------------------------
# sample_inputs: one helper feeding correctness, CUDA and opcheck tests
# ---------------------------------------------------------------------------


def sample_inputs(device) -> Dict[str, List[tuple]]:
    """A few argument tuples per op, covering paths, noise kinds, dtypes and strides."""
    g = torch.Generator().manual_seed(1234)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)

    counters = torch.randint(0, 2**32, (37, 4), generator=g, dtype=torch.int64).to(device)
    key = torch.tensor([0x12345678, 0x9ABCDEF0], dtype=torch.int64, device=device)
    x = randn(3, 4, 5)
    x_t = randn(3, 5, 4).transpose(1, 2)  # non-contiguous
    base1 = randn(1, 4, 5)
    alphas = torch.linspace(0, 1, 7, dtype=torch.float64, device=device)
    gen = [
        (x, None, None, 4, "gaussian", 0.3, 7, 1, 0, 12, 0),
        (x_t, base1, alphas, 2, "uniform", 0.1, 2**40 + 3, 65537, 5, 30, 11),
        (randn(2, 9, dtype=torch.float16), randn(2, 9, dtype=torch.float16), alphas, 1,
         "none", 0.0, 0, 0, 3, 8, 0),
        (randn(2, 9, dtype=torch.float64), None, None, 3, "gaussian", 1.5, 99, 2, 1, 4, 2**32 - 1),
    ]
    acc_args = []
    for dtype, gs, row_start, n, g_off, with_sq in (
        (torch.float32, 3, 4, 7, 1, True),
        (torch.bfloat16, 5, 2, 9, 0, False),
        (torch.float64, 1, 6, 4, 6, True),
    ):
        G = (row_start + n - 1) // gs - g_off + 1
        at = acc_dtype(dtype)
        values = randn(n, 3, 2, dtype=dtype).transpose(1, 2)  # non-contiguous [n, 2, 3]
        acc = randn(G, 2, 3, dtype=at)
        acc_sq = randn(G, 2, 3, dtype=at).abs() if with_sq else None
        weights = randn(gs, dtype=torch.float64)
        acc_args.append((acc, acc_sq, values, weights, row_start, gs, g_off))
    # (NaN gets its own test: opcheck compares outputs with NaN != NaN.)
    specials = torch.tensor([0.0, -0.0, 1e-12, -1e-12, float("inf"), float("-inf")], dtype=torch.float64)
    z = randn(4, 6, 5)
    z.view(-1)[: specials.numel()] = specials.to(device)
    stab = [
        (z, 1e-9),
        (z.to(torch.float16).transpose(0, 2), 0.01),  # permuted but dense: its strides kept
        (z[:, ::2], 0.5),  # not dense: a contiguous result
        (randn(2, 3, 4, 5).to(memory_format=torch.channels_last), 0.25),  # dense: kept
        (randn(3, 7, dtype=torch.bfloat16), 1e-6),
        (z.double(), 0.0),
        (randn(0, 3), 1e-9),
    ]
    def clean_rows(B, D):  # (old, inverse): float64 [B, D]
        old = randn(B, D, dtype=torch.float64)
        return old, 1 / old

    def ids(*e):
        return torch.tensor(e, dtype=torch.int64, device=device)

    rel = [
        (randn(7, 13), *clean_rows(3, 13), ids(0, 0, 0, 0, 0, 2, 2)),  # runs of 4 and less, example 1 skipped
        (randn(13, 7).t(), *clean_rows(2, 13), ids(1, 1, 1, 1, 1, 1, 1)),  # non-contiguous new
        (randn(6, 5, dtype=torch.float16), *clean_rows(4, 5), ids(3, 3, 3, 3, 1, 0)),  # D < 8, any order
        (randn(9, 8, dtype=torch.bfloat16), *clean_rows(2, 8), ids(0, 1, 0, 1, 0, 1, 0, 1, 1)),
        (randn(5, 37, dtype=torch.float64), *clean_rows(5, 37), ids(4, 4, 4, 4, 4)),
        (randn(4, 0), *clean_rows(2, 0), ids(0, 1, 1, 0)),  # D = 0: zeros
        (randn(0, 6), *clean_rows(2, 6), ids()),  # g = 0
    ]
    return {
        "philox4x32": [(counters, key)],
        "generate_rows": gen,
        "accumulate_": acc_args,
        "stabilize": stab,
        "relative_squares": rel,
    }


def _clone_args(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _apply(op: str, backend_name: str, args: tuple):
    """Run op on backend backend_name; returns the outputs to compare (acc/acc_sq for accumulate_)."""
    args = _clone_args(args)
    fn = getattr(ops, op)
    out = _run(backend_name, fn, *args)
    if op == "accumulate_":
        assert out is None
        return [args[0], args[1]]
    return [out]


# ---------------------------------------------------------------------------
# Philox
# ---------------------------------------------------------------------------

KAT = [  # Random123 kat_vectors, philox4x32 10 rounds (csrc/README.md table)
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((_M32,) * 4, (_M32, _M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_philox_known_answers(backend_name, device):
    for counter, key, expected in KAT:
        c = torch.tensor([counter], dtype=torch.int64, device=device)
        k = torch.tensor(key, dtype=torch.int64, device=device)
        out = _run(backend_name, ops.philox4x32, c, k)
        assert out.dtype == torch.int64 and out.shape == (1, 4) and out.is_contiguous()
        assert out.device.type == device.type
        assert out[0].tolist() == list(expected), [hex(v) for v in out[0].tolist()]
    # The arbiter agrees with the table too (else it could not arbitrate).
    for counter, key, expected in KAT:
        assert scalar_philox(counter, key) == list(expected)


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_philox_random_counters_match_scalar(backend_name):
    # Counters near 2**32 and random ones exercise every carry of the 16-bit
    # limb split the reference uses for mulhilo32.
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 2**32, (200, 4), generator=g, dtype=torch.int64)
    c[:8] = torch.tensor([_M32, _M32 - 1, 2**31, 2**16, 2**16 - 1, 1, 0, 0xFFFF0000])[:, None]
    key = torch.tensor([0xDEADBEEF, 0x01234567], dtype=torch.int64)
    out = _run(backend_name, ops.philox4x32, c, key)
    expected = [scalar_philox(tuple(row), (0xDEADBEEF, 0x01234567)) for row in c.tolist()]
    assert out.tolist() == expected
    # Words are taken mod 2**32 (a C++ static_cast<uint32_t>): values past
    # 2**32 and negative ones wrap, in counters and key alike.
    wrapped = _run(backend_name, ops.philox4x32, c[:50] + 2**32 * torch.tensor([1, -1, 3, -7]),
                   key - 2**32)
    assert_bitwise_equal(wrapped, out[:50])
    # Empty batch of counters.
    empty = _run(backend_name, ops.philox4x32, c[:0], key)
    assert empty.shape == (0, 4) and empty.dtype == torch.int64


# ---------------------------------------------------------------------------
# Reference against the scalar contract
# ---------------------------------------------------------------------------


def _log_and_cos_points() -> Tuple[torch.Tensor, torch.Tensor]:
    """Arguments of fa_log (float64 u) and of fa_cossin_2pi (int64 n < 2**53)."""
    g = torch.Generator().manual_seed(1)
    u = torch.rand(20000, generator=g, dtype=torch.float64).clamp_min(2.0**-53)
    # edges: the smallest u1, the SQRT_HALF switch (either side), 1/2, and 1 (log = 0)
    u_edges = [2.0**-53, 0.5, 0.70710678118654746, 0.70710678118654752440, 0.7071067811865476,
               1.0 - 2.0**-53, 1.0]
    n = torch.randint(0, 2**53, (20000,), generator=g, dtype=torch.int64)
    # edges: quadrant starts q * 2**51 (x = 0: signed zeros), the r = 1/2 switch
    # (k = 2**50, either side), the ends of each quadrant, and t -> 1
    n_edges = [q * 2**51 + k for q in range(4)
               for k in (0, 1, 2**50 - 1, 2**50, 2**50 + 1, 2**51 - 1)]
    return (torch.cat([u, torch.tensor(u_edges, dtype=torch.float64)]),
            torch.cat([n, torch.tensor(n_edges, dtype=torch.int64)]))


def test_reference_log_and_cos_match_scalar_contract():
    # Bit for bit: the reference performs the contract's steps in its order.
    u, n = _log_and_cos_points()
    want_log = torch.tensor([scalar_log(v) for v in u.tolist()], dtype=torch.float64)
    assert_bitwise_equal(_reference._fa_log(u), want_log, msg="fa_log:")
    want = torch.tensor([scalar_cossin_2pi(v) for v in n.tolist()], dtype=torch.float64)  # [N, 2]
    cos, sin = _reference._fa_cossin_2pi(n)
    assert_bitwise_equal(cos, want[:, 0], msg="fa_cossin_2pi cos:")
    assert_bitwise_equal(sin, want[:, 1], msg="fa_cossin_2pi sin:")
    # HALF_PI_SCALED as the README gives it.
    assert struct.unpack("<Q", struct.pack("<d", _reference._HALF_PI_SCALED))[0] == 0x3CC921FB54442D18


def test_reference_sqrt_is_correctly_rounded():
    # The contract's sqrt is IEEE's (std::sqrt, CUDA sqrt); torch.sqrt on CPU
    # is off by 1 ulp for ~0.7% of float64 inputs, so the reference corrects
    # it. numpy's sqrt is the hardware's, correctly rounded.
    g = torch.Generator().manual_seed(6)
    inf = torch.tensor(math.inf, dtype=torch.float64)
    zero = torch.tensor(0.0, dtype=torch.float64)
    rand = torch.cat([
        torch.rand(200_000, generator=g, dtype=torch.float64) * 74,  # -2 log(u1) <= 73.4
        torch.exp(torch.rand(100_000, generator=g, dtype=torch.float64) * -37) * 2,
    ])
    # hardest cases: next to the squares of midpoints between adjacent doubles
    c = torch.rand(100_000, generator=g, dtype=torch.float64) * 8 + 2.0**-26
    mid_sq = (c + (torch.nextafter(c, inf) - c) / 2) ** 2
    pow2 = torch.tensor([2.0**k for k in range(-52, 7)], dtype=torch.float64)
    a = torch.cat([rand, mid_sq, torch.nextafter(mid_sq, zero), torch.nextafter(mid_sq, inf),
                   pow2, torch.nextafter(pow2, zero), torch.nextafter(pow2, inf),
                   torch.tensor([0.0, -0.0], dtype=torch.float64)])
    assert not a.isnan().any()
    assert_bitwise_equal(_reference._sqrt_rn(a), torch.from_numpy(np.sqrt(a.numpy())))


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_reference_noise_matches_scalar_contract(noise):
    # 3000 draws over keys that use every counter and key word (the high seed
    # word, stream tags, example ids past 2**32, which wrap).
    seed, stream, D = 2**41 + 2**32 * 3 + 99, 7 * 65536 + 2, 250
    examples = torch.tensor([0, 1, 2**32 - 1, 2**32 + 5, 123456789012], dtype=torch.int64)
    samples = torch.tensor([0, 3], dtype=torch.int64)
    ex, sm = torch.meshgrid(examples, samples, indexing="ij")
    ex, sm = ex.reshape(-1, 1), sm.reshape(-1, 1)
    z = _reference._keyed_noise(noise, seed, stream, ex, sm, D)  # [10, D]
    want = torch.tensor(
        [[scalar_noise(noise, seed, stream, e, n, d) for d in range(D)]
         for e, n in zip(ex.flatten().tolist(), sm.flatten().tolist())],
        dtype=torch.float64,
    )
    assert_bitwise_equal(z, want)


# The known answers of csrc/README.md section 2: float64 bits of z for one
# key, per element (gaussian, uniform). csrc/tests/test_kernels.cpp checks the
# same values and the same checksums below on the baseline x86-64 build of the
# CPU noise loop; the extension here runs its AVX2 clone on AVX2 machines, so
# together they show that both clones give the same bits.
NOISE_KAT_KEY = dict(seed=0x0123456789ABCDEF, stream=3, example=5, sample=2)
NOISE_KATS = {
    0: (0xBFEFAE3130780E60, 0xBFC851D33E6C07B8),
    1: (0x3FCEE59F0F2FAD0E, 0xBFE37743BE2854BA),
    2: (0xBFC57D859F63D333, 0xBFEA5CDC8F925A1E),
    3: (0x3FE46EF673276D44, 0xBFD6D6103F674178),
    12344: (0xBFE5C9C2647F2766, 0x3FEEDD52CD3CE44A),
    12345: (0x3FEA507A5B535995, 0xBFE7269FAAA40786),
}
# sum over d < 100001 of bits(z_d) * (2d + 1) mod 2**64, for the same key.
NOISE_CHECKSUM_D = 100_001
NOISE_CHECKSUMS = {"gaussian": 0x224E4044A1D4D8ED, "uniform": 0xB40F96BF4DDA6D52}


def _kat_key_noise(backend_name: str, noise: str, D: int) -> torch.Tensor:
    """z[d], d < D, float64, of NOISE_KAT_KEY: row 2 (sample 2) of example 0 at offset 5."""
    k = NOISE_KAT_KEY
    x = torch.zeros(1, D, dtype=torch.float64)
    return _run(backend_name, ops.generate_rows, x, None, None, 3, noise, 1.0, k["seed"], k["stream"],
                k["sample"], 1, k["example"])[0]


def _bits(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", v))[0]


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_noise_known_answers(backend_name, noise):
    col = 0 if noise == "gaussian" else 1
    z = _kat_key_noise(backend_name, noise, max(NOISE_KATS) + 1)
    k = NOISE_KAT_KEY
    for d, want in NOISE_KATS.items():
        assert _bits(z[d].item()) == want[col], f"element {d}: {z[d].item()!r}"
        arbiter = scalar_noise(noise, k["seed"], k["stream"], k["example"], k["sample"], d)
        assert _bits(arbiter) == want[col], f"arbiter, element {d}"
    # An odd row length ends in a lone even element: same value.
    odd = _kat_key_noise(backend_name, noise, 12345)
    assert _bits(odd[12344].item()) == NOISE_KATS[12344][col]


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_noise_checksum(backend_name, noise):
    z = _kat_key_noise(backend_name, noise, NOISE_CHECKSUM_D)
    bits = z.view(torch.int64).numpy().view(np.uint64)
    weights = np.arange(NOISE_CHECKSUM_D, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    assert int((bits * weights).sum(dtype=np.uint64)) == NOISE_CHECKSUMS[noise]


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_reference_matches_scalar_contract(dtype, noise):
    g = torch.Generator().manual_seed(5)
    B, F, n_samples, S = 3, (4, 6), 2, 3
    inputs = torch.randn(B, *F, generator=g, dtype=torch.float64).to(dtype)
    baselines = torch.randn(B, *F, generator=g, dtype=torch.float64).to(dtype)
    alphas = torch.rand(S, generator=g, dtype=torch.float64)
    seed, stream, offset, scale = 2**33 + 17, 3 * 65536 + 1, 2**32 - 2, 0.37
    N = B * n_samples * S
    for al, base in ((alphas, baselines), (None, None)):
        rows = N if al is not None else B * n_samples
        out = _reference.generate_rows(
            inputs, base, al, n_samples, noise, scale, seed, stream, 0, rows, offset
        )
        picks = torch.randint(0, rows * 24, (60,), generator=g).tolist()
        for flat in picks:
            r, d = divmod(flat, 24)
            expected = scalar_generate_row_element(
                inputs, base, al, n_samples, noise, scale, seed, stream, r, d, offset
            )
            assert_bitwise_equal(out[r].reshape(-1)[d], expected, msg=f"row {r} element {d}:")


# ---------------------------------------------------------------------------
# Reference == extension, bit for bit, over a grid
# ---------------------------------------------------------------------------


def _make_inputs(kind: str, B: int, dtype, g) -> torch.Tensor:
    """Inputs [B, *F] of a few shapes and layouts (non-contiguous ones included)."""
    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    if kind == "F357_permuted":  # [B, 3, 5, 7] from a permuted [B, 7, 5, 3]
        return r(B, 7, 5, 3).permute(0, 3, 2, 1)
    if kind == "F13_sliced":  # [B, 13] every other column of [B, 26]
        return r(B, 26)[:, ::2]
    if kind == "F13":
        return r(B, 13)
    if kind == "F_empty":  # D = 0
        return r(B, 4, 0)
    raise AssertionError(kind)


# (inputs kind, B, n_samples, S, seed, stream, example_offset)
GEN_CASES = [
    ("F13", 1, 1, 4, 0, 0, 0),
    ("F357_permuted", 3, 2, 3, 12345, 65536 * 2 + 1, 1000),
    ("F13_sliced", 4, 3, 2, 2**40 + 7, 5, 2**32 - 2),  # example id wraps mod 2**32
    ("F13", 0, 2, 3, 1, 0, 0),  # B = 0: only the empty range is valid
    ("F_empty", 2, 2, 2, 3, 1, 0),
]


def _row_ranges(N: int, P: int) -> List[Tuple[int, int]]:
    """Full range, ranges starting/ending mid-example, and empty ranges."""
    ranges = {(0, N), (0, 0), (N, 0)}
    if N > 2:
        ranges.add((1, N - 2))  # starts and ends inside an example
    if N > P + 1:
        ranges.add((P + 1, min(P, N - P - 1)))
    return sorted(ranges)


@needs_ext
@pytest.mark.parametrize("path", ["no_path", "base_1F", "base_BF"])
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_generate_rows_reference_equals_extension(dtype, noise, path):
    g = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{noise}{path}".encode()))
    for kind, B, n_samples, S, seed, stream, offset in GEN_CASES:
        inputs = _make_inputs(kind, B, dtype, g)
        F = inputs.shape[1:]
        alphas = baselines = None
        if path in ("base_1F", "base_BF"):
            nb = 1 if path == "base_1F" else B
            baselines = torch.randn(nb, *F, generator=g, dtype=torch.float64).to(dtype)
            if baselines.dim() == 2 and baselines.shape[0] > 0:
                # a non-contiguous baseline too
                baselines = torch.randn(nb, 2 * F[0], generator=g, dtype=torch.float64).to(dtype)[:, 1::2]
        if path in ("base_1F", "base_BF"):
            # non-contiguous alphas, with the endpoints 0 and 1 and values outside [0, 1]
            alphas = torch.linspace(-0.25, 1.25, 2 * S, dtype=torch.float64)[::2]
            alphas[0], alphas[-1] = 0.0, 1.0
            assert alphas.numel() == S and not alphas.is_contiguous()
        else:
            S = 1
        N = B * n_samples * S
        scale = 0.75  # also with noise == "none", which must ignore it
        for row_start, row_count in _row_ranges(N, n_samples * S):
            args = (inputs, baselines, alphas, n_samples, noise, scale, seed, stream,
                    row_start, row_count, offset)
            ref = _run("reference", ops.generate_rows, *args)
            ext = _run("extension", ops.generate_rows, *args)
            assert ref.shape == (row_count, *F) and ref.is_contiguous()
            assert ext.is_contiguous()
            assert_bitwise_equal(ext, ref, msg=f"case {kind} B={B} rows [{row_start}, +{row_count}):")


# (values dtype, F, layout, group_size, row_start, n, group_offset)
ACC_CASES = [
    ((13,), "contiguous", 1, 0, 5, 0),
    ((3, 5, 7), "permuted", 3, 4, 8, 1),  # starts and ends mid-group
    ((13,), "sliced", 5, 7, 12, 1),
    ((13,), "contiguous", 4, 2, 2, 0),  # fewer rows than a group, inside one group
    ((13,), "contiguous", 4, 3, 0, 0),  # no rows
    ((4, 0), "contiguous", 2, 1, 3, 0),  # D = 0
]


def _make_values(F, layout, n, dtype, g) -> torch.Tensor:
    if layout == "permuted":
        return torch.randn(n, *reversed(F), generator=g, dtype=torch.float64).to(dtype).permute(
            0, *range(len(F), 0, -1))
    if layout == "sliced":
        return torch.randn(n, 2 * F[0], generator=g, dtype=torch.float64).to(dtype)[:, ::2]
    return torch.randn(n, *F, generator=g, dtype=torch.float64).to(dtype)


@needs_ext
@pytest.mark.parametrize("with_sq", [False, True], ids=["acc", "acc+acc_sq"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_accumulate_reference_equals_extension(dtype, with_sq):
    g = torch.Generator().manual_seed(17)
    at = acc_dtype(dtype)
    for F, layout, gs, row_start, n, g_off in ACC_CASES:
        values = _make_values(F, layout, n, dtype, g)
        G = max(1, (row_start + max(n, 1) - 1) // gs - g_off + 1)
        # Non-zero starting accumulators: the op adds to what is there.
        acc0 = torch.randn(G, *F, generator=g, dtype=torch.float64).to(at)
        sq0 = torch.rand(G, *F, generator=g, dtype=torch.float64).to(at) if with_sq else None
        weights = torch.randn(2 * gs, generator=g, dtype=torch.float64)[::2]  # non-contiguous
        outs = {}
        for backend_name in ("reference", "extension"):
            acc = acc0.clone()
            sq = sq0.clone() if with_sq else None
            _run(backend_name, ops.accumulate_, acc, sq, values, weights, row_start, gs, g_off)
            outs[backend_name] = (acc, sq)
        msg = f"case F={F} {layout} gs={gs} rows [{row_start}, +{n}) offset {g_off}:"
        assert_bitwise_equal(outs["extension"][0], outs["reference"][0], msg=msg + " acc")
        if with_sq:
            assert_bitwise_equal(outs["extension"][1], outs["reference"][1], msg=msg + " acc_sq")


@needs_ext
def test_sample_inputs_reference_equals_extension():
    for op, samples in sample_inputs("cpu").items():
        for i, args in enumerate(samples):
            ref = _apply(op, "reference", args)
            ext = _apply(op, "extension", args)
            for a, b in zip(ext, ref):
                if b is not None:
                    assert_bitwise_equal(a, b, msg=f"{op} sample {i}:")


# ---------------------------------------------------------------------------
# Chunking invariance
# ---------------------------------------------------------------------------


def _uneven_chunks(N: int) -> List[Tuple[int, int]]:
    sizes, start, k = [], 0, 0
    pattern = [1, 5, 0, 2, 7, 3]  # includes an empty chunk
    while start < N:
        size = min(pattern[k % len(pattern)], N - start)
        sizes.append((start, size))
        start += size
        k += 1
    return sizes


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_generate_rows_chunked_equals_whole(backend_name, dtype):
    g = torch.Generator().manual_seed(3)
    B, n_samples, S = 3, 2, 4
    inputs = torch.randn(B, 2, 5, generator=g, dtype=torch.float64).to(dtype)
    baselines = torch.randn(B, 2, 5, generator=g, dtype=torch.float64).to(dtype)
    alphas = torch.rand(S, generator=g, dtype=torch.float64)
    N = B * n_samples * S
    common = (n_samples, "gaussian", 0.5, 42, 3, )
    whole = _run(backend_name, ops.generate_rows, inputs, baselines, alphas, *common, 0, N, 7)
    parts = [
        _run(backend_name, ops.generate_rows, inputs, baselines, alphas, *common, s, c, 7)
        for s, c in _uneven_chunks(N)
    ]
    assert_bitwise_equal(torch.cat(parts), whole)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_accumulate_chunked_equals_whole(backend_name, dtype):
    g = torch.Generator().manual_seed(4)
    gs, n_groups = 5, 4
    N = gs * n_groups
    at = acc_dtype(dtype)
    values = torch.randn(N, 3, 2, generator=g, dtype=torch.float64).to(dtype)
    weights = torch.randn(gs, generator=g, dtype=torch.float64)
    acc_whole, sq_whole = torch.zeros(n_groups, 3, 2, dtype=at), torch.zeros(n_groups, 3, 2, dtype=at)
    _run(backend_name, ops.accumulate_, acc_whole, sq_whole, values, weights, 0, gs, 0)
    acc_chunked, sq_chunked = torch.zeros_like(acc_whole), torch.zeros_like(sq_whole)
    for s, c in _uneven_chunks(N):
        _run(backend_name, ops.accumulate_, acc_chunked, sq_chunked, values[s : s + c], weights, s, gs, 0)
    assert_bitwise_equal(acc_chunked, acc_whole)
    assert_bitwise_equal(sq_chunked, sq_whole)
    # The engine's pattern: accumulators that hold only the groups of a chunk
    # (group_offset = first group of the chunk), copied into place afterwards.
    acc_pieces = torch.zeros_like(acc_whole)
    for s, c in _uneven_chunks(N):
        if c == 0:
            continue
        g0, g1 = s // gs, (s + c - 1) // gs
        piece = acc_pieces[g0 : g1 + 1].clone()
        _run(backend_name, ops.accumulate_, piece, None, values[s : s + c], weights, s, gs, g0)
        acc_pieces[g0 : g1 + 1] = piece
    assert_bitwise_equal(acc_pieces, acc_whole)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("noise", NOISES)
def test_cpu_kernels_same_bits_on_any_thread_count(noise, dtype):
    # Big enough that at::parallel_for splits both ops into several tasks:
    # rows and accumulator blocks are then made on different threads.
    g = torch.Generator().manual_seed(6)
    B, n_samples, S, F = 4, 3, 5, 1100
    inputs = torch.randn(B, F, generator=g, dtype=torch.float64).to(dtype)
    baselines = torch.randn(1, F, generator=g, dtype=torch.float64).to(dtype)
    alphas = torch.rand(S, generator=g, dtype=torch.float64)
    weights = torch.rand(S, generator=g, dtype=torch.float64)
    N = B * n_samples * S

    def run() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = ops.generate_rows(inputs, baselines, alphas, n_samples, noise, 0.3, 9, 1, 0, N, 0)
        acc = torch.zeros(B * n_samples, F, dtype=acc_dtype(dtype))
        acc_sq = torch.zeros_like(acc)
        ops.accumulate_(acc, acc_sq, rows, weights, 0, S, 0)
        return rows, acc, acc_sq

    with _backend.use("reference"):
        expected = run()
    for threads in (1, 2, 3):
        with _backend.use("extension"), intra_op_threads(threads):
            got = run()
        for a, b in zip(got, expected):
            assert_bitwise_equal(a, b)


# ---------------------------------------------------------------------------
# Against obviously-right float64 math
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_path_points_are_base_plus_alpha_times_difference(backend_name, dtype):
    g = torch.Generator().manual_seed(8)
    B, S = 4, 6
    x = torch.randn(B, 50, generator=g, dtype=torch.float64).to(dtype)
    base = torch.randn(1, 50, generator=g, dtype=torch.float64).to(dtype)
    alphas = torch.rand(S, generator=g, dtype=torch.float64)
    out = _run(backend_name, ops.generate_rows, x, base, alphas, 1, "none", 0.0, 0, 0, 0, B * S, 0)
    x64, b64 = x.double().repeat_interleave(S, 0), base.double()
    a64 = alphas.repeat(B)[:, None]
    exact = b64 + a64 * (x64 - b64)
    if dtype == torch.float64:
        assert_bitwise_equal(out, exact)
    else:
        # plain PyTorch in the dtype itself (the op computes in float32 and
        # rounds once, so it should be no worse)
        xd, bd, ad = x.repeat_interleave(S, 0), base, alphas.to(dtype).repeat(B)[:, None]
        plain = bd + ad * (xd - bd)
        assert_error_within(out, exact, plain, factor=2.0)
    # alpha = 0 gives the baseline exactly (base + 0 * diff). (alpha = 1 need
    # not give x exactly: base + (x - base) rounds twice.)
    out = _run(backend_name, ops.generate_rows, x, base, torch.zeros(1, dtype=torch.float64), 1, "none",
               0.0, 0, 0, 0, B, 0)
    assert_bitwise_equal(out, base.expand(B, -1).contiguous())


def _noise(backend_name, noise, D, *, B=1, n_samples=1, seed=0, stream=0, offset=0, dtype=torch.float64,
           scale=1.0, row_start=0, row_count=None) -> torch.Tensor:
    """Noise alone: rows for zero inputs, no path ([rows, D])."""
    x = torch.zeros(B, D, dtype=dtype)
    if row_count is None:
        row_count = B * n_samples - row_start
    return _run(backend_name, ops.generate_rows, x, None, None, n_samples, noise, scale, seed, stream,
                row_start, row_count, offset)


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_noise_is_added_to_the_input(backend_name, dtype, noise):
    # x_n = x + scale * z with z independent of x: checked in float64 math
    # against z read off zero inputs at unit scale.
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 40, generator=g, dtype=torch.float64).to(dtype)
    scale = 0.3
    out = _run(backend_name, ops.generate_rows, x, None, None, 3, noise, scale, 11, 2, 0, 6, 5)
    z = _noise(backend_name, noise, 40, B=2, n_samples=3, seed=11, stream=2, offset=5)
    exact = x.double().repeat_interleave(3, 0) + scale * z
    if dtype == torch.float64:
        assert_bitwise_equal(out, exact)
    else:
        plain = x.repeat_interleave(3, 0) + (scale * z).to(dtype)
        assert_error_within(out, exact, plain, factor=2.0)


def test_reference_log_and_cos_match_libm():
    # The error bounds of csrc/README.md section 2: fa_log < 1.4e-12 relative,
    # cos and sin of 2 pi t < 4e-13 absolute (the series' truncation).
    u, n = _log_and_cos_points()
    log_ref = torch.log(u)
    rel = (_reference._fa_log(u) - log_ref).abs() / log_ref.abs().clamp_min(2.0**-1074)
    assert rel.max().item() <= 1.4e-12, rel.max().item()  # measured 1.3e-12
    assert _reference._fa_log(torch.tensor([1.0], dtype=torch.float64)).item() == 0.0
    cos, sin = _reference._fa_cossin_2pi(n)
    angle = 2 * math.pi * (n.to(torch.float64) * 2.0**-53)
    # torch.cos's own argument 2*pi*t is rounded (error up to ~2pi * 2**-53)
    err = torch.maximum((cos - torch.cos(angle)).abs(), (sin - torch.sin(angle)).abs())
    assert err.max().item() <= 4e-13 + 2e-15, err.max().item()  # measured 3.9e-13
    edges = torch.tensor([0, 2**51, 2**52, 3 * 2**51], dtype=torch.int64)  # t = 0, 1/4, 1/2, 3/4
    cos, sin = _reference._fa_cossin_2pi(edges)
    assert cos.tolist() == [1.0, 0.0, -1.0, 0.0] and sin.tolist() == [0.0, 1.0, 0.0, -1.0]
    # exact zeros, signed by the contract's negations
    assert [math.copysign(1, v) for v in cos.tolist()] == [1, -1, -1, 1]
    assert [math.copysign(1, v) for v in sin.tolist()] == [1, 1, -1, -1]

    # Against 120-bit mpmath, free of that argument rounding.
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workprec(120):
        uu, nn = u[-2007:], n[-2024:]
        log_mp = torch.tensor([float(mpmath.log(mpmath.mpf(v))) for v in uu.tolist()], dtype=torch.float64)
        angles = [2 * mpmath.pi * mpmath.mpf(v) / 2**53 for v in nn.tolist()]
        cos_mp = torch.tensor([float(mpmath.cos(a)) for a in angles], dtype=torch.float64)
        sin_mp = torch.tensor([float(mpmath.sin(a)) for a in angles], dtype=torch.float64)
    rel = ((_reference._fa_log(uu) - log_mp).abs() / log_mp.abs().clamp_min(2.0**-1074)).max().item()
    assert rel <= 1.4e-12, rel
    cos, sin = _reference._fa_cossin_2pi(nn)
    err = max((cos - cos_mp).abs().max().item(), (sin - sin_mp).abs().max().item())
    assert err <= 4e-13, err


def test_gaussian_noise_is_accurate():
    # |z - z_exact| < 1.1e-12 * rad (csrc/README.md section 2), z_exact from
    # the pair's own uniforms in 120-bit mpmath.
    mpmath = pytest.importorskip("mpmath")
    seed, stream, example, sample, D = 2**35 + 11, 4, 9, 1, 2000
    z = _reference._keyed_noise("gaussian", seed, stream, torch.tensor([[example]]),
                                torch.tensor([[sample]]), D)[0]
    worst = 0.0
    with mpmath.workprec(120):
        for p in range(D // 2):
            x = scalar_philox((p, sample, example, stream), (seed & _M32, seed >> 32))
            n1, n2 = x[0] * 2**21 + (x[1] >> 11), x[2] * 2**21 + (x[3] >> 11)
            rad = mpmath.sqrt(-2 * mpmath.log(1 - mpmath.mpf(n1) / 2**53))
            angle = 2 * mpmath.pi * mpmath.mpf(n2) / 2**53
            for d, exact in ((2 * p, rad * mpmath.cos(angle)), (2 * p + 1, rad * mpmath.sin(angle))):
                worst = max(worst, float(abs(z[d].item() - exact) / rad))
    assert worst < 1.1e-12, worst


N_DRAWS = 100_000


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_gaussian_noise_statistics(backend_name):
    z = _noise(backend_name, "gaussian", N_DRAWS // 4, B=2, n_samples=2, seed=123, stream=1)  # [4, D]
    flat = z.flatten()
    n = flat.numel()
    # 5 standard errors: the draws are fixed by the key, so the test is
    # deterministic; 5 sigma keeps a correct generator far from the edge.
    assert abs(flat.mean().item()) < 5 / math.sqrt(n)
    assert abs(flat.std().item() - 1) < 5 / math.sqrt(2 * n)
    p1 = 0.6826894921370859  # P(|z| < 1)
    assert abs((flat.abs() < 1).double().mean().item() - p1) < 5 * math.sqrt(p1 * (1 - p1) / n)
    assert abs((flat**4).mean().item() - 3) < 5 * math.sqrt(96 / n)  # Var(z^4) = 105 - 9
    assert flat.abs().max().item() < 6.5  # beyond 6.5 sigma: p ~ 1e-10 per draw
    # Uncorrelated across samples (rows 0/1), examples (rows 0/2) and neighbours.
    D = z.shape[1]
    se = 1 / math.sqrt(D)

    def corr(a, b):
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    assert abs(corr(z[0], z[1])) < 5 * se, "correlated across samples"
    assert abs(corr(z[0], z[2])) < 5 * se, "correlated across examples"
    assert abs(corr(z[0, :-1], z[0, 1:])) < 5 * se, "correlated across neighbouring elements"
    # The two halves of a Box-Muller pair share the radius but are independent:
    # their squares are uncorrelated too (they would not be if the angle were off).
    even, odd = z[:, 0::2].flatten(), z[:, 1::2].flatten()
    pair_se = 1 / math.sqrt(even.numel())
    assert abs(corr(even, odd)) < 5 * pair_se, "correlated within pairs"
    assert abs(corr(even**2, odd**2)) < 5 * pair_se, "squares correlated within pairs"
    for half in (even, odd):
        assert abs(half.mean().item()) < 5 * pair_se and abs(half.std().item() - 1) < 5 * pair_se
    for kw in ({"stream": 2}, {"seed": 124}, {"seed": 123 + 2**32}):
        other = _noise(backend_name, "gaussian", D, seed=kw.get("seed", 123), stream=kw.get("stream", 1))
        assert abs(corr(z[0], other[0])) < 5 * se, f"correlated across {kw}"


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_uniform_noise_statistics(backend_name):
    scale = 0.5  # a power of two: scale * z is exact, so the bounds are strict
    z = _noise(backend_name, "uniform", N_DRAWS, seed=77, scale=scale).flatten()
    n = z.numel()
    assert z.min().item() >= -scale and z.max().item() < scale
    assert abs(z.mean().item()) < 5 * scale / math.sqrt(3 * n)
    var_se = scale**2 * math.sqrt(4 / 45 / n)  # Var(z^2) for U(-a, a) = 4 a^4 / 45
    assert abs(z.var().item() - scale**2 / 3) < 5 * var_se
    # Spread over the whole interval: each tenth holds ~n/10 draws.
    counts = torch.histc(z, bins=10, min=-scale, max=scale)
    assert ((counts - n / 10).abs() < 5 * math.sqrt(n / 10)).all(), counts


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_noise_key_changes_and_invariance(backend_name, noise):
    D = 64
    ref = _noise(backend_name, noise, D, B=3, n_samples=2, seed=5, stream=4, offset=10)  # [6, D]
    for kw in ({"seed": 6}, {"seed": 5 + 2**32}, {"stream": 5}, {"offset": 11}):
        args = {"seed": 5, "stream": 4, "offset": 10, **kw}
        other = _noise(backend_name, noise, D, B=3, n_samples=2, **args)
        # a changed key gives new draws (a repeat of a 53-bit uniform is ~2**-53 likely)
        assert (other[0] != ref[0]).all(), f"changing only {kw} kept some noise"
    assert (ref[0] != ref[1]).all(), "changing only the sample kept some noise"
    # Same key, different B / row_start / chunk: same noise. Example 2 of a
    # 3-example call at offset 10 is example 0 of a 1-example call at offset 12.
    alone = _noise(backend_name, noise, D, B=1, n_samples=2, seed=5, stream=4, offset=12)
    assert_bitwise_equal(alone, ref[4:6])
    tail = _noise(backend_name, noise, D, B=3, n_samples=2, seed=5, stream=4, offset=10, row_start=3, row_count=2)
    assert_bitwise_equal(tail, ref[3:5])


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_accumulate_matches_loop(backend_name, dtype):
    g = torch.Generator().manual_seed(21)
    gs, row_start, n, g_off = 3, 2, 11, 0
    G = (row_start + n - 1) // gs + 1
    at = acc_dtype(dtype)
    values = torch.randn(n, 7, generator=g, dtype=torch.float64).to(dtype)
    weights = torch.randn(gs, generator=g, dtype=torch.float64)
    acc0 = torch.randn(G, 7, generator=g, dtype=torch.float64).to(at)
    acc, sq = acc0.clone(), torch.zeros_like(acc0)
    _run(backend_name, ops.accumulate_, acc, sq, values, weights, row_start, gs, g_off)
    # The contract as a plain row loop in acc_t: must be bit-identical.
    loop_acc, loop_sq = acc0.clone(), torch.zeros_like(acc0)
    # The float64 meaning of the sums, and the sums of |terms| for error bounds.
    exact_acc, exact_sq = acc0.double().clone(), torch.zeros(G, 7, dtype=torch.float64)
    abs_acc, abs_sq = acc0.double().abs(), torch.zeros(G, 7, dtype=torch.float64)
    for i in range(n):
        r = row_start + i
        grp, w = r // gs - g_off, weights[r % gs]
        v = values[i].to(at)
        wv = w.to(at) * v
        loop_acc[grp] = loop_acc[grp] + wv
        loop_sq[grp] = loop_sq[grp] + wv * v
        v64 = values[i].double()
        exact_acc[grp] += w * v64
        exact_sq[grp] += w * v64 * v64
        abs_acc[grp] += (w * v64).abs()
        abs_sq[grp] += (w * v64 * v64).abs()
    assert_bitwise_equal(acc, loop_acc)
    assert_bitwise_equal(sq, loop_sq)
    if dtype == torch.float64:
        # the float64 loop does the very same roundings
        assert_bitwise_equal(acc, exact_acc)
        assert_bitwise_equal(sq, exact_sq)
    else:
        # Serial float32 sums of k <= gs terms: each term carries the rounding
        # of w to float32 and of the product(s) (2 or 3 roundings), each
        # addition one, so |error| <= (gs + 3) u32 sum|terms| (first order).
        u32 = torch.finfo(torch.float32).eps / 2
        assert ((acc.double() - exact_acc).abs() <= (gs + 3) * u32 * abs_acc).all()
        assert ((sq.double() - exact_sq).abs() <= (gs + 3) * u32 * abs_sq).all()


# ---------------------------------------------------------------------------
# stabilize (LRP's denominator)
# ---------------------------------------------------------------------------


def _stabilized_like_captum(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Captum 0.9's ``_stabilize``: ``z + eps * sign(z)`` with sign 0 made +1,
    in plain torch ops on ``z``'s dtype."""
    sign = torch.sign(z)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return z + torch.tensor(eps, dtype=z.dtype) * sign


@needs_ext
def test_stabilize_reference_equals_extension():
    for i, (z, eps) in enumerate(sample_inputs("cpu")["stabilize"]):
        got, want = _apply("stabilize", "extension", (z, eps))[0], _apply("stabilize", "reference", (z, eps))[0]
        assert_bitwise_equal(got, want, msg=f"sample {i}:")
        dense = ops._non_overlapping_and_dense(z)
        assert got.stride() == (z.stride() if dense else z.contiguous().stride())


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_stabilize_equals_captums_formula(backend_name, dtype):
    """Bit for bit Captum's stabilizer (sign 0 -> +1; -0.0 is 0 there too),
    and within half an ulp of the exact ``z + eps sign z``."""
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(2000, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-12, 3, (2000,), generator=g)).to(dtype)
    z[:5] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("nan")], dtype=dtype)
    for eps in (1e-9, 0.01, 0.5):
        got = _run(backend_name, ops.stabilize, z, eps)
        assert torch.allclose(got, _stabilized_like_captum(z, eps), rtol=0, atol=0, equal_nan=True)
        assert not torch.signbit(got[:2]).any(), "sign(0) and sign(-0.0) are +1"
        eps_d = torch.tensor(eps, dtype=dtype).double()
        exact = z.double() + torch.where(z.double() >= 0, eps_d, -eps_d)
        assert torch.allclose(got, exact.to(dtype), rtol=0, atol=0, equal_nan=True), "one rounding of the exact sum"


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_stabilize_bad_input(backend_name):
    _run(backend_name, ops.stabilize, torch.randn(3), 1e-9)  # the unchanged call is fine
    for z, eps, name in ((torch.zeros(3, dtype=torch.int64), 1e-9, "z"), (torch.randn(3), -1.0, "epsilon"),
                         (torch.randn(3), float("nan"), "epsilon"), (torch.randn(3), float("inf"), "epsilon")):
        with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
            _run(backend_name, ops.stabilize, z, eps)


# ---------------------------------------------------------------------------
# relative_squares (the relative representation change)
# ---------------------------------------------------------------------------


def scalar_relative_squares(x: List[float], old: List[float], inverse: List[float]) -> float:
    """The contract of csrc/README.md section 6 for one row, in Python floats
    (IEEE double, one rounding per operation): 8 lanes, element d into lane
    d % 8 in increasing d, lanes combined pairwise."""
    lanes = [0.0] * 8
    for d, (xd, od, inv) in enumerate(zip(x, old, inverse)):
        v = (xd - od) * inv
        lanes[d % 8] = lanes[d % 8] + v * v
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


def _relative_squares_case(dtype, g_rows: int, D: int, B: int, seed: int, spread: bool = True):
    """(new [g, D] of dtype, old, inverse float64 [B, D], examples [g]): runs of
    1 to 6 rows per example in increasing order, some examples skipped; with
    ``spread``, values over 16 orders of magnitude, so that any other order of
    summation would show in the bits."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-8, 8, (g_rows, D), generator=g) if spread else 1.0
    new = (torch.randn(g_rows, D, generator=g, dtype=torch.float64) * scale).to(dtype)
    old = torch.randn(B, D, generator=g, dtype=torch.float64)
    inverse = 1 / torch.where(old == 0, 1e-6, old)
    runs = torch.randint(1, 7, (B,), generator=g)
    examples = torch.repeat_interleave(torch.arange(B), runs)[:g_rows]
    examples = torch.cat([examples, torch.full((g_rows - examples.numel(),), B - 1, dtype=torch.int64)])
    return new, old, inverse, examples


def test_cpu_cumsum_is_sequential():
    """The reference's lane sums rely on it: torch's CPU cumsum over a
    dimension that is not the innermost adds in order, in float64, bit for bit
    as a Python loop (values over 32 orders of magnitude: a pairwise or
    blocked sum of the same values differs, checked below)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 500, 8, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-16, 16, (6, 500, 8),
                                                                                         generator=g)
    got = x.cumsum(1)[:, -1]
    rows = x.permute(0, 2, 1).reshape(-1, 500).tolist()
    want = []
    for row in rows:
        total = 0.0
        for value in row:
            total = total + value
        want.append(total)
    assert_bitwise_equal(got.reshape(-1), torch.tensor(want, dtype=torch.float64))
    assert not torch.equal(x.sum(1).reshape(-1), got.reshape(-1)), "the data must tell summation orders apart"


@pytest.mark.parametrize("D", [0, 1, 5, 8, 13, 64, 203])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_reference_relative_squares_matches_scalar_contract(dtype, D):
    new, old, inverse, examples = _relative_squares_case(dtype, 9, D, 4, seed=D)
    got = _reference.relative_squares(new, old, inverse, examples)
    x, e = new.double().tolist(), examples.tolist()
    want = [scalar_relative_squares(x[r], old[e[r]].tolist(), inverse[e[r]].tolist()) for r in range(len(x))]
    assert_bitwise_equal(got, torch.tensor(want, dtype=torch.float64))


@needs_ext
@pytest.mark.parametrize("D", [0, 1, 7, 8, 9, 16, 61, 1100])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_relative_squares_reference_equals_extension(dtype, D):
    """Bit for bit on a grid of dtypes and lengths (D < 8, multiples of 8 or
    not), example runs of 1 to 6 rows (the CPU scores 4 rows of one example
    together), examples unsorted, new non-contiguous, and on 1 to 3 threads
    (at::parallel_for splits the rows, runs of one example included)."""
    new, old, inverse, examples = _relative_squares_case(dtype, 57, D, 16, seed=100 + D)
    want = _reference.relative_squares(new, old, inverse, examples)
    for threads in (1, 2, 3):
        with intra_op_threads(threads):
            got = _run("extension", ops.relative_squares, new, old, inverse, examples)
        assert_bitwise_equal(got, want, msg=f"{threads} threads:")
    shuffled = torch.randperm(57, generator=torch.Generator().manual_seed(D))
    args = (new[shuffled], old, inverse, examples[shuffled])
    assert_bitwise_equal(_run("extension", ops.relative_squares, *args), want[shuffled], msg="unsorted:")
    strided = torch.empty(57, 2 * D + 1, dtype=dtype)[:, 1::2]
    strided.copy_(new)
    assert not strided.is_contiguous() or D <= 1
    assert_bitwise_equal(_run("extension", ops.relative_squares, strided, old, inverse, examples), want,
                         msg="non-contiguous new:")
    for i, args in enumerate(sample_inputs("cpu")["relative_squares"]):
        got, want = (_apply("relative_squares", b, args)[0] for b in ("extension", "reference"))
        assert_bitwise_equal(got, want, msg=f"sample {i}:")


@pytest.mark.parametrize("D", [1, 7, 8, 100, 1003])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_relative_squares_equals_plain_float64_formula(backend_name, dtype, D):
    """Against ``((new - old[e]) * inverse[e]) ** 2`` summed: the squares are the
    same float64 operations, so only the summation differs. For sums of
    non-negative terms the op's error is at most gamma_n = n u / (1 - n u)
    times the sum, n = ceil(D / 8) + 2 additions a term goes through after
    the first (lane sums, then three pairwise levels); checked against the
    exact sum of the same squares (``math.fsum``, correctly rounded: +u)."""
    new, old, inverse, examples = _relative_squares_case(dtype, 40, D, 10, seed=200 + D, spread=False)
    got = _run(backend_name, ops.relative_squares, new, old, inverse, examples)
    squares = ((new.double() - old[examples]) * inverse[examples]).square()
    exact = torch.tensor([math.fsum(row) for row in squares.tolist()], dtype=torch.float64)
    u = torch.finfo(torch.float64).eps / 2
    n = -(-D // 8) + 2
    bound = (n * u / (1 - n * u) + u) * exact
    assert ((got - exact).abs() <= bound).all()
    # And the plain torch formula, whose own sum is within gamma_(D - 1).
    plain = squares.sum(1)
    assert ((got - plain).abs() <= ((n + D - 1) * u / (1 - (n + D) * u) + u) * exact).all()


def test_relative_squares_zeros_and_empty():
    for backend_name in BACKENDS:
        out = _run(backend_name, ops.relative_squares, torch.randn(3, 0), torch.zeros(2, 0, dtype=torch.float64),
                   torch.zeros(2, 0, dtype=torch.float64), torch.tensor([0, 1, 1]))
        assert out.dtype == torch.float64 and torch.equal(out, torch.zeros(3, dtype=torch.float64))
        out = _run(backend_name, ops.relative_squares, torch.randn(0, 4), torch.zeros(2, 4, dtype=torch.float64),
                   torch.zeros(2, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.int64))
        assert out.shape == (0,) and out.dtype == torch.float64


def _rs_ok():
    return dict(new=torch.randn(5, 6), old=torch.randn(3, 6, dtype=torch.float64),
                inverse=torch.ones(3, 6, dtype=torch.float64), examples=torch.tensor([0, 0, 1, 2, 2]))


RS_BAD = [
    ("new", {"new": torch.zeros(5, 6, dtype=torch.int64)}),
    ("new", {"new": torch.zeros(5, 2, 3)}),
    ("new", {"new": torch.zeros(30)}),
    ("old", {"old": torch.zeros(3, 6)}),  # float32
    ("old", {"old": torch.zeros(3, 7, dtype=torch.float64)}),
    ("old", {"old": torch.zeros(18, dtype=torch.float64)}),
    ("inverse", {"inverse": torch.ones(3, 6)}),
    ("inverse", {"inverse": torch.ones(4, 6, dtype=torch.float64)}),
    ("examples", {"examples": torch.tensor([0, 0, 1, 2, 2], dtype=torch.int32)}),
    ("examples", {"examples": torch.tensor([0, 0, 1, 2])}),
    ("examples", {"examples": torch.tensor([[0, 0, 1, 2, 2]])}),
    ("examples", {"examples": torch.tensor([0, 0, 1, 3, 2])}),  # B = 3
    ("examples", {"examples": torch.tensor([0, -1, 1, 2, 2])}),
]


@pytest.mark.parametrize("name,change", RS_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RS_BAD)])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_relative_squares_bad_input(backend_name, name, change):
    _run(backend_name, ops.relative_squares, *_rs_ok().values())  # the unchanged call is fine
    kw = {**_rs_ok(), **change}
    with pytest.raises(RuntimeError, match=rf"\b({name})\b"):
        _run(backend_name, ops.relative_squares, *kw.values())


# ---------------------------------------------------------------------------
# opcheck, CUDA == CPU
# ---------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("op", ["philox4x32", "generate_rows", "accumulate_", "stabilize", "relative_squares"])
def test_opcheck(op):
    overload = getattr(torch.ops.fastattr, op).default
    for args in sample_inputs("cpu")[op]:
        torch.library.opcheck(overload, _clone_args(args))


@pytest.mark.parametrize("device", CUDA_DEVICES, ids=str)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_cuda_matches_cpu(backend_name, device):
    # The CPU result of the extension is the yardstick when it is built, else
    # the reference's: bit-identical noise on any device is a design promise.
    yardstick = "extension" if EXT else "reference"
    cpu, gpu = sample_inputs("cpu"), sample_inputs(device)
    for op in cpu:
        for i, (args_cpu, args_gpu) in enumerate(zip(cpu[op], gpu[op])):
            want = _apply(op, yardstick, args_cpu)
            got = _apply(op, backend_name, args_gpu)
            for a, b in zip(got, want):
                if b is not None:
                    assert a.device.type == "cuda"
                    assert_bitwise_equal(a, b, msg=f"{op} sample {i} on {device}:")


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _gen_ok():
    x = torch.randn(3, 4)
    return dict(inputs=x, baselines=torch.zeros(1, 4), alphas=torch.linspace(0, 1, 5, dtype=torch.float64),
                n_samples=2, noise="gaussian", scale=0.1, seed=0, stream=0, row_start=0,
                row_count=30, example_offset=0)


GEN_BAD = [
    ("inputs", {"inputs": torch.zeros(3, 4, dtype=torch.int64)}),
    ("inputs", {"inputs": torch.tensor(1.0), "baselines": None, "alphas": None, "row_count": 0}),
    ("baselines", {"baselines": torch.zeros(1, 4, dtype=torch.float64)}),
    ("baselines", {"baselines": torch.zeros(2, 4)}),
    ("baselines", {"baselines": torch.zeros(1, 5)}),
    ("baselines", {"baselines": None}),  # a path needs both ends
    ("alphas", {"alphas": None, "row_count": 6}),  # a baseline without alphas would go unused
    ("alphas", {"alphas": torch.linspace(0, 1, 5, dtype=torch.float32)}),
    ("alphas", {"alphas": torch.zeros(5, 1, dtype=torch.float64), "row_count": 6}),
    ("n_samples", {"n_samples": 0, "row_count": 0}),
    ("noise", {"noise": "normal"}),
    ("scale", {"scale": -0.1}),
    ("scale", {"scale": float("nan")}),
    ("scale", {"scale": float("inf")}),
    ("seed", {"seed": -1}),
    ("stream", {"stream": -1}),
    ("example_offset", {"example_offset": -1}),
    ("row_start|row_count", {"row_start": -1, "row_count": 1}),
    ("row_start|row_count", {"row_count": 31}),
    ("row_start|row_count", {"row_start": 29, "row_count": 2}),
    ("row_start|row_count", {"row_count": -1}),
]


@pytest.mark.parametrize("name,change", GEN_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(GEN_BAD)])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_generate_rows_bad_input(backend_name, name, change):
    kw = {**_gen_ok(), **change}
    _run(backend_name, ops.generate_rows, *_gen_ok().values())  # the unchanged call is fine
    with pytest.raises(RuntimeError, match=rf"\b({name})\b"):
        _run(backend_name, ops.generate_rows, *kw.values())


def _acc_ok():
    return dict(acc=torch.zeros(4, 3), acc_sq=torch.zeros(4, 3), values=torch.randn(7, 3),
                weights=torch.ones(2, dtype=torch.float64), row_start=1, group_size=2, group_offset=0)


ACC_BAD = [
    ("acc", {"acc": torch.zeros(4, 3, dtype=torch.float64)}),  # float32 values need float32 acc
    ("acc", {"acc": torch.zeros(3, 4).t()}),  # not contiguous
    ("acc", {"acc": torch.zeros(4, 5)}),
    ("acc_sq", {"acc_sq": torch.zeros(4, 3, dtype=torch.float64)}),
    ("acc_sq", {"acc_sq": torch.zeros(4, 5)}),
    ("acc_sq", {"acc_sq": torch.zeros(3, 4).t()}),
    ("values", {"values": torch.zeros(7, 3, dtype=torch.int32)}),
    ("weights", {"weights": torch.ones(2, dtype=torch.float32)}),
    ("weights", {"weights": torch.ones(3, dtype=torch.float64)}),
    ("acc_sq", "alias"),  # acc_sq is acc
    ("group_size", {"group_size": 0}),
    ("row_start", {"row_start": -1}),
    ("acc|group_offset", {"group_offset": 1}),  # group 0 would sit at acc[-1]
    ("acc|group_offset", {"row_start": 2}),  # rows 2..8 reach group 4 of a 4-group acc
]


@pytest.mark.parametrize("name,change", ACC_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ACC_BAD)])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_accumulate_bad_input(backend_name, name, change):
    _run(backend_name, ops.accumulate_, *_acc_ok().values())  # the unchanged call is fine
    kw = _acc_ok()
    kw.update({"acc_sq": kw["acc"]} if change == "alias" else change)
    acc_before = kw["acc"].clone()
    with pytest.raises(RuntimeError, match=rf"\b({name})\b"):
        _run(backend_name, ops.accumulate_, *kw.values())
    assert torch.equal(kw["acc"], acc_before), "a rejected call must not write"


PHILOX_BAD = [
    ("counters", {"counters": torch.zeros(2, 4, dtype=torch.int32)}),
    ("counters", {"counters": torch.zeros(2, 3, dtype=torch.int64)}),
    ("counters", {"counters": torch.zeros(4, dtype=torch.int64)}),
    ("key", {"key": torch.zeros(3, dtype=torch.int64)}),
    ("key", {"key": torch.zeros(2, dtype=torch.float64)}),
]


@pytest.mark.parametrize("name,change", PHILOX_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PHILOX_BAD)])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_philox_bad_input(backend_name, name, change):
    ok = {"counters": torch.zeros(2, 4, dtype=torch.int64), "key": torch.zeros(2, dtype=torch.int64)}
    _run(backend_name, ops.philox4x32, *ok.values())  # the unchanged call is fine
    kw = {**ok, **change}
    with pytest.raises(RuntimeError, match=rf"\b({name})\b"):
        _run(backend_name, ops.philox4x32, *kw.values())


@pytest.mark.parametrize("device", CUDA_DEVICES, ids=str)
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_mixed_devices_rejected(backend_name, device):
    gen = _gen_ok()
    gen["inputs"] = gen["inputs"].to(device)
    with pytest.raises(RuntimeError, match=r"\b(baselines)\b"):
        _run(backend_name, ops.generate_rows, *gen.values())
    acc = _acc_ok()
    acc["weights"] = acc["weights"].to(device)
    with pytest.raises(RuntimeError, match=r"\b(weights)\b"):
        _run(backend_name, ops.accumulate_, *acc.values())
    with pytest.raises(RuntimeError, match=r"\b(key)\b"):
        _run(backend_name, ops.philox4x32, torch.zeros(2, 4, dtype=torch.int64, device=device),
             torch.zeros(2, dtype=torch.int64))
    rs = {k: t.to(device) for k, t in _rs_ok().items()}
    for arg in ("old", "inverse", "examples"):
        with pytest.raises(RuntimeError, match=rf"\b({arg})\b"):
            _run(backend_name, ops.relative_squares, *{**rs, arg: rs[arg].cpu()}.values())
