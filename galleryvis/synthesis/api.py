"""``synthesize``: run a feature-visualization technique and return the image and its objective trace."""
from __future__ import annotations

import hashlib
import numbers
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis import families, registry
from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD, fast_layout, model_device
from galleryvis.engine.fold import prepare
from galleryvis.hooks import LayerError, deterministic, prepared
from galleryvis.engine.layers import default_layer, fixed_input_size
from galleryvis.registry import TechniqueError
from galleryvis.synthesis.objectives import LayerTap, tap
from galleryvis.tasks import check, class_logits, of_model

Units = int | Sequence[int] | Tensor | None


def synthesis_technique(name: str, *, title: str, paper: str, summary: str, layer: registry.LayerUse,
                        unit: families.UnitKind | None, unit_required: bool = False,
                        image: families.ImageUse = "none", choices: dict[str, tuple[Any, ...]] | None = None,
                        model_size: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(job, **params) -> (image01, trace)`` in the technique registry under
    ``family="synthesis"``, with what it takes as its :class:`~galleryvis.families.Inputs`:
    ``channel`` or ``target`` (and whether it must be given), whether it needs, accepts or
    refuses an input image, and whether a gallery makes it at the model's input size (its
    ``size`` parameter, unless the manifest sets one)."""
    return registry.technique(name, output="input", family="synthesis", layer=layer, paper=paper,
                              summary=summary, choices=choices, title=title, kind="image", needs=("passes",),
                              inputs=families.Inputs(unit, unit_required, image, model_size))


def resized_to(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    """``x`` resized (bilinear, differentiable) to ``size``, the one input size a model such as a
    ViT accepts; unchanged when ``size`` is None (a model that takes any size) or already met."""
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


@dataclass
class Chunk:
    """What a synthesis technique sees for one chunk of items.

    ``units[i]`` is item ``i``'s channel (or class); ``gens[i]`` its own random generator, seeded
    from ``(seed, units[i])`` so that it does not depend on the item's position in the batch.
    ``image`` is the normalized input (N,3,H,W) on the model's device, or None.
    """

    model: nn.Module
    layer: str | None
    units: list[int | None]
    image: Tensor | None
    gens: list[torch.Generator]
    mean: Tensor
    std: Tensor
    device: torch.device
    tap: LayerTap | None = None
    input_size: tuple[int, int] | None = None
    report: Callable[[int, int], None] | None = None
    task: str = "classification"  # the model's (galleryvis.tasks): how its output gives class logits

    @property
    def n(self) -> int:
        return len(self.units)

    def advance(self, done: int, total: int) -> None:
        """Tell the caller how far a long technique is: ``done`` of its ``total`` steps on this
        chunk. Free when nobody listens."""
        if self.report is not None:
            self.report(done, total)

    def at_input_size(self, x: Tensor) -> Tensor:
        """``x`` at :attr:`input_size` (:func:`resized_to`)."""
        return resized_to(x, self.input_size)

    def normalize(self, x01: Tensor) -> Tensor:
        """Image space [0, 1] -> the model's input space (channels_last on the CPU), at the
        model's input size where it has a fixed one."""
        return fast_layout(self.at_input_size((x01 - self.mean) / self.std))

    def to01(self, x: Tensor) -> Tensor:
        """The model's input space -> image space (not clamped)."""
        return x * self.std + self.mean

    def features(self, x01: Tensor) -> Tensor:
        """The output of :attr:`layer` for images in [0, 1]; the forward stops at the layer."""
        assert self.tap is not None
        return self.tap(self.normalize(x01))

    def logits(self, x01: Tensor) -> Tensor:
        """The model's logits (N, classes) for images in [0, 1] (a segmentation model's: each
        class's mean logit over the image, :func:`galleryvis.tasks.class_logits`)."""
        return class_logits(self.model(self.normalize(x01)), self.task)


