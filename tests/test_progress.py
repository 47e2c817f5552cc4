"""The build's progress: a bar that moves during long cells on a terminal, plain lines otherwise."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from galleryvis.build import progress

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"

#: Long cells of each kind that reports from inside: integrated gradients' passes, a synthesis
#: technique's steps, deletion / insertion's forwards (scoring).
GALLERY = """
[gallery]
title = "progress"

[[images]]
path = "cat.png"

[[models]]
name = "mobilenet_v3_small"
weights = "none"
size = 64

[[techniques]]
name = "integrated_gradients"
params = { steps = 16 }

[[techniques]]
name = "class_visualization"
params = { steps = 12, size = 32 }

[metrics]
enabled = true
steps = 6
sanity = false
"""

#: Every report drawn and said: no time-based thinning, so what a run shows does not depend on its speed.
EVERY_REPORT = {"TQDM_MININTERVAL": "0", "GALLERYVIS_PROGRESS_EVERY": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    shutil.copy(PHOTOS / "cat.png", tmp_path / "cat.png")
    (tmp_path / "galleryvis.toml").write_text(GALLERY)
    return tmp_path


def _build(folder: Path, columns: int | None) -> str:
    """``galleryvis build`` in ``folder`` as a subprocess, its stderr on a pseudo-terminal of
    ``columns`` columns (None: a pipe); everything it wrote."""
    cmd = [sys.executable, "-m", "galleryvis", "build", "--batch-size", "1", "--no-cache"]
    env = {**os.environ, **EVERY_REPORT}
    if columns is None:
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=side)
    os.close(side)
    out = bytearray()
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal's other side closed: the build is over
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=600) == 0, out.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def _within(frames: list[str], what: str) -> list[tuple[float, int]]:
    """(bar position, percent) of every bar frame drawn while ``what`` ran."""
    out = []
    for frame in frames:
        m = re.search(r"\| (\d+\.\d)/\d+ \[.*" + re.escape(what) + r" (\d+)%", frame)
        if m:
            out.append((float(m.group(1)), int(m.group(2))))
    return out


def test_on_a_terminal_the_bar_moves_during_long_cells_and_shows_an_eta(gallery: Path) -> None:
    frames = re.split(r"[\r\n]", _build(gallery, columns=120))
    for what in ("integrated_gradients", "class_visualization", "deletion/insertion on cat.png"):
        seen = _within(frames, what)
        assert len(seen) >= 4, what
        positions = [p for p, _ in seen]
        assert positions == sorted(positions) and positions[-1] > positions[0], what  # it moves, forwards
        assert positions[-1] - int(positions[0]) < 1, what  # within the cell: it is not done yet
    # an ETA (tqdm's remaining time) as soon as a share of the first step is done
    etas = [re.search(r"<(\d\d:\d\d)", f) for f in frames if "integrated_gradients" in f]
    assert any(m is not None for m in etas)
    assert not any(re.match(r"\[\d+/\d+\] ", f) for f in frames)  # no plain lines beside the bar


@pytest.mark.parametrize("columns", [None, 0], ids=["no terminal", "terminal without width"])
def test_without_a_bar_a_long_cell_says_how_far_it_is_in_lines(gallery: Path, columns: int | None) -> None:
    lines = _build(gallery, columns).splitlines()
    for what in ("integrated_gradients", "class_visualization", "deletion/insertion on cat.png"):
        percents = [int(m.group(1)) for line in lines for m in [re.search(re.escape(what) + r" (\d+)%$", line)] if m]
        assert len(percents) >= 4 and percents == sorted(percents) and 0 < percents[-1] < 100, what
    assert "\r" not in "\n".join(lines)


def test_lines_within_a_step_come_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    bar = progress.Progress(2, quiet=False, stream=out, every=10.0)
    bar._said = 100.0  # the last line's time
    clock = iter([105.0, 110.5, 110.5, 111.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    for done in (1, 2, 3):
        bar.within("lite0: smoothgrad", done, 4)
    assert out.getvalue().splitlines() == ["[0/2] lite0: smoothgrad 50%"]  # 5 s: quiet; 10.5 s: a line; 0.5 s: quiet


def test_a_synthesis_technique_reports_its_steps_to_the_caller() -> None:
    """A synthesis technique's steps reach the caller's ``within`` (every item's, in order), as
    the compute stage hands it a build's progress."""
    import galleryvis
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    seen: list[tuple[int, int]] = []
    galleryvis.synthesize(model, "filter_visualization", layer="0", channel=[0, 1], steps=3, size=16,
                          within=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 6) for k in range(6)]


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERYVIS_PROGRESS_EVERY", "0.5")
    assert progress.line_every() == 0.5
    monkeypatch.setenv("GALLERYVIS_PROGRESS_EVERY", "soon")
    assert progress.line_every() == progress.WITHIN_EVERY
