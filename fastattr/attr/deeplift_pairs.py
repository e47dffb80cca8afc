"""DeepLIFT's paired layout: a forward over ``2n`` rows, row ``k`` example
``k``'s input and row ``n + k`` its reference; the division by the pair's
input difference that every rescale-type rule makes; and where that layout
goes when a model folds other dimensions into the batch one
(:class:`PairLayout`)."""
from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor


def _pairs(t: Tensor) -> Tensor:
    """``[2n, *F]`` -> ``[2, n, *F]`` (the inputs, then their references): a
    view, so that results in this layout go back with :func:`_unpairs` as
    views too."""
    return t.view(2, -1, *t.shape[1:])


def _unpairs(p: Tensor) -> Tensor:
    """``[2, n, *F]`` -> ``[2n, *F]``: the inverse of :func:`_pairs`."""
    return p.reshape(-1, *p.shape[2:])


def _pair_delta(t: Tensor) -> Tensor:
    """``[1, n, *F]``: input minus reference, broadcast over the pair."""
    n = t.shape[0] // 2
    return (t[:n] - t[n:]).unsqueeze(0)


@functools.lru_cache(maxsize=64)
def _threshold(eps: float, dtype: torch.dtype) -> float:
    """``eps`` rounded to ``dtype``, as a tensor comparison with it rounds it."""
    return torch.tensor(eps, dtype=dtype).item()


def _maybe_small(magnitude: Tensor, eps: float) -> bool:
    """Whether some entry of ``magnitude`` may be below ``eps``. Checked on
    the CPU, where it is one cheap reduction; assumed elsewhere, where the
    check would wait for the device."""
    if magnitude.numel() == 0:
        return False
    if magnitude.device.type != "cpu":
        return True
    return magnitude.amin().item() < _threshold(eps, magnitude.dtype)


@dataclasses.dataclass(frozen=True)
class _Divisor:
    """``delta_in`` ``[1, n, *F]`` of one call, ready for the rule's division.

    Where ``|delta_in| < eps`` the rule keeps the ordinary gradient. That
    selection is done with arithmetic, not ``torch.where``: a bool tensor
    costs several times a float pass on the CPU. ``small`` is 1.0 there and
    0.0 elsewhere (None: no such entry); ``safe`` is ``delta_in`` with those
    entries made nonzero, so that the quotients there are finite and
    ``lerp(quotient, grad_input, small)`` selects exactly.
    """

    safe: Tensor
    small: Optional[Tensor]

    @staticmethod
    def of(delta_in: Tensor, eps: float) -> "_Divisor":
        magnitude = delta_in.abs()
        if not _maybe_small(magnitude, eps):
            return _Divisor(delta_in, None)
        # sign(eps - |d|) is +1 exactly where |d| < eps: a float mask without a bool tensor.
        small = (eps - magnitude).sign_().clamp_(min=0)
        if eps <= 1:  # |d| < eps <= 1: d + 1 is not 0 where small; elsewhere d + 0 is d
            return _Divisor(delta_in + small, small)
        return _Divisor(torch.maximum(magnitude, small).copysign_(delta_in), small)

    def select(self, quotient: Tensor, grad_input: Tensor) -> Tensor:
        """``grad_input`` where small, else ``quotient`` (broadcast to it; a
        tensor of this call's own, written in place when shaped like
        ``grad_input``). lerp with a weight of exactly 0 or 1 returns
        ``start`` or ``end`` exactly (for finite values), and reads the
        weight as a float."""
        if self.small is None:
            return quotient.expand_as(grad_input)
        if quotient.shape == grad_input.shape:
            return quotient.lerp_(grad_input, self.small)
        return torch.lerp(quotient, grad_input, self.small)


# ---------------------------------------------------------------------------
# Folded pairs: where a forward moves the examples' dimension
# ---------------------------------------------------------------------------


