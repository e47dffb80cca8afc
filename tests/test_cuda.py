"""End to end on CUDA: every explainer, metric and drop-in gives the CPU's
numbers on the GPU, the noise is bit-identical across devices and chunkings,
the kernels hold on tensors past the grid (> 2**20 elements, > 2**31 bytes),
in half types, on a side stream and on a second GPU. These run where a GPU is
visible (benchmarks/gpu_check.sh on a lent GPU); without one they are
skipped, and the CPU suite covers the same code paths on the CPU.

``FASTATTR_CUDA_TEST_DEVICE=cpu`` runs them with the CPU standing in for
the GPU: a rehearsal of the test code itself (every call, shape and
comparison) on a machine without one; the GPU-only tests (streams, a second
GPU, the profiler, torchrun over nccl) stay skipped.
"""
import dataclasses
import os
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch
from torch import nn

import fastattr
import fastattr.captum as fc
import fastattr.metrics as fm
import fastattr.quantus as fq
from fastattr import ops

DEVICE = torch.device(os.environ.get("FASTATTR_CUDA_TEST_DEVICE", "cuda"))
REHEARSAL = DEVICE.type != "cuda"
pytestmark = pytest.mark.skipif(not (REHEARSAL or torch.cuda.is_available()), reason="needs a CUDA GPU")
needs_real_gpu = pytest.mark.skipif(REHEARSAL or not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5),
    ).double().eval()


CASES = {
    "saliency": lambda m, x, **kw: fastattr.saliency(m, x, target=[0, 3, 4], **kw),
    "input_x_gradient": lambda m, x, **kw: fastattr.input_x_gradient(m, x, target=1, **kw),
    "integrated_gradients": lambda m, x, **kw: fastattr.integrated_gradients(
        m, x, target=[0, 3, 4], n_steps=12, return_convergence_delta=True, **kw),
    "smoothgrad": lambda m, x, **kw: fastattr.smoothgrad(
        m, x, target=2, n_samples=7, stdev=0.2, kind="vargrad", seed=5, **kw),
    "smoothgrad_ig": lambda m, x, **kw: fastattr.smoothgrad(
        m, x, target=2, n_samples=3, stdev=0.2, explainer="integrated_gradients",
        explainer_kwargs={"n_steps": 5}, return_convergence_delta=True, **kw),
}


def _flat(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("method", sorted(CASES))
def test_cuda_equals_cpu(backend, method):
    model = _conv_net()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    cpu = _flat(CASES[method](model, x))
    gpu = _flat(CASES[method](model.to(DEVICE), x.to(DEVICE), chunk_rows=5))
    for a, b in zip(cpu, gpu):
        assert b.device.type == DEVICE.type
        # float64 conv/matmul on the GPU round differently from the CPU's; the
        # noise itself is bit-identical (test_ops.py), so this is tight.
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11)


def test_cuda_smoothgrad_noise_identical_to_cpu(backend):
    # An elementwise model: its gradients do not depend on device rounding of
    # matmuls, so the whole SmoothGrad result is bit-identical across devices.
    w = torch.linspace(-1.0, 1.0, 30, dtype=torch.float64).reshape(1, 30)

    def model(t):
        return (t * w.to(t.device)).sum(1)

    x = torch.rand(4, 30, dtype=torch.float64)
    cpu = fastattr.smoothgrad(model, x, n_samples=9, stdev=0.3, explainer="input_x_gradient", seed=11)
    gpu = fastattr.smoothgrad(model, x.to(DEVICE), n_samples=9, stdev=0.3, explainer="input_x_gradient",
                              seed=11, chunk_rows=4)
    assert torch.equal(gpu.cpu(), cpu)


# ---------------------------------------------------------------------------
# Every method, metric and drop-in: the GPU gives the CPU's numbers
# ---------------------------------------------------------------------------


