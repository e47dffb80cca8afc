"""A data set scored batch by batch, each batch passing the data-set index of
its first example as ``example_offset``, gives the one-call values: every
metric keys its random draws by the data-set index (what the audit's shards
rely on)."""
from __future__ import annotations

from typing import Any, Callable, Dict

import pytest
import torch
from torch import Tensor, nn

from fastattr import metrics

BATCH = 7
SPLITS = [(0, 3), (3, 4), (4, 7)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double().eval()


def _x() -> Tensor:
    return torch.rand(BATCH, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


METRICS: Dict[str, Callable[..., Any]] = {
    "max_sensitivity": lambda m, x, t, o: metrics.max_sensitivity(m, x, t, radius=0.1, n_samples=4,
                                                                  example_offset=o),
    "avg_sensitivity": lambda m, x, t, o: metrics.avg_sensitivity(m, x, t, explainer="integrated_gradients",
                                                                  explainer_kwargs=dict(n_steps=3),
                                                                  n_samples=3, example_offset=o),
    "local_lipschitz_estimate": lambda m, x, t, o: metrics.local_lipschitz_estimate(m, x, t, n_samples=4,
                                                                                    example_offset=o),
    "relative_input_stability": lambda m, x, t, o: metrics.relative_input_stability(m, x, t, n_samples=4,
                                                                                    example_offset=o),
    "infidelity": lambda m, x, t, o: metrics.infidelity(m, x, "saliency", t, n_samples=5, example_offset=o),
    "pixel_flipping": lambda m, x, t, o: metrics.pixel_flipping(m, x, "saliency", t, features_in_step=4,
                                                                baseline="uniform", example_offset=o).values,
    "pgd_accuracy": lambda m, x, t, o: metrics.pgd_accuracy(m, x, t, [0.05, 0.2], n_steps=3, example_offset=o,
                                                            return_adversarial=True).adversarial,
    "fragility": lambda m, x, t, o: metrics.fragility(m, x, t, epsilon=0.3, n_steps=3, example_offset=o,
                                                      return_attacked=True).attacked,
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_batches_with_offsets_equal_one_call(backend: str, name: str) -> None:
    model, x = _model(), _x()
    t = torch.arange(BATCH) % 3
    score = METRICS[name]
    whole = score(model, x, t, 0)
    batch_dim = 1 if name == "pgd_accuracy" else 0  # adversarial inputs [radii, B, *F]
    parts = [score(model, x[a:b], t[a:b], a) for a, b in SPLITS]
    torch.testing.assert_close(torch.cat(parts, dim=batch_dim), whole, rtol=1e-12, atol=1e-12)
    # Keyed as examples 0.. instead of 3..: other draws.
    shifted = score(model, x[3:], t[3:], 0)
    assert not torch.allclose(shifted, whole.narrow(batch_dim, 3, BATCH - 3), rtol=1e-9, atol=0)


@pytest.mark.parametrize("chunk_rows", [1, 5, None])
def test_random_explainer_in_the_per_chunk_route_is_keyed_by_row(backend: str, chunk_rows: Any) -> None:
    """SmoothGrad audited by sensitivity runs per chunk of perturbed copies:
    its own noise is keyed by the (example, sample) group, so the values do
    not depend on the chunking, and a data set scored batch by batch equals
    one call."""
    model, x = _model(), _x()
    t = torch.arange(BATCH) % 3

    def score(xs: Tensor, ts: Tensor, offset: int, rows: Any) -> Tensor:
        return metrics.avg_sensitivity(model, xs, ts, explainer="smoothgrad", explainer_kwargs=dict(n_samples=3),
                                       radius=0.1, n_samples=4, chunk_rows=rows, example_offset=offset)

    whole = score(x, t, 0, None)
    torch.testing.assert_close(score(x, t, 0, chunk_rows), whole, rtol=1e-12, atol=1e-12)
    parts = [score(x[a:b], t[a:b], a, chunk_rows) for a, b in SPLITS]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-12, atol=1e-12)


def test_explainer_kwargs_cannot_set_the_metrics_keys(backend: str) -> None:
    model, x = _model(), _x()
    with pytest.raises(ValueError, match="explainer_kwargs: example_offset"):
        metrics.max_sensitivity(model, x, torch.arange(BATCH) % 3, explainer="smoothgrad",
                                explainer_kwargs=dict(example_offset=3))


@pytest.mark.parametrize("name", ["infidelity", "pixel_flipping"])
def test_clean_explanation_by_a_random_explainer_is_keyed_by_data_set_index(backend: str, name: str) -> None:
    """A metric that computes the clean explanation itself with SmoothGrad keys
    that noise by data-set index too: batches with offsets equal one call."""
    model, x = _model(), _x()
    t = torch.arange(BATCH) % 3

    def score(xs: Tensor, ts: Tensor, offset: int) -> Tensor:
        if name == "infidelity":
            return metrics.infidelity(model, xs, "smoothgrad", ts, n_samples=3, example_offset=offset)
        return metrics.pixel_flipping(model, xs, "smoothgrad", ts, features_in_step=4,
                                      example_offset=offset).values

    whole = score(x, t, 0)
    parts = [score(x[a:b], t[a:b], a) for a, b in SPLITS]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vit_reshape_transform", "default_composite", "no_such_method"])
def test_only_explainers_are_explainer_names(name: str) -> None:
    from fastattr.metrics._explain import Explainer, explainer_names

    with pytest.raises(ValueError, match="explainer: expected one of"):
        Explainer(name)
    assert "score_cam" in explainer_names() and "saliency" in explainer_names()
