"""The progress stage: one bar (or plain lines) over a build's computing and scoring steps."""
from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A bar with ETA on a terminal (tqdm), one plain line per step otherwise, nothing if quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.quiet, self.total, self.done = quiet, total, 0
        self._seen: set[int] = set()
        self.start = time.monotonic()
        self.bar = None
        if not quiet and total and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", file=sys.stderr)

    def mark(self, jobs: Any, what: str) -> None:
        """Count ``jobs`` as done (each once, however often it is marked)."""
        fresh = [j for j in jobs if id(j) not in self._seen]
        self._seen.update(id(j) for j in fresh)
        if fresh:
            self.step(len(fresh), what)

    def step(self, n: int, what: str) -> None:
        """Count ``n`` steps as done, ``what`` saying which."""
        self.done += n
        if self.bar is not None:
            self.bar.set_postfix_str(what[:40])
            self.bar.update(n)
        elif not self.quiet and self.total:
            elapsed = time.monotonic() - self.start
            eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            print(f"[{self.done}/{self.total}] {what} (eta {eta:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
