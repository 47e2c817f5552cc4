"""Finding layers: the default CAM layer by a probe forward, every layer's output shape, and how a
layer's output lies on the image (:class:`Grid`: channels first, channels last, tokens, or an FPN's levels)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis.engine.changes import prepared, recorded
from galleryvis.errors import LayerError
from galleryvis.tasks import heads, spatial_logits

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)
_CONTAINERS = (nn.Sequential, nn.ModuleList)
#: Modules whose 4-D output is (N, C, H, W) by construction, and (exact types) (N, H, W, C).
_CHANNELS_FIRST = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)
#: Parameters holding tokens put before the patch tokens (class, distillation, register tokens),
#: by the last part of their name, as torchvision, timm and Hugging Face spell them.
PREFIX_TOKEN_PARAMS = ("class_token", "cls_token", "dist_token", "distillation_token", "reg_token", "register_tokens",
                       "class_embedding")  # CLIP's (open_clip, Hugging Face): one token, a 1-D parameter

Layout = Literal["channels_first", "channels_last", "tokens", "levels"]


@dataclass(frozen=True)
class Grid:
    """How a layer's output (``shape``, without the batch) lies on the image's ``size`` = (h, w)
    grid: (N, C, H, W), (N, H, W, C), tokens (N, T, D) whose first ``prefix`` are dropped, or
    ``levels``: a layer returning a dict of (N, C, H, W) maps (a feature pyramid), captured as
    its maps flattened and concatenated (N, total) (:func:`galleryvis.engine.changes.capture`),
    each level read resized to the smallest one's size and the levels' channels concatenated,
    as pytorch-grad-cam's ``fasterrcnn_reshape_transform`` reads an FPN (:meth:`Grid.of_levels`)."""

    layout: Layout
    size: tuple[int, int]
    shape: tuple[int, ...]
    prefix: int = 0
    levels: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def of_levels(cls, levels: Sequence[tuple[int, ...]]) -> Grid:
        """The grid of a layer whose output is a dict of maps of ``levels`` = (C, H, W) each, in
        order; read on the smallest level's grid (the last of equal ones)."""
        shapes = tuple((int(c), int(h), int(w)) for c, h, w in levels)
        _, h, w = min(reversed(shapes), key=lambda s: s[1] * s[2])
        return cls("levels", (h, w), (sum(c * h * w for c, h, w in shapes),), levels=shapes)

    def nchw(self, t: Tensor) -> Tensor:
        """``t`` (this layer's output or its gradient) as (N, C, h, w)."""
        if tuple(t.shape[1:]) != self.shape:
            raise LayerError(f"expected a layer output of shape (N, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(t.shape)}")
        if self.layout == "channels_first":
            return t
        if self.layout == "channels_last":
            return t.permute(0, 3, 1, 2)
        if self.layout == "levels":
            parts = t.split([c * h * w for c, h, w in self.levels], 1)
            return torch.cat([F.interpolate(p.reshape(len(t), *s), self.size, mode="bilinear", align_corners=False)
                              if s[1:] != self.size else p.reshape(len(t), *s) for p, s in zip(parts, self.levels)], 1)
        return t[:, self.prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.size)

    def activations(self, t: Tensor) -> Tensor:
        """This layer's output as CAMs read it, (N, C, h, w): :meth:`nchw`, of the magnitudes
        for ``levels`` (pytorch-grad-cam's ``fasterrcnn_reshape_transform``: an FPN's maps are
        signed, their absolute values say how strongly a feature is present)."""
        return self.nchw(t.abs() if self.layout == "levels" else t)

    def per_channel(self, v: Tensor) -> Tensor:
        """(N, C) values shaped to broadcast over this layer's own output (every token alike)."""
        if self.layout == "channels_first":
            return v[:, :, None, None]
        if self.layout == "levels":
            parts = v.split([c for c, _, _ in self.levels], 1)
            return torch.cat([p[:, :, None].expand(-1, -1, h * w).reshape(len(v), -1)
                              for p, (_, h, w) in zip(parts, self.levels)], 1)
        return v[:, None, None, :] if self.layout == "channels_last" else v[:, None, :]

    @property
    def channels(self) -> int:
        """How many channels (concepts) this layer's output has."""
        if self.layout == "levels":
            return sum(c for c, _, _ in self.levels)
        return self.shape[0] if self.layout == "channels_first" else self.shape[-1]

    def channels_at_1(self, t: Tensor) -> Tensor:
        """``t`` (this layer's output or its relevance) with its channels at dim 1 (N, C, positions...),
        every position kept (a token layer's prefix tokens too). Levels of several sizes have no
        one such tensor: :class:`LayerError`."""
        if self.layout == "levels":
            raise LayerError("a layer returning several levels (a feature pyramid) has no one grid of positions; "
                             "name a layer of one level")
        return t if self.layout == "channels_first" else t.movedim(-1, 1)

    def check_channels(self, channels: Tensor, layer: str) -> None:
        """Raise ``ValueError`` naming ``layer`` if some of ``channels`` is not one of its channels."""
        bad = channels[(channels < 0) | (channels >= self.channels)]
        if bad.numel():
            raise ValueError(f"channel {int(bad[0])} is out of range for layer {layer!r} with {self.channels} channels")

    def __str__(self) -> str:
        size = "x".join(map(str, self.size))
        if self.layout == "channels_first":
            return size
        if self.layout == "channels_last":
            return f"{size} (channels last)"
        if self.layout == "levels":
            return f"{size} ({len(self.levels)} levels: " + ", ".join(f"{h}x{w}" for _, h, w in self.levels) + ")"
        return f"{size} (tokens" + (f", {self.prefix} dropped)" if self.prefix else ")")


