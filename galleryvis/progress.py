"""The progress stage: one bar (or plain lines) over a build's computing and scoring steps, and
:class:`Stages`, where a build's time goes."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

#: A build's stages, in order: models and images loaded, predictions (targets), the two compute
#: families, scores, pictures (WebP files and the viewer's values) and pages.
STAGES = ("load", "predict", "attribution", "synthesis", "scoring", "pictures", "pages")


@dataclass
class Stages:
    """Seconds per stage of one build (:data:`STAGES`) and the model passes it made: forward
    calls of the gallery's models (their copies in the sanity check included) and the images
    that went through them."""

    seconds: dict[str, float] = field(default_factory=dict)
    passes: int = 0
    images: int = 0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the block's wall time to stage ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {list(STAGES)}")
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def count(self, images: int) -> None:
        """One forward call of a gallery model on ``images`` images."""
        self.passes += 1
        self.images += images

    def to_json(self) -> dict[str, Any]:
        return {"seconds": {k: round(self.seconds[k], 3) for k in STAGES if k in self.seconds},
                "model_passes": self.passes, "images_through_models": self.images}

    def line(self) -> str:
        """``"load 2.1 s, predict 0.3 s, ...; 1234 model passes"``."""
        parts = [f"{k} {self.seconds[k]:.1f} s" for k in STAGES if k in self.seconds]
        return ", ".join(parts) + f"; {self.passes} model passes ({self.images} images)"


#: Seconds between the plain lines of :meth:`Progress.within` (no terminal: a log stays short).
WITHIN_EVERY = 10.0


class Progress:
    """A bar with ETA on a terminal (tqdm), one plain line per step otherwise, nothing if quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.quiet, self.total, self.done = quiet, total, 0
        self._seen: set[int] = set()
        self.start = self._said = time.monotonic()
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

    def within(self, what: str, done: int, total: int) -> None:
        """How far the running step is (``done`` of ``total``), for steps of many passes: on the
        bar's label, or a plain line at most every :data:`WITHIN_EVERY` seconds."""
        if self.quiet or not total:
            return
        label = f"{what} {100 * done // total}%"
        if self.bar is not None:
            self.bar.set_postfix_str(label[-40:])
        elif time.monotonic() - self._said >= WITHIN_EVERY:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)
            self._said = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
