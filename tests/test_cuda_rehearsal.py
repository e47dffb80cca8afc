"""tests/test_cuda.py runs only where a GPU is (a lent one, rarely): here it
is rehearsed with the CPU standing in for the GPU, so that its calls,
shapes and comparisons are known to work before a GPU ever runs them."""
import os
import subprocess
import sys
from pathlib import Path

import torch
import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: tests/test_cuda.py runs for real")
def test_cuda_tests_rehearsed_on_the_cpu() -> None:
    env = dict(os.environ, FASTATTR_CUDA_TEST_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-m", "pytest", str(TESTS / "test_cuda.py"), "-q", "-p", "no:cacheprovider"],
                          env=env, cwd=TESTS.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]
