"""``fastattr audit``: every example of a data set explained by every method,
each explanation's metrics and the model's robustness, computed shard by
shard (resumable, distributable with torchrun) and merged into a table,
``summary.json`` and ``report.html``."""
from __future__ import annotations

import platform
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from . import rundir
from .config import AuditConfig, AuditError, build_parser, check_names, fingerprint
from .data import Dataset, load_dataset
from .measures import BatchContext, Group, Values, available_groups, metric_names
from .methods import DEFAULT_METHODS, METHODS, explain
from .models import load_model
from .progress import Progress
from .shards import Ranks, Shard, batches_of, close_ranks, commit_shard, committed, init_ranks, plan_shards

Model = Callable[..., Tensor]


def parse_config(argv: Sequence[str], groups: Sequence[Group]) -> Optional[AuditConfig]:
    """The run's configuration (None when only a listing was asked for and printed)."""
    names = metric_names(groups)
    args = build_parser(tuple(METHODS), names, DEFAULT_METHODS, metric_names(groups, True)).parse_args(list(argv))
    if args.methods == ("list",) or args.metrics == ("list",):
        listed = METHODS if args.methods == ("list",) else names
        print("\n".join(listed))
        return None
    return AuditConfig(
        model=args.model, weights=args.weights, trust_pickle=args.trust_pickle, data=args.data,
        limit=args.limit, batch_size=args.batch_size, shard_batches=args.shard_batches, device=args.device,
        memory_budget=args.memory_budget, seed=args.seed,
        methods=check_names(args.methods, tuple(METHODS), "--methods"),
        metrics=check_names(args.metrics, names, "--metrics"),
        out=args.out, quiet=args.quiet,
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
    x = torch.from_numpy(data.x[:1]).to(device)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # any failure of the user's model on this input: report it, with the shapes
        raise AuditError(
            f"--data: the model cannot take its examples, shaped {list(data.x.shape[1:])} "
            f"(as [n, {', '.join(map(str, data.x.shape[1:]))}] float32): {type(e).__name__}: {e}"
        ) from None
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


def run_record(config: AuditConfig, data: Dataset, model_identity: Dict[str, Any], groups: Sequence[Group],
               device: torch.device) -> Dict[str, Any]:
    """``run.json``: the configuration, what was loaded, and the fingerprint of what changes results."""
    chosen = [g for g in groups if set(g.metrics) & set(config.metrics)]
    fingerprinted = {
        "model": model_identity, "data": {"description": data.description, "sha256": data.content_hash(),
                                          "n_examples": int(len(data.y))},
        "batch_size": config.batch_size, "shard_batches": config.shard_batches, "seed": config.seed,
        "methods": list(config.methods), "metrics": list(config.metrics),
        "method_settings": {m: METHODS[m].settings for m in config.methods},
        "metric_settings": {n: g.settings for g in chosen for n in g.metrics if n in config.metrics},
        "device_type": device.type, "memory_budget": config.memory_budget, "fastattr": __version__,
    }
    return {
        "fingerprint": fingerprint(fingerprinted), "fingerprinted": fingerprinted,
        "command": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "versions": {"fastattr": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }


def audit_batch(model: Model, x: Tensor, y: Tensor, offset: int, config: AuditConfig,
                groups: Sequence[Group]) -> Tuple[Tensor, Dict[str, Tensor], Dict[str, Tensor]]:
    """``(pred [b], columns, curves)`` of one batch: model columns ``[b]``,
    per-method columns ``[M, b]``, curves ``[M, b, K]`` (M = ``config.methods``)."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    ctx = BatchContext(model, x, y, pred, offset, config.seed, config.memory_budget)
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

    for g in groups:
        if not g.per_method and set(g.metrics) & wanted:
            keep(g.compute(ctx, None, None), columns, stacked=False)
    for method in config.methods:
        attrs = explain(method, model, x, pred, config.seed, offset, config.memory_budget).detach()
        for g in groups:
            if g.per_method and set(g.metrics) & wanted:
                keep(g.compute(ctx, method, attrs), per_method, stacked=True)
    columns.update({k: torch.stack(v) for k, v in per_method.items()})
    return pred, columns, {k: torch.stack(v) for k, v in curves.items()}


def audit_shard(model: Model, data: Dataset, shard: Shard, config: AuditConfig, groups: Sequence[Group],
                device: torch.device, on_batch: Callable[[int], None]) -> Dict[str, np.ndarray]:
    """The shard's result arrays: ``index``/``label``/``pred`` ``[n]``, ``model:<metric>``
    ``[n]``, ``method:<metric>`` ``[M, n]``, ``curve:<name>`` ``[M, n, K]``."""
    parts: Dict[str, List[np.ndarray]] = {}
    for batch in batches_of(shard, config.batch_size):
        x = torch.from_numpy(data.x[batch.start:batch.stop]).to(device)
        y = torch.from_numpy(data.y[batch.start:batch.stop]).to(device)
        pred, columns, curves = audit_batch(model, x, y, batch.start, config, groups)
        arrays = {"index": np.arange(batch.start, batch.stop, dtype=np.int64), "label": y.cpu().numpy(),
                  "pred": pred.cpu().numpy()}
        for k, t in columns.items():
            arrays[("method:" if t.dim() == 2 else "model:") + k] = t.detach().cpu().to(torch.float64).numpy()
        for k, t in curves.items():
            arrays["curve:" + k] = t.detach().cpu().to(torch.float64).numpy()
        for k, a in arrays.items():
            parts.setdefault(k, []).append(a)
        on_batch(len(batch))
    return {k: np.concatenate(v, axis=-2 if k.startswith("curve:") else -1) for k, v in parts.items()}


def examples_of(model: Model, data: Dataset, config: AuditConfig, device: torch.device
                ) -> Callable[[str, Sequence[int]], Tuple[np.ndarray, np.ndarray]]:
    """``(method, indices) -> (inputs, attributions)`` as the audit computed them:
    each index's whole batch is explained again, as in its shard."""
    def of(method: str, indices: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        attrs = []
        for i in indices:
            start = i - i % config.batch_size
            x = torch.from_numpy(data.x[start:min(start + config.batch_size, len(data.y))]).to(device)
            with torch.no_grad():
                pred = model(x).argmax(1)
            a = explain(method, model, x, pred, config.seed, start, config.memory_budget)
            attrs.append(a[i - start].detach().cpu().numpy())
        return data.x[list(indices)], np.stack(attrs)

    return of


def write_outputs(config: AuditConfig, data: Dataset, model: Model, device: torch.device, run: Dict[str, Any],
                  shards: Sequence[Shard], groups: Sequence[Group]) -> None:
    """Merge the committed shards into the table, ``summary.json`` and ``report.html``."""
    import os

    from .report import render_report
    from .results import merge, write_tables
    from .shards import atomic_write

    merged = merge(config.out, shards, config, run, groups)
    write_tables(config.out, merged)
    page = render_report(merged, examples_of(model, data, config, device))
    atomic_write(os.path.join(config.out, "report.html"), lambda f: f.write(page.encode()))


def _prepare(config: AuditConfig, groups: Sequence[Group], ranks: Ranks, device: torch.device
             ) -> Tuple[Model, Dataset, Dict[str, Any]]:
    data = load_dataset(config.data, config.limit)
    if config.model is None and ranks.rank != 0:
        ranks.barrier()  # rank 0 trains and caches the default model first
    model, identity = load_model(config.model, config.weights, config.trust_pickle)
    if config.model is None and ranks.rank == 0:
        ranks.barrier()
    if isinstance(model, torch.nn.Module):
        model = model.to(device)
    check_model_fits(model, data, device)
    needing = [n for g in groups if g.needs_module for n in g.metrics if n in config.metrics]
    if needing and not isinstance(model, torch.nn.Module):
        raise AuditError(f"--metrics: {', '.join(needing)} randomizes parameters and needs an nn.Module model "
                         f"(--model module:factory), not a {type(model).__name__}")
    return model, data, run_record(config, data, identity, groups, device)


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
        model, data, run = _prepare(config, groups, ranks, device)
        if ranks.rank == 0:
            rundir.claim(config.out, run)
    except AuditError as e:
        error = e
    if not ranks.all_ok(error is None):
        if error is not None:
            raise error
        return 2  # another rank reported the bad input
    shards = plan_shards(len(data.y), config.batch_size, config.shard_batches)
    done = committed(config.out, shards)
    ranks.barrier()  # every rank has listed what was committed before anyone commits more
    done_names = {s.name for s in done}
    mine = ranks.my_shards([s for s in shards if s.name not in done_names])
    chosen = [g for g in groups if set(g.metrics) & set(config.metrics)]
    progress = Progress(len(data.y), sum(s.stop - s.start for s in done), config.quiet or ranks.rank != 0)
    finished = [progress.done]

    def on_batch(n: int) -> None:
        finished[0] += n * ranks.world  # rank 0 speaks for all: ranks move at about the same pace
        progress.update(min(finished[0], len(data.y)))

    ok = True
    try:
        for shard in mine:
            commit_shard(config.out, shard, audit_shard(model, data, shard, config, chosen, device, on_batch))
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
        write_outputs(config, data, model, device, run, shards, chosen)
        if not config.quiet:
            print(f"fastattr audit: wrote {config.out}/results.parquet, results.csv, summary.json, report.html",
                  file=sys.stderr)
    return 0
