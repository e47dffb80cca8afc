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
TargetType = Union[None, int, Sequence[int], Tensor]

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
            raise TypeError(f"{name}: expected a number or a tensor, got {type(b).__name__}")
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
    if callable(baselines) and not isinstance(baselines, Tensor):
        takes_inputs = len(inspect.signature(baselines).parameters) > 0
        given = inputs if was_tuple else inputs[0]
        baselines = baselines(given) if takes_inputs else baselines()
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


def format_target(target: TargetType, batch: int, device: torch.device) -> Union[None, int, Tensor]:
    """None, an int (same class for every example) or an int64 tensor ``[B]``."""
    if target is None:
        return None
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor, got {target.dtype}")
        if target.dim() == 0:
            return int(target.item())
        if target.dim() != 1 or target.shape[0] != batch:
            raise ValueError(
                f"target: expected a 1-D tensor of length {batch} (one class per "
                f"example), got shape {tuple(target.shape)}"
            )
        if target.device == device and target.dtype == torch.int64:
            return target
        return target.to(device=device, dtype=torch.int64)
    if isinstance(target, bool):
        raise TypeError("target: expected an int, a list of ints or an int tensor, got bool")
    if isinstance(target, Integral):
        return int(target)
    if isinstance(target, (list, tuple)):
        if len(target) != batch:
            raise ValueError(
                f"target: expected {batch} entries (one class per example), got {len(target)}"
            )
        for t in target:
            if isinstance(t, bool) or not isinstance(t, Integral):
                raise TypeError(f"target: list entries must be ints, got {type(t).__name__}")
        return torch.tensor(list(target), dtype=torch.int64, device=device)
    raise TypeError(
        f"target: expected None, an int, a list of ints or an int tensor, got {type(target).__name__}"
    )


# Up to this many target classes are range-checked in Python on the CPU.
_TARGETS_READ_AS_LIST = 4096


def check_target_range(target: Union[None, int, Tensor], n_outputs: Optional[int]) -> None:
    """Check target classes against the model's output width (None: output is ``[B]``)."""
    if target is None:
        if n_outputs is not None and n_outputs != 1:
            raise ValueError(
                f"target: required because the model returns {n_outputs} outputs per "
                "example; pass the class index to explain"
            )
        return
    if n_outputs is None:
        raise ValueError("target: must be None for a model whose output is [B] (one value per example)")
    if isinstance(target, int):
        lo = hi = target
    else:
        if target.numel() == 0:
            return
        if not target.is_cuda and target.numel() <= _TARGETS_READ_AS_LIST:
            # A batch's worth of classes: one copy to Python beats a reduction
            # and two scalar reads.
            values = target.tolist()
            lo, hi = min(values), max(values)
        else:
            lo_t, hi_t = torch.aminmax(target)
            lo, hi = torch.stack((lo_t, hi_t)).tolist()  # one device sync
    if lo < -n_outputs or hi >= n_outputs:
        raise ValueError(
            f"target: class index out of range for a model with {n_outputs} outputs "
            f"(got {lo if lo < -n_outputs else hi})"
        )


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
