"""Model robustness: accuracy under L-infinity FGSM (Goodfellow et al. 2015)
and PGD (Madry et al. 2018) attacks, for several radii at once.

The loss gradients run on the engine (the cross-entropy of each row is the
"model output", so chunks are sized to the memory budget like any
explainer's); predictions run forward-only in budgeted chunks. PGD's random
start is keyed by (seed, PURPOSE_ATTACK, example, radius index, element), so
an example's result does not depend on the batch it comes in.
"""
from __future__ import annotations

import dataclasses
import math
from numbers import Real
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validate as v
from .. import ops
from ..attr._call import build_request
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_ATTACK, Request, run, single_point_plan
from ..engine import budget as _budget
from ..engine.loop import row_examples
from ..engine.model_form import check_model_form
from ..engine.outputs import per_example_flags, rows_args
from ..engine.train_mode import train_mode_guarded
from .formed_model import FormedModel

Clamp = Optional[Tuple[float, float]]


class AttackAccuracy(NamedTuple):
    """Accuracy under attack, per radius."""

    accuracy: Tensor  # float64 [E]: fraction of examples still classified right
    correct: Tensor  # bool [E, B]: example b still classified right at radius e
    adversarial: Optional[Tensor]  # [E, B, *F] the attacked inputs, when asked for


class _CrossEntropy(nn.Module):
    """``model`` (run in ``model_form``) followed by the per-row cross-entropy
    against ``labels``: the engine's "target output", whose input gradient is
    the attack direction."""

    def __init__(self, model: Callable[..., Tensor], model_form: str = "eager") -> None:
        super().__init__()
        self.model = model  # a submodule, so that the engine guards its train-mode statistics
        # The form is taken of the caller's model (its copy cached across calls), not of this
        # wrapper made per call.
        self.formed = FormedModel(model, model_form)

    def forward(self, x: Tensor, labels: Tensor, *args: Any) -> Tensor:
        return F.cross_entropy(self.formed(x, *args), labels, reduction="none")


# -- argument checks ---------------------------------------------------------


def check_attack_inputs(model: Any, inputs: Any) -> Tensor:
    """The one input tensor ``[B, *F]`` an attack perturbs, detached."""
    if not callable(model):
        raise TypeError(f"model: expected a callable (an nn.Module or a function), got {type(model).__name__}")
    if isinstance(inputs, tuple):
        raise TypeError("inputs: attacks take one tensor [B, *F], not a tuple of inputs")
    (x,), _ = v.format_inputs(inputs)
    return x.detach()


