"""The Shapley family: KernelSHAP and LIME over image segments, and DeepLIFT (rescale rule).

KernelSHAP and LIME switch segments (a regular grid of cells, or SLIC superpixels) between the
image and a baseline, run the coalitions under ``torch.inference_mode`` in chunks of
``ctx.forward_batch_size`` (one image's coalitions per chunk, each image with its own seeded generator,
so a map never depends on the other images of the call), and fit the target logit. Their maps
are (N, 1, H, W), constant within a segment. DeepLIFT runs each image and its baseline in one
forward and backpropagates difference quotients through every nonlinearity.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis.engine import Context, fast_layout
from galleryvis.hooks import RELU_FAMILY, output_rule
from galleryvis.registry import technique
from galleryvis.attribution.gradients import baseline_image

FEATURES = ("grid", "slic")
BASELINES = ("zero", "black", "blur")
#: ``sample(m, samples, generator)`` -> (S, m) bool coalitions of m segments.
Sample = Callable[[int, int, torch.Generator], Tensor]
#: ``solve(z, f_z, f_image, f_baseline)`` -> (m,) one value per segment, from the target logits.
Solve = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def grid_segments(height: int, width: int, segments: int, device: torch.device | None = None) -> Tensor:
    """(H, W) labels of a regular k x k grid of equal cells, k = sqrt(``segments``), row-major."""
    k = math.isqrt(segments) if segments > 0 else 0
    if k * k != segments or not 1 <= k <= min(height, width):
        raise ValueError(f"features='grid' needs a square number of segments (4, 9, ..., at most one cell per "
                         f"pixel), got segments={segments}")
    rows = torch.arange(height, device=device) * k // height
    cols = torch.arange(width, device=device) * k // width
    return rows[:, None] * k + cols[None, :]


def slic_segments(ctx: Context, xi: Tensor, segments: int) -> Tensor:
    """(H, W) labels 0 ... M-1 of scikit-image's SLIC superpixels (about ``segments`` of them)
    of image ``xi`` (C, H, W), read back in [0, 1] through the model's own normalization."""
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise ImportError("features='slic' needs scikit-image: pip install 'galleryvis[slic]'") from None
    rgb = (xi - ctx.pixel_value(0.0)[0]) / (ctx.pixel_value(1.0) - ctx.pixel_value(0.0))[0]
    rgb = rgb.clamp(0, 1).permute(1, 2, 0).double().cpu().numpy()
    labels = slic(rgb, n_segments=segments, compactness=10, start_label=0, channel_axis=-1)
    _, dense = np.unique(labels, return_inverse=True)
    return torch.from_numpy(dense.reshape(labels.shape)).to(xi.device)


def _segments(ctx: Context, xi: Tensor, features: str, segments: int) -> Tensor:
    if features == "slic":
        return slic_segments(ctx, xi, segments)
    return grid_segments(xi.shape[-2], xi.shape[-1], segments, xi.device)


def _coalition_scores(ctx: Context, xi: Tensor, base: Tensor, labels: Tensor, z: Tensor, image: int) -> Tensor:
    """Target score (S,; a class's logit) of image ``xi`` (number ``image`` of the chunk) with
    the segments where ``z`` (S, M) is False taken from ``base``: ``ctx.forward_batch_size``
    coalitions per forward (forward-only, as the other perturbation techniques' passes), under
    inference mode."""
    out = []
    with torch.inference_mode():
        for i, zs in enumerate(z.split(ctx.forward_batch_size)):
            ctx.advance(image * len(z) + i * ctx.forward_batch_size, len(ctx.x) * len(z))
            keep = zs.to(labels.device)[:, labels][:, None]  # (s, 1, H, W)
            scores = ctx.target.image(image, len(zs)).score(ctx.output(fast_layout(torch.where(keep, xi, base))))
            out.append(scores.double().cpu())
    return torch.cat(out)


def _explain_segments(ctx: Context, features: str, segments: int, samples: int, baseline: object, seed: int,
                      sample: Sample, solve: Solve) -> Tensor:
    """For each image: its segments, ``sample``'s coalitions evaluated together with the
    baseline (no segment) and the image (every segment), ``solve``'s value per segment
    painted onto them; (N, 1, H, W)."""
    if samples < 1 or segments < 1:
        raise ValueError("samples and segments must be >= 1")
    out = []
    for k, xi in enumerate(ctx.x):
        labels = _segments(ctx, xi, features, segments)
        base = baseline_image(ctx, xi[None], baseline)[0]
        m = int(labels.max()) + 1
        z = sample(m, samples, torch.Generator().manual_seed(seed))
        ends = torch.stack([torch.zeros(m, dtype=torch.bool), torch.ones(m, dtype=torch.bool)])
        f = _coalition_scores(ctx, xi, base, labels, torch.cat([ends, z]), k)
        out.append(solve(z, f[2:], f[1], f[0]).to(xi.device, xi.dtype)[labels][None])
    return torch.stack(out)


