"""The audited model: ``module:factory`` (+ ``--weights`` state_dict), a
TorchScript or ``torch.export`` file, a fully pickled model only with
``--trust-pickle``, or the embedded default; and a content hash that identifies it."""
from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import sys
import zipfile
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .config import AuditError

Model = Callable[..., torch.Tensor]


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


def _from_factory(spec: str, weights: Optional[str]) -> nn.Module:
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
    model = factory()
    if not isinstance(model, nn.Module):
        raise AuditError(f"--model: {spec}() must return a torch.nn.Module, got {type(model).__name__}")
    if weights is not None:
        if not os.path.isfile(weights):
            raise AuditError(f"--weights: {weights}: no such file")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise AuditError(f"--weights: {weights}: not a state_dict loadable with weights_only=True ({e})") from None
        if not isinstance(state, dict):
            raise AuditError(f"--weights: {weights}: expected a state_dict, got {type(state).__name__}")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise AuditError(f"--weights: {weights}: does not fit {spec}() ({e})") from None
    return model


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


def load_model(spec: Optional[str], weights: Optional[str], trust_pickle: bool) -> Tuple[Model, dict]:
    """``(model, identity)``: the model in eval mode and a JSON-able record of what was loaded."""
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
        model = _from_factory(spec, weights)
        identity = {"kind": "factory", "factory": spec, "sha256": state_hash(model)}
    else:
        raise AuditError(f"--model: {spec}: no such file (or give module:factory)")
    if isinstance(model, nn.Module) and identity["kind"] != "torch.export":
        model.eval()  # an exported program's module keeps the mode it was exported in
    return model, identity
