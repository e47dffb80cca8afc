"""IROF and ROAD: SLIC superpixels and ROAD's noisy linear imputation in
torch, the two metrics, and their Quantus 0.6 drop-ins.

* SLIC against scikit-image 0.26's ``slic`` (the segmentation Quantus
  calls), on grey and RGB images, square and not, with pieces merged and
  pieces split at the maximum size: the labels are compared pixel by pixel.
  Measured agreement: 100% of pixels on every image here (k-means stage and
  final labels); they may differ only where two centroids are within a
  float64 rounding of each other (colour sums added in another order) --
  see fastattr/metrics/superpixels.py. Structure: labels 0..K-1, each
  segment 4-connected (label 0 also holds the small pieces before the first
  large one, as in scikit-image), deterministic, per image.
* Imputation against a dense float64 solve written from ROAD's definition
  and Quantus's ``noisy_linear_imputation`` (scipy ``spsolve``) with the same
  noise: within ``cond(L_uu) * (tol + 8 eps)`` of the solution's norm, the
  bound conjugate gradients to relative residual ``tol`` guarantee.
* ROAD and IROF against float64 references written from the definitions,
  and against Quantus on the same inputs, segments and draws (Quantus's
  ``np.random`` calls patched to return fastattr's keyed draws): equal
  (ROAD's 0/1 values exactly; IROF's areas to 1e-12 relative in float64, and
  in float32 within twice Quantus's own float32-vs-float64 error).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, List

import numpy as np
import pytest
import scipy.ndimage
import torch
from torch import Tensor, nn

import quantus
import quantus.functions.perturb_func as quantus_perturb
import quantus.helpers.utils as quantus_utils
import skimage.color
import skimage.data
import skimage.segmentation
import skimage.util

import fastattr
from fastattr import ops
from fastattr.metrics.imputation import NEIGHBOUR_WEIGHTS, linear_imputation, noisy_linear_imputation
from fastattr.metrics.irof import IROF_UNIFORM_STREAM, irof
from fastattr.metrics.road import ROAD_NOISE_STREAM, road
from fastattr.metrics.superpixels import (
    connected_pieces, grid_steps, rgb_to_lab, search_order, segment_counts, slic,
)
from fastattr.quantus._irof import IROF
from fastattr.quantus._road import ROAD

warnings.filterwarnings("ignore", module="quantus")
pytestmark = pytest.mark.filterwarnings("ignore:The settings for perturbing input")
EPS64 = float(np.finfo(np.float64).eps)


@pytest.fixture(autouse=True)
def _numpy_trapz(monkeypatch):
    """Quantus 0.6's IROF calls ``np.trapz``, which NumPy 2.4 removed: give it ``np.trapezoid``."""
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


@contextlib.contextmanager
def float64_default() -> Iterator[None]:
    """Quantus feeds the model ``torch.Tensor(x)`` (the default dtype): float64 for float64 runs."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def small_cnn(channels: int, classes: int = 5, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, classes),
    ).to(dtype).eval()


def sensitive_cnn(channels: int) -> nn.Module:
    """``small_cnn`` with its weights tripled: its top class moves when pixels are imputed."""
    model = small_cnn(channels, seed=2 if channels == 1 else 3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


def rough_images(batch: int, channels: int, size: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
                      ).to(dtype)


def smooth_images(batch: int, channels: int, height: int, width: int, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> Tensor:
    """Random images blurred twice (segments with some structure)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, height, width, generator=g, dtype=torch.float64)
    for _ in range(2):
        x = nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return x.to(dtype)


