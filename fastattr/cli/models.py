"""The audited model: ``module:factory`` (+ ``--model-arg`` keyword
arguments, + ``--weights``: a state_dict, a ``.safetensors`` file or a
training checkpoint holding one), a TorchScript or ``torch.export`` file, a
fully pickled model only with ``--trust-pickle``, or the embedded default;
a content hash that identifies it; and the choice of the class scores
among the model's outputs (``--output-key``)."""
from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import os
import pickle
import sys
import zipfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .config import AuditError

Model = Callable[..., torch.Tensor]
# Where training checkpoints keep the state_dict, tried in this order.
_CHECKPOINT_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_hash(model: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, bytes).
    0-d tensors (BatchNorm's ``num_batches_tracked``) are read as one element:
    a 0-d tensor cannot be viewed as bytes."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        flat = t.detach().cpu().reshape(-1).contiguous()
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def parse_model_args(items: Sequence[str]) -> Dict[str, Any]:
    """``--model-arg key=value`` items as keyword arguments: each value a
    Python literal (``ast.literal_eval``: numbers, True/False/None, tuples,
    quoted strings), else the text itself (``arch=resnet18``)."""
    kwargs: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise AuditError(f"--model-arg: expected key=value with a Python name as key, got {item!r}")
        if key in kwargs:
            raise AuditError(f"--model-arg: {key!r} is given twice")
        kwargs[key] = _literal(text)
    return kwargs


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # not a literal: a plain string


def _built(factory: Callable[..., Any], spec: str, kwargs: Dict[str, Any]) -> Any:
    """``factory(**kwargs)``; arguments it does not take are an AuditError naming ``--model-arg``."""
    if not kwargs:
        return factory()
    call = f"{spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        signature: Optional[inspect.Signature] = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or extension callable: no signature to check
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as e:
            raise AuditError(f"--model-arg: {call} does not fit {spec}{signature} ({e})") from None
    try:
        return factory(**kwargs)
    except TypeError as e:  # e.g. a factory passing **kwargs on to a constructor that refuses one
        raise AuditError(f"--model-arg: {call} raised TypeError: {e}") from None


def _from_factory(spec: str, weights: Optional[str], kwargs: Dict[str, Any]) -> Tuple[nn.Module, Dict[str, Any]]:
    """The factory's model with its weights loaded, and what was read from ``weights``."""
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise AuditError(f"--model: expected module:factory or a model file, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own modules
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AuditError(f"--model: cannot import module {module_name!r} ({e})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise AuditError(f"--model: module {module_name!r} has no callable {factory_name!r}")
    model = _built(factory, spec, kwargs)
    if not isinstance(model, nn.Module):
        raise AuditError(f"--model: {spec}() must return a torch.nn.Module, got {type(model).__name__}")
    if weights is None:
        return model, {}
    return model, _load_weights(model, weights, spec)


def _load_weights(model: nn.Module, path: str, spec: str) -> Dict[str, Any]:
    """Load ``path`` into ``model`` (strictly); a record of the file's format
    and of each adaptation made to fit it."""
    if not os.path.isfile(path):
        raise AuditError(f"--weights: {path}: no such file")
    loaded, file_format = _read_weights(path)
    state, adapted = _state_dict_in(loaded, path)
    state, unprefixed = _fitted_keys(state, model)
    adapted += unprefixed
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        after = f" after using {' and '.join(adapted)}" if adapted else ""
        raise AuditError(f"--weights: {path}: does not fit {spec}(){after} ({e})") from None
    return {"format": file_format, "adapted": adapted}


def _read_weights(path: str) -> Tuple[Any, str]:
    """The file's contents and format: ``.safetensors`` via safetensors,
    anything else via ``torch.load(weights_only=True)``."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise AuditError(f"--weights: {path} is a .safetensors file, which needs safetensors: "
                             f"pip install safetensors") from None
        try:
            return load_file(path, device="cpu"), "safetensors"
        except Exception as e:  # safetensors' own error types: all mean "not readable"
            raise AuditError(f"--weights: {path}: not a readable safetensors file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "torch"
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise AuditError(f"--weights: {path}: not a state_dict loadable with weights_only=True ({e})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _state_dict_in(loaded: Any, path: str) -> Tuple[Dict[str, Tensor], List[str]]:
    """The state_dict itself, or a checkpoint's ``"state_dict"`` / ``"model"`` entry."""
    if _is_state_dict(loaded):
        return dict(loaded), []
    if isinstance(loaded, Mapping):
        for key in _CHECKPOINT_KEYS:
            if _is_state_dict(loaded.get(key)):
                return dict(loaded[key]), [f"the checkpoint's {key!r} entry"]
    held = f"a dict with keys {sorted(map(str, loaded))[:10]}" if isinstance(loaded, Mapping) else type(loaded).__name__
    raise AuditError(f"--weights: {path}: expected a state_dict (names -> tensors) or a checkpoint with one "
                     f"under {' or '.join(map(repr, _CHECKPOINT_KEYS))}; got {held}")


def _fitted_keys(state: Dict[str, Tensor], model: nn.Module) -> Tuple[Dict[str, Tensor], List[str]]:
    """``state`` with DataParallel/DDP's ``module.`` prefix removed, only when
    the plain keys do not fit the model and every key has it."""
    if set(state) == set(model.state_dict()) or not state or not all(k.startswith(_DDP_PREFIX) for k in state):
        return state, []
    return {k[len(_DDP_PREFIX):]: v for k, v in state.items()}, [f"keys without their {_DDP_PREFIX!r} prefix"]


def _from_file(path: str, trust_pickle: bool) -> Tuple[Model, str]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            try:
                return torch.jit.load(path, map_location="cpu"), "torchscript"
            except RuntimeError as e:
                raise AuditError(f"--model: {path}: an unreadable TorchScript file ({e})") from None
        if any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in names):
            try:
                return torch.export.load(path).module(), "torch.export"
            except Exception as e:  # torch.export raises many kinds; all mean "not loadable"
                raise AuditError(f"--model: {path}: an unreadable torch.export file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise AuditError(
                f"--model: {path} is a fully pickled model: loading it runs code stored in the file, "
                f"which can do anything. Save the model as TorchScript (torch.jit.save), torch.export "
                f"(torch.export.save) or a state_dict (--model module:factory --weights file); or, if you "
                f"trust the file, pass --trust-pickle."
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        raise AuditError(f"--model: {path}: not a TorchScript, torch.export or torch.save file ({e})") from None
    if isinstance(obj, dict):
        raise AuditError(f"--model: {path} holds a state_dict, not a model: pass --model module:factory --weights {path}")
    if not isinstance(obj, nn.Module):
        raise AuditError(f"--model: {path}: expected a model, the file holds a {type(obj).__name__}")
    return obj, "pickle"


def load_model(spec: Optional[str], weights: Optional[str], trust_pickle: bool,
               model_args: Sequence[str] = ()) -> Tuple[Model, dict]:
    """``(model, identity)``: the model in eval mode and a JSON-able record of
    what was loaded (``model_args``: ``--model-arg key=value`` items, for a
    ``module:factory`` only; they go into the record)."""
    kwargs = parse_model_args(model_args)
    if kwargs and (spec is None or os.path.exists(spec)):
        raise AuditError("--model-arg: only used with --model module:factory")
    if spec is None:
        if weights is not None:
            raise AuditError("--weights: only used with --model module:factory")
        from .default_model import default_model

        model = default_model()
        return model, {"kind": "default digits CNN", "sha256": state_hash(model)}
    if os.path.exists(spec):
        if weights is not None:
            raise AuditError("--weights: only used with --model module:factory, not with a model file")
        model, kind = _from_file(spec, trust_pickle)
        identity = {"kind": kind, "path": os.path.abspath(spec), "sha256": _file_hash(spec)}
    elif ":" in spec and not spec.endswith((".pt", ".pt2", ".pth", ".ts")):
        model, loaded = _from_factory(spec, weights, kwargs)
        identity = {"kind": "factory", "factory": spec, "sha256": state_hash(model)}
        if kwargs:  # only when given: a plain factory's record (and fingerprint) stays as it was
            identity["model_args"] = {k: repr(v) for k, v in kwargs.items()}
        if loaded:
            identity["weights"] = loaded
    else:
        raise AuditError(f"--model: {spec}: no such file (or give module:factory)")
    if isinstance(model, nn.Module) and identity["kind"] != "torch.export":
        model.eval()  # an exported program's module keeps the mode it was exported in
    return model, identity


# ---------------------------------------------------------------------------
# The class scores among the model's outputs (--output-key)
# ---------------------------------------------------------------------------

# The output a model without --output-key is read from when it does not return a tensor.
DEFAULT_OUTPUT_KEY = "logits"


class SelectedOutput(nn.Module):
    """``model(x)``'s chosen part: ``out[key]`` (``access="item"``: a mapping
    or a tuple) or ``getattr(out, key)`` (``access="attribute"``). The user's
    model is the child ``model``, unchanged: its parameters and module names
    stay reachable under ``model.``."""

    def __init__(self, model: Model, key: Any, access: str) -> None:
        super().__init__()
        self.model = model
        self.key = key
        self.access = access

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.model(*args, **kwargs)
        return out[self.key] if self.access == "item" else getattr(out, self.key)


def user_model_prefix(model: Model) -> str:
    """The path of the user's model inside the audit's wrappers
    (:class:`SelectedOutput`, :class:`~fastattr.cli.transforms.Normalized`):
    ``""``, ``"model."``, ``"model.model."``; the user's module names are
    ``model.named_modules()``'s without it."""
    from .transforms import Normalized

    prefix = ""
    while isinstance(model, (SelectedOutput, Normalized)):
        prefix += "model."
        model = model.model
    return prefix


def first_output(model: Model, example: Tensor) -> Any:
    """``model(example)`` without gradients; a model that cannot take it is
    an AuditError naming ``--data`` with the example's shape."""
    try:
        with torch.no_grad():
            return model(example)
    except Exception as e:  # any failure of the user's model on this input: report it, with the shapes
        raise AuditError(
            f"--data: the model cannot take its examples, shaped {list(example.shape[1:])} "
            f"(as [n, {', '.join(map(str, example.shape[1:]))}] {str(example.dtype).replace('torch.', '')}): "
            f"{type(e).__name__}: {e}"
        ) from None


def class_scores(model: Model, example: Tensor, output_key: Optional[str]) -> Model:
    """A model returning the class scores: ``model`` itself when it returns a
    tensor, else a :class:`SelectedOutput` of it. ``example``: one input
    ``[1, *F]`` the model is run on once to see its output.

    ``output_key`` picks ``out[K]`` from a mapping (Hugging Face's
    ``ModelOutput`` is one), ``out[int(K)]`` from a tuple or list,
    ``getattr(out, K)`` from any other object. Without it, a mapping or an
    object with ``logits`` gives ``logits``; any other output is an
    AuditError listing what it holds and naming ``--output-key``."""
    out = first_output(model, example)
    if isinstance(out, Tensor):
        if output_key is not None:
            raise AuditError(f"--output-key: the model returns a tensor {list(out.shape)}, nothing to choose "
                             f"from; leave --output-key out")
        return model
    key, access = _output_choice(out, output_key)
    chosen = out[key] if access == "item" else getattr(out, key)
    if not isinstance(chosen, Tensor):
        raise AuditError(f"--output-key: the model's output {key!r} is a {_describe(chosen)}, not the class "
                         f"scores tensor; the output is {_contents(out)}")
    return SelectedOutput(model, key, access)


def _output_choice(out: Any, output_key: Optional[str]) -> Tuple[Any, str]:
    """``(key, access)`` of the class scores in ``out``."""
    if output_key is None:
        if isinstance(out, Mapping) and DEFAULT_OUTPUT_KEY in out:
            return DEFAULT_OUTPUT_KEY, "item"
        if not isinstance(out, (Mapping, tuple, list)) and hasattr(out, DEFAULT_OUTPUT_KEY):
            return DEFAULT_OUTPUT_KEY, "attribute"
        raise AuditError(f"--output-key: the model returns {_contents(out)}, not a tensor of class scores "
                         f"and nothing named {DEFAULT_OUTPUT_KEY!r}; pass --output-key to choose the class scores")
    if isinstance(out, Mapping):
        if output_key in out:
            return output_key, "item"
    elif isinstance(out, (tuple, list)):
        try:
            index = int(output_key)
        except ValueError:
            index = None
        if index is not None and -len(out) <= index < len(out):
            return index, "item"
        raise AuditError(f"--output-key: the model returns {_contents(out)}; expected an index from 0 to "
                         f"{len(out) - 1}, got {output_key!r}")
    elif hasattr(out, output_key):
        return output_key, "attribute"
    raise AuditError(f"--output-key: the model's output has no {output_key!r}; it is {_contents(out)}")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor {list(value.shape)}"
    if isinstance(value, (tuple, list, Mapping)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _contents(out: Any) -> str:
    """What an output holds: keys, elements or public attributes, each with its type (and shape)."""
    if isinstance(out, Mapping):
        items = ", ".join(f"{k!r}: {_describe(v)}" for k, v in out.items())
        return f"a {type(out).__name__} with keys {{{items}}}"
    if isinstance(out, (tuple, list)):
        items = ", ".join(f"[{i}] {_describe(v)}" for i, v in enumerate(out))
        return f"a {type(out).__name__} of {len(out)}: {items}"
    names = sorted(n for n in getattr(out, "__dict__", {}) if not n.startswith("_"))
    held = ", ".join(f"{n}: {_describe(getattr(out, n))}" for n in names)
    return f"a {type(out).__name__}" + (f" with attributes {held}" if held else "")
