"""Deep Feature Factorization (Collins et al. 2018, https://arxiv.org/abs/1806.10206): a layer's
activations over an image's positions split by non-negative matrix factorization into a few
factors ("concepts"), each a map over the layer's grid and a channel vector that the rest of the
model scores like an image.

As pytorch-grad-cam's ``DeepFeatureFactorization`` does: each channel is shifted by its minimum
over the positions (so the matrix is non-negative; the shift is added back to the factor's
channel vector), and the (channels x positions) matrix is factorized by scikit-learn's ``NMF``
algorithm (``init="random"``, ``random_state=0``: cyclic coordinate descent on the Frobenius
loss, at most 200 sweeps, stopped when the projected gradient falls below 1e-4 of the first
sweep's), written here in torch with the same initialization. Each image is factorized alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from galleryvis import targets
from galleryvis.attribution.concepts import layer_call
from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD, Context
from galleryvis.engine.layers import Grid
from galleryvis.hooks import replaced_output
from galleryvis.registry import technique

#: scikit-learn NMF's defaults, which pytorch-grad-cam keeps.
MAX_ITER = 200
TOL = 1e-4


def nmf(x: Tensor, n_components: int, *, seed: int = 0, max_iter: int = MAX_ITER,
        tol: float = TOL) -> tuple[Tensor, Tensor]:
    """Non-negative ``x`` (m, p) ~ ``w`` (m, k) @ ``h`` (k, p), as scikit-learn's
    ``NMF(n_components=k, init="random", random_state=seed)`` computes it: ``h`` then ``w`` drawn
    from numpy's ``RandomState(seed)`` normal, absolute, times sqrt(mean(x) / k); then sweeps of
    cyclic coordinate descent (all of ``w``'s columns in order, then ``h``'s rows), each element
    moved to the minimum of the loss along it and clipped at 0, until the sum of the projected
    gradients' magnitudes in a sweep is at most ``tol`` times the first sweep's or ``max_iter``
    sweeps ran. In ``x``'s dtype and on its device."""
    m, p = x.shape
    avg = np.sqrt(float(x.mean()) / n_components)
    rng = np.random.RandomState(seed)
    h = np.abs(avg * rng.standard_normal(size=(n_components, p)))
    w = np.abs(avg * rng.standard_normal(size=(m, n_components)))
    w_t, h_t = (torch.from_numpy(a).to(x.device, x.dtype) for a in (w, h.T))
    first = None
    for _ in range(max_iter):
        violation = float(_sweep(w_t, h_t, x) + _sweep(h_t, w_t, x.T))  # one sync per sweep pair
        first = violation if first is None else first
        if first == 0 or violation / first <= tol:
            break
    return w_t, h_t.T


def _sweep(w: Tensor, h_t: Tensor, x: Tensor) -> Tensor:
    """One coordinate-descent pass over the columns of ``w`` (in place) for ``x ~ w @ h_t.T``;
    the sum of the projected gradients' magnitudes before each column's update. A column whose
    curvature is 0 stays as it is."""
    hht, xht = h_t.T @ h_t, x @ h_t
    violation = x.new_zeros(())
    for t in range(w.shape[1]):
        grad = w @ hht[:, t] - xht[:, t]
        violation += torch.where(w[:, t] == 0, grad.clamp(max=0), grad).abs().sum()
        hess = hht[t, t]
        w[:, t] = torch.where(hess != 0, (w[:, t] - grad / hess).clamp(min=0), w[:, t])
    return violation


@dataclass(frozen=True)
class Factors:
    """The factors of N images at ``layer``, k per image (float32 CPU tensors).

    ``maps`` (N, k, h, w): each factor's weight at the layer's positions (NMF's ``H``).
    ``concepts`` (N, k, C): each factor's channel vector (NMF's ``W`` plus the channels' shift).
    ``scores`` (N, k, ...): the model's raw output (logits) with every position of the layer
    holding the factor's channel vector, i.e. the head applied to it (None when the model's output
    is no tensor). ``best`` (N,): the factor whose output scores the target highest."""

    layer: str
    maps: Tensor
    concepts: Tensor
    scores: Tensor | None
    best: Tensor

    def top_classes(self, top_k: int = 2) -> tuple[Tensor, Tensor]:
        """Each factor's ``top_k`` classes by the softmax of its scores: (indices, probabilities),
        each (N, k, top_k)."""
        if self.scores is None or self.scores.dim() != 3:
            raise ValueError("top_classes needs a model whose output is logits (N, classes)")
        softmax = targets.Class.probabilities(self.scores.flatten(0, 1)).view_as(self.scores)
        probabilities, indices = softmax.topk(top_k, dim=-1)
        return indices, probabilities


