"""Layer-wise relevance propagation (Bach et al. 2015; rules after Montavon et al. 2019).

Implemented the zennit way: relevance travels backwards as the "gradient" of one autograd
pass. During that pass a forward hook replaces the output of every linear layer (convolution,
``Linear``, a convolution with its BatchNorm folded in, average pooling) by an autograd
function whose backward applies the layer's LRP rule::

    R_in = x * d/dx [ f_mod(x) ] . (R_out / stabilized f_mod(x))

computed functionally from the layer's own (frozen) parameters: no module is copied, changed
or given attributes, and every hook is removed in a ``finally`` (also when the call raises).
Element-wise activations (``ReLU``, ``ReLU6``) pass relevance unchanged; max pooling routes
it to the winner (its ordinary gradient); dropout, flatten and identity are their gradient.

Which models: a *chain* of supported modules, each receiving exactly the previous module's
output (functional reshapes such as ``torch.flatten`` and functional ReLU / max pooling
between modules are fine): torchvision's AlexNet and every VGG, with or without BatchNorm.
A probe forward records the call order and follows each module's input through the autograd
graph to the previous module's output; a residual add (ResNet), a concatenation (Inception,
DenseNet), an unsupported module type or a module with parameters of its own raises a
:class:`~galleryvis.hooks.LayerError` naming the module. (captum returns relevance on
ResNet-50 without complaint, but it is not LRP relevance there.)
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine import IMAGENET_MEAN, IMAGENET_STD, Context
from ..hooks import LayerError, capture
from ..registry import technique

RULES = ("epsilon", "gamma", "alpha_beta", "zplus", "composite")

#: Linear layers with an LRP rule (exact types: a subclass may compute something else).
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_DENSE = (nn.Linear,)
#: Folded into the convolution / Linear that feeds them (canonization, Montavon et al. 2019 §10.3).
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Parameter-free linear layers: the epsilon rule on the module's own forward.
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
#: Element-wise activations: relevance passes unchanged (identity backward).
_ACT = (nn.ReLU, nn.ReLU6)
#: Their ordinary gradient is the LRP rule: winner-take-all for max pooling, identity or a
#: reshape for the others (dropout is the identity in eval mode, which the engine sets).
_GRAD = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
         nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
         nn.FeatureAlphaDropout, nn.Flatten, nn.Unflatten, nn.Identity)

#: autograd nodes allowed between two modules of the chain: reshapes, and element-wise or
#: pooling ops whose gradient is their LRP rule (functional ReLU, max pooling).
_LINK_OPS = {"ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "CloneBackward",
             "SqueezeBackward", "UnsqueezeBackward", "PermuteBackward", "TransposeBackward",
             "AliasBackward", "ReluBackward", "ThresholdBackward",
             "MaxPool1DWithIndicesBackward", "MaxPool2DWithIndicesBackward",
             "MaxPool3DWithIndicesBackward", "AdaptiveMaxPool2DBackward", "AdaptiveMaxPool3DBackward"}

_SUPPORTED = ("Conv1d/2d/3d, Linear, BatchNorm right after a conv/Linear (folded), ReLU, ReLU6, "
              "max and average pooling (also adaptive), dropout, Flatten, Unflatten, Identity")

#: Stabilizer of the denominators of the non-epsilon rules (a guard against 0/0 only).
_TINY = 1e-9


# -- rules ------------------------------------------------------------------------------------
# A rule maps (layer input x, layer output z, relevance at the output r) -> relevance at x.
# ``f(x, w, b)`` is the layer's affine map with parameters w, b (b may be None).
Affine = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
Rule = Callable[[Tensor, Tensor, Tensor], Tensor]


def _stab(z: Tensor, eps: float) -> Tensor:
    """z + eps * sign(z), with sign(0) = +1: the signed stabilizer of the epsilon rule."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def _vjp(f: Affine, parts: list[tuple[Tensor, Tensor, Tensor | None, Tensor]]) -> list[Tensor]:
    """For each (input, weight, bias, s): d/dinput <f(input, weight, bias), s>, in one backward.

    f is linear in its input, so this is the transposed layer applied to s (the "gradient" of
    the modified layer)."""
    leaves = [x.detach().requires_grad_(True) for x, _, _, _ in parts]
    with torch.enable_grad():
        outs = [f(leaf, w, b) for leaf, (_, w, b, _) in zip(leaves, parts)]
        return list(torch.autograd.grad(outs, leaves, [s for *_, s in parts]))


