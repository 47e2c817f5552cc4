"""Image parameterizations: the tensor the optimizer updates, and how it becomes an image in [0, 1].

``pixel``: the seed's parameterization, the image itself (projected back into [0, 1] after each
step by :meth:`Param.project`). ``fft``: lucid/lucent's decorrelated parameterization (Olah et
al. 2017, "Feature Visualization"): a Fourier spectrum scaled by 1/frequency, inverse FFT, a
fixed colour-decorrelation matrix and a sigmoid. Gradient steps on the spectrum change low
frequencies about as fast as high ones, so the optimum is found without the high-frequency
patterns that pixel-space ascent produces.

Initial values are drawn from one generator per item (see :mod:`.transforms`), so a batch starts
from the same images as the items one by one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

#: lucid's square root of the ImageNet colour correlation matrix (``_linear_decorrelate_color``).
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                           [0.27, 0.00, -0.05],
                                           [0.27, -0.09, 0.03]])
_COLOR = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


@dataclass
class Param:
    """An optimizable tensor ``tensor`` and ``image()``: the (N,3,H,W) image in [0, 1] it gives."""

    tensor: Tensor
    to_image: Callable[[Tensor], Tensor]
    clamp: bool = False

    def image(self) -> Tensor:
        """The current image, differentiable in :attr:`tensor`."""
        return self.to_image(self.tensor)

    @torch.no_grad()
    def project(self) -> None:
        """Keep a pixel parameterization inside [0, 1] (nothing to do for sigmoid-bounded ones)."""
        if self.clamp:
            self.tensor.clamp_(0, 1)


def _stack(draw: Callable[[torch.Generator], Tensor], gens: Sequence[torch.Generator],
           device: torch.device) -> Tensor:
    return torch.cat([draw(g) for g in gens]).to(device)


def pixel(gens: Sequence[torch.Generator], size: tuple[int, int], device: torch.device,
          low: float = 150 / 255, high: float = 180 / 255) -> Param:
    """The seed's start: uniform noise in [low, high] (its uint8 150..180), optimized directly."""
    h, w = size
    t = _stack(lambda g: torch.rand(1, 3, h, w, generator=g) * (high - low) + low, gens, device)
    return Param(t.requires_grad_(True), lambda t: t, clamp=True)


def from_image(x01: Tensor) -> Param:
    """Start from given images in [0, 1] (deep dream, class visualization from a photo)."""
    return Param(x01.detach().clone().clamp(0, 1).requires_grad_(True), lambda t: t, clamp=True)


def rfft2d_freqs(h: int, w: int) -> Tensor:
    """|frequency| of each coefficient of ``torch.fft.rfft2`` for an (h, w) image."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def fft(gens: Sequence[torch.Generator], size: tuple[int, int], device: torch.device,
        sd: float = 0.01, decay_power: float = 1.0, start: Tensor | None = None) -> Param:
    """lucent's ``fft_image`` + ``to_valid_rgb(decorrelate=True)``: starts near uniform grey, or
    at the images ``start`` (N,3,H,W) in [0, 1] (the spectrum that gives them, with values
    within 1e-3 of 0 or 1 moved there: the sigmoid reaches neither)."""
    h, w = size
    freqs = rfft2d_freqs(h, w)
    scale = (1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power).to(device)
    color = _COLOR.to(device)
    if start is None:
        spectrum = _stack(lambda g: torch.randn(1, 3, h, w // 2 + 1, 2, generator=g) * sd, gens, device)
    else:
        pre = torch.logit(start.detach().to(device).clamp(1e-3, 1 - 1e-3))
        pre = torch.einsum("ndhw,cd->nchw", pre, torch.linalg.inv(color)) * 4.0
        spectrum = torch.view_as_real(torch.fft.rfft2(pre, norm="ortho") / scale).contiguous()

    def to_image(t: Tensor) -> Tensor:
        img = torch.fft.irfft2(torch.view_as_complex(t) * scale, s=(h, w), norm="ortho") / 4.0
        img = torch.einsum("nchw,dc->ndhw", img, color)
        return torch.sigmoid(img)

    return Param(spectrum.requires_grad_(True), to_image)
