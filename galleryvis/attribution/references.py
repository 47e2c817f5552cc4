"""Reference examples of concepts (Achtibat et al. 2023, https://doi.org/10.1038/s42256-023-00711-8,
section "Relevance maximization"): which images of a reference set a layer's channel matters most
for, and where in each.

:func:`reference_examples` ranks the images of a set for every channel of a layer, as zennit-crp's
``FeatureVisualization`` does: by the channel's relevance (relevance maximization: the LRP of each
image's target brought to the layer, :mod:`.lrp`) or by its activation (activation maximization),
summed over the layer's positions (``max_target="sum"``) or at its largest position (``"max"``),
and with ``abs_norm`` divided by the sum of the absolute values of all the layer's channels of
that image. :func:`reference_heatmaps` gives the heatmap of a channel on an image, the LRP from the
layer down started from the channel's own activation (at one position: its receptive field), and
:func:`crop_box` the box of an image where that heatmap lies (zennit-crp's ``rf`` crop).
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis import registry, targets
from galleryvis.attribution.concepts import layer_call
from galleryvis.attribution.lrp import traced
from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur
from galleryvis.errors import LayerError

#: What an image's value for a channel is: its relevance or its activation at the layer.
Mode = Literal["relevance", "activation"]
#: zennit-crp's stabilizer of ``abs_norm`` and of the heatmap's max-normalization.
_STABILIZER = 1e-10


@dataclass(frozen=True)
class References:
    """The reference examples of every channel of ``layer`` in a set of N images, best first
    (int64 / float32 CPU tensors, ``top`` = min(``top``, N) columns).

    ``indices`` (C, top): the images (positions in the set) of each channel. ``values`` (C, top):
    their values (relevance or activation, reduced over positions, divided as ``abs_norm`` says).
    ``positions`` (C, top): the position on the layer's grid (flattened) where that image's
    value of the channel is largest, the neuron whose receptive field :func:`reference_heatmaps`
    can start from.
    """

    layer: str
    mode: str
    indices: Tensor
    values: Tensor
    positions: Tensor


def reference_examples(
    model: nn.Module,
    x: Tensor,
    target: targets.Target = None,
    layer: str | None = None,
    *,
    mode: Mode = "relevance",
    top: int = 8,
    max_target: Literal["sum", "max"] = "sum",
    abs_norm: bool = True,
    batch_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **params: Any,
) -> References:
    """The ``top`` images of ``x`` (a reference set of normalized images, (N, C, H, W)) for every
    channel of ``layer`` (default: the CAM default layer), by ``mode``: ``"relevance"``, the
    relevance of each image's ``target`` (as :func:`galleryvis.attribute` takes it; None: its
    top-1 class) at the layer, by LRP with ``params`` (``rule``, ``epsilon``, ...); or
    ``"activation"``, the layer's output (``target`` unused). A value is summed over the layer's
    positions (``max_target="sum"``) or taken at the largest (``"max"``); with ``abs_norm``, each
    image's values are divided by the sum of their absolute values over the layer's channels.
    A value never depends on the other images of the set; the model comes back as it went in.
    """
    if mode not in ("relevance", "activation"):
        raise ValueError(f"reference_examples: mode must be 'relevance' or 'activation', not {mode!r}")
    if max_target not in ("sum", "max"):
        raise ValueError(f"reference_examples: max_target must be 'sum' or 'max', not {max_target!r}")
    if isinstance(top, bool) or not isinstance(top, Integral) or top < 1:
        raise ValueError(f"reference_examples: top must be an int >= 1, got {top!r}")
    resolved = registry.resolve_params(registry.get("lrp"), params)
    values, positions = [], []
    with layer_call(model, x, target, layer, batch_size, mean, std) as call:
        for ctx in call.contexts():
            xs, out, at = traced(ctx, call.layer, **resolved)
            assert at is not None
            if mode == "relevance":
                (per,) = torch.autograd.grad(out, at, ctx.target.relevance(out), allow_unused=True)
                if per is None:
                    raise LayerError(f"layer {call.layer!r} carries no relevance to the output")
            else:
                per = at
            grid = ctx.grid(call.layer)
            flat = grid.channels_at_1(per.detach()).flatten(2).float()  # (n, C, positions)
            where = flat.argmax(2)
            v = flat.sum(2) if max_target == "sum" else flat.amax(2)
            if abs_norm:
                v = v / (v.abs().sum(1, keepdim=True) + _STABILIZER)
            values.append(v.cpu())
            positions.append(where.cpu())
        name = call.layer
    v, p = torch.cat(values).T, torch.cat(positions).T  # (C, N)
    order = v.argsort(dim=1, descending=True, stable=True)[:, :top]
    return References(name, mode, order, v.take_along_dim(order, 1), p.take_along_dim(order, 1))


def reference_heatmaps(
    model: nn.Module,
    x: Tensor,
    channel: int,
    layer: str | None = None,
    positions: Sequence[int] | Tensor | None = None,
    *,
    batch_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **params: Any,
) -> Tensor:
    """The heatmap of ``channel`` of ``layer`` on each image of ``x``, (N, H, W) float32 CPU: the
    LRP (``params`` as for :func:`reference_examples`) from the layer down to the pixels, started
    from the channel's activation at every position, or with ``positions`` (one flattened grid
    position per image, :attr:`References.positions`) at that position alone, summed over the
    colour channels (zennit-crp's reference heatmaps, with ``rf`` for ``positions``)."""
    resolved = registry.resolve_params(registry.get("lrp"), params)
    wanted = None if positions is None else torch.as_tensor(positions, dtype=torch.long).flatten()
    if wanted is not None and wanted.numel() != x.shape[0]:
        raise ValueError(f"reference_heatmaps: {wanted.numel()} positions for {x.shape[0]} images")
    maps = []
    # no target is read (the LRP starts at the layer): class 0 spares the forward that finds top-1 classes
    with layer_call(model, x, 0, layer, batch_size, mean, std) as call:
        start = 0
        for ctx in call.contexts():
            xs, _, at = traced(ctx, call.layer, **resolved)
            assert at is not None
            grid = ctx.grid(call.layer)
            count = grid.channels
            grid.check_channels(torch.tensor([[channel]]), call.layer)
            n = xs.shape[0]
            keep = grid.per_channel(F.one_hot(torch.full((n,), int(channel), device=xs.device), count).to(at.dtype))
            if wanted is not None:  # one position of the grid: (n, 1, positions...) with channels first
                grid_shape = grid.channels_at_1(at).shape[2:]
                one = F.one_hot(wanted[start:start + n].to(xs.device), grid_shape.numel()).to(at.dtype)
                one = one.view(n, 1, *grid_shape)
                keep = keep * (one if grid.layout == "channels_first" else one.movedim(1, -1))
            (r,) = torch.autograd.grad(at, xs, at.detach() * keep)
            maps.append(r.detach().sum(1).float().cpu())
            start += n
    return torch.cat(maps)


def crop_box(heatmap: Tensor, threshold: float = 0.1, kernel: int = 19) -> tuple[int, int, int, int]:
    """Where a heatmap (H, W) lies, as zennit-crp crops a reference example: ``(row0, row1, col0,
    col1)`` (inclusive) of the pixels where the heatmap, blurred by a Gaussian of ``kernel`` taps
    (torchvision's default sigma for it) and divided by its maximum, exceeds ``threshold``; the
    whole image when none does."""
    if not 0 <= threshold < 1:
        raise ValueError(f"crop_box: threshold must be in [0, 1), got {threshold}")
    blurred = gaussian_blur(heatmap[None, None].float(), kernel, 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8)[0, 0]
    rows, cols = torch.where(blurred / (blurred.max() + _STABILIZER) > threshold)
    h, w = heatmap.shape
    if not len(rows) or (rows.min() >= rows.max() and cols.min() >= cols.max()):
        return 0, h - 1, 0, w - 1
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
