"""``fastattr.keep_freed_memory`` (``fastattr/heap.py``), each case in a
fresh process so that the test process's own allocator is left alone."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Page faults of ten 64 MiB tensors (16384 pages each) made and freed one
# after another, after one warm-up tensor: glibc maps each afresh by default; a
# kept heap reuses freed memory (measured: one more tensor's worth at most,
# where small allocations in between split the free space).
_SCRIPT = """
import resource, torch
from fastattr import keep_freed_memory
kept = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)
before = faults()
for _ in range(10):
    torch.ones(16 * 2**20)
print(kept, faults() - before)
"""


def _faults(opt_out: bool):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), REPO])))
    env.pop("FASTATTR_DEFAULT_HEAP", None)
    if opt_out:
        env["FASTATTR_DEFAULT_HEAP"] = "1"
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


def test_kept_heap_reuses_freed_memory():
    kept, faults = _faults(opt_out=False)
    assert kept
    assert faults < 3 * 16384


def test_opt_out_keeps_glibc_defaults():
    kept, faults = _faults(opt_out=True)
    assert not kept
    assert faults > 8 * 16384  # each tensor faulted in afresh
