"""Perturbation and Shapley techniques: occlusion, RISE, Ablation-CAM, GradientSHAP.

The perturbed copies of an image go through the model ``ctx.forward_batch_size`` at a time
under ``torch.inference_mode`` (GradientSHAP's ``ctx.batch_size`` at a time through
``ctx.input_grad``), never one forward each, and are built one chunk at a time, never all at once.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from galleryvis.engine import Context
from galleryvis.hooks import replaced_output
from galleryvis.registry import technique
from galleryvis.tasks import TASKS
from galleryvis.attribution.cam import layer_acts, weighted_cam
from galleryvis.attribution.gradients import baseline_image, chunk_sizes


def _windows(size: int, window: int, stride: int) -> list[int]:
    """Start positions of the windows along one side (captum's: the last one may leave a margin)."""
    return list(range(0, size - window + 1, stride))


@technique("occlusion", output="cam", kind="signed", signed=True, title="Occlusion", group="perturbation",
           needs=("forward", "passes"), choices={"baseline": ("zero", "black", "blur")},
           tasks=TASKS,
           paper="Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901",
           summary="Drop of the target logit when a window of the image is replaced, averaged over the windows covering each pixel.")
def occlusion(ctx: Context, *, window: int = 32, stride: int = 16, baseline: str = "zero") -> Tensor:
    """For each ``window`` x ``window`` square at ``stride`` (all channels), the target's score
    (a class's logit) on x minus its score with the square replaced by ``baseline`` (``zero``:
    zeros of the normalized input, as captum's ``baselines=0``; ``black``; ``blur``; or a
    normalized tensor); each pixel gets the mean drop of the windows covering it (0 where none
    does). (N, 1, H, W)."""
    h, w = ctx.x.shape[-2:]
    if window < 1 or stride < 1 or window > min(h, w):
        raise ValueError(f"occlusion: window must be in 1..{min(h, w)} and stride >= 1, got {window}, {stride}")
    starts = [(r, c) for r in _windows(h, window, stride) for c in _windows(w, window, stride)]
    base_scores = ctx.target.score(ctx.forward().output)
    out = []
    with torch.inference_mode():
        for n, (xi, s0) in enumerate(zip(ctx.x, base_scores)):
            base = baseline_image(ctx, xi[None], baseline)
            total = torch.zeros((1, 1, h, w), device=xi.device)
            count = torch.zeros((1, 1, h, w), device=xi.device)
            for i in range(0, len(starts), ctx.forward_batch_size):
                ctx.advance(n * len(starts) + i, len(ctx.x) * len(starts))
                chunk = starts[i:i + ctx.forward_batch_size]
                mask = torch.zeros((len(chunk), 1, h, w), dtype=torch.bool, device=xi.device)
                for k, (r, c) in enumerate(chunk):
                    mask[k, :, r:r + window, c:c + window] = True
                drop = s0 - ctx.target.image(n, len(chunk)).score(ctx.output(torch.where(mask, base, xi[None])))
                total += (drop.float()[:, None, None, None] * mask).sum(0, keepdim=True)
                count += mask.sum(0, keepdim=True)
            out.append(total / count.clamp_min(1))
    return torch.cat(out)


def _rise_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int], cell: tuple[int, int]) -> Tensor:
    """RISE masks (n, 1, H, W) in [0, 1]: each binary grid upsampled bilinearly to (cells + 1)
    cells and cropped to ``size`` at its shift."""
    cells = grids.shape[-1]
    up = F.interpolate(grids, size=((cells + 1) * cell[0], (cells + 1) * cell[1]), mode="bilinear",
                       align_corners=False)
    return torch.stack([m[:, r:r + size[0], c:c + size[1]] for m, (r, c) in zip(up, shifts.tolist())])


def rise_masks(name: str, masks: int, cells: int, p: float, seed: int,
               size: tuple[int, int]) -> Callable[[slice], Tensor]:
    """RISE's ``masks`` random masks of ``size`` as a function of a slice of them: binary
    ``cells`` x ``cells`` grids (each cell kept with probability ``p``) drawn from a CPU
    generator seeded with ``seed``, each with a random shift within one cell (:func:`_rise_masks`);
    ``name`` (the technique) in the error on bad settings."""
    if masks < 1 or cells < 1 or not 0 < p <= 1:
        raise ValueError(f"{name}: masks and cells must be >= 1 and p in (0, 1], got {masks}, {cells}, {p}")
    cell = (math.ceil(size[0] / cells), math.ceil(size[1] / cells))
    gen = torch.Generator().manual_seed(seed)
    grids = (torch.rand((masks, 1, cells, cells), generator=gen) < p).float()
    shifts = torch.stack([torch.randint(0, cell[0], (masks,), generator=gen),
                          torch.randint(0, cell[1], (masks,), generator=gen)], 1)
    return lambda chunk: _rise_masks(grids[chunk], shifts[chunk], size, cell)


