"""fastattr's first explainers give Captum 0.9's numbers.

Saliency, InputXGradient, IntegratedGradients (every integration rule, with
convergence delta) and NoiseTunnel over each of them, on the same inputs:

* models: a conv net (Conv2d, BatchNorm2d in eval with non-trivial running
  statistics, ReLU, MaxPool2d, AdaptiveAvgPool2d, Linear), an MLP on 64
  features, a two-input model with a per-example additional_forward_args
  tensor and a non-tensor argument, and a model returning ``[B]`` (target=None);
* every target form (int, negative int, list, 1-D tensor, 0-d tensor, None),
  every baseline form (None, scalar, ``[*F]``, ``[1, *F]``, ``[B, *F]``, a
  tuple mixing scalar and tensor), tuple in -> tuple out, batch 1;
* chunk sizes (``chunk_rows``) that split the path steps and noise samples of
  an example across chunks, and a 1-byte ``memory_budget`` (one-row chunks);
* NoiseTunnel given the same noise: ``torch.normal`` is patched while Captum
  runs so that it returns fastattr's keyed noise (the patch checks that Captum
  asked for exactly the shape and stdev expected);
* float64 comparisons with tight, measured tolerances; float32 with looser
  measured tolerances; float16/bfloat16 judged against a float64 reference
  with :func:`fastattr.testing.assert_error_within`;
* the statistics of fastattr's SmoothGrad noise checked without Captum, on
  models whose SmoothGrad / SmoothGrad^2 / VarGrad have closed forms.

Every test takes the ``backend`` fixture (tests/conftest.py), so it runs on the
pure-PyTorch reference and, when built, on the compiled extension.

Measured errors (max |fastattr - Captum| / max |Captum|; the same on both
backends, and with 1 or 2 threads); each tolerance below is 5-7x its figure:

* float64 Saliency / InputXGradient, and SmoothGrad / SmoothGrad^2 over them:
  <= 3.5e-16; VarGrad <= 1.5e-15 (cancellation).
* float64 IG, rules whose alphas and step sizes are exact in float32
  (riemann_left/middle/right with n_steps = 8): <= 1.7e-16.
* float64 IG, every rule, general n_steps, alone or under NoiseTunnel:
  <= 6.0e-8. Captum multiplies the gradients by float32 step sizes even for
  float64 inputs (``torch.tensor(step_sizes).float()``) and takes the Riemann
  alphas from a float32 ``torch.linspace``; fastattr uses exact float64
  weights and alphas. So Captum, not fastattr, is off by ~float32 roundoff.
* float32: IG <= 1.7e-7; Saliency, InputXGradient, every NoiseTunnel case 0.
* convergence deltas: |delta_fastattr - delta_captum| <= 4.5e-8 (float64),
  2.8e-8 (float32) x the largest per-example sum of |attributions|.
* float16 / bfloat16: fastattr's error against float64 <= 1.09x plain PyTorch's.
"""
from __future__ import annotations

import functools

import math
from typing import Any, Callable, Dict, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

import fastattr
from fastattr import ops
from fastattr.testing import assert_error_within

import captum
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

# Captum warns on every call that it set requires_grad on the inputs.
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")



METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")

# ---------------------------------------------------------------------------
# Tolerances (relative to max |Captum|), each a few times the measured error
# ---------------------------------------------------------------------------
# Saliency / InputXGradient and NoiseTunnel over them (SmoothGrad, SmoothGrad^2):
# measured <= 3.5e-16 (the same gradients; chunks change the model's batch size).
TOL_F64_POINT = 2e-15
# VarGrad over them: E[a^2] - E[a]^2 cancels, and Captum adds the noise back,
# x + (x_n - x), which can be one ulp off fastattr's x_n: measured <= 1.5e-15.
TOL_F64_VARGRAD = 1e-14
# IG whose rule is exact in float32 (Captum's float32 rounding is then a no-op):
# measured <= 1.7e-16, from summing the steps in another order.
TOL_F64_IG_EXACT = 1e-15
# IG with general rules, alone or under NoiseTunnel: Captum multiplies the
# gradients by float32 step sizes (and takes Riemann alphas from a float32
# linspace) even for float64 inputs; fastattr's weights are exact float64.
# Measured <= 6.0e-8 (float32 unit roundoff).
TOL_F64_IG = 3e-7
# Convergence deltas, relative to the largest per-example sum of |attributions|:
# measured <= 4.5e-8 (the same float32 step sizes).
TOL_F64_DELTA = 3e-7
# float32 models and inputs are held to Captum's own float32 error against a
# float64 run of the same values, measured in the same run
# (captum_cases.assert_as_accurate_as_captum): it depends on the CPU.


