"""Input-gradient techniques: vanilla, guided backprop, deconvnet, grad x image, SmoothGrad, IG."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from galleryvis.engine import Context
from galleryvis.engine import gaussian_blur
from galleryvis.registry import technique
from galleryvis.tasks import TASKS


@technique("vanilla", output="input", signed=True, title="Vanilla Backpropagation", needs=("input_grad",),
           tasks=TASKS,
           paper="Simonyan et al. 2013, https://arxiv.org/abs/1312.6034",
           summary="Gradient of the target logit with respect to the input pixels.")
def vanilla(ctx: Context) -> Tensor:
    """d score / d input (a class's logit), from the shared plain backward."""
    return ctx.backward("plain").input_grad


@technique("guided_backprop", output="input", signed=True, title="Guided Backpropagation",
           needs=("input_grad",), split_sign=True,
           paper="Springenberg et al. 2014, https://arxiv.org/abs/1412.6806",
           summary="Gradient where every ReLU-family unit passes only positive gradients of positive inputs.")
def guided_backprop(ctx: Context) -> Tensor:
    """Input gradient of the guided backward (shared with guided Grad-CAM)."""
    return ctx.backward("guided").input_grad


@technique("deconvnet", output="input", signed=True, title="Deconvnet", needs=("input_grad",),
           paper="Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901",
           summary="Backward pass where ReLUs pass the positive part of the gradient, ignoring the forward mask.")
def deconvnet(ctx: Context) -> Tensor:
    """Input 'gradient' of the deconvnet backward."""
    return ctx.backward("deconv").input_grad


_GRADIENT_BASES = ("vanilla", "guided_backprop", "deconvnet", "smoothgrad", "integrated_gradients")


@technique("grad_x_image", output="input", signed=True, choices={"base": _GRADIENT_BASES},
           title="Gradient x Image", needs=("input_grad", "passes"),
           tasks=TASKS,
           paper="Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713",
           summary="A gradient map multiplied element-wise by the input image.")
def grad_x_image(ctx: Context, *, base: str = "vanilla") -> Tensor:
    """``base`` technique's map (default parameters) times the input; for integrated gradients
    the path-averaged gradient times the input (IG itself for the zero baseline)."""
    params = {"multiply_by_inputs": False} if base == "integrated_gradients" else {}
    return ctx.run(base, **params) * ctx.x


@technique("smoothgrad", output="input", signed=True, title="SmoothGrad", needs=("passes",), stochastic=True,
           choices={"base": ("vanilla", "guided_backprop"), "variant": ("mean", "squared", "vargrad")},
           tasks=TASKS,
           paper="Smilkov et al. 2017, https://arxiv.org/abs/1706.03825",
           summary="Gradients averaged over noisy copies of the input.")
def smoothgrad(ctx: Context, *, samples: int = 50, sigma: float = 0.15, base: str = "vanilla",
               variant: str = "mean", seed: int = 0) -> Tensor:
    """Average (``mean``), mean square (``squared``) or variance (``vargrad``) of ``samples``
    gradients at x + N(0, sigma^2), sigma a fraction of each image's (max - min) as in the paper.
    Each image draws its noise from a CPU generator seeded with ``seed``, so an image's map does
    not depend on the batch it comes in."""
    if samples < 1 or sigma < 0:
        raise ValueError("smoothgrad: samples must be >= 1 and sigma >= 0")
    mode = "guided" if base == "guided_backprop" else "plain"
    out = []
    for i, xi in enumerate(ctx.x):
        gen = torch.Generator().manual_seed(seed)
        std = sigma * float(xi.max() - xi.min())
        total = torch.zeros_like(xi)
        total_sq = torch.zeros_like(xi)
        for k, n in enumerate(chunk_sizes(samples, ctx.batch_size)):
            ctx.advance(i * samples + k * ctx.batch_size, len(ctx.x) * samples)
            noise = torch.randn((n, *xi.shape), generator=gen).to(xi.device, xi.dtype) * std
            g = ctx.input_grad(xi[None] + noise, ctx.target.image(i, n), mode)
            total += g.sum(0)
            total_sq += (g * g).sum(0)
        mean, mean_sq = total / samples, total_sq / samples
        out.append({"mean": mean, "squared": mean_sq, "vargrad": mean_sq - mean * mean}[variant])
    return torch.stack(out)


def chunk_sizes(total: int, size: int) -> list[int]:
    """Chunk sizes covering ``total`` items, ``size`` at most each."""
    return [min(size, total - i) for i in range(0, total, size)]


def _alphas(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Path positions and quadrature weights on [0, 1]."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_trapezoid":
        a = np.linspace(0, 1, steps)
        w = np.full(steps, 1 / (steps - 1)) if steps > 1 else np.ones(1)
        if steps > 1:
            w[[0, -1]] /= 2
        return a, w
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (np.arange(steps) + offset) / steps, np.full(steps, 1 / steps)


def baseline_image(ctx: Context, x: Tensor, baseline: object) -> Tensor:
    """The reference image for ``x`` (N, C, H, W): a tensor as given (normalized, broadcast),
    ``"zero"`` (zeros of the normalized input), ``"black"`` (pixel value 0) or ``"blur"``."""
    if isinstance(baseline, Tensor):
        return baseline.to(x.device, x.dtype).expand_as(x)
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "black":  # a black image in the model's own input normalization
        return ctx.pixel_value(0.0).expand_as(x).clone()
    sigma = x.shape[-1] / 20  # a Gaussian blur of sigma = width / 20, cut at 3 sigma
    return gaussian_blur(x, 2 * max(1, int(3 * sigma)) + 1, sigma)


@technique("integrated_gradients", output="input", signed=True, title="Integrated Gradients",
           kind="signed", needs=("passes",),
           choices={"method": ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"),
                    "baseline": ("zero", "black", "blur")},
           tasks=TASKS,
           paper="Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365",
           summary="Gradients integrated along the straight path from a baseline to the input.")
def integrated_gradients(ctx: Context, *, steps: int = 50, baseline: str = "zero",
                         method: str = "gausslegendre", multiply_by_inputs: bool = True) -> Tensor:
    """(x - x') * sum_k w_k grad(x' + a_k (x - x')) as in the paper; without the multiplication,
    the path-averaged gradient the seed shows. ``baseline`` may also be a tensor (normalized)."""
    if steps < 1:
        raise ValueError("integrated_gradients: steps must be >= 1")
    avg = ctx.shared(("integrated_gradients", steps, baseline, method),
                     lambda: _path_average(ctx, steps, baseline, method))
    if not multiply_by_inputs:
        return avg
    return avg * (ctx.x - baseline_image(ctx, ctx.x, baseline))


def _path_average(ctx: Context, steps: int, baseline: object, method: str) -> Tensor:
    """sum_k w_k grad(x' + a_k (x - x')) per image of the chunk (the path-averaged gradient)."""
    alphas, weights = _alphas(steps, method)
    out = []
    for i, xi in enumerate(ctx.x):
        base = baseline_image(ctx, xi[None], baseline)[0]
        avg = torch.zeros_like(xi)
        start = 0
        for n in chunk_sizes(steps, ctx.batch_size):
            ctx.advance(i * steps + start, len(ctx.x) * steps)
            a = torch.tensor(alphas[start:start + n], dtype=xi.dtype, device=xi.device)[:, None, None, None]
            w = torch.tensor(weights[start:start + n], dtype=xi.dtype, device=xi.device)[:, None, None, None]
            avg += (ctx.input_grad(base + a * (xi - base), ctx.target.image(i, n)) * w).sum(0)
            start += n
        out.append(avg)
    return torch.stack(out)
