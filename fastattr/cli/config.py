"""The audit's command line and its run configuration.

The fingerprint covers everything that changes a result (model and data
contents, methods, metrics and their settings, batching, seed, device
kind, memory budget, model form); an ``--out`` that holds another fingerprint's
results is refused rather than mixed."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from typing import Any, Dict, Optional, Sequence, Tuple

from ..engine.model_form import FORMS as MODEL_FORMS


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
    methods: Optional[Tuple[str, ...]]  # None: the default set, less what cannot explain the model
    metrics: Tuple[str, ...]
    out: str
    quiet: bool
    model_args: Tuple[str, ...] = ()  # k=v keyword arguments of the factory
    output_key: Optional[str] = None
    resize: Optional[Tuple[int, ...]] = None  # (S,) shorter side then centre crop, or (H, W)
    crop: Optional[Tuple[int, int]] = None
    channels: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    transforms: Optional[str] = None  # torchvision weights name whose eval transforms to use
    method_options: Tuple[str, ...] = ()  # method.key=value
    metric_options: Tuple[str, ...] = ()  # group.key=value
    config_file: Optional[str] = None
    budget_minutes: Optional[float] = None
    plan_only: bool = False
    model_form: str = "fast"  # the form the engine's rows run the model in (fastattr.engine.model_form)


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


def _sizes(text: str) -> Tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected S or H,W (integers > 0), got {text!r}")
    return sizes


def _floats(text: str) -> Tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (one per channel), got {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
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
    p.add_argument("--model-arg", action="append", default=[], metavar="K=V",
                   help="keyword argument of the --model factory (repeatable): the value is read as a Python "
                        "literal (3, 0.5, True, None, (1, 2), 'text'), else kept as text; e.g. --model-arg num_classes=3")
    p.add_argument("--weights", help="for --model module:factory: a state_dict (torch.save, loaded with "
                   "weights_only=True; a checkpoint's 'state_dict' or 'model' entry and DataParallel's "
                   "'module.' prefixes are recognised) or a .safetensors file")
    p.add_argument("--output-key", help="the class scores in a model output that is not a tensor: a key of a "
                   "dict / Hugging Face ModelOutput, an attribute name, or a tuple index; default: 'logits' "
                   "when the output has it")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow --model to be a fully pickled model (runs arbitrary code from the file)")
    p.add_argument("--data", help=".npz with arrays x [N, ...] and y [N] (integer labels), or an image folder "
                   "with one sub-folder per class; default: scikit-learn's digits (held-out split)")
    p.add_argument("--limit", type=_positive_int,
                   help="audit LIMIT examples: a sample stratified by class (each class in proportion, at least "
                        "one each when LIMIT allows), drawn with --seed, kept in data-set order")
    t = p.add_argument_group(
        "input transforms",
        "Images are read in pixel units, [0, 1]; perturbation radii, attack epsilons and heatmaps are in those "
        "units. --mean/--std normalisation is applied as the first layer of the audited model, so the "
        "explanations are of the pixels.")
    t.add_argument("--resize", type=_sizes, metavar="S|H,W",
                   help="S: scale the shorter side to S, then centre-crop SxS; H,W: resize to exactly HxW "
                        "(bilinear, antialiased); needed when the images differ in size")
    t.add_argument("--crop", type=_sizes, metavar="S|H,W", help="centre crop after --resize")
    t.add_argument("--channels", type=int, choices=(1, 3),
                   help="1 (grey) or 3 (RGB); default: the images' own (a folder of grey images gives 1)")
    t.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean of the model's normalisation")
    t.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std of the model's normalisation")
    t.add_argument("--transforms", metavar="WEIGHTS",
                   help="use a torchvision weights entry's evaluation transforms (resize, crop, mean, std), e.g. "
                        "ResNet18_Weights.IMAGENET1K_V1; read from torchvision, nothing downloaded")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="examples per batch (part of the configuration: random draws are keyed by data-set "
                        "index, but a model's kernels may round differently per batch size)")
    p.add_argument("--shard-batches", type=_positive_int, default=2,
                   help="batches per shard, the unit of checkpointing and of distribution")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun, cuda means each rank's local GPU)")
    p.add_argument("--memory-budget", type=_positive_int, help="bytes per engine chunk (default: the engine's)")
    p.add_argument("--seed", type=_seed, default=0, help="key of every random draw")
    p.add_argument("--model-form", choices=MODEL_FORMS, default="fast",
                   help="the form the methods' and metrics' rows run the model in: fast (default: a copy with "
                        "BatchNorm folded and channels-last rows, equal to eager up to float rounding), eager "
                        "(the model as it is) or compiled (torch.compile); methods with backward rules or layer "
                        "hooks run eagerly (see docs/model_form.md)")
    p.add_argument("--methods", type=_names,
                   help=f"comma-separated explanation methods, from: {', '.join(methods)} "
                        f"(default: {','.join(default_methods)}, less those that cannot explain the model, "
                        f"which the plan names); 'list' prints them with their settings")
    p.add_argument("--metrics", type=_names, default=tuple(default_metrics),
                   help=f"comma-separated metrics, from: {', '.join(metrics)} (default: {','.join(default_metrics)}); "
                        f"'list' prints them with their settings")
    p.add_argument("--method-option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method's setting (repeatable), e.g. integrated_gradients.n_steps=32; "
                        "--methods list shows them")
    p.add_argument("--metric-option", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help="a metric's setting (repeatable), e.g. sensitivity.n_samples=8; --metrics list shows them")
    p.add_argument("--config", metavar="FILE.toml",
                   help="settings from a TOML file: [methods.<method>] and [metrics.<group>] tables; "
                        "--method-option / --metric-option override it")
    p.add_argument("--budget-minutes", type=_positive_float,
                   help="lower the metrics' sample counts (those not set explicitly) so that the estimated "
                        "time fits; refused, before any work, when even the fewest samples do not fit")
    p.add_argument("--plan-only", action="store_true", help="print the plan and its estimated time, and stop")
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
