"""Class activation maps: Grad-CAM and its variants, Score-CAM, Eigen-CAM, guided Grad-CAM.

Each returns (N, 1, h, w) at the layer's resolution (the engine upsamples bilinearly), except
paper Score-CAM, which returns the input size because its ReLU follows the upsampling. A layer
may output (N, C, H, W), channels last (N, H, W, C, Swin), tokens (N, T, D, ViT) or a dict of
maps (a detector's FPN, ``backbone``): the :class:`~galleryvis.engine.layers.Grid` of
:meth:`Context.grid` maps it to (N, C, h, w) first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from galleryvis.engine import Context
from galleryvis.registry import technique
from galleryvis.tasks import TASKS


def _layer(ctx: Context, layer: str, mode: str = "plain") -> tuple[Tensor, Tensor]:
    """The layer's activations and gradients on the image's grid, (N, C, h, w) each."""
    p = ctx.backward(mode)
    grid = ctx.grid(layer)
    return grid.activations(p.acts[layer]), grid.nchw(p.grads[layer])


def layer_acts(ctx: Context, layer: str) -> Tensor:
    """The layer's activations on the image's grid, (N, C, h, w), from the shared forward."""
    return ctx.grid(layer).activations(ctx.forward().acts[layer])


def weighted_cam(acts: Tensor, weights: Tensor) -> Tensor:
    """ReLU of the channel sum of weights * activations, the sum starting from zeros (paper)."""
    return F.relu((weights * acts).sum(1, keepdim=True))


@technique("gradcam", output="cam", layer="one", title="Grad-CAM", needs=("layer_grad",),
           tasks=TASKS,
           paper="Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391",
           summary="Activations weighted by their spatially averaged gradients.")
def gradcam(ctx: Context, *, layer: str) -> Tensor:
    """ReLU(sum_k mean(dy/dA_k) A_k)."""
    a, g = _layer(ctx, layer)
    return weighted_cam(a, g.mean((2, 3), keepdim=True))


@technique("gradcam_pp", output="cam", layer="one", title="Grad-CAM++", needs=("layer_grad",),
           tasks=TASKS,
           paper="Chattopadhyay et al. 2018, https://arxiv.org/abs/1710.11063",
           summary="Grad-CAM with pixel-wise weights from higher-order gradient terms (exponential score).")
def gradcam_pp(ctx: Context, *, layer: str) -> Tensor:
    """Weights sum_ij alpha_ij ReLU(g_ij), alpha from the closed form for an exponential score."""
    a, g = _layer(ctx, layer)
    g2, g3 = g.pow(2), g.pow(3)
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return weighted_cam(a, (alpha * F.relu(g)).sum((2, 3), keepdim=True))


@technique("xgradcam", output="cam", layer="one", title="XGrad-CAM", needs=("layer_grad",),
           paper="Fu et al. 2020, https://arxiv.org/abs/2008.02312",
           summary="Grad-CAM with gradients weighted by normalized activations (axiom-based).")
def xgradcam(ctx: Context, *, layer: str) -> Tensor:
    """Weights sum_ij g_ij A_ij / (sum_ij A_ij + eps)."""
    a, g = _layer(ctx, layer)
    w = (g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7)
    return weighted_cam(a, w)


@technique("hirescam", output="cam", layer="one", title="HiResCAM", needs=("layer_grad",),
           tasks=TASKS,
           paper="Draelos & Carin 2020, https://arxiv.org/abs/2011.08891",
           summary="Element-wise gradient times activation, summed over channels (no averaging).")
def hirescam(ctx: Context, *, layer: str) -> Tensor:
    """ReLU(sum_k g_k * A_k)."""
    a, g = _layer(ctx, layer)
    return F.relu((g * a).sum(1, keepdim=True))


@technique("layercam", output="cam", layer="many", title="LayerCAM", needs=("layer_grad",),
           tasks=TASKS,
           paper="Jiang et al. 2021, http://mmcheng.net/mftp/Papers/21TIP_LayerCAM.pdf",
           summary="Activations weighted by their positive gradients, element-wise; several layers fused.")
def layercam(ctx: Context, *, layer: tuple[str, ...]) -> Tensor:
    """ReLU(sum_k ReLU(g_k) * A_k) per layer. With several layers each map is upsampled to the
    input size, min-max normalized and the maps are averaged (pytorch-grad-cam's fusion)."""
    maps = []
    for name in layer:
        a, g = _layer(ctx, name)
        maps.append(F.relu((F.relu(g) * a).sum(1, keepdim=True)))
    if len(maps) == 1:
        return maps[0]
    size = ctx.x.shape[-2:]
    ups = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
    return torch.stack([_minmax(u) for u in ups]).mean(0)


def _minmax(m: Tensor) -> Tensor:
    """Each map scaled to [0, 1]."""
    lo = m.amin((1, 2, 3), keepdim=True)
    return (m - lo) / (m.amax((1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)


@technique("eigencam", output="cam", layer="one", title="Eigen-CAM", needs=("forward",),
           tasks=TASKS,
           paper="Muhammad & Yeasin 2020, https://arxiv.org/abs/2008.00299",
           summary="Projection of the activations on their first principal component (no gradients, class-agnostic).")
def eigencam(ctx: Context, *, layer: str) -> Tensor:
    """First right-singular vector of the centred (HW x C) activation matrix, sign chosen so the
    map correlates positively with the channel-summed activations, then ReLU."""
    a = layer_acts(ctx, layer)
    n, c, h, w = a.shape
    flat = a.permute(0, 2, 3, 1).reshape(n, h * w, c).float()
    centred = flat - flat.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = (centred @ vh[:, 0, :, None]).reshape(n, 1, h, w)
    ref = a.sum(1, keepdim=True)  # proj has zero mean already (centred data)
    sign = torch.sign((proj * (ref - ref.mean((2, 3), keepdim=True))).sum((1, 2, 3)))
    return F.relu(proj * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None, None, None])


@technique("scorecam", output="cam", layer="one", choices={"weighting": ("paper", "gradcam")},
           title="Score-CAM", needs=("forward", "passes"),
           paper="Wang et al. 2020, https://arxiv.org/abs/1910.01279",
           summary="Activations weighted by the target's softmax probability when each activation map masks the input.")
def scorecam(ctx: Context, *, layer: str, weighting: str = "paper") -> Tensor:
    """For each channel: upsample, min-max normalize, mask the input, read the target's
    confidence (a class's softmax probability); those confidences weight the channels, and the
    weighted sum is upsampled to the input size before the ReLU; constant channels are skipped
    (weight 0); both as the official code does. ``weighting="gradcam"`` reproduces
    pytorch-grad-cam: corner-aligned upsampling of the masks, every channel, a softmax of the
    target's raw scores (logits) across channels, and the ReLU at the layer's resolution. Masks
    are built ``forward_batch_size`` at a time, never all."""
    acts = layer_acts(ctx, layer)
    paper = weighting == "paper"
    size = ctx.x.shape[-2:]
    weights = torch.zeros(acts.shape[:2], device=acts.device)
    with torch.inference_mode():
        for i, xi in enumerate(ctx.x):
            live = acts[i].amax((1, 2)) > acts[i].amin((1, 2))
            if not paper:
                live = torch.ones_like(live)
            for chunk in live.nonzero().flatten().split(ctx.forward_batch_size):
                ctx.advance(i * acts.shape[1] + int(chunk[0]), acts.shape[0] * acts.shape[1])
                up = F.interpolate(acts[i, chunk, None], size=size, mode="bilinear", align_corners=not paper)
                lo = up.amin((2, 3), keepdim=True)
                mask = (up - lo) / (up.amax((2, 3), keepdim=True) - lo).clamp_min(1e-8)
                target, output = ctx.target.image(i, len(chunk)), ctx.output(xi[None] * mask)
                weights[i, chunk] = (target.confidence(output) if paper else target.score(output)).float()
            if not paper:
                weights[i] = weights[i].softmax(0)
    cam = (weights[:, :, None, None].to(acts.dtype) * acts).sum(1, keepdim=True)
    if paper:  # the official code upsamples before the ReLU (grad-cam after it)
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return F.relu(cam)


@technique("guided_gradcam", output="input", layer="one", signed=True, title="Guided Grad-CAM",
           needs=("input_grad", "layer_grad"),
           paper="Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391",
           summary="Guided backprop multiplied element-wise by the upsampled Grad-CAM.")
def guided_gradcam(ctx: Context, *, layer: str) -> Tensor:
    """guided_backprop * upsample(gradcam), sharing both techniques' passes."""
    cam = F.interpolate(ctx.run("gradcam", layer), size=ctx.x.shape[-2:], mode="bilinear", align_corners=False)
    return ctx.run("guided_backprop") * cam
