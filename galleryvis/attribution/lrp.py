"""Layer-wise relevance propagation (Bach et al. 2015; rules after Montavon et al. 2019).

Implemented the zennit way: relevance travels backwards as the "gradient" of one autograd
pass, starting from the target's relevance (``Objective.relevance``: for a class, one-hot
times the logit). What flows backwards is the
relevance itself, so every operation whose ordinary gradient is not already its LRP rule gets
an autograd function whose backward applies the rule, e.g. for epsilon::

    R_in = x * W^T (R_out / (z + eps sign z))

computed functionally from the layer's own frozen parameters (modified copies of a weight
exist only inside that backward): no module is copied, changed or given attributes.

Which operations get which rule is decided per *operation*, not per module: during the one
forward, a :class:`~torch.overrides.TorchFunctionMode` sees every torch function the model
calls, in module code and in ``forward`` code alike, and

- convolutions (any ``groups``, so depthwise too, and any ``dilation``; ``F.pad`` before them,
  as in TF-style "SAME" convolutions, is a routing op below), transposed convolutions
  (decoders' learned upsampling) and ``linear`` get the layer's rule, with the
  arguments of that very call: a ``Conv2d`` subclass that pads first is handled without
  knowing its class;
- ``batch_norm`` right after one of them is folded into it (canonization);
- average pooling (also adaptive), ``mean``, ``sum`` and interpolation (bilinear, nearest, ...:
  parameter-free linear maps) get the epsilon rule through the op itself;
- additions (``h + x``, ``out += identity``: residual connections) split the relevance of
  the sum z = a + b in proportion to the contributions, R_a = a R_z / (z + eps sign z): the
  plain gradient of an add would hand all of R_z to *both* terms and double it;
- ``hardtanh`` / ``relu6`` and scaling by a constant pass relevance unchanged;
- ReLU, max pooling, reshapes, indexing, padding, concatenation and dropout keep their
  ordinary gradient, which routes relevance (a mask, winner-take-all, a crop or a split);
- transformers' operations follow AttnLRP (Achtibat et al. 2024): element-wise nonlinearities
  other than ReLU (GELU, SiLU, sigmoid, ...) pass relevance unchanged (the identity rule);
  ``layer_norm`` / ``rms_norm`` are linear maps with their statistics held at the input's
  values (epsilon rule); a product of two activations (``matmul``, ``bmm``, ``a * b``: attention
  scores, attention times values, gates) gives each factor half of each term's share (the
  uniform rule); ``softmax`` gets R_in = x (R - s sum R), and with ``attention="cp"`` (CP-LRP,
  Ali et al. 2022) no relevance at all, the attention then counting as constant weights;
  ``scaled_dot_product_attention`` and ``multi_head_attention_forward`` are decomposed into
  those operations;
- anything else that depends on the input (a division by an activation, a group norm, an
  exponential, ...) raises a :class:`~galleryvis.hooks.LayerError` naming the module whose
  forward does it.

In-place operations are computed out of place (``out += identity`` rebinds ``out``); a
tensor used again after an in-place change raises. A check of the finished autograd graph
makes sure that every node on the way from the logits to the input came from an operation
seen here (a custom autograd Function or a scripted module would not be). Module forward
hooks only track which module is running, for error messages; they and the mode are removed
on exit, also when the forward raises.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from galleryvis.engine.changes.attention import self_attention
from galleryvis.engine.changes import capture, running
from galleryvis.engine.changes.canonizers import fold_batchnorm
from galleryvis.engine import Context
from galleryvis.errors import LayerError
from galleryvis.registry import technique
from galleryvis.tasks import spatial_logits

RULES = ("epsilon", "gamma", "alpha_beta", "zplus", "composite")
#: Inside attention: AttnLRP's softmax and uniform rules, or CP-LRP's constant attention.
ATTENTION_RULES = ("attnlrp", "cp")

# -- operations, by the name of the torch function (in-place variants are mapped to these) ---
#: Convolutions and linear layers: the layer's rule.
_AFFINE = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                     "linear"})
#: Folded into the convolution / Linear whose output it receives (Montavon et al. 2019 §10.3).
_NORM = frozenset({"batch_norm"})
#: Parameter-free linear maps: the epsilon rule through the op itself.
_LINEAR_OPS = frozenset({"avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                         "adaptive_avg_pool2d", "adaptive_avg_pool3d", "mean", "sum", "interpolate",
                         "upsample", "upsample_bilinear", "upsample_nearest"})
#: Sums: the proportional split (residual connections).
_SUM = frozenset({"add", "sub", "rsub"})
#: Relevance passes unchanged: bounded ReLUs, scaling by a constant (one activation), the
#: other element-wise nonlinearities (AttnLRP's identity rule), and an embedding's L2
#: normalization (CLIP's, before the cosine similarity), its norm held constant as LayerNorm's
#: statistics are. ``mul`` of two activations is a product (below).
_PASS = frozenset({"hardtanh", "relu6", "mul", "div", "neg", "gelu", "silu", "hardswish", "mish", "elu",
                   "celu", "selu", "softplus", "tanh", "sigmoid", "hardsigmoid", "normalize"})
#: Normalizations over the last dimensions: linear, with their statistics held constant.
_LAYER_NORM = frozenset({"layer_norm", "rms_norm"})
#: Matrix products: of two activations the uniform rule, of one the epsilon rule.
_MATMUL = frozenset({"matmul", "bmm", "mm"})
#: Composite attention functions, decomposed into the operations above.
_ATTENTION = frozenset({"scaled_dot_product_attention", "multi_head_attention_forward"})
#: The ordinary gradient is the LRP rule: ReLU masks where relevance is zero anyway (every
#: rule multiplies by the layer input), max pooling is winner-take-all.
_GRAD = frozenset({"relu", "threshold", "max_pool1d", "max_pool2d", "max_pool3d",
                   "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
                   "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"})
#: Routing: values moved, copied or dropped unchanged (dropout is the identity in eval mode,
#: which the engine sets). The gradient routes relevance, and the pixel bounds of the box rule
#: follow the image through these.
_ROUTE = frozenset({"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute",
                    "transpose", "swapaxes", "t", "T", "mT", "movedim", "squeeze", "unsqueeze",
                    "contiguous", "clone", "to", "float", "double", "half", "bfloat16", "type_as",
                    "__getitem__", "narrow", "select", "expand", "expand_as", "repeat", "pad",
                    "cat", "concat", "concatenate", "stack", "split", "chunk", "unbind", "flip",
                    "roll", "channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "dropout", "masked_fill",
                    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"})
#: Dunder methods -> op names (``__iadd__`` is ``add`` in place).
_DUNDER = {"add": "add", "radd": "add", "sub": "sub", "rsub": "rsub", "mul": "mul", "rmul": "mul",
           "truediv": "div", "div": "div", "neg": "neg", "getitem": "__getitem__",
           "rtruediv": "rdiv", "matmul": "matmul", "rmatmul": "matmul"}
#: Queries that read no values (allowed on a tensor that was changed in place).
_METADATA = frozenset({"shape", "size", "dim", "ndim", "numel", "nelement", "dtype", "device",
                       "layout", "stride", "storage_offset", "element_size", "is_contiguous",
                       "is_floating_point", "is_cuda", "requires_grad", "grad_fn", "data_ptr"})
#: Position of the ``inplace`` flag of functional activations (``F.relu(x, True)``).
_INPLACE_ARG = {"relu": 1, "relu6": 1, "hardtanh": 3, "threshold": 3, "dropout": 3,
                "dropout1d": 3, "dropout2d": 3, "dropout3d": 3, "alpha_dropout": 3,
                "feature_alpha_dropout": 3}

_SUPPORTED = ("convolutions (grouped, depthwise and dilated too, after F.pad or not), transposed "
              "convolutions, Linear, BatchNorm after a convolution/Linear (folded), LayerNorm/RMSNorm, "
              "additions (residual connections), ReLU, ReLU6/Hardtanh, GELU/SiLU/sigmoid/tanh and other "
              "element-wise activations, products of activations (matmul, gates), softmax, attention, max "
              "and average pooling (also adaptive), mean, interpolation (bilinear, nearest, ...), scaling "
              "by constants, dropout, reshapes, indexing, padding and concatenation")

#: ``F.multi_head_attention_forward``'s parameters, in order, and their defaults.
_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")
_MHA_DEFAULTS = {"training": True, "key_padding_mask": None, "need_weights": True, "attn_mask": None,
                 "use_separate_proj_weight": False, "q_proj_weight": None, "k_proj_weight": None,
                 "v_proj_weight": None, "static_k": None, "static_v": None, "average_attn_weights": True,
                 "is_causal": False}

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


def linear_op_rule(fn: Callable[[Tensor], Tensor], eps: float) -> Rule:
    """Epsilon rule on a parameter-free linear map ``fn`` (average pooling, mean, interpolation)."""
    f = Affine(lambda x, _w, _b: fn(x))

    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        return x * f.t(r / _stab(z, eps), x, x)
    return rule


def pass_rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:  # noqa: ARG001
    """Relevance passed unchanged (summed where ``x`` was broadcast)."""
    return r.sum_to_size(x.shape)


def norm_rule(inv: Tensor, weight: Tensor | None, dims: tuple[int, ...], centered: bool, eps: float) -> Rule:
    """Epsilon rule of a layer / RMS norm made linear by holding its ``inv`` = 1 / std at the
    input's value (AttnLRP): z = (x - mean x) inv w + b, or x inv w without centering."""
    def rule(x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        s = r / _stab(z, eps) * inv
        if weight is not None:
            s = s * weight
        if centered:  # the centering is its own transpose
            s = s - s.mean(dims, keepdim=True)
        return (x * s).to(x.dtype)
    return rule


def softmax_rule(dim: int) -> Rule:
    """AttnLRP's softmax rule (Achtibat et al. 2024): R_i = x_i (R_i - s_i sum_j R_j), the z-rule
    of the softmax's linearization at x; masked logits (-inf) get none."""
    def rule(x: Tensor, s: Tensor, r: Tensor) -> Tensor:
        out = x * (r - s * r.sum(dim, keepdim=True))
        return torch.where(torch.isfinite(x), out, 0.0).to(x.dtype)
    return rule


class _Product(torch.autograd.Function):
    """Forward: z = fn(a, b), bilinear (a matrix or element-wise product of two activations).
    Backward: the uniform rule (AttnLRP): each term a_i b_j of z_k gets its epsilon-rule share of
    R_k, and each factor half of it, R_a = a d<z, s>/da / 2 with s = R / (z + eps sign z)."""

    @staticmethod
    def forward(ctx, fn: Callable[[Tensor, Tensor], Tensor], eps: float, a: Tensor,  # type: ignore[override]
                b: Tensor) -> Tensor:
        z = fn(a, b)
        ctx.fn, ctx.eps = fn, eps
        ctx.save_for_backward(a, b, z)
        return z

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        a, b, z = ctx.saved_tensors
        s = r / _stab(z, ctx.eps)
        la, lb = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
        with torch.enable_grad():
            ga, gb = torch.autograd.grad(ctx.fn(la, lb), (la, lb), s)
        return None, None, a * ga / 2, b * gb / 2


class _Relevance(torch.autograd.Function):
    """Forward: the op's output, already computed, returned as itself. Backward: its LRP rule.

    ``mark_dirty`` on a detached alias gives the output this function as its history without
    a copy, and without keeping the op's own graph alive. Views and outputs that are the
    input itself are copied first: their version counter is shared."""

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


class _Sum(torch.autograd.Function):
    """Forward: z = const + sum_i c_i t_i. Backward: R_i = c_i t_i R_z / (z + eps sign z),
    the epsilon rule of a layer with unit weights; ``const`` (a bias) keeps its share."""

    @staticmethod
    def forward(ctx, const: Tensor | float, coefs: tuple[float, ...], eps: float,  # type: ignore[override]
                *terms: Tensor) -> Tensor:
        z = const
        for c, t in zip(coefs, terms):
            z = z + (t if c == 1 else c * t)
        ctx.coefs, ctx.eps = coefs, eps
        ctx.save_for_backward(z, *terms)
        return z

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        z, *terms = ctx.saved_tensors
        s = r / _stab(z, ctx.eps)
        return (None, None, None,
                *[((t if c == 1 else c * t) * s).sum_to_size(t.shape) for c, t in zip(ctx.coefs, terms)])


# -- the forward, watched -----------------------------------------------------------------------
def _tensors(tree: Any) -> list[Tensor]:
    """The tensors in an op's arguments or result (one level of lists / tuples / dicts)."""
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else (tree,)
    out = []
    for a in items:
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out += [t for t in a if isinstance(t, Tensor)]
    return out


def _op_name(func: Callable[..., Any]) -> tuple[str, bool]:
    """The op's name with in-place variants mapped to their op (``add_``, ``__iadd__`` -> add),
    and whether the call is an in-place variant."""
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property such as x.T
        return str(getattr(getattr(func, "__self__", None), "__name__", name)), False
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        if core[:1] == "i" and core[1:] in _DUNDER:
            return _DUNDER[core[1:]], True
        return _DUNDER.get(core, name), False
    if name.endswith("_") and not name.startswith("_"):
        return name[:-1], True
    return name, False


def _bind(names: Sequence[str], args: Sequence[Any], kwargs: dict[str, Any],
          defaults: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **dict(zip(names, args)), **kwargs}


def _substitute(args: tuple[Any, ...], kwargs: dict[str, Any], old: Tensor, new: Tensor
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    def sub(a: Any) -> Any:
        if a is old:
            return new
        if isinstance(a, (list, tuple)):
            return type(a)(new if t is old else t for t in a)
        return a
    return tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}


def _image_bounds(x: Tensor, pixel_range: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """Lowest and highest possible values of the model's input, element-wise: for images whose
    channels match ``pixel_range`` (black and white in the model's input space, (1, C, 1, 1)),
    that range, otherwise each sample's own min and max. Widened where needed to contain ``x``."""
    x = x.detach()
    if x.dim() == 4 and pixel_range is not None and pixel_range[0].shape[1] == x.shape[1]:
        low, high = pixel_range[0].expand_as(x), pixel_range[1].expand_as(x)
    else:
        low, high = _own_bounds(x)
    return torch.minimum(low, x), torch.maximum(high, x)


def _own_bounds(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each sample's min and max, broadcast like ``x``."""
    x = x.detach()
    dims = tuple(range(1, x.dim()))
    return x.amin(dims, keepdim=True).expand_as(x), x.amax(dims, keepdim=True).expand_as(x)


class _Layer:
    """One convolution / linear call: its input, affine map, parameters and pixel bounds;
    ``transposed``: the groups of a transposed convolution (whose weight is (in, out / groups,
    ...)), 0 for the others (output channels first)."""

    def __init__(self, x: Tensor, f: Affine, w: Tensor, b: Tensor | None, dense: bool,
                 bounds: tuple[Tensor, Tensor] | None, transposed: int = 0) -> None:
        self.x, self.f, self.w, self.b, self.dense, self.bounds = x, f, w, b, dense, bounds
        self.transposed = transposed

    @property
    def out_channels(self) -> int:
        return self.w.shape[1] * self.transposed if self.transposed else self.w.shape[0]

    def fold(self, mean: Tensor, var: Tensor, eps: float, gamma: Tensor | None,
             beta: Tensor | None) -> tuple[Tensor, Tensor]:
        """Weight and bias of this layer followed by an eval-mode BatchNorm (in its own layout)."""
        if not self.transposed:
            return fold_batchnorm(self.w, self.b, mean, var, eps, gamma, beta)
        w, b = fold_batchnorm(_swap_channels(self.w, self.transposed), self.b, mean, var, eps, gamma, beta)
        return _swap_channels(w, self.transposed), b

    def rule(self, rule: str, epsilon: float, gamma: float, alpha: float,
             folded: tuple[Tensor, Tensor] | None = None) -> Rule:
        """The layer's rule, with its own parameters or the ``folded`` ones (w, b)."""
        w, b = folded or (self.w, self.b)
        if rule == "composite":
            if self.bounds is not None:
                return box_rule(self.f, w, *self.bounds)
            rule = "epsilon" if self.dense else "gamma"
        if rule == "epsilon":
            return epsilon_rule(self.f, w, b, epsilon)
        if rule == "gamma":
            return gamma_rule(self.f, w, b, gamma)
        return alpha_beta_rule(self.f, w, b, 1.0 if rule == "zplus" else alpha)


def _swap_channels(w: Tensor, groups: int) -> Tensor:
    """A grouped weight (a, b, ...) as (groups * b, a / groups, ...), group by group: a transposed
    convolution's weight with its output channels first, and back (it is its own inverse)."""
    a, b, *k = w.shape
    return w.reshape(groups, a // groups, b, *k).transpose(1, 2).reshape(groups * b, a // groups, *k)


def _affine_map(name: str, p: dict[str, Any]) -> Affine:
    if name == "linear":
        return Affine(F.linear, lambda s, w, _x: s @ w)
    if name.startswith("conv_transpose"):
        # the transpose of a transposed convolution is the convolution (when output_padding
        # only adds rows the convolution's stride skips, as PyTorch requires unless dilated)
        conv_t, conv = getattr(torch, name), getattr(torch, name.replace("_transpose", ""))
        stride, padding, extra, groups, dilation = (p[k] for k in ("stride", "padding", "output_padding",
                                                                   "groups", "dilation"))
        closed = all(e < s for e, s in zip(_tuple(extra, 3), _tuple(stride, 3)))
        return Affine(lambda x, w, b: conv_t(x, w, b, stride, padding, extra, groups, dilation),
                      (lambda s, w, _x: conv(s, w, None, stride, padding, dilation, groups)) if closed else None)
    conv = getattr(torch, name)
    stride, padding, dilation, groups = p["stride"], p["padding"], p["dilation"], p["groups"]
    grad_input = getattr(torch.nn.grad, f"{name}_input")

    def transpose(s: Tensor, w: Tensor, x: Tensor) -> Tensor:
        return grad_input(x.shape, w, s, stride, padding, dilation, groups)
    return Affine(lambda x, w, b: conv(x, w, b, stride, padding, dilation, groups),
                  None if isinstance(padding, str) else transpose)


def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    """A convolution's int-or-sequence argument as a tuple of ``n`` (an int repeated)."""
    return (v,) * n if isinstance(v, int) else tuple(v)


class _Tracer(TorchFunctionMode):
    """One LRP forward: every torch function the model calls on tensors that depend on the
    input gets its relevance rule, or raises naming the module that called it."""

    def __init__(self, model: nn.Module, x0: Tensor, rule: str, epsilon: float, gamma: float,
                 alpha: float, pixel_range: tuple[Tensor, Tensor] | None = None,
                 attention: str = "attnlrp") -> None:
        super().__init__()
        self.model = model
        self.params = (rule, epsilon, gamma, alpha)
        self.attention = attention
        self.names = {m: name for name, m in reversed(list(model.named_modules()))}
        self.running: list[nn.Module] = []  # modules whose forward is running, innermost last
        self.input_node = x0.grad_fn
        self.seen: set[object] = {x0.grad_fn}  # autograd nodes made by the ops handled here
        self.bounds: dict[object, tuple[Tensor, Tensor]] = {x0.grad_fn: _image_bounds(x0, pixel_range)}
        self.layers: dict[object, _Layer] = {}  # node of a conv / linear output -> the call
        self.folded: dict[object, Tensor] = {}  # node of a conv / linear output -> its BN's output
        self.stale: dict[int, tuple[Tensor, str, str]] = {}  # changed in place: id -> tensor, op, where
        self.affine_calls = 0

    # -- where we are -------------------------------------------------------------------------
    @contextmanager
    def tracking(self) -> Iterator[None]:
        """Keep :attr:`running` up to date while inside (:func:`galleryvis.engine.changes.running`)."""
        with running(self.model) as self.running:
            yield

    def where(self) -> str:
        m = self.running[-1] if self.running else self.model
        if m is self.model:
            return f"the forward of the model ({type(m).__name__})"
        return f"{self.names.get(m, '?')!r} ({type(m).__name__})"

    def refuse(self, what: str) -> LayerError:
        return LayerError(f"lrp cannot propagate relevance through {self.where()}: it {what}; "
                          f"lrp supports {_SUPPORTED}")

    # -- the mode -----------------------------------------------------------------------------
    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():  # no graph: nothing to propagate (e.g. inside a Function)
            return func(*args, **kwargs)
        tensors = _tensors(args) + _tensors(kwargs)
        name, inplace = _op_name(func)
        if self.stale and name not in _METADATA:
            self._check_stale(tensors)
        deps = [t for t in tensors if t.requires_grad]
        if not deps:
            return func(*args, **kwargs)
        handler = self._handler(name)
        if handler is None:
            out = func(*args, **kwargs)
            if any(t.requires_grad for t in _tensors(out)):
                raise self.refuse(f"computes {name or repr(func)}, which has no LRP rule here")
            return out  # a shape, a comparison, an argmax: no relevance flows through it
        pos = _INPLACE_ARG.get(name)
        if kwargs.get("inplace") or (pos is not None and len(args) > pos and args[pos] is True):
            inplace = True
        raw = getattr(func, "__name__", name)
        if inplace:
            func, args, kwargs = self._out_of_place(func, args, kwargs, pos)
        out = handler(func, name, args, kwargs, deps)
        self._mark(out, deps)
        if inplace and isinstance(args[0], Tensor) and out is not args[0]:
            self.stale[id(args[0])] = (args[0], raw, self.where())
        return out

    def _handler(self, name: str) -> Callable[..., Any] | None:
        for group, handler in ((_AFFINE, self._affine), (_NORM, self._norm), (_SUM, self._sum),
                               (_LINEAR_OPS, self._linear_op), (_PASS, self._pass),
                               (_GRAD, self._plain), (_ROUTE, self._route), (_LAYER_NORM, self._layer_norm),
                               (_MATMUL, self._matmul), (_ATTENTION, self._attention),
                               (("softmax",), self._softmax)):
            if name in group:
                return handler
        return None

    @property
    def eps(self) -> float:
        """The stabilizer of parameter-free and normalizing maps: ``epsilon`` under the epsilon
        rule, a guard against 0/0 otherwise."""
        rule, epsilon = self.params[:2]
        return epsilon if rule == "epsilon" else _TINY

    @staticmethod
    def _out_of_place(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                      pos: int | None) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """The out-of-place form of an in-place call: computed so, ``out += x`` rebinds ``out``."""
        if kwargs.get("inplace"):
            return func, args, {**kwargs, "inplace": False}
        if pos is not None and len(args) > pos and args[pos] is True:
            return func, (*args[:pos], False, *args[pos + 1:]), kwargs
        raw = func.__name__
        base = "__" + raw[3:] if raw.startswith("__i") else raw[:-1]
        owner = torch.Tensor if "Tensor" in getattr(func, "__qualname__", "") else \
            sys.modules.get(getattr(func, "__module__", None) or "torch", torch)
        return getattr(owner, base, None) or getattr(torch, base), args, kwargs

    def _check_stale(self, tensors: list[Tensor]) -> None:
        for t in tensors:
            if id(t) in self.stale and self.stale[id(t)][0] is t:
                _, op, where = self.stale[id(t)]
                raise LayerError(
                    f"lrp computes in-place operations out of place, but a tensor changed in place "
                    f"by {op} in {where} is used again in {self.where()}; write `x = x.{op}(...)` "
                    "or `x += y`, keeping the result")

    def _mark(self, out: Any, deps: list[Tensor]) -> None:
        """Record every autograd node the op made, from its outputs back to its inputs."""
        stop = {t.grad_fn for t in deps}
        todo = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or node in stop or node in self.seen:
                continue
            self.seen.add(node)
            todo += [n for n, _ in node.next_functions]

    def _only(self, deps: list[Tensor], x: Any, what: str) -> Tensor:
        if len(deps) != 1 or deps[0] is not x:
            raise self.refuse(what)
        return x

    # -- handlers: (func, name, args, kwargs, deps) -> output --------------------------------------
    def _affine(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:
        if name == "linear":
            p = _bind(("input", "weight", "bias"), args, kwargs, {"bias": None})
        elif name.startswith("conv_transpose"):
            p = _bind(("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
                      args, kwargs, {"bias": None, "stride": 1, "padding": 0, "output_padding": 0, "groups": 1,
                                     "dilation": 1})
        else:
            p = _bind(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args,
                      kwargs, {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
        x = self._only(deps, p["input"], f"computes a {name} whose weights depend on the input")
        w, b = p["weight"].detach(), None if p["bias"] is None else p["bias"].detach()
        bounds = self.bounds.get(x.grad_fn)
        if bounds is None and self.affine_calls == 0:
            bounds = _own_bounds(x)  # the first layer, after ops the pixel bounds cannot follow
        self.affine_calls += 1
        layer = _Layer(x, _affine_map(name, p), w, b, name == "linear", bounds,
                       p["groups"] if name.startswith("conv_transpose") else 0)
        with torch.no_grad():
            out = func(*args, **kwargs)
        new = _Relevance.wrap(x, out, layer.rule(*self.params))
        self.layers[new.grad_fn] = layer
        return new

    def _norm(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],  # noqa: ARG002
              kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:
        p = _bind(("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
                   "eps"), args, kwargs, {"weight": None, "bias": None, "training": False, "eps": 1e-5})
        x = self._only(deps, p["input"], "normalizes with statistics that depend on the input")
        if p["training"] or p["running_mean"] is None:
            raise self.refuse("is a BatchNorm in training mode or without running statistics")
        node = x.grad_fn  # skipping clones made by hooks that record the layer (``capture``)
        while node not in self.layers and type(node).__name__.startswith("CloneBackward"):
            node = node.next_functions[0][0]
        layer = self.layers.get(node)
        mean, var = p["running_mean"].detach(), p["running_var"].detach()
        if layer is None or layer.out_channels != mean.numel() or (layer.dense and layer.x.dim() != 2):
            raise self.refuse("is a BatchNorm that does not directly follow a convolution or Linear "
                              "(it is folded into the layer whose output it normalizes)")
        gamma, beta = (None if p[k] is None else p[k].detach() for k in ("weight", "bias"))
        w, b = layer.fold(mean, var, p["eps"], gamma, beta)
        with torch.no_grad():
            out = func(*args, **kwargs)
        # canonization: layer + BN act as one layer, from the layer's input to the BN's output
        new = _Relevance.wrap(layer.x, out, layer.rule(*self.params, folded=(w, b)))
        self.folded[node] = new
        return new

    def _sum(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],  # noqa: ARG002
             kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:  # noqa: ARG002
        if "out" in kwargs or len(args) > 2:
            raise self.refuse(f"calls {name} with arguments lrp does not handle")
        a, b = args[0], args[1] if len(args) > 1 else kwargs["other"]
        alpha = kwargs.get("alpha", 1)
        parts = {"add": ((1, a), (alpha, b)), "sub": ((1, a), (-alpha, b)),
                 "rsub": ((-alpha, a), (1, b))}[name]
        const: Tensor | float = 0.0
        coefs, terms = [], []
        for c, t in parts:
            if isinstance(t, Tensor) and t.requires_grad:
                coefs.append(c)
                terms.append(t)
            else:  # a constant, like a bias: it keeps its share of the relevance
                const = const + (t if c == 1 else c * t)
        return _Sum.apply(const, tuple(coefs), self.eps, *terms)

    def _linear_op(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:
        if len(deps) != 1:
            raise self.refuse(f"computes {name} of several activations")
        x = deps[0]

        def fn(t: Tensor) -> Tensor:
            a, k = _substitute(args, kwargs, x, t)
            return func(*a, **k)
        with torch.no_grad():
            out = fn(x)
        return _Relevance.wrap(x, out, linear_op_rule(fn, self.eps))

    def _pass(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
              kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:
        if name == "mul" and len(deps) > 1:
            return self._product(func, name, args, kwargs, deps)
        if name == "div" and len(deps) > 1:
            raise self.refuse("divides an activation by another, which no LRP rule here handles")
        if name == "div" and deps[0] is not args[0]:
            raise self.refuse("divides by an activation, which no LRP rule here handles")
        with torch.no_grad():
            out = func(*args, **kwargs)
        return _Relevance.wrap(deps[0], out, pass_rule)

    def _product(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:
        """A product of two activations: the uniform rule."""
        if len(args) != 2 or kwargs or len(deps) != 2:
            raise self.refuse(f"calls {name} with arguments lrp does not handle")
        a, b = args
        if a is b:  # x * x: both factors are the same tensor
            b = a.view_as(a)
        return _Product.apply(func, self.eps, a, b)

    def _matmul(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:
        if len(deps) == 1:  # one factor is a constant (or CP-LRP's attention): a linear map
            return self._linear_op(func, name, args, kwargs, deps)
        return self._product(func, name, args, kwargs, deps)

    def _layer_norm(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:
        centered = name == "layer_norm"
        names = ("input", "normalized_shape", "weight", "bias", "eps") if centered else \
            ("input", "normalized_shape", "weight", "eps")
        p = _bind(names, args, kwargs, {"weight": None, "bias": None, "eps": 1e-5 if centered else None})
        x = self._only(deps, p["input"], f"computes a {name} whose parameters depend on the input")
        shape = p["normalized_shape"]
        dims = tuple(range(-(1 if isinstance(shape, int) else len(shape)), 0))
        with torch.no_grad():
            out = func(*args, **kwargs)
            xd = x.detach()
            eps = p["eps"] if p["eps"] is not None else torch.finfo(xd.dtype).eps
            var = xd.var(dims, unbiased=False, keepdim=True) if centered else xd.pow(2).mean(dims, keepdim=True)
            inv = (var + eps).rsqrt()
        weight = None if p["weight"] is None else p["weight"].detach()
        return _Relevance.wrap(x, out, norm_rule(inv, weight, dims, centered, self.eps))

    def _softmax(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], deps: list[Tensor]) -> Tensor:
        p = _bind(("input", "dim"), args, kwargs, {"dim": None})
        x = self._only(deps, p["input"], "computes a softmax of several activations")
        if p["dim"] is None:
            raise self.refuse("computes a softmax without a dim")
        with torch.no_grad():
            out = func(*args, **kwargs)
        if self.attention == "cp":  # CP-LRP: the attention is a constant, no relevance reaches q, k
            return out
        return _Relevance.wrap(x, out, softmax_rule(p["dim"]))

    def _attention(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], deps: list[Tensor]) -> Any:  # noqa: ARG002
        """Attention, decomposed into products, a softmax and projections, through this mode."""
        if name == "multi_head_attention_forward":
            p = _bind(_MHA_ARGS, args, kwargs, _MHA_DEFAULTS)
            q = p["query"]
            plain = q is p["key"] is p["value"] and q.dim() == 3 and not p["add_zero_attn"] and \
                not p["use_separate_proj_weight"] and not p["is_causal"] and \
                not (p["training"] and p["dropout_p"]) and \
                all(p[k] is None for k in ("bias_k", "bias_v", "key_padding_mask", "attn_mask", "static_k", "static_v"))
            if not plain:
                raise self.refuse("computes a multi-head attention other than unmasked self-attention with "
                                  "packed projections, which lrp does not decompose")
            with self:
                y, attn = self_attention(q.transpose(0, 1), p["num_heads"], p["in_proj_weight"],
                                         p["in_proj_bias"], p["out_proj_weight"], p["out_proj_bias"])
                y = y.transpose(0, 1)
            weights = (attn.mean(1) if p["average_attn_weights"] else attn).detach() if p["need_weights"] else None
            return y, weights
        p = _bind(("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"),
                  args, kwargs, {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                                 "enable_gqa": False})
        if p["dropout_p"] or p["enable_gqa"]:
            raise self.refuse("computes attention with dropout or grouped queries, which lrp does not decompose")
        q, k, v, mask = p["query"], p["key"], p["value"], p["attn_mask"]
        if p["is_causal"]:
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        with self:
            a = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if p["scale"] is None else p["scale"])
            if mask is not None:
                a = a.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else a + mask
            return a.softmax(-1) @ v

    def _plain(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],  # noqa: ARG002
               kwargs: dict[str, Any], deps: list[Tensor]) -> Any:  # noqa: ARG002
        return func(*args, **kwargs)

    def _route(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any], deps: list[Tensor]) -> Any:
        out = func(*args, **kwargs)
        bounds = self.bounds.get(deps[0].grad_fn) if len(deps) == 1 else None
        if bounds is not None and isinstance(out, Tensor) and out.grad_fn not in self.bounds:
            with torch.no_grad():
                low, high = (func(*a, **k) for a, k in
                             (_substitute(args, kwargs, deps[0], bd) for bd in bounds))
            self.bounds[out.grad_fn] = (low, high)
        return out

    # -- after the forward ------------------------------------------------------------------------
    def check_output(self, out: object) -> Tensor:
        """The logits, once every node between them and the input is known to be handled."""
        if not isinstance(out, Tensor):
            raise LayerError(f"lrp needs a model that returns a tensor, not {type(out).__name__} (a segmentation "
                             "model's dict or .logits is read with a targets.Segment target)")
        if out.grad_fn is None:
            raise LayerError("lrp: the model's output does not depend on its input")
        self.running.clear()
        self._check_stale([out])
        todo, visited = [out.grad_fn], set()
        while todo:
            node = todo.pop()
            if node is None or node in visited:
                continue
            visited.add(node)
            if node is self.input_node:
                continue
            if node not in self.seen:
                if type(node).__name__ == "AccumulateGrad":
                    continue
                raise LayerError(
                    f"lrp cannot propagate relevance through {type(node).__name__}: it was computed "
                    "outside the torch functions lrp sees (a custom autograd Function, a scripted "
                    "module?)")
            todo += [n for n, _ in node.next_functions]
        return out


# -- the technique ---------------------------------------------------------------------------
@technique("lrp", output="input", layer="optional", signed=True,
           choices={"rule": RULES, "attention": ATTENTION_RULES},
           title="Layer-wise Relevance Propagation", kind="signed", needs=("passes",),
           tasks=("classification", "multilabel", "segmentation", "image-text"),
           paper="Bach et al. 2015, https://doi.org/10.1371/journal.pone.0130140; "
                 "Montavon et al. 2019, https://doi.org/10.1007/978-3-030-28954-6_10; "
                 "Achtibat et al. 2024 (AttnLRP), https://arxiv.org/abs/2402.05602",
           summary="Layer-wise relevance propagation: the target logit redistributed layer by "
                   "layer down to the pixels (or to a layer) by per-layer rules.")
def lrp(ctx: Context, *, layer: str | None = None, rule: str = "composite", epsilon: float = 0.25,
        gamma: float = 0.25, alpha: float = 1.0, attention: str = "attnlrp") -> Tensor:
    """Relevance of the target logit (for ``targets.Segment``, each pixel of the region starts
    with its own class logit), raw and signed: (N, C, H, W) at the input, or with
    ``layer`` the relevance at that module's output summed over channels, (N, 1, h, w) on the
    layer's grid (tokens and channels-last outputs as CAMs read them).

    ``rule``: ``epsilon`` / ``gamma`` / ``alpha_beta`` / ``zplus`` for every convolution and
    Linear, or ``composite`` (z^B box rule at the first layer with the pixel bounds black and
    white in the model's normalization, ``ctx.mean`` / ``ctx.std``,
    gamma for the other convolutions, epsilon for Linear layers). ``epsilon`` is absolute, in
    the units of the layer's pre-activations, and also stabilizes additions, average pooling,
    normalizations and products under ``rule="epsilon"``; ``alpha`` >= 1, beta = alpha - 1.
    ``attention``: ``attnlrp`` (softmax and uniform rules inside attention, Achtibat et al.
    2024) or ``cp`` (attention weights held constant, Ali et al. 2022).
    """
    x, out, at = traced(ctx, layer, rule=rule, epsilon=epsilon, gamma=gamma, alpha=alpha, attention=attention)
    r0 = ctx.target.relevance(out)  # the target logit alone for a class
    if at is None:
        (rel,) = torch.autograd.grad(out, x, r0)
        return rel.detach()
    (rel,) = torch.autograd.grad(out, at, r0, allow_unused=True)
    if rel is None:
        raise LayerError(f"layer {layer!r} carries no relevance to the output")
    return ctx.grid(layer).nchw(rel.detach()).sum(1, keepdim=True)


def traced(ctx: Context, layer: str | None = None, *, rule: str = "composite", epsilon: float = 0.25,
           gamma: float = 0.25, alpha: float = 1.0, attention: str = "attnlrp") -> tuple[Tensor, Tensor, Tensor | None]:
    """One LRP forward of ``ctx``'s images with :func:`lrp`'s parameters: ``(x, out, at)``, the
    input (a leaf), the model's output (a segmentation target's: its scores per class and pixel,
    read from a dict's ``"out"`` or an object's ``.logits`` as :func:`galleryvis.tasks.spatial_logits`
    does) and, with ``layer``, the tensor whose gradient is the
    relevance at that layer's output (None without). Relevance flows as the gradient of ``out``
    with ``ctx.target.relevance(out)``; the graph may be walked several times
    (``retain_graph=True``). Hooks and the mode are gone when it returns."""
    if epsilon < 0 or gamma < 0 or alpha < 1:
        raise ValueError(f"lrp: epsilon and gamma must be >= 0 and alpha >= 1 (beta = alpha - 1), "
                         f"got epsilon={epsilon}, gamma={gamma}, alpha={alpha}")
    model = ctx.model
    with ExitStack() as stack, torch.enable_grad():
        x = ctx.x.detach().requires_grad_(True)
        x0 = x.view_as(x)  # a node of its own: where the graph check stops
        pixel_range = (ctx.pixel_value(0.0), ctx.pixel_value(1.0)) if len(ctx.mean) == x.shape[1] else None
        tracer = _Tracer(model, x0, rule, epsilon, gamma, alpha, pixel_range, attention)
        stack.enter_context(tracer.tracking())
        acts = stack.enter_context(capture(model, [layer] if layer else []))
        with tracer:
            out = model(x0)
        if ctx.target.task == "segmentation":  # a dict's "out", an object's .logits
            out = spatial_logits(out)
        out = tracer.check_output(out)
    if layer is None:
        return x, out, None
    if layer not in acts:
        raise LayerError(f"layer {layer!r} is not called in the model's forward")
    # a layer folded with its BatchNorm has no relevance of its own: the pair's output has it
    return x, out, tracer.folded.get(acts[layer].grad_fn, acts[layer])
