"""The embedded default model: a small CNN on scikit-learn's 8x8 digits,
trained deterministically (fixed seed, one thread) and cached; nothing is downloaded."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from .data import digits_split
from .shards import atomic_write

_CACHE_NAME = "digits_cnn_v1.pt"
_EPOCHS = 15
_BATCH = 64


def digits_cnn() -> nn.Module:
    """``[n, 1, 8, 8]`` -> logits ``[n, 10]``."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def cache_dir() -> str:
    """``$FASTATTR_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastattr``, else ``~/.cache/fastattr``."""
    env = os.environ.get("FASTATTR_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastattr")


def train_digits_cnn() -> nn.Module:
    """Train :func:`digits_cnn` on the digits' training split, bit-reproducibly on CPU."""
    x, y, _, _ = digits_split()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float sums in the same order on every run
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = digits_cnn()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(_EPOCHS):
            order = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), _BATCH):
                idx = order[i:i + _BATCH]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def default_model(directory: Optional[str] = None) -> nn.Module:
    """The cached digits CNN (trained and cached on first use), in eval mode."""
    path = os.path.join(directory or cache_dir(), _CACHE_NAME)
    model = digits_cnn()
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = train_digits_cnn()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: torch.save(model.state_dict(), f))
    return model
