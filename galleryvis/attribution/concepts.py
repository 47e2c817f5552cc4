"""Concept Relevance Propagation (Achtibat et al. 2023, https://doi.org/10.1038/s42256-023-00711-8):
what the model saw, not only where. The relevance that the engine's LRP (:mod:`.lrp`) brings to a
layer is split by the layer's channels ("concepts"); each channel's share of it ranks them, and
each gets its conditional heatmap: the same LRP from that layer down to the pixels with the
relevance kept at that channel alone (only what flows through the layer, as zennit-crp's
``CondAttribution`` with ``exclude_parallel=True``: a skip connection around the layer carries
none).

:func:`concept_drop` asks whether a concept is real: how much the target's confidence drops when
the channel is zeroed at the layer, beside the median drop for random channels of that layer.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis import registry, targets
from galleryvis.engine.changes import prepared, replaced_output, resolve_layer
from galleryvis.engine.chunking import Chunking
from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD, Context, check_inputs, chunking_of, fast_layout, model_device
from galleryvis.errors import LayerError
from galleryvis.engine.layers import Grid, default_layer
from galleryvis.attribution.lrp import ATTENTION_RULES, RULES, lrp, traced
from galleryvis.registry import technique

#: Random channels whose median drop :func:`concept_drop` sets beside each concept's, by default.
RANDOM_CHANNELS = 16
#: The LRP's parameter defaults, which ``crp`` shares.
_LRP: dict[str, Any] = dict(lrp.__kwdefaults__ or {})


@dataclass(frozen=True)
class Concepts:
    """Concepts of a batch of N images at one ``layer``, k per image (float32 / int64 CPU tensors).

    ``channels`` (N, k): the layer's channels, each image's most relevant first (or those asked
    for, in that order). ``shares`` (N, k): each channel's relevance (summed over the layer's
    positions) over the sum of the absolute relevance of all the layer's channels (signed; the
    shares of all channels have absolute values summing to 1). ``maps`` (N, k, H, W): each
    channel's conditional heatmap at the input, summed over the colour channels. ``drops`` (N, k):
    the target's confidence minus its confidence with the channel zeroed at the layer;
    ``random_drops`` (N,): the median of that over ``random_channels`` channels drawn at random
    (both None, and ``random_channels`` 0, without ``drop``).
    """

    layer: str
    channels: Tensor
    shares: Tensor
    maps: Tensor
    drops: Tensor | None = None
    random_drops: Tensor | None = None
    random_channels: int = 0

    def __len__(self) -> int:
        return int(self.channels.shape[0])


def concepts(
    model: nn.Module,
    x: Tensor,
    target: targets.Target = None,
    layer: str | None = None,
    channels: Sequence[int] | None = None,
    top_k: int = 4,
    *,
    drop: bool = True,
    random_channels: int = RANDOM_CHANNELS,
    seed: int = 0,
    batch_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **params: Any,
) -> Concepts:
    """The ``top_k`` concepts (channels) of each image at ``layer`` by share of relevance, with
    their conditional heatmaps; with ``channels``, those channels for every image instead.

    ``x``: normalized images (N, C, H, W). ``target``: as :func:`galleryvis.attribute` takes it
    (None: each image's top-1 class). ``layer``: a dotted module name (default: the CAM default
    layer, :func:`galleryvis.engine.layers.default_layer`); a module called several times is read at
    its last call. ``params``: the LRP's parameters (``rule``, ``epsilon``, ``gamma``, ...), as
    ``galleryvis.attribute(..., "lrp", ...)`` takes them. ``drop``: also each concept's
    confidence drop and the median drop of ``random_channels`` random channels drawn with
    ``seed`` (:func:`concept_drop`; needs a target with a confidence). ``batch_size``, ``mean``,
    ``std``: as for :func:`galleryvis.attribute`. The model comes back as it went in, also
    after an exception.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1:
        raise ValueError(f"concepts: top_k must be an int >= 1, got {top_k!r}")
    asked = None if channels is None else _channel_list(channels)
    if drop:
        _check_random(random_channels)
    resolved = registry.resolve_params(registry.get("lrp"), params)
    parts: list[tuple[Tensor, ...]] = []
    with layer_call(model, x, target, layer, batch_size, mean, std, "concepts with drop=True" if drop else None) as call:
        for ctx in call.contexts():
            parts.append(_chunk(ctx, call.layer, asked, int(top_k), resolved, random_channels if drop else 0, seed))
    out = [torch.cat(p) for p in zip(*parts)]
    if not drop:
        return Concepts(call.layer, *out)
    assert call.grid is not None
    return Concepts(call.layer, *out, random_channels=min(random_channels, call.grid.channels))


