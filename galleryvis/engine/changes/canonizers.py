"""Canonizers: a model rewritten for a while into an equivalent one that is cheaper or easier to
explain, and rewritten back (zennit's canonizers). :class:`Folding` folds eval-mode batch norm into
the convolution before it and stores weights in the inputs' memory layout; :func:`watch` is the
probe that finds which convolution feeds which BatchNorm. :mod:`galleryvis.engine.fold` decides when a
call uses them."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from galleryvis.engine.changes.forward_hooks import forward_hooks

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextmanager
def watch(model: nn.Module) -> Iterator[list[tuple[str, str]]]:
    """While inside, record ``(conv, bn)`` name pairs where an eval-mode BatchNorm's input is
    exactly a convolution's output; modules called more than once are left out."""
    calls: dict[str, int] = {}
    produced: dict[int, tuple[str, weakref.ref[Tensor]]] = {}  # id of a conv output -> name, output
    fed: dict[str, str] = {}  # bn name -> conv name
    pairs: list[tuple[str, str]] = []

    def conv_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, Tensor):
                produced[id(out)] = (name, weakref.ref(out))
        return hook

    def bn_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, inp: tuple[object, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            x = inp[0] if inp else None
            name_ref = produced.get(id(x)) if isinstance(x, Tensor) else None
            if name_ref is not None and name_ref[1]() is x and not m.training and m.running_mean is not None:
                fed[name] = name_ref[0]
        return hook

    named = list(model.named_modules())
    with forward_hooks([(m, conv_hook(name)) for name, m in named if isinstance(m, CONVS)]), \
            forward_hooks([(m, bn_hook(name)) for name, m in named if isinstance(m, BATCH_NORMS)], pre=True):
        yield pairs
    modules = dict(model.named_modules())
    for bn, conv in fed.items():
        if calls.get(bn) == 1 and calls.get(conv) == 1 and _plain_weight(modules[conv]) and \
                modules[conv].out_channels == modules[bn].num_features:
            pairs.append((conv, bn))


def fold_batchnorm(w: Tensor, b: Tensor | None, mean: Tensor, var: Tensor, eps: float,
                   gamma: Tensor | None, beta: Tensor | None) -> tuple[Tensor, Tensor]:
    """Weight and bias of an affine layer (``w``, ``b``; output channels first) followed by an
    eval-mode BatchNorm: ``w * s`` per output channel and ``(b - mean) * s + beta``, with
    ``s = gamma / sqrt(var + eps)`` (a missing ``b``, ``gamma`` or ``beta``: 0, 1, 0)."""
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    if b is not None:
        shift = shift + b * scale
    return w * scale.reshape(-1, *[1] * (w.dim() - 1)), shift


def _plain_weight(conv: nn.Module) -> bool:
    """A weight that is a registered tensor (not computed by a parametrization, such as weight norm)."""
    return isinstance(conv._parameters.get("weight"), Tensor)



@dataclass
class Folding:
    """The batch-norm canonizer: folded ``(conv, weight, bias)`` and the BatchNorms they replace;
    :meth:`active` applies them and reverts them."""

    convs: list[tuple[nn.Module, Tensor, Tensor]] = field(default_factory=list)
    bns: list[nn.Module] = field(default_factory=list)

    @classmethod
    def build(cls, model: nn.Module, pairs: Sequence[tuple[str, str]] = (),
              layout: torch.memory_format = torch.preserve_format) -> Folding:
        """For each ``(conv, bn)`` pair, the conv's weight scaled by gamma / sqrt(var + eps) per
        output channel and beta - mean * scale (plus the scaled conv bias) as its bias. With
        ``layout=torch.channels_last``, every 2-D convolution's weight is also stored that way,
        so channels_last inputs do not convert the weights in every forward and backward."""
        modules = dict(model.named_modules())
        out = cls()
        with torch.no_grad():
            for conv_name, bn_name in pairs:
                conv, bn = modules[conv_name], modules[bn_name]
                w, shift = fold_batchnorm(_f32(conv.weight), _f32(conv.bias), _f32(bn.running_mean),
                                          _f32(bn.running_var), bn.eps, _f32(bn.weight), _f32(bn.bias))
                out.convs.append((conv, _laid_out(w.to(conv.weight.dtype), layout), shift.to(conv.weight.dtype)))
                out.bns.append(bn)
            if layout == torch.channels_last:
                folded = {id(c) for c, _, _ in out.convs}
                out.convs += [(m, m.weight.contiguous(memory_format=layout), m.bias) for m in model.modules()
                              if isinstance(m, nn.Conv2d) and id(m) not in folded and _plain_weight(m)
                              and not m.weight.is_contiguous(memory_format=layout)]
        return out

    @contextmanager
    def active(self) -> Iterator[None]:
        """Folded forwards while inside (the convolution's own ``forward`` reads the folded
        tensors, so padding subclasses work too); parameters and methods come back on exit."""
        params: list[tuple[nn.Module, Tensor | None, Tensor | None]] = []
        methods: list[tuple[nn.Module, object]] = []
        try:
            for conv, w, b in self.convs:
                params.append((conv, conv._parameters["weight"], conv._parameters.get("bias")))
                conv._parameters["weight"], conv._parameters["bias"] = w, b
            for bn in self.bns:
                methods.append((bn, bn.__dict__.get("forward")))
                bn.forward = _identity
            yield
        finally:
            for conv, w0, b0 in params:
                conv._parameters["weight"], conv._parameters["bias"] = w0, b0
            for bn, previous in methods:
                if previous is None:
                    del bn.forward
                else:
                    bn.forward = previous


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


def _identity(x: Tensor) -> Tensor:
    return x


def _laid_out(w: Tensor, layout: torch.memory_format) -> Tensor:
    return w.contiguous(memory_format=layout) if w.dim() == 4 and layout == torch.channels_last else w
