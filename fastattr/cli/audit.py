"""``fastattr audit``: every example of a data set explained by every method,
each explanation's metrics and the model's robustness, computed shard by
shard (resumable, distributable with torchrun) and merged into a table,
``summary.json`` and ``report.html`` with a verdict: which method to trust."""
from __future__ import annotations

import dataclasses
import platform
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from . import rundir
from .config import AuditConfig, AuditError, build_parser, check_names, fingerprint
from .data import MASK_SHAPES, Dataset, load_dataset
from .measures import BatchContext, Group, Values, available_groups, metric_names, resolved_for_model
from .methods import (
    DEFAULT_METHODS, METHOD_SETTINGS, METHODS, MethodContext, check_applicable, check_settings, describe_methods,
    explain, explain_with_error, explainer_for, make_context, method_rows,
)
from .models import SelectedOutput, class_scores, first_output, load_model, user_model_prefix
from .options import Resolved, describe, load_config_file, parse_assignments, resolve
from .plan import Plan, fit_budget, measure_row_cost, rows_per_example
from .progress import Progress
from .shards import Ranks, Shard, batches_of, close_ranks, commit_shard, committed, init_ranks, plan_shards
from .transforms import transform_from_options, with_normalization

Model = Callable[..., Tensor]
ALL_METHODS = "all"


def _metric_listing(groups: Sequence[Group]) -> str:
    declared = {g.name: g.settings(0) for g in groups}
    return describe(declared, {g.name: ", ".join(g.metrics) for g in groups})


def parse_config(argv: Sequence[str], groups: Sequence[Group]) -> Optional[AuditConfig]:
    """The run's configuration (None when only a listing was asked for and printed)."""
    names = metric_names(groups)
    args = build_parser(tuple(METHODS), names, DEFAULT_METHODS, metric_names(groups, True)).parse_args(list(argv))
    if args.methods == ("list",) or args.metrics == ("list",):
        print(describe_methods() if args.methods == ("list",) else _metric_listing(groups))
        return None
    methods = args.methods
    if methods is not None and methods != (ALL_METHODS,):
        methods = check_names(methods, tuple(METHODS), "--methods")
    return AuditConfig(
        model=args.model, weights=args.weights, trust_pickle=args.trust_pickle, data=args.data,
        limit=args.limit, batch_size=args.batch_size, shard_batches=args.shard_batches, device=args.device,
        memory_budget=args.memory_budget, seed=args.seed, methods=methods,
        metrics=check_names(args.metrics, names, "--metrics"), out=args.out, quiet=args.quiet,
        model_args=tuple(args.model_arg), output_key=args.output_key, resize=args.resize, crop=args.crop,
        channels=args.channels, mean=args.mean, std=args.std, transforms=args.transforms,
        method_options=tuple(args.method_option), metric_options=tuple(args.metric_option),
        config_file=args.config, budget_minutes=args.budget_minutes, plan_only=args.plan_only,
        model_form=args.model_form,
    )