def prefix_tokens(model: nn.Module) -> int:
    """How many tokens ``model`` puts before its patch tokens (:data:`PREFIX_TOKEN_PARAMS`)."""
    return sum(p.shape[-2] if p.dim() >= 2 else 1 for n, p in model.named_parameters()
               if n.rpartition(".")[2] in PREFIX_TOKEN_PARAMS and p.dim() >= 1)


#: Modules whose ``image_size`` is the one input size of their model, by class (qualified by
#: its module where the bare name is ambiguous): Hugging Face's ViT, CLIP and SigLIP embeddings,
#: open_clip's vision transformer.
_FIXED_SIZE = ("ViTPatchEmbeddings", "CLIPVisionEmbeddings", "SiglipVisionEmbeddings",
               "open_clip.transformer.VisionTransformer")


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size (h, w) ``model`` accepts, where it has one: torchvision's
    ``VisionTransformer`` (``image_size``), timm's patch embeddings with ``strict_img_size``
    (ViT, DeiT, Swin) and the modules of :data:`_FIXED_SIZE` (``image_size``); None for
    models that take any size."""
    vision_transformer = sys.modules.get("torchvision.models.vision_transformer")  # not imported: not one
    for m in model.modules():
        if vision_transformer is not None and isinstance(m, vision_transformer.VisionTransformer):
            return (m.image_size, m.image_size)
        size = getattr(m, "img_size", None) if getattr(m, "strict_img_size", False) else \
            getattr(m, "image_size", None) if {type(m).__name__, f"{type(m).__module__}.{type(m).__name__}"} \
            & set(_FIXED_SIZE) else None
        if size is not None:
            h, w = (size, size) if isinstance(size, int) else size
            return (int(h), int(w))
    return None


def has_layer_norm(model: nn.Module) -> bool:
    """Whether ``model`` has a LayerNorm: the transformers' and ConvNeXt's mark, and the reason
    a model holds channels-last tensors at all (it normalizes channels as the last dimension)."""
    return any(isinstance(m, nn.LayerNorm) for m in model.modules())


@dataclass(frozen=True)
class Patches:
    """What decides how a model's layer outputs lie on the image: the ``grids`` they can lie on
    (each convolution output's size, the patch grid of a patch embedding, and its successive
    halvings by patch merging or pooling, rounded up), the number of ``prefix`` tokens, and
    whether the model can hold channels-last tensors at all (:func:`has_layer_norm`)."""

    grids: frozenset[tuple[int, int]]
    prefix: int = 0
    channels_last: bool = False

    @classmethod
    def of(cls, model: nn.Module, conv_sizes: Iterable[tuple[int, int]]) -> Patches:
        """The patches of ``model``, given the convolution output sizes of one forward."""
        grids = set()
        for h, w in conv_sizes:
            while h * w > 1 and (h, w) not in grids:
                grids.add((h, w))
                h, w = -(-h // 2), -(-w // 2)
        return cls(frozenset(grids), prefix_tokens(model), has_layer_norm(model))

    def grid(self, name: str, shape: tuple[int, ...], batch: int, module: nn.Module | None = None) -> Grid:
        """How layer ``name``'s output of ``shape`` lies on the image for an input of ``batch``
        images; ``module`` is the layer. A first dimension other than ``batch`` (Swin's
        attention windows) raises.

        4-D: channels last when (dim 1, dim 2) is a grid and (dim 2, dim 3) is not (Swin);
        channels first otherwise, and always in a model without LayerNorm (CNNs). Both fitting is
        decided by the module when it fixes the layout (a convolution or batch norm: first; an
        ``nn.Linear`` or ``nn.LayerNorm``, which act on the last dimension: last) and raises
        otherwise. 3-D: tokens when T minus the prefix tokens (or T itself, before the prefix is
        added) is exactly one grid's area. Anything else raises :class:`LayerError`.
        """
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != batch:
            raise LayerError(f"layer {name!r} outputs shape {shape} for {batch} images: its first dimension is not "
                             f"the batch (attention windows?); name another layer")
        if len(shape) == 4:
            first, last = shape[2:] in self.grids, self.channels_last and shape[1:3] in self.grids
            if first and last:
                if type(module) in _CHANNELS_LAST:
                    first = False
                elif not isinstance(module, _CHANNELS_FIRST):
                    raise LayerError(f"layer {name!r} outputs shape {shape}: both (N, C, H, W) and (N, H, W, C) fit "
                                     f"the model's grids {sorted(self.grids)}; name another layer")
            if last and not first:
                return Grid("channels_last", (shape[1], shape[2]), shape[1:])
            return Grid("channels_first", (shape[2], shape[3]), shape[1:])
        if len(shape) == 3:
            fits = {(p, g) for p in {self.prefix, 0} for g in self.grids if g[0] * g[1] == shape[1] - p}
            if len(fits) == 1:
                (p, g), = fits
                return Grid("tokens", g, shape[1:], p)
            if len(fits) > 1:
                raise LayerError(f"layer {name!r} outputs shape {shape}: its {shape[1]} tokens fit several grids "
                                 f"{sorted(g for _, g in fits)}; name another layer")
        raise LayerError(f"layer {name!r} outputs shape {shape}, which does not lie on the image: CAMs need a 4-D "
                         f"(N, C, H, W) or (N, H, W, C) output, or tokens (N, T, D) on the patch grid "
                         f"{sorted(self.grids)}")


#: What :func:`probe` lists: ``(name, output shape, output)`` per module.
Records = list[tuple[str, tuple[int, ...] | None, Tensor | None]]


def probe(model: nn.Module, x: Tensor) -> Records:
    """Run one forward on ``x`` and list ``(name, output shape, output)`` in completion order.

    A module called several times appears once, with its last call's output.
    """
    return _probe(model, x)[0]


def _probe(model: nn.Module, x: Tensor) -> tuple[Records, object, dict[str, tuple[tuple[int, ...], ...]]]:
    """:func:`probe`'s records, the model's output, and the maps' shapes of each layer returning
    a dict of maps (:class:`~galleryvis.engine.changes.forward_hooks.Captured`)."""
    with recorded(model) as seen, prepared(model), torch.no_grad():
        output = model(x)
    return [(name, tuple(t.shape) if t is not None else None, t) for name, t in seen.items()], output, seen.levels


def probe_grids(model: nn.Module, x: Tensor) -> tuple[Records, dict[str, Grid | LayerError]]:
    """:func:`probe`'s records and :func:`grids_of` them, a layer returning a dict of maps (an
    FPN) read as :meth:`Grid.of_levels`."""
    records, _, levels = _probe(model, x)
    grids = grids_of(model, records, x.shape[0])
    return records, grids | {name: Grid.of_levels(shapes) for name, shapes in levels.items()}


def _heads_of(model: nn.Module, output: object) -> tuple[str, ...]:
    """Where the default layer is not looked for: a segmentation model's heads
    (:func:`galleryvis.tasks.heads`) when the output is a score map per pixel (the head would
    otherwise hold the last 4-D layer); nothing for every other model."""
    try:
        spatial_logits(output)
    except ValueError:
        return ()
    return heads(model)


def _inside(name: str, scope: str) -> bool:
    return name == scope or name.startswith(scope + ".")


def grids_of(model: nn.Module, records: Records, batch: int) -> dict[str, Grid | LayerError]:
    """Each probed layer's :class:`Grid` (``batch``: the probe's batch size), or the
    :class:`LayerError` saying why it has none."""
    modules = dict(model.named_modules())
    patches = Patches.of(model, (tuple(s[2:]) for n, s, _ in records if s is not None and len(s) == 4
                                 and isinstance(modules[n], nn.Conv2d)))
    out: dict[str, Grid | LayerError] = {}
    for name, shape, _ in records:
        if shape is None:
            out[name] = LayerError(f"layer {name!r} returns no tensor")
            continue
        try:
            out[name] = patches.grid(name, shape, batch, modules[name])
        except LayerError as exc:
            out[name] = exc
    return out


def default_layer(model: nn.Module, x: Tensor) -> str:
    """The CAM layer the references recommend, by a probe forward.

    Convolutional nets (no LayerNorm): the last convolutional block, as torch-cam locates it:
    the last leaf module (pooling and dropout excepted) whose output is 4-D with more than one
    spatial position; if enclosing modules return that very tensor (``layer4`` around its last
    ReLU), the outermost of them is named instead. Models with LayerNorm (ViT, DeiT, Swin,
    ConvNeXt): the last block (a module in a ``Sequential`` or ``ModuleList`` holding the last
    leaf whose output lies on a grid of more than one position); with class tokens (ViT, DeiT)
    that block's first LayerNorm, whose patch tokens still reach the class token; a block with a
    channels-first output (ConvNeXt) gives way to its stage (the outermost enclosing module in a
    container returning that very tensor); otherwise (Swin) the block itself, or, when blocks
    return tuples (Hugging Face Swin), the last leaf on the grid (the final LayerNorm).
    Segmentation models (a score map per pixel out): the same, outside their heads
    (``backbone.layer4`` of torchvision's FCN-ResNet50, not its ``classifier``). Detectors
    (:func:`galleryvis.targets.detection.detector_layer`): a layer of their backbone, found without a probe.
    """
    from galleryvis.targets.detection import detector_layer

    found = detector_layer(model)
    if found is not None:
        return found
    records, output, _ = _probe(model, x)
    skip = _heads_of(model, output)
    records = [r for r in records if not any(_inside(r[0], h) for h in skip)]
    modules = dict(model.named_modules())
    outputs = {n: t for n, _, t in records}
    if not has_layer_norm(model):
        return _cnn_default(records, modules, outputs)
    grids = grids_of(model, records, x.shape[0])

    def on_grid(name: str) -> Grid | None:
        g = grids.get(name)
        return g if isinstance(g, Grid) and g.size[0] * g.size[1] > 1 else None

    leaves = [n for n, _, _ in records if next(modules[n].children(), None) is None
              and not isinstance(modules[n], _POOLS) and on_grid(n)]
    if not leaves:
        raise LayerError("no layer whose output lies on the image's grid found; name a layer explicitly")
    block = next((b for b in (_block_of(n, modules) for n in reversed(leaves)) if b), None)
    if block is None:
        return leaves[-1]
    if prefix_tokens(model):
        norms = [n for n, m in modules[block].named_modules(prefix=block) if isinstance(m, nn.LayerNorm) and on_grid(n)]
        if norms:
            return min(norms, key=[n for n, _, _ in records].index)
    g = on_grid(block)
    if g is None:  # a block returning a tuple (Hugging Face Swin) cannot be captured: the last
        return leaves[-1]  # leaf on the grid, the final LayerNorm of that block's output
    if g.layout == "channels_first":
        stages = [a for a in _ancestors(block) if outputs.get(a) is outputs[block]
                  and isinstance(modules[a.rpartition(".")[0]], _CONTAINERS)]
        return stages[-1] if stages else block
    return block


def _ancestors(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a.b", "a"]``, innermost first (the root excluded)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _block_of(leaf: str, modules: dict[str, nn.Module]) -> str | None:
    """The innermost module enclosing ``leaf`` that is itself an entry of a container."""
    return next((a for a in _ancestors(leaf) if isinstance(modules[a.rpartition(".")[0]], _CONTAINERS)), None)


def _cnn_default(records: Records, modules: dict[str, nn.Module], outputs: dict[str, Tensor | None]) -> str:
    leaf = None
    for name, shape, t in reversed(records):
        m = modules[name]
        if next(m.children(), None) is None and not isinstance(m, _POOLS) \
                and shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1:
            leaf = (name, t)
            break
    if leaf is None:
        raise LayerError("no layer with a 4-D output of more than 1x1 found; name a layer explicitly")
    name, tensor = leaf
    best = name
    for parent in _ancestors(name):
        if outputs.get(parent) is tensor:
            best = parent
        else:
            break
    return best