def concept_drop(
    model: nn.Module,
    x: Tensor,
    channels: Sequence[int] | Tensor,
    target: targets.Target = None,
    layer: str | None = None,
    *,
    random_channels: int = RANDOM_CHANNELS,
    seed: int = 0,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Whether concepts are real: ``(drops, random_drops)``, float32 CPU. ``drops`` (N, k): the
    target's confidence (:meth:`galleryvis.targets.Objective.confidence`, a class's softmax
    probability) minus its confidence with channel ``channels[i, j]`` (or ``channels[j]`` for
    every image) of ``layer``'s output set to zero; ``random_drops`` (N,): the median drop over
    ``random_channels`` distinct channels of the layer (all of them if it has fewer), drawn by a
    generator seeded with ``seed``, the same for every image. ``target`` and ``layer`` as for
    :func:`concepts`."""
    _check_random(random_channels)
    chosen = (channels if isinstance(channels, Tensor) else torch.tensor(_channel_list(channels))).long().cpu()
    out = []
    with layer_call(model, x, target, layer, batch_size, confidence_for="concept_drop") as call:
        n = call.x.shape[0]
        chosen = chosen.expand(n, -1) if chosen.dim() == 1 else chosen
        if chosen.dim() != 2 or chosen.shape[0] != n or not chosen.numel():
            raise ValueError(f"concept_drop: channels must be (k,) or (N, k) for {n} images, "
                             f"got {tuple(channels.shape) if isinstance(channels, Tensor) else channels}")
        for ctx, rows in zip(call.contexts(), chosen.split(call.chunks.backward)):
            out.append(_drops(ctx, call.layer, rows, random_channels, seed))
    drops, rand = (torch.cat(p) for p in zip(*out))
    return drops, rand


# -- one call ---------------------------------------------------------------------------------------
@dataclass
class LayerCall:
    """What both functions share: the images on the model's device, the resolved layer and
    target, the chunking; :meth:`contexts` gives a :class:`Context` per chunk."""

    model: nn.Module
    x: Tensor
    objective: targets.Objective
    layer: str
    chunks: Chunking
    mean: Sequence[float]
    std: Sequence[float]
    grid: Grid | None = None  # the layer's, from the last context

    def contexts(self) -> Iterator[Context]:
        size = self.chunks.backward
        for xs, ts in zip(self.x.split(size), self.objective.split(size)):
            ctx = Context(self.model, xs, ts, (self.layer,), size, self.chunks.forward, mean=self.mean, std=self.std)
            self.grid = ctx.grid(self.layer)
            yield ctx


@contextmanager
def layer_call(model: nn.Module, x: Tensor, target: targets.Target, layer: str | None, batch_size: int | None,
          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
          confidence_for: str | None = None) -> Iterator[LayerCall]:
    """The set-up of a call: inputs checked, the model prepared (eval mode, frozen parameters,
    no in-place activations; :func:`galleryvis.engine.changes.prepared`, undone on exit), the layer
    resolved (default: the CAM layer), the target bound to the images with top-1 classes
    decided and, for ``confidence_for`` (who reads it), checked to have a confidence."""
    x = fast_layout(check_inputs(x).to(model_device(model)))
    chunks = chunking_of(batch_size, x.device)
    with prepared(model):
        name = default_layer(model, x[:1]) if layer is None else layer
        resolve_layer(model, name)
        objective = targets.resolve(target, model, x, chunks.forward)
        if confidence_for is not None:
            targets.require_confidence(objective, confidence_for)
        yield LayerCall(model, x, objective, name, chunks, mean, std)


@technique("crp", output="input", layer="one", family="concepts", signed=True, needs=("passes",),
           choices={"rule": RULES, "attention": ATTENTION_RULES}, tasks=("classification", "multilabel", "image-text"),
           title="Concept Relevance Propagation",
           paper="Achtibat et al. 2023, https://doi.org/10.1038/s42256-023-00711-8",
           summary="The image's top concepts (channels) of a layer by share of LRP relevance, each with its "
                   "conditional heatmap and the target's confidence drop when the channel is removed.")
def crp(ctx: Context, *, layer: str, top_k: int = 4, random_channels: int = RANDOM_CHANNELS, seed: int = 0,
        rule: str = _LRP["rule"], epsilon: float = _LRP["epsilon"], gamma: float = _LRP["gamma"],
        alpha: float = _LRP["alpha"], attention: str = _LRP["attention"]) -> Concepts:
    """One chunk's :func:`concepts` at ``layer``: the ``top_k`` concepts of each image with their
    conditional maps (LRP with the parameters ``lrp`` takes), their confidence drops and the median
    drop of ``random_channels`` random channels drawn with ``seed``. A gallery's ``crp`` row computes
    its cells through :func:`concepts` with these parameters."""
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1:
        raise ValueError(f"crp: top_k must be an int >= 1, got {top_k!r}")
    _check_random(random_channels)
    params = {"rule": rule, "epsilon": epsilon, "gamma": gamma, "alpha": alpha, "attention": attention}
    found = _chunk(ctx, layer, None, int(top_k), params, random_channels, seed)
    return Concepts(layer, *found, random_channels=min(random_channels, ctx.grid(layer).channels))


# -- the parts ----------------------------------------------------------------------------------------
def _chunk(ctx: Context, layer: str, channels: list[int] | None, top_k: int, params: dict[str, Any],
           random_channels: int, seed: int) -> tuple[Tensor, ...]:
    """(channels, shares, maps) of one chunk, and (drops, random drops) unless ``random_channels`` is 0."""
    found = _concepts(ctx, layer, channels, top_k, params)
    return found + (_drops(ctx, layer, found[0], random_channels, seed) if random_channels else ())


def _concepts(ctx: Context, layer: str, channels: list[int] | None, top_k: int,
              params: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """(channels, shares, maps) of one chunk: one LRP forward, the relevance at the layer, and
    one backward from the layer per concept rank."""
    x, out, at = traced(ctx, layer, **params)
    assert at is not None
    (rel,) = torch.autograd.grad(out, at, ctx.target.relevance(out), retain_graph=True, allow_unused=True)
    if rel is None:
        raise LayerError(f"layer {layer!r} carries no relevance to the output")
    grid = ctx.grid(layer)
    count = grid.channels
    per_channel = grid.channels_at_1(rel).flatten(2).sum(2)  # (n, C)
    shares = per_channel / per_channel.abs().sum(1, keepdim=True).clamp_min(torch.finfo(rel.dtype).tiny)
    if channels is None:
        if top_k > count:
            raise ValueError(f"concepts: top_k={top_k} is more than the {count} channels of layer {layer!r}")
        chosen = shares.topk(top_k, dim=1).indices
    else:
        chosen = torch.tensor(channels, device=rel.device).expand(rel.shape[0], -1)
        grid.check_channels(chosen, layer)
    maps = []
    for j in range(chosen.shape[1]):
        keep = grid.per_channel(F.one_hot(chosen[:, j], count).to(rel.dtype))
        (r,) = torch.autograd.grad(at, x, rel * keep, retain_graph=j < chosen.shape[1] - 1)
        maps.append(r.detach().sum(1))
    return (chosen.cpu(), shares.take_along_dim(chosen, 1).detach().float().cpu(),
            torch.stack(maps, 1).float().cpu().contiguous())


def _drops(ctx: Context, layer: str, chosen: Tensor, random_channels: int, seed: int) -> tuple[Tensor, Tensor]:
    """(drops (n, k), median random drops (n,)) of one chunk: ``chosen`` (n, k) zeroed one rank at
    a time, then each of the random channels; through :func:`_copied` where the model allows it,
    else one forward of the chunk per channel (:func:`_zeroed`)."""
    grid = ctx.grid(layer)
    grid.check_channels(chosen, layer)
    drawn = torch.randperm(grid.channels, generator=torch.Generator().manual_seed(seed))[:random_channels]
    n, k = chosen.shape
    every = torch.cat([chosen.cpu(), drawn.expand(n, -1)], 1)  # (n, k + random): each column one forward
    with torch.no_grad():
        base = ctx.target.confidence(ctx.forward().output)
        kept = _copied(ctx, layer, grid, every, base)
        if kept is None:
            kept = torch.stack([_zeroed(ctx, layer, grid, every[:, j]) for j in range(every.shape[1])], 1)
        lost = base[:, None] - kept
    return lost[:, :k].float().cpu(), lost[:, k:].float().quantile(0.5, dim=1).cpu()  # even: the middle two's mean


def _zeroed(ctx: Context, layer: str, grid: Grid, channel: Tensor) -> Tensor:
    """The target's confidence with channel ``channel[i]`` of ``layer``'s output zeroed for image i."""
    keep = grid.per_channel(1 - F.one_hot(channel.to(ctx.x.device), grid.channels))

    def zero(out: Tensor) -> Tensor:
        return out * keep.to(out.dtype)

    with replaced_output(ctx.model, layer, zero):
        return ctx.target.confidence(ctx.output(ctx.x))


class _NotCopyable(Exception):
    """The model does not carry a batch of copies of the layer's output through to its output."""


