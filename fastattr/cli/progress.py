"""A one-line progress bar on stderr: examples done, examples/s, ETA.

The count may be fractional: the audit reports its progress inside a batch
(after each method and metric), so the bar moves from the first shard on
even when one batch takes minutes."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """Redrawn in place on a terminal; one line every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, done: int = 0, quiet: bool = False, stream: Optional[TextIO] = None,
                 every_s: float = 2.0) -> None:
        self.total, self.start_done, self.done, self.quiet = total, done, done, quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self.last = -float("inf")

    def update(self, done: float) -> None:
        """Set the number of examples done (all ranks together; fractional
        inside a batch) and redraw if due."""
        self.done = done
        now = time.perf_counter()
        if not self.quiet and (self.tty or now - self.last >= self.every_s or done >= self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        left = self.total - self.done
        eta = f"{left / rate:6.0f}s" if rate > 0 else "     ?"
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        done = f"{self.done:.0f}" if float(self.done).is_integer() else f"{self.done:.1f}"
        line = f"audit [{bar}] {done}/{self.total} examples  {rate:7.3g} ex/s  ETA {eta}"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.quiet and self.tty:
            self.stream.write("\n")
            self.stream.flush()