def top_classes(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


# ---------------------------------------------------------------------------
# SLIC
# ---------------------------------------------------------------------------


def skimage_slic(x: Tensor, **kwargs: Any) -> np.ndarray:
    """scikit-image's slic per image, as Quantus's get_superpixel_segments calls it."""
    return np.stack([skimage.segmentation.slic(np.moveaxis(xi, 0, -1), start_label=0, **kwargs)
                     for xi in x.double().numpy()])


def patterned_images(seed: int) -> Tensor:
    """Grey images whose flat regions make clusters larger than the maximum piece size at low compactness."""
    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    g = torch.Generator().manual_seed(seed)
    return torch.stack([((yy * xx) % 7 == 0).double(), (torch.rand(24, 24, generator=g) > 0.5).double()]
                       ).unsqueeze(1)


def photo_crops() -> Tensor:
    """Two 40 x 40 crops of scikit-image's bundled photographs (RGB), in [0, 1]."""
    photos = [skimage.data.astronaut()[100:140, 180:220], skimage.data.coffee()[200:240, 300:340]]
    return torch.from_numpy(np.stack(photos)).movedim(-1, 1).double() / 255.0


SLIC_CASES = [
    ("RGB photographs", photo_crops(), {}),
    ("grey photograph", photo_crops()[:1].mean(1, keepdim=True), {"n_segments": 40}),
    ("grey 8x8 (a segment per pixel)", smooth_images(3, 1, 8, 8, 1), {}),
    ("grey 16x16", smooth_images(3, 1, 16, 16, 2), {}),
    ("grey 20x36", smooth_images(2, 1, 20, 36, 3), {"n_segments": 30}),
    ("RGB 32x32 (CIELAB)", smooth_images(3, 3, 32, 32, 4), {}),
    ("RGB noise (many small pieces merged)", torch.rand(2, 3, 24, 24, dtype=torch.float64), {}),
    ("RGB 17x9, compactness 1", smooth_images(2, 3, 17, 9, 5), {"compactness": 1.0, "n_segments": 12}),
    ("grey patterns, pieces split at max size", patterned_images(6), {"compactness": 0.1, "n_segments": 60}),
]


@pytest.mark.parametrize("name,x,kwargs", SLIC_CASES, ids=[c[0] for c in SLIC_CASES])
def test_slic_labels_equal_scikit_image(name, x, kwargs):
    """Pixel agreement with scikit-image, k-means stage and final labels: 1.0 on every image here."""
    raw = slic(x, enforce_connectivity=False, **kwargs).numpy()
    ours = slic(x, **kwargs).numpy()
    raw_agreement = (raw == skimage_slic(x, enforce_connectivity=False, **kwargs)).mean()
    agreement = (ours == skimage_slic(x, **kwargs)).mean()
    assert (raw_agreement, agreement) == (1.0, 1.0), f"{name}: k-means {raw_agreement:.4f}, final {agreement:.4f}"


def test_slic_splits_and_merges_pieces_there():
    """The patterned case really exercises the maximum-size split, and the RGB noise the small-piece merge."""
    pieces = connected_pieces(slic(patterned_images(6), compactness=0.1, n_segments=60, enforce_connectivity=False))
    order = search_order(pieces)
    assert int(order.max()) >= int(3.0 * 24 * 24 / 64)  # a search runs past max_size
    noise = SLIC_CASES[6][1]
    pieces = connected_pieces(slic(noise, enforce_connectivity=False)).view(2, -1)
    n_pieces = (pieces == torch.arange(pieces.shape[1])).sum(1)
    assert (n_pieces > 3 * segment_counts(slic(noise))).all()


def _components(mask: np.ndarray) -> List[int]:
    labelled, n = scipy.ndimage.label(mask)  # 4-connectivity
    return sorted(np.bincount(labelled.ravel())[1:].tolist(), reverse=True)


STRUCTURE_CASES = [case for case in SLIC_CASES if "noise" not in case[0]]


@pytest.mark.parametrize("name,x,kwargs", STRUCTURE_CASES, ids=[c[0] for c in STRUCTURE_CASES])
def test_slic_structure(name, x, kwargs):
    """Labels 0..K-1, each segment 4-connected but label 0 (which may add pieces smaller than the minimum
    size before the first large one), deterministic, the same alone or in a batch or chunked."""
    labels = slic(x, **kwargs)
    n_segments = kwargs.get("n_segments", 100)
    (y0, sy), (x0, sx) = grid_steps(x.shape[2], x.shape[3], n_segments)
    seeds = len(range(y0, x.shape[2], sy)) * len(range(x0, x.shape[3], sx))
    min_size = int(0.5 * x.shape[2] * x.shape[3] / seeds)
    for image in labels.numpy():
        k = image.max() + 1
        assert sorted(np.unique(image).tolist()) == list(range(k))
        for label in range(k):
            sizes = _components(image == label)
            assert len(sizes) == 1 or (label == 0 and all(s < min_size for s in sizes[1:])), (label, sizes)
    assert torch.equal(labels, slic(x, **kwargs))
    assert torch.equal(labels[-1:], slic(x[-1:], **kwargs))
    assert torch.equal(labels, slic(x, memory_budget=1, **kwargs))  # one image per chunk


def reference_search_order(pieces: np.ndarray) -> np.ndarray:
    """Plain breadth-first search from each piece's first pixel, neighbours right, left, down, up."""
    h, w = pieces.shape
    rank = -np.ones((h, w), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            if rank[y, x] >= 0:
                continue
            queue, rank[y, x] = [(y, x)], 0
            for qy, qx in queue:
                for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                    ny, nx = qy + dy, qx + dx
                    if 0 <= ny < h and 0 <= nx < w and rank[ny, nx] < 0 and pieces[ny, nx] == pieces[y, x]:
                        rank[ny, nx] = len(queue)
                        queue.append((ny, nx))
    return rank


def test_connected_pieces_and_search_order_match_plain_loops():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3, 9, 11), generator=g)
    pieces = connected_pieces(labels)
    for b in range(3):
        for label in range(3):
            found, n = scipy.ndimage.label(labels[b].numpy() == label)
            for piece in range(1, n + 1):
                where = found == piece
                values = pieces[b].numpy()[where]
                assert (values == np.flatnonzero(where.ravel()).min()).all()
        assert (search_order(pieces)[b].numpy() == reference_search_order(pieces[b].numpy())).all()


def test_grid_and_lab_match_scikit_image():
    for h, w, n in [(8, 8, 100), (16, 16, 100), (32, 32, 100), (20, 36, 30), (224, 224, 100), (3, 50, 10),
                    (17, 9, 12), (64, 64, 121), (5, 7, 35), (1, 40, 4)]:
        slices = skimage.util.regular_grid((1, h, w), n)
        expected = tuple((int(s.start or 0), int(s.step or 1)) for s in slices[1:])
        assert grid_steps(h, w, n) == expected, (h, w, n)
    rgb = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    expected = skimage.color.rgb2lab(rgb.movedim(1, -1).numpy())
    assert np.allclose(rgb_to_lab(rgb).movedim(1, -1).numpy(), expected, rtol=0, atol=1e-12)


