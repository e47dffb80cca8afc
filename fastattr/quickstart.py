"""A small real example: explain a digit classifier.

Trains a small MLP on scikit-learn's handwritten digits (shipped with
scikit-learn, nothing is downloaded; seeded, a few seconds on 2 cores),
explains test digits with integrated gradients and SmoothGrad, checks the
completeness of IG and prints one heatmap. Run ``python -m fastattr.quickstart``.
"""
from __future__ import annotations

import torch

import fastattr

_SHADES = " .:-=+*#%@"


def _train_digit_model(seed: int = 0):
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # scikit-learn is a test/example dependency only
        raise SystemExit(
            "the quickstart needs scikit-learn: pip install -e '.[test]'"
        ) from exc
    torch.manual_seed(seed)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # [1797, 64] in [0, 1]
    y = torch.tensor(data.target)
    x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    model.eval()
    return model, x_test, y_test


def _heatmap(values: torch.Tensor) -> str:
    """An 8x8 map of |values| as characters, darkest = largest."""
    v = values.abs().reshape(8, 8)
    v = v / v.max().clamp_min(1e-12)
    idx = (v * (len(_SHADES) - 1)).round().long()
    return "\n".join("".join(_SHADES[i] * 2 for i in row) for row in idx.tolist())


def main() -> None:
    """Train, explain five test digits, print the checks and one heatmap."""
    model, x_test, y_test = _train_digit_model()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    x, y = x_test[:5], y_test[:5]
    attributions, delta = fastattr.integrated_gradients(
        model, x, target=y, n_steps=50, return_convergence_delta=True
    )
    smooth = fastattr.smoothgrad(model, x, target=y, n_samples=50, stdev=0.1, seed=0)
    devices = ", ".join(f"{d}: {how}" for d, how in fastattr.backend_report().items())
    print(f"backend: {fastattr.backend()} ({devices}), test accuracy: {accuracy:.3f}")
    # Completeness: attributions sum to f(x) - f(baseline) up to the
    # quadrature error, which ReLU kinks keep at a few percent at 50 steps.
    relative_gap = (delta.abs() / attributions.sum(1).abs().clamp_min(1e-6)).max().item()
    print(f"integrated gradients: attributions {tuple(attributions.shape)}, "
          f"max |convergence delta| = {delta.abs().max().item():.2e} "
          f"({100 * relative_gap:.1f}% of the attribution sum)")
    print(f"smoothgrad: attributions {tuple(smooth.shape)}")
    print(f"digit {int(y[0])}, integrated gradients |attribution|:")
    print(_heatmap(attributions[0]))
    if relative_gap > 0.1:
        raise SystemExit("integrated gradients are not complete: convergence delta above 10%")


if __name__ == "__main__":
    main()
