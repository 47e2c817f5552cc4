"""Backward rules through module hooks: guided backprop and deconvnet (:func:`guided`), DeepLIFT's
multipliers (:func:`output_rule`) and lucid's redirected ReLU (:func:`redirected_relus`). LRP's
rules are decided per operation by a torch function mode (:mod:`galleryvis.attribution.lrp`),
which changes no module; the module stack it reads comes from :func:`~galleryvis.engine.changes.forward_hooks.running`."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from galleryvis.errors import LayerError
from galleryvis.engine.changes.forward_hooks import forward_hooks

#: Activation modules that guided backprop and deconvnet guide. Functional activations
#: (``F.relu`` called inside ``forward``) are invisible to module hooks and cannot be guided.
RELU_FAMILY: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.Hardtanh, nn.RReLU)

#: Activations whose gradient vanishes outside (0, upper): the ones :func:`redirected_relus` treats.
_REDIRECTED: dict[type[nn.Module], float | None] = {nn.ReLU: None, nn.ReLU6: 6.0}


@contextmanager
def output_rule(model: nn.Module, types: tuple[type[nn.Module], ...],
                rule: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> Iterator[None]:
    """While inside, every module of one of ``types`` outputs ``rule(module, input, output)``
    (DeepLIFT's multipliers, :mod:`galleryvis.attribution.shapley`); hooks removed on exit."""

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        return rule(m, inputs[0], out)

    with forward_hooks([(m, hook) for m in model.modules() if isinstance(m, types)]):
        yield


class _Deconv(torch.autograd.Function):
    """Forward: the activation's output. Backward: the incoming gradient clamped at 0,
    passed straight to the activation's input (the deconvnet rule, Zeiler & Fergus)."""

    @staticmethod
    def forward(ctx: object, inp: Tensor, out: Tensor) -> Tensor:  # noqa: ARG004
        return out.clone()

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None]:
        return grad.clamp(min=0), None


@contextmanager
def guided(model: nn.Module, mode: str) -> Iterator[None]:
    """Change the backward pass of every ReLU-family module for ``mode``.

    ``"guided"``: the activation's own derivative times the positive part of the incoming
    gradient (Springenberg et al.). ``"deconv"``: the positive part only. ``"plain"``: nothing.
    A model without any ReLU-family module (GELU or SiLU transformers, ConvNeXt, EfficientNet)
    raises: there would be nothing to guide, and the result would be the plain gradient.
    """
    if mode == "plain":
        yield
        return
    if mode not in ("guided", "deconv"):
        raise ValueError(f"unknown backward mode {mode!r}")
    if not any(isinstance(m, RELU_FAMILY) for m in model.modules()):
        raise LayerError(f"{'guided backprop' if mode == 'guided' else 'deconvnet'} guides ReLU-family activations "
                         f"(ReLU, ReLU6, LeakyReLU, ...) and this model has none (GELU / SiLU?): the result would be "
                         f"the plain gradient; use vanilla instead")

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
        if not out.requires_grad:
            return None
        if mode == "deconv":
            return _Deconv.apply(inputs[0], out)
        out = out.clone()
        out.register_hook(lambda g: g.clamp(min=0))
        return out

    with forward_hooks([(m, hook) for m in model.modules() if isinstance(m, RELU_FAMILY)]):
        yield


class _Redirect(torch.autograd.Function):
    """Forward: the activation's output. Backward: the ReLU's gradient for each item, unless that
    is zero everywhere for the item; then also the gradient at inactive inputs that would move
    them towards the active range (lucid's "redirected ReLU"). ``g`` is the gradient of the
    loss being minimized, so at x <= 0 the helpful gradients are the negative ones."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor, upper: float | None) -> Tensor:
        ctx.save_for_backward(inp)
        ctx.upper = upper
        return out.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        upper = ctx.upper
        if upper is None:  # the activations' own backward kernels: g where 0 < x (< upper)
            normal = torch.ops.aten.threshold_backward(g, x, 0.0)
        else:
            normal = torch.ops.aten.hardtanh_backward(g, x, 0.0, upper)
        dead = ~normal.flatten(1).any(1)
        if bool(dead.any()):
            active = (x > 0) if upper is None else (x > 0) & (x < upper)
            move = active | ((x <= 0) & (g < 0))
            if upper is not None:
                move |= (x >= upper) & (g > 0)
            redirected = g * move
            normal = torch.where(dead.view(-1, *([1] * (g.dim() - 1))), redirected, normal)
        return normal, None, None


@contextmanager
def redirected_relus(model: nn.Module) -> Iterator[None]:
    """Redirect the gradient of every ``nn.ReLU``/``nn.ReLU6`` (see :class:`_Redirect`), so that a
    unit that is inactive on the whole start image can still be optimized. The hooks run before
    any other forward hook of the module (a :class:`~galleryvis.synthesis.objectives.LayerTap` on it then reads the redirected
    output) and are removed on exit. Functional ``F.relu`` calls are not affected."""

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
        if not (isinstance(out, Tensor) and out.requires_grad and inputs and isinstance(inputs[0], Tensor)
                and inputs[0].requires_grad and out.shape == inputs[0].shape):
            return None
        return _Redirect.apply(inputs[0], out, _REDIRECTED[type(m)])

    with forward_hooks([(m, hook) for m in model.modules() if type(m) in _REDIRECTED], prepend=True):
        yield