def _assert_same(gpu: Any, cpu: Any, where: str, rtol: float = 1e-9, atol: float = 1e-11) -> None:
    """``gpu`` (tensors on DEVICE, numbers, lists, tuples, dataclasses) equals
    ``cpu`` to float64 rounding of the device's own conv/matmul."""
    if isinstance(cpu, torch.Tensor):
        assert isinstance(gpu, torch.Tensor) and gpu.device.type == DEVICE.type, f"{where}: {type(gpu)}"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
    elif dataclasses.is_dataclass(cpu):
        for f in dataclasses.fields(cpu):
            _assert_same(getattr(gpu, f.name), getattr(cpu, f.name), f"{where}.{f.name}", rtol, atol)
    elif isinstance(cpu, (list, tuple)):
        assert len(gpu) == len(cpu), where
        for i, (g, c) in enumerate(zip(gpu, cpu)):
            _assert_same(g, c, f"{where}[{i}]", rtol, atol)
    elif isinstance(cpu, dict):
        assert gpu.keys() == cpu.keys(), where
        for k in cpu:
            _assert_same(gpu[k], cpu[k], f"{where}[{k!r}]", rtol, atol)
    elif isinstance(cpu, (float, np.floating, np.ndarray)):
        np.testing.assert_allclose(gpu, cpu, rtol=rtol, atol=atol, err_msg=where)
    else:
        assert gpu == cpu, f"{where}: {gpu!r} != {cpu!r}"