def _tols(ig: bool = False, exact_rule: bool = False) -> Tuple[float, float]:
    """float64 (attribution tolerance, delta tolerance)."""
    if not ig:
        return TOL_F64_POINT, TOL_F64_DELTA
    return (TOL_F64_IG_EXACT if exact_rule else TOL_F64_IG), TOL_F64_DELTA


def _nt_tol(kind: str, explainer: str) -> float:
    """float64 NoiseTunnel tolerance."""
    if explainer == "integrated_gradients":
        return TOL_F64_IG
    return TOL_F64_VARGRAD if kind == "vargrad" else TOL_F64_POINT


from captum_cases import (
    MODELS, Case, RowLog, _as_tuple, _case, _clone, _expected_chunks, _randn, _rel_err,
    assert_as_accurate_as_captum, assert_delta_as_accurate_as_captum, assert_same_attr, assert_same_delta,
    captum_noise_tunnel, captum_uses_noise, fastattr_noise, float64_twin, upcast,
)

# Captum's NoiseTunnel draws independent noise (fastattr_noise hands it
# fastattr's independent keyed draws): fastattr.smoothgrad with its default
# antithetic pairs turned off.
smoothgrad_iid = functools.partial(fastattr.smoothgrad, antithetic=False)


# ---------------------------------------------------------------------------
# Saliency and InputXGradient
# ---------------------------------------------------------------------------


def test_against_captum_0_9() -> None:
    """The numbers below are Captum 0.9's (pyproject pins captum==0.9.0 for tests)."""
    assert captum.__version__.startswith("0.9."), captum.__version__


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("abs_", [True, False], ids=["abs", "signed"])
@pytest.mark.parametrize("name", MODELS)
def test_saliency_matches_captum(backend: str, name: str, abs_: bool, dtype: torch.dtype) -> None:
    case = _case(name, dtype)
    before = _clone(case.inputs)
    ours = fastattr.saliency(case.model, case.inputs, target=case.target, abs=abs_,
                             additional_forward_args=case.afa)
    for x, x0 in zip(case.xs, _as_tuple(before)):  # the caller's inputs come back unchanged
        assert torch.equal(x, x0) and not x.requires_grad
    def script(c: Case) -> Any:
        return Saliency(c.model).attribute(c.inputs, target=c.target, abs=abs_, additional_forward_args=c.afa)

    _check_point(ours, script, case, f"saliency {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", MODELS)
def test_input_x_gradient_matches_captum(backend: str, name: str, dtype: torch.dtype) -> None:
    case = _case(name, dtype)
    ours = fastattr.input_x_gradient(case.model, case.inputs, target=case.target,
                                     additional_forward_args=case.afa)
    def script(c: Case) -> Any:
        return InputXGradient(c.model).attribute(c.inputs, target=c.target, additional_forward_args=c.afa)

    _check_point(ours, script, case, f"input_x_gradient {name}")


def _check_point(ours: Any, captum_script: Any, case: Case, what: str) -> None:
    """float64: equal to Captum to roundoff; float32: as accurate as Captum's
    own float32 against the float64 twin."""
    theirs = captum_script(case)
    if case.xs[0].dtype == torch.float64:
        assert_same_attr(ours, theirs, _tols()[0], what)
    else:
        assert_as_accurate_as_captum(ours, theirs, captum_script(float64_twin(case)), what)


# ---------------------------------------------------------------------------
# Integrated gradients
# ---------------------------------------------------------------------------


def _ig_both(case: Case, baselines: Any = None, captum_baselines: Any = "same",
             fa_model: Optional[nn.Module] = None, **kw: Any):
    """fastattr's (on ``fa_model``, default the case's model) and Captum's IG
    with deltas; ``kw`` holds n_steps, method, multiply_by_inputs and
    fastattr's chunk options."""
    mbi = kw.pop("multiply_by_inputs", True)
    chunking = {k: kw.pop(k) for k in ("chunk_rows", "memory_budget") if k in kw}
    ours = fastattr.integrated_gradients(
        fa_model or case.model, case.inputs, baselines=baselines, target=case.target,
        additional_forward_args=case.afa, return_convergence_delta=True,
        multiply_by_inputs=mbi, **kw, **chunking,
        # Captum runs the model as it is; a constant baseline row makes exact
        # max-pool ties, which the fast form's convolutions round differently.
        model_form="eager",
    )
    theirs = IntegratedGradients(case.model, multiply_by_inputs=mbi).attribute(
        case.inputs, baselines=baselines if captum_baselines == "same" else captum_baselines,
        target=case.target, additional_forward_args=case.afa,
        return_convergence_delta=True, **kw,
    )
    return ours, theirs