def _forward(f: Affine, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    with torch.no_grad():
        return f(x, w, b)


def epsilon_rule(f: Affine, w: Tensor, b: Tensor | None, eps: float) -> Rule:
    """LRP-epsilon: R_j = sum_k x_j w_jk R_k / (z_k + eps sign z_k); z includes the bias."""
    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        (c,) = _vjp(f, [(x, w, b, r / _stab(z, eps))])
        return x * c
    return rule


def gamma_rule(f: Affine, w: Tensor, b: Tensor | None, gamma: float) -> Rule:
    """LRP-gamma, favouring positive contributions: weights w + gamma w+ (Montavon et al. 2019).

    For negative inputs the generalized form (Andeol et al. 2021, as zennit): units with
    z > 0 share relevance by x+ (w + g w+) + x- (w + g w-), units with z < 0 by
    x+ (w + g w-) + x- (w + g w+). Gamma modifies weights only; the bias enters unchanged
    (the seed also scaled it, KNOWN_ISSUES row 8)."""
    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        wp, wn = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        rp, rn = r * (z > 0), r * (z < 0)
        if not bool((x < 0).any()):
            sp = rp / _stab(_forward(f, x, wp, b), _TINY)
            sn = rn / _stab(_forward(f, x, wn, b), _TINY)
            c1, c2 = _vjp(f, [(x, wp, b, sp), (x, wn, b, sn)])
            return x * (c1 + c2)
        sp = rp / _stab(_forward(f, xp, wp, b) + _forward(f, xn, wn, None), _TINY)
        sn = rn / _stab(_forward(f, xp, wn, b) + _forward(f, xn, wp, None), _TINY)
        c = _vjp(f, [(xp, wp, b, sp), (xn, wn, None, sp), (xp, wn, b, sn), (xn, wp, None, sn)])
        return xp * (c[0] + c[2]) + xn * (c[1] + c[3])
    return rule


def alpha_beta_rule(f: Affine, w: Tensor, b: Tensor | None, alpha: float) -> Rule:
    """LRP-alpha-beta with beta = alpha - 1: alpha times the share of the positive
    contributions (x w)+ minus beta times the share of the negative ones (x w)-, the bias
    neuron included in both sums (Montavon et al. 2019, eq. for LRP-alpha-beta). alpha = 1 is z+."""
    beta = alpha - 1.0

    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:  # noqa: ARG001
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp, bn = (None, None) if b is None else (b.clamp(min=0), b.clamp(max=0))
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        signed = bool((x < 0).any())
        pos = _forward(f, xp, wp, bp) + (_forward(f, xn, wn, None) if signed else 0)
        sp = alpha * r / _stab(pos, _TINY)
        parts = [(xp, wp, bp, sp)] + ([(xn, wn, None, sp)] if signed else [])
        if beta:
            neg = _forward(f, xp, wn, bn) + (_forward(f, xn, wp, None) if signed else 0)
            sn = -beta * r / _stab(neg, _TINY)
            parts += [(xp, wn, bn, sn)] + ([(xn, wp, None, sn)] if signed else [])
        c = _vjp(f, parts)
        ins = [xp, xn] if signed else [xp]
        return sum(i * g for i, g in zip(ins * (len(c) // len(ins)), c))
    return rule


def box_rule(f: Affine, w: Tensor, low: Tensor, high: Tensor) -> Rule:
    """z^B for the first layer (Montavon et al. 2017/2019): inputs bounded by low <= x <= high,
    R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) / sum_i (...) R_j; the bias does not enter."""
    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:  # noqa: ARG001
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        den = _forward(f, x, w, None) - _forward(f, low, wp, None) - _forward(f, high, wn, None)
        s = r / _stab(den, _TINY)
        c = _vjp(f, [(x, w, None, s), (low, wp, None, s), (high, wn, None, s)])
        return x * c[0] - low * c[1] - high * c[2]
    return rule


def pool_rule(module: nn.Module, eps: float) -> Rule:
    """Epsilon rule on a parameter-free linear layer (average pooling), through its forward."""
    def f(x: Tensor, _w: Tensor, _b: Tensor | None) -> Tensor:
        return module.forward(x)  # .forward, not __call__: our own hooks must not fire here

    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        (c,) = _vjp(f, [(x, x, None, r / _stab(z, eps))])
        return x * c
    return rule


class _Relevance(torch.autograd.Function):
    """Forward: the layer's output (already computed). Backward: the layer's LRP rule."""

    @staticmethod
    def forward(ctx, x: Tensor, z: Tensor, rule: Rule) -> Tensor:  # type: ignore[override]
        ctx.rule = rule
        ctx.save_for_backward(x, z)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        x, z = ctx.saved_tensors
        return ctx.rule(x, z, r), None, None


class _Pass(torch.autograd.Function):
    """Forward: the activation's output. Backward: relevance passed through unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor) -> Tensor:  # type: ignore[override]  # noqa: ARG004
        return out.view_as(out)

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return r, None


# -- the chain ----------------------------------------------------------------------------------
@dataclass
class _Step:
    """One module call of the chain, in call order."""

    name: str
    module: nn.Module
    kind: str  # "affine", "fold_src" (affine whose BatchNorm follows), "norm", "avg", "act", "grad"
    src: nn.Module | None = None  # for "norm": the convolution / Linear folded into it


def _kind(m: nn.Module) -> str | None:
    t = type(m)
    if t in _CONV:
        return "affine" if m.padding_mode == "zeros" else None
    if t in _DENSE:
        return "affine"
    if t in _NORM:
        return "norm" if m.running_mean is not None else None
    return "avg" if t in _AVG else "act" if t in _ACT else "grad" if t in _GRAD else None


def _unsupported(name: str, m: nn.Module, why: str = "") -> LayerError:
    return LayerError(f"lrp cannot propagate relevance through {name!r} ({type(m).__name__}){why}; "
                      f"it supports chains of {_SUPPORTED}")


def _link(node: object, target: object) -> str | None:
    """Follow ``node`` back through reshape-like autograd nodes to ``target``.
    Returns None when it gets there, else the name of the first other node met."""
    while node is not target:
        if node is None:
            return "a tensor that does not depend on the previous module"
        op = type(node).__name__.rstrip("0123456789")
        nxt = [n for n, _ in node.next_functions if n is not None]  # type: ignore[attr-defined]
        if op not in _LINK_OPS or len(nxt) != 1:
            return op
        node = nxt[0]
    return None


def plan(model: nn.Module, x: Tensor) -> list[_Step]:
    """Probe forward on ``x``: the chain of module calls, each checked to receive exactly the
    previous one's output. Raises :class:`LayerError` naming the first module that does not."""
    names: dict[nn.Module, str] = {}
    for name, m in model.named_modules():
        names.setdefault(m, name or type(model).__name__)
        has_children = next(m.children(), None) is not None
        if has_children and next(m.parameters(recurse=False), None) is not None:
            raise _unsupported(names[m], m, ": it has parameters of its own besides its submodules")
    steps: list[_Step] = []
    last: dict[str, object] = {}

    def hook(m: nn.Module, inputs: tuple[object, ...], out: object) -> None:
        name = names[m]
        if len(inputs) != 1 or not isinstance(inputs[0], Tensor) or not isinstance(out, Tensor):
            raise _unsupported(name, m, ": it takes or returns something other than one tensor")
        kind = _kind(m)
        if kind is None:
            raise _unsupported(name, m)
        prev = steps[-1].name if steps else "the model's input"
        found = _link(inputs[0].grad_fn, last["node"])
        if found is not None:
            raise LayerError(
                f"lrp needs a plain chain of modules, but the input of {name!r} ({type(m).__name__}) "
                f"is not the output of {prev!r}: it comes from {found} (a residual connection or "
                f"another branch?); LRP rules for such architectures are not implemented")
        if kind == "norm":
            if not steps or steps[-1].kind != "affine" or inputs[0].grad_fn is not last["node"]:
                raise _unsupported(name, m, ": a BatchNorm is folded into the convolution or "
                                   "Linear right before it, and there is none")
            steps[-1].kind = "fold_src"
            steps.append(_Step(name, m, kind, src=steps[-1].module))
        else:
            steps.append(_Step(name, m, kind))
        last["node"] = out.grad_fn

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    with ExitStack() as stack, torch.enable_grad():
        for m in dict.fromkeys(leaves):
            stack.callback(m.register_forward_hook(hook).remove)
        x0 = x.detach().requires_grad_(True).clone()
        last["node"] = x0.grad_fn
        out = model(x0)
    if not isinstance(out, Tensor):
        raise LayerError(f"lrp needs a model that returns a tensor, not {type(out).__name__}")
    found = _link(out.grad_fn, last["node"])
    if found is not None:
        after = repr(steps[-1].name) if steps else "its input"
        raise LayerError(f"lrp needs a plain chain of modules, but the model's output is not the "
                         f"output of {after}: it comes from {found}")
    return steps


# -- parameters -----------------------------------------------------------------------------
def _affine(step: _Step) -> tuple[Affine, Tensor, Tensor | None]:
    """The step's affine map and its parameters, BatchNorm folded in (nothing is modified)."""
    layer = step.src if step.kind == "norm" else step.module
    assert layer is not None
    w, b = layer.weight, layer.bias
    if isinstance(layer, nn.Linear):
        f: Affine = F.linear
    else:
        conv = _CONV[type(layer)]

        def f(x: Tensor, w: Tensor, b: Tensor | None, c: nn.Module = layer) -> Tensor:
            return conv(x, w, b, c.stride, c.padding, c.dilation, c.groups)
    if step.kind == "norm":
        bn = step.module
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        b = shift if b is None else b * scale + shift
    return f, w.detach(), None if b is None else b.detach()


def _bounds(x: Tensor) -> tuple[Tensor, Tensor]:
    """Lowest and highest possible input, element-wise: the ImageNet-normalized [0, 1] pixel
    range for 3-channel images, else each sample's own min and max; widened to contain x."""
    if x.dim() == 4 and x.shape[1] == 3:
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        low, high = (0 - mean) / std, (1 - mean) / std
    else:
        dims = tuple(range(1, x.dim()))
        low, high = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    return torch.minimum(low, x).detach(), torch.maximum(high, x).detach()


def _rule(step: _Step, first: bool, x: Tensor, rule: str, epsilon: float, gamma: float,
          alpha: float) -> Rule:
    if step.kind == "avg":
        return pool_rule(step.module, epsilon if rule == "epsilon" else _TINY)
    f, w, b = _affine(step)
    if rule == "composite":
        if first:
            return box_rule(f, w, *_bounds(x))
        dense = isinstance(step.src if step.kind == "norm" else step.module, nn.Linear)
        rule = "epsilon" if dense else "gamma"
    if rule == "epsilon":
        return epsilon_rule(f, w, b, epsilon)
    if rule == "gamma":
        return gamma_rule(f, w, b, gamma)
    return alpha_beta_rule(f, w, b, 1.0 if rule == "zplus" else alpha)


@contextmanager
def lrp_hooks(model: nn.Module, steps: list[_Step], rule: str, epsilon: float, gamma: float,
              alpha: float) -> Iterator[None]:
    """Forward hooks that give each step of the chain its LRP backward; removed on exit."""
    calls = {"i": 0}
    pending: dict[nn.Module, Tensor] = {}
    first = next((i for i, s in enumerate(steps) if s.kind in ("affine", "norm")), -1)

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
        i = calls["i"]
        if i >= len(steps) or steps[i].module is not m:
            raise LayerError("the model called its modules in another order than in the probe "
                             "forward; lrp needs a forward pass that does not change between calls")
        calls["i"] = i + 1
        step, x = steps[i], inputs[0]
        if step.kind == "fold_src":
            pending[m] = x
            return None
        if step.kind == "act":
            return _Pass.apply(x, out.detach())
        if step.kind == "grad":
            return None
        if step.kind == "norm":
            x = pending.pop(step.src)  # type: ignore[arg-type]
        fn = _rule(step, i == first, x, rule, epsilon, gamma, alpha)
        return _Relevance.apply(x, out.detach(), fn)

    with ExitStack() as stack:
        for m in dict.fromkeys(s.module for s in steps):
            stack.callback(m.register_forward_hook(hook).remove)
        yield


# -- the technique ---------------------------------------------------------------------------
@technique("lrp", output="input", layer="optional", signed=True, choices={"rule": RULES},
           paper="Bach et al. 2015, https://doi.org/10.1371/journal.pone.0130140; "
                 "Montavon et al. 2019, https://doi.org/10.1007/978-3-030-28954-6_10",
           summary="Layer-wise relevance propagation: the target logit redistributed layer by "
                   "layer down to the pixels (or to a layer) by per-layer rules.")
def lrp(ctx: Context, *, layer: str | None = None, rule: str = "composite", epsilon: float = 0.25,
        gamma: float = 0.25, alpha: float = 1.0) -> Tensor:
    """Relevance of the target logit, raw and signed: (N, C, H, W) at the input, or with
    ``layer`` the relevance at that module's output summed over channels, (N, 1, h, w).

    ``rule``: ``epsilon`` / ``gamma`` / ``alpha_beta`` / ``zplus`` for every convolution and
    Linear, or ``composite`` (z^B box rule at the first layer with the ImageNet pixel bounds,
    gamma for the other convolutions, epsilon for Linear layers). ``epsilon`` is absolute, in
    the units of the layer's pre-activations; ``alpha`` >= 1, beta = alpha - 1.
    """
    if epsilon < 0 or gamma < 0 or alpha < 1:
        raise ValueError(f"lrp: epsilon and gamma must be >= 0 and alpha >= 1 (beta = alpha - 1), "
                         f"got epsilon={epsilon}, gamma={gamma}, alpha={alpha}")
    model = ctx.model
    steps = plan(model, ctx.x[:1])
    at = None
    if layer is not None:
        modules = dict(model.named_modules())
        target = modules[layer]
        # a convolution folded with its BatchNorm has no output of its own: use the BatchNorm's
        folded = {s.src: s.name for s in steps if s.kind == "norm"}
        at = folded.get(target, layer)
    x = ctx.x.detach().requires_grad_(True)
    with ExitStack() as stack, torch.enable_grad():
        stack.enter_context(lrp_hooks(model, steps, rule, epsilon, gamma, alpha))
        acts = stack.enter_context(capture(model, [at] if at else []))
        logits = model(x)
        idx = ctx.target[:, None]
        r0 = torch.zeros_like(logits).scatter_(1, idx, logits.detach().gather(1, idx))
        wrt = [acts[at]] if at else [x]
        if at and at not in acts:
            raise LayerError(f"layer {layer!r} is not called in the model's forward")
        (rel,) = torch.autograd.grad(logits, wrt, r0, allow_unused=True)
    if at is None:
        return rel.detach()
    if rel is None:
        raise LayerError(f"layer {layer!r} carries no relevance to the output")
    if rel.dim() != 4:
        raise LayerError(f"layer {layer!r} outputs shape {tuple(rel.shape)}; lrp with layer= "
                         "needs a 4-D (N,C,H,W) output")
    return rel.detach().sum(1, keepdim=True)
