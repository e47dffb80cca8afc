"""What the audit's Quantus-style metric groups share: their common settings
(Quantus's ``abs`` / ``normalise`` of the explanation, baselines, outputs,
step sizes that default by input size), the explanation as Quantus's
options prepare it, and the checks of an input shape a metric needs.

Step sizes: Quantus replaces one input value per step (``features_in_step
= 1``), which costs one forward row per input value (150,528 rows per
example and method on 3 x 224 x 224 images). The audit's default is
``ceil(F / 64)`` values per step, a curve of 64 points whatever the input
size (F = 64 on the 8 x 8 digits: one value per step, as Quantus)."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..quantus._base import PER_EXAMPLE_NORMALISERS
from .config import AuditError
from .measures import Group, Resolve
from .options import Setting, boolean, choice, choice_or_number, integer

Installed = Callable[[str], Optional[Any]]  # a fastattr.metrics module by name, None when not installed
STEP_POINTS = 64  # default points of a curve over the input values (module docstring)
REPLACEMENTS = ("black", "white", "uniform")  # Quantus's perturb_baseline names the replacement metrics take


def features_in_step_setting(features: int) -> Setting:
    """``features_in_step``, by input size: ``ceil(F / 64)`` (1 in a listing, where F is unknown)."""
    default = max(1, math.ceil(features / STEP_POINTS))
    return Setting("features_in_step", default, integer(1),
                   f"input values per step (default by input size: ceil(values / {STEP_POINTS}), a curve of "
                   f"{STEP_POINTS} steps; Quantus's 1 costs a forward row per value)")


_MEANINGS = {"black": "the example's min", "white": "the example's max", "mean": "the example's mean",
             "uniform": "keyed uniform draws in [0, 1)"}


def baseline_setting(default: Any, names: Sequence[str] = REPLACEMENTS) -> Setting:
    """``baseline``: what a replaced value becomes (Quantus's ``perturb_baseline``)."""
    return Setting("baseline", default, choice_or_number(tuple(names)),
                   "what a replaced value becomes: " + ", ".join(f"{n} ({_MEANINGS[n]})" for n in names)
                   + " or a number")


def output_setting(default: str) -> Setting:
    """``output``: the model output compared (Quantus's ``softmax``)."""
    return Setting("output", default, choice("probability", "logit"),
                   "the explained class's probability (softmax) or its logit")


def similarity_setting(default: str, names: Sequence[str] = ("pearson", "spearman")) -> Setting:
    return Setting("similarity", default, choice(*names), "the correlation of the two series")


def abs_setting(default: bool) -> Setting:
    """``abs``: Quantus's option to take ``|a|`` first (its default for the metric)."""
    return Setting("abs", default, boolean, "use |attributions| (Quantus's default for this metric)")


def normalise_setting(default: bool) -> Setting:
    """``normalise``: Quantus's option to divide each explanation by its max ``|a|``."""
    return Setting("normalise", default, boolean,
                   "divide each example's attributions by their max |a| (Quantus's normalise_by_max)")


def prepared(attrs: Tensor, settings: Mapping[str, Any]) -> Tensor:
    """The explanation ``[b, *F]`` as the group's ``normalise`` and ``abs``
    settings make it (each only when the group declares it), in Quantus's order."""
    if settings.get("normalise", False):
        attrs = PER_EXAMPLE_NORMALISERS["normalise_by_max"](attrs)
    return attrs.abs() if settings.get("abs", False) else attrs


def column(values: Tensor) -> Tensor:
    """A metric's per-example values (float, int or bool ``[b]``) as the audit's float64 column."""
    return values.to(torch.float64)


def needs_shape(metric: str, shape: Tuple[int, ...], ranks: Sequence[int], what: str) -> None:
    """An AuditError naming ``--metrics`` unless one example's ``shape`` has one of ``ranks`` dims."""
    if len(shape) not in ranks:
        raise AuditError(f"--metrics: {metric} needs {what}, but an example of --data is shaped {list(shape)}")


def points_resolve(metric: str) -> Resolve:
    """A group's ``resolve`` adding ``n_points``: the steps of ``features_in_step``
    values in an example ``[*F]`` (a step larger than the example: an AuditError)."""
    def resolve(settings: Dict[str, Any], model: Any, shape: Tuple[int, ...], prefix: str) -> Dict[str, Any]:
        at_most_features(metric, "features_in_step", settings["features_in_step"], shape)
        return {**settings, "n_points": -(-math.prod(shape) // settings["features_in_step"])}
    return resolve


def at_most_features(metric: str, key: str, value: int, shape: Tuple[int, ...]) -> None:
    """An AuditError naming the setting when ``value`` exceeds an example's number of values."""
    if value > math.prod(shape):
        raise AuditError(f"--metric-option: {metric}.{key}: {value} is more than the {math.prod(shape)} values "
                         f"of an example {list(shape)}")


def built(installed: Installed, builders: Sequence[Tuple[str, Callable[[Any], Any]]]) -> List[Group]:
    """The groups of each ``(module name, build)`` whose :mod:`fastattr.metrics`
    module is installed (``build(module)``: a group or a list of groups), in order."""
    out: List[Group] = []
    for name, build in builders:
        module = installed(name)
        if module is not None:
            made = build(module)
            out.extend(made if isinstance(made, list) else [made])
    return out
