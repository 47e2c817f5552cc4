"""Layer-wise relevance propagation (Bach et al. 2015; rules after Montavon et al. 2019).

Implemented the zennit way: relevance travels backwards as the "gradient" of one autograd
pass, starting from the target logit (one-hot times the logit). During the forward, a hook
on every leaf module hands the output of each linear layer (convolution, ``Linear``, a
convolution with its BatchNorm folded in, average pooling) to an autograd function whose
backward applies the layer's rule, e.g. for epsilon::

    R_in = x * W^T (R_out / (z + eps sign z))

computed functionally from the layer's own frozen parameters (modified copies of a weight
exist only inside that layer's backward): no module is copied, changed or given attributes,
and every hook is removed in a ``finally``, also when the call raises. ReLU, max pooling,
dropout, flatten and identity keep their ordinary gradient, which is already their LRP rule
(identity on relevance, winner-take-all, a reshape); ``ReLU6`` passes relevance unchanged.

Which models: a *chain* of supported modules, each receiving exactly the previous module's
output (functional reshapes such as ``torch.flatten`` and functional ReLU / max pooling
between modules are fine): torchvision's AlexNet and every VGG, with or without BatchNorm.
The same hooks check this as the forward runs, following each module's input through the
autograd graph back to the previous module's output; a residual add (ResNet), a
concatenation (Inception, DenseNet), an unsupported module type or a container with
parameters of its own raises a :class:`~galleryvis.hooks.LayerError` naming the module.
(captum returns relevance on ResNet-50 without complaint, but it is not LRP relevance there.)
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
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
_ACT = (nn.ReLU6,)
#: Their ordinary gradient is the LRP rule: winner-take-all for max pooling, identity or a
#: reshape for the others (dropout is the identity in eval mode, which the engine sets).
#: ReLU's gradient is the identity on relevance too: relevance is zero wherever an
#: activation is zero (every rule multiplies by the layer input), which is where it masks.
_GRAD = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
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
# ``f(x, w, b)`` is the layer's affine map with parameters w, b (b may be None) and
# ``f.t(s, w, x)`` its transpose applied to s (the vector-Jacobian product, independent of x).


class Affine:
    """An affine map f(x, w, b) and its transpose, for the layer's own or modified parameters."""

    def __init__(self, fwd: Callable[[Tensor, Tensor, Tensor | None], Tensor],
                 transpose: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> None:
        self.fwd, self.transpose = fwd, transpose

    def __call__(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        with torch.no_grad():
            return self.fwd(x, w, b)

    def t(self, s: Tensor, w: Tensor, x: Tensor) -> Tensor:
        """d/dx <f(x, w, .), s>: the transposed layer (autograd when no closed form is known)."""
        if self.transpose is not None:
            return self.transpose(s, w, x)
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.fwd(leaf, w, None), leaf, s)
        return g


Rule = Callable[[Tensor, Tensor, Tensor], Tensor]


def _stab(z: Tensor, eps: float) -> Tensor:
    """z + eps * sign(z), with sign(0) = +1: the signed stabilizer of the epsilon rule."""
    return torch.where(z >= 0, eps, -eps).to(z.dtype).add_(z)


def epsilon_rule(f: Affine, w: Tensor, b: Tensor | None, eps: float) -> Rule:  # noqa: ARG001
    """LRP-epsilon: R_j = sum_k x_j w_jk R_k / (z_k + eps sign z_k); z includes the bias."""
    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        return x * f.t(r / _stab(z, eps), w, x)
    return rule


def gamma_rule(f: Affine, w: Tensor, b: Tensor | None, gamma: float) -> Rule:
    """LRP-gamma, favouring positive contributions: weights w + gamma w+ (Montavon et al. 2019).

    Units with z >= 0 share their relevance by x (w + g w+); when inputs or relevant outputs
    are negative, the generalized form (Andeol et al. 2021, as zennit) applies: z >= 0 units
    by x+ (w + g w+) + x- (w + g w-), z < 0 units by x+ (w + g w-) + x- (w + g w+). Gamma
    modifies weights only; the bias enters unchanged (the seed also scaled it, KNOWN_ISSUES
    row 8). After a ReLU nothing is negative, and the rule costs one forward and one
    transposed layer."""
    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        signed = bool((x < 0).any())
        wp = w.clamp(min=0).mul_(gamma).add_(w)
        if not signed and not bool(((z < 0) & (r != 0)).any()):
            return x * f.t(r / _stab(f(x, wp, b), _TINY), wp, x)
        wn = w.clamp(max=0).mul_(gamma).add_(w)
        rp, rn = r * (z >= 0), r * (z < 0)
        xp, xn = (x.clamp(min=0), x.clamp(max=0)) if signed else (x, None)
        sp = rp / _stab(f(xp, wp, b) + (f(xn, wn, None) if signed else 0), _TINY)
        sn = rn / _stab(f(xp, wn, b) + (f(xn, wp, None) if signed else 0), _TINY)
        out = xp * (f.t(sp, wp, x) + f.t(sn, wn, x))
        return out + xn * (f.t(sp, wn, x) + f.t(sn, wp, x)) if signed else out
    return rule


def alpha_beta_rule(f: Affine, w: Tensor, b: Tensor | None, alpha: float) -> Rule:
    """LRP-alpha-beta with beta = alpha - 1: alpha times the share of the positive
    contributions (x w)+ minus beta times the share of the negative ones (x w)-, the bias
    neuron's part included in each sum (Montavon et al. 2019). alpha = 1 is the z+ rule."""
    beta = alpha - 1.0

    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:  # noqa: ARG001
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp, bn = (None, None) if b is None else (b.clamp(min=0), b.clamp(max=0))
        signed = bool((x < 0).any())
        xp, xn = (x.clamp(min=0), x.clamp(max=0)) if signed else (x, None)
        pos = f(xp, wp, bp) + (f(xn, wn, None) if signed else 0)
        sp = alpha * r / _stab(pos, _TINY)
        out = xp * f.t(sp, wp, x) + (xn * f.t(sp, wn, x) if signed else 0)
        if beta:
            neg = f(xp, wn, bn) + (f(xn, wp, None) if signed else 0)
            sn = beta * r / _stab(neg, _TINY)
            out = out - xp * f.t(sn, wn, x) - (xn * f.t(sn, wp, x) if signed else 0)
        return out
    return rule


def box_rule(f: Affine, w: Tensor, low: Tensor, high: Tensor) -> Rule:
    """z^B for the first layer (Montavon et al. 2017/2019): inputs bounded by low <= x <= high,
    R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) / sum_i (...) R_j; the bias does not enter."""
    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:  # noqa: ARG001
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        s = r / _stab(f(x, w, None) - f(low, wp, None) - f(high, wn, None), _TINY)
        return x * f.t(s, w, x) - low * f.t(s, wp, x) - high * f.t(s, wn, x)
    return rule


def pool_rule(module: nn.Module, eps: float) -> Rule:
    """Epsilon rule on a parameter-free linear layer (average pooling), through its forward
    (``.forward``, not ``__call__``: our own hooks must not fire here)."""
    f = Affine(lambda x, _w, _b: module.forward(x))

    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        return x * f.t(r / _stab(z, eps), x, x)
    return rule


class _Relevance(torch.autograd.Function):
    """Forward: the layer's output, already computed, returned as itself. Backward: the
    layer's LRP rule.

    ``mark_dirty`` on a detached alias gives the output this function as its history without
    a copy, and without keeping the layer's own graph alive (it is never used). Views and
    outputs that are the input itself are copied first: their version counter is shared."""

    @staticmethod
    def forward(ctx, x: Tensor, z: Tensor, rule: Rule) -> Tensor:  # type: ignore[override]
        ctx.mark_dirty(z)
        ctx.rule = rule
        ctx.save_for_backward(x, z)
        return z

    @staticmethod
    def wrap(x: Tensor, out: Tensor, rule: Rule) -> Tensor:
        z = out.detach()
        if out is x or out._is_view():
            z = z.clone()
        return _Relevance.apply(x, z, rule)

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        x, z = ctx.saved_tensors
        return ctx.rule(x, z, r), None, None


class _Pass(torch.autograd.Function):
    """Forward: the activation's output. Backward: relevance passed through unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor) -> Tensor:  # type: ignore[override]  # noqa: ARG004
        return out.clone()

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return r, None


# -- the chain ----------------------------------------------------------------------------------
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


def _affine(layer: nn.Module, bn: nn.Module | None = None) -> tuple[Affine, Tensor, Tensor | None]:
    """The layer's affine map and parameters, with ``bn`` folded in (nothing is modified)."""
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.Linear):
        f = Affine(F.linear, lambda s, w, _x: s @ w)
    else:
        conv, c = _CONV[type(layer)], layer
        grad_input = getattr(torch.nn.grad, f"conv{w.dim() - 2}d_input")

        def transpose(s: Tensor, w: Tensor, x: Tensor) -> Tensor:
            return grad_input(x.shape, w, s, c.stride, c.padding, c.dilation, c.groups)
        f = Affine(lambda x, w, b: conv(x, w, b, c.stride, c.padding, c.dilation, c.groups),
                   None if isinstance(c.padding, str) else transpose)
    if bn is not None:
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach()
        shift = -bn.running_mean * scale + (0 if bn.bias is None else bn.bias.detach())
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        b = shift if b is None else b * scale + shift
    return f, w, b