def shapley_coalitions(m: int, samples: int, generator: torch.Generator) -> Tensor:
    """(samples, m) bool coalitions of 1 ... m-1 players, their size drawn with the Shapley
    kernel's mass (m-1) / (s (m-s)) and each followed by its complement (paired sampling), so
    the kernel-weighted regression is an unweighted one over the sample."""
    if m == 1:
        return torch.zeros(0, 1, dtype=torch.bool)  # one player: its value is the whole change
    sizes = torch.arange(1, m, dtype=torch.double)
    mass = (m - 1) / (sizes * (m - sizes))
    half = (samples + 1) // 2
    s = 1 + torch.multinomial(mass / mass.sum(), half, replacement=True, generator=generator)
    z = torch.rand(half, m, generator=generator).argsort(1) < s[:, None]  # s random players per row
    return torch.cat([z, ~z])[:samples]


def _kernel_shap_solve(z: Tensor, f_z: Tensor, fx: Tensor, f_base: Tensor) -> Tensor:
    """Least squares of f(z) - f(base) on z (the sample already follows the Shapley kernel),
    constrained to sum to f(x) - f(base) (efficiency) by eliminating the last player."""
    delta = fx - f_base
    if z.shape[1] == 1:
        return delta[None]
    zd = z.double()
    a = zd[:, :-1] - zd[:, -1:]
    rest = torch.linalg.lstsq(a, (f_z - f_base - zd[:, -1] * delta)[:, None]).solution[:, 0]
    return torch.cat([rest, (delta - rest.sum())[None]])


@technique("kernel_shap", output="cam", kind="signed", signed=True, title="KernelSHAP", group="perturbation",
           needs=("passes",), stochastic=True, choices={"features": FEATURES, "baseline": BASELINES},
           paper="Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874",
           summary="Shapley values of image segments for the target logit, estimated by kernel-weighted regression.")
def kernel_shap(ctx: Context, *, features: str = "grid", segments: int = 49, samples: int = 256,
                baseline: str = "zero", seed: int = 0) -> Tensor:
    """Each segment's Shapley value: ``samples`` coalitions (plus the image and its baseline),
    segments outside a coalition replaced by ``baseline``; the values sum to logit(x) - logit(baseline)."""
    return _explain_segments(ctx, features, segments, samples, baseline, seed, shapley_coalitions,
                             _kernel_shap_solve)


def lime_coalitions(m: int, samples: int, generator: torch.Generator) -> Tensor:
    """(samples, m) bool coalitions, each segment kept with probability 1/2 (the lime package's)."""
    return torch.rand(samples, m, generator=generator) < 0.5


def _lime_solve(kernel_width: float) -> Solve:
    def solve(z: Tensor, f_z: Tensor, fx: Tensor, f_base: Tensor) -> Tensor:  # noqa: ARG001
        """Weighted least squares of f(z) on [1, z], the whole image as row 0 (as in the lime
        package); weights sqrt(exp(-d^2 / width^2)), d the cosine distance of z to the image."""
        m = z.shape[1]
        y = torch.cat([fx[None], f_z])
        zd = torch.cat([torch.ones(1, m, dtype=torch.double), z.double()])
        on = zd.sum(1)
        dist = 1 - on / torch.sqrt(on * m).clamp_min(1e-12)
        root_w = torch.exp(-dist ** 2 / kernel_width ** 2).sqrt().sqrt()  # square root of each row's weight
        design = torch.cat([torch.ones(len(zd), 1, dtype=torch.double), zd], 1)
        return torch.linalg.lstsq(design * root_w[:, None], (y * root_w)[:, None]).solution[1:, 0]
    return solve


@technique("lime", output="cam", kind="signed", signed=True, title="LIME", group="perturbation", needs=("passes",),
           stochastic=True, choices={"features": FEATURES, "baseline": BASELINES},
           paper="Ribeiro et al. 2016, https://arxiv.org/abs/1602.04938",
           summary="Coefficients of a locally weighted linear surrogate of the target logit over image segments.")
def lime(ctx: Context, *, features: str = "grid", segments: int = 49, samples: int = 256, baseline: str = "zero",
         kernel_width: float = 0.25, seed: int = 0) -> Tensor:
    """Each segment's coefficient in a linear fit of the target logit over ``samples`` random
    coalitions (each segment kept with probability 1/2, the rest replaced by ``baseline``),
    weighted by an exponential kernel of ``kernel_width`` on the cosine distance."""
    if not kernel_width > 0:
        raise ValueError("lime: kernel_width must be > 0")
    return _explain_segments(ctx, features, segments, samples, baseline, seed, lime_coalitions,
                             _lime_solve(kernel_width))


# -- DeepLIFT ------------------------------------------------------------------------------------
#: Elementwise nonlinearities whose gradient DeepLIFT replaces by the difference quotient.
ELEMENTWISE: tuple[type[nn.Module], ...] = RELU_FAMILY + (
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish)
EPS = 1e-10


