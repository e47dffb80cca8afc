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

# A 64 MiB tensor is made and freed after a warm-up one: what the free hands
# back to the OS (resident size, so transparent huge pages do not change it:
# glibc unmaps it by default, a kept heap holds it), then the page faults of
# ten more made and freed one after another (a kept heap reuses its memory;
# measured: one tensor's worth at most, where small allocations in between
# split the free space).
_SCRIPT = """
import os, resource, torch
from fastattr import keep_freed_memory
kept = keep_freed_memory()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)
t = torch.ones(16 * 2**20)
before = resident()
del t
returned = before - resident()
before = faults()
for _ in range(10):
    torch.ones(16 * 2**20)
print(kept, returned / 2**20, faults() - before)
"""


def _run(opt_out: bool):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), REPO])))
    env.pop("FASTATTR_DEFAULT_HEAP", None)
    if opt_out:
        env["FASTATTR_DEFAULT_HEAP"] = "1"
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
    kept, returned_mib, faults = out.stdout.split()
    return kept == "True", float(returned_mib), int(faults)


def test_kept_heap_reuses_freed_memory():
    kept, returned_mib, faults = _run(opt_out=False)
    assert kept
    assert returned_mib < 8
    assert faults < 3 * 16384  # 16384 pages of 4 KiB per tensor


def test_opt_out_keeps_glibc_defaults():
    kept, returned_mib, _ = _run(opt_out=True)
    assert not kept
    assert returned_mib > 56  # the freed tensor went back to the OS
