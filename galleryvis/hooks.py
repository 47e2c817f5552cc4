"""Every temporary change to a model lives here, each in a try/finally context manager."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .errors import LayerError
from .registry import suggest

#: Activation modules that guided backprop and deconvnet guide. Functional activations
#: (``F.relu`` called inside ``forward``) are invisible to module hooks and cannot be guided.
RELU_FAMILY: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.Hardtanh, nn.RReLU)


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``, with suggestions if absent."""
    modules = dict(model.named_modules())
    if not isinstance(name, str) or name not in modules or name == "":
        options = [n for n in modules if n]
        raise LayerError(f"unknown layer {name!r}{suggest(str(name), options)}")
    return modules[name]


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
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the output of each named module on every forward (the last call wins).

    The module's output is replaced by a clone, so in-place operations that follow it in the
    forward pass (``out += identity``) cannot change the recorded tensor. Under grad mode, an
    output that does not require grad (input and parameters frozen) becomes a leaf that does:
    the backward then reaches every captured layer and stops at the first of them.
    """
    store: dict[str, Tensor] = {}
    with ExitStack() as stack:
        for name in dict.fromkeys(names):
            module = resolve_layer(model, name)

            def hook(_m: nn.Module, _inp: object, out: object, name: str = name) -> Tensor:
                if not isinstance(out, Tensor):
                    raise LayerError(f"layer {name!r} returns {type(out).__name__}, not a tensor")
                if torch.is_grad_enabled() and out.is_floating_point() and not out.requires_grad:
                    out = out.detach().requires_grad_(True)
                store[name] = out
                return out.clone()

            stack.callback(module.register_forward_hook(hook).remove)
        yield store


@contextmanager
def replaced_output(model: nn.Module, name: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While inside, layer ``name`` outputs ``fn(its output)`` (Ablation-CAM zeroes a channel,
    a perturbation test adds noise); the hook is removed on exit, also after an exception."""
    module = resolve_layer(model, name)

    def hook(_m: nn.Module, _inp: object, out: object) -> Tensor:
        if not isinstance(out, Tensor):
            raise LayerError(f"layer {name!r} returns {type(out).__name__}, not a tensor")
        return fn(out)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def output_rule(model: nn.Module, types: tuple[type[nn.Module], ...],
                rule: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> Iterator[None]:
    """While inside, every module of one of ``types`` outputs ``rule(module, input, output)``
    (DeepLIFT's multipliers, :mod:`galleryvis.attribution.shapley`); hooks removed on exit."""

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        return rule(m, inputs[0], out)

    with ExitStack() as stack:
        for m in model.modules():
            if isinstance(m, types):
                stack.callback(m.register_forward_hook(hook).remove)
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

    with ExitStack() as stack:
        for m in model.modules():
            if isinstance(m, RELU_FAMILY):
                stack.callback(m.register_forward_hook(hook).remove)
        yield


@contextmanager
def counting(models: Iterable[nn.Module], count: Callable[[int], None]) -> Iterator[None]:
    """Call ``count(batch size)`` on every forward of each model while the block runs (copies
    made inside it, such as the sanity check's, count too); the hooks go on exit."""
    def pre(_module: nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        count(int(first.shape[0]) if isinstance(first, Tensor) and first.dim() else 1)

    with ExitStack() as stack:
        for model in models:
            stack.callback(model.register_forward_pre_hook(pre).remove)
        yield


def hook_count(model: nn.Module) -> int:
    """How many module hooks are registered anywhere in ``model`` (0 after every galleryvis call)."""
    attrs = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_state_dict_hooks", "_load_state_dict_pre_hooks")
    return sum(len(getattr(m, a, {}) or {}) for m in model.modules() for a in attrs)


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