def _copied(ctx: Context, layer: str, grid: Grid, every: Tensor, base: Tensor) -> Tensor | None:
    """The target's confidences (n, m) with channel ``every[i, j]`` of ``layer``'s output zeroed
    for image i, what :func:`_zeroed` gives column by column, for the cost of one forward of the
    layers before ``layer`` per image: each forward runs one image up to the layer, whose output
    is replaced by a batch of copies, the first untouched and each other with one channel zeroed,
    so the layers after it run once on the batch (a tensor from before the layer, as on a skip
    connection, is of batch 1 and broadcasts against it). Up to the chunk's forward batch size
    of copies per forward. None, for the caller to fall back on :func:`_zeroed`, where the model
    does not allow it: the layer's output is not of batch 1 for one image, the model's output is
    not of one row per copy, the untouched copy's confidence is not ``base[i]`` (the batch's rows
    not independent), or the first such forward raises (a later one raising is an error of its own)."""
    n, m = every.shape
    per = max(1, ctx.forward_batch_size - 1)  # zeroed copies per forward, beside the untouched one
    kept = torch.empty(n, m, dtype=base.dtype, device=base.device)
    tried = False
    for i in range(n):
        for start in range(0, m, per):
            try:
                conf = _copies(ctx, layer, grid, i, every[i, start:start + per])
            except _NotCopyable:
                return None
            except Exception:  # noqa: BLE001  (the model cannot take the copies: fall back)
                if tried:
                    raise
                return None
            tried = True
            if not torch.allclose(conf[0], base[i], rtol=1e-4, atol=1e-6):
                return None
            kept[i, start:start + per] = conf[1:]
    return kept


