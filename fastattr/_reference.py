"""Pure-PyTorch twins of the fused ops ``torch.ops.fastattr.*``.

Each function follows the arithmetic contract in ``csrc/README.md`` step by
step, so that on CPU it returns the same bits as the compiled kernels:

* one torch op per arithmetic step of the contract, in the contract's order;
  no fused ops (``addcmul``, ``lerp``, ``add(alpha=...)`` with an inexact
  ``alpha``), which could contract a multiply-add into one rounding;
* integer work (Philox) in int64 with values kept in ``[0, 2**32)``;
* floating point in the accumulation type ``acc_t`` (float32 for
  float16/bfloat16/float32, float64 for float64), cast to the output dtype
  once at the end;
* no division by a Python scalar (CUDA turns that into a multiplication by
  the reciprocal); constants are computed once in Python, correctly rounded;
* square roots through :func:`_sqrt_rn`, because ``torch.sqrt`` on CPU is not
  correctly rounded (MKL), while ``std::sqrt`` is.

The code is device-agnostic: the same functions run on CUDA tensors. It never
imports the compiled extension (it is what the extension is checked against).
Python loops run only over Philox rounds, polynomial coefficients and
positions within a group, never over elements or rows.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["philox4x32", "generate_rows", "accumulate_", "stabilize", "relative_squares", "acc_dtype"]

# ---------------------------------------------------------------------------
# Constants (csrc/README.md sections 1 and 2)
# ---------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_PHILOX_ROUNDS = 10

_TWO_POW_M53 = 2.0 ** -53  # exact
_SQRT_HALF = 0.70710678118654752440
_HALF_PI = 1.57079632679489661923
_HALF_PI_SCALED = _HALF_PI * 2.0 ** -51  # exact: a power-of-two scaling
_LN2_HI = 0.693147180369123816490  # 0x3fe62e42fee00000
_LN2_LO = 1.90821492927058770002e-10  # 0x3dea39ef35793c76
# C_LOG[k] = nearest double to 1 / (2k + 3), k = 0..5
_C_LOG = tuple(1.0 / float(2 * k + 3) for k in range(6))
# C_COS[k] = (-1)^(k+1) / (2k+2)!, C_SIN[k] = (-1)^(k+1) / (2k+3)!, k = 0..5.
# n! < 2**53 for every n here, so float(n!) is exact and 1.0 / n! is one rounding.
_C_COS = tuple(
    (1.0 / float(math.factorial(2 * k + 2))) * (1.0 if (k + 1) % 2 == 0 else -1.0)
    for k in range(6)
)
_C_SIN = tuple(
    (1.0 / float(math.factorial(2 * k + 3))) * (1.0 if (k + 1) % 2 == 0 else -1.0)
    for k in range(6)
)

NOISE_KINDS = ("none", "gaussian", "uniform", "gaussian_antithetic", "uniform_antithetic")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation type ``acc_t`` of a value dtype: float64 for float64,
    float32 for float32, float16 and bfloat16."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fail(message: str) -> None:
    raise RuntimeError(message)


# ---------------------------------------------------------------------------
# Philox4x32-10
# ---------------------------------------------------------------------------

_Word = Union[int, Tensor]


def _mulhilo32(a: int, b: Tensor) -> Tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product ``a * b`` of two uint32.

    The product can reach 2**64 and overflow int64, so ``b`` is split into
    16-bit limbs: ``a * b = (a * b_hi) * 2**16 + a * b_lo``, each partial
    product < 2**48.
    """
    t = a * (b & 0xFFFF)  # < 2**48
    u = a * (b >> 16)  # < 2**48
    s = t + ((u & 0xFFFF) << 16)  # < 2**49: low 48 bits of the product plus carry
    lo = s & _MASK32
    hi = (u >> 16) + (s >> 32)  # < 2**32
    return hi, lo