class _Multiplied(torch.autograd.Function):
    """Forward: ``out`` unchanged. Backward: the incoming gradient goes to ``inp`` times ``m``
    (the module's own derivative is skipped)."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor, m: Tensor) -> Tensor:  # noqa: ARG004
        ctx.save_for_backward(m)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (m,) = ctx.saved_tensors
        return grad * m, None, None


class _Pooled(torch.autograd.Function):
    """Forward: a max pool's ``out`` unchanged. Backward, for the images' half: each window's
    gradient times its output difference ``d`` / ``d_ref`` goes to the winner ``win`` /
    ``win_ref`` of the image's / the baseline's window, divided by the input difference ``dx``;
    where ``small``, the plain max-pool gradient. The baselines' half gets none."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor, win: Tensor, win_ref: Tensor, d: Tensor, d_ref: Tensor,  # noqa: ARG004
                dx: Tensor, small: Tensor) -> Tensor:
        ctx.save_for_backward(win, win_ref, d, d_ref, dx, small)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        win, win_ref, d, d_ref, dx, small = ctx.saved_tensors
        g = grad[:len(dx)]

        def unpool(values: Tensor, index: Tensor) -> Tensor:
            return torch.zeros_like(dx).flatten(2).scatter_add_(2, index.flatten(2), values.flatten(2)).view_as(dx)

        moved = unpool(g * d, win) + unpool(g * d_ref, win_ref)
        gx = torch.where(small, unpool(g, win), moved / torch.where(small, torch.ones_like(dx), dx))
        return (torch.cat([gx, torch.zeros_like(gx)]),) + (None,) * 7


def rescale_rule(module: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    """``out`` of a batch [images; baselines] with the backward of DeepLIFT's rescale rule for the
    images' half: the multiplier (out - out_ref) / (in - in_ref), elementwise; a max pool hands
    each window's output difference to the winning input of whichever half has the larger
    maximum (captum's rule). Where the input difference is below :data:`EPS`, the plain
    derivative. The baselines' half gets no gradient (nothing upstream needs it)."""
    n = inp.shape[0] // 2
    if inp.shape[0] != 2 * n or out.shape[0] != inp.shape[0]:
        raise ValueError(f"deeplift: {type(module).__name__} saw a batch of {inp.shape[0]}, not images + baselines")
    with torch.no_grad():
        x, ref, y, y_ref = inp[:n], inp[n:], out[:n], out[n:]
        dx = x - ref
        small = dx.abs() < EPS
        if isinstance(module, nn.MaxPool2d):
            pool = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                        dilation=module.dilation, ceil_mode=module.ceil_mode, return_indices=True)
            win, win_ref = F.max_pool2d(x, **pool)[1], F.max_pool2d(ref, **pool)[1]
            top = torch.maximum(y, y_ref)
            pooled = (win, win_ref, top - y_ref, y - top, dx, small)
        else:
            m = torch.zeros_like(out)  # the baselines' half: 0
            any_small = bool(small.any())
            torch.div(y - y_ref, dx.masked_fill_(small, 1.0) if any_small else dx, out=m[:n])
    if isinstance(module, nn.MaxPool2d):
        return _Pooled.apply(inp, out, *pooled)
    if any_small:  # the derivative itself there (module.forward: no hooks again)
        with warnings.catch_warnings():  # torch's first forward-mode call scripts decompositions, and warns
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
            _, slope = torch.func.jvp(module.forward, (x.detach(),), (torch.ones_like(x),))
        m[:n] = torch.where(small, slope.detach(), m[:n])
    return _Multiplied.apply(inp, out, m)


@technique("deeplift", output="input", signed=True, kind="signed", title="DeepLIFT", group="perturbation",
           needs=("passes",), choices={"baseline": BASELINES},
           paper="Shrikumar et al. 2017, https://arxiv.org/abs/1704.02685",
           summary="Contributions of each input to the target logit's difference from a baseline (rescale rule).")
def deeplift(ctx: Context, *, baseline: str = "zero") -> Tensor:
    """(x - x') times the DeepLIFT multipliers of the rescale rule: one forward of the images and
    their baselines together (``ctx.batch_size`` of both at most), one backward."""
    out = []
    for xs, ts in zip(ctx.x.split(max(1, ctx.batch_size // 2)), ctx.target.split(max(1, ctx.batch_size // 2))):
        base = baseline_image(ctx, xs, baseline)
        xs = xs.detach().requires_grad_(True)
        both = ts.rows(list(range(len(xs))) * 2)  # the images, then their baselines
        with torch.enable_grad(), output_rule(ctx.model, ELEMENTWISE + (nn.MaxPool2d,), rescale_rule):
            scores = both.score(ctx.output(torch.cat([xs, base])))
            (g,) = torch.autograd.grad(scores[:len(xs)].sum(), xs)
        out.append((xs.detach() - base) * g)
    return torch.cat(out)