def factorize(
    model: nn.Module,
    x: Tensor,
    layer: str | None = None,
    n_components: int = 4,
    target: targets.Target = None,
    *,
    batch_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Factors:
    """Deep Feature Factorization of each image of ``x`` (normalized, (N, C, H, W)) at ``layer``
    (a dotted module name; default: the CAM default layer) into ``n_components`` factors, with
    each factor's class scores and the factor that explains ``target`` best (the one the ``dff``
    technique shows; ``target`` as :func:`galleryvis.attribute` takes it, None: each image's top-1
    class). The model comes back as it went in, also after an exception."""
    _check_components(n_components)
    parts = []
    with layer_call(model, x, target, layer, batch_size, mean, std) as call:
        for ctx in call.contexts():
            parts.append(_factors(ctx, call.layer, int(n_components)))
    maps, concepts, outputs, best = zip(*parts)
    scores = None if any(o is None for o in outputs) else torch.cat(outputs)
    return Factors(call.layer, torch.cat(maps), torch.cat(concepts), scores, torch.cat(best))


def _check_components(n_components: int) -> None:
    if isinstance(n_components, bool) or not isinstance(n_components, Integral) or n_components < 1:
        raise ValueError(f"dff: n_components must be an int >= 1, got {n_components!r}")


def _factors(ctx: Context, layer: str, k: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """(maps, concepts, outputs, best) of one chunk: one NMF per image, then the model with the
    layer's positions all set to a factor's channel vector, ``k`` copies of the image at once."""
    grid = ctx.grid(layer)
    acts = grid.nchw(ctx.forward().acts[layer])
    acts = acts.to(torch.promote_types(acts.dtype, torch.float32))  # half precision factorized in float32
    n, c, h, w = acts.shape
    maps, concepts, outputs, best = [], [], [], []
    for i in range(n):
        a = torch.nan_to_num(acts[i].reshape(c, h * w), nan=0.0)
        shift = a.amin(1, keepdim=True)
        w_, h_ = nmf(a - shift, k)
        vectors = (w_ + shift).T  # (k, C)
        maps.append(h_.reshape(k, h, w))
        concepts.append(vectors)
        out = _factor_outputs(ctx, layer, grid, i, vectors)
        outputs.append(out if isinstance(out, Tensor) else None)
        best.append(ctx.target.image(i, k).score(out).float().argmax())
    cpu = [torch.stack(t).float().cpu() for t in (maps, concepts)]
    kept = None if any(o is None for o in outputs) else torch.stack(outputs).float().cpu()  # type: ignore[misc]
    return cpu[0], cpu[1], kept, torch.stack(best).cpu()


def _factor_outputs(ctx: Context, layer: str, grid: Grid, i: int, vectors: Tensor) -> object:
    """The model's raw output for ``len(vectors)`` copies of image ``i`` with ``layer``'s output
    replaced by each vector at every position (and token)."""
    def fill(out: Tensor) -> Tensor:
        return grid.per_channel(vectors.to(out.dtype)).expand_as(out).contiguous()

    xi = ctx.x[i]
    with torch.inference_mode(), replaced_output(ctx.model, layer, fill):
        return ctx.output(xi[None].expand(len(vectors), *xi.shape))


@technique("dff", output="cam", layer="one", title="Deep Feature Factorization", needs=("forward", "passes"),
           paper="Collins et al. 2018, https://arxiv.org/abs/1806.10206",
           summary="The map of the non-negative factor of the layer's activations whose channel vector "
                   "the model scores highest for the target.")
def dff(ctx: Context, *, layer: str, n_components: int = 4) -> Tensor:
    """The layer's activations factorized into ``n_components`` factors (:func:`factorize`); the
    map (N, 1, h, w) of the factor whose channel vector, put at every position of the layer, gives
    the target the highest score."""
    _check_components(n_components)
    maps, _, _, best = _factors(ctx, layer, n_components)
    return maps[torch.arange(len(best)), best][:, None].to(ctx.x.device)
