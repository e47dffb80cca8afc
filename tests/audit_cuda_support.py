"""A small audit run on a chosen device, in this process or under torchrun:
what tests/test_cuda.py compares across devices and process counts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pandas as pd
import torch

from fastattr.cli import main
from fastattr.cli.data import load_dataset

REPO = Path(__file__).resolve().parent.parent
FACTORY = '''
import torch
from torch import nn

def cnn():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, 10)).eval()
'''
METHODS_AND_METRICS = ["--methods", "saliency,integrated_gradients,smoothgrad",
                       "--metrics", "max_sensitivity,infidelity,pgd_accuracy"]


def _prepare(out: Path) -> List[str]:
    """The model factory and 16 digits under ``out``; the audit's arguments."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_audit_models.py").write_text(FACTORY)
    data = load_dataset(None, 16)
    np.savez(out / "digits.npz", x=data.x, y=data.y)
    return ["--model", "cuda_audit_models:cnn", "--data", str(out / "digits.npz"), "--batch-size", "4",
            "--shard-batches", "1", *METHODS_AND_METRICS, "--quiet", "--out", str(out / "run")]


def _results(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "run" / "results.parquet")


def run_audit(out: Path, device: str, tf32: bool = False) -> pd.DataFrame:
    """The audit's results frame on ``device``, in this process; TF32 off
    unless ``tf32`` (torch's defaults, as a torchrun process has them)."""
    args = _prepare(out)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if not tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    sys.path.insert(0, str(out))
    try:
        assert main(["audit", *args, "--device", device]) == 0
    finally:
        sys.path.remove(str(out))
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    return _results(out)


def run_audit_torchrun(out: Path, device: str, ranks: int) -> pd.DataFrame:
    """The results frame of ``torchrun --nproc-per-node ranks`` (nccl on cuda,
    torch's TF32 defaults)."""
    args = _prepare(out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO), str(out)]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
         "-m", "fastattr", "audit", *args, "--device", device],
        env=env, cwd=out, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return _results(out)
