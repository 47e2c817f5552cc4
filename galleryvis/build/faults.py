"""Faults the Ray executor survives, injected on purpose: a worker that SIGKILLs itself at a named
point, once, for tests and drills (``docs/scale-out.md``), and :class:`Faults`, what a build
counts of the real ones.

``GALLERYVIS_FAULTS`` names a folder that every node sees; set it before the nodes start (a
worker inherits its node's environment). Each file in it named ``POINT`` or ``POINT-ANYTHING``
arms one kill at ``POINT`` (:data:`POINTS`); the file's text, when there is any, is a model or
image id that the kill waits for. The first worker to reach an armed point renames its file to
``*.fired`` (a rename is atomic: one kill per file, whichever process gets there first) and
kills itself with SIGKILL, as the kernel's out-of-memory killer or a lost node would.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

ENV = "GALLERYVIS_FAULTS"

#: Where a worker can be killed: ``load`` while it loads its model, ``start`` once it has a task
#: but before it computes anything of it, ``end`` once the task's cells are computed and cached
#: but before its outcome is sent back.
POINTS = ("load", "start", "end")


def checkpoint(point: str, names: Iterable[str]) -> None:
    """Kill this process here if a file in ``$GALLERYVIS_FAULTS`` arms ``point`` for one of
    ``names`` (the model and image ids at hand) or for any; a no-op without the variable."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}: expected one of {', '.join(POINTS)}")
    names = set(names)
    for armed in sorted(Path(folder).glob(f"{point}*")):
        if armed.suffix == ".fired" or armed.name != point and not armed.name.startswith(f"{point}-"):
            continue
        try:
            wanted = armed.read_text().strip()
            if wanted and wanted not in names:
                continue
            armed.rename(armed.with_name(armed.name + ".fired"))
        except FileNotFoundError:  # another worker fired it first
            continue
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Faults:
    """What an executor survived: workers it started again after they died (``restarted``), and
    tasks it sent again after their worker died under them (``retried``)."""

    restarted: int = 0
    retried: int = 0

    def line(self) -> str:
        """``"1 worker restarted, 2 tasks retried"``."""
        return (f"{self.restarted} worker{'s' if self.restarted != 1 else ''} restarted, "
                f"{self.retried} task{'s' if self.retried != 1 else ''} retried")

    def to_json(self) -> dict[str, int]:
        return {"workers_restarted": self.restarted, "tasks_retried": self.retried}
