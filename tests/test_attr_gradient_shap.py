"""GradientSHAP / expected gradients equal Captum 0.9's ``GradientShap`` given
the same draws, and the draws themselves are keyed and well distributed.

Captum draws the reference rows with ``np.random.choice``, the path positions
with ``np.random.uniform`` and the input noise with ``torch.normal``; while
Captum runs, the three are patched to return fastattr's keyed draws (each
patch checks that Captum asked for exactly what was expected and that every
patched call was made).

Measured errors (max |fastattr - Captum| / max |Captum|): 0 in float64 and
float32 (the same points and the same operations); chunking changes the
model's batch size, so the tolerances leave a few ulps. Deltas: 0 (float64),
<= 8.7e-8 (float32; Captum sums float32 attributions in float32, fastattr in
float64) x the largest per-example sum of |attributions|.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fastattr.attr.gradient_shap import expected_gradients, gradient_shap, reference_draws
from fastattr.engine import PURPOSE_GRADIENT_SHAP
from fastattr.engine.draws import _CACHED_GROUPS, group_uniforms
from fastattr import ops

from captum.attr import GradientShap
from captum_cases import (
    Case, RowLog, _case, _randn, assert_as_accurate_as_captum, assert_delta_as_accurate_as_captum,
    assert_same_attr, assert_same_delta, captum_uses_noise, float64_twin,
)

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")

TOL = {torch.float64: 2e-15}
TOL_DELTA = {torch.float64: 1e-15}
M = 6  # reference examples in the distribution


def _references(case: Case, m: int = M, seed: int = 50) -> Tuple[Tensor, ...]:
    return tuple(_randn((m, *x.shape[1:]), x.dtype, seed + i) for i, x in enumerate(case.xs))


def _draws(case: Case, n_samples: int, seed: int, m: int) -> Tuple[np.ndarray, np.ndarray]:
    """fastattr's (reference rows, path positions) for every (example, sample)."""
    position, which = reference_draws(seed, case.batch, n_samples, torch.device("cpu"))
    return (which * m).long().numpy(), position.numpy()


def _noise(x: Tensor, i: int, n_samples: int, stdev: float, seed: int) -> Tensor:
    if stdev == 0:
        return torch.zeros((x.shape[0] * n_samples, *x.shape[1:]), dtype=x.dtype)
    noisy = ops.generate_rows(x, None, None, n_samples, "gaussian", stdev, seed,
                              PURPOSE_GRADIENT_SHAP * 65536 + i, 0, x.shape[0] * n_samples, 0)
    return noisy - x.repeat_interleave(n_samples, dim=0)


@contextlib.contextmanager
def _numpy_draws(rows: np.ndarray, positions: np.ndarray, n_inputs: int, m: int) -> Iterator[None]:
    """``np.random.choice`` returns ``rows`` (once per input: fastattr draws one
    reference for all inputs) and ``np.random.uniform`` returns ``positions``."""
    calls: List[str] = []
    real_choice, real_uniform = np.random.choice, np.random.uniform

    def choice(a: Any, size: Any = None, *args: Any, **kwargs: Any) -> np.ndarray:
        assert (a, size, args, kwargs) == (m, rows.size, (), {}), f"choice({a}, {size}, {args}, {kwargs})"
        calls.append("choice")
        return rows.copy()

    def uniform(low: Any, high: Any, size: Any = None) -> np.ndarray:
        assert (low, high, size) == (0.0, 1.0, positions.size), f"uniform({low}, {high}, {size})"
        calls.append("uniform")
        return positions.copy()

    np.random.choice, np.random.uniform = choice, uniform
    try:
        yield
    finally:
        np.random.choice, np.random.uniform = real_choice, real_uniform
    assert sorted(calls) == ["choice"] * n_inputs + ["uniform"], calls