def check_labels(labels: Any, batch: int, device: torch.device) -> Tensor:
    """int64 ``[B]`` labels on ``device``."""
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor [B], got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (batch,):
        raise ValueError(f"labels: expected shape [{batch}] (one class per example), got {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.int64)


def check_epsilons(epsilons: Union[float, Sequence[float]]) -> Tuple[float, ...]:
    """Attack radii: a finite number >= 0 or a non-empty sequence of them."""
    items = tuple(epsilons) if isinstance(epsilons, (list, tuple, Tensor)) else (epsilons,)
    items = tuple(e.item() if isinstance(e, Tensor) else e for e in items)
    if not items or any(isinstance(e, bool) or not isinstance(e, Real) or not math.isfinite(e) or e < 0 for e in items):
        raise ValueError(f"epsilons: expected finite numbers >= 0 (one or a list), got {epsilons!r}")
    return tuple(float(e) for e in items)


def check_clamp(clamp: Any) -> Clamp:
    """None or a valid input range ``(low, high)``, ``low < high``."""
    if clamp is None:
        return None
    ok = isinstance(clamp, (tuple, list)) and len(clamp) == 2 and all(
        isinstance(c, Real) and not isinstance(c, bool) and math.isfinite(c) for c in clamp
    )
    if not ok or not clamp[0] < clamp[1]:
        raise ValueError(f"clamp: expected None or (low, high) with low < high, got {clamp!r}")
    return float(clamp[0]), float(clamp[1])


# -- shared pieces -------------------------------------------------------------


def loss_gradient_request(
    model: Callable[..., Tensor], rows: Tensor, labels: Tensor, args: Tuple[Any, ...],
    memory_budget: Optional[int], chunk_rows: Optional[int], model_form: str = "eager",
) -> Request:
    """The engine request whose result is d cross-entropy(model(rows[n]), labels[n]) / d rows[n],
    checked once; :func:`loss_gradients` reruns it on moved rows.

    Args:
        rows: ``[N, *F]``; labels: int64 ``[N]``; args: extra model arguments,
            batched ones already ``[N, ...]``.
        model_form: the form ``model`` runs in (a
            :class:`~fastattr.metrics.formed_model.FormedModel`: with
            ``"compiled"``, chunks of the size of the request's first chunk run compiled).
    """
    req, _ = build_request(
        _CrossEntropy(model, model_form), rows, None, (labels, *args), lambda xs: single_point_plan("grad"),
        memory_budget, chunk_rows, model_form="eager",
    )
    return req


def loss_gradients(req: Request, rows: Tensor) -> Tensor:
    """``[N, *F]``: the loss gradient of ``req`` at ``rows`` (``[N, *F]``, same shape)."""
    return run(dataclasses.replace(req, inputs=(rows.detach(),))).mean[0]


def predicted_classes(
    model: Callable[..., Tensor], rows_for: Callable[[int, int], Tensor], total: int,
    args: Tuple[Any, ...], like: Tensor, memory_budget: Optional[int], chunk_rows: Optional[int],
    model_form: str = "eager",
) -> Tensor:
    """int64 ``[total]``: ``argmax model(row r)``, forward-only in budgeted chunks.

    Args:
        rows_for: ``rows_for(r0, r1)`` gives rows ``r0 .. r1-1`` ``[r1 - r0, *F]``.
        args: extra model arguments, batched ones ``[total, ...]``.
        like: one row ``[1, *F]`` (size, device).
        model_form: the form ``model`` runs in (:class:`~fastattr.metrics.formed_model.FormedModel`).
    """
    model = FormedModel(model, model_form)
    device = like.device
    chunk = _budget.unmeasured_chunk_rows((like,), memory_budget, total, chunk_rows)
    batched = per_example_flags(args)
    out = torch.empty(total, dtype=torch.int64, device=device)
    with torch.no_grad(), train_mode_guarded(model):
        for r0 in range(0, total, chunk):
            r1 = min(total, r0 + chunk)
            rows = row_examples(r0, r1, 1, device)
            out[r0:r1] = model(rows_for(r0, r1), *rows_args(args, batched, rows, r1 - r0)).argmax(dim=1)
    return out


def class_count(model: Callable[..., Tensor], x: Tensor, args: Tuple[Any, ...]) -> int:
    """The ``C`` of the model's class scores ``[n, C]``, from a forward of the
    first example only (so bad labels fail before any attack compute)."""
    first = torch.zeros(1, dtype=torch.int64, device=x.device)
    with torch.no_grad(), train_mode_guarded(model):
        logits = model(x[:1], *rows_args(args, per_example_flags(args), first, 1))
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != 1 or not logits.is_floating_point():
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model output: expected floating class scores [n, C] for n rows, got {got} for 1 row")
    return logits.shape[1]


def check_labels_in_range(labels: Tensor, n_classes: int) -> None:
    """Every label ``[B]`` is one of the ``n_classes`` classes."""
    lo, hi = torch.stack(torch.aminmax(labels)).tolist()
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"labels: expected classes in [0, {n_classes}), got {lo if lo < 0 else hi}")


def _repeat_args(args: Tuple[Any, ...], times: int, interleave: bool) -> Tuple[Any, ...]:
    """Batched extra arguments repeated for ``times`` attacked copies per example."""
    flags = per_example_flags(args)
    if times == 1:
        return args
    return tuple(
        (a.repeat_interleave(times, 0) if interleave else a.repeat(times, *([1] * (a.dim() - 1)))) if f else a
        for a, f in zip(args, flags)
    )