def confidence_weighted_masks(ctx: Context, count: int, masks: Callable[[slice], Tensor]) -> Tensor:
    """sum_i c_i M_i over ``count`` masks (``masks(chunk)``: (m, 1, H, W) in [0, 1]), c_i each
    image's target confidence on the image times M_i; ``ctx.forward_batch_size`` masked copies
    per forward under ``torch.inference_mode``. (N, 1, H, W)."""
    n, _, h, w = ctx.x.shape
    total = torch.zeros((n, 1, h, w), device=ctx.x.device)
    with torch.inference_mode():
        for i in range(0, count, ctx.forward_batch_size):
            ctx.advance(i, count)
            m = masks(slice(i, i + ctx.forward_batch_size)).to(ctx.x.device, ctx.x.dtype)
            for k, xk in enumerate(ctx.x):
                confidence = ctx.target.image(k, len(m)).confidence(ctx.output(xk[None] * m))
                total[k] += (confidence[:, None, None, None] * m).sum(0)
    return total


@technique("rise", output="cam", title="RISE", group="perturbation", needs=("passes",), stochastic=True,
           tasks=TASKS,
           paper="Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421",
           summary="Random low-resolution masks, upsampled with random shifts, weighted by the target's probability on the masked image.")
def rise(ctx: Context, *, masks: int = 1000, cells: int = 7, p: float = 0.5, seed: int = 0) -> Tensor:
    """sum_i P(target | x * M_i) M_i / (masks * p), P the target's confidence (a class's softmax
    probability): ``masks`` binary ``cells`` x ``cells`` grids
    (each cell kept with probability ``p``), upsampled bilinearly to (cells + 1) cells of
    ceil(H / cells) pixels, shifted by a random offset within one cell and cropped; the
    normalized input is multiplied by them (masked pixels become the mean colour), as the
    authors' code does. The masks come from a CPU generator seeded with ``seed``, the same for
    every image of every call. (N, 1, H, W)."""
    return confidence_weighted_masks(ctx, masks, rise_masks("rise", masks, cells, p, seed, tuple(ctx.x.shape[-2:]))) \
        / (masks * p)


@technique("ablationcam", output="cam", layer="one", title="Ablation-CAM", group="perturbation",
           needs=("forward", "passes"),
           paper="Desai & Ramaswamy 2020, https://openaccess.thecvf.com/content_WACV_2020/papers/"
                 "Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_WACV_2020_paper.pdf",
           summary="Activations weighted by the relative drop of the target logit when each channel is zeroed.")
def ablationcam(ctx: Context, *, layer: str) -> Tensor:
    """Weights (y - y_k) / y, y the target's score (a class's logit) and y_k the score with
    channel k of ``layer`` zeroed (in every position and token); ReLU(sum_k w_k A_k). One
    ablation per channel and image; the layers before ``layer`` run once per chunk of ablations,
    not once per copy: the image goes in alone and ``layer``'s output is widened to the chunk there (when the rest of
    the model takes the wider batch and gives the unablated logits back, checked once per call;
    otherwise every copy runs through the whole model)."""
    acts = layer_acts(ctx, layer)
    grid = ctx.grid(layer)
    n, c = acts.shape[:2]
    base = ctx.target.score(ctx.forward().output).float()[:, None]
    widen = _widens(ctx, layer, grid.per_channel, c)
    ablated = torch.zeros((n, c), device=acts.device)
    with torch.inference_mode():
        for i, xi in enumerate(ctx.x):
            for chunk in torch.arange(c, device=acts.device).split(ctx.forward_batch_size):
                ctx.advance(i * c + int(chunk[0]), n * c)
                keep = torch.ones((len(chunk), c), dtype=acts.dtype, device=acts.device)
                keep[torch.arange(len(chunk)), chunk] = 0
                x = xi[None] if widen else xi[None].expand(len(chunk), *xi.shape)
                with replaced_output(ctx.model, layer, lambda out, keep=keep: out * grid.per_channel(keep)):
                    ablated[i, chunk] = ctx.target.image(i, len(chunk)).score(ctx.output(x)).float()
    weights = (base - ablated) / base
    return weighted_cam(acts, weights[:, :, None, None].to(acts.dtype))