class PairLayout:
    """Which dimension of each activation of a paired forward over ``rows =
    2n`` rows holds its pairs.

    A tensor is *paired along* ``dim`` when its size there is a multiple of
    ``rows`` and, for every index of the dimensions before ``dim``, the first
    half along ``dim`` holds the inputs' entries and the second half their
    references', in the same order (so :func:`_pairs` of it moved to the
    front pairs each entry with its reference's). A leading dimension of
    exactly ``rows`` is taken as paired along 0 (the model's own batch
    dimension). Other layouts are followed from call to call: a model that
    folds windows or heads into the batch dimension (Swin's window
    partition: ``[2n, H, W, C] -> [2n * windows, ws * ws, C]``, then its
    ``qkv`` reshaped, permuted and indexed) leaves tensors whose leading
    dimension is ``2n * windows``, paired all the same; the reshapes,
    permutes and indexing in between are read (:data:`_LAYOUT_CALLS`), and
    any other call whose output is shaped like a paired argument up to that
    argument's pair dimension keeps the pairing (elementwise calls, linear
    maps, products, softmax, padding and rolls along other dimensions).
    Calls that mix entries along the pair dimension while keeping its size
    (``cumsum``, ``sort``, ``gather`` along it) are not told apart from
    those: their outputs are taken as paired, as a leading dimension of
    ``rows`` always is. In-place layout changes (``transpose_``...) drop
    what was known of their tensor.
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        # id -> (weak reference, dim) of the tensors paired along a dim
        # other than a leading dimension of exactly `rows`
        self._dims: Dict[int, Tuple["weakref.ref[Tensor]", int]] = {}

    def dim(self, t: Any) -> Optional[int]:
        """The dimension ``t`` is paired along, or None (not paired, no
        gradient, a parameter, or not a tensor)."""
        entry = self._dims.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        # Parameter's isinstance is slow: asked last
        if (not isinstance(t, Tensor) or t.dim() == 0 or t.shape[0] != self.rows or not t.requires_grad
                or isinstance(t, torch.nn.Parameter)):
            return None
        return 0

    def follow(self, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
        """Record where the pairs of ``func(*args, **kwargs)``'s inputs went in ``out``."""
        # Runs after every call of the forward: cheap exits first.
        if isinstance(out, Tensor):
            if not out.requires_grad:
                return
            outs: Any = (out,)
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            outs = out
        else:
            return
        rule = _LAYOUT_CALLS.get(func)
        if rule is not None:
            src = args[0] if args else kwargs.get("input")
            d = self.dim(src)
            if d is not None:
                for o in outs:
                    self._mark(o, rule(d, src, args[1:], kwargs, o))
            return
        if not self._dims:  # nothing folded yet: only a layout call can fold
            return
        sources = [(t, d) for t in (*args, *kwargs.values()) if isinstance(t, Tensor)
                   for d in (self.dim(t),) if d is not None]
        for o in outs:
            if not isinstance(o, Tensor) or o.dim() == 0 or o.shape[0] == self.rows:
                continue  # a leading dimension of `rows` is taken as paired anyway
            for t, d in sources:
                if o.dim() == t.dim() and o.shape[:d + 1] == t.shape[:d + 1]:
                    self._mark(o, d)
                    break

    def _mark(self, t: Any, d: Optional[int]) -> None:
        if not isinstance(t, Tensor):
            return
        # (the output of a call is never a Parameter)
        if (d is None or not t.requires_grad or d >= t.dim() or t.shape[d] % self.rows != 0
                or (d == 0 and t.shape[0] == self.rows)):
            self._dims.pop(id(t), None)  # an in-place call may have changed what was recorded
            return
        self._dims[id(t)] = (weakref.ref(t), d)


# Each rule: (pair dim of the input, the input, the other arguments, the
# keyword arguments, one output) -> the output's pair dim, or None.
LayoutRule = Callable[[int, Tensor, Tuple[Any, ...], Dict[str, Any], Tensor], Optional[int]]