def test_slic_bad_input():
    x = torch.rand(1, 3, 8, 8)
    for kwargs, name in [({"images": x[0]}, "images"), ({"images": x.long()}, "images"),
                         ({"images": x * float("nan")}, "images"), ({"n_segments": 0}, "n_segments"),
                         ({"compactness": 0.0}, "compactness"), ({"max_num_iter": 0}, "max_num_iter"),
                         ({"images": x[:, :2], "convert2lab": True}, "convert2lab")]:
        args = {"images": x, **kwargs}
        with pytest.raises(ValueError, match=name):
            slic(**args)


# ---------------------------------------------------------------------------
# Noisy linear imputation
# ---------------------------------------------------------------------------


def dense_system(removed: np.ndarray, h: int, w: int):
    """ROAD's system from its definition, dense: ``A v = r(x)`` over the removed pixels (in the order given)."""
    where = {int(p): i for i, p in enumerate(removed)}
    a = np.zeros((len(removed), len(removed)))
    known = []
    for i, p in enumerate(removed):
        y, x = divmod(int(p), w)
        for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
            if 0 <= y + dy < h and 0 <= x + dx < w:
                q = (y + dy) * w + x + dx
                a[i, i] += weight
                if q in where:
                    a[i, where[q]] -= weight
                else:
                    known.append((i, q, weight))
    return a, known


def reference_imputation(x: np.ndarray, removed: np.ndarray, noise: np.ndarray):
    """float64 ``[C, H, W]`` imputed by a dense solve, plus ``noise`` ``[C, H, W]``; and cond(A)."""
    c, h, w = x.shape
    a, known = dense_system(removed, h, w)
    flat = x.reshape(c, -1)
    rhs = np.zeros((len(removed), c))
    for i, q, weight in known:
        rhs[i] += weight * flat[:, q]
    out = flat.copy()
    if len(removed):
        out[:, removed] = np.linalg.solve(a, rhs).T + noise.reshape(c, -1)[:, removed]
    return out.reshape(c, h, w), (np.linalg.cond(a) if len(removed) else 1.0)


def random_masks(n: int, h: int, w: int, fractions: List[float], seed: int):
    g = torch.Generator().manual_seed(seed)
    orders = torch.stack([torch.randperm(h * w, generator=g) for _ in range(n)])
    counts = [int(h * w * f) for f in fractions]
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    for i, k in enumerate(counts):
        mask[i, orders[i, :k]] = True
    return orders, counts, mask.view(n, h, w)


@pytest.mark.parametrize("c,h,w", [(1, 8, 8), (3, 12, 10), (1, 16, 16)])
def test_imputation_matches_dense_solve_and_quantus(c, h, w):
    fractions = [0.0, 0.01, 0.3, 0.7, 0.99]
    n = len(fractions)
    g = torch.Generator().manual_seed(c * h)
    x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    z = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    orders, counts, mask = random_masks(n, h, w, fractions, seed=h)
    tol = 1e-10
    ours = noisy_linear_imputation(x, mask, 0.01 * z, tol=tol).numpy()
    for i, k in enumerate(counts):
        removed = orders[i, :k].numpy()
        expected, cond = reference_imputation(x[i].numpy(), removed, (0.01 * z[i]).numpy())
        bound = cond * (tol + 8 * EPS64) * np.linalg.norm(expected)
        assert np.linalg.norm(ours[i] - expected) <= bound, (i, np.linalg.norm(ours[i] - expected), bound)
        # Quantus on the same noise: its np.random.randn returns z at the removed pixels, in its index order.
        calls = []

        def randn(*shape, _i=i, _removed=removed):
            calls.append(shape)
            return z[_i].reshape(c, -1)[:, _removed].numpy().reshape(shape)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(np.random, "randn", randn)
            theirs = quantus_perturb.noisy_linear_imputation(x[i].numpy(), removed, noise=0.01)
        assert len(calls) == 1 and np.prod(calls[0]) == c * k  # (c, k), or (k,) when spsolve drops c == 1
        assert np.linalg.norm(ours[i] - theirs) <= bound + cond * 8 * EPS64 * np.linalg.norm(theirs)


def test_imputation_keeps_kept_pixels_and_rounds_to_the_input_dtype():
    x = torch.rand(2, 2, 6, 6)
    _, _, mask = random_masks(2, 6, 6, [0.5, 0.9], seed=1)
    out = noisy_linear_imputation(x, mask)
    assert out.dtype == torch.float32
    assert torch.equal(out[~mask.unsqueeze(1).expand_as(x)], x[~mask.unsqueeze(1).expand_as(x)])
    assert torch.equal(out, linear_imputation(x, mask).float())
    # Each system's result does not depend on the others in the call.
    assert torch.equal(noisy_linear_imputation(x[1:], mask[1:]), out[1:])


