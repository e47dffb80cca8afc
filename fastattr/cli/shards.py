"""Shards: fixed runs of whole batches at fixed data-set offsets, the unit of
work, of checkpointing and of distribution.

A shard's results are committed atomically (temp file, fsync, rename, fsync
of the folder), so a run killed at any moment leaves each shard either fully
committed or absent; a rerun skips committed shards. Under torchrun
(``torch.distributed``: gloo on CPU, nccl on GPU) rank ``r`` of ``W`` takes
the ``r``-th, ``(r+W)``-th, ... of the shards still to do; rank 0 merges."""
from __future__ import annotations

import dataclasses
import datetime
import os
import tempfile
from typing import IO, Callable, Dict, List, Optional

import numpy as np
import torch

SHARD_DIR = "shards"
TEMP_PREFIX = ".tmp-"  # atomic_write's temp files: only a killed writer leaves one behind


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    start: int  # data-set index of its first example
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}.npz"


def plan_shards(n_examples: int, batch_size: int, shard_batches: int) -> List[Shard]:
    """Shards of ``shard_batches * batch_size`` examples (the last may be shorter)."""
    size = batch_size * shard_batches
    return [Shard(i, s, min(s + size, n_examples)) for i, s in enumerate(range(0, n_examples, size))]


def batches_of(shard: Shard, batch_size: int) -> List[range]:
    """The shard's batches as data-set index ranges (aligned to ``batch_size`` from 0)."""
    return [range(s, min(s + batch_size, shard.stop)) for s in range(shard.start, shard.stop, batch_size)]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` all-or-nothing: ``write`` fills a temp file in the same
    folder, which is fsynced and renamed over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.basename(path), dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any written file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def remove_stale_temps(folder: str) -> None:
    """Delete the temp files a killed :func:`atomic_write` left in ``folder``.
    Only safe while nothing writes there (a resume, before any rank commits)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(TEMP_PREFIX):
            os.unlink(os.path.join(folder, name))


def commit_shard(out: str, shard: Shard, arrays: Dict[str, np.ndarray]) -> None:
    """Atomically write a shard's result arrays to ``out/shards/``."""
    atomic_write(os.path.join(out, SHARD_DIR, shard.name), lambda f: np.savez(f, **arrays))


def committed(out: str, shards: List[Shard]) -> List[Shard]:
    """The shards whose results are already committed."""
    folder = os.path.join(out, SHARD_DIR)
    present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    return [s for s in shards if s.name in present]


def load_shard(out: str, shard: Shard) -> Dict[str, np.ndarray]:
    with np.load(os.path.join(out, SHARD_DIR, shard.name), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int
    world: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_ok(self, ok: bool) -> bool:
        """Whether every rank is ``ok`` (a failed rank stops the others instead of leaving them waiting)."""
        if not self.distributed:
            return ok
        flags: List[Optional[bool]] = [None] * self.world
        torch.distributed.all_gather_object(flags, ok)
        return all(flags)

    def my_shards(self, todo: List[Shard]) -> List[Shard]:
        return todo[self.rank::self.world]


def init_ranks(device: torch.device) -> Ranks:
    """Join the torchrun job named by the environment (gloo on CPU, nccl on GPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                             device_id=device if device.type == "cuda" else None)
    return Ranks(rank, world, local_rank)


def close_ranks(ranks: Ranks) -> None:
    if ranks.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
