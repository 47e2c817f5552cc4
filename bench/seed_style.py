"""The seed collection's way of computing maps, as the reference loop the speedups are taken against.

What makes it the seed's approach (docs: ``/work/shared/seed/KNOWN_ISSUES.md`` #4, #6, #8):
one image and one sample at a time; the parameters keep ``requires_grad=True`` and every
pass calls ``.backward()``, so all weight gradients are computed too; IG-N and SmoothGrad-N
are N separate passes; each technique of a combination runs its own forward/backward;
Score-CAM runs one masked forward per channel with autograd on; LRP deep-copies every layer
per call and back-propagates through each copy. The maps themselves follow the papers (×
input for IG, sums from zero for CAMs), because only the cost is compared here.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis.hooks import resolve_layer

from .common import Skip, is_sequential


def _one_pass(model: nn.Module, x1: Tensor, target: int, layer: str | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One forward and ``.backward()`` of one image (1,3,H,W) with parameter gradients.

    Returns (input gradient, layer activation, layer gradient)."""
    saved: dict[str, Tensor] = {}
    handle = None
    if layer is not None:
        def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
            saved["a"] = out
            out.register_hook(lambda g: saved.__setitem__("g", g))
        handle = resolve_layer(model, layer).register_forward_hook(hook)
    try:
        model.zero_grad()
        x = x1.detach().clone().requires_grad_(True)
        out = model(x)
        one_hot = torch.zeros_like(out)
        one_hot[0, target] = 1
        out.backward(gradient=one_hot)
    finally:
        if handle is not None:
            handle.remove()
    a = saved.get("a")
    return x.grad, (None if a is None else a.detach()), saved.get("g")


def vanilla(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    return torch.cat([_one_pass(model, xi[None], t)[0] for xi, t in zip(x, targets)])


def grad_x_image(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    return vanilla(model, x, targets) * x


def _cam(model: nn.Module, x: Tensor, targets: list[int], layer: str, layercam: bool) -> Tensor:
    out = []
    for xi, t in zip(x, targets):
        _, a, g = _one_pass(model, xi[None], t, layer)
        assert a is not None and g is not None
        cam = (F.relu(g) * a).sum(1, keepdim=True) if layercam else (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
        out.append(F.interpolate(F.relu(cam), size=x.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(out)


def gradcam(model: nn.Module, x: Tensor, targets: list[int], layer: str) -> Tensor:
    return _cam(model, x, targets, layer, layercam=False)


def layercam(model: nn.Module, x: Tensor, targets: list[int], layer: str) -> Tensor:
    return _cam(model, x, targets, layer, layercam=True)


def combination(model: nn.Module, x: Tensor, targets: list[int], layer: str) -> dict[str, Tensor]:
    """vanilla, grad x image, Grad-CAM, LayerCAM: four separate backward passes per image."""
    return {"vanilla": vanilla(model, x, targets), "grad_x_image": grad_x_image(model, x, targets),
            "gradcam": gradcam(model, x, targets, layer), "layercam": layercam(model, x, targets, layer)}


def integrated_gradients(model: nn.Module, x: Tensor, targets: list[int], steps: int) -> Tensor:
    """Zero baseline, Gauss-Legendre nodes (as the other implementations): ``steps`` passes per image."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2
    out = []
    for xi, t in zip(x, targets):
        total = torch.zeros_like(xi)
        for a, w in zip(alphas, weights):
            total += float(w) * _one_pass(model, float(a) * xi[None], t)[0][0]
        out.append(total * xi)
    return torch.stack(out)


def smoothgrad(model: nn.Module, x: Tensor, targets: list[int], samples: int, sigma: float) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    out = []
    for xi, t in zip(x, targets):
        std = sigma * float(xi.max() - xi.min())
        total = torch.zeros_like(xi)
        for _ in range(samples):
            noise = torch.randn(xi.shape, generator=gen).to(xi.device) * std
            total += _one_pass(model, (xi + noise)[None], t)[0][0]
        out.append(total / samples)
    return torch.stack(out)


def scorecam(model: nn.Module, x: Tensor, targets: list[int], layer: str) -> Tensor:
    """One masked forward per channel, batch 1, autograd left on (as the seed)."""
    out = []
    for xi, t in zip(x, targets):
        saved: dict[str, Tensor] = {}
        h = resolve_layer(model, layer).register_forward_hook(lambda _m, _i, o: saved.__setitem__("a", o))
        try:
            model(xi[None])
        finally:
            h.remove()
        acts = saved["a"][0]
        cam = torch.zeros(acts.shape[1:], device=x.device)
        for k in range(acts.shape[0]):
            up = F.interpolate(acts[k][None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            w = F.softmax(model(xi[None] * mask), dim=1)[0, t]
            cam += (w * acts[k]).detach()
        out.append(F.interpolate(F.relu(cam)[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(out)


def lrp_epsilon(model: nn.Module, x: Tensor, targets: list[int], eps: float = 1e-9) -> Tensor:
    """The seed's layer loop (Montavon et al.'s tutorial recipe): forward layer by layer, then
    for each conv/linear/pool layer a deep copy, ``z = eps + copy(a)``, ``(z * (R / z)).sum().backward()``
    and ``R = a * a.grad``. Sequential conv nets only; relevance is carried down to the pixels."""
    if not is_sequential(model):
        raise Skip("seed-style LRP walks features/avgpool/classifier (VGG, AlexNet) only")
    layers: list[nn.Module] = [*model.features, model.avgpool, nn.Flatten(), *model.classifier]  # type: ignore[misc]
    out = []
    for xi, t in zip(x, targets):
        acts = [xi[None]]
        with torch.no_grad():
            for layer in layers:
                if getattr(layer, "inplace", False):
                    acts.append(F.relu(acts[-1]) if isinstance(layer, nn.ReLU) else layer(acts[-1].clone()))
                else:
                    acts.append(layer(acts[-1]))
        logits = acts[-1]
        rel = torch.zeros_like(logits)
        rel[0, t] = logits[0, t]
        for i in range(len(layers) - 1, -1, -1):
            layer, a = layers[i], acts[i]
            if isinstance(layer, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                rho = copy.deepcopy(layer)
                if isinstance(rho, nn.MaxPool2d):
                    rho = nn.AvgPool2d(rho.kernel_size, rho.stride, rho.padding)
                a = a.detach().requires_grad_(True)
                z = rho(a) + eps
                s = (rel / z).detach()
                (z * s).sum().backward()
                rel = (a * a.grad).detach()
            else:
                rel = rel.reshape(a.shape)
        out.append(rel)
    return torch.cat(out)

