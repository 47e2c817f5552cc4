"""Module hooks: every ``register_forward_hook`` / ``register_forward_pre_hook`` of galleryvis is
made by :func:`forward_hooks` and removed when its block ends, also after an exception."""
from __future__ import annotations

from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from galleryvis.errors import LayerError
from galleryvis.registry import suggest


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``, with suggestions if absent."""
    modules = dict(model.named_modules())
    if not isinstance(name, str) or name not in modules or name == "":
        options = [n for n in modules if n]
        raise LayerError(f"unknown layer {name!r}{suggest(str(name), options)}")
    return modules[name]


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable[..., Any]]], *, pre: bool = False,
                  prepend: bool = False, with_kwargs: bool = False) -> Iterator[None]:
    """While inside, each ``(module, hook)`` pair is a forward hook of its module (a forward
    pre-hook with ``pre``); torch's ``prepend`` and ``with_kwargs`` as given. Every hook is
    removed on exit, also after an exception."""
    with ExitStack() as stack:
        for module, hook in hooks:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            stack.callback(register(hook, prepend=prepend, with_kwargs=with_kwargs).remove)
        yield


class Captured(dict):
    """:func:`capture`'s ``{name: tensor}``, and in :attr:`levels` the (C, H, W) of each map of a
    layer that returned a dict of maps (an FPN), by name."""

    def __init__(self) -> None:
        super().__init__()
        self.levels: dict[str, tuple[tuple[int, ...], ...]] = {}


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[Captured]:
    """Record the output of each named module on every forward (the last call wins).

    The module's output is replaced by a clone, so in-place operations that follow it in the
    forward pass (``out += identity``) cannot change the recorded tensor. Under grad mode, an
    output that does not require grad (input and parameters frozen) becomes a leaf that does:
    the backward then reaches every captured layer and stops at the first of them. A layer
    returning a dict of (N, C, H, W) maps (an FPN's levels) is recorded as its maps flattened
    and concatenated, (N, total), and returns the same dict made of that tensor's parts (so
    gradients reach the recorded tensor); their shapes go to :attr:`Captured.levels`.
    """
    store = Captured()

    def hook_of(name: str) -> Callable[[nn.Module, object, object], object]:
        def hook(_m: nn.Module, _inp: object, out: object) -> object:
            maps = _maps(out)
            if maps is not None:
                store.levels[name] = tuple(tuple(v.shape[1:]) for v in maps.values())
                out = torch.cat([v.flatten(1) for v in maps.values()], 1)
            elif not isinstance(out, Tensor):
                raise LayerError(f"layer {name!r} returns {type(out).__name__}, not a tensor or a dict of "
                                 f"(N, C, H, W) maps")
            if torch.is_grad_enabled() and out.is_floating_point() and not out.requires_grad:
                out = out.detach().requires_grad_(True)
            store[name] = out
            if maps is None:
                return out.clone()
            parts = out.clone().split([v[0].numel() for v in maps.values()], 1)
            return type(maps)((k, p.reshape(v.shape)) for (k, v), p in zip(maps.items(), parts))
        return hook

    unique = list(dict.fromkeys(names))
    with forward_hooks([(resolve_layer(model, name), hook_of(name)) for name in unique]):
        yield store


def _maps(out: object) -> Mapping[Any, Tensor] | None:
    """``out`` if it is a non-empty plain ``dict`` or ``OrderedDict`` (what torchvision's FPN and
    ``IntermediateLayerGetter`` return) of floating (N, C, H, W) tensors of one batch size, else
    None: a model's output record (Hugging Face's ``ModelOutput``, whose pooled output is a map
    too) is no set of levels."""
    if type(out) not in (dict, OrderedDict) or not out:
        return None
    values = list(out.values())
    if all(isinstance(v, Tensor) and v.dim() == 4 and v.is_floating_point() and len(v) == len(values[0])
           for v in values):
        return out
    return None


@contextmanager
def replaced_output(model: nn.Module, name: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While inside, layer ``name`` outputs ``fn(its output)`` (Ablation-CAM zeroes a channel,
    a perturbation test adds noise); the hook is removed on exit, also after an exception."""
    module = resolve_layer(model, name)

    def hook(_m: nn.Module, _inp: object, out: object) -> Tensor:
        if not isinstance(out, Tensor):
            raise LayerError(f"layer {name!r} returns {type(out).__name__}, not a tensor")
        return fn(out)

    with forward_hooks([(module, hook)]):
        yield


@contextmanager
def recorded(model: nn.Module) -> Iterator[Captured]:
    """While inside, every named submodule's output of each forward goes into the yielded
    ``{name: tensor or None}``, in completion order (a module called again moves to the end
    with its last output); a dict of maps is None there, its maps' shapes in ``levels``."""
    seen = Captured()

    def hook_of(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            seen.pop(name, None)
            seen[name] = out if isinstance(out, Tensor) else None
            maps = _maps(out)
            if maps is not None:
                seen.levels[name] = tuple(tuple(v.shape[1:]) for v in maps.values())
        return hook

    with forward_hooks([(m, hook_of(name)) for name, m in model.named_modules() if name]):
        yield seen


@contextmanager
def conv_sizes(model: nn.Module) -> Iterator[set[tuple[int, int]]]:
    """While inside, collect the spatial size of every ``nn.Conv2d`` output of each forward."""
    sizes: set[tuple[int, int]] = set()

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, Tensor) and out.dim() == 4:
            sizes.add((int(out.shape[2]), int(out.shape[3])))

    with forward_hooks([(m, hook) for m in model.modules() if isinstance(m, nn.Conv2d)]):
        yield sizes


@contextmanager
def first_calls(model: nn.Module) -> Iterator[dict[int, int]]:
    """While inside, the yielded ``{id(module): rank}`` gets each module of ``model`` (itself
    included) the first time its forward starts, ranked 0, 1, ... in that order."""
    first: dict[int, int] = {}

    def pre(mod: nn.Module, _inp: object) -> None:
        first.setdefault(id(mod), len(first))

    with forward_hooks([(m, pre) for m in model.modules()], pre=True):
        yield first


@contextmanager
def running(model: nn.Module) -> Iterator[list[nn.Module]]:
    """While inside, the yielded list holds the modules of ``model`` whose forward is running,
    innermost last (which module's code a traced operation comes from)."""
    stack: list[nn.Module] = []

    def enter(m: nn.Module, _inp: object) -> None:
        stack.append(m)

    def leave(m: nn.Module, _inp: object, _out: object) -> None:
        if stack and stack[-1] is m:
            stack.pop()

    modules = list(model.modules())
    with forward_hooks([(m, enter) for m in modules], pre=True), forward_hooks([(m, leave) for m in modules]):
        yield stack


@contextmanager
def counting(models: Iterable[nn.Module], count: Callable[[int], None]) -> Iterator[None]:
    """Call ``count(batch size)`` on every forward of each model while the block runs (copies
    made inside it, such as the sanity check's, count too); the hooks go on exit."""
    def pre(_module: nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        count(int(first.shape[0]) if isinstance(first, Tensor) and first.dim() else 1)

    with forward_hooks([(model, pre) for model in models], pre=True):
        yield


def hook_count(model: nn.Module) -> int:
    """How many module hooks are registered anywhere in ``model`` (0 after every galleryvis call)."""
    attrs = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_state_dict_hooks", "_load_state_dict_pre_hooks")
    return sum(len(getattr(m, a, {}) or {}) for m in model.modules() for a in attrs)
