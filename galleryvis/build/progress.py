"""The progress stage: one bar (or plain lines) over a build's computing and scoring steps, and
:class:`Stages`, where a build's time goes."""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Iterator, Mapping

from galleryvis.families import FAMILIES

#: A build's stages, in order: models and images loaded, predictions (targets), each compute
#: family (:data:`galleryvis.families.FAMILIES`), the concept atlases' reference examples, scores,
#: pictures (WebP files and the viewer's values) and pages.
STAGES = ("load", "predict", *FAMILIES, "references", "scoring", "pictures", "pages")


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


#: Seconds between plain lines while a step runs (no terminal, or one of zero width): long work
#: reports every second or two, so a log gets a line at least every 10 s. The environment
#: variable ``GALLERYVIS_PROGRESS_EVERY`` (seconds) overrides it.
WITHIN_EVERY = 5.0

#: The bar: steps done, with the running step's share as a decimal; ETA; what runs.
BAR_FORMAT = "{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def line_every() -> float:
    """Seconds between plain lines: ``GALLERYVIS_PROGRESS_EVERY`` if it is a number, else :data:`WITHIN_EVERY`."""
    try:
        return max(0.0, float(os.environ["GALLERYVIS_PROGRESS_EVERY"]))
    except (KeyError, ValueError):
        return WITHIN_EVERY


def terminal_width(stream: IO[str]) -> int:
    """Columns of the terminal ``stream`` writes to; 0 when it is none or reports no width."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (OSError, ValueError, AttributeError):
        return 0


class Progress:
    """A bar with ETA on a terminal (tqdm), plain lines otherwise (a terminal of zero width
    included), nothing if quiet. While a step of many passes runs, its share (:meth:`within`,
    :func:`advance`) moves the bar and its ETA; without a bar, a line says it at most every
    ``every`` seconds (default :func:`line_every`)."""

    def __init__(self, total: int, quiet: bool, *, stream: IO[str] | None = None,
                 every: float | None = None) -> None:
        self.quiet, self.total, self.done = quiet, total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.every = line_every() if every is None else every
        self._seen: set[int] = set()
        self._share = 0.0  # of one step, for the step that runs
        self.start = self._said = time.monotonic()
        self.bar = None
        if not quiet and total and terminal_width(self.stream) > 0:
            from tqdm import tqdm

            # miniters=0: redrawn whenever it moves (at most every 0.1 s), not after as many
            # steps as came per redraw so far, which would hold a slow step's shares back
            self.bar = tqdm(total=total, unit="cell", file=self.stream, bar_format=BAR_FORMAT, miniters=0)

    def mark(self, jobs: Any, what: str) -> None:
        """Count ``jobs`` as done (each once, however often it is marked)."""
        fresh = [j for j in jobs if id(j) not in self._seen]
        self._seen.update(id(j) for j in fresh)
        if fresh:
            self.step(len(fresh), what)

    def step(self, n: int, what: str) -> None:
        """Count ``n`` steps as done, ``what`` saying which."""
        self.done += n
        self._share = 0.0
        if self.bar is not None:
            self.bar.set_postfix_str(what[:40], refresh=False)
            self._move()
        elif not self.quiet and self.total:
            position = time.monotonic() - self.start
            eta = position / self.done * (self.total - self.done) if self.done else 0.0
            print(f"[{self.done}/{self.total}] {what} (eta {eta:.0f} s)", file=self.stream, flush=True)

    def within(self, what: str, done: int, total: int) -> None:
        """How far the running step is (``done`` of ``total``), for steps of many passes: the bar
        moves by that share of one step (never backwards, and at most 0.9 of it: the step is not done), or a plain
        line at most every :attr:`every` seconds."""
        if self.quiet or not total:
            return
        self._share = max(self._share, min(done / total, 0.9))
        label = f"{what} {100 * done // total}%"
        if self.bar is not None:
            self.bar.set_postfix_str(label[-40:], refresh=False)
            self._move()
        elif time.monotonic() - self._said >= self.every:
            print(f"[{self.done}/{self.total}] {label}", file=self.stream, flush=True)
            self._said = time.monotonic()

    def counter(self, what: str, total: int) -> Callable[[int], None]:
        """A function to call with each model pass's image count while a step of about
        ``total`` images runs (:func:`galleryvis.hooks.counting`): :meth:`within` as they add up
        (short of ``total`` until the step is done: an estimate can fall short)."""
        seen = [0]

        def count(images: int) -> None:
            seen[0] += images
            self.within(what, min(seen[0], total - 1), total)

        return count

    def _move(self) -> None:
        """Show ``done`` plus the running step's share (tqdm draws at most every 0.1 s; its rate
        and ETA follow)."""
        assert self.bar is not None
        position = min(self.done + self._share, float(self.total))
        if position > self.bar.n:
            self.bar.update(position - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: Parameters that count one cell's model passes per image (times ``octaves``: deep dream's scales).
COUNTS = ("steps", "samples", "masks")


def cell_passes(name: str, params: Mapping[str, Any], size: int, channels: Callable[[], int]) -> int:
    """About how many images one cell of technique ``name`` sends through its model, as if it
    ran alone: its ``steps`` / ``samples`` / ``masks`` (times ``octaves``); its windows
    (``window`` at ``stride`` over the ``size`` px input); for a technique that reads the shared
    forward and runs passes of its own at one layer (Score-CAM, Ablation-CAM), the layer's
    ``channels()``; a ``base`` technique's passes at its defaults; else 1 (the shared pass)."""
    from galleryvis import registry

    tech = registry.get(name)
    counts = [int(params[k]) for k in COUNTS if k in params]
    if counts:
        return math.prod(counts) * int(params.get("octaves", 1))
    if "window" in params and "stride" in params:
        return len(range(0, max(0, size - int(params["window"])) + 1, int(params["stride"]))) ** 2
    if tech.needs == {"forward", "passes"} and tech.layer == "one":
        return channels()
    base = params.get("base")
    if isinstance(base, str) and base in registry.names() and base != name:
        return cell_passes(base, registry.resolve_params(registry.get(base), {}), size, channels)
    return 1


def expected_passes(jobs: Iterable[Any], ws: Any) -> int:
    """About how many images computing ``jobs`` (plan :class:`~galleryvis.build.jobs.Job` s of the
    workspace ``ws``) sends through the models: :func:`cell_passes` summed, each row counted as if
    computed alone (rows that share passes cost less); a layer's channels from one probe
    forward per model."""
    import torch

    from galleryvis.engine.layers import probe

    shapes: dict[str, dict[str, tuple[int, ...] | None]] = {}

    def channels(job: Any) -> int:
        adapter = ws.adapter(job)
        if adapter.id not in shapes:
            x = torch.zeros(1, 3, adapter.size, adapter.size, device=adapter.device)
            shapes[adapter.id] = {name: shape for name, shape, _ in probe(adapter.model, x)}
        shape = shapes[adapter.id].get(job.layer if isinstance(job.layer, str) else "")
        return int(shape[1]) if shape and len(shape) > 1 else 1

    return sum(cell_passes(j.tech.name, j.params, ws.adapter(j).size, lambda j=j: channels(j)) for j in jobs)