def _philox(
    c0: _Word, c1: _Word, c2: _Word, c3: _Word, k0: _Word, k1: _Word
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 on broadcastable int64 words in ``[0, 2**32)``.

    Counter words and key words may be tensors or Python ints (at least one
    of ``c0``/``c2`` a tensor); the result words have the broadcast shape.
    """
    for i in range(_PHILOX_ROUNDS):
        if i > 0:  # the key is bumped between rounds, 9 times
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3  # type: ignore[return-value]


def philox4x32(counters: Tensor, key: Tensor) -> Tensor:
    """Philox4x32-10 block function.

    Mirrors ``Philox4x32Kernel`` in csrc/fastattr/philox.h and
    ``check_philox4x32_args`` in csrc/op_checks.cpp (csrc/README.md section 1).

    Args:
        counters: int64 ``[N, 4]``, values in ``[0, 2**32)`` (taken mod 2**32).
        key: int64 ``[2]``, values in ``[0, 2**32)`` (taken mod 2**32).

    Returns:
        int64 ``[N, 4]``, contiguous: the four 32-bit output words per counter.
    """
    if not isinstance(counters, Tensor) or counters.dtype != torch.int64:
        _fail(f"fastattr::philox4x32: counters must be an int64 tensor, got {_describe(counters)}")
    if counters.dim() != 2 or counters.shape[1] != 4:
        _fail(f"fastattr::philox4x32: counters must have shape [N, 4], got {list(counters.shape)}")
    if not isinstance(key, Tensor) or key.dtype != torch.int64:
        _fail(f"fastattr::philox4x32: key must be an int64 tensor, got {_describe(key)}")
    if key.dim() != 1 or key.shape[0] != 2:
        _fail(f"fastattr::philox4x32: key must have shape [2], got {list(key.shape)}")
    if key.device != counters.device:
        _fail(
            f"fastattr::philox4x32: key must be on the device of counters ({counters.device}), "
            f"got {key.device}"
        )
    c = counters & _MASK32  # [N, 4]
    k = key & _MASK32  # [2]
    out = _philox(c[:, 0], c[:, 1], c[:, 2], c[:, 3], k[0], k[1])
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------
# Keyed noise (csrc/README.md section 2)
# ---------------------------------------------------------------------------


def _fa_log(u: Tensor) -> Tensor:
    """log(u) for float64 ``u`` in (0, 1]. Mirrors ``fa_log`` in csrc/fastattr/keyed_random.h."""
    m, e = torch.frexp(u)  # u = m * 2**e, m in [0.5, 1)
    small = m < _SQRT_HALF
    m = torch.where(small, m * 2.0, m)
    e = torch.where(small, e - 1, e)
    f = (m - 1.0) / (m + 1.0)
    f2 = f * f
    s = f2 * _C_LOG[5]
    s = s + _C_LOG[4]
    for k in range(3, -1, -1):  # s = C_LOG[k] + f2 * s
        s = f2 * s
        s = s + _C_LOG[k]
    two_f = 2.0 * f
    logm = two_f + two_f * (f2 * s)
    ed = e.to(torch.float64)
    return ed * _LN2_HI + (ed * _LN2_LO + logm)


def _poly_cos(x: Tensor) -> Tensor:
    """cos(x), 0 <= x <= pi/4. Mirrors ``poly_cos`` in csrc/fastattr/keyed_random.h."""
    x2 = x * x
    p = x2 * _C_COS[5]
    p = p + _C_COS[4]
    for k in range(3, -1, -1):  # p = C_COS[k] + x2 * p
        p = x2 * p
        p = p + _C_COS[k]
    return 1.0 + x2 * p


def _poly_sin(x: Tensor) -> Tensor:
    """sin(x), 0 <= x <= pi/4. Mirrors ``poly_sin`` in csrc/fastattr/keyed_random.h."""
    x2 = x * x
    p = x2 * _C_SIN[5]
    p = p + _C_SIN[4]
    for k in range(3, -1, -1):  # p = C_SIN[k] + x2 * p
        p = x2 * p
        p = p + _C_SIN[k]
    return x + x * (x2 * p)


def _fa_cossin_2pi(n: Tensor) -> Tuple[Tensor, Tensor]:
    """cos and sin of 2 pi t for ``t = n * 2**-53``, int64 ``n`` in [0, 2**53).
    Mirrors ``fa_cossin_2pi`` in csrc/fastattr/keyed_random.h.

    The quadrant ``q = n >> 51`` and the remainder ``k = n mod 2**51`` are
    integers; both polynomials are computed for every element and the
    contract's choices made with ``where``, which gives the same bits as the
    C++'s selects. Negation flips the sign bit, zeros included, as in C++.
    """
    q = n >> 51  # floor(4 t), 0..3
    k = n & (2**51 - 1)  # 4 t - q = k * 2**-51
    first_half = k <= 2**50
    a = torch.where(first_half, k, 2**51 - k)  # integer <= 2**50
    x = a.to(torch.float64) * _HALF_PI_SCALED  # exact conversion, one rounding
    pc = _poly_cos(x)
    ps = _poly_sin(x)
    c = torch.where(first_half, pc, ps)  # cos(pi/2 r)
    s = torch.where(first_half, ps, pc)  # sin(pi/2 r)
    cos = torch.where(q == 0, c, torch.where(q == 1, -s, torch.where(q == 2, -c, s)))
    sin = torch.where(q == 0, s, torch.where(q == 1, c, torch.where(q == 2, -s, -c)))
    return cos, sin


_VELTKAMP = 134217729.0  # 2**27 + 1: splits a double into two 26-bit halves


def _two_sum(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """Knuth's TwoSum: ``s + err == x + y`` exactly, ``s = fl(x + y)``."""
    s = x + y
    bp = s - x
    err = (x - (s - bp)) + (y - bp)
    return s, err


def _sqrt_rn(a: Tensor) -> Tensor:
    """Correctly rounded sqrt of float64 ``a >= 0`` (what C++ ``std::sqrt`` and
    CUDA ``sqrt`` return).

    ``torch.sqrt`` is not enough on CPU: with MKL it returns a result 1 ulp
    off for ~0.7% of float64 inputs (measured, torch 2.14, every CPU
    capability). So take ``c = torch.sqrt(a)`` (within 1 ulp) and move it to
    the neighbour whose rounding interval holds ``sqrt(a)``, deciding exactly:

    * ``c*c = p + e`` exactly (Dekker's product, Veltkamp split), and
      ``a - p`` is exact (Sterbenz), so ``R = a - c*c = (a - p) - e``.
    * With ``u`` = the gap to the next double up, ``sqrt(a)`` is above the
      midpoint ``c + u/2`` iff ``R > c*u + u*u/4``. ``R`` and ``c*u`` are
      integer multiples of ``ulp(c)**2`` and ``u*u/4`` is less than one of
      them, so the test is ``R - c*u > 0``; likewise below: ``R + c*d <= 0``
      with ``d`` the gap down.
    * ``R -+ c*u`` is evaluated as TwoSum ``y + ye = (a - p) -+ c*u``, then
      ``y + (ye - e)``: ``ye - e`` is exact (a multiple of ``ulp(c)**2`` below
      2**53 of them) and one rounded addition keeps the sign.

    Where ``torch.sqrt`` is already correctly rounded (CUDA) this changes
    nothing. ``sqrt(+-0) = +-0``.
    """
    c = torch.sqrt(a)
    g = c * _VELTKAMP
    hi = g - (g - c)
    lo = c - hi
    p = c * c
    e = hi * hi - p
    e = e + hi * lo
    e = e + lo * hi
    e = e + lo * lo  # c*c == p + e exactly
    t1 = a - p  # exact
    up = torch.nextafter(c, torch.full_like(c, math.inf))
    down = torch.nextafter(c, torch.zeros_like(c))
    y, ye = _two_sum(t1, -(c * (up - c)))
    go_up = y + (ye - e) > 0.0
    y, ye = _two_sum(t1, c * (c - down))
    go_down = y + (ye - e) <= 0.0
    out = torch.where(go_up, up, torch.where(go_down, down, c))
    return torch.where(a > 0.0, out, c)


def _bits53(x0: Tensor, x1: Tensor) -> Tensor:
    """The 53-bit integer ``x0 * 2**21 + (x1 >> 11)`` of two Philox words (int64)."""
    return (x0 << 21) + (x1 >> 11)


def _uniforms(x0: Tensor, x1: Tensor) -> Tensor:
    """53-bit uniform in [0, 1) from two Philox words: (x0 * 2**21 + (x1 >> 11)) * 2**-53.
    Mirrors ``uniform53`` in csrc/fastattr/keyed_random.h."""
    return _bits53(x0, x1).to(torch.float64) * _TWO_POW_M53


def _keyed_noise(
    noise: str,
    seed: int,
    stream: int,
    example: Tensor,  # [J, 1] int64: example ids (example_offset + b), any int64
    sample: Tensor,  # [J, 1] int64: sample ids n
    n_elements: int,  # D
) -> Tensor:
    """Noise ``z`` (float64 ``[J, D]``) keyed by (seed, stream, example, sample, element).

    Mirrors ``keyed_noise`` (``keyed_uniform`` / ``keyed_gaussian``) in
    csrc/fastattr/keyed_random.h; every id is taken mod 2**32. Uniform noise
    takes one Philox draw per element (counter word 0 = element), Gaussian
    noise one per pair of elements ``2p, 2p + 1`` (counter word 0 = p), whose
    cosine and sine branches are the two elements.
    """
    device = example.device
    words = n_elements if noise == "uniform" else (n_elements + 1) // 2
    word = torch.arange(words, dtype=torch.int64, device=device) & _MASK32
    x0, x1, x2, x3 = _philox(
        word.unsqueeze(0),  # [1, W]
        sample & _MASK32,
        example & _MASK32,
        stream & _MASK32,
        seed & _MASK32,
        (seed >> 32) & _MASK32,
    )
    ua = _uniforms(x0, x1)
    if noise == "uniform":
        return 2.0 * ua - 1.0
    u1 = 1.0 - ua  # in (0, 1], exact
    radius = _sqrt_rn(-2.0 * _fa_log(u1))
    cos, sin = _fa_cossin_2pi(_bits53(x2, x3))
    pairs = torch.stack([radius * cos, radius * sin], dim=-1)  # [J, W, 2]
    return pairs.reshape(pairs.shape[0], 2 * words)[:, :n_elements]


# ---------------------------------------------------------------------------
# Row generation (csrc/README.md section 3)
# ---------------------------------------------------------------------------


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {list(x.shape)} on {x.device}"
    return type(x).__name__


def _check_generate_rows(
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
) -> int:
    """Argument checks of generate_rows (mirror csrc/op_checks.cpp); returns S."""
    name = "fastattr::generate_rows"
    if not isinstance(inputs, Tensor) or inputs.dtype not in _FLOAT_DTYPES:
        _fail(
            f"{name}: inputs must be a float16/bfloat16/float32/float64 tensor, "
            f"got {_describe(inputs)}"
        )
    if inputs.dim() < 1:
        _fail(f"{name}: inputs must have shape [B, *F] (at least 1 dim), got a 0-dim tensor")
    B, F = inputs.shape[0], tuple(inputs.shape[1:])
    # A path needs both ends; a baseline without alphas would go unused.
    if (baselines is None) != (alphas is None):
        _fail(
            f"{name}: baselines and alphas must be given together (a path) or both be "
            f"None, got {'alphas without baselines' if baselines is None else 'baselines without alphas'}"
        )
    if baselines is not None:
        if not isinstance(baselines, Tensor):
            _fail(f"{name}: baselines must be a tensor or None, got {_describe(baselines)}")
        if baselines.dtype != inputs.dtype:
            _fail(
                f"{name}: baselines must have the dtype of inputs ({inputs.dtype}), "
                f"got {baselines.dtype}"
            )
        if baselines.device != inputs.device:
            _fail(
                f"{name}: baselines must be on the device of inputs ({inputs.device}), "
                f"got {baselines.device}"
            )
        if (
            baselines.dim() != inputs.dim()
            or tuple(baselines.shape[1:]) != F
            or baselines.shape[0] not in (1, B)
        ):
            _fail(
                f"{name}: baselines must have shape [1, *F] or [B, *F] = "
                f"{[1, *F]} or {[B, *F]}, got {list(baselines.shape)}"
            )
    S = 1
    if alphas is not None:
        if not isinstance(alphas, Tensor) or alphas.dtype != torch.float64:
            _fail(f"{name}: alphas must be a float64 tensor, got {_describe(alphas)}")
        if alphas.dim() != 1:
            _fail(f"{name}: alphas must have shape [S], got {list(alphas.shape)}")
        if alphas.device != inputs.device:
            _fail(
                f"{name}: alphas must be on the device of inputs ({inputs.device}), "
                f"got {alphas.device}"
            )
        if alphas.shape[0] < 1:
            _fail(f"{name}: alphas must hold at least one path step, got shape [0]")
        S = alphas.shape[0]
    if n_samples < 1:
        _fail(f"{name}: n_samples must be >= 1, got {n_samples}")
    if noise not in NOISE_KINDS:
        _fail(f"{name}: noise must be one of {NOISE_KINDS}, got {noise!r}")
    if not math.isfinite(scale) or scale < 0:
        _fail(f"{name}: scale must be finite and >= 0, got {scale}")
    for arg, v in (("seed", seed), ("stream", stream), ("example_offset", example_offset)):
        if v < 0:
            _fail(f"{name}: {arg} must be >= 0, got {v}")
    n_rows = B * n_samples * S
    if row_start < 0 or row_count < 0 or row_start + row_count > n_rows:
        _fail(
            f"{name}: row_start, row_count must give a range inside [0, B * n_samples * S) "
            f"= [0, {n_rows}), got row_start={row_start}, row_count={row_count}"
        )
    return S


def generate_rows(
    inputs: Tensor,  # [B, *F]
    baselines: Optional[Tensor],  # [1, *F] or [B, *F]
    alphas: Optional[Tensor],  # [S] float64
    n_samples: int,
    noise: str,
    scale: float,
    seed: int,
    stream: int,
    row_start: int,
    row_count: int,
    example_offset: int,
) -> Tensor:  # [row_count, *F]
    """Rows ``row_start .. row_start + row_count`` of the evaluation points.

    Mirrors ``GenerateRowsKernel`` in csrc/fastattr/rows.h and
    ``check_generate_rows_args`` in csrc/op_checks.cpp (csrc/README.md section 3).

    Row ``r`` is example ``b = r // P`` (``P = n_samples * S``), sample
    ``n = (r // S) % n_samples``, step ``s = r % S``. In ``acc_t``:
    ``x_n = x[b] + scale * z`` (``z`` keyed by ``(seed, stream,
    example_offset + b, n, element)``; ``x_n = x[b]`` when ``noise == "none"``),
    then ``base + alphas[s] * (x_n - base)`` when ``alphas`` is given. With an
    ``"_antithetic"`` noise kind sample ``n`` is keyed as sample ``n // 2``
    and its ``z`` multiplied by ``(-1) ** n`` (exact).

    The noisy point depends on ``(b, n)`` only, so it is computed once per
    ``(b, n)`` pair in the range and shared by the pair's ``S`` path steps
    (same bits: the same ops on the same values).

    Returns:
        ``[row_count, *F]`` contiguous, dtype of ``inputs``.
    """
    S = _check_generate_rows(
        inputs, baselines, alphas, n_samples, noise, scale, seed, stream, row_start,
        row_count, example_offset,
    )
    B, F = inputs.shape[0], tuple(inputs.shape[1:])
    D = math.prod(F)
    device = inputs.device
    if row_count == 0:
        return inputs.new_empty((0, *F))
    acc_t = acc_dtype(inputs.dtype)

    # (b, n) pairs touched by the rows: pair j = r // S.
    j_first = row_start // S
    j_last = (row_start + row_count - 1) // S
    j = torch.arange(j_first, j_last + 1, dtype=torch.int64, device=device)  # [J]
    b_of_j = torch.div(j, n_samples, rounding_mode="floor")  # [J]
    x = inputs.reshape(B, D).index_select(0, b_of_j).to(acc_t)  # [J, D]
    if noise != "none":
        n_of_j = j - b_of_j * n_samples  # j % n_samples
        kind, antithetic = noise.removesuffix("_antithetic"), noise.endswith("_antithetic")
        z = _keyed_noise(
            kind, seed, stream, (b_of_j + example_offset).unsqueeze(1),
            (n_of_j // 2 if antithetic else n_of_j).unsqueeze(1), D,
        )  # [J, D] float64
        if antithetic:
            # (-1) ** n: the odd sample of a pair is the even one's draw negated (exact).
            z = z * (1 - 2 * (n_of_j & 1)).to(torch.float64).unsqueeze(1)
        # (acc_t)scale, rounded once like the C++ static_cast.
        scale_acc = float(torch.tensor(scale, dtype=torch.float64).to(acc_t))
        x = x + scale_acc * z.to(acc_t)

    if alphas is None:
        out = x  # S == 1: rows and pairs coincide
    else:
        assert baselines is not None
        r = torch.arange(row_start, row_start + row_count, dtype=torch.int64, device=device)
        j_of_r = torch.div(r, S, rounding_mode="floor")  # [R]
        s_of_r = r - j_of_r * S  # r % S
        x = x.index_select(0, j_of_r - j_first)  # [R, D]
        if baselines.shape[0] == 1:
            base = baselines.reshape(1, D).to(acc_t)  # [1, D], broadcast over rows
        else:
            b_of_r = torch.div(j_of_r, n_samples, rounding_mode="floor")
            base = baselines.reshape(B, D).index_select(0, b_of_r).to(acc_t)  # [R, D]
        a = alphas.index_select(0, s_of_r).to(acc_t).unsqueeze(1)  # [R, 1]
        out = base + a * (x - base)
    return out.to(inputs.dtype).reshape(row_count, *F).contiguous()


# ---------------------------------------------------------------------------
# Weighted accumulation (csrc/README.md section 4)
# ---------------------------------------------------------------------------


def _check_accumulate(  # mirrors csrc/op_checks.cpp
    acc: Tensor,
    acc_sq: Optional[Tensor],
    values: Tensor,
    weights: Tensor,
    row_start: int,
    group_size: int,
    group_offset: int,
) -> None:
    name = "fastattr::accumulate_"
    if not isinstance(values, Tensor) or values.dtype not in _FLOAT_DTYPES:
        _fail(
            f"{name}: values must be a float16/bfloat16/float32/float64 tensor, "
            f"got {_describe(values)}"
        )
    if values.dim() < 1:
        _fail(f"{name}: values must have shape [n, *F] (at least 1 dim), got a 0-dim tensor")
    want = acc_dtype(values.dtype)
    F = tuple(values.shape[1:])
    for arg, t in (("acc", acc), ("acc_sq", acc_sq)):
        if t is None:
            if arg == "acc":
                _fail(f"{name}: acc must be a tensor, got None")
            continue
        if not isinstance(t, Tensor):
            _fail(f"{name}: {arg} must be a tensor, got {_describe(t)}")
        if t.dtype != want:
            _fail(
                f"{name}: {arg} must have dtype {want} (the accumulation type of "
                f"{values.dtype} values), got {t.dtype}"
            )
        if t.device != values.device:
            _fail(
                f"{name}: {arg} must be on the device of values ({values.device}), "
                f"got {t.device}"
            )
        if t.dim() != values.dim() or tuple(t.shape[1:]) != F:
            _fail(f"{name}: {arg} must have shape [G, *F] with F = {list(F)}, got {list(t.shape)}")
        if not t.is_contiguous():
            _fail(f"{name}: {arg} must be contiguous")
    if acc_sq is not None and acc_sq.shape != acc.shape:
        _fail(
            f"{name}: acc_sq must have the shape of acc ({list(acc.shape)}), "
            f"got {list(acc_sq.shape)}"
        )
    if acc_sq is not None and acc.numel() > 0 and acc_sq.data_ptr() == acc.data_ptr():
        _fail(f"{name}: acc_sq must not share memory with acc")
    if group_size < 1:
        _fail(f"{name}: group_size must be >= 1, got {group_size}")
    if not isinstance(weights, Tensor) or weights.dtype != torch.float64:
        _fail(f"{name}: weights must be a float64 tensor, got {_describe(weights)}")
    if weights.dim() != 1 or weights.shape[0] != group_size:
        _fail(
            f"{name}: weights must have shape [group_size] = [{group_size}], "
            f"got {list(weights.shape)}"
        )
    if weights.device != values.device:
        _fail(
            f"{name}: weights must be on the device of values ({values.device}), "
            f"got {weights.device}"
        )
    if row_start < 0:
        _fail(f"{name}: row_start must be >= 0, got {row_start}")
    n = values.shape[0]
    if n > 0:
        g_first = row_start // group_size - group_offset
        g_last = (row_start + n - 1) // group_size - group_offset
        if g_first < 0 or g_last >= acc.shape[0]:
            _fail(
                f"{name}: rows {row_start}..{row_start + n - 1} fall in groups "
                f"{g_first}..{g_last} of acc (after group_offset={group_offset}), "
                f"outside acc's [0, {acc.shape[0]})"
            )


def accumulate_(
    acc: Tensor,  # [G, *F] acc_t, contiguous
    acc_sq: Optional[Tensor],  # [G, *F] acc_t, contiguous, or None
    values: Tensor,  # [n, *F]
    weights: Tensor,  # [group_size] float64
    row_start: int,
    group_size: int,
    group_offset: int,
) -> None:
    """Fold weighted rows into per-group accumulators, in place.

    Mirrors ``AccumulateKernel`` in csrc/fastattr/accumulate.h and
    ``check_accumulate_args`` in csrc/op_checks.cpp (csrc/README.md section 4).

    Row ``r = row_start + i`` (``values[i]``) belongs to group ``r // group_size``
    at ``acc[r // group_size - group_offset]``, weight ``w = (acc_t)
    weights[r % group_size]``; ``acc += w * v``, ``acc_sq += (w * v) * v``.

    The C++ walks each group's rows serially in increasing ``r``. Here the loop
    runs over positions ``p`` within a group in increasing order; each
    iteration updates, for every group at once, its row at position ``p``.
    So every group still sees its rows in increasing ``r`` with the same
    roundings, and chunked calls equal one call bit for bit.
    """
    _check_accumulate(acc, acc_sq, values, weights, row_start, group_size, group_offset)
    n = values.shape[0]
    if n == 0:
        return
    acc_t = acc.dtype
    G = acc.shape[0]
    acc2 = acc.view(G, -1)  # [G, D], a view: updates land in acc
    sq2 = acc_sq.view(G, -1) if acc_sq is not None else None
    vals = values.reshape(n, -1)  # [n, D]
    w = weights.to(acc_t)  # [group_size]
    first = row_start % group_size  # position of row i = 0 in its group
    for p in range(group_size):  # increasing position = increasing r within each group
        i0 = (p - first) % group_size  # first row of the chunk at position p
        if i0 >= n:
            continue  # (only when n < group_size)
        v = vals[i0::group_size].to(acc_t)  # [k, D]: rows i0, i0 + gs, ...
        g0 = (row_start + i0) // group_size - group_offset  # their groups are consecutive
        wv = w[p] * v
        # add_ with the default alpha = 1 is a plain IEEE addition.
        acc2[g0 : g0 + v.shape[0]].add_(wv)
        if sq2 is not None:
            sq2[g0 : g0 + v.shape[0]].add_(wv * v)


# ---------------------------------------------------------------------------
# The LRP stabilizer (csrc/README.md section 5)
# ---------------------------------------------------------------------------


def _check_stabilize(z: Tensor, epsilon: float) -> None:  # mirrors csrc/op_checks.cpp
    name = "fastattr::stabilize"
    if not isinstance(z, Tensor) or z.dtype not in _FLOAT_DTYPES:
        _fail(f"{name}: z must be a float16/bfloat16/float32/float64 tensor, got {_describe(z)}")
    if not (math.isfinite(epsilon) and epsilon >= 0):
        _fail(f"{name}: epsilon must be finite and >= 0, got {epsilon}")


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (``-0.0`` included),
    ``epsilon`` rounded to ``z``'s dtype, the sum in ``acc_t`` rounded to it."""
    _check_stabilize(z, epsilon)
    acc = acc_dtype(z.dtype)
    eps = torch.tensor(epsilon, dtype=z.dtype, device=z.device).to(acc)
    za = z.to(acc)
    return (za + torch.where(za >= 0, eps, -eps)).to(z.dtype)


# ---------------------------------------------------------------------------
# Relative squares (csrc/README.md section 6)
# ---------------------------------------------------------------------------

_LANES = 8  # kRelativeSquaresLanes in csrc/fastattr/relative_squares.h


def _check_relative_squares(new: Tensor, old: Tensor, inverse: Tensor, examples: Tensor) -> None:
    """Argument checks of relative_squares (mirror csrc/op_checks.cpp)."""
    name = "fastattr::relative_squares"
    if not isinstance(new, Tensor) or new.dtype not in _FLOAT_DTYPES:
        _fail(f"{name}: new must be a float16/bfloat16/float32/float64 tensor, got {_describe(new)}")
    if new.dim() != 2:
        _fail(f"{name}: new must be 2-D [g, D], got shape {list(new.shape)}")
    D = new.shape[1]
    if not isinstance(old, Tensor) or old.dtype != torch.float64:
        _fail(f"{name}: old must be a float64 tensor, got {_describe(old)}")
    if old.dim() != 2 or old.shape[1] != D:
        _fail(f"{name}: old must be 2-D [B, D] with the D = {D} of new, got shape {list(old.shape)}")
    if old.device != new.device:
        _fail(f"{name}: old must be on the device of new ({new.device}), got {old.device}")
    if not isinstance(inverse, Tensor) or inverse.dtype != torch.float64:
        _fail(f"{name}: inverse must be a float64 tensor, got {_describe(inverse)}")
    if inverse.shape != old.shape:
        _fail(f"{name}: inverse must have the shape of old ({list(old.shape)}), got {list(inverse.shape)}")
    if inverse.device != new.device:
        _fail(f"{name}: inverse must be on the device of new ({new.device}), got {inverse.device}")
    if not isinstance(examples, Tensor) or examples.dtype != torch.int64:
        _fail(f"{name}: examples must be an int64 tensor, got {_describe(examples)}")
    if examples.dim() != 1 or examples.shape[0] != new.shape[0]:
        _fail(f"{name}: examples must have shape [g] = [{new.shape[0]}], got {list(examples.shape)}")
    if examples.device != new.device:
        _fail(f"{name}: examples must be on the device of new ({new.device}), got {examples.device}")
    # As the op: read only on the CPU (on a GPU, index_select checks on the device).
    if examples.device.type == "cpu" and examples.numel() > 0:
        bad = ((examples < 0) | (examples >= old.shape[0])).nonzero()
        if bad.numel() > 0:
            r = int(bad[0, 0])
            _fail(f"{name}: examples must lie in [0, B) = [0, {old.shape[0]}), "
                  f"got examples[{r}] = {int(examples[r])}")


def relative_squares(
    new: Tensor,  # [g, D]
    old: Tensor,  # [B, D] float64
    inverse: Tensor,  # [B, D] float64
    examples: Tensor,  # [g] int64, values in [0, B)
) -> Tensor:  # [g] float64
    """``sum_d ((new[r, d] - old[e, d]) * inverse[e, d]) ** 2`` per row ``r``,
    ``e = examples[r]``, in float64.

    Mirrors ``RelativeSquaresKernel`` in csrc/fastattr/relative_squares.h and
    ``check_relative_squares_args`` in csrc/op_checks.cpp (csrc/README.md
    section 6): ``v = (double(new) - old) * inverse``, ``v * v``, summed into 8
    lanes (element ``d`` into lane ``d % 8``, in increasing ``d``), the lanes
    combined as ``((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))``.

    The lane sums are ``cumsum`` over dim 1 of the squares viewed ``[g, D / 8, 8]``
    (padded with zeros to a multiple of 8: adding ``+0.0`` to a lane, which is
    ``>= +0`` or NaN, leaves it unchanged). ATen scans a dimension that is not
    the innermost one with a sequential loop per inner position, in float64:
    on the CPU (tests/test_ops.py checks its bits against a Python loop) and,
    by ATen's source (``tensor_kernel_scan_outer_dim``), on CUDA (checked
    where a GPU is visible, test_cuda_matches_cpu). So its last row holds the
    C++ lane sums.

    Returns:
        float64 ``[g]``; zeros when ``D == 0``.
    """
    _check_relative_squares(new, old, inverse, examples)
    g, D = new.shape
    if g == 0 or D == 0:
        return torch.zeros(g, dtype=torch.float64, device=new.device)
    # In place on one float64 copy of the rows: a layer's rows can be large.
    v = new.to(torch.float64, copy=True)  # [g, D]
    v.sub_(old.index_select(0, examples))
    v.mul_(inverse.index_select(0, examples))
    v.mul_(v)  # v * v
    squares = torch.nn.functional.pad(v, (0, -D % _LANES)) if D % _LANES else v  # [g, D'], D' = 8 ceil(D / 8)
    lanes = squares.view(g, -1, _LANES).cumsum(1)[:, -1]  # [g, 8]
    low = (lanes[:, 0] + lanes[:, 1]) + (lanes[:, 2] + lanes[:, 3])
    high = (lanes[:, 4] + lanes[:, 5]) + (lanes[:, 6] + lanes[:, 7])
    return low + high