def _widens(ctx: Context, layer: str, per_channel: Callable[[Tensor], Tensor], channels: int) -> bool:
    """Whether the model after ``layer`` (``channels`` channels on its grid) computes a batch
    widened there row by row: one image in, its layer output times two all-ones keeps, and the
    first image's output out twice (a tensor output; any other is never widened)."""
    full = ctx.forward().output
    if not isinstance(full, Tensor):
        return False
    ref = full[:1].float()
    keep = torch.ones((2, channels), device=ctx.x.device, dtype=ctx.x.dtype)
    try:
        with torch.inference_mode(), replaced_output(ctx.model, layer, lambda out: out * per_channel(keep)):
            got = ctx.output(ctx.x[:1])
    except (RuntimeError, ValueError):  # a shape the rest of the model refuses
        return False
    if not isinstance(got, Tensor) or got.shape != (2, *ref.shape[1:]):
        return False
    tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
    return torch.allclose(got.float(), ref.expand_as(got), rtol=1e-3, atol=tol)


def _shap_samples(ctx: Context, xi: Tensor, base: Tensor | None, refs: Tensor | None, n: int,
                  stdev: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` GradientSHAP samples of one image: (noisy inputs, their baselines), each (n, C, H, W).
    Drawn one sample at a time (alpha, noise, baseline), so the draws do not depend on the chunk."""
    lo, hi = ctx.pixel_value(0.0)[0], ctx.pixel_value(1.0)[0]
    inputs, bases = [], []
    for _ in range(n):
        alpha = torch.rand((), generator=gen)
        noisy = xi + torch.randn(xi.shape, generator=gen).to(xi.device, xi.dtype) * stdev
        if refs is not None:
            b = refs[int(torch.randint(len(refs), (), generator=gen))]
        elif base is not None:
            b = base
        else:  # a uniform-noise image in pixel space, normalized as the model expects
            b = lo + torch.rand(xi.shape, generator=gen).to(xi.device, xi.dtype) * (hi - lo)
        inputs.append(b + alpha.item() * (noisy - b))
        bases.append(noisy - b)
    return torch.stack(inputs), torch.stack(bases)


@technique("gradient_shap", output="input", signed=True, title="GradientSHAP", kind="signed",
           group="perturbation", needs=("passes",), stochastic=True,
           choices={"baselines": ("uniform", "zero", "black", "blur")},
           paper="Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874",
           summary="Expected gradients: gradients at random points between random baselines and the noisy input, times their difference.")
def gradient_shap(ctx: Context, *, samples: int = 50, stdev: float = 0.1, baselines: str = "uniform",
                  seed: int = 0) -> Tensor:
    """mean over ``samples`` of grad(b + a (x + e - b)) * (x + e - b), with a ~ U(0, 1),
    e ~ N(0, stdev^2) (normalized input units, captum's ``stdevs``) and b a random baseline:
    ``uniform`` (a fresh uniform-noise image per sample), ``zero``, ``black``, ``blur``, or a
    normalized tensor (K, C, H, W) of reference images drawn from uniformly. Its sum
    approaches f(x) - E f(b) (completeness in expectation). Each image draws from a CPU
    generator seeded with ``seed``. (N, C, H, W)."""
    if samples < 1 or stdev < 0:
        raise ValueError("gradient_shap: samples must be >= 1 and stdev >= 0")
    refs = baselines.to(ctx.x.device, ctx.x.dtype) if isinstance(baselines, Tensor) else None
    out = []
    for k, xi in enumerate(ctx.x):
        gen = torch.Generator().manual_seed(seed)
        base = None if refs is not None or baselines == "uniform" else baseline_image(ctx, xi[None], baselines)[0]
        total = torch.zeros_like(xi)
        done = k * samples
        for n in chunk_sizes(samples, ctx.batch_size):
            ctx.advance(done, len(ctx.x) * samples)
            points, delta = _shap_samples(ctx, xi, base, refs, n, stdev, gen)
            total += (ctx.input_grad(points, ctx.target.image(k, n)) * delta).sum(0)
            done += n
        out.append(total / samples)
    return torch.stack(out)
