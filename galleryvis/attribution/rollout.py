"""Transformer-native maps from the attention probabilities (:func:`galleryvis.engine.changes.attention.attentions`):
attention rollout and the gradient-weighted attention of Chefer et al. Each returns the class
token's row on the patch grid, (N, 1, h, w)."""
from __future__ import annotations

import torch
from torch import Tensor

from galleryvis.engine.changes.attention import attentions
from galleryvis.engine import Context
from galleryvis.errors import LayerError
from galleryvis.engine.changes import conv_sizes
from galleryvis.engine.layers import Patches
from galleryvis.registry import technique


def _attention(ctx: Context, name: str, grads: bool) -> tuple[list[Tensor], list[Tensor], Patches]:
    """One forward of the chunk with every attention captured (N, heads, T, T), their gradients
    of the target's scores when ``grads``, and the patches of that forward."""
    x = ctx.x.detach().requires_grad_(grads)
    with torch.set_grad_enabled(grads), conv_sizes(ctx.model) as sizes, attentions(ctx.model) as store:
        score = ctx.target.score(ctx.output(x)).sum()
        maps = list(store)
        g = list(torch.autograd.grad(score, maps)) if grads else []
    n = ctx.x.shape[0]
    for a in maps:
        if a.shape[0] != n or a.shape[-1] != maps[0].shape[-1]:
            raise LayerError(f"{name}: attention of shape {tuple(a.shape)} for {n} images is not global "
                             f"self-attention over one token sequence (windowed, as in Swin?)")
    return [a.detach() for a in maps], [t.detach() for t in g], Patches.of(ctx.model, sizes)


def _class_row(ctx: Context, name: str, r: Tensor, patches: Patches) -> Tensor:
    """The class token's row of ``r`` (N, T, T) without the prefix tokens, on the patch grid."""
    grid = patches.grid(name, tuple(r.shape), r.shape[0])
    if grid.prefix == 0:
        raise LayerError(f"{name}: the model has no class token whose row could be read")
    return r[:, 0, grid.prefix:].reshape(r.shape[0], 1, *grid.size)


@technique("attention_rollout", output="cam", title="Attention Rollout", needs=("passes",), attention=True,
           choices={"head_fusion": ("mean", "max", "min")},
           paper="Abnar & Zuidema 2020, https://arxiv.org/abs/2005.00928",
           summary="The class token's attention, propagated through every layer with the residual connection.")
def attention_rollout(ctx: Context, *, head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """R = prod_l normalize_rows((fuse_heads(A_l) + I) / 2), the last layer leftmost; the lowest
    ``discard_ratio`` of each fused map's entries are zeroed first (the class token's attention
    to itself kept)."""
    if not 0 <= discard_ratio < 1:
        raise ValueError(f"attention_rollout: discard_ratio must be in [0, 1), got {discard_ratio}")
    maps, _, patches = _attention(ctx, "attention_rollout", grads=False)
    with torch.inference_mode():
        eye = torch.eye(maps[0].shape[-1], device=maps[0].device, dtype=maps[0].dtype)
        r = eye.expand_as(maps[0][:, 0]).clone()
        for a in maps:
            fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]
            if discard_ratio:
                flat = fused.flatten(1)
                low = flat.topk(int(flat.shape[1] * discard_ratio), dim=1, largest=False).indices
                keep = torch.ones_like(flat).scatter_(1, low, 0.0)
                keep[:, 0] = 1.0
                fused = (flat * keep).view_as(fused)
            a = (fused + eye) / 2
            r = (a / a.sum(-1, keepdim=True)) @ r
    return _class_row(ctx, "attention_rollout", r, patches)


@technique("attention_gradient", output="cam", title="Attention × Gradient", needs=("passes",), attention=True,
           paper="Chefer et al. 2021, https://arxiv.org/abs/2103.15679",
           summary="Gradient-weighted attention (positive part, mean over heads), accumulated over the layers.")
def attention_gradient(ctx: Context) -> Tensor:
    """R = I; for each layer R <- R + mean_heads((dy/dA * A)^+) R (Chefer et al.'s generic
    attention-model explainability, self-attention rule)."""
    maps, grads, patches = _attention(ctx, "attention_gradient", grads=True)
    eye = torch.eye(maps[0].shape[-1], device=maps[0].device, dtype=maps[0].dtype)
    r = eye.expand_as(maps[0][:, 0]).clone()
    for a, g in zip(maps, grads):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    return _class_row(ctx, "attention_gradient", r, patches)
