"""A model left in train mode (BatchNorm): every method and metric explains
it as given, warns once per model that the result depends on the chunking,
and gives the caller's model back unchanged (running statistics, counters,
train mode)."""
import warnings

import pytest
import torch
from torch import nn

import fastattr
from fastattr import metrics as M


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))  # train mode


X = torch.rand(6, 3, 8, 8)
T = torch.tensor([0, 1, 2, 0, 1, 2])
CALLS = {
    "saliency": lambda m: fastattr.saliency(m, X, target=T),
    "integrated_gradients": lambda m: fastattr.integrated_gradients(m, X, target=T, n_steps=4),
    "smoothgrad": lambda m: fastattr.smoothgrad(m, X, target=T, n_samples=3, stdev=0.1),
    "grad_cam": lambda m: fastattr.grad_cam(m, X, m[3], target=T),
    "lrp": lambda m: fastattr.lrp(m, X, target=T),
    "deeplift": lambda m: fastattr.deeplift(m, X, target=T),
    "guided_backprop": lambda m: fastattr.guided_backprop(m, X, target=T),
    "infidelity": lambda m: M.infidelity(m, X, torch.ones_like(X), target=T, n_samples=3),
    "deletion_curve": lambda m: M.deletion_curve(m, X, torch.rand_like(X), target=T, n_steps=3),
    "max_sensitivity": lambda m: M.max_sensitivity(m, X, T, "saliency", n_samples=3),
    "model_randomization": lambda m: M.model_randomization(m, X, T, "saliency"),
    "fgsm_accuracy": lambda m: M.fgsm_accuracy(m, X, T, 0.1),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_train_mode_model_comes_back_unchanged(name):
    model = bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CALLS[name](model)
        CALLS[name](model)
    assert model.training and all(m.training for m in model.modules())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == []
    about = [w for w in caught if "train mode" in str(w.message)]
    assert len(about) == 1 and "memory_budget / chunk_rows" in str(about[0].message)  # once per model


def test_train_mode_result_depends_on_the_chunking_eval_does_not():
    model = bn_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = fastattr.integrated_gradients(model, X, target=T, n_steps=4)
        chunked = fastattr.integrated_gradients(model, X, target=T, n_steps=4, chunk_rows=8)
    assert not torch.allclose(whole, chunked, rtol=1e-3, atol=0)  # what the warning says
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning in eval mode
        whole = fastattr.integrated_gradients(model.double(), X.double(), target=T, n_steps=4)
        chunked = fastattr.integrated_gradients(model, X.double(), target=T, n_steps=4, chunk_rows=8)
    assert torch.allclose(whole, chunked, rtol=1e-10, atol=1e-12)