def _both(case: Case, n_samples: int = 4, stdev: Any = 0.0, seed: int = 3, delta: bool = False,
          mbi: bool = True, **fa_kwargs: Any) -> Tuple[Any, Any]:
    refs = _references(case)
    baselines = refs if isinstance(case.inputs, tuple) else refs[0]
    ours = gradient_shap(case.model, case.inputs, baselines, target=case.target, n_samples=n_samples,
                         stdev=stdev, seed=seed, additional_forward_args=case.afa,
                         return_convergence_delta=delta, multiply_by_inputs=mbi, **fa_kwargs)
    stdevs = stdev if isinstance(stdev, tuple) else (stdev,) * len(case.xs)
    rows, positions = _draws(case, n_samples, seed, M)
    noises = [(_noise(x, i, n_samples, s, seed), s) for i, (x, s) in enumerate(zip(case.xs, stdevs))]
    with _numpy_draws(rows, positions, len(case.xs), M), captum_uses_noise(noises):
        theirs = GradientShap(case.model, multiply_by_inputs=mbi).attribute(
            case.inputs, baselines, n_samples=n_samples, stdevs=stdev, target=case.target,
            additional_forward_args=case.afa, return_convergence_delta=delta,
        )
    return ours, theirs


@pytest.mark.parametrize("name", ["conv", "mlp", "two_input", "scalar"])
@pytest.mark.parametrize("noisy", [False, True])
def test_matches_captum(backend: str, name: str, noisy: bool) -> None:
    case = _case(name)
    stdev: Any = 0.0
    if noisy:
        stdev = (0.3, 0.1) if name == "two_input" else 0.2
    (ours, d_ours), (theirs, d_theirs) = _both(case, stdev=stdev, delta=True)
    assert_same_attr(ours, theirs, TOL[torch.float64], f"{name} attributions")
    assert_same_delta(d_ours, d_theirs, ours, TOL_DELTA[torch.float64], f"{name} deltas")


@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_matches_captum_float32_and_local(backend: str, name: str) -> None:
    """float32: as accurate as Captum's own float32 (given the same draws)
    against Captum's float64 run of the same values, measured here."""
    case = _case(name, dtype=torch.float32)
    twin = float64_twin(case)
    stdev = (0.3, 0.1) if name == "two_input" else 0.2
    (ours, d_ours), (theirs, d_theirs) = _both(case, stdev=stdev, delta=True)
    _, (truth, d_truth) = _both(twin, stdev=stdev, delta=True)
    assert_as_accurate_as_captum(ours, theirs, truth, f"{name} float32")
    assert_delta_as_accurate_as_captum(d_ours, d_theirs, d_truth, theirs, truth, f"{name} float32 deltas")
    ours, theirs = _both(case, stdev=stdev, mbi=False)
    _, truth = _both(twin, stdev=stdev, mbi=False)
    assert_as_accurate_as_captum(ours, theirs, truth, f"{name} multiply_by_inputs=False")