def resolve_device(spec: str) -> torch.device:
    """``--device``; under torchrun a bare ``cuda`` is each rank's ``LOCAL_RANK`` GPU."""
    import os

    try:
        device = torch.device(spec)
    except RuntimeError:
        raise AuditError(f"--device: expected cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AuditError(f"--device: {spec} asked for, but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise AuditError(f"--device: expected cpu, cuda or cuda:N, got {spec!r}")
    return device


def check_model_fits(model: Model, data: Dataset, device: torch.device) -> int:
    """The model's number of classes, after checking it takes the data's examples
    and returns ``[n, C]`` scores with a class for every label (one forward of one example)."""
    out = first_output(model, torch.from_numpy(data.x[:1]).to(device))
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise AuditError(f"--model: expected class scores [n, C] for n examples, got {shape} for n = 1")
    n_classes = out.shape[1]
    top = int(data.y.max())
    if top >= n_classes:
        raise AuditError(
            f"--model: its output has {n_classes} classes but --data has label {top}: the model does not fit the labels"
        )
    return n_classes


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the run computes with, settled before any work."""

    model: Model
    data: Dataset
    methods: Tuple[str, ...]  # the methods that run (the requested ones that can explain the model)
    not_applicable: Dict[str, str]  # requested method -> why it cannot explain this model
    method_settings: Resolved  # method -> its settings
    metric_settings: Resolved  # group name -> its settings
    context: MethodContext
    groups: Tuple[Group, ...]  # the groups that compute a requested metric
    run: Dict[str, Any]  # run.json
    shares: Dict[Tuple[str, Optional[str]], float]  # each unit of a batch's work: its share (progress)


def _given_options(config: AuditConfig) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(file, command line)`` settings: ``{"methods": ..., "metrics": ...}`` each."""
    file = load_config_file(config.config_file) if config.config_file else {"methods": {}, "metrics": {}}
    line = {"methods": parse_assignments(config.method_options, "--method-option"),
            "metrics": parse_assignments(config.metric_options, "--metric-option")}
    return file, line


def _resolved(declared: Any, file: Dict[str, Any], line: Dict[str, Any], option: str) -> Resolved:
    return resolve(declared, line, option, base=resolve(declared, file, "--config"))


def _chosen_methods(config: AuditConfig, model: Model, data: Dataset, device: torch.device,
                    settings: Resolved) -> Tuple[Tuple[str, ...], Dict[str, str], MethodContext]:
    """The methods that run, those that cannot explain the model (with why) and
    their context. A method named in ``--methods`` that cannot explain the
    model is an error; the default set (or ``all``) drops it and says why."""
    named = config.methods is not None and config.methods != (ALL_METHODS,)
    requested = config.methods if named else (tuple(METHODS) if config.methods else DEFAULT_METHODS)
    chosen = {m: settings[m] for m in requested}
    check_settings(chosen, "--method-option")
    context = make_context(model, torch.from_numpy(data.x), config.seed, chosen, device, user_model_prefix(model),
                           config.model_form)
    x1 = torch.from_numpy(data.x[:1]).to(device)
    with torch.no_grad():
        target = model(x1).argmax(1)
    not_applicable: Dict[str, str] = {}
    for m in requested:
        reason = check_applicable(m, model, x1, target, chosen[m], context)
        if reason is not None and named:
            raise AuditError(f"--methods: {reason}")
        if reason is not None:
            not_applicable[m] = reason
    methods = tuple(m for m in requested if m not in not_applicable)
    if not methods:
        raise AuditError("--methods: no method can explain this model: " + "; ".join(not_applicable.values()))
    return methods, not_applicable, context


def _explicit(file: Dict[str, Any], line: Dict[str, Any]) -> Set[Tuple[str, str]]:
    return {(g, k) for given in (file["metrics"], line["metrics"]) for g, values in given.items() for k in values}


def _prepare(config: AuditConfig, all_groups: Sequence[Group], ranks: Ranks, device: torch.device) -> Prepared:
    file, line = _given_options(config)
    transform = transform_from_options(config.resize, config.crop, config.channels, config.mean, config.std,
                                       config.transforms)
    data = load_dataset(config.data, config.limit, config.seed, transform)
    check_masks_given(config, all_groups, data)
    if config.model is None and ranks.rank != 0:
        ranks.barrier()  # rank 0 trains and caches the default model first
    model, identity = load_model(config.model, config.weights, config.trust_pickle, config.model_args)
    if config.model is None and ranks.rank == 0:
        ranks.barrier()
    model = with_normalization(model, transform)
    if isinstance(model, torch.nn.Module):
        model = model.to(device)
    model = class_scores(model, torch.from_numpy(data.x[:1]).to(device), config.output_key)
    if isinstance(model, SelectedOutput):
        identity = {**identity, "output_key": model.key}
    check_model_fits(model, data, device)

    method_settings = _resolved(METHOD_SETTINGS, file["methods"], line["methods"], "--method-option")
    methods, not_applicable, context = _chosen_methods(config, model, data, device, method_settings)
    groups = tuple(g for g in all_groups if set(g.metrics) & set(config.metrics))
    needing = [n for g in groups if g.needs_module for n in g.metrics if n in config.metrics]
    if needing and not isinstance(model, torch.nn.Module):
        raise AuditError(f"--metrics: {', '.join(needing)} randomizes parameters and needs an nn.Module model "
                         f"(--model module:factory), not a {type(model).__name__}")
    features = int(data.x[0].size)
    declared = {g.name: g.settings(features) for g in all_groups}
    resolved = _resolved(declared, file["metrics"], line["metrics"], "--metric-option")
    metric_settings = {g.name: resolved_for_model(g, resolved[g.name], model, context.layer_prefix,
                                                  data.x.shape[1:]) for g in groups}
    method_settings = {m: method_settings[m] for m in methods}
    if not config.quiet or config.budget_minutes is not None or config.plan_only:
        metric_settings = _planned(config, model, data, methods, method_settings, metric_settings, groups,
                                   _explicit(file, line), ranks)
    run = run_record(config, data, identity, groups, device, methods, not_applicable, method_settings,
                     metric_settings, context)
    return Prepared(model, data, methods, not_applicable, method_settings, metric_settings, context, groups, run,
                    unit_shares(methods, method_settings, metric_settings, groups))


def check_masks_given(config: AuditConfig, groups: Sequence[Group], data: Dataset) -> None:
    """An AuditError naming ``s`` when a requested metric needs ground-truth masks the data lacks."""
    needing = [n for g in groups if g.needs_masks for n in g.metrics if n in config.metrics]
    if needing and data.s is None:
        raise AuditError(
            f"--metrics: {', '.join(needing)} compare explanations with ground-truth masks, and --data has none: "
            f"give an .npz with an array s (masks {MASK_SHAPES} of 0/1) beside x and y")


def _planned(config: AuditConfig, model: Model, data: Dataset, methods: Tuple[str, ...], method_settings: Resolved,
             metric_settings: Resolved, groups: Sequence[Group], explicit: Set[Tuple[str, str]], ranks: Ranks
             ) -> Resolved:
    """The metric settings the plan keeps (``--budget-minutes`` may lower
    sample counts), after printing the plan (rank 0, unless ``--quiet``)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu")) \
        if isinstance(model, torch.nn.Module) else torch.device("cpu")
    # The engine runs rows in chunks of tens to hundreds: time a chunk of 16
    # (the first examples, repeated when fewer), where per-row costs settle.
    first = torch.from_numpy(data.x[:16]).to(device)
    cost = measure_row_cost(model, first.repeat(-(-16 // first.shape[0]), *([1] * (first.dim() - 1)))[:16])
    rows = method_rows(method_settings)

    def plan_of(settings: Resolved) -> Plan:
        return Plan(len(data.y), methods, config.metrics, *rows_per_example(rows, groups, settings), cost)

    plan = plan_of(metric_settings)
    if config.budget_minutes is not None:
        metric_settings, plan = fit_budget(plan_of, metric_settings, sorted(explicit), config.budget_minutes)
    if ranks.rank == 0 and (not config.quiet or config.plan_only):
        print(plan.describe(metric_settings), file=sys.stderr)
    return metric_settings


def run_record(config: AuditConfig, data: Dataset, model_identity: Dict[str, Any], groups: Sequence[Group],
               device: torch.device, methods: Tuple[str, ...], not_applicable: Dict[str, str],
               method_settings: Resolved, metric_settings: Resolved, context: MethodContext) -> Dict[str, Any]:
    """``run.json``: the configuration, what was loaded, and the fingerprint of what changes results."""
    fingerprinted = {
        "model": model_identity, "data": {"description": data.description, "sha256": data.content_hash(),
                                          "n_examples": int(len(data.y))},
        "batch_size": config.batch_size, "shard_batches": config.shard_batches, "seed": config.seed,
        "methods": list(methods), "metrics": list(config.metrics),
        "methods_requested": list(methods) + list(not_applicable),
        "method_settings": method_settings,
        "metric_settings": {n: {**metric_settings[g.name], **g.described} for g in groups for n in g.metrics
                            if n in config.metrics},
        "device_type": device.type, "memory_budget": config.memory_budget, "fastattr": __version__,
        "model_form": config.model_form,
    }
    if context.auto_layer is not None:
        fingerprinted["auto_layer"] = context.auto_layer
    return {
        "fingerprint": fingerprint(fingerprinted), "fingerprinted": fingerprinted, "not_applicable": not_applicable,
        "command": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "versions": {"fastattr": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }


def unit_shares(methods: Sequence[str], method_settings: Resolved, metric_settings: Resolved,
                groups: Sequence[Group]) -> Dict[Tuple[str, Optional[str]], float]:
    """Each unit of a batch's work ((group, method) or (``"explain"``, method))
    with its share of an example's rows, for the progress inside a batch."""
    rows = method_rows(method_settings)
    weights: Dict[Tuple[str, Optional[str]], float] = {}
    for m in methods:
        weights[("explain", m)] = rows[m]
    for g in groups:
        for m in (methods if g.per_method else (None,)):
            gradient, forward = g.cost(metric_settings[g.name], rows[m] if m else 1)
            weights[(g.name, m)] = gradient + forward / 3  # a forward pass is about a third of forward+backward
    total = sum(weights.values()) or 1.0
    return {k: w / total for k, w in weights.items()}


def audit_batch(p: Prepared, x: Tensor, y: Tensor, offset: int, config: AuditConfig,
                advance: Callable[[float], None]) -> Tuple[Tensor, Dict[str, Tensor], Dict[str, Tensor]]:
    """``(pred [b], columns, curves)`` of one batch: model columns ``[b]``,
    per-method columns ``[M, b]``, curves ``[M, b, K]`` (M = ``p.methods``).
    ``advance(f)``: called after each unit of work with ``f``, its share of the batch."""
    with torch.no_grad():
        pred = p.model(x).argmax(1)

    def explainer_of(method: str) -> Tuple[Any, Dict[str, Any]]:
        return explainer_for(method, x, config.seed, config.memory_budget, p.method_settings[method], p.context)

    masks = None if p.data.s is None else torch.from_numpy(p.data.s[offset:offset + x.shape[0]]).to(x.device)
    ctx = BatchContext(p.model, x, y, pred, offset, config.seed, config.memory_budget, p.metric_settings,
                       explainer_of, p.context.layer_prefix, masks, model_form=config.model_form)
    share = p.shares
    wanted = set(config.metrics)
    columns: Dict[str, Tensor] = {}
    curves: Dict[str, List[Tensor]] = {}
    per_method: Dict[str, List[Tensor]] = {}

    def keep(values: Values, into: Dict[str, Any], stacked: bool) -> None:
        for k, t in values.columns.items():
            if k in wanted:
                (into.setdefault(k, []).append(t) if stacked else into.__setitem__(k, t))
        for k, t in values.curves.items():  # curves of a computed group: it was asked for
            curves.setdefault(k, []).append(t)

    for g in p.groups:
        if not g.per_method:
            keep(g.compute(ctx, None, None), columns, stacked=False)
            advance(share[(g.name, None)])
    for method in p.methods:
        attrs, ctx.errors[method] = explain_with_error(method, p.model, x, pred, config.seed, offset,
                                                       config.memory_budget, p.method_settings[method], p.context)
        attrs = attrs.detach()
        advance(share[("explain", method)])
        for g in p.groups:
            if g.per_method:
                keep(g.compute(ctx, method, attrs), per_method, stacked=True)
                advance(share[(g.name, method)])
    columns.update({k: torch.stack(v) for k, v in per_method.items()})
    return pred, columns, {k: torch.stack(v) for k, v in curves.items()}


def audit_shard(p: Prepared, shard: Shard, config: AuditConfig, device: torch.device,
                on_progress: Callable[[float], None]) -> Dict[str, np.ndarray]:
    """The shard's result arrays: ``index``/``source_index``/``label``/``pred``
    ``[n]``, ``model:<metric>`` ``[n]``, ``method:<metric>`` ``[M, n]``,
    ``curve:<name>`` ``[M, n, K]``. ``on_progress(n)``: ``n`` more examples done (fractional)."""
    parts: Dict[str, List[np.ndarray]] = {}
    for batch in batches_of(shard, config.batch_size):
        x = torch.from_numpy(p.data.x[batch.start:batch.stop]).to(device)
        y = torch.from_numpy(p.data.y[batch.start:batch.stop]).to(device)
        pred, columns, curves = audit_batch(p, x, y, batch.start, config, lambda f: on_progress(f * len(batch)))
        arrays = {"index": np.arange(batch.start, batch.stop, dtype=np.int64),
                  "source_index": p.data.source_index[batch.start:batch.stop],
                  "label": y.cpu().numpy(), "pred": pred.cpu().numpy()}
        for k, t in columns.items():
            arrays[("method:" if t.dim() == 2 else "model:") + k] = t.detach().cpu().to(torch.float64).numpy()
        for k, t in curves.items():
            arrays["curve:" + k] = t.detach().cpu().to(torch.float64).numpy()
        for k, a in arrays.items():
            parts.setdefault(k, []).append(a)
    return {k: np.concatenate(v, axis=-2 if k.startswith("curve:") else -1) for k, v in parts.items()}


def examples_of(p: Prepared, config: AuditConfig, device: torch.device
                ) -> Callable[[str, Sequence[int]], Tuple[np.ndarray, np.ndarray]]:
    """``(method, indices) -> (inputs, attributions)`` for the report's heatmaps:
    each example explained alone, with its own data-set index as the key of
    its draws (the audit's values up to the batch size's float rounding)."""
    def of(method: str, indices: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        attrs = []
        for i in indices:
            x = torch.from_numpy(p.data.x[i:i + 1]).to(device)
            with torch.no_grad():
                pred = p.model(x).argmax(1)
            a = explain(method, p.model, x, pred, config.seed, i, config.memory_budget, p.method_settings[method],
                        p.context)
            attrs.append(a[0].detach().cpu().numpy())
        return p.data.x[list(indices)], np.stack(attrs)

    return of


def write_outputs(config: AuditConfig, p: Prepared, device: torch.device, shards: Sequence[Shard]) -> None:
    """Merge the committed shards into the table, ``summary.json`` and ``report.html``."""
    import os

    from .report import render_report
    from .results import merge, write_tables
    from .shards import atomic_write

    merged = merge(config.out, shards, config, p.run, p.groups, p.not_applicable)
    write_tables(config.out, merged)
    page = render_report(merged, examples_of(p, config, device))
    atomic_write(os.path.join(config.out, "report.html"), lambda f: f.write(page.encode()))


def run_audit(argv: Sequence[str]) -> int:
    """Run ``fastattr audit`` with command-line arguments ``argv``; the exit status."""
    groups = available_groups()
    config = parse_config(argv, groups)
    if config is None:
        return 0
    device = resolve_device(config.device)
    ranks = init_ranks(device)
    try:
        return _run(config, groups, ranks, device)
    finally:
        close_ranks(ranks)


def _run(config: AuditConfig, groups: Sequence[Group], ranks: Ranks, device: torch.device) -> int:
    error: Optional[AuditError] = None
    try:
        p = _prepare(config, groups, ranks, device)
        if ranks.rank == 0 and not config.plan_only:
            rundir.claim(config.out, p.run)
    except AuditError as e:
        error = e
    if not ranks.all_ok(error is None):
        if error is not None:
            raise error
        return 2  # another rank reported the bad input
    if config.plan_only:
        return 0
    shards = plan_shards(len(p.data.y), config.batch_size, config.shard_batches)
    done = committed(config.out, shards)
    ranks.barrier()  # every rank has listed what was committed before anyone commits more
    done_names = {s.name for s in done}
    mine = ranks.my_shards([s for s in shards if s.name not in done_names])
    progress = Progress(len(p.data.y), sum(s.stop - s.start for s in done), config.quiet or ranks.rank != 0)
    finished = [float(progress.done)]

    def on_progress(n: float) -> None:
        finished[0] += n * ranks.world  # rank 0 speaks for all: ranks move at about the same pace
        progress.update(min(round(finished[0], 6), len(p.data.y)))  # a batch's shares sum to 1 up to rounding

    ok = True
    try:
        for shard in mine:
            commit_shard(config.out, shard, audit_shard(p, shard, config, device, on_progress))
    except BaseException:
        ok = False
        raise
    finally:
        progress.close()
        if ranks.distributed and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
            ok = ranks.all_ok(ok)
    if not ok:
        raise AuditError("another rank failed; its shards are not committed: rerun the same command to resume")
    if ranks.rank == 0:
        write_outputs(config, p, device, shards)
        if not config.quiet:
            print(f"fastattr audit: wrote {config.out}/results.parquet, results.csv, summary.json, report.html",
                  file=sys.stderr)
    return 0