def test_imputation_bad_input_and_unconverged():
    x = torch.rand(1, 1, 6, 6)
    with pytest.raises(ValueError, match="mask"):
        noisy_linear_imputation(x, torch.ones(1, 6, 6, dtype=torch.bool))  # nothing kept
    with pytest.raises(ValueError, match="mask"):
        noisy_linear_imputation(x, torch.ones(1, 6, 6))
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_imputation(x, torch.zeros(1, 6, 6, dtype=torch.bool), torch.zeros(1, 6, 6))
    with pytest.raises(ValueError, match="tol"):
        noisy_linear_imputation(x, torch.zeros(1, 6, 6, dtype=torch.bool), tol=0.0)
    _, _, mask = random_masks(1, 6, 6, [0.9], seed=2)
    with pytest.raises(RuntimeError, match="max_iter"):
        linear_imputation(x, mask, max_iter=1)


# ---------------------------------------------------------------------------
# ROAD
# ---------------------------------------------------------------------------

PERCENTAGES = [0, 5, 30, 50, 70, 90, 99]


def keyed_unit_noise(x: Tensor, points: int, seed: int = 0) -> Tensor:
    """``z`` of every row ``b * P + i``: ROAD's keyed standard normal draws."""
    zeros = torch.zeros(x.shape, dtype=torch.float64)
    return ops.generate_rows(zeros, None, None, points, "gaussian", 1.0, seed, ROAD_NOISE_STREAM, 0,
                             x.shape[0] * points, 0)


def reference_road(model: nn.Module, x: Tensor, a: Tensor, y: Tensor, percentages, noise: float, seed: int = 0):
    """float64 [B, P] from the definition: stable order, dense solves, one model call per row."""
    b, c, h, w = x.shape
    z = keyed_unit_noise(x, len(percentages), seed).view(b, len(percentages), c, h, w)
    out = np.zeros((b, len(percentages)))
    model = model.double()
    for e in range(b):
        order = np.argsort(-a[e].reshape(-1).double().numpy(), kind="stable")
        for i, p in enumerate(percentages):
            removed = order[:int(h * w * p / 100)]
            row, _ = reference_imputation(x[e].double().numpy(), removed, (noise * z[e, i]).numpy())
            with torch.no_grad():
                prob = torch.softmax(model(torch.from_numpy(row).unsqueeze(0)), 1)
            out[e, i] = float(int(prob.argmax()) == int(y[e]))
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_road_matches_reference(channels):
    """Grey and RGB (one attribution per pixel, every channel imputed), float64."""
    model = sensitive_cnn(channels)
    x = rough_images(4, channels, 10, seed=channels)
    a = torch.rand(4, 1, 10, 10, dtype=torch.float64)
    y = top_classes(model, x)
    got = road(model, x, a, y, percentages=PERCENTAGES, noise=0.05, seed=0)
    assert got.dtype == torch.float64 and got.shape == (4, len(PERCENTAGES))
    assert np.array_equal(got.numpy(), reference_road(model, x, a, y, PERCENTAGES, 0.05))
    assert got[:, 0].eq(1).all() and got.min() == 0  # the curve falls: the test is not vacuous


def quantus_randn_from_keyed(x: Tensor, order: np.ndarray, percentages, seed: int = 0, batch_size: int = 64):
    """Quantus's np.random.randn calls (per batch of ``batch_size``, per percentage, per example) return
    fastattr's keyed z of that row at the removed pixels, in Quantus's index order."""
    b, c, h, w = x.shape
    z = keyed_unit_noise(x, len(percentages), seed).view(b, len(percentages), c, h * w).numpy()
    rows = [(i, e) for s in range(0, b, batch_size) for i in range(len(percentages))
            for e in range(s, min(s + batch_size, b))]
    calls = []

    def randn(*shape):
        i, e = rows[len(calls)]
        removed = order[e, :int(h * w * percentages[i] / 100)]
        calls.append(shape)
        assert np.prod(shape) == c * len(removed)  # (c, k), or (k,) where spsolve drops c == 1
        return z[e, i][:, removed].reshape(shape)

    return randn, calls


