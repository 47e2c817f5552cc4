"""Batch-norm folding: an eval-mode BatchNorm merged into the convolution that feeds it.

In eval mode ``bn(conv(x))`` is ``conv'(x)`` with the weights scaled per output channel and a
bias added, so the BatchNorm's forward and backward (memory-bound, 10-20 % of a ResNet's
forward + input-gradient time on a CPU, bench/) can be skipped. Values agree to float rounding.
The engine folds lazily (:class:`Runner`): the first forward pass of a call runs the model as it
is and records which convolution feeds which BatchNorm; a second pass builds the folded weights,
checks one image's logits against the first pass, and only then runs folded. Calls with a single
pass pay nothing. The model is returned as it came: while a pass runs, each folded convolution's
weight and bias entries point at the folded tensors and each BatchNorm's ``forward`` is shadowed
by the identity; the original parameters and methods come back when the pass ends, also when it
raises.
"""
from __future__ import annotations

import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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

    with ExitStack() as stack:
        for name, m in model.named_modules():
            if isinstance(m, _CONVS):
                stack.callback(m.register_forward_hook(conv_hook(name)).remove)
            elif isinstance(m, _BNS):
                stack.callback(m.register_forward_pre_hook(bn_hook(name)).remove)
        yield pairs
    modules = dict(model.named_modules())
    for bn, conv in fed.items():
        if calls.get(bn) == 1 and calls.get(conv) == 1 and \
                modules[conv].out_channels == modules[bn].num_features:
            pairs.append((conv, bn))


def _inside(name: str, scope: str) -> bool:
    return name == scope or name.startswith(scope + ".")


def usable(pairs: Sequence[tuple[str, str]], keep: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs whose folding leaves every module in ``keep`` (captured layers) outputting what
    it did: a convolution inside a kept module whose BatchNorm is outside it is not folded."""
    return [(c, b) for c, b in pairs if not any(_inside(c, k) and not _inside(b, k) for k in keep)]


@dataclass
class Folding:
    """Folded ``(conv, weight, bias)`` and the BatchNorms they replace; :meth:`active` applies them."""

    convs: list[tuple[nn.Module, Tensor, Tensor]] = field(default_factory=list)
    bns: list[nn.Module] = field(default_factory=list)

    @classmethod
    def build(cls, model: nn.Module, pairs: Sequence[tuple[str, str]]) -> Folding:
        """Scale each convolution's weight by gamma / sqrt(var + eps) per output channel and add
        beta - mean * scale (plus the scaled conv bias) as its bias."""
        modules = dict(model.named_modules())
        out = cls()
        with torch.no_grad():
            for conv_name, bn_name in pairs:
                conv, bn = modules[conv_name], modules[bn_name]
                scale = torch.rsqrt(bn.running_var.float() + bn.eps)
                if bn.weight is not None:
                    scale = scale * bn.weight.float()
                shift = -bn.running_mean.float() * scale
                if bn.bias is not None:
                    shift = shift + bn.bias.float()
                if conv.bias is not None:
                    shift = shift + conv.bias.float() * scale
                w = conv.weight.float() * scale.reshape(-1, *[1] * (conv.weight.dim() - 1))
                out.convs.append((conv, w.to(conv.weight.dtype), shift.to(conv.weight.dtype)))
                out.bns.append(bn)
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


def _identity(x: Tensor) -> Tensor:
    return x


class Runner:
    """Runs ``model`` for the engine's forward passes, folded from the second pass on.

    ``keep`` are the layers the call captures (their outputs must not change). The first pass
    records the conv -> BatchNorm pairs and one image's logits; at the second, the folding is
    built and used only if that image's folded logits agree with the recorded ones. ``eager``
    records on an extra forward of the first pass's first image instead, so every pass runs the
    same (folded) model: results then do not depend on which pass an input came in.
    """

    def __init__(self, model: nn.Module, keep: Sequence[str] = (), *, eager: bool = False) -> None:
        self.model, self.keep, self.eager = model, tuple(keep), eager
        self.passes = 0
        self._pairs: list[tuple[str, str]] = []
        self._probe: tuple[Tensor, Tensor] | None = None
        # Nothing to fold without BatchNorms: the model runs as it is, without the probe.
        self._folding: Folding | None = None if any(isinstance(m, _BNS) for m in model.modules()) else Folding()

    def __call__(self, x: Tensor) -> object:
        self.passes += 1
        if self._folding is None and self.eager:
            with torch.inference_mode():
                self._record(x[:1])
        if self._folding is None and (self.eager or self.passes > 1):
            self._folding = self._checked()
        if self._folding is None:
            return self._record(x)
        with self._folding.active():
            return self.model(x)

    def _record(self, x: Tensor) -> object:
        with watch(self.model) as pairs:
            out = self.model(x)
        self._pairs = usable(pairs, self.keep)
        if self._pairs and isinstance(out, Tensor):
            self._probe = (x[:1].detach().clone(), out[:1].detach().clone())
        return out

    def _checked(self) -> Folding:
        if self._probe is None:
            return Folding()
        folding = Folding.build(self.model, self._pairs)
        x1, ref = self._probe
        self._probe = None
        with torch.inference_mode(), folding.active():
            got = self.model(x1)
        tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
        agree = isinstance(got, Tensor) and got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-3, atol=tol)
        return folding if agree else Folding()

    @property
    def folded(self) -> int:
        """How many BatchNorms the folded passes skip (0 until the folding is built, or if refused)."""
        return len(self._folding.bns) if self._folding is not None else 0
