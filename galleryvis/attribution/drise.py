"""D-RISE (Petsiuk et al. 2021): RISE for object detectors, weighted by a detection's similarity.

The masked copies of an image go through the detector ``ctx.forward_batch_size`` at a time
under ``torch.inference_mode``; the objective (:class:`galleryvis.targets.Detection`) reads
each copy's detections and gives D-RISE's similarity with the reference detection.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from galleryvis.engine import Context
from galleryvis.registry import technique
from galleryvis.attribution.perturbation import confidence_weighted_masks, rise_masks


def _given_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Explicit masks (M, 1, H, W) or (M, H, W) in [0, 1], resized bilinearly to ``size``."""
    m = masks[:, None] if masks.dim() == 3 else masks
    if m.dim() != 4 or m.shape[1] != 1 or not m.is_floating_point() or len(m) == 0:
        raise ValueError(f"drise: masks must be a float tensor (M, 1, H, W) or (M, H, W), got "
                         f"{m.dtype} {tuple(masks.shape)}")
    if float(m.min()) < 0 or float(m.max()) > 1:
        raise ValueError(f"drise: masks must lie in [0, 1], got [{float(m.min()):.3g}, {float(m.max()):.3g}]")
    if tuple(m.shape[-2:]) != size:
        m = F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)
    return m


@technique("drise", output="cam", title="D-RISE", group="perturbation", needs=("passes",), stochastic=True,
           tasks=("detection",), tensors=("masks",),
           paper="Petsiuk et al. 2021, https://arxiv.org/abs/2006.03204",
           summary="Random masks weighted by how well the detector still finds the explained detection on the masked image.")
def drise(ctx: Context, *, masks: int = 1000, cells: int = 16, p: float = 0.5, seed: int = 0) -> Tensor:
    """sum_i w_i M_i / masks, w_i = max_j IoU(L_t, L_j) cos(P_t, P_j) O_j over the detections
    d_j of the image times mask M_i (the objective's confidence; ``O_j`` where the detector
    gives an objectness): ``masks`` binary ``cells`` x ``cells`` grids (each cell kept with
    probability ``p``), upsampled bilinearly to (cells + 1) cells of ceil(H / cells) pixels,
    shifted by a random offset within one cell and cropped, as RISE draws them (CPU generator
    seeded with ``seed``, the same for every image); or ``masks`` a float tensor (M, 1, H, W)
    or (M, H, W) in [0, 1], resized bilinearly to each image. The image (pixels in [0, 1], as
    torchvision's detectors take them) is multiplied by each mask: masked pixels are black.
    The paper's sum divided by the number of masks (a constant factor). (N, 1, H, W)."""
    size = tuple(ctx.x.shape[-2:])
    if isinstance(masks, Tensor):
        given = _given_masks(masks, size)
        return confidence_weighted_masks(ctx, len(given), lambda chunk: given[chunk]) / len(given)
    return confidence_weighted_masks(ctx, masks, rise_masks("drise", masks, cells, p, seed, size)) / masks
