"""Random image transforms for feature visualization, each item drawing from its own generator.

Every function takes ``gens``, one ``torch.Generator`` per batch item (CPU generators, so a seed
gives the same draws on every device). Item ``i`` uses only ``gens[i]``, so a batch gives the same
result as the items one by one: nothing depends on batch position and no global RNG is touched.
All transforms are differentiable in the image.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: lucid/lucent's ``standard_transforms``: scales 0.9 .. 1.1 and angles -10 .. 10 degrees with 0
#: five extra times, sampled uniformly from these lists.
STANDARD_SCALES: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
STANDARD_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(-10, 11)) + (0.0,) * 5


def _pick(options: Sequence[float], gen: torch.Generator) -> float:
    return float(options[int(torch.randint(len(options), (1,), generator=gen))])


def _shift(limit: int, gen: torch.Generator) -> int:
    """An integer in [-limit, limit]."""
    return int(torch.randint(-limit, limit + 1, (1,), generator=gen)) if limit > 0 else 0


def roll(x: Tensor, gens: Sequence[torch.Generator], max_shift: int) -> Tensor:
    """Shift item ``i`` cyclically by its own random (dy, dx) in [-max_shift, max_shift]^2."""
    if max_shift <= 0:
        return x
    out = []
    for i, g in enumerate(gens):
        dy, dx = _shift(max_shift, g), _shift(max_shift, g)
        out.append(torch.roll(x[i:i + 1], shifts=(dy, dx), dims=(2, 3)))
    return torch.cat(out)


def random_affine(x: Tensor, gens: Sequence[torch.Generator], *, pad: int = 12, jitter: int = 12,
                  scales: Sequence[float] = STANDARD_SCALES, angles: Sequence[float] = STANDARD_ANGLES,
                  fill: float = 0.5) -> Tensor:
    """lucent's standard transforms (pad, jitter, scale, rotate, jitter) as one resampling.

    ``x`` (N,C,H,W) is padded by ``pad`` pixels of value ``fill``, then each item is translated by
    up to ``jitter`` pixels, scaled and rotated about the centre (bilinear ``grid_sample``). The
    output is (N,C,H+2*pad,W+2*pad). Composing the steps into one affine map resamples once
    instead of three times; lucent's two jitters (8 then 4 pixels) become one of up to 12.
    """
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode="constant", value=fill)
    n, _, h, w = x.shape
    thetas = []
    for g in gens:
        dy, dx = _shift(jitter, g), _shift(jitter, g)
        s = _pick(scales, g)
        a = math.radians(_pick(angles, g))
        c, si = math.cos(a), math.sin(a)
        # output pixel p -> input pixel R p / s + t, written in affine_grid's [-1, 1] coordinates
        thetas.append([[c / s, -si * h / w / s, 2 * dx / w],
                       [si * w / h / s, c / s, 2 * dy / h]])
    theta = torch.tensor(thetas, dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
