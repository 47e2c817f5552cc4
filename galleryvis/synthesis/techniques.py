"""The five synthesis techniques. Each is ``fn(job, **params) -> (image01 (N,3,H,W), trace (steps, N))``.

Every objective is a sum of per-item terms, and every random draw comes from the item's own
generator, so items in one batch never influence each other (``synthesize`` passes one item at
a time, so that not even kernel rounding depends on the batch). Gradients are taken with
``torch.autograd.grad`` w.r.t. the image parameters only (the model's parameters are frozen by
``prepared``).
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from galleryvis.engine.changes import redirected_relus
from galleryvis.hooks import guided
from galleryvis.engine import gaussian_blur
from galleryvis.targets import Class
from galleryvis.synthesis import param as P
from galleryvis.synthesis.api import Chunk, synthesis_technique
from galleryvis.synthesis.objectives import (alpha_norm, relative_distance, total_variation, unit_mean,
                         unit_square_mean)
from galleryvis.synthesis.transforms import random_affine, roll


def _ascent_step(opt: torch.optim.Optimizer, tensor: Tensor, loss: Tensor) -> None:
    (g,) = torch.autograd.grad(loss, tensor)
    tensor.grad = g
    opt.step()
    tensor.grad = None


def _trace(values: list[Tensor], n: int, device: torch.device) -> Tensor:
    return torch.stack(values) if values else torch.zeros(0, n, device=device)


# -- filter visualization --------------------------------------------------------------------------
@synthesis_technique(
    "filter_visualization", title="Filter Visualization", layer="one", unit="channel", unit_required=True, image="none",
    choices={"param": ("fft", "pixel")},
    paper="Erhan et al. 2009; Olah et al. 2017, https://distill.pub/2017/feature-visualization/",
    summary="An image, optimized from noise, that maximizes the mean activation of one channel.")
def filter_visualization(job: Chunk, *, steps: int = 128, size: int = 128, lr: float = 0.05,
                         param: str = "fft", transforms: bool = True, redirect: bool = True
                         ) -> tuple[Tensor, Tensor]:
    """Adam ascent on the channel's mean activation. ``param="fft"`` (default): lucent's
    decorrelated Fourier parameterization; ``"pixel"``: the seed's pixels, from uniform noise in
    [150, 180]/255, projected into [0, 1] each step. ``transforms``: lucent's random pad, jitter,
    scale and rotation before every forward (off + ``pixel`` reproduces the seed's setting).
    ``redirect``: lucid's redirected ReLU gradient (``objectives.redirected_relus``), so channels
    that are inactive on the whole start image (common after ReLU6) still get a gradient."""
    if size < 8:
        raise ValueError(f"filter_visualization: size must be >= 8, got {size}")
    make = P.fft if param == "fft" else P.pixel
    p = make(job.gens, (size, size), job.device)
    opt = torch.optim.Adam([p.tensor], lr=lr)
    trace = []
    with torch.enable_grad(), redirected_relus(job.model) if redirect else nullcontext():
        for t in range(steps):
            job.advance(t, steps)
            img = p.image()
            if transforms:
                img = random_affine(img, job.gens)
            obj = unit_mean(job.features(img), job.units)
            _ascent_step(opt, p.tensor, -obj.sum())
            p.project()
            trace.append(obj.detach())
    return p.image().detach(), _trace(trace, job.n, job.device)


# -- layer activation with guided backprop ----------------------------------------------------------
@synthesis_technique(
    "layer_activation", title="Layer Activation (Guided Backprop)", layer="one", unit="channel", image="required",
    choices={"scaling": ("symmetric", "minmax")},
    paper="Springenberg et al. 2014, https://arxiv.org/abs/1412.6806",
    summary="Guided backpropagation from one channel (or the whole layer) of a chosen layer.")
def layer_activation(job: Chunk, *, scaling: str = "symmetric", clip: float = 0.99) -> tuple[Tensor, Tensor]:
    """Guided-backprop gradient g of the channel's mean activation (the whole layer's when no
    channel is given) w.r.t. the input image, mapped per image to [0, 1] for display:
    ``symmetric`` (default) maps 0 to grey, 0.5 + g / (2 q), q the ``clip`` quantile of |g|,
    clipped; ``minmax`` maps [min, max] to [0, 1] (the seed's display, washed out by a few large
    values). Trace (1, N): the objective."""
    if not 0 < clip <= 1:
        raise ValueError(f"layer_activation: clip must be in (0, 1], got {clip}")
    assert job.image is not None and job.tap is not None
    x = job.image.detach().clone().requires_grad_(True)
    with torch.enable_grad(), guided(job.model, "guided"):
        obj = unit_mean(job.tap(job.at_input_size(x)), job.units)
        (g,) = torch.autograd.grad(obj.sum(), x)
    flat = g.flatten(1)
    if scaling == "minmax":
        lo, hi = flat.min(1).values, flat.max(1).values
        out = (g - lo.view(-1, 1, 1, 1)) / (hi - lo).clamp(min=1e-12).view(-1, 1, 1, 1)
    else:
        q = torch.quantile(flat.abs(), clip, dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        out = (0.5 + g / (2 * q)).clamp(0, 1)
    return out, obj.detach()[None]


# -- deep dream -------------------------------------------------------------------------------------
@synthesis_technique(
    "deep_dream", title="Deep Dream", layer="one", unit="channel", image="required",
    paper="Mordvintsev et al. 2015, https://research.google/blog/inceptionism-going-deeper-into-neural-networks/",
    summary="Gradient ascent on a photo, over several scales (octaves), amplifying what a layer sees.")
def deep_dream(job: Chunk, *, steps: int = 10, octaves: int = 3, octave_scale: float = 1.4,
               lr: float = 0.02, jitter: int = 16) -> tuple[Tensor, Tensor]:
    """Mordvintsev's loop. ``steps`` per octave; the photo is shrunk by ``octave_scale`` per
    octave, dreamed smallest first, and the detail added so far is carried up to the next scale.
    Each step: random roll by up to ``jitter`` pixels, gradient of the objective (the channel's
    mean activation, or the layer's mean squared activation without a channel), and a step of
    ``lr`` times the gradient divided by its mean absolute value, in [0, 1] image space. The
    image keeps its size. Trace (octaves * steps, N)."""
    if octaves < 1 or octave_scale < 1:
        raise ValueError("deep_dream: octaves must be >= 1 and octave_scale >= 1")
    assert job.image is not None
    base = job.to01(job.image).clamp(0, 1)
    h, w = base.shape[-2:]
    sizes = [(max(1, round(h / octave_scale ** k)), max(1, round(w / octave_scale ** k)))
             for k in reversed(range(octaves))]
    objective = unit_square_mean if all(u is None for u in job.units) else unit_mean
    detail = torch.zeros_like(base)
    trace = []
    for octave, size in enumerate(sizes):
        octave_base = F.interpolate(base, size=size, mode="bilinear", align_corners=False,
                                    antialias=True) if size != (h, w) else base
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        img = (octave_base + detail).clamp(0, 1)
        for t in range(steps):
            job.advance(octave * steps + t, octaves * steps)
            img.requires_grad_(True)
            with torch.enable_grad():
                obj = objective(job.features(roll(img, job.gens, jitter)), job.units)
                (g,) = torch.autograd.grad(obj.sum(), img)
            step = g / g.abs().flatten(1).mean(1).clamp(min=1e-12).view(-1, 1, 1, 1)
            img = (img.detach() + lr * step).clamp(0, 1)
            trace.append(obj.detach())
        detail = img.detach() - octave_base
    return img.detach(), _trace(trace, job.n, job.device)


# -- class visualization ----------------------------------------------------------------------------
@synthesis_technique(
    "class_visualization", title="Class-specific Image Generation", layer="none", unit="target", unit_required=True, image="optional",
    model_size=True,
    choices={"param": ("fft", "pixel"), "regularization": ("none", "l1", "l2", "yosinski")},
    paper="Simonyan et al. 2013, https://arxiv.org/abs/1312.6034; Yosinski et al. 2015, "
          "https://arxiv.org/abs/1506.06579; Olah et al. 2017, https://distill.pub/2017/feature-visualization/",
    summary="An image optimized to maximize one class logit: decorrelated Fourier parameterization "
            "with random transforms, or the seed's pixels with optional regularization.")
def class_visualization(job: Chunk, *, steps: int = 96, size: int = 224, lr: float = 0.05,
                        param: str = "fft", regularization: str = "none", l1_weight: float = 0.1,
                        l2_weight: float = 1.0, decay: float = 0.01, blur_every: int = 4,
                        blur_sigma: float = 1.0, norm_pct: float = 0.3, contrib_pct: float = 0.1,
                        jitter: int = 8, noise: float = 0.2) -> tuple[Tensor, Tensor]:
    """Adam ascent on the target logit, from noise (``size`` x ``size``) or from the given image.

    ``param="fft"`` (default): the decorrelated Fourier parameterization of filter
    visualization, and before every forward its random pad, jitter, scale and rotation
    (:func:`~.transforms.random_affine`); ``regularization`` must be ``none``.

    ``param="pixel"``: the seed's setting, in [0, 1] image space centred on the normalization
    mean (``z = x - mean``, so "zero" is the mean colour; z is projected so that x stays in
    [0, 1]), from the mean colour plus uniform noise of width ``noise`` (the seed's full-range
    noise is ``noise=1``). ``regularization``: ``none``; ``l1``: ``l1_weight * sum |z|`` added
    to the loss; ``l2``: ``l2_weight * sum z^2 / 2`` (weight decay, as the seed's SGD
    ``weight_decay``); ``yosinski`` (Yosinski et al. 2015): after each step, decay
    ``z *= 1 - decay``, Gaussian blur (``blur_sigma`` px) every ``blur_every`` steps (never on
    the last), and pixels whose norm, or whose contribution |sum_c z*grad|, is in the lowest
    ``norm_pct`` / ``contrib_pct`` fraction reset to the mean; plus a random roll by up to
    ``jitter`` pixels before every forward.
    Trace (steps, N): the target logit."""
    for name, value in (("norm_pct", norm_pct), ("contrib_pct", contrib_pct)):
        if not 0 <= value < 1:
            raise ValueError(f"class_visualization: {name} is a fraction in [0, 1), got {value}")
    if size < 8 or not 0 <= decay < 1:
        raise ValueError("class_visualization: size must be >= 8 and decay in [0, 1)")
    objective = Class(job.units)  # type: ignore[arg-type]  (class visualization's units are class indices)
    if param == "fft":
        if regularization != "none":
            raise ValueError(f"class_visualization: regularization {regularization!r} acts on pixels; "
                             f"use it with param='pixel'")
        return _class_fft(job, objective, steps, size, lr)
    if job.image is not None:
        z = (job.to01(job.image).clamp(0, 1) - job.mean).detach().clone()
    else:
        z = torch.cat([(torch.rand(1, 3, size, size, generator=g) - 0.5) * noise
                       for g in job.gens]).to(job.device)
    z.requires_grad_(True)
    lo, hi = -job.mean, 1 - job.mean
    opt = torch.optim.Adam([z], lr=lr)
    yos = regularization == "yosinski"
    trace = []
    for t in range(steps):
        job.advance(t, steps)
        with torch.enable_grad():
            x = z + job.mean
            if yos:
                x = roll(x, job.gens, jitter)
            logit = objective.score(job.logits(x))
            loss = -logit.sum()
            if regularization == "l1":
                loss = loss + l1_weight * z.abs().sum()
            elif regularization == "l2":
                loss = loss + l2_weight * z.square().sum() / 2
            (g,) = torch.autograd.grad(loss, z)
        z.grad = g
        opt.step()
        z.grad = None
        with torch.no_grad():
            if yos:
                z.mul_(1 - decay)
                if blur_every > 0 and (t + 1) % blur_every == 0 and t < steps - 1:
                    z.copy_(gaussian_blur(z, 2 * max(1, math.ceil(3 * blur_sigma)) + 1, blur_sigma))
                keep = torch.ones_like(z[:, :1], dtype=torch.bool)
                if norm_pct > 0:
                    keep &= _above_quantile(z.norm(dim=1, keepdim=True), norm_pct)
                if contrib_pct > 0:
                    keep &= _above_quantile((z * -g).sum(1, keepdim=True).abs(), contrib_pct)
                z.mul_(keep)
            z.copy_(torch.maximum(torch.minimum(z, hi), lo))
        trace.append(logit.detach())
    return (z + job.mean).detach(), _trace(trace, job.n, job.device)


def _class_fft(job: Chunk, objective: Class, steps: int, size: int, lr: float) -> tuple[Tensor, Tensor]:
    """``class_visualization`` with ``param="fft"``: Adam on the spectrum, seen through random transforms."""
    start = None if job.image is None else job.to01(job.image).clamp(0, 1)
    hw = (size, size) if start is None else (start.shape[-2], start.shape[-1])
    p = P.fft(job.gens, hw, job.device, start=start)
    opt = torch.optim.Adam([p.tensor], lr=lr)
    trace = []
    with torch.enable_grad():
        for t in range(steps):
            job.advance(t, steps)
            logit = objective.score(job.logits(random_affine(p.image(), job.gens)))
            _ascent_step(opt, p.tensor, -logit.sum())
            trace.append(logit.detach())
    return p.image().detach(), _trace(trace, job.n, job.device)


def _above_quantile(v: Tensor, q: float) -> Tensor:
    """Per item: v >= its q-quantile (v: (N,1,H,W))."""
    thr = torch.quantile(v.flatten(1), q, dim=1).view(-1, 1, 1, 1)
    return v >= thr


# -- inverted representation ------------------------------------------------------------------------
@synthesis_technique(
    "inverted_representation", title="Inverted Representation", layer="one", unit=None, image="required",
    paper="Mahendran & Vedaldi 2015, https://arxiv.org/abs/1412.0035",
    summary="An image reconstructed from a layer's representation of a photo, with natural-image priors.")
def inverted_representation(job: Chunk, *, steps: int = 200, lr: float = 0.2, alpha: float = 6.0,
                            alpha_weight: float = 1.0, beta: float = 2.0, tv_weight: float = -1.0
                            ) -> tuple[Tensor, Tensor]:
    """Minimize ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 + alpha_weight * R_alpha + tv_weight * R_TV
    with Adam from faint noise, x in [0, 1] (projected each step), the learning rate decaying
    exponentially from ``lr`` to ``lr / 10`` over the steps.

    R_alpha = mean |(x - mean) / 0.5|^alpha (the paper's N_alpha, normalized by pixel count and
    range); R_TV = mean over pixels of the squared spatial differences ^(beta/2), over (H, W)
    as in the paper. ``tv_weight < 0`` chooses it from the layer's stride s (input width /
    layer width): see :func:`default_tv_weight`. Trace (steps, N): the reconstruction term."""
    assert job.image is not None and job.tap is not None
    with torch.no_grad():
        phi0 = job.tap(job.at_input_size(job.image)).detach()
    if tv_weight < 0:
        tv_weight = default_tv_weight(job.image.shape[-1], phi0.shape[-1] if phi0.dim() == 4 else 1)
    x = torch.cat([0.5 + 0.05 * torch.randn(1, *job.image.shape[1:], generator=g) for g in job.gens])
    x = x.to(job.device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    trace = []
    for t in range(steps):
        job.advance(t, steps)
        opt.param_groups[0]["lr"] = lr * 0.1 ** (t / max(1, steps))
        with torch.enable_grad():
            rec = relative_distance(job.features(x), phi0)
            loss = rec + alpha_weight * alpha_norm((x - job.mean) / 0.5, alpha) \
                + tv_weight * total_variation(x, beta)
            _ascent_step(opt, x, loss.sum())
        with torch.no_grad():
            x.clamp_(0, 1)
        trace.append(rec.detach())
    return x.detach(), _trace(trace, job.n, job.device)


def default_tv_weight(input_width: int, layer_width: int) -> float:
    """The TV weight for a layer of stride s = input width / layer width: 0.1 * s, i.e. 0.2 for
    EfficientNet-Lite0's stem (s = 2), 0.4 at s = 4, 0.8 at s = 8, 3.2 for the last block (s = 32):
    deeper layers keep less of the image, so the prior must carry more. With the other defaults,
    on Lite0 at 160 px, the relative feature distance is 0.09-0.11 at s = 4 (``_blocks.1``) and
    at most 0.17 up to s = 16 (``_blocks.10``)."""
    s = max(1.0, input_width / max(1, layer_width))
    return 0.1 * s
