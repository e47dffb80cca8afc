"""The audit's integrated gradients are refined to a tolerance (``rtol``),
and every method's own error estimate is a column, ``explanation_error``:
IG's estimated path error and SmoothGrad's standard error, equal to the
functions' reports on the same batch, NaN for methods without one."""
import numpy as np
import pandas as pd
import pytest
import torch

import fastattr
from fastattr.cli import main
from fastattr.cli.data import load_dataset
from fastattr.cli.methods import METHOD_SETTINGS, make_context
from fastattr.cli.options import resolve

FACTORY = '''
import torch
from torch import nn

def cnn():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
'''
METHODS = ("saliency", "integrated_gradients", "smoothgrad")
LIMIT, BATCH, SEED = 6, 3, 5


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_accuracy")
    (root / "accuracy_models.py").write_text(FACTORY)
    data = load_dataset(None, 30)
    np.savez(root / "digits.npz", x=data.x, y=data.y)
    import sys

    sys.path.insert(0, str(root))
    try:
        assert main(["audit", "--quiet", "--model", "accuracy_models:cnn", "--data", str(root / "digits.npz"),
                     "--limit", str(LIMIT), "--batch-size", str(BATCH), "--seed", str(SEED),
                     "--methods", ",".join(METHODS), "--metrics", "explanation_error",
                     "--out", str(root / "out")]) == 0
        import accuracy_models

        model = accuracy_models.cnn().eval()
    finally:
        sys.path.remove(str(root))
    frame = pd.read_parquet(root / "out" / "results.parquet")
    return frame, model, load_dataset(str(root / "digits.npz"), LIMIT, SEED)


def test_explanation_error_is_each_methods_own_report(audited):
    frame, model, data = audited
    settings = resolve(METHOD_SETTINGS, {}, "--method-option")
    context = make_context(model, torch.from_numpy(data.x), SEED, {m: settings[m] for m in METHODS},
                           torch.device("cpu"))
    ig, sg = [], []
    for offset in range(0, LIMIT, BATCH):
        x = torch.from_numpy(data.x[offset:offset + BATCH])
        with torch.no_grad():
            pred = model(x).argmax(1)
        _, accuracy = fastattr.integrated_gradients(model, x, target=pred, rtol=0.05, max_steps=64)
        ig.append(accuracy.error)
        _, se = fastattr.smoothgrad(model, x, target=pred, n_samples=8, stdev=0.1 * context.value_range,
                                    seed=SEED, example_offset=offset, return_standard_error=True)
        sg.append(se)

    def column(method):
        return frame.loc[frame["method"] == method, "explanation_error"].to_numpy(dtype=float)

    np.testing.assert_array_equal(column("integrated_gradients"), torch.cat(ig).numpy())
    np.testing.assert_array_equal(column("smoothgrad"), torch.cat(sg).to(torch.float64).numpy())
    assert np.isnan(column("saliency")).all()
    assert (column("integrated_gradients") > 0).all() and (column("smoothgrad") > 0).all()


def test_ig_settings_of_the_fixed_rule_still_apply(audited):
    """rtol=off gives the fixed Gauss-Legendre rule of n_steps, and no error estimate."""
    from fastattr.cli.methods import explain_with_error

    frame, model, data = audited
    settings = resolve(METHOD_SETTINGS, {"integrated_gradients": {"rtol": "off", "n_steps": "7"}},
                       "--method-option")["integrated_gradients"]
    x = torch.from_numpy(data.x[:2])
    target = torch.tensor([1, 2])
    context = make_context(model, x, SEED, {"integrated_gradients": settings}, torch.device("cpu"))
    attrs, error = explain_with_error("integrated_gradients", model, x, target, SEED, 0, None, settings, context)
    assert error is None
    torch.testing.assert_close(attrs, fastattr.integrated_gradients(model, x, target=target, n_steps=7),
                               rtol=0, atol=0)
