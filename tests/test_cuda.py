"""End to end on CUDA: every explainer gives the CPU's numbers on the GPU, the
noise is bit-identical across devices and chunkings. These run where a GPU is
visible (benchmarks/gpu_check.sh on a lent GPU); without one they are skipped,
and the CPU suite covers the same code paths on the CPU."""
import pytest
import torch

import fastattr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
    gpu = _flat(CASES[method](model.cuda(), x.cuda(), chunk_rows=5))
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
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
    gpu = fastattr.smoothgrad(model, x.cuda(), n_samples=9, stdev=0.3, explainer="input_x_gradient",
                              seed=11, chunk_rows=4)
    assert torch.equal(gpu.cpu(), cpu)