def test_road_drop_in_equals_quantus_on_the_same_noise():
    """float64, Quantus's defaults but the percentages; its np.random.randn returns fastattr's keyed draws."""
    model = sensitive_cnn(1)
    x = rough_images(4, 1, 12, seed=3)
    y = top_classes(model, x)
    a = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    order = np.argsort(-a.reshape(4, -1).numpy(), axis=1)
    randn, calls = quantus_randn_from_keyed(x, order, PERCENTAGES)
    with float64_default(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(np.random, "randn", randn)
        theirs = quantus.ROAD(percentages=PERCENTAGES, noise=0.05, disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu")
    assert len(calls) == 4 * len(PERCENTAGES)
    ours = ROAD(percentages=PERCENTAGES, noise=0.05, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu")
    assert ours == theirs and list(ours) == PERCENTAGES
    assert len(set(ours.values())) > 1


def test_road_curve_equals_quantus_on_the_same_imputed_rows():
    """float32, Quantus's default percentages: Quantus's perturb_func returns fastattr's imputed rows."""
    from fastattr.metrics.road import ImputedRows, removed_counts
    from fastattr.metrics.deletion import ranks_of

    model = sensitive_cnn(1).float()
    x = rough_images(5, 1, 8, seed=4, dtype=torch.float32)
    y = top_classes(model, x)
    a = torch.rand(5, 1, 8, 8)
    metric = quantus.ROAD(disable_warnings=True)
    order = np.argsort(-a.reshape(5, -1).numpy(), axis=1)
    counts = torch.tensor(removed_counts(metric.percentages, 64))
    rows = ImputedRows(x, ranks_of(torch.from_numpy(order)), counts, 0.01, 0, 0, 1e-12)(0, 5 * len(counts))[0]
    given = []

    def imputed(arr, indices):
        i, e = divmod(len(given), 5)
        given.append(indices)
        assert np.array_equal(indices, order[e, :counts[i]])
        return rows[e * len(counts) + i].numpy()

    metric.perturb_func = imputed
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu")
    ours = ROAD(disable_warnings=True)(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    assert ours == theirs and len(set(ours.values())) > 1


def test_road_same_for_any_batch_and_chunking():
    model = sensitive_cnn(1)
    x = rough_images(4, 1, 8, seed=5)
    a = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    y = top_classes(model, x)
    whole = road(model, x, a, y, percentages=PERCENTAGES, noise=0.2, seed=3)
    assert torch.equal(whole, road(model, x, a, y, percentages=PERCENTAGES, noise=0.2, seed=3, chunk_rows=3))
    for b in range(4):
        alone = road(model, x[b:b + 1], a[b:b + 1], y[b:b + 1], percentages=PERCENTAGES, noise=0.2, seed=3,
                     example_offset=b)
        assert torch.equal(alone[0], whole[b])


def test_road_drop_in_averages_every_example_where_quantus_keeps_its_first_batch():
    model = sensitive_cnn(1)
    x = rough_images(6, 1, 8, seed=6)
    a = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = top_classes(model, x)
    order = np.argsort(-a.reshape(6, -1).numpy(), axis=1)
    randn, _ = quantus_randn_from_keyed(x, order, PERCENTAGES, batch_size=3)
    with float64_default(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(np.random, "randn", randn)
        theirs = quantus.ROAD(percentages=PERCENTAGES, disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", batch_size=3)
    per_example = road(model, x, a, y, percentages=PERCENTAGES, order=torch.from_numpy(order))
    assert list(theirs.values()) == per_example[:3].mean(0).tolist()  # Quantus: its first batch only
    ours = ROAD(percentages=PERCENTAGES, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", batch_size=3)
    assert list(ours.values()) == per_example.mean(0).tolist() != list(theirs.values())


def test_road_multichannel_where_quantus_fails():
    model = sensitive_cnn(3)
    x = rough_images(2, 3, 8, seed=7)
    a = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    y = top_classes(model, x)
    with float64_default(), pytest.raises(IndexError):
        quantus.ROAD(disable_warnings=True)(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                                            a_batch=a.numpy(), device="cpu")
    ours = ROAD(percentages=PERCENTAGES, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.expand(2, 3, 8, 8).numpy(), device="cpu")
    expected = reference_road(model, x, a, y, PERCENTAGES, 0.01).mean(0)
    assert list(ours.values()) == expected.tolist()


def test_road_drop_in_explain_func_and_aggregate():
    model = sensitive_cnn(1).float()
    x = rough_images(3, 1, 8, seed=8, dtype=torch.float32)
    y = top_classes(model, x)
    metric = ROAD(percentages=[10, 50], disable_warnings=True)
    got = metric(model=model, x_batch=x, y_batch=y, explain_func=fastattr.saliency)
    a = fastattr.saliency(model, x, target=y)
    assert got == {p: v for p, v in zip([10, 50], road(model, x, a, y, percentages=[10, 50]).mean(0).tolist())}
    with pytest.warns(UserWarning, match="aggregate_func"):  # np.mean fails on the dict: Quantus keeps it
        assert ROAD(percentages=[10, 50], return_aggregate=True, disable_warnings=True)(
            model=model, x_batch=x, y_batch=y, a_batch=a) == got
    summed = ROAD(percentages=[10, 50], return_aggregate=True, aggregate_func=lambda d: sum(d.values()),
                  disable_warnings=True)(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert summed == [sum(got.values())]


@pytest.mark.parametrize("kwargs,error,name", [
    ({"percentages": [100]}, ValueError, "percentages"),
    ({"percentages": [-1]}, ValueError, "percentages"),
    ({"percentages": "10"}, TypeError, "percentages"),
    ({"noise": -0.1}, ValueError, "noise"),
    ({"tol": 0}, ValueError, "tol"),
    ({"seed": -1}, ValueError, "seed"),
    ({"perturb_func": quantus_perturb.gaussian_noise}, NotImplementedError, "perturb_func"),
    ({"perturb_func_kwargs": {"indexed_axes": [0]}}, NotImplementedError, "perturb_func_kwargs"),
])
def test_road_drop_in_bad_options(kwargs, error, name):
    with pytest.raises(error, match=name):
        ROAD(disable_warnings=True, **kwargs)


def test_road_bad_input_fails_before_compute():
    model = small_cnn(3)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    a = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    bad = [
        ({"inputs": x.reshape(2, -1)}, "inputs"),
        ({"target": None}, "target"),
        ({"target": (0, 1)}, "target"),
        ({"attributions": torch.rand(2, 3, 8, 8, dtype=torch.float64)}, "attributions"),
        ({"order": torch.zeros(2, 64, dtype=torch.int64)}, "order"),
        ({"percentages": [50, 100]}, "percentages"),
        ({"noise": float("nan")}, "noise"),
        ({"output": "logits"}, "output"),
    ]
    for kwargs, name in bad:
        args = {"model": model, "inputs": x, "attributions": a, "target": 0, **kwargs}
        with pytest.raises((ValueError, TypeError), match=name):
            road(**args)
    with pytest.raises(ValueError, match="a_batch"):
        ROAD(disable_warnings=True)(model=model, x_batch=x, y_batch=torch.zeros(2, dtype=torch.int64),
                                    a_batch=torch.rand(2, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(NotImplementedError, match="model_predict_kwargs"):
        ROAD(disable_warnings=True)(model=model, x_batch=x, y_batch=torch.zeros(2, dtype=torch.int64), a_batch=a,
                                    model_predict_kwargs={"t": 1})
    assert calls == []


# ---------------------------------------------------------------------------
# IROF
# ---------------------------------------------------------------------------


def reference_irof(model: nn.Module, x: Tensor, a: Tensor, y: Tensor, segments: Tensor, baseline: Any,
                   fill_values: Tensor = None) -> np.ndarray:
    """float64 areas over the curve from the definition, one example and step at a time."""
    model = model.double()
    out = []
    for e in range(x.shape[0]):
        image, seg = x[e].double().numpy(), segments[e].numpy()
        attr = np.broadcast_to(a[e].double().numpy(), image.shape)
        k = seg.max() + 1
        means = np.array([attr[:, seg == s].mean() for s in range(k)])
        with torch.no_grad():
            clean = torch.softmax(model(torch.from_numpy(image)[None]), 1)[0, y[e]].item()
        current, ratios = image.copy(), []
        for s in np.argsort(-means, kind="stable"):
            if baseline == "mean":
                value = current.mean()
            elif baseline in ("black", "white"):
                value = image.min() if baseline == "black" else image.max()
            elif baseline == "uniform":
                value = fill_values[e].numpy()
            else:
                value = baseline
            current = np.where(seg[None] == s, value, current)
            with torch.no_grad():
                ratios.append(torch.softmax(model(torch.from_numpy(current)[None]), 1)[0, y[e]].item() / clean)
        out.append(k - np.trapezoid(ratios))
    return np.array(out)


def keyed_uniform_fill(x: Tensor, low: float = 0.0, high: float = 1.0, seed: int = 0) -> Tensor:
    z = ops.generate_rows(torch.zeros(x.shape, dtype=torch.float64), None, None, 1, "uniform", 1.0, seed,
                          IROF_UNIFORM_STREAM, 0, x.shape[0], 0)
    return low + (high - low) * ((z + 1.0) / 2.0)


@pytest.mark.parametrize("baseline", ["mean", "black", "white", "uniform", 0.25])
def test_irof_matches_reference(baseline):
    model = small_cnn(1)
    x = smooth_images(3, 1, 12, 12, seed=9)
    a = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    y = top_classes(model, x)
    segments = slic(x, n_segments=20)
    got = irof(model, x, a, y, baseline=baseline, n_segments=20)
    expected = reference_irof(model, x, a, y, segments, baseline, keyed_uniform_fill(x))
    assert torch.equal(got.segment_counts, segment_counts(segments))
    assert np.allclose(got.aoc.numpy(), expected, rtol=1e-12, atol=0), got.aoc.numpy() - expected
    # Segments given as an argument: scikit-image's Felzenszwalb, relabelled 0..K-1.
    felz = torch.from_numpy(np.stack([skimage.segmentation.felzenszwalb(xi[0], scale=1, sigma=0, min_size=5)
                                      for xi in x.numpy()]))
    got = irof(model, x, a, y, segments=felz, baseline=baseline)
    assert np.allclose(got.aoc.numpy(), reference_irof(model, x, a, y, felz, baseline, keyed_uniform_fill(x)),
                       rtol=1e-12, atol=0)


def quantus_irof(x: Tensor, a: Tensor, y: Tensor, model: nn.Module, segments: Tensor, **kwargs: Any) -> np.ndarray:
    """Quantus's IROF with its get_superpixel_segments returning ``segments`` for each image."""
    images = [np.moveaxis(xi, 0, -1) for xi in x.double().numpy()]

    def segment(img, segmentation_method):
        (found,) = [i for i, image in enumerate(images) if np.array_equal(image, img)]
        return segments[found].numpy()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantus_utils, "get_superpixel_segments", segment)
        return np.array(quantus.IROF(disable_warnings=True, return_aggregate=False, **kwargs)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu"))


def irof_case(channels: int = 1, dtype: torch.dtype = torch.float64, seed: int = 10):
    model = small_cnn(channels, dtype=dtype)
    x = smooth_images(3, channels, 12, 12, seed=seed, dtype=dtype)
    a = torch.rand(3, 1, 12, 12, dtype=dtype)
    return model, x, a, top_classes(model, x)


@pytest.mark.parametrize("baseline", ["mean", "black", 0.25, "uniform"])
def test_irof_equals_quantus_per_example(baseline):
    """float64, one example per Quantus call (its fills and padding span the batch), the same segments
    (Quantus's own scikit-image SLIC: fastattr's equal them here) and, for "uniform", the same draws."""
    model, x, a, y = irof_case()
    segments = slic(x, n_segments=30)
    options = {"perturb_baseline": baseline, "perturb_func_kwargs": {"uniform_low": -1.0, "uniform_high": 2.0}}
    fill = keyed_uniform_fill(x, -1.0, 2.0)
    theirs = []
    for e in range(3):
        def uniform(low=0.0, high=1.0, size=None, _e=e):
            assert (low, high) == (-1.0, 2.0)
            return fill[_e:_e + 1].numpy().reshape(size)

        with float64_default(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(np.random, "uniform", uniform)
            theirs.append(quantus_irof(x[e:e + 1], a[e:e + 1], y[e:e + 1], model, segments[e:e + 1], **options)[0])
    ours = irof(model, x, a, y, segments=segments, baseline=baseline, uniform_low=-1.0, uniform_high=2.0)
    assert np.allclose(ours.aoc.numpy(), theirs, rtol=1e-12, atol=0), ours.aoc.numpy() - theirs
    assert np.array_equal(segments.numpy(), skimage_slic(x, n_segments=30))


@pytest.mark.parametrize("baseline", ["mean", "white", 0.25])
def test_irof_drop_in_equals_quantus_with_its_own_segmentation(baseline):
    """Nothing patched: Quantus segments with scikit-image, the drop-in with fastattr's SLIC (float64,
    one example per Quantus call)."""
    model, x, a, y = irof_case(seed=16)
    with float64_default():
        theirs = [quantus.IROF(disable_warnings=True, return_aggregate=False, perturb_baseline=baseline)(
            model=model, x_batch=x[e:e + 1].numpy(), y_batch=y[e:e + 1].numpy(), a_batch=a[e:e + 1].numpy(),
            device="cpu")[0] for e in range(3)]
    ours = IROF(disable_warnings=True, return_aggregate=False, perturb_baseline=baseline)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu")
    assert np.allclose(ours, theirs, rtol=1e-12, atol=0)


def test_irof_per_example_where_quantus_spans_the_batch():
    """Quantus's mean fill is the whole batch's mean and shorter curves are padded with zeros; fastattr's
    score of an example is the same alone and in the batch."""
    model, x, a, y = irof_case(seed=11)
    segments = slic(x, n_segments=30)
    segments[0] = torch.div(segments[0], 2, rounding_mode="floor")  # fewer segments in example 0
    whole = irof(model, x, a, y, segments=segments)
    with float64_default():
        batch = quantus_irof(x, a, y, model, segments)
        alone = np.array([quantus_irof(x[e:e + 1], a[e:e + 1], y[e:e + 1], model, segments[e:e + 1])[0]
                          for e in range(3)])
        black = quantus_irof(x, a, y, model, segments, perturb_baseline=0.25)
    assert np.allclose(whole.aoc.numpy(), alone, rtol=1e-12, atol=0)
    assert np.abs(batch - alone).min() > 1e-6  # every example moves with its batch in Quantus
    # With a fixed fill only the padding differs: half the last value of a shorter curve.
    fixed = irof(model, x, a, y, segments=segments, baseline=0.25)
    short = int(fixed.segment_counts[0]) - 1
    assert np.isclose(black[0], fixed.aoc[0].item() - 0.5 * fixed.values[0, short].item(), rtol=1e-12, atol=0)
    assert np.allclose(black[1:], fixed.aoc[1:].numpy(), rtol=1e-12, atol=0)
    for e in range(3):
        one = irof(model, x[e:e + 1], a[e:e + 1], y[e:e + 1], segments=segments[e:e + 1])
        assert torch.equal(one.aoc[0], whole.aoc[e])
    assert torch.equal(whole.aoc, irof(model, x, a, y, segments=segments, chunk_rows=5).aoc)


def test_irof_multichannel_where_quantus_fails():
    """Quantus 0.6's one-channel mask fails on RGB; with the mask broadcast over channels it equals fastattr."""
    model, x, a, y = irof_case(channels=3, seed=12)
    segments = slic(x)  # the drop-in's segmentation
    with float64_default(), pytest.raises(AssertionError, match="shape"):
        quantus_irof(x[:1], a[:1], y[:1], model, segments[:1])
    real = quantus_perturb.baseline_replacement_by_mask

    def broadcast_mask(arr, mask, **kwargs):
        return real(arr, np.broadcast_to(mask, arr.shape), **kwargs)

    theirs = []
    for e in range(3):
        with float64_default(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(quantus.metrics.faithfulness.irof, "baseline_replacement_by_mask", broadcast_mask)
            theirs.append(quantus_irof(x[e:e + 1], a[e:e + 1], y[e:e + 1], model, segments[e:e + 1])[0])
    ours = IROF(disable_warnings=True, return_aggregate=False)(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert np.allclose(ours, theirs, rtol=1e-12, atol=0)


def test_irof_float32_within_quantus_own_rounding():
    """float32, Quantus's defaults: fastattr's error against float64 is at most twice Quantus's own."""
    model, x, a, y = irof_case(dtype=torch.float32, seed=13)
    segments = slic(x, n_segments=30)
    theirs32 = np.array([quantus_irof(x[e:e + 1], a[e:e + 1], y[e:e + 1], model, segments[e:e + 1])[0]
                         for e in range(3)])
    exact = irof(small_cnn(1), x.double(), a.double(), y, segments=segments).aoc.numpy()
    ours32 = irof(model, x, a, y, segments=segments).aoc.numpy()
    quantus_error = np.abs(theirs32 - exact).max()
    assert 0 < quantus_error and np.abs(ours32 - exact).max() <= 2 * quantus_error


def test_irof_drop_in_call_forms():
    model, x, a, y = irof_case(dtype=torch.float32, seed=14)
    metric = IROF(disable_warnings=True)
    aggregate = metric(model=model, x_batch=x, y_batch=y, explain_func=fastattr.saliency)
    # the drop-in runs the model eagerly (Quantus's numbers); the functional API's default is "fast"
    per_example = irof(model, x, fastattr.saliency(model, x, target=y, model_form="eager"), y,
                       model_form="eager").aoc
    assert len(aggregate) == 1 and np.isclose(aggregate[0], per_example.mean().item(), rtol=1e-12)
    assert metric.get_aoc_score == aggregate[0]
    logits = IROF(disable_warnings=True, return_aggregate=False)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy()[:, 0], softmax=False)
    assert np.allclose(logits, irof(model, x, a, y, output="logit", model_form="eager").aoc.numpy(), rtol=1e-12)


@pytest.mark.parametrize("kwargs,error,name", [
    ({"segmentation_method": "felzenszwalb"}, NotImplementedError, "segmentation_method"),
    ({"segmentation_method": "quickshift"}, ValueError, "segmentation_method"),
    ({"perturb_func": quantus_perturb.baseline_replacement_by_indices}, NotImplementedError, "perturb_func"),
    ({"perturb_baseline": "random"}, ValueError, "perturb_baseline"),
    ({"perturb_baseline": "zeros"}, ValueError, "perturb_baseline"),
    ({"perturb_baseline": np.zeros(3)}, NotImplementedError, "perturb_baseline"),
    ({"perturb_func_kwargs": {"blur": 1}}, NotImplementedError, "perturb_func_kwargs"),
    ({"seed": 1.5}, ValueError, "seed"),
])
def test_irof_drop_in_bad_options(kwargs, error, name):
    with pytest.raises(error, match=name):
        IROF(disable_warnings=True, **kwargs)


def test_irof_bad_input_fails_before_compute():
    model, x, a, y = irof_case()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    segments = slic(x, n_segments=30)
    holes = segments.clone()
    holes[holes == 1] = 0  # label 1 missing
    bad = [
        ({"inputs": x[:, 0]}, ValueError, "inputs"),
        ({"segments": segments[:, :4]}, ValueError, "segments"),
        ({"segments": segments.double()}, TypeError, "segments"),
        ({"segments": holes}, ValueError, "segments"),
        ({"segments": torch.zeros_like(segments)}, ValueError, "segments"),
        ({"baseline": "blur"}, ValueError, "baseline"),
        ({"baseline": "uniform", "uniform_low": float("inf")}, ValueError, "uniform_low"),
        ({"attributions": a[:, :, :4]}, ValueError, "attributions"),
        ({"output": "logits"}, ValueError, "output"),
    ]
    for kwargs, error, name in bad:
        args = {"model": model, "inputs": x, "attributions": a, "target": y, **kwargs}
        with pytest.raises(error, match=name):
            irof(**args)
    with pytest.raises(ValueError, match="segments"):  # a single pixel: one segment
        irof(model, torch.zeros(1, 1, 1, 1, dtype=torch.float64), torch.ones(1, 1, 1, 1, dtype=torch.float64), 0)
    with pytest.raises(NotImplementedError, match="model_predict_kwargs"):
        IROF(disable_warnings=True)(model=model, x_batch=x, y_batch=y, a_batch=a, model_predict_kwargs={"t": 1})
    assert calls == []


@pytest.mark.parametrize("metric", ["irof", "road"])
def test_caller_objects_unchanged(metric):
    model = small_cnn(1, dtype=torch.float32)
    model.train()
    model[0].weight.requires_grad_(False)
    x = smooth_images(2, 1, 8, 8, seed=15, dtype=torch.float32)
    y = torch.tensor([0, 1])
    a = torch.rand(2, 1, 8, 8)
    before = (x.clone(), a.clone(), [p.detach().clone() for p in model.parameters()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if metric == "irof":
            irof(model, x, a, y, n_segments=20)
        else:
            road(model, x, a, y, percentages=[10, 60])
    assert model.training and not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert torch.equal(x, before[0]) and torch.equal(a, before[1])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before[2]))
