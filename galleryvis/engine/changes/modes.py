"""Modes and flags: eval mode with frozen parameters (:func:`prepared`), deterministic kernels,
and any module attribute set for a while (:func:`attributes_set`: timm's fused-attention flag)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import nn


@contextmanager
def prepared(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, frozen parameters and no in-place activations; all restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [p for p in model.parameters() if p.requires_grad]  # only what changes is restored
    inplace = [m for m, _ in modes if getattr(m, "inplace", False) is True]
    try:
        if any(training for _, training in modes):
            model.eval()
        for p in grads:
            p.requires_grad_(False)
        for m in inplace:
            m.inplace = False
        yield model
    finally:
        for m, training in modes:
            if m.training != training:
                m.training = training
        for p in grads:
            p.requires_grad_(True)
        for m in inplace:
            m.inplace = True


@contextmanager
def attributes_set(modules: Iterable[nn.Module], name: str, value: Any) -> Iterator[None]:
    """While inside, attribute ``name`` of each module is ``value``; each module's own value
    comes back on exit, also after an exception."""
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for m in modules:
            saved.append((m, getattr(m, name)))
            setattr(m, name, value)
        yield
    finally:
        for m, previous in reversed(saved):
            setattr(m, name, previous)


@contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels (cuDNN, and torch's own where it has them) for the duration, so a
    fixed seed gives the same result on CUDA too; the previous settings come back on exit.

    Without torch's debugging fill of every new tensor (``torch.utils.deterministic.
    fill_uninitialized_memory``, torch >= 2.2; deterministic mode turns it on): it only matters
    to code that reads memory it has not written, and synthesis gave the same images bit for bit
    without it (the tests, and two default galleries compared picture by picture), 5-8 % faster
    per step on the CPU (Lite1, interleaved runs)."""
    fill = getattr(torch.utils, "deterministic", None)
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             getattr(fill, "fill_uninitialized_memory", None))
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
        if saved[4] is not None:
            fill.fill_uninitialized_memory = False  # type: ignore[union-attr]
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        if saved[4] is not None:
            fill.fill_uninitialized_memory = saved[4]  # type: ignore[union-attr]