@pytest.mark.parametrize("chunk_rows", [1, 3, 5])
def test_chunked_and_batch_one(backend: str, chunk_rows: int) -> None:
    for batch in (1, 3):
        case = _case("conv", batch=batch)
        rec = RowLog(case.model)
        case.model = rec
        ours, theirs = _both(case, n_samples=4, stdev=0.2, chunk_rows=chunk_rows)
        assert_same_attr(ours, theirs, TOL[torch.float64], f"batch {batch} chunk_rows={chunk_rows}")
        assert rec.grad_rows[0] == min(chunk_rows, batch * 4)
        assert sum(rec.grad_rows[: -(-batch * 4 // chunk_rows)]) == batch * 4


def test_callable_and_single_reference_baselines(backend: str) -> None:
    case = _case("mlp")
    refs = _references(case)[0]
    direct = gradient_shap(case.model, case.inputs, refs, target=case.target, n_samples=3)
    assert torch.equal(direct, gradient_shap(case.model, case.inputs, lambda: refs, target=case.target, n_samples=3))
    assert torch.equal(direct, gradient_shap(case.model, case.inputs, lambda x: refs, target=case.target, n_samples=3))
    # One reference given as [*F], [1, *F] or a number: every draw picks it.
    one = gradient_shap(case.model, case.inputs, refs[0], target=case.target, n_samples=3)
    assert torch.equal(one, gradient_shap(case.model, case.inputs, refs[:1], target=case.target, n_samples=3))
    zeros = gradient_shap(case.model, case.inputs, 0.0, target=case.target, n_samples=3)
    assert torch.equal(zeros, gradient_shap(case.model, case.inputs, torch.zeros(64, dtype=torch.float64),
                                            target=case.target, n_samples=3))


def test_expected_gradients_is_noise_free_gradient_shap(backend: str) -> None:
    case = _case("mlp")
    refs = _references(case)[0]
    assert torch.equal(
        expected_gradients(case.model, case.inputs, refs, target=case.target, n_samples=5, seed=9),
        gradient_shap(case.model, case.inputs, refs, target=case.target, n_samples=5, stdev=0.0, seed=9),
    )


def test_example_does_not_depend_on_its_batch(backend: str) -> None:
    """Draws are keyed by (seed, example, sample): example b's attribution is
    the same in a batch and alone (given the same example index)."""
    model = nn.Sequential(nn.Linear(5, 1, bias=False)).double()  # linear: rows independent exactly
    x = _randn((4, 5), torch.float64, 1)
    refs = _randn((M, 5), torch.float64, 2)
    full = gradient_shap(model, x, refs, n_samples=6, stdev=0.5, seed=4)
    first = gradient_shap(model, x[:1], refs, n_samples=6, stdev=0.5, seed=4)
    assert torch.equal(full[:1], first)
    assert not torch.equal(full, gradient_shap(model, x, refs, n_samples=6, stdev=0.5, seed=5))


def test_linear_model_closed_form(backend: str) -> None:
    """For f(x) = w.x the gradient is w everywhere: the attribution is
    w * (x + noise - mean of drawn references), and each delta is 0."""
    torch.manual_seed(0)
    model = nn.Linear(7, 1, bias=True).double()
    x = _randn((3, 7), torch.float64, 1)
    refs = _randn((M, 7), torch.float64, 2)
    n = 2000
    attr, delta = gradient_shap(model, x, refs, n_samples=n, seed=1, return_convergence_delta=True)
    assert delta.abs().max() < 1e-12
    # Averaged over 2000 uniform draws, the reference mean approaches refs.mean(0).
    w = model.weight.detach()[0]
    expected = w * (x - refs.mean(0))
    assert (attr - expected).abs().max() < 4 * (w.abs() * refs.std(0)).max() / n**0.5


def test_draws_are_a_latin_hypercube(backend: str) -> None:
    """Per example, the N reference draws and the N positions each hold one
    sample in every stratum of width 1/N, uniformly inside it, and which
    position stratum goes with which reference stratum is a permutation that
    differs between examples."""
    batch, n = 300, 40
    position, which = reference_draws(0, batch, n, torch.device("cpu"))
    rows = (which * M).long()
    counts = torch.bincount(rows.view(batch, n)[0], minlength=M)
    assert int(counts.max() - counts.min()) <= 1  # stratified: balanced over references
    for draws in (position, which):
        strata = (draws * n).floor().long().view(batch, n)
        assert (strata.sort(dim=1).values == torch.arange(n)).all()
        within = draws * n - (draws * n).floor()
        assert abs(float(within.mean()) - 0.5) < 4 * (1 / 12 / within.numel()) ** 0.5
    assert ((which * n).floor().view(batch, n) == torch.arange(n)).all()
    permutations = (position * n).floor().long().view(batch, n)
    assert len({tuple(p) for p in permutations.tolist()}) == batch
    # Position strata and reference strata are not correlated.
    c = torch.corrcoef(torch.stack([position, which]))[0, 1]
    assert abs(float(c)) < 4 / position.numel() ** 0.5


def test_stratified_positions_bound_the_path_integral_error(backend: str) -> None:
    """With one reference and no noise GradientSHAP estimates IG's path
    integral of h(alpha) = grad f(ref + alpha (x - ref)) * (x - ref). One
    position per stratum of width 1/N misses each stratum's mean of h by at
    most h's variation inside it, so the error is at most V / N (V: h's total
    variation, read off a fine grid), where i.i.d. positions give ~sd / sqrt(N)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    x, ref = torch.randn(4, 6, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    grid = 8192
    alphas = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    points = (ref + alphas[:, None, None] * (x - ref)).reshape(-1, 6).requires_grad_()
    (g,) = torch.autograd.grad(model(points)[:, 1].sum(), points)
    h = g.reshape(grid, 4, 6) * (x - ref)  # [grid, B, F]
    exact = h.mean(0)
    variation = (h[1:] - h[:-1]).abs().sum(0)
    n = 64
    attr = gradient_shap(model, x, ref, target=1, n_samples=n, seed=3)
    # exact's own midpoint error is at most variation / grid.
    assert ((attr - exact).abs() <= variation / n + variation / grid + 1e-12).all()
    assert (variation > 0).any()


@pytest.mark.parametrize(
    "baselines, match",
    [
        (None, "baselines: required"),
        (torch.zeros(3, 7), r"baselines: expected a reference distribution of shape \[M, 64\]"),
        (torch.zeros(0, 64), r"baselines: expected a reference distribution"),
        (torch.full((2, 64), float("nan")), "baselines: contains NaN or Inf"),
        ((torch.zeros(2, 64), torch.zeros(2, 64)), "baselines: expected 1 baselines"),
    ],
)
def test_bad_baselines(backend: str, baselines: Any, match: str) -> None:
    case = _case("mlp")
    with pytest.raises((ValueError, TypeError), match=match):
        gradient_shap(case.model, case.inputs, baselines, target=case.target)


def test_bad_reference_counts_and_options(backend: str) -> None:
    case = _case("two_input")
    img, vec = case.xs
    refs = (torch.zeros(3, *img.shape[1:], dtype=img.dtype), torch.zeros(4, *vec.shape[1:], dtype=vec.dtype))
    with pytest.raises(ValueError, match="same number of reference examples"):
        gradient_shap(case.model, case.inputs, refs, target=1, additional_forward_args=case.afa)
    mlp = _case("mlp")
    for kwargs, match in [
        (dict(n_samples=0), "n_samples"), (dict(stdev=-1.0), "stdev"), (dict(seed=-1), "seed"),
        (dict(target=9), "target"),
    ]:
        args: Dict[str, Any] = dict(target=mlp.target)
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            gradient_shap(mlp.model, mlp.inputs, torch.zeros(2, 64, dtype=torch.float64), **args)


def test_group_uniforms_follow_the_spec(backend: str) -> None:
    """Every group's pair of uniforms is csrc/README.md section 2's, computed
    here one group at a time in Python integers, for both counter paths
    (kept between calls and made afresh) and an offset past 2^32."""
    seed, stream = (1 << 40) + 12345, 7 * 65536 + 2
    for batch, n_samples, offset in ((3, 5, 0), (2, _CACHED_GROUPS, (1 << 32) - 1)):
        ua, ub = group_uniforms(seed, stream, batch, n_samples, torch.device("cpu"), offset)
        for g in list(range(4)) + [batch * n_samples - 1]:
            counter = torch.tensor([[0, g % n_samples, (g // n_samples + offset) % 2**32, stream]])
            key = torch.tensor([seed & 0xFFFFFFFF, seed >> 32])
            x0, x1, x2, x3 = (int(w) for w in ops.philox4x32(counter, key)[0])
            assert ua[g].item() == ((x0 << 21) + (x1 >> 11)) * 2.0**-53
            assert ub[g].item() == ((x2 << 21) + (x3 >> 11)) * 2.0**-53
