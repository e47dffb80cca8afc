"""``fastattr.captum`` is a drop-in for ``captum.attr``: the same script run
with either module's classes gives the same numbers, shapes and types.

Each test builds the attribution object from a module (``captum.attr`` or
``fastattr.captum``) and calls it identically. Random methods get fastattr's
keyed noise in Captum (``torch.normal`` patched, see tests/captum_cases.py).
Tolerances are the ones measured in tests/test_attr_captum.py for the same
computations (float64).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch

import captum.attr
import fastattr.captum
from captum_cases import (
    Case, RowLog, _case, _randn, assert_same_attr, assert_same_delta, captum_uses_noise, fastattr_noise,
)

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")

TOL_POINT = 2e-15
TOL_IG = 3e-7  # Captum's float32 step sizes (tests/test_attr_captum.py)
TOL_DELTA = 3e-7

def _both(script: Any, case: Case) -> Tuple[Any, Any]:
    return script(fastattr.captum, case), script(captum.attr, case)


@pytest.mark.parametrize("name", ["conv", "mlp", "two_input", "scalar"])
def test_saliency_and_input_x_gradient(backend: str, name: str) -> None:
    case = _case(name)
    for script in (
        lambda m, c: m.Saliency(c.model).attribute(c.inputs, target=c.target, additional_forward_args=c.afa),
        lambda m, c: m.Saliency(c.model).attribute(c.inputs, c.target, False, c.afa),
        lambda m, c: m.InputXGradient(c.model).attribute(c.inputs, target=c.target, additional_forward_args=c.afa),
    ):
        ours, theirs = _both(script, case)
        assert_same_attr(ours, theirs, TOL_POINT, name)


@pytest.mark.parametrize("name", ["conv", "two_input", "scalar"])
@pytest.mark.parametrize("mbi", [True, False])
def test_integrated_gradients(backend: str, name: str, mbi: bool) -> None:
    case = _case(name)

    def script(m: Any, c: Case) -> Any:
        ig = m.IntegratedGradients(c.model, multiply_by_inputs=mbi)
        assert ig.has_convergence_delta() and ig.multiplies_by_inputs == mbi
        return ig.attribute(c.inputs, target=c.target, additional_forward_args=c.afa, n_steps=7,
                            method="riemann_trapezoid", internal_batch_size=4,
                            return_convergence_delta=True)

    (ours, d_ours), (theirs, d_theirs) = _both(script, case)
    assert_same_attr(ours, theirs, TOL_IG, name)
    assert_same_delta(d_ours, d_theirs, ours, TOL_DELTA, name)


def test_internal_batch_size_caps_rows(backend: str) -> None:
    case = _case("conv")
    rec = RowLog(case.model)
    fastattr.captum.IntegratedGradients(rec).attribute(case.inputs, target=case.target, n_steps=5,
                                                       internal_batch_size=4)
    assert rec.grad_rows == [4, 4, 4, 3]


@pytest.mark.parametrize("target", [2, (2,), [0, 1, 2], torch.tensor([4, 3, 1]), torch.tensor(1)])
def test_target_forms(backend: str, target: Any) -> None:
    case = _case("conv")
    ours, theirs = _both(lambda m, c: m.Saliency(c.model).attribute(c.inputs, target=target), case)
    assert_same_attr(ours, theirs, TOL_POINT, f"target {target!r}")


class SequenceNet(torch.nn.Module):
    """[B, 2, 7] -> [B, 4, 7]: an output a target indexes with (channel, position)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv1d(2, 3, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv1d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def _sequence_case() -> Case:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = SequenceNet().double().eval()
    return Case("sequence", model, _randn((3, 2, 7), torch.float64, 4), None)


SEQUENCE_SCRIPTS = {
    "saliency": lambda m, c, t: m.Saliency(c.model).attribute(c.inputs, target=t, abs=False),
    "input_x_gradient": lambda m, c, t: m.InputXGradient(c.model).attribute(c.inputs, target=t),
    "integrated_gradients": lambda m, c, t: m.IntegratedGradients(c.model).attribute(
        c.inputs, target=t, n_steps=6, internal_batch_size=5, return_convergence_delta=True),
    "guided_backprop": lambda m, c, t: m.GuidedBackprop(c.model).attribute(c.inputs, target=t),
    "deconvolution": lambda m, c, t: m.Deconvolution(c.model).attribute(c.inputs, target=t),
    "deeplift": lambda m, c, t: m.DeepLift(c.model).attribute(
        c.inputs, baselines=0.1, target=t, return_convergence_delta=True),
    "layer_grad_cam": lambda m, c, t: m.LayerGradCam(c.model, c.model.conv1).attribute(c.inputs, target=t),
    "layer_integrated_gradients": lambda m, c, t: m.LayerIntegratedGradients(c.model, c.model.conv1).attribute(
        c.inputs, target=t, n_steps=5, return_convergence_delta=True),
}


@pytest.mark.parametrize("target", [(2, 5), (-1, 0), [(1, 0), (3, 6), (0, -3)]])
@pytest.mark.parametrize("method", list(SEQUENCE_SCRIPTS))
def test_targets_index_outputs_of_any_rank(backend: str, method: str, target: Any) -> None:
    """An output [B, C, L]: a (channel, position) tuple for every example or a
    list of them, one per example, as Captum indexes it."""
    case = _sequence_case()
    ours, theirs = _both(lambda m, c: SEQUENCE_SCRIPTS[method](m, c, target), case)
    if method in ("integrated_gradients", "deeplift", "layer_integrated_gradients"):
        (ours, d_ours), (theirs, d_theirs) = ours, theirs
        assert_same_delta(d_ours, d_theirs, ours, TOL_DELTA, f"{method} {target!r}")
    tol = TOL_IG if "integrated" in method else TOL_POINT
    assert_same_attr(ours, theirs, tol, f"{method} {target!r}")


def test_target_that_leaves_several_outputs_is_refused_as_by_captum(backend: str) -> None:
    """An int target on [B, C, L] leaves L values per example: Captum asserts,
    fastattr raises an error that is both a ValueError and an AssertionError."""
    case = _sequence_case()
    for target in (1, torch.tensor(1), [1, 2, 3], None):
        for module in (captum.attr, fastattr.captum):
            with pytest.raises(AssertionError):
                module.Saliency(case.model).attribute(case.inputs, target=target)
        with pytest.raises(ValueError, match="^target: "):
            fastattr.captum.Saliency(case.model).attribute(case.inputs, target=target)


def _partitioned_noise(case: Case, n: int, per_partition: int, stdevs: Tuple[float, ...],
                       seed: int = 0) -> List[Tuple[torch.Tensor, float]]:
    """fastattr's noise, in the order Captum's NoiseTunnel draws it: one
    ``torch.normal`` per partition of samples, per input."""
    full = [fastattr_noise(x, i, n, s, seed) for i, (x, s) in enumerate(zip(case.xs, stdevs))]
    calls = []
    for n0 in range(0, n, per_partition):
        samples = [b * n + j for b in range(case.batch) for j in range(n0, min(n, n0 + per_partition))]
        calls += [(f[torch.tensor(samples)], s) for f, s in zip(full, stdevs)]
    return calls


def _keyed(module: Any, cls: str, *args: Any) -> Any:
    """``module.cls(*args)``, with fastattr's keyed draws (seed 0) for fastattr:
    these tests give Captum the same keyed noise."""
    return getattr(module, cls)(*args, **({"seed": 0} if module is fastattr.captum else {}))


NT_SCRIPTS = {
    "saliency": lambda m, c, **kw: _keyed(m, "NoiseTunnel", m.Saliency(c.model)).attribute(
        c.inputs, target=c.target, additional_forward_args=c.afa, **kw),
    "input_x_gradient": lambda m, c, **kw: _keyed(m, "NoiseTunnel", m.InputXGradient(c.model)).attribute(
        c.inputs, target=c.target, additional_forward_args=c.afa, **kw),
    "integrated_gradients": lambda m, c, **kw: _keyed(m, "NoiseTunnel", m.IntegratedGradients(c.model)).attribute(
        c.inputs, target=c.target, additional_forward_args=c.afa, n_steps=4, method="riemann_left",
        return_convergence_delta=True, **kw),
}


@pytest.mark.parametrize("explainer", sorted(NT_SCRIPTS))
@pytest.mark.parametrize("kind", ["smoothgrad", "vargrad"])
@pytest.mark.parametrize("per_partition", [None, 2])
def test_noise_tunnel(backend: str, explainer: str, kind: str, per_partition: Any) -> None:
    case = _case("two_input")
    n, stdevs = 5, (0.3, 0.2)
    kw = dict(nt_type=kind, nt_samples=n, nt_samples_batch_size=per_partition, stdevs=stdevs)
    ours = NT_SCRIPTS[explainer](fastattr.captum, case, **kw)
    with captum_uses_noise(_partitioned_noise(case, n, per_partition or n, stdevs)):
        theirs = NT_SCRIPTS[explainer](captum.attr, case, **kw)
    tol = TOL_IG if explainer == "integrated_gradients" else 1e-14
    if explainer == "integrated_gradients":
        (ours, d_ours), (theirs, d_theirs) = ours, theirs
        # Partition-major deltas, as Captum orders them.
        assert_same_delta(d_ours, d_theirs, ours, TOL_DELTA, f"{explainer} deltas")
    assert_same_attr(ours, theirs, tol, f"{explainer} {kind} nt_samples_batch_size={per_partition}")


def test_noise_tunnel_over_any_attribution_uses_the_same_noise(backend: str) -> None:
    """Wrapping a class fastattr does not plan natively (here Captum's own
    Saliency) runs it on the keyed noisy copies: the same numbers as the
    engine route, and as Captum's NoiseTunnel given that noise."""
    case = _case("conv")
    kw = dict(target=case.target, nt_type="smoothgrad_sq", nt_samples=4, nt_samples_batch_size=3, stdevs=0.2)
    engine = fastattr.captum.NoiseTunnel(fastattr.captum.Saliency(case.model), seed=0).attribute(case.inputs, **kw)
    generic = fastattr.captum.NoiseTunnel(captum.attr.Saliency(case.model), seed=0).attribute(case.inputs, **kw)
    with captum_uses_noise(_partitioned_noise(case, 4, 3, (0.2,))):
        theirs = captum.attr.NoiseTunnel(captum.attr.Saliency(case.model)).attribute(case.inputs, **kw)
    assert_same_attr(generic, engine, TOL_POINT, "generic vs engine route")
    assert_same_attr(generic, theirs, TOL_POINT, "generic vs Captum")


def test_noise_tunnel_seed_and_repeatability(backend: str) -> None:
    case = _case("mlp")
    a = fastattr.captum.NoiseTunnel(fastattr.captum.Saliency(case.model), seed=0).attribute(
        case.inputs, target=case.target)
    b = fastattr.captum.NoiseTunnel(fastattr.captum.Saliency(case.model), seed=0).attribute(
        case.inputs, target=case.target)
    c = fastattr.captum.NoiseTunnel(fastattr.captum.Saliency(case.model), seed=1).attribute(
        case.inputs, target=case.target)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_tunnel_refuses_what_it_cannot_do(backend: str) -> None:
    case = _case("mlp")
    nt = fastattr.captum.NoiseTunnel(fastattr.captum.Saliency(case.model), seed=0)
    with pytest.raises(ValueError, match="return_convergence_delta"):
        nt.attribute(case.inputs, target=case.target, return_convergence_delta=True)
    with pytest.raises(ValueError, match="nt_type"):
        nt.attribute(case.inputs, target=case.target, nt_type="mean")
    with pytest.raises(TypeError, match="unexpected arguments"):
        nt.attribute(case.inputs, target=case.target, n_steps=3)
    with pytest.raises(TypeError, match="attribution_method"):
        fastattr.captum.NoiseTunnel(case.model)


def test_noise_tunnel_draws_baselines_from_a_distribution(backend: str) -> None:
    """IG under NoiseTunnel with ``draw_baseline_from_distrib``: each noisy
    copy starts from a keyed draw of the distribution (the route through the
    wrapped attribute); checked against IG run directly on those copies."""
    from fastattr.engine import PURPOSE_REFERENCE_DRAW
    from fastattr.engine.draws import group_uniforms

    case = _case("mlp")
    refs = _randn((7, 64), torch.float64, 9)
    n = 3
    ours = fastattr.captum.NoiseTunnel(fastattr.captum.IntegratedGradients(case.model), seed=0).attribute(
        case.inputs, nt_samples=n, stdevs=0.1, draw_baseline_from_distrib=True, baselines=refs,
        target=case.target, n_steps=6)
    _, which = group_uniforms(0, PURPOSE_REFERENCE_DRAW * 65536, case.batch, n, torch.device("cpu"))
    noisy = case.inputs.repeat_interleave(n, 0) + fastattr_noise(case.inputs, 0, n, 0.1, 0)
    direct = fastattr.integrated_gradients(case.model, noisy, baselines=refs[(which * 7).long()],
                                           target=case.target.repeat_interleave(n), n_steps=6)
    torch.testing.assert_close(ours, direct.reshape(case.batch, n, 64).mean(1), rtol=1e-13, atol=1e-15)


def test_gradient_shap_class(backend: str) -> None:
    case = _case("conv")
    refs = _randn((5, 3, 8, 8), torch.float64, 4)
    gs = fastattr.captum.GradientShap(case.model, seed=0)
    assert gs.has_convergence_delta() and gs.multiplies_by_inputs
    attr, delta = gs.attribute(case.inputs, refs, n_samples=4, stdevs=0.1, target=case.target,
                               return_convergence_delta=True)
    direct, d_direct = fastattr.gradient_shap(case.model, case.inputs, refs, target=case.target, n_samples=4,
                                              stdev=0.1, return_convergence_delta=True, model_form="eager")
    assert torch.equal(attr, direct) and torch.equal(delta, d_direct) and delta.shape == (case.batch * 4,)


def test_names_and_queries_match_captum() -> None:
    for name in fastattr.captum.__all__:
        ours, theirs = getattr(fastattr.captum, name), getattr(captum.attr, name)
        assert ours.get_name() == theirs.get_name()
    case = _case("mlp")
    for name in ("Saliency", "InputXGradient", "IntegratedGradients"):
        ours, theirs = getattr(fastattr.captum, name)(case.model), getattr(captum.attr, name)(case.model)
        assert ours.has_convergence_delta() == theirs.has_convergence_delta(), name
        assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs, name
        assert ours.forward_func is case.model


def _wrapped(module: Any, name: str, model: torch.nn.Module) -> Any:
    if name in ("LayerGradCam", "GuidedGradCam"):
        return getattr(module, name)(model, model.conv2)
    if name == "LayerIntegratedGradients":
        return getattr(module, name)(model, model.conv1)
    return getattr(module, name)(model)


@pytest.mark.parametrize("name", ["GuidedBackprop", "Deconvolution", "DeepLift", "LRP", "LayerGradCam",
                                  "GuidedGradCam", "LayerIntegratedGradients"])
def test_noise_tunnel_wraps_every_method(backend: str, name: str) -> None:
    """NoiseTunnel over each drop-in class equals Captum's NoiseTunnel over
    Captum's class, given the same noise."""
    case = _case("conv")
    kw: Dict[str, Any] = dict(target=case.target, nt_type="smoothgrad_sq", nt_samples=3,
                              nt_samples_batch_size=2, stdevs=0.1)
    if name == "LayerIntegratedGradients":
        kw["n_steps"] = 4
    ours = fastattr.captum.NoiseTunnel(_wrapped(fastattr.captum, name, case.model), seed=0).attribute(
        case.inputs, **kw)
    inner = _wrapped(captum.attr, name, case.model)
    with captum_uses_noise(_partitioned_noise(case, 3, 2, (0.1,))):
        theirs = captum.attr.NoiseTunnel(inner).attribute(case.inputs, **kw)
    tol = TOL_IG if name == "LayerIntegratedGradients" else 1e-13
    assert_same_attr(ours, theirs, tol, f"NoiseTunnel({name})")


def _under_seed(call: Any, seed: int = 7) -> Any:
    """``call()`` with torch's and NumPy's global RNGs seeded to ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return call()


GLOBAL_DRAW_SCRIPTS = {
    "nt_saliency": lambda m, c: m.NoiseTunnel(m.Saliency(c.model)).attribute(
        c.inputs, target=c.target, additional_forward_args=c.afa, nt_samples=5, nt_samples_batch_size=2,
        stdevs=(0.3, 0.2), nt_type="vargrad"),
    "nt_ig_drawn_baselines": lambda m, c: m.NoiseTunnel(m.IntegratedGradients(c.model)).attribute(
        c.inputs, target=c.target, additional_forward_args=c.afa, nt_samples=5, nt_samples_batch_size=3,
        stdevs=0.1, n_steps=4, draw_baseline_from_distrib=True,
        baselines=(_randn((4, 2, 6, 6), torch.float64, 3), _randn((4, 10), torch.float64, 4)),
        return_convergence_delta=True),
    "gradient_shap": lambda m, c: m.GradientShap(c.model).attribute(
        c.inputs, (_randn((4, 2, 6, 6), torch.float64, 3), _randn((4, 10), torch.float64, 4)), n_samples=6,
        stdevs=(0.1, 0.05), target=c.target, additional_forward_args=c.afa, return_convergence_delta=True),
    "layer_gradient_shap": lambda m, c: m.LayerGradientShap(c.model, c.model.conv).attribute(
        c.inputs, (_randn((4, 2, 6, 6), torch.float64, 3), _randn((4, 10), torch.float64, 4)), n_samples=3,
        stdevs=0.1, target=c.target, additional_forward_args=c.afa, return_convergence_delta=True),
}


@pytest.mark.parametrize("script", sorted(GLOBAL_DRAW_SCRIPTS))
def test_default_draws_are_captums_under_the_same_global_seed(backend: str, script: str) -> None:
    """Without a seed the random drop-ins draw from the global RNGs exactly as
    Captum does: after the import swap, a script seeding them gets Captum's numbers."""
    case = _case("two_input")
    ours = _under_seed(lambda: GLOBAL_DRAW_SCRIPTS[script](fastattr.captum, case))
    theirs = _under_seed(lambda: GLOBAL_DRAW_SCRIPTS[script](captum.attr, case))
    if isinstance(ours, tuple) and isinstance(ours[-1], torch.Tensor) and ours[-1].dim() == 1:
        (ours, d_ours), (theirs, d_theirs) = ours, theirs
        assert_same_delta(d_ours, d_theirs, ours, TOL_DELTA, f"{script} deltas")
    assert_same_attr(ours, theirs, TOL_IG, script)
