"""Argument checks shared by every explainer.

Everything here runs before any model compute and raises with a message that
names the argument and says what was expected.
"""
from __future__ import annotations

import functools
import inspect
import math
from numbers import Integral, Real
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
BaselineType = Union[None, int, float, Tensor, Tuple[Union[int, float, Tensor], ...]]
TargetType = Union[None, int, Tuple[int, ...], Sequence[int], Sequence[Tuple[int, ...]], Tensor]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _all_finite(t: Tensor) -> bool:
    # One reduction instead of an elementwise isfinite pass: a NaN or Inf
    # anywhere makes the sum non-finite. A non-finite sum of finite values
    # (overflow) is told apart by the exact check. Half types are summed in
    # float32, where overflow is rare; float32 and float64 in their own dtype,
    # without a converted copy.
    if t.numel() == 0:
        return True
    total = t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum()
    if math.isfinite(total.item()):
        return True
    return bool(torch.isfinite(t).all())


def format_inputs(inputs: TensorOrTuple, allow_integer: bool = False) -> Tuple[Tuple[Tensor, ...], bool]:
    """Check ``inputs`` (a tensor ``[B, *F]`` or a tuple of them) and return
    ``(tuple_of_tensors, was_tuple)``. ``allow_integer``: integer tensors
    (token ids fed to a layer method's model) are accepted too."""
    was_tuple = isinstance(inputs, tuple)
    tensors = inputs if was_tuple else (inputs,)
    if len(tensors) == 0:
        raise ValueError("inputs: expected a tensor or a non-empty tuple of tensors, got ()")
    dtypes = _INPUT_DTYPES_WITH_INTEGER if allow_integer else FLOAT_DTYPES
    first = tensors[0]
    for i, t in enumerate(tensors):
        # One cheap test per tensor on every call; the message only on failure.
        if (not isinstance(t, Tensor) or t.dtype not in dtypes or t.dim() < 1
                or t.shape[0] != first.shape[0] or t.device != first.device):
            _reject_input(t, _input_name(i, was_tuple), first, dtypes, allow_integer)
    # Finiteness last: it reads the values, which needs every tensor on a real device.
    for i, t in enumerate(tensors):
        if t.is_floating_point() and not _all_finite(t):
            raise ValueError(f"{_input_name(i, was_tuple)}: contains NaN or Inf")
    return tuple(tensors), was_tuple


_INPUT_DTYPES_WITH_INTEGER = FLOAT_DTYPES + INTEGER_DTYPES


def _input_name(i: int, was_tuple: bool) -> str:
    return f"inputs[{i}]" if was_tuple else "inputs"


def _reject_input(t: Any, name: str, first: Any, dtypes: Tuple[torch.dtype, ...], allow_integer: bool) -> None:
    """Raise the error that says why ``t`` is not a valid input (``dtypes``: the accepted ones)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        kinds = "a floating or integer dtype" if allow_integer else (
            "a floating dtype (float16, bfloat16, float32, float64)")
        raise TypeError(f"{name}: expected {kinds}, got {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"{name}: expected shape [B, ...] with a batch dimension, got a 0-d tensor")
    if t.shape[0] != first.shape[0]:
        raise ValueError(f"{name}: batch size {t.shape[0]} differs from inputs[0]'s {first.shape[0]}")
    raise ValueError(f"{name}: on {t.device}, expected {first.device} like inputs[0]")


def _first_parameter(module: torch.nn.Module) -> Tuple[Optional[str], Optional[Tensor]]:
    """``(qualified name, parameter)`` of the first parameter in
    ``named_parameters`` order, or ``(None, None)``. Walks the module dicts
    directly: ``named_parameters`` sets up generators over every module first,
    which costs more than a small model's whole check."""
    for name, p in module._parameters.items():
        if p is not None:
            return name, p
    for child_name, child in module._modules.items():
        if child is not None:
            name, p = _first_parameter(child)
            if p is not None:
                return f"{child_name}.{name}", p
    return None, None


