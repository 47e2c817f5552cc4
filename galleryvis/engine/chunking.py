"""Chunk sizes chosen for the model: how many images, samples, steps or masks go through it at once.

The fastest chunk depends on the model and the machine, not on the technique: on 2 CPU cores
(bench/) AlexNet runs forward + backward 1.3x faster per image at 32 than at 8, VGG16 1.1x
faster at 2, ResNet-50's forward-only passes 1.2x faster at 16 than at 32. :func:`measure`
times the model's own passes at growing chunk sizes and keeps the fastest per kind of pass;
a gallery measures each model once (the result is cached with the machine it was measured on)
and keeps it on the loaded model. Maps never depend on the chunking, only their cost does.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

#: Forward-only passes under ``torch.inference_mode`` (occlusion windows, RISE masks, ablated
#: channels) keep no graph, so by default they run this many times ``batch_size`` copies at
#: once in about the memory of one backward chunk (bench/: captum and grad-cam were fastest at
#: 4x as well).
FORWARD_BATCH_FACTOR = 4

#: A chunk size more than this fraction slower per image than the best one so far ends the search.
SLOWER = 0.1

#: A larger chunk size within this fraction of the best time per image is as fast, and is
#: chosen: real calls carry per-call costs (hooks, Python, folding checks) that a bare pass
#: does not show, and fewer, larger calls amortize them.
TIE = 0.05

#: Each size runs twice, and more until its calls add up to this many seconds (at most
#: :data:`CALLS` calls), and keeps its fastest: the first call warms that size, the minimum sheds
#: another process's noise. A first call over :data:`CALL_BUDGET` is not repeated.
SETTLE = 0.2
CALLS = 3

#: One timed call longer than this (seconds) ends the search: larger chunks only cost more to measure.
CALL_BUDGET = 1.0


@dataclass(frozen=True)
class Chunking:
    """Chunk sizes per kind of pass: ``backward`` for passes with an input gradient (images per
    chunk, IG steps, SmoothGrad samples), ``forward`` for forward-only ones under inference mode
    (occlusion windows, RISE masks, Score-CAM and Ablation-CAM channels, Shapley coalitions)."""

    backward: int
    forward: int

    def __post_init__(self) -> None:
        if self.backward < 1 or self.forward < 1:
            raise ValueError(f"chunk sizes must be >= 1, got {self}")

    @classmethod
    def of(cls, batch_size: int) -> Chunking:
        """An explicit ``batch_size``: that many per backward, :data:`FORWARD_BATCH_FACTOR` times
        as many per forward-only pass."""
        return cls(batch_size, FORWARD_BATCH_FACTOR * batch_size)

    def halved(self) -> Chunking:
        """Both sizes halved (at least 1), for a retry after running out of memory."""
        return Chunking(max(1, self.backward // 2), max(1, self.forward // 2))


def fastest(per_image: Callable[[int], float], sizes: tuple[int, ...]) -> int:
    """The largest size in ``sizes`` (ascending) whose ``per_image(size)`` (seconds per image of
    one call; the fastest of its calls, :data:`SETTLE`) is within :data:`TIE` of the least; the
    search stops at the first size more than :data:`SLOWER` slower than the best so far, at a
    call over :data:`CALL_BUDGET`, or when the device runs out of memory."""
    best, best_t = sizes[0], float("inf")
    for size in sizes:
        try:
            times = [per_image(size)]
            if times[0] * size <= CALL_BUDGET:
                times.append(per_image(size))  # the first call warmed the size: this one measures it
                while len(times) < CALLS and sum(times) * size < SETTLE:
                    times.append(per_image(size))
            t = min(times)
        except torch.OutOfMemoryError:
            break
        if t <= best_t * (1 + TIE):
            best = size
        best_t = min(best_t, t)
        if t > best_t * (1 + SLOWER):
            break
        if t * size > CALL_BUDGET:
            break
    return best


def measure(run: Callable[[Tensor], Tensor], sample: Tensor, cap: int,
            layout: Callable[[Tensor], Tensor] = lambda x: x) -> Chunking:
    """The fastest :class:`Chunking` of ``run`` (the model as the engine runs it: prepared and
    folded; it returns logits) on ``layout``-ed copies of ``sample`` (1, 3, H, W), for chunk
    sizes 2, 4, ... up to ``cap``."""
    sizes = tuple(2 ** k for k in range(1, cap.bit_length()) if 2 ** k <= cap) or (1,)

    def timed(size: int, backward: bool) -> float:
        x = layout(sample.expand(size, *sample.shape[1:]).contiguous())
        sync(x.device)
        t0 = time.perf_counter()
        if backward:
            x.requires_grad_(True)
            with torch.enable_grad():
                torch.autograd.grad(run(x)[:, 0].sum(), x)
        else:
            with torch.inference_mode():
                run(x)
        sync(x.device)
        return (time.perf_counter() - t0) / size

    return Chunking(fastest(lambda s: timed(s, True), sizes), fastest(lambda s: timed(s, False), sizes))


def machine(device: torch.device) -> str:
    """What a measured chunking holds for: the device's name (GPU) or the CPU's, and torch's threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()} / {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