def _check_ig(ours: Any, theirs: Any, dtype: torch.dtype, what: str, exact_rule: bool = False) -> None:
    """float64 only (float32: :func:`test_integrated_gradients_float32`)."""
    assert dtype == torch.float64
    tol, dtol = _tols(ig=True, exact_rule=exact_rule)
    (a_ours, d_ours), (a_theirs, d_theirs) = ours, theirs
    assert_same_attr(a_ours, a_theirs, tol, what)
    assert_same_delta(d_ours, d_theirs, a_theirs, dtol, what + " delta")


@pytest.mark.parametrize("mbi", [True, False], ids=["global", "local"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_matches_captum(backend: str, name: str, method: str, mbi: bool) -> None:
    case = _case(name)
    ours, theirs = _ig_both(case, n_steps=10, method=method, multiply_by_inputs=mbi)
    _check_ig(ours, theirs, torch.float64, f"IG {name} {method} mbi={mbi}")


@pytest.mark.parametrize("method", ["riemann_left", "riemann_middle", "riemann_right"])
@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_integrated_gradients_tight_when_rule_is_exact_in_float32(backend: str, name: str, method: str) -> None:
    """With n_steps = 8 these rules' alphas (k/8, (2k+1)/16) and step sizes (1/8)
    are exact in float32, so Captum's float32 rounding changes nothing and the
    two must agree to float64 roundoff."""
    case = _case(name)
    # A scalar baseline: fastattr applies it to every input; Captum wants one per input.
    ours, theirs = _ig_both(case, 0.25, (0.25,) * len(case.xs), n_steps=8, method=method)
    _check_ig(ours, theirs, torch.float64, f"IG {name} {method}", exact_rule=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["conv", "mlp", "two_input"])
def test_integrated_gradients_float32(backend: str, name: str, method: str) -> None:
    case = _case(name, torch.float32)
    (ours, d_ours), (theirs, d_theirs) = _ig_both(case, n_steps=7, method=method)
    truth, d_truth = IntegratedGradients(float64_twin(case).model).attribute(
        upcast(case.inputs), target=case.target, additional_forward_args=upcast(case.afa), n_steps=7,
        method=method, return_convergence_delta=True)
    what = f"IG f32 {name} {method}"
    assert_as_accurate_as_captum(ours, theirs, truth, what)
    assert_delta_as_accurate_as_captum(d_ours, d_theirs, d_truth, theirs, truth, what)


def _baseline_forms(x: Tensor) -> Dict[str, Tuple[Any, Any]]:
    """name -> (fastattr baseline, Captum baseline) for one input ``x`` [B, *F]."""
    f = tuple(x.shape[1:])
    g = torch.Generator().manual_seed(7)
    per_feature = (0.3 * torch.randn(*f, generator=g, dtype=torch.float64)).to(x.dtype)
    per_example = (0.3 * torch.randn(*x.shape, generator=g, dtype=torch.float64)).to(x.dtype)
    return {
        "none": (None, None),
        "scalar": (-0.4, -0.4),
        # Captum's convergence delta runs the model on the baseline as given, so
        # it needs the batch dimension; [*F] and [1, *F] mean the same thing.
        "F": (per_feature, per_feature.unsqueeze(0)),
        "1F": (per_feature.unsqueeze(0), per_feature.unsqueeze(0)),
        "BF": (per_example, per_example),
    }


@pytest.mark.parametrize("form", ["none", "scalar", "F", "1F", "BF"])
@pytest.mark.parametrize("name", ["conv", "mlp", "scalar"])
def test_integrated_gradients_baselines(backend: str, name: str, form: str) -> None:
    case = _case(name)
    ours_b, theirs_b = _baseline_forms(case.inputs)[form]
    ours, theirs = _ig_both(case, ours_b, theirs_b, n_steps=6, method="riemann_trapezoid")
    _check_ig(ours, theirs, torch.float64, f"IG {name} baselines={form}")


@pytest.mark.parametrize("form", ["scalar_and_tensor", "tensor_and_scalar", "1F_and_BF"])
def test_integrated_gradients_tuple_baselines(backend: str, form: str) -> None:
    case = _case("two_input")
    img, vec = case.xs
    img_forms, vec_forms = _baseline_forms(img), _baseline_forms(vec)
    pick = {
        "scalar_and_tensor": ("scalar", "BF"),
        "tensor_and_scalar": ("1F", "scalar"),
        "1F_and_BF": ("1F", "BF"),
    }[form]
    ours_b = (img_forms[pick[0]][0], vec_forms[pick[1]][0])
    theirs_b = (img_forms[pick[0]][1], vec_forms[pick[1]][1])
    ours, theirs = _ig_both(case, ours_b, theirs_b, n_steps=5, method="gausslegendre")
    assert isinstance(ours[0], tuple) and len(ours[0]) == 2
    _check_ig(ours, theirs, torch.float64, f"IG two_input baselines={form}")


# ---------------------------------------------------------------------------
# Targets, batch 1
# ---------------------------------------------------------------------------

TARGET_FORMS: Dict[str, Callable[[int], Any]] = {
    "int": lambda b: 2,
    "negative_int": lambda b: -1,
    "list": lambda b: [(3 * i + 1) % 4 for i in range(b)],
    "tensor_1d": lambda b: torch.tensor([(i + 3) % 4 for i in range(b)]),
    "tensor_0d": lambda b: torch.tensor(1),
}


@pytest.mark.parametrize("batch", [3, 1])
@pytest.mark.parametrize("form", list(TARGET_FORMS))
def test_target_forms(backend: str, form: str, batch: int) -> None:
    case = _case("mlp", batch=batch)
    case.target = TARGET_FORMS[form](batch)
    for abs_ in (True, False):
        ours = fastattr.saliency(case.model, case.inputs, target=case.target, abs=abs_)
        theirs = Saliency(case.model).attribute(case.inputs, target=case.target, abs=abs_)
        assert_same_attr(ours, theirs, TOL_F64_POINT, f"saliency target={form}")
    ours = fastattr.input_x_gradient(case.model, case.inputs, target=case.target)
    theirs = InputXGradient(case.model).attribute(case.inputs, target=case.target)
    assert_same_attr(ours, theirs, TOL_F64_POINT, f"input_x_gradient target={form}")
    ours, theirs = _ig_both(case, n_steps=5, method="gausslegendre")
    _check_ig(ours, theirs, torch.float64, f"IG target={form}")


@pytest.mark.parametrize("name", MODELS)
def test_batch_one(backend: str, name: str) -> None:
    """B = 1: a per-example additional_forward_args tensor of one row, a list /
    1-D tensor target of length one."""
    case = _case(name, batch=1, seed=11)
    ours = fastattr.saliency(case.model, case.inputs, target=case.target, abs=False,
                             additional_forward_args=case.afa)
    theirs = Saliency(case.model).attribute(case.inputs, target=case.target, abs=False,
                                            additional_forward_args=case.afa)
    assert_same_attr(ours, theirs, TOL_F64_POINT, f"saliency B=1 {name}")
    ours = fastattr.input_x_gradient(case.model, case.inputs, target=case.target,
                                     additional_forward_args=case.afa)
    theirs = InputXGradient(case.model).attribute(case.inputs, target=case.target,
                                                  additional_forward_args=case.afa)
    assert_same_attr(ours, theirs, TOL_F64_POINT, f"input_x_gradient B=1 {name}")
    for method in ("riemann_trapezoid", "gausslegendre"):
        ours, theirs = _ig_both(case, n_steps=9, method=method, chunk_rows=4)
        _check_ig(ours, theirs, torch.float64, f"IG B=1 {name} {method}")
    ours = smoothgrad_iid(case.model, case.inputs, target=case.target, n_samples=3,
                               stdev=0.2, kind="vargrad", seed=5, additional_forward_args=case.afa,
                               explainer="saliency", explainer_kwargs={"abs": False})
    theirs = captum_noise_tunnel(Saliency(case.model), case, 3, 0.2, "vargrad", 5, abs=False)
    assert_same_attr(ours, theirs, TOL_F64_VARGRAD, f"vargrad B=1 {name}")


# ---------------------------------------------------------------------------
# Chunking: steps and samples of an example split across chunks
# ---------------------------------------------------------------------------

# B = 3 examples x 10 steps = 30 rows: 7 and 13 split every example's steps
# unevenly, 29 leaves one row over, 1 is one row per chunk.
CHUNKS = [dict(chunk_rows=1), dict(chunk_rows=7), dict(chunk_rows=13), dict(chunk_rows=29),
          dict(memory_budget=1)]
CHUNK_IDS = ["rows1", "rows7", "rows13", "rows29", "budget1B"]


@pytest.mark.parametrize("chunk", CHUNKS, ids=CHUNK_IDS)
@pytest.mark.parametrize("name", ["conv", "mlp", "two_input"])
def test_integrated_gradients_chunked(backend: str, name: str, chunk: Dict[str, int]) -> None:
    case = _case(name)
    for method in ("riemann_right", "gausslegendre"):
        logged = RowLog(case.model)
        ours, theirs = _ig_both(case, fa_model=logged, n_steps=10, method=method, **chunk)
        assert logged.grad_rows == _expected_chunks(30, chunk)
        _check_ig(ours, theirs, torch.float64, f"IG {name} {method} {chunk}")


@pytest.mark.parametrize("chunk", CHUNKS, ids=CHUNK_IDS)
def test_point_methods_chunked(backend: str, chunk: Dict[str, int]) -> None:
    case = _case("two_input")
    logged = RowLog(case.model)
    ours = fastattr.saliency(logged, case.inputs, target=case.target,
                             additional_forward_args=case.afa, **chunk)
    assert logged.grad_rows == _expected_chunks(3, chunk)
    theirs = Saliency(case.model).attribute(case.inputs, target=case.target,
                                            additional_forward_args=case.afa)
    assert_same_attr(ours, theirs, TOL_F64_POINT, f"saliency {chunk}")
    ours = fastattr.input_x_gradient(case.model, case.inputs, target=case.target,
                                     additional_forward_args=case.afa, **chunk)
    theirs = InputXGradient(case.model).attribute(case.inputs, target=case.target,
                                                  additional_forward_args=case.afa)
    assert_same_attr(ours, theirs, TOL_F64_POINT, f"input_x_gradient {chunk}")


# B = 3 examples x 4 samples (x 3 steps for IG = 12 rows per example): 5 and 7
# split samples (and their path steps) across chunks.
@pytest.mark.parametrize("chunk", [dict(chunk_rows=1), dict(chunk_rows=5), dict(chunk_rows=7),
                                   dict(memory_budget=1)], ids=["rows1", "rows5", "rows7", "budget1B"])
@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_smoothgrad_chunked(backend: str, name: str, chunk: Dict[str, int]) -> None:
    case = _case(name)
    stdev = (0.3, 0.1) if name == "two_input" else 0.3
    for kind in KINDS:
        logged = RowLog(case.model)
        ours = smoothgrad_iid(logged, case.inputs, target=case.target, n_samples=4,
                                   stdev=stdev, kind=kind, seed=3, additional_forward_args=case.afa,
                                   explainer="input_x_gradient", **chunk)
        assert logged.grad_rows == _expected_chunks(3 * 4, chunk)
        theirs = captum_noise_tunnel(InputXGradient(case.model), case, 4, stdev, kind, 3)
        assert_same_attr(ours, theirs, _nt_tol(kind, "input_x_gradient"), f"{kind}(ixg) {name} {chunk}")
    logged = RowLog(case.model)
    ours = smoothgrad_iid(logged, case.inputs, target=case.target, n_samples=4,
                               stdev=stdev, kind="smoothgrad", seed=3, additional_forward_args=case.afa,
                               explainer="integrated_gradients",
                               explainer_kwargs=dict(n_steps=3, method="riemann_trapezoid"),
                               return_convergence_delta=True, **chunk)
    assert logged.grad_rows == _expected_chunks(3 * 4 * 3, chunk)
    theirs = captum_noise_tunnel(IntegratedGradients(case.model), case, 4, stdev, "smoothgrad", 3,
                                 n_steps=3, method="riemann_trapezoid", return_convergence_delta=True)
    _check_ig(ours, theirs, torch.float64, f"smoothgrad(ig) {name} {chunk}")


# ---------------------------------------------------------------------------
# NoiseTunnel, given the same noise
# ---------------------------------------------------------------------------

EXPLAINERS = {
    # id: (fastattr explainer, explainer_kwargs, Captum class, Captum kwargs)
    "saliency_abs": ("saliency", {}, Saliency, {}),
    "saliency_signed": ("saliency", {"abs": False}, Saliency, {"abs": False}),
    "input_x_gradient": ("input_x_gradient", {}, InputXGradient, {}),
    "ig_gl": ("integrated_gradients", {"n_steps": 4}, IntegratedGradients, {"n_steps": 4}),
    "ig_trap_local_base": (
        "integrated_gradients",
        {"n_steps": 3, "method": "riemann_trapezoid", "multiply_by_inputs": False, "baselines": 0.2},
        IntegratedGradients,
        {"n_steps": 3, "method": "riemann_trapezoid", "baselines": 0.2},
    ),
}


def _per_input_baselines(captum_kwargs: Dict[str, Any], case: Case) -> Dict[str, Any]:
    """Captum wants a scalar baseline once per input of a tuple; fastattr broadcasts it."""
    out = dict(captum_kwargs)
    if isinstance(out.get("baselines"), float):
        out["baselines"] = (out["baselines"],) * len(case.xs)
    return out


def _captum_method(cls: type, model: nn.Module, fa_kwargs: Dict[str, Any]) -> Any:
    if cls is IntegratedGradients:
        return cls(model, multiply_by_inputs=fa_kwargs.get("multiply_by_inputs", True))
    return cls(model)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("explainer", list(EXPLAINERS))
@pytest.mark.parametrize("name", MODELS)
def test_noise_tunnel_matches_captum(backend: str, name: str, explainer: str, kind: str) -> None:
    case = _case(name, batch=2)
    fa_name, fa_kwargs, cls, captum_kwargs = EXPLAINERS[explainer]
    stdev = (0.25, 0.5) if name == "two_input" else 0.25
    tol = _nt_tol(kind, fa_name)
    ours = smoothgrad_iid(case.model, case.inputs, target=case.target, n_samples=3, stdev=stdev,
                               kind=kind, seed=123, additional_forward_args=case.afa,
                               explainer=fa_name, explainer_kwargs=fa_kwargs)
    theirs = captum_noise_tunnel(_captum_method(cls, case.model, fa_kwargs), case, 3, stdev, kind,
                                 123, **_per_input_baselines(captum_kwargs, case))
    assert_same_attr(ours, theirs, tol, f"{kind}({explainer}) {name}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["conv", "two_input", "scalar"])
def test_noise_tunnel_ig_convergence_delta(backend: str, name: str, method: str) -> None:
    """Captum returns one delta per noisy sample, [B * N], row b * N + n."""
    case = _case(name)
    stdev = (0.2, 0.4) if name == "two_input" else 0.2
    base_forms = [_baseline_forms(x)["BF"][0] for x in case.xs]
    baselines = tuple(base_forms) if len(base_forms) > 1 else base_forms[0]
    ours = smoothgrad_iid(case.model, case.inputs, target=case.target, n_samples=4, stdev=stdev,
                               kind="smoothgrad", seed=9, additional_forward_args=case.afa,
                               explainer="integrated_gradients",
                               explainer_kwargs=dict(n_steps=5, method=method, baselines=baselines),
                               return_convergence_delta=True)
    theirs = captum_noise_tunnel(IntegratedGradients(case.model), case, 4, stdev, "smoothgrad", 9,
                                 n_steps=5, method=method, baselines=baselines,
                                 return_convergence_delta=True)
    assert ours[1].shape == (case.batch * 4,)
    _check_ig(ours, theirs, torch.float64, f"smoothgrad(ig) {name} {method}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("explainer", ["saliency_signed", "input_x_gradient", "ig_gl"])
@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_noise_tunnel_float32(backend: str, name: str, explainer: str, kind: str) -> None:
    case = _case(name, torch.float32, batch=2)
    fa_name, fa_kwargs, cls, captum_kwargs = EXPLAINERS[explainer]
    stdev = (0.25, 0.5) if name == "two_input" else 0.25
    ours = smoothgrad_iid(case.model, case.inputs, target=case.target, n_samples=3, stdev=stdev,
                               kind=kind, seed=4, additional_forward_args=case.afa,
                               explainer=fa_name, explainer_kwargs=fa_kwargs)
    theirs = captum_noise_tunnel(_captum_method(cls, case.model, fa_kwargs), case, 3, stdev, kind,
                                 4, **captum_kwargs)
    twin = float64_twin(case)
    truth = captum_noise_tunnel(_captum_method(cls, twin.model, fa_kwargs), twin, 3, stdev, kind, 4, **captum_kwargs)
    assert_as_accurate_as_captum(ours, theirs, truth, f"f32 {kind}({explainer}) {name}")


def test_noise_patch_is_not_vacuous(backend: str) -> None:
    """The patched comparison must tell different noise apart: another seed
    gives results that are far from Captum's with seed 123's noise."""
    case = _case("mlp", batch=2)
    theirs = captum_noise_tunnel(Saliency(case.model), case, 3, 0.25, "smoothgrad", 123, abs=False)
    same = smoothgrad_iid(case.model, case.inputs, target=case.target, n_samples=3, stdev=0.25,
                               seed=123, explainer_kwargs={"abs": False})
    other = smoothgrad_iid(case.model, case.inputs, target=case.target, n_samples=3, stdev=0.25,
                                seed=124, explainer_kwargs={"abs": False})
    assert _rel_err(same, theirs) <= TOL_F64_POINT
    assert _rel_err(other, theirs) > 1e-3
    with pytest.raises(AssertionError, match="asked for"):  # a wrong shape is caught
        _captum_wrong_shape(case)


def _captum_wrong_shape(case: Case) -> None:
    noise = fastattr_noise(case.inputs, 0, 3, 0.25, 123)
    with captum_uses_noise([(noise, 0.25)]):
        NoiseTunnel(Saliency(case.model)).attribute(case.inputs, nt_samples=4, stdevs=0.25,
                                                   target=case.target)


# ---------------------------------------------------------------------------
# float16 / bfloat16: error against float64 no worse than plain PyTorch's
# ---------------------------------------------------------------------------


def _low_precision_case(name: str, dtype: torch.dtype) -> Tuple[Case, Case]:
    """The same case in ``dtype`` and, from the same rounded weights and inputs, in float64."""
    low = _case(name, dtype)
    exact = _case(name, torch.float64)
    exact.model.load_state_dict({k: v.to(torch.float64) for k, v in low.model.state_dict().items()})
    if isinstance(low.inputs, tuple):
        exact.inputs = tuple(x.to(torch.float64) for x in low.inputs)
    else:
        exact.inputs = low.inputs.to(torch.float64)
    if low.afa is not None:
        exact.afa = (low.afa[0].to(torch.float64), low.afa[1])
    return low, exact


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("name", ["conv", "mlp", "two_input"])
def test_low_precision_error_within_plain_pytorch(backend: str, name: str, dtype: torch.dtype) -> None:
    """fastattr in ``dtype`` vs float64 on the same rounded weights/inputs; plain
    PyTorch is Captum run in ``dtype`` (its result rounded to ``dtype``, as a
    computation in that dtype returns it). Measured: fastattr's error <= 1.09x
    plain PyTorch's (the bound is 2x)."""
    low, exact = _low_precision_case(name, dtype)

    def judge(ours: Any, plain: Any, ref: Any, what: str) -> None:
        for i, (a, p, e) in enumerate(zip(_as_tuple(ours), _as_tuple(plain), _as_tuple(ref))):
            assert a.dtype == dtype, f"{what}[{i}]: dtype {a.dtype}"
            assert_error_within(a, e, p.to(dtype), msg=f"{what}[{i}] {name}")

    kw = lambda c: dict(target=c.target, additional_forward_args=c.afa)  # noqa: E731
    judge(fastattr.saliency(low.model, low.inputs, abs=False, **kw(low)),
          Saliency(low.model).attribute(low.inputs, abs=False, **kw(low)),
          Saliency(exact.model).attribute(exact.inputs, abs=False, **kw(exact)), "saliency")
    judge(fastattr.input_x_gradient(low.model, low.inputs, **kw(low)),
          InputXGradient(low.model).attribute(low.inputs, **kw(low)),
          InputXGradient(exact.model).attribute(exact.inputs, **kw(exact)), "input_x_gradient")
    for method in ("riemann_trapezoid", "gausslegendre"):
        judge(fastattr.integrated_gradients(low.model, low.inputs, n_steps=8, method=method,
                                            chunk_rows=5, **kw(low)),
              IntegratedGradients(low.model).attribute(low.inputs, n_steps=8, method=method, **kw(low)),
              IntegratedGradients(exact.model).attribute(exact.inputs, n_steps=8, method=method,
                                                         **kw(exact)),
              f"IG {method}")
    # SmoothGrad: the exact reference sees fastattr's rounded noisy rows
    # (x_n - x is exact in float64); plain PyTorch adds the noise in ``dtype``.
    stdevs = (0.25, 0.5) if name == "two_input" else (0.25,)
    stdev = stdevs if name == "two_input" else stdevs[0]
    noisy = [ops.generate_rows(x, None, None, 3, "gaussian", s, 8, 65536 + i, 0, x.shape[0] * 3, 0)
             for i, (x, s) in enumerate(zip(low.xs, stdevs))]
    for kind in KINDS:
        ours = smoothgrad_iid(low.model, low.inputs, n_samples=3, stdev=stdev, kind=kind, seed=8,
                                   explainer_kwargs={"abs": False}, **kw(low))
        plain_noise = [(xn - x.repeat_interleave(3, 0), s) for xn, x, s in zip(noisy, low.xs, stdevs)]
        with captum_uses_noise(plain_noise):
            plain = NoiseTunnel(Saliency(low.model)).attribute(
                low.inputs, nt_type=kind, nt_samples=3, stdevs=stdev, abs=False, **kw(low))
        exact_noise = [(xn.double() - x.double().repeat_interleave(3, 0), s)
                       for xn, x, s in zip(noisy, low.xs, stdevs)]
        with captum_uses_noise(exact_noise):
            ref = NoiseTunnel(Saliency(exact.model)).attribute(
                exact.inputs, nt_type=kind, nt_samples=3, stdevs=stdev, abs=False, **kw(exact))
        judge(ours, plain, ref, kind)


# ---------------------------------------------------------------------------
# SmoothGrad noise statistics, without Captum
# ---------------------------------------------------------------------------


class Linear(nn.Module):
    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.w).flatten(1).sum(1)


class Quadratic(nn.Module):
    """f(x) = sum_d a_d x_d^2, gradient 2 a x."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x: Tensor) -> Tensor:
        return (self.a * x * x).flatten(1).sum(1)


def test_smoothgrad_of_linear_model_is_its_weights(backend: str) -> None:
    """Every noisy gradient of f(x) = w.x is w: SmoothGrad = w, SmoothGrad^2 = w^2,
    VarGrad = 0, whatever the noise."""
    w = _randn((2, 4, 4), torch.float64, 21)
    x = _randn((3, 2, 4, 4), torch.float64, 22)
    model = Linear(w)
    for kind, expected in (("smoothgrad", w), ("smoothgrad_sq", w * w), ("vargrad", torch.zeros_like(w))):
        out = smoothgrad_iid(model, x, n_samples=7, stdev=0.8, kind=kind, seed=1,
                                  explainer_kwargs={"abs": False}, chunk_rows=4)
        # VarGrad = E[g^2] - E[g]^2 cancels: measured 1.8e-15 absolute (w^2 <= 6.3).
        torch.testing.assert_close(out, expected.expand_as(x), rtol=1e-14, atol=4e-15 * float((w * w).max()))


def test_smoothgrad_noise_statistics(backend: str) -> None:
    """Quadratic f(x) = sum a x^2: the noisy gradient is g = 2a(x + s z), z ~ N(0, 1).

    With N samples per element, standardized per element:
      SmoothGrad:   (mean g - 2ax) / (2|a| s)      = mean z        ~ N(0, 1/N)
      VarGrad:      VarGrad / (4 a^2 s^2)          = var_N(z)      mean (N-1)/N, sd ~ sqrt(2/N)
      SmoothGrad^2: (SG^2 - (2ax)^2) / (4a^2 s^2)  = var_N(z) + 2 x mean z / s + (mean z)^2
    Over D = B * F = 2 * 64 independent elements the averages of these are
    N(0, 1/(N D)) and N((N-1)/N, 2/(N D)) to first order; the per-element values
    must stay within 5.5 sigma (a false alarm has probability < 1e-5 over the
    128 elements). Also: noise differs between examples and between inputs of
    a tuple (separate keys), and InputXGradient's SmoothGrad on f = w.x is
    w * x in expectation with variance w^2 s^2.
    """
    n, s = 400, 0.7
    a = 0.5 + _randn((64,), torch.float64, 31).abs()
    x = _randn((2, 64), torch.float64, 32)
    model = Quadratic(a)
    common = dict(n_samples=n, stdev=s, seed=77, explainer_kwargs={"abs": False})
    sg = smoothgrad_iid(model, x, kind="smoothgrad", **common)
    vg = smoothgrad_iid(model, x, kind="vargrad", **common)
    sq = smoothgrad_iid(model, x, kind="smoothgrad_sq", **common)

    mean_z = (sg - 2 * a * x) / (2 * a * s)
    var_z = vg / (4 * a * a * s * s)
    d = mean_z.numel()
    assert mean_z.abs().max() <= 5.5 / math.sqrt(n), f"mean z max {mean_z.abs().max():.3g}"
    assert abs(float(mean_z.mean())) <= 5.5 / math.sqrt(n * d)
    assert (var_z - (n - 1) / n).abs().max() <= 5.5 * math.sqrt(2 / n), f"var z {var_z.min():.3g}..{var_z.max():.3g}"
    assert abs(float(var_z.mean()) - (n - 1) / n) <= 5.5 * math.sqrt(2 / (n * d))
    # SmoothGrad^2 is consistent with the two above (E[g^2] = Var + mean^2).
    torch.testing.assert_close(sq, vg + sg * sg, rtol=1e-12, atol=1e-12)
    expected_sq = 4 * a * a * (x * x + s * s)
    assert ((sq - expected_sq) / (4 * a * a * s * s)).abs().max() <= 5.5 * (
        math.sqrt(2 / n) + 2 * x.abs().max() / s / math.sqrt(n)
    )

    # Independent keys: the same input twice in a batch, or twice in a tuple,
    # gets different noise (sample means of z then differ by ~sqrt(2/N)).
    twice = x[:1].expand(2, 64).contiguous()
    sg2 = smoothgrad_iid(model, twice, kind="smoothgrad", **common)
    assert (sg2[0] - sg2[1]).abs().max() > 1e-3
    pair = smoothgrad_iid(lambda u, v: model(u) + model(v), (x, x.clone()), kind="smoothgrad", **common)
    assert (pair[0] - pair[1]).abs().max() > 1e-3
    assert torch.equal(pair[0], sg)  # input 0 of a tuple has the single input's key

    # InputXGradient on a linear model: attribution w * (x + s z).
    w = _randn((64,), torch.float64, 33)
    ixg = dict(n_samples=n, stdev=s, seed=5, explainer="input_x_gradient")
    m1 = smoothgrad_iid(Linear(w), x, kind="smoothgrad", **ixg)
    v1 = smoothgrad_iid(Linear(w), x, kind="vargrad", **ixg)
    assert ((m1 - w * x) / (w.abs() * s)).abs().max() <= 5.5 / math.sqrt(n)
    assert (v1 / (w * w * s * s) - (n - 1) / n).abs().max() <= 5.5 * math.sqrt(2 / n)