def _bounds(x: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
    """Lowest and highest possible values of the first layer's input ``x``, element-wise.

    For 3-channel images: the ImageNet-normalized [0, 1] pixel range, reshaped like ``x``
    when only reshapes lie between the image and the layer (``Flatten`` before a Linear);
    otherwise each sample's own min and max. Widened where needed to contain ``x``."""
    x, image = x.detach(), image.detach()
    if image.dim() == 4 and image.shape[1] == 3 and x.numel() == image.numel():
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        low = ((0 - mean) / std).expand_as(image).reshape(x.shape)
        high = ((1 - mean) / std).expand_as(image).reshape(x.shape)
    else:
        dims = tuple(range(1, x.dim()))
        low, high = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    return torch.minimum(low, x), torch.maximum(high, x)


def _layer_rule(layer: nn.Module, bn: nn.Module | None, first: Tensor | None, x: Tensor,
                rule: str, epsilon: float, gamma: float, alpha: float) -> Rule:
    """The rule of one layer; ``first`` is the model's input when this is the first layer."""
    f, w, b = _affine(layer, bn)
    if rule == "composite":
        if first is not None:
            return box_rule(f, w, *_bounds(x, first))
        rule = "epsilon" if isinstance(layer, nn.Linear) else "gamma"
    if rule == "epsilon":
        return epsilon_rule(f, w, b, epsilon)
    if rule == "gamma":
        return gamma_rule(f, w, b, gamma)
    return alpha_beta_rule(f, w, b, 1.0 if rule == "zplus" else alpha)


class _Chain:
    """State of one LRP forward: the module calls so far, checked to form a chain."""

    def __init__(self, model: nn.Module, x: Tensor, rule: str, epsilon: float, gamma: float,
                 alpha: float) -> None:
        self.names: dict[nn.Module, str] = {}
        for name, m in model.named_modules():
            self.names.setdefault(m, name or type(model).__name__)
            if next(m.children(), None) is not None and next(m.parameters(recurse=False), None) is not None:
                raise _unsupported(self.names[m], m, ": it has parameters besides its submodules")
        self.params = (rule, epsilon, gamma, alpha)
        self.input = x
        self.node: object = x.grad_fn  # the autograd node of the last output in the chain
        self.prev: tuple[str, nn.Module, str, Tensor, Tensor] | None = None  # name, module, kind, in, out
        self.affine_calls = 0
        self.folded: dict[int, Tensor] = {}  # id(a folded layer's output) -> its BatchNorm's output

    def hook(self, m: nn.Module, inputs: tuple[object, ...], out: object) -> Tensor | None:
        name = self.names[m]
        if len(inputs) != 1 or not isinstance(inputs[0], Tensor) or not isinstance(out, Tensor):
            raise _unsupported(name, m, ": it takes or returns something other than one tensor")
        x = inputs[0]
        kind = _kind(m)
        if kind is None:
            raise _unsupported(name, m)
        found = _link(x.grad_fn, self.node)
        if found is not None:
            prev = repr(self.prev[0]) if self.prev else "the model's input"
            raise LayerError(
                f"lrp needs a plain chain of modules, but the input of {name!r} ({type(m).__name__}) "
                f"is not the output of {prev}: it comes from {found} (a residual connection or "
                f"another branch?); LRP rules for such architectures are not implemented")
        new: Tensor | None = None
        if kind == "affine":
            self.affine_calls += 1
            new = _Relevance.wrap(x, out, _layer_rule(m, None, self.first, x, *self.params))
        elif kind == "norm":
            p = self.prev
            if p is None or p[2] != "affine":
                raise _unsupported(name, m, ": a BatchNorm is folded into the convolution or Linear "
                                   "whose output it receives, and there is none")
            # canonization: conv + BN act as one layer, from the conv's input to the BN's output
            new = _Relevance.wrap(p[3], out,
                                   _layer_rule(p[1], m, self.first, p[3], *self.params))
            self.folded[id(p[4])] = new
        elif kind == "avg":
            rule, epsilon = self.params[:2]
            new = _Relevance.wrap(x, out, pool_rule(m, epsilon if rule == "epsilon" else _TINY))
        elif kind == "act":
            new = _Pass.apply(x, out.detach())
        result = out if new is None else new
        self.prev = (name, m, kind, x, result)
        self.node = result.grad_fn
        return new

    @property
    def first(self) -> Tensor | None:
        """The model's input while the first convolution / Linear is being hooked, else None."""
        return self.input if self.affine_calls == 1 else None

    def check_output(self, out: object) -> Tensor:
        if not isinstance(out, Tensor):
            raise LayerError(f"lrp needs a model that returns a tensor, not {type(out).__name__}")
        found = _link(out.grad_fn, self.node)
        if found is not None:
            after = repr(self.prev[0]) if self.prev else "its input"
            raise LayerError(f"lrp needs a plain chain of modules, but the model's output is not "
                             f"the output of {after}: it comes from {found}")
        return out


@contextmanager
def lrp_hooks(model: nn.Module, chain: _Chain) -> Iterator[_Chain]:
    """A forward hook on every leaf module that checks the chain and gives each layer its LRP
    backward; all removed on exit, also when the forward raises."""
    with ExitStack() as stack:
        for m in dict.fromkeys(m for m in model.modules() if next(m.children(), None) is None):
            stack.callback(m.register_forward_hook(chain.hook).remove)
        yield chain


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
    with ExitStack() as stack, torch.enable_grad():
        x = ctx.x.detach().requires_grad_(True)
        x0 = x.view_as(x)  # a node of its own, so the first module's input can be checked
        chain = stack.enter_context(lrp_hooks(model, _Chain(model, x0, rule, epsilon, gamma, alpha)))
        acts = stack.enter_context(capture(model, [layer] if layer else []))
        logits = chain.check_output(model(x0))
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError("the model must return logits of shape (N, classes); "
                             f"it returned {tuple(logits.shape)}")
        idx = ctx.target[:, None]
        r0 = torch.zeros_like(logits).scatter_(1, idx, logits.detach().gather(1, idx))
        if layer is None:
            (rel,) = torch.autograd.grad(logits, x, r0)
            return rel.detach()
        if layer not in acts:
            raise LayerError(f"layer {layer!r} is not called in the model's forward")
        # a layer folded with its BatchNorm has no relevance of its own: the pair's output has it
        at = chain.folded.get(id(acts[layer]), acts[layer])
        (rel,) = torch.autograd.grad(logits, at, r0, allow_unused=True)
    if rel is None:
        raise LayerError(f"layer {layer!r} carries no relevance to the output")
    if rel.dim() != 4:
        raise LayerError(f"layer {layer!r} outputs shape {tuple(rel.shape)}; lrp with layer= "
                         "needs a 4-D (N,C,H,W) output")
    return rel.detach().sum(1, keepdim=True)
