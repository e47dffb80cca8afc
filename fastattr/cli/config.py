"""The audit's command line and its run configuration.

The fingerprint covers everything that changes a result (model and data
contents, methods, metrics and their settings, batching, seed, device
kind, memory budget); an ``--out`` that holds another fingerprint's
results is refused rather than mixed."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from typing import Any, Dict, Optional, Sequence, Tuple


class AuditError(Exception):
    """Bad input to the audit: printed as ``fastattr audit: error: <message>``, exit code 2."""


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """One audit run, as given on the command line."""

    model: Optional[str]  # None: the embedded digits CNN
    weights: Optional[str]
    trust_pickle: bool
    data: Optional[str]  # None: scikit-learn's digits (held-out split)
    limit: Optional[int]
    batch_size: int
    shard_batches: int
    device: str
    memory_budget: Optional[int]
    seed: int
    methods: Tuple[str, ...]
    metrics: Tuple[str, ...]
    out: str
    quiet: bool


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _names(text: str) -> Tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def build_parser(methods: Sequence[str], metrics: Sequence[str], default_methods: Sequence[str],
                 default_metrics: Sequence[str]) -> argparse.ArgumentParser:
    """The ``fastattr audit`` argument parser (``methods``/``metrics``: the names available)."""
    p = argparse.ArgumentParser(
        prog="fastattr audit",
        description="Explanations of a whole data set and their robustness: which explanation method "
                    "can be trusted for this model and data, and how robust the model and each explanation are.",
    )
    p.add_argument("--model", help="module:factory (a function returning the nn.Module), or a TorchScript / "
                   "torch.export file; default: a small CNN trained on scikit-learn's digits and cached")
    p.add_argument("--weights", help="state_dict for --model module:factory, loaded with weights_only=True")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow --model to be a fully pickled model (runs arbitrary code from the file)")
    p.add_argument("--data", help=".npz with arrays x [N, ...] and y [N] (integer labels), or an image folder "
                   "with one sub-folder per class; default: scikit-learn's digits (held-out split)")
    p.add_argument("--limit", type=_positive_int, help="audit only the first LIMIT examples")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="examples per batch (part of the configuration: random draws are keyed by data-set "
                        "index, but a model's kernels may round differently per batch size)")
    p.add_argument("--shard-batches", type=_positive_int, default=2,
                   help="batches per shard, the unit of checkpointing and of distribution")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun, cuda means each rank's local GPU)")
    p.add_argument("--memory-budget", type=_positive_int, help="bytes per engine chunk (default: the engine's)")
    p.add_argument("--seed", type=_seed, default=0, help="key of every random draw")
    p.add_argument("--methods", type=_names, default=tuple(default_methods),
                   help=f"comma-separated explanation methods, from: {', '.join(methods)} "
                        f"(default: {','.join(default_methods)}); 'list' prints them")
    p.add_argument("--metrics", type=_names, default=tuple(default_metrics),
                   help=f"comma-separated metrics, from: {', '.join(metrics)} (default: {','.join(default_metrics)}); "
                        f"'list' prints them")
    p.add_argument("--out", default="audit-out", help="output folder (default: ./audit-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_names(given: Tuple[str, ...], available: Sequence[str], option: str) -> Tuple[str, ...]:
    """The requested names, each available and given once (in the given order)."""
    if not given:
        raise AuditError(f"{option}: expected at least one name, from: {', '.join(available)}")
    unknown = [n for n in given if n not in available]
    if unknown:
        raise AuditError(f"{option}: unknown {', '.join(map(repr, unknown))}; available: {', '.join(available)}")
    if len(set(given)) != len(given):
        raise AuditError(f"{option}: a name is given twice in {','.join(given)}")
    return given


def fingerprint(record: Dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that changes a result."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