def _arg(args: Tuple[Any, ...], kwargs: Dict[str, Any], position: int, name: str, default: Any = None) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _dims_arg(args: Tuple[Any, ...], kwargs: Dict[str, Any], name: str) -> Any:
    """``dims`` passed as varargs (``t.permute(2, 0, 1)``) or one sequence."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    return tuple(args) if args else kwargs.get(name)


def _reshaped(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    # row-major order is kept: with the dims before d unchanged, each block's
    # entries keep their order, so its halves along d stay the pairs' halves
    return d if out.dim() > d and out.shape[:d] == src.shape[:d] else None


def _permuted(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    dims = [k % src.dim() for k in _dims_arg(args, kwargs, "dims")]
    return dims.index(d)


def _transposed(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    if src.dim() < 2:
        return d
    a = _arg(args, kwargs, 0, "dim0", 0) % src.dim()
    b = _arg(args, kwargs, 1, "dim1", 1) % src.dim()
    return b if d == a else a if d == b else d


def _moved(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    source, destination = _arg(args, kwargs, 0, "source"), _arg(args, kwargs, 1, "destination")
    source = [source] if isinstance(source, int) else list(source)
    destination = [destination] if isinstance(destination, int) else list(destination)
    order: List[Optional[int]] = [None] * src.dim()
    for s, t in zip(source, destination):
        order[t % src.dim()] = s % src.dim()
    rest = iter(k for k in range(src.dim()) if k not in {s % src.dim() for s in source})
    order = [next(rest) if k is None else k for k in order]
    return order.index(d)


def _selected(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    """``select(dim, i)`` and ``unbind(dim)``: one dimension dropped."""
    k = _arg(args, kwargs, 0, "dim", 0) % src.dim()
    return None if k == d else d - 1 if k < d else d


def _indexed(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    """``src[index]`` with ints, slices, ``None`` and ``...`` (a tensor or
    list index: not followed); the pair dim must be taken whole."""
    index = args[0] if isinstance(args[0], tuple) else (args[0],)
    if not all(i is None or i is Ellipsis or isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool))
               for i in index):
        return None
    spelled = sum(1 for i in index if i is not None and i is not Ellipsis)
    full = (slice(None),) * (src.dim() - spelled)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + full + index[at + 1:]
    else:
        index = index + full
    in_dim = out_dim = 0
    for i in index:
        if i is None:
            out_dim += 1
            continue
        if in_dim == d:
            whole = isinstance(i, slice) and i.start is None and i.stop is None and i.step is None
            return out_dim if whole else None
        in_dim += 1
        out_dim += isinstance(i, slice)
    return None


def _unsqueezed(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    k = _arg(args, kwargs, 0, "dim") % (src.dim() + 1)
    return d + 1 if k <= d else d


def _squeezed(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    dims = _arg(args, kwargs, 0, "dim")
    dims = range(src.dim()) if dims is None else [dims] if isinstance(dims, int) else dims
    return d - sum(1 for k in dims if k % src.dim() < d and src.shape[k] == 1)


def _forgotten(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
    """In-place layout changes and strided views: not followed."""
    return None


def _moved_along(name: str, position: int) -> LayoutRule:
    """``roll`` / ``flip``: the pairs stay unless entries move along their dim."""
    def rule(d: int, src: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Tensor) -> Optional[int]:
        dims = _dims_arg(args, kwargs, name) if position == 0 else _arg(args, kwargs, position, name)
        if dims is None:  # roll over the flattened tensor
            return None
        dims = [dims] if isinstance(dims, int) else dims
        return None if any(k % src.dim() == d for k in dims) else d
    return rule


_LAYOUT_CALLS: Dict[Callable[..., Any], LayoutRule] = {
    **dict.fromkeys((Tensor.view, Tensor.reshape, torch.reshape, Tensor.flatten, torch.flatten, Tensor.unflatten,
                     torch.unflatten, Tensor.view_as, Tensor.reshape_as), _reshaped),
    **dict.fromkeys((Tensor.permute, torch.permute), _permuted),
    **dict.fromkeys((Tensor.transpose, torch.transpose, Tensor.swapaxes, torch.swapaxes, Tensor.swapdims,
                     torch.swapdims, Tensor.t, torch.t), _transposed),
    **dict.fromkeys((Tensor.movedim, torch.movedim, Tensor.moveaxis, torch.moveaxis), _moved),
    **dict.fromkeys((Tensor.select, torch.select, Tensor.unbind, torch.unbind), _selected),
    Tensor.__getitem__: _indexed,
    **dict.fromkeys((Tensor.unsqueeze, torch.unsqueeze), _unsqueezed),
    **dict.fromkeys((Tensor.squeeze, torch.squeeze), _squeezed),
    **dict.fromkeys((Tensor.roll, torch.roll), _moved_along("dims", 1)),
    **dict.fromkeys((Tensor.flip, torch.flip), _moved_along("dims", 0)),
    **dict.fromkeys((Tensor.transpose_, Tensor.t_, Tensor.swapaxes_, Tensor.swapdims_, Tensor.squeeze_,
                     Tensor.unsqueeze_, Tensor.resize_, Tensor.as_strided_, Tensor.as_strided, torch.as_strided),
                    _forgotten),
}