def _copies(ctx: Context, layer: str, grid: Grid, i: int, channels: Tensor) -> Tensor:
    """Image ``i``'s confidences (1 + len(channels),): untouched, then with each of ``channels``
    zeroed at ``layer``, by one forward (:func:`_copied`)."""
    count = len(channels) + 1
    zeroed = 1 - F.one_hot(channels.to(ctx.x.device), grid.channels)
    keep = grid.per_channel(torch.cat([torch.ones_like(zeroed[:1]), zeroed]))

    def spread(out: Tensor) -> Tensor:  # a module called again (shared) sees the copies: zeroed again
        if out.shape[0] not in (1, count):
            raise _NotCopyable(f"layer {layer!r} gives a batch of {out.shape[0]} for one image")
        return out * keep.to(out.dtype)

    with replaced_output(ctx.model, layer, spread):
        conf = ctx.target.image(i, count).confidence(ctx.output(ctx.x[i:i + 1]))
    if tuple(conf.shape) != (count,):
        raise _NotCopyable(f"the model gives {tuple(conf.shape)} confidences for {count} copies")
    return conf


def _channel_list(channels: Sequence[int]) -> list[int]:
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels or \
            any(isinstance(c, bool) or not isinstance(c, Integral) for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of ints, got {channels!r}")
    return [int(c) for c in channels]


def _check_random(random_channels: int) -> None:
    if isinstance(random_channels, bool) or not isinstance(random_channels, Integral) or random_channels < 1:
        raise ValueError(f"random_channels must be an int >= 1, got {random_channels!r}")
