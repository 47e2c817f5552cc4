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


@dataclass
class Folding:
    """Folded ``(conv, weight, bias)`` and the BatchNorms they replace; :meth:`active` applies them."""

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
        folding = _folded(model, x1, layout, keep) if any(isinstance(m, _BNS) for m in model.modules()) else None
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