def _cnn() -> nn.Module:
    """float64, eval: Conv -> BatchNorm -> ReLU -> MaxPool -> Linear, [n, 3, 8, 8] -> [n, 5]."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 5),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.double().eval()


def _mlp() -> nn.Module:
    """float64 Linear -> ReLU -> Linear, [n, 192] -> [n, 5] (layers Captum's LRP has rules for)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 5)).double().eval()


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


TARGET = [0, 3, 4]

# name -> call(model, x, device): every method, computed on ``device``.
METHODS: Dict[str, Callable[[nn.Module, torch.Tensor, torch.device], Any]] = {
    "gradient_shap": lambda m, x, d: fastattr.gradient_shap(
        m, x, baselines=torch.zeros(4, 3, 8, 8, dtype=x.dtype, device=d) + 0.1, target=TARGET, n_samples=6,
        stdev=0.1, seed=3, return_convergence_delta=True, chunk_rows=7),
    "expected_gradients": lambda m, x, d: fastattr.expected_gradients(
        m, x, baselines=_images(5).to(d), target=TARGET, n_samples=4, seed=2, chunk_rows=5),
    "lrp_epsilon": lambda m, x, d: fastattr.lrp(m, x, target=TARGET, return_convergence_delta=True),
    "lrp_fold_zplus": lambda m, x, d: fastattr.lrp(m, x, target=TARGET, composite=fastattr.attr.zennit_composite(
        "epsilon_plus")),
    "deeplift": lambda m, x, d: fastattr.deeplift(m, x, baselines=0.5 * x, target=TARGET,
                                                  return_convergence_delta=True),
    "deeplift_shap": lambda m, x, d: fastattr.deeplift_shap(m, x, baselines=_images(4).to(d) * 0.3, target=TARGET),
    "guided_backprop": lambda m, x, d: fastattr.guided_backprop(m, x, target=TARGET),
    "deconvolution": lambda m, x, d: fastattr.deconvolution(m, x, target=TARGET),
    "grad_cam": lambda m, x, d: fastattr.grad_cam(m, x, m[0], target=TARGET, upsample_to_input=True),
    "grad_cam_plus_plus": lambda m, x, d: fastattr.attr.grad_cam_plus_plus(m, x, m[2], TARGET, scale=True),
    "score_cam": lambda m, x, d: fastattr.attr.score_cam(m, x, m[2], TARGET, chunk_rows=5),
    "layer_integrated_gradients": lambda m, x, d: fastattr.layer_integrated_gradients(
        m, x, m[0], target=TARGET, n_steps=9, return_convergence_delta=True),
    "max_sensitivity": lambda m, x, d: fm.max_sensitivity(m, x, target=TARGET, n_samples=5, seed=4, chunk_rows=7),
    "avg_sensitivity": lambda m, x, d: fm.avg_sensitivity(
        m, x, target=TARGET, explainer="integrated_gradients", explainer_kwargs={"n_steps": 4}, n_samples=3),
    "infidelity": lambda m, x, d: fm.infidelity(m, x, fastattr.saliency(m, x, target=TARGET), target=TARGET,
                                                n_samples=6, seed=5, chunk_rows=4),
    "local_lipschitz": lambda m, x, d: fm.local_lipschitz_estimate(m, x, target=TARGET, n_samples=4, seed=6),
    "relative_representation_stability": lambda m, x, d: fm.relative_representation_stability(
        m, x, target=TARGET, n_samples=4, seed=9, chunk_rows=6),
    "fragility": lambda m, x, d: fm.fragility(m, x, target=TARGET, n_steps=3, k=10),
    "model_randomization": lambda m, x, d: fm.model_randomization(m, x, target=TARGET, seed=7),
    "deletion_curve": lambda m, x, d: fm.deletion_curve(m, x, "saliency", target=TARGET, n_steps=6),
    "pixel_flipping": lambda m, x, d: fm.pixel_flipping(m, x, "saliency", target=TARGET, features_in_step=8,
                                                        baseline="uniform", seed=8),
    "captum_integrated_gradients": lambda m, x, d: fc.IntegratedGradients(m).attribute(
        x, target=TARGET, n_steps=11, return_convergence_delta=True),
    "captum_noise_tunnel": lambda m, x, d: fc.NoiseTunnel(fc.Saliency(m)).attribute(
        x, target=TARGET, nt_samples=5, stdevs=0.0),
    "captum_deeplift": lambda m, x, d: fc.DeepLift(m).attribute(x, target=TARGET),
    "captum_lrp": lambda m, x, d: fc.LRP(_mlp().to(d)).attribute(x.flatten(1), target=TARGET),
    "quantus_max_sensitivity": lambda m, x, d: fq.MaxSensitivity(nr_samples=4, disable_warnings=True)(
        m, x.cpu().numpy(), np.array(TARGET), explain_func=fastattr.saliency, device=d),
    "quantus_pixel_flipping": lambda m, x, d: fq.PixelFlipping(features_in_step=16, disable_warnings=True)(
        m, x.cpu().numpy(), np.array(TARGET), a_batch=fastattr.saliency(m, x, target=TARGET).cpu().numpy(),
        device=d),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cuda_method_equals_cpu(name: str) -> None:
    """Each method and metric on DEVICE equals its CPU result (float64; the
    keyed draws are bit-identical, so only conv/matmul rounding differs)."""
    cpu = METHODS[name](_cnn(), _images(), torch.device("cpu"))
    gpu = METHODS[name](_cnn().to(DEVICE), _images().to(DEVICE), DEVICE)
    _assert_same(gpu, cpu, name)


def test_cuda_deeplift_small_differences_path(monkeypatch) -> None:
    """On a GPU DeepLIFT always takes the path for |x - reference| < eps
    (checking would wait for the device); on the CPU only where such an
    entry exists. Both give the same attributions."""
    from fastattr.attr import deeplift_pairs

    model, x = _cnn(), _images()
    base = x.clone()
    base[:, 0, :2] += 1e-13  # some differences below eps, most not
    plain = fastattr.deeplift(model, x, baselines=base, target=TARGET)
    monkeypatch.setattr(deeplift_pairs, "_maybe_small", lambda magnitude, eps: True)
    on_gpu_path = fastattr.deeplift(model.to(DEVICE), x.to(DEVICE), baselines=base.to(DEVICE), target=TARGET)
    _assert_same(on_gpu_path, plain, "deeplift")


# ---------------------------------------------------------------------------
# Kernels past the grid, half types, streams, a second GPU, opcheck
# ---------------------------------------------------------------------------


def _generate(x: torch.Tensor, n_samples: int, row_start: int, row_count: int, noise: str = "gaussian",
              scale: float = 0.5) -> torch.Tensor:
    return ops.generate_rows(x, None, None, n_samples, noise, scale, 9, 1, row_start, row_count, 0)


@pytest.mark.parametrize("features", [(1 << 20) + 7, 3 << 20])
def test_cuda_grid_stride_wraps(features: int) -> None:
    """More elements than one grid covers (4096 blocks x 256 threads = 2**20):
    the strided elements get the CPU's bits."""
    x = torch.randn(2, features, generator=torch.Generator().manual_seed(0))
    cpu = _generate(x, 2, 0, 4)
    gpu = _generate(x.to(DEVICE), 2, 0, 4)
    assert torch.equal(gpu.cpu(), cpu)


def test_cuda_past_two_gib() -> None:
    """A chunk of more than 2**31 bytes (2**29 + float32 elements): element
    offsets past int32 get the bits the CPU gives the same row alone."""
    free = torch.cuda.mem_get_info(DEVICE)[0] if DEVICE.type == "cuda" else None
    if free is not None and free < (5 << 30):
        pytest.skip(f"needs 5 GiB of free GPU memory, {free >> 20} MiB free")
    if REHEARSAL:
        pytest.skip("a 2 GiB chunk is a GPU test: the rehearsal checks the smaller wraps")
    features = 1 << 20
    x = torch.randn(1, features)
    rows = 513  # 513 * 2**20 * 4 bytes > 2**31
    gpu = _generate(x.to(DEVICE), rows, 0, rows)
    assert gpu.numel() * gpu.element_size() > 2**31
    for r in (0, 511, 512):
        assert torch.equal(gpu[r].cpu(), _generate(x, rows, r, 1)[0]), f"row {r}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_types_equal_cpu(dtype: torch.dtype) -> None:
    """Noisy rows and the float32 accumulation in half types: the same bits
    on both devices (an elementwise model, whose gradient has no device rounding)."""
    w = torch.linspace(-1.0, 1.0, 48).reshape(1, 48).to(dtype)

    def model(t: torch.Tensor) -> torch.Tensor:
        return (t * t * w.to(t.device)).sum(1)

    x = torch.rand(5, 48, generator=torch.Generator().manual_seed(2)).to(dtype)
    kwargs = dict(n_samples=11, stdev=0.25, explainer="input_x_gradient", seed=3, kind="smoothgrad_sq")
    cpu = fastattr.smoothgrad(model, x, chunk_rows=6, **kwargs)
    gpu = fastattr.smoothgrad(model, x.to(DEVICE), chunk_rows=13, **kwargs)
    assert gpu.dtype == dtype
    assert torch.equal(gpu.cpu(), cpu)
    assert torch.equal(_generate(x.to(DEVICE), 3, 0, 15).cpu(), _generate(x, 3, 0, 15))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_relative_squares_equals_cpu(dtype: torch.dtype) -> None:
    """The relative squares on the GPU (a thread per row) give the CPU's bits
    (which scores four rows of an example together): rows of uneven length,
    uneven runs of examples, more rows than one block, and more than the grid
    (2**20 threads), which the threads stride over."""
    g = torch.Generator().manual_seed(4)
    for rows, D, B in ((1000, 1003, 37), ((1 << 20) + 9, 3, 5)):
        new = torch.randn(rows, D, generator=g).to(dtype)
        old = torch.randn(B, D, generator=g, dtype=torch.float64)
        examples = torch.sort(torch.randint(0, B, (rows,), generator=g)).values
        cpu = ops.relative_squares(new, old, 1 / old, examples)
        gpu = ops.relative_squares(new.to(DEVICE), old.to(DEVICE), (1 / old).to(DEVICE), examples.to(DEVICE))
        assert gpu.device.type == DEVICE.type and gpu.dtype == torch.float64
        assert torch.equal(gpu.cpu(), cpu), f"{rows} rows of {D}"


@needs_real_gpu
def test_cuda_side_stream() -> None:
    """On a non-default stream the kernels run on the current stream: inputs
    made there, without a synchronisation, give the default stream's result."""
    model = _cnn().cuda()
    expected = fastattr.integrated_gradients(model, _images().cuda(), target=TARGET, n_steps=16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = _images().cuda(non_blocking=True) * 1.0  # made on the side stream
        got = fastattr.integrated_gradients(model, x, target=TARGET, n_steps=16)
        noisy = fastattr.smoothgrad(model, x, target=TARGET, n_samples=6, stdev=0.2, seed=1)
    stream.synchronize()
    assert torch.equal(got, expected)
    assert torch.equal(noisy, fastattr.smoothgrad(model, _images().cuda(), target=TARGET, n_samples=6, stdev=0.2,
                                                  seed=1))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two CUDA GPUs (tensors on cuda:1)")
def test_cuda_second_device() -> None:
    """Tensors on cuda:1: kernels launch there (device guard) and give cuda:0's numbers."""
    model0, model1 = _cnn().to("cuda:0"), _cnn().to("cuda:1")
    for name in ("gradient_shap", "lrp_epsilon", "max_sensitivity"):
        on0 = METHODS[name](model0, _images().to("cuda:0"), torch.device("cuda:0"))
        on1 = METHODS[name](model1, _images().to("cuda:1"), torch.device("cuda:1"))
        for a, b in zip(_flat(on0) if not dataclasses.is_dataclass(on0) else (on0.values,),
                        _flat(on1) if not dataclasses.is_dataclass(on1) else (on1.values,)):
            assert b.device == torch.device("cuda:1")
            torch.testing.assert_close(b.to("cuda:0"), a, rtol=1e-9, atol=1e-11)


def test_cuda_opcheck() -> None:
    """torch.library.opcheck on the CUDA samples of every op (schema, fake
    kernel, autograd registration, the CUDA kernel itself)."""
    from test_ops import _clone_args, sample_inputs

    for op, samples in sample_inputs(DEVICE).items():
        overload = getattr(torch.ops.fastattr, op).default
        for args in samples:
            torch.library.opcheck(overload, _clone_args(args))


def test_cuda_audit_equals_cpu(tmp_path) -> None:
    """The audit on cuda gives the CPU's results (TF32 off; float32 model:
    the GPU's conv and matmul round differently, so float32 rounding
    through a few layers, 1e-4 relative, bounds the difference)."""
    import pandas as pd
    from audit_cuda_support import run_audit

    cpu = run_audit(tmp_path / "cpu", "cpu")
    gpu = run_audit(tmp_path / "gpu", str(DEVICE))
    pd.testing.assert_frame_equal(gpu, cpu, check_exact=False, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two CUDA GPUs (torchrun with two ranks over nccl)")
def test_cuda_audit_torchrun_two_ranks_nccl(tmp_path) -> None:
    """Two ranks (one GPU each, nccl) give the one-process GPU audit's results."""
    import pandas as pd
    from audit_cuda_support import run_audit, run_audit_torchrun

    one = run_audit(tmp_path / "one", "cuda", tf32=True)
    two = run_audit_torchrun(tmp_path / "two", "cuda", ranks=2)
    pd.testing.assert_frame_equal(two, one, check_exact=False, rtol=1e-6, atol=1e-9)


def test_cuda_nan_stays_nan() -> None:
    """NaN in gives NaN out on both devices (its bits are the hardware's:
    csrc/README.md); every other element keeps the CPU's bits."""
    z = torch.tensor([float("nan"), -float("nan"), 1.5, -0.0, 0.0, float("inf")], dtype=torch.float32)
    x = torch.tensor([[float("nan"), 1.0, -2.0]], dtype=torch.float64)
    for cpu, gpu in ((ops.stabilize(z, 0.25), ops.stabilize(z.to(DEVICE), 0.25)),
                     (_generate(x, 2, 0, 2), _generate(x.to(DEVICE), 2, 0, 2))):
        gpu = gpu.cpu()
        assert torch.equal(gpu.isnan(), cpu.isnan())
        assert torch.equal(gpu[~gpu.isnan()], cpu[~cpu.isnan()])
