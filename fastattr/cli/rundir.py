"""The ``--out`` folder of one configuration: claimed by writing ``run.json``
(the configuration and its fingerprint) before any work; a folder holding
another configuration's results, or files that are not an audit's, is refused
untouched."""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from .config import AuditError
from .shards import SHARD_DIR, atomic_write

RUN_FILE = "run.json"
# What an audit writes in --out; anything else there means the folder is someone else's.
OUTPUTS = (RUN_FILE, SHARD_DIR, "results.parquet", "results.csv", "summary.json", "report.html")


def claim(out: str, run: Dict[str, Any]) -> bool:
    """Make ``out`` this run's folder; True when it already held this run (a resume)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise AuditError(f"--out: {out} exists and is not a folder")
    try:
        os.makedirs(os.path.join(out, SHARD_DIR), exist_ok=True)
        probe = os.path.join(out, SHARD_DIR, f".write-probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)
    except OSError as e:
        raise AuditError(f"--out: cannot write to {out} ({e.strerror or e})") from None
    run_path = os.path.join(out, RUN_FILE)
    if os.path.exists(run_path):
        try:
            with open(run_path) as f:
                previous = json.load(f)
        except (OSError, ValueError) as e:
            raise AuditError(f"--out: {run_path} is unreadable ({e}); use another --out") from None
        if previous.get("fingerprint") != run["fingerprint"]:
            changed = sorted(k for k in set(previous.get("fingerprinted", {})) | set(run["fingerprinted"])
                             if previous.get("fingerprinted", {}).get(k) != run["fingerprinted"].get(k))
            raise AuditError(
                f"--out: {out} holds the results of another configuration (differing: "
                f"{', '.join(changed) or 'unknown'}); nothing was changed there. Use another --out, or "
                f"delete that folder to start over."
            )
        return True
    foreign = sorted(set(os.listdir(out)) - set(OUTPUTS))
    shard_files = os.listdir(os.path.join(out, SHARD_DIR))
    if foreign or shard_files:
        raise AuditError(
            f"--out: {out} already holds files that are not this audit's ({', '.join(foreign or shard_files)[:200]}); "
            f"use an empty or new folder"
        )
    atomic_write(run_path, lambda f: f.write(json.dumps(run, indent=2, sort_keys=True).encode()))
    return False