def check_model_device(model: Any, device: torch.device) -> None:
    """A module's parameters must be on the inputs' device (read on every
    call: a model may move between calls)."""
    if isinstance(model, torch.nn.Module):
        name, first = _first_parameter(model)
        if first is not None and first.device != device:
            raise ValueError(
                f"model: parameter {name!r} is on {first.device} but inputs are on {device}"
            )


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` unchanged: no
    more dims, and each trailing dim 1 or equal. (``torch.broadcast_shapes``
    answers too, at tens of microseconds a call.)"""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


@functools.lru_cache(maxsize=32)
def _constant_baseline(value: float, shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A ``[1, *F]`` constant baseline, made once per (value, shape, dtype,
    device): the engine only reads baselines, and most calls use the same one."""
    return torch.full((1, *shape), value, dtype=dtype, device=device)


def format_baselines(
    baselines: BaselineType, inputs: Tuple[Tensor, ...], was_tuple: bool
) -> Tuple[Tensor, ...]:
    """Baselines as one contiguous tensor ``[1, *F]`` or ``[B, *F]`` per input.

    Accepts None (zeros), a number, a tensor broadcastable to the input
    (``[*F]``, ``[1, *F]``, ``[B, *F]`` or any broadcastable shape), or a
    tuple of those, one per input.
    """
    if baselines is None:
        baselines = 0.0
    items = baselines if isinstance(baselines, tuple) else (baselines,) * len(inputs)
    if len(items) != len(inputs):
        raise ValueError(
            f"baselines: expected {len(inputs)} baselines (one per input), got {len(items)}"
        )
    out = []
    for i, (b, x) in enumerate(zip(items, inputs)):
        name = f"baselines[{i}]" if was_tuple else "baselines"
        if isinstance(b, bool) or not isinstance(b, (Real, Tensor)):
            raise ArgumentTypeError(f"{name}: expected a number or a tensor, got {type(b).__name__}")
        if not isinstance(b, Tensor):
            if not math.isfinite(b):
                raise ValueError(f"{name}: must be finite, got {b}")
            out.append(_constant_baseline(float(b), tuple(x.shape[1:]), x.dtype, x.device))
            continue
        if b.device != x.device:
            raise ValueError(f"{name}: on {b.device}, expected {x.device} like the input")
        if not b.is_floating_point() and b.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name}: expected a numeric dtype, got {b.dtype}")
        if not broadcasts_to(b.shape, x.shape):
            raise ValueError(
                f"{name}: shape {tuple(b.shape)} does not broadcast to the input's "
                f"shape {tuple(x.shape)}"
            )
        if not _all_finite(b):
            raise ValueError(f"{name}: contains NaN or Inf")
        per_example = b.dim() == x.dim() and b.shape[0] != 1
        rows = x.shape[0] if per_example else 1
        out.append(b.detach().to(x.dtype).expand(rows, *x.shape[1:]).contiguous())
    return tuple(out)


def resolve_callable_baselines(baselines: Any, inputs: Tuple[Tensor, ...], was_tuple: bool) -> Any:
    """``baselines`` as given, or, for a callable (Captum's form), what it
    returns: called with the inputs, or with no argument if it takes none."""
    if not callable(baselines) or isinstance(baselines, Tensor):
        return baselines
    takes_inputs = len(inspect.signature(baselines).parameters) > 0
    given = inputs if was_tuple else inputs[0]
    resolved = baselines(given) if takes_inputs else baselines()
    items = resolved if isinstance(resolved, tuple) else (resolved,)
    if not all(isinstance(b, (Tensor, Real)) and not isinstance(b, bool) for b in items):
        raise ArgumentTypeError(
            "baselines: the callable must return a tensor [M, *F], a number or a tuple of "
            f"those per input, got {type(resolved).__name__}"
        )
    return resolved


def format_baseline_distribution(
    baselines: Any, inputs: Tuple[Tensor, ...], was_tuple: bool
) -> Tuple[Tensor, ...]:
    """Reference distributions: one contiguous ``[M, *F]`` tensor per input,
    the same ``M`` for every input (a draw picks one reference example for
    all inputs).

    Accepts, per input, a tensor ``[M, *F]`` or ``[*F]`` (``M = 1``) or a
    number; a tuple of those; or, as Captum does, a callable returning them
    (called with the inputs, or with no argument if it takes none).
    """
    baselines = resolve_callable_baselines(baselines, inputs, was_tuple)
    if baselines is None:
        raise ValueError("baselines: required: a reference distribution [M, *F] per input")
    items = baselines if isinstance(baselines, tuple) else (baselines,) * len(inputs)
    if len(items) != len(inputs):
        raise ValueError(
            f"baselines: expected {len(inputs)} baselines (one per input), got {len(items)}"
        )
    items = tuple(
        b.unsqueeze(0) if isinstance(b, Tensor) and b.dim() == x.dim() - 1 else b
        for b, x in zip(items, inputs)
    )
    for i, (b, x) in enumerate(zip(items, inputs)):
        if isinstance(b, Tensor) and (b.dim() != x.dim() or b.shape[1:] != x.shape[1:] or b.shape[0] == 0):
            name = f"baselines[{i}]" if was_tuple else "baselines"
            raise ValueError(
                f"{name}: expected a reference distribution of shape [M, "
                f"{', '.join(map(str, x.shape[1:]))}] (M >= 1), got {tuple(b.shape)}"
            )
    sizes = [b.shape[0] if isinstance(b, Tensor) else 1 for b in items]
    m = max(sizes)
    if any(size not in (1, m) for size in sizes):
        raise ValueError(
            f"baselines: every input needs the same number of reference examples M, got {sizes}"
        )
    # Dtype, device and finiteness checks are format_baselines's, against M-row inputs.
    likes = tuple(x[:1].expand(m, *x.shape[1:]) for x in inputs)
    formatted = format_baselines(items, likes, was_tuple)
    return tuple(t.expand(m, *t.shape[1:]) for t in formatted)


class ArgumentError(ValueError, AssertionError):
    """A bad argument value or shape. Also an AssertionError: Captum asserts
    on the same mistakes, and code written for it catches that."""


class ArgumentTypeError(TypeError, AssertionError):
    """An argument of the wrong type where Captum asserts (see :class:`ArgumentError`)."""


class TargetError(ArgumentError):
    """A ``target`` the model's output cannot be indexed with."""


# Formatted targets: None; an int (the same index into dim 1 for every
# example); a tuple of ints (the same index into dims 1..k); int64 [B] (one
# index into dim 1 per example); int64 [B, k] (one index into dims 1..k per
# example).
FormattedTarget = Union[None, int, Tuple[int, ...], Tensor]


def format_target(target: Any, batch: int, device: torch.device) -> FormattedTarget:
    """Captum's target forms, checked against the batch size only (the model's
    output shape is checked on the first forward, by
    :func:`fastattr.engine.outputs.flat_target`).

    Accepts None (the output is one value per example); an int (an index into
    dim 1 of every example's output); a tuple of ints (indices into dims 1..k,
    for outputs ``[B, C, L, ...]``); a list of ``B`` ints or of ``B`` tuples
    (one per example); an integer tensor of one element (for every example)
    or of shape ``[B]`` (one per example).
    """
    if target is None:
        return None
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor, got {target.dtype}")
        if target.dim() == 1 and target.shape[0] == batch:
            if target.device == device and target.dtype == torch.int64:
                return target
            return target.to(device=device, dtype=torch.int64)
        if target.numel() == 1:
            return int(target.item())
        raise TargetError(
            f"target: expected an integer tensor of one element (for every example) or "
            f"of shape [{batch}] (one per example), got shape {tuple(target.shape)}"
        )
    if isinstance(target, bool):
        raise TypeError("target: expected an int, a tuple, a list or an int tensor, got bool")
    if isinstance(target, Integral):
        return int(target)
    if isinstance(target, tuple):
        index = _index_tuple(target, "target")
        return None if not index else index[0] if len(index) == 1 else index
    if isinstance(target, list):
        if len(target) != batch:
            raise TargetError(
                f"target: expected {batch} entries (one per example), got {len(target)}"
            )
        if target and all(isinstance(t, tuple) for t in target):
            rows = [_index_tuple(t, f"target[{i}]") for i, t in enumerate(target)]
            if len({len(r) for r in rows}) != 1:
                raise TargetError(f"target: every tuple must have the same length, got {target!r}")
            table = torch.tensor(rows, dtype=torch.int64).reshape(batch, -1)
            if table.shape[1] == 0:
                return None
            return (table[:, 0] if table.shape[1] == 1 else table).to(device)
        for t in target:
            if isinstance(t, bool) or not isinstance(t, Integral):
                raise TypeError(
                    f"target: list entries must be all ints or all tuples of ints, got {type(t).__name__}"
                )
        return torch.tensor(list(target), dtype=torch.int64, device=device)
    raise TypeError(
        "target: expected None, an int, a tuple of ints, a list of ints or tuples, or an int "
        f"tensor, got {type(target).__name__}"
    )


def _index_tuple(t: Tuple[Any, ...], name: str) -> Tuple[int, ...]:
    for i in t:
        if isinstance(i, bool) or not isinstance(i, Integral):
            raise TypeError(f"{name}: expected a tuple of ints (one index per output dim), got {t!r}")
    return tuple(int(i) for i in t)


def format_additional_args(args: Any, batch: int) -> Tuple[Any, ...]:
    """``additional_forward_args`` as a tuple. Tensors with a batch dimension
    must have ``B`` rows (they are gathered per evaluated row); 0-d tensors and
    non-tensors are passed to every call unchanged."""
    if args is None:
        return ()
    items = args if isinstance(args, tuple) else (args,)
    for i, a in enumerate(items):
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] != batch:
            raise ValueError(
                f"additional_forward_args[{i}]: a tensor with a batch dimension must "
                f"have {batch} rows like the inputs, got shape {tuple(a.shape)}"
            )
    return tuple(items)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_optional_positive_int(value: Any, name: str) -> Optional[int]:
    """None, or ``value`` as an int ``>= 1``."""
    return None if value is None else check_positive_int(value, name)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``name``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def check_scales(value: Any, name: str, n_inputs: int) -> Tuple[float, ...]:
    """A finite non-negative float, or a tuple of them (one per input)."""
    items = value if isinstance(value, tuple) else (value,) * n_inputs
    if len(items) != n_inputs:
        raise ValueError(f"{name}: expected {n_inputs} values (one per input), got {len(items)}")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: expected finite numbers >= 0, got {value!r}")
    return tuple(float(v) for v in items)
