"""The ``--out`` folder of one configuration: claimed by writing ``run.json``
(the configuration and its fingerprint) before any work; a folder holding
another configuration's results, or files that are not an audit's, is refused
untouched."""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from .config import AuditError
from .shards import SHARD_DIR, atomic_write, remove_stale_temps

RUN_FILE = "run.json"


def claim(out: str, run: Dict[str, Any]) -> bool:
    """Make ``out`` this run's folder; True when it already held this run (a resume).
    Every check runs before anything is created there."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise AuditError(f"--out: {out} exists and is not a folder")
    resumed = os.path.isdir(out) and _check_existing(out, run)
    try:
        os.makedirs(os.path.join(out, SHARD_DIR), exist_ok=True)
        probe = os.path.join(out, SHARD_DIR, f".write-probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)
    except OSError as e:
        raise AuditError(f"--out: cannot write to {out} ({e.strerror or e})") from None
    if resumed:  # a killed run may have left half-written temp files; no rank writes yet
        remove_stale_temps(out)
        remove_stale_temps(os.path.join(out, SHARD_DIR))
    else:
        atomic_write(os.path.join(out, RUN_FILE),
                     lambda f: f.write(json.dumps(run, indent=2, sort_keys=True).encode()))
    return resumed


def _check_existing(out: str, run: Dict[str, Any]) -> bool:
    """True when ``out`` holds this run; raise when it holds anything else (empty: False)."""
    run_path = os.path.join(out, RUN_FILE)
    if os.path.exists(run_path):
        try:
            with open(run_path) as f:
                previous = json.load(f)
        except (OSError, ValueError) as e:
            raise AuditError(f"--out: {run_path} is unreadable ({e}); use another --out") from None
        if previous.get("fingerprint") != run["fingerprint"]:
            before, now = previous.get("fingerprinted", {}), run["fingerprinted"]
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise AuditError(
                f"--out: {out} holds the results of another configuration (differing: "
                f"{', '.join(changed) or 'unknown'}); nothing was changed there. Use another --out, or "
                f"delete that folder to start over."
            )
        return True
    shard_dir = os.path.join(out, SHARD_DIR)
    present = sorted(set(os.listdir(out)) - {SHARD_DIR})
    present += sorted(os.listdir(shard_dir)) if os.path.isdir(shard_dir) else []
    if present:
        raise AuditError(
            f"--out: {out} already holds files that are not this audit's ({', '.join(present)[:200]}); "
            f"use an empty or new folder"
        )
    return False