@dataclass(frozen=True)
class SynthesisResult:
    """``image``: float32 CPU (N,3,H,W) in [0, 1]. ``trace``: float32 CPU tensor (steps, N), item
    ``i``'s objective before each step: the mean activation (or logit) being maximized, as the
    model saw it (after that step's random transform); for ``inverted_representation`` the
    normalized reconstruction error ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 being minimized;
    (1, N) for ``layer_activation``. Unpacks as ``image, trace = result``."""

    image: Tensor
    trace: Tensor

    def __iter__(self) -> Iterator[Tensor]:
        yield self.image
        yield self.trace


def _item_seed(seed: int, unit: int | None) -> int:
    digest = hashlib.sha256(f"galleryvis.synthesis/{seed}/{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _units(value: Units, what: str) -> tuple[list[int | None], bool]:
    """(list of units, whether a list was given)."""
    if value is None:
        return [None], False
    if isinstance(value, Tensor):
        value = value.flatten().tolist() if value.dim() else int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{what} must be >= 0, got {value}")
        return [int(value)], False
    if isinstance(value, Sequence) and not isinstance(value, str):
        out: list[int | None] = []
        for v in value:
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{what} must be non-negative ints, got {v!r} in {list(value)!r}")
            out.append(int(v))
        if not out:
            raise ValueError(f"{what} is an empty list")
        return out, True
    raise TypeError(f"{what} must be an int or a list of ints, not {type(value).__name__}")


def _stats(values: Sequence[float] | Tensor, what: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() != 3:
        raise ValueError(f"{what} must have 3 values (one per RGB channel), got {t.numel()}")
    if what == "std" and bool((t <= 0).any()):
        raise ValueError("std must be positive")
    return t.view(1, 3, 1, 1).to(device)


def synthesize(
    model: nn.Module,
    technique: str,
    *,
    layer: str | None = None,
    channel: Units = None,
    target: Units = None,
    image: Tensor | None = None,
    steps: int | None = None,
    seed: int = 0,
    mean: Sequence[float] | Tensor = IMAGENET_MEAN,
    std: Sequence[float] | Tensor = IMAGENET_STD,
    within: Callable[[int, int], None] | None = None,
    **params: Any,
) -> SynthesisResult:
    """Optimize or reconstruct images with a feature-visualization technique.

    Args:
        model: any classifier returning logits (N, classes); used in eval mode with frozen
            parameters (restored afterwards); only gradients w.r.t. the image are computed.
        technique: a registry name of family ``"synthesis"`` (see ``galleryvis.techniques()``).
        layer: dotted module name (``model.named_modules()``); default: the last convolutional
            block, as for ``attribute``. ``class_visualization`` takes none.
        channel: unit of ``layer`` (a channel of a 4-D output, also channels last, or of a token
            output on the patch grid; a neuron of a 2-D one); a list
            gives one image per channel. Each item is optimized in passes of its own, so a list
            gives bit for bit the images of separate calls on any CPU or GPU: kernels for a
            batch round differently from those for one image, and Adam's per-element step
            sizes amplify that rounding over the steps (a 1e-6 relative change of every
            convolution's output moves filter-visualization pixels by up to 0.9).
        target: class index (``class_visualization``), or a list of them.
        image: normalized input (N,3,H,W), as for ``attribute`` (deep dream, layer activation,
            inversion; optional start for class visualization). With a list of units and one
            image, the image is used for each unit; otherwise one unit per image.
        steps: optimization steps (the technique's default when None; 0 returns the start).
        seed: items are seeded from ``(seed, unit)``: a fixed seed gives the same images, and a
            batched call the same images as separate calls.
        mean, std: the model's input normalization.
        within: called ``(done, total)`` while a long technique runs (steps of every item), so
            a caller's progress moves; None: nobody listens.
        **params: the technique's parameters (validated against the registry).

    Returns:
        :class:`SynthesisResult` ``(image, trace)``: image float32 CPU (N,3,H,W) in [0, 1],
        trace float32 CPU (steps, N).
    """
    tech = registry.get(technique)
    api = families.named(tech.family).api
    if api != "synthesize":
        raise TechniqueError(
            f"{technique!r} is an {tech.family} technique; use galleryvis.{api}() for it "
            f"(synthesis techniques: {', '.join(registry.names('synthesis'))})")
    task = of_model(model)
    check(technique, tech.tasks, task)
    inputs = tech.inputs
    if steps is not None:
        if "steps" not in tech.params:
            raise TechniqueError(f"{technique} is not iterative and takes no steps")
        params["steps"] = steps
    resolved = registry.resolve_params(tech, params)
    if "steps" in resolved and resolved["steps"] < 0:
        raise ValueError(f"{technique}: steps must be >= 0, got {resolved['steps']}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    seed = int(seed)
    if tech.layer == "none" and layer is not None:
        raise LayerError(f"{technique} takes no layer")

    for name, value in (("channel", channel), ("target", target)):
        if value is not None and inputs.unit != name:
            raise ValueError(f"{technique} takes no {name}")
    units, listed = _units(channel if inputs.unit == "channel" else target, inputs.unit or "unit")
    if inputs.unit_required and units == [None]:
        raise ValueError(f"{technique} needs {inputs.unit}= (an int or a list of ints)")

    if image is not None and inputs.image == "none":
        raise ValueError(f"{technique} starts from noise and takes no image")
    if image is None and inputs.image == "required":
        raise ValueError(f"{technique} needs image= (a normalized (N,3,H,W) tensor)")
    device = model_device(model)
    mean_t, std_t = _stats(mean, "mean", device), _stats(std, "std", device)
    x = None
    if image is not None:
        if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3 \
                or not image.is_floating_point():
            desc = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image must be a float tensor of shape (N, 3, H, W), got {desc}")
        x = image.detach().to(device=device, dtype=torch.float32)
        if listed and x.shape[0] == 1:
            x = x.expand(len(units), -1, -1, -1)
        elif listed and x.shape[0] != len(units):
            raise ValueError(f"{len(units)} {inputs.unit}s for {x.shape[0]} images: give one per "
                             f"image, or one image")
        elif not listed:
            units = units * x.shape[0]

    input_size = fixed_input_size(model)
    with prepared(model), deterministic(), ExitStack() as stack:
        if x is not None:
            probe_x = x[:1]
        else:
            size = resolved.get("size", 224)
            probe_x = (torch.full((1, 3, size, size), 0.5, device=device) - mean_t) / std_t
        probe_x = resized_to(probe_x, input_size)
        layer_tap = None
        if tech.layer != "none" and layer is None:
            layer = default_layer(model, probe_x)
        # Batch norm folded and weights in the inputs' layout for every step (the tapped
        # layer's output unchanged); decided before the tap's hook exists.
        stack.enter_context(prepare(model, fast_layout(probe_x), [layer] if layer else []).active())
        if tech.layer == "none":
            with torch.no_grad():
                out = class_logits(model(probe_x), task)
            limit, what = out.shape[1], f"the model's {out.shape[1]} classes"
        else:
            layer_tap = stack.enter_context(tap(model, layer))
            shape = layer_tap.probe(probe_x)
            limit = shape[1] if len(shape) >= 2 else 0
            what = f"layer {layer!r} with output {shape}"
        for u in units:
            if u is not None and u >= limit:
                raise ValueError(f"{technique}: {inputs.unit} {u} is out of range for {what}")

        images, traces = [], []
        for i, unit in enumerate(units):  # one item per pass: see the docstring's ``channel``
            job = Chunk(model=model, layer=layer, units=[unit], task=task,
                          image=None if x is None else x[i:i + 1],
                          gens=[torch.Generator().manual_seed(_item_seed(seed, unit))],
                          mean=mean_t, std=std_t, device=device, tap=layer_tap, input_size=input_size,
                          report=None if within is None else
                          (lambda done, total, i=i: within(i * total + done, len(units) * total)))
            img, trace = tech.fn(job, **resolved)
            images.append(img.detach().float().clamp(0, 1).cpu())
            traces.append(trace.detach().float().cpu())
    return SynthesisResult(torch.cat(images), torch.cat(traces, dim=1))
