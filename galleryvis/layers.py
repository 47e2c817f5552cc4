"""Finding layers: the default CAM layer by a probe forward, and every layer's output shape."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .hooks import LayerError, prepared

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)


def probe(model: nn.Module, x: Tensor) -> list[tuple[str, tuple[int, ...] | None, Tensor | None]]:
    """Run one forward on ``x`` and list ``(name, output shape, output)`` in completion order.

    A module called several times appears once, with its last call's output.
    """
    seen: dict[str, tuple[tuple[int, ...] | None, Tensor | None]] = {}
    handles = []
    try:
        for name, m in model.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                t = out if isinstance(out, Tensor) else None
                seen.pop(name, None)
                seen[name] = (tuple(t.shape) if t is not None else None, t)

            handles.append(m.register_forward_hook(hook))
        with prepared(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [(name, shape, t) for name, (shape, t) in seen.items()]


def default_layer(model: nn.Module, x: Tensor) -> str:
    """The model's last convolutional block, as torch-cam locates it.

    The last leaf module (pooling and dropout excepted) whose output is 4-D with more than one
    spatial position; if enclosing modules return that very tensor (``layer4`` around its last
    ReLU), the outermost of them is named instead.
    """
    records = probe(model, x)
    modules = dict(model.named_modules())
    leaf = None
    for name, shape, t in reversed(records):
        m = modules[name]
        if next(m.children(), None) is None and not isinstance(m, _POOLS) \
                and shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1:
            leaf = (name, t)
            break
    if leaf is None:
        raise LayerError("no layer with a 4-D output of more than 1x1 found; name a layer explicitly")
    name, tensor = leaf
    outputs = {n: t for n, _, t in records}
    parts = name.split(".")
    best = name
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if outputs.get(parent) is tensor:
            best = parent
        else:
            break
    return best