def project(rows: Tensor, center: Tensor, radius: Union[float, Tensor], clamp: Clamp) -> Tensor:
    """Rows moved into the L-infinity ball ``|rows - center| <= radius`` and the valid range."""
    rows = torch.minimum(torch.maximum(rows, center - radius), center + radius)
    return rows if clamp is None else rows.clamp(clamp[0], clamp[1])


# -- the attacks -----------------------------------------------------------------


def fgsm_accuracy(
    model: Callable[..., Tensor],
    inputs: Tensor,
    labels: Tensor,
    epsilons: Union[float, Sequence[float]],
    clamp: Clamp = None,
    additional_forward_args: Any = None,
    return_adversarial: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    model_form: str = "fast",
) -> AttackAccuracy:
    """Accuracy under the fast gradient sign attack at each radius:
    ``x' = clamp(x + eps * sign(d CE(model(x), y) / dx))``.

    The loss gradient is taken once and shared by every radius.

    Args:
        model: returns class scores ``[B, C]`` (logits; the attack's loss is
            their cross-entropy).
        inputs: ``[B, *F]``.
        labels: int ``[B]``: the true classes.
        epsilons: one radius or a list of ``E`` radii (finite, >= 0).
        clamp: the valid input range ``(low, high)``, or None.
        additional_forward_args: extra model arguments (batched tensors ``[B, ...]``).
        return_adversarial: also return the attacked inputs ``[E, B, *F]``.
        memory_budget, chunk_rows: bytes per chunk and an optional row cap.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in;
            with ``"compiled"``, the gradient rows compile the size of their first chunk).

    Returns:
        :class:`AttackAccuracy`: ``accuracy`` float64 ``[E]``, ``correct``
        bool ``[E, B]``, ``adversarial`` (or None).
    """
    x = check_attack_inputs(model, inputs)
    check_model_form(model_form)
    batch = x.shape[0]
    y = check_labels(labels, batch, x.device)
    eps = check_epsilons(epsilons)
    clamp = check_clamp(clamp)
    args = v.format_additional_args(additional_forward_args, batch)
    budget = v.check_optional_positive_int(memory_budget, "memory_budget")
    cap = v.check_optional_positive_int(chunk_rows, "chunk_rows")
    check_labels_in_range(y, class_count(model, x, args))
    n_eps = len(eps)
    direction = loss_gradients(loss_gradient_request(model, x, y, args, budget, cap, model_form), x).sign()
    radii = torch.tensor(eps, dtype=x.dtype, device=x.device)
    shape = (-1, *([1] * (x.dim() - 1)))

    def rows_for(r0: int, r1: int) -> Tensor:
        # Row r is radius r // B, example r % B.
        r = torch.arange(r0, r1, device=x.device)
        b = r % batch
        rows = x.index_select(0, b) + radii.index_select(0, r // batch).view(shape) * direction.index_select(0, b)
        return rows if clamp is None else rows.clamp(clamp[0], clamp[1])

    total = n_eps * batch
    predicted = predicted_classes(
        model, rows_for, total, _repeat_args(args, n_eps, interleave=False), x[:1], budget, cap, model_form,
    )
    correct = (predicted == y.repeat(n_eps)).view(n_eps, batch)
    adversarial = rows_for(0, total).view(n_eps, *x.shape) if return_adversarial else None
    return AttackAccuracy(correct.to(torch.float64).mean(1), correct, adversarial)


def pgd_accuracy(
    model: Callable[..., Tensor],
    inputs: Tensor,
    labels: Tensor,
    epsilons: Union[float, Sequence[float]],
    n_steps: int = 10,
    step_size: Optional[float] = None,
    seed: int = 0,
    random_start: bool = True,
    clamp: Clamp = None,
    additional_forward_args: Any = None,
    return_adversarial: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> AttackAccuracy:
    """Accuracy under projected gradient descent (L-infinity, Madry et al.) at each radius.

    Per radius ``eps``: start at ``x + eps * z`` (``z`` uniform in
    ``[-1, 1)``, keyed by ``(seed, PURPOSE_ATTACK, example, radius index,
    element)``; ``x`` itself without ``random_start``), then ``n_steps`` times
    ``x_t <- clamp(proj_eps(x_t + step * sign(d CE / d x_t)))``; the last
    iterate is judged. Every (example, radius) trajectory is one row of the
    engine's chunks.

    Args:
        model, inputs, labels, epsilons, clamp, additional_forward_args,
            return_adversarial, memory_budget, chunk_rows, model_form: as :func:`fgsm_accuracy`.
        n_steps: gradient steps (>= 1).
        step_size: the step, the same for every radius; None: ``2.5 * eps / n_steps`` per radius.
        seed: key of the random start (int >= 0).
        random_start: start at a keyed random point of the ball.
        example_offset: example ``b``'s start is keyed as example
            ``example_offset + b`` (its index in a data set attacked batch by batch).

    Returns:
        :class:`AttackAccuracy`: ``accuracy`` float64 ``[E]``, ``correct``
        bool ``[E, B]``, ``adversarial`` ``[E, B, *F]`` (or None).
    """
    x = check_attack_inputs(model, inputs)
    check_model_form(model_form)
    batch = x.shape[0]
    y = check_labels(labels, batch, x.device)
    eps = check_epsilons(epsilons)
    n_steps = v.check_positive_int(n_steps, "n_steps")
    if step_size is not None and (
        isinstance(step_size, bool) or not isinstance(step_size, Real) or not math.isfinite(step_size) or step_size <= 0
    ):
        raise ValueError(f"step_size: expected None or a finite number > 0, got {step_size!r}")
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    clamp = check_clamp(clamp)
    args = v.format_additional_args(additional_forward_args, batch)
    budget = v.check_optional_positive_int(memory_budget, "memory_budget")
    cap = v.check_optional_positive_int(chunk_rows, "chunk_rows")
    check_labels_in_range(y, class_count(model, x, args))
    n_eps = len(eps)
    # Trajectories are example-major: row b * E + e is example b at radius e,
    # the order generate_rows keys as (example b, sample e).
    center = x.repeat_interleave(n_eps, 0)
    shape = (-1, *([1] * (x.dim() - 1)))
    radius = torch.tensor(eps, dtype=x.dtype, device=x.device).repeat(batch).view(shape)
    steps = radius * (2.5 / n_steps) if step_size is None else torch.full_like(radius, float(step_size))
    row_labels = y.repeat_interleave(n_eps)
    row_args = _repeat_args(args, n_eps, interleave=True)
    if random_start:
        z = ops.generate_rows(
            x.new_zeros(1, *x.shape[1:]).expand_as(x), None, None, n_eps, "uniform", 1.0,
            seed, PURPOSE_ATTACK * 65536, 0, batch * n_eps, example_offset,
        )
        adv = project(center + radius * z, center, radius, clamp)
    else:
        adv = center if clamp is None else center.clamp(clamp[0], clamp[1])
    request = loss_gradient_request(model, adv, row_labels, row_args, budget, cap, model_form)
    for _ in range(n_steps):
        grad = loss_gradients(request, adv)
        adv = project(adv + steps * grad.sign(), center, radius, clamp)
    predicted = predicted_classes(model, lambda r0, r1: adv[r0:r1], batch * n_eps, row_args, x[:1], budget, cap,
                                  model_form)
    correct = (predicted == row_labels).view(batch, n_eps).T
    adversarial = adv.view(batch, n_eps, *x.shape[1:]).transpose(0, 1) if return_adversarial else None
    return AttackAccuracy(correct.to(torch.float64).mean(1), correct, adversarial)
