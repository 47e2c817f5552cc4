"""What synthesis optimizes: a layer's output (read by a :class:`LayerTap`), unit objectives and the
Mahendran & Vedaldi regularizers. Every objective returns one value per batch item, (N,); the
techniques maximize (or minimize) their sum, so item ``i``'s gradient never depends on the others.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from galleryvis.engine.changes import conv_sizes, forward_hooks, resolve_layer
from galleryvis.errors import LayerError
from galleryvis.engine.layers import Patches


class _Reached(Exception):
    """Raised by the tap's hook to end a forward pass once the layer has produced its output."""


class LayerTap:
    """Run ``model`` only as far as layer ``name`` and return that layer's output.

    :meth:`probe` runs one full forward first and counts how often the module is called (a
    module may be reused, like EfficientNet's ``_blocks.N._relu``); the output of its last call
    is the layer's output, as in :func:`galleryvis.hooks.capture`. Later calls stop the forward
    right after that call, so nothing past the layer is computed (the per-step cost of an early
    layer is a fraction of a full forward+backward). A token (N, T, D) or channels-last
    (N, H, W, C) output is returned as (N, C, h, w) (its :class:`~galleryvis.engine.layers.Grid`,
    decided in each forward, whose input size the transforms change), so a unit is always a
    channel. Use it through :func:`tap`.
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        self.model = model
        self.name = name
        self.module = resolve_layer(model, name)
        self.calls: int | None = None
        self._seen = 0
        self._out: Tensor | None = None

    def hook(self, _m: nn.Module, _inp: object, out: object) -> None:
        if not isinstance(out, Tensor):
            raise LayerError(f"layer {self.name!r} returns {type(out).__name__}, not a tensor")
        self._seen += 1
        if self.calls is None or self._seen == self.calls:
            self._out = out
            if self.calls is not None:
                raise _Reached

    @torch.no_grad()
    def probe(self, x: Tensor) -> tuple[int, ...]:
        """One full forward without gradients; the layer's output shape, (N, C, h, w) for
        outputs on the image's grid."""
        self.calls = None
        out = self(x)
        self.calls = self._seen
        return tuple(out.shape)

    def __call__(self, x: Tensor) -> Tensor:
        self._seen, self._out = 0, None
        with conv_sizes(self.model) as sizes:
            try:
                self.model(x)
            except _Reached:
                pass
        out, self._out = self._out, None
        if out is None:
            raise LayerError(f"layer {self.name!r} is not called in the model's forward pass")
        if out.dim() in (3, 4):
            out = Patches.of(self.model, sizes).grid(self.name, tuple(out.shape), out.shape[0], self.module).nchw(out)
        return out


@contextmanager
def tap(model: nn.Module, name: str) -> Iterator[LayerTap]:
    """A :class:`LayerTap` whose forward hook is removed on exit, also after an exception."""
    t = LayerTap(model, name)
    with forward_hooks([(t.module, t.hook)]):
        yield t


def unit_mean(acts: Tensor, units: Sequence[int | None]) -> Tensor:
    """Mean activation of unit ``units[i]`` of item ``i`` (a channel of a 4-D output, a neuron of
    a 2-D one); ``None`` means the mean over the whole layer. Returns (N,)."""
    out = []
    for i, u in enumerate(units):
        a = acts[i] if u is None else acts[i, u]
        out.append(a.mean())
    return torch.stack(out)


def unit_square_mean(acts: Tensor, units: Sequence[int | None]) -> Tensor:
    """Mean squared activation of unit ``units[i]`` (deep dream's layer objective, an L2 norm); (N,)."""
    out = []
    for i, u in enumerate(units):
        a = acts[i] if u is None else acts[i, u]
        out.append(a.square().mean())
    return torch.stack(out)


def relative_distance(phi: Tensor, phi0: Tensor) -> Tensor:
    """||phi - phi0||^2 / ||phi0||^2 per item (Mahendran & Vedaldi's normalized loss); (N,)."""
    d = (phi - phi0).flatten(1).square().sum(1)
    return d / phi0.flatten(1).square().sum(1).clamp(min=1e-12)


def alpha_norm(x: Tensor, alpha: float) -> Tensor:
    """Mean over pixels of |x|^alpha (the paper's N_alpha divided by H*W*C); (N,)."""
    return x.abs().pow(alpha).flatten(1).mean(1)


def total_variation(x: Tensor, beta: float) -> Tensor:
    """Mean over pixels of ((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2), summed over
    channels: differences along the spatial axes (H, W), as in the paper (the seed took them along
    channel and row, KNOWN_ISSUES #10); (N,)."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    v = (dx.square() + dy.square())
    if beta != 2:
        v = (v + 1e-8).pow(beta / 2)
    return v.sum(1).flatten(1).mean(1)
