"""Faster forward passes: batch norm folded into convolutions, weights in the inputs' layout.

In eval mode ``bn(conv(x))`` is ``conv'(x)`` with the weights scaled per output channel and a
bias added, so the BatchNorm's forward and backward (memory-bound, 10-20 % of a ResNet's
forward + input-gradient time on a CPU, bench/) can be skipped; values agree to float rounding.
And a channels_last input makes every convolution convert an NCHW weight in every forward and
backward, unless the weight is stored channels_last once. The engine uses both through
:func:`folded`, decided once per call before its first pass, and ``synthesize`` for every
optimization step of a call; a probe forward finds which
convolution feeds which BatchNorm, and the folded model must give the probe's logits before it
is used. The model is returned as it came: while a pass runs, each convolution's weight and bias
entries point at the prepared tensors and each folded BatchNorm's ``forward`` is shadowed by the
identity; the original parameters and methods come back when the pass ends, also when it raises.
That rewrite and its probe are a canonizer of :mod:`galleryvis.engine.changes.canonizers`; this module
decides when a call uses it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from galleryvis.engine.changes.canonizers import BATCH_NORMS, Folding, watch


def _inside(name: str, scope: str) -> bool:
    return name == scope or name.startswith(scope + ".")


def usable(model: nn.Module, pairs: Sequence[tuple[str, str]], keep: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs whose folding nobody can observe: every module in ``keep`` (captured layers)
    outputs what it did (a convolution inside a kept module whose BatchNorm is outside it is not
    folded), and neither module has hooks of its own (a hook on the convolution would see the
    BatchNorm's output, one on the BatchNorm its output as input)."""
    modules = dict(model.named_modules())
    return [(c, b) for c, b in pairs if not any(_inside(c, k) and not _inside(b, k) for k in keep)
            and not _hooked(modules[c]) and not _hooked(modules[b])]


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _layout(x: Tensor) -> torch.memory_format:
    """channels_last for a 4-D input stored that way (and not also contiguous), else unchanged."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.preserve_format


def prepare(model: nn.Module, x1: Tensor, keep: Sequence[str] = ()) -> Folding:
    """The prepared weights for a call whose inputs look like ``x1`` (one image): every
    eval-mode BatchNorm folded into its convolution where a probe forward finds the pair and
    the folded model reproduces the probe's logits, and convolution weights stored in
    ``x1``'s memory layout (channels_last on the CPU). ``keep``: layers the call captures
    (their outputs must not change). Costs a weight copy and, with BatchNorms, two forwards of
    ``x1``."""
    # Never inference tensors (a call may start under torch.inference_mode, as deletion /
    # insertion does): the prepared weights take part in later gradient passes.
    with torch.inference_mode(False), torch.no_grad():
        x1 = x1[:1].detach().clone()
        layout = _layout(x1)
        folding = _folded(model, x1, layout, keep) if any(isinstance(m, BATCH_NORMS) for m in model.modules()) else None
        return folding if folding is not None else Folding.build(model, (), layout)  # laid out only


def _folded(model: nn.Module, x1: Tensor, layout: torch.memory_format, keep: Sequence[str]) -> Folding | None:
    """The folded weights, if the probe finds pairs and the folded model gives its logits."""
    with watch(model) as pairs:
        ref = model(x1)
    pairs[:] = usable(model, pairs, keep)
    if not pairs or not isinstance(ref, Tensor):
        return None
    folding = Folding.build(model, pairs, layout)
    with folding.active():
        got = model(x1)
    tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
    agree = isinstance(got, Tensor) and got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-3, atol=tol)
    return folding if agree else None


@dataclass
class Prepared:
    """Runs ``model`` with ``folding`` active for each pass (the model itself when None)."""

    model: nn.Module
    folding: Folding | None = None

    def __call__(self, x: Tensor) -> object:
        if self.folding is None:
            return self.model(x)
        with self.folding.active():
            return self.model(x)

    @property
    def folded(self) -> int:
        """How many BatchNorms the passes skip (0 when not folded, or the fold was refused)."""
        return len(self.folding.bns) if self.folding is not None else 0


@contextmanager
def folded(model: nn.Module, x1: Tensor, keep: Sequence[str] = (), *, enabled: bool = True) -> Iterator[Prepared]:
    """What runs ``model`` for every pass of one call, all with the same weights: those of
    :func:`prepare` when ``enabled`` (the caller decides once, before the first pass), the
    model's own otherwise. The model is untouched between passes and after the block."""
    yield Prepared(model, prepare(model, x1, keep) if enabled else None)
