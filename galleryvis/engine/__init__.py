"""The shared engine: targets bound to the images (:mod:`galleryvis.targets`), chunking, and
passes shared between techniques."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis import families, registry, targets, tasks
from galleryvis.engine.changes import capture, conv_sizes, guided, prepared, resolve_layer
from galleryvis.engine.chunking import FORWARD_BATCH_FACTOR, Chunking
from galleryvis.engine.chunking import measure as measure_chunks
from galleryvis.targets.detection import NotFound
from galleryvis.engine.fold import folded
from galleryvis.errors import LayerError
from galleryvis.engine.layers import Grid, Patches, default_layer

#: ImageNet normalization, the default for every torchvision classifier.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: How many images (or noisy samples, IG steps) go through the model at once when nobody chose
#: (``batch_size=None``; a gallery measures each model instead, :mod:`galleryvis.engine.chunking`):
#: on 2 CPU cores (bench/) 8 is near the best of most models at half the memory; GPUs want
#: larger batches (:data:`GPU_BATCH_SIZE`).
DEFAULT_BATCH_SIZE = 8
GPU_BATCH_SIZE = 32

LayerArg = str | Sequence[str] | Mapping[str, str | Sequence[str]] | None


@dataclass
class Pass:
    """One forward + backward: the model's raw output, gradient w.r.t. the input, activations and
    their gradients, and the sizes of the convolution outputs the forward produced (its patch grids)."""

    output: Any
    input_grad: Tensor | None
    acts: dict[str, Tensor]
    grads: dict[str, Tensor]
    conv_sizes: frozenset[tuple[int, int]] = frozenset()
    levels: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)  # a dict layer's maps (Captured)


@dataclass
class Context:
    """What a technique sees for one chunk of images: the model, inputs, the target (an
    :class:`~galleryvis.targets.Objective` bound to the chunk's images; any form
    :func:`galleryvis.targets.of` takes but None is turned into one), shared passes.

    A target that depends on the model's output (a top-1 class, a segment's region: ``needs_output``)
    is decided by the chunk's first pass on its images, :meth:`backward` or :meth:`forward`, from that
    pass's output, so it costs no forward of its own; read before either, it runs :meth:`forward`.

    Techniques read scores and confidences through :attr:`target` only (``ctx.target.image(i, n)``
    for ``n`` copies of image ``i``), call :meth:`backward` (memoized per backward mode, so every
    technique in an ``attribute_many`` call shares one forward/backward), :meth:`forward` (activations only,
    no graph), :meth:`input_grad` (gradients for arbitrary batches, chunked) and :meth:`run`
    (another technique's result on the same chunk, memoized).
    """

    model: nn.Module
    x: Tensor
    target: targets.Objective = field(repr=False)
    layers: tuple[str, ...] = ()
    batch_size: int = DEFAULT_BATCH_SIZE
    forward_batch_size: int = FORWARD_BATCH_FACTOR * DEFAULT_BATCH_SIZE  # copies per forward-only pass
    need_input_grad: bool = True
    runner: Callable[[Tensor], object] | None = None  # runs the model (default: the model itself)
    mean: Sequence[float] = IMAGENET_MEAN  # the model's input normalization
    std: Sequence[float] = IMAGENET_STD
    report: Callable[[int, int], None] | None = None  # (done, total) within the running technique
    _passes: dict[str, Pass] = field(default_factory=dict)
    _results: dict[Any, Tensor] = field(default_factory=dict)
    _pending: targets.Objective | None = field(default=None, init=False, repr=False)  # the target, undecided

    def __post_init__(self) -> None:
        if self.target is None:
            raise ValueError("Context needs the top-1 classes resolved first (galleryvis.targets.resolve)")
        objective = targets.of(self.target, self.x.shape[0])
        if objective.needs_output:
            self._pending = objective
            del self.target  # read before a pass decides it: __getattr__
        else:
            self.target = objective

    def __getattr__(self, name: str) -> Any:
        """Only reached for an attribute not set: :attr:`target` before a pass decided it."""
        if name == "target" and self.__dict__.get("_pending") is not None:
            self.forward()
            return self.__dict__["target"]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def decided(self) -> bool:
        """Whether :attr:`target` is decided (a target that needs no output always is)."""
        return self._pending is None

    def _decide(self, output: Any) -> None:
        """The pending target decided on ``output``, the model's output for this chunk's images."""
        if self._pending is not None:
            with torch.inference_mode(False), torch.no_grad():
                self.target = self._pending.resolve(_map_tensors(Tensor.clone, _map_tensors(Tensor.detach, output)))
            self._pending = None

    # -- shared passes ----------------------------------------------------------------------
    def backward(self, mode: str = "plain") -> Pass:
        """Forward with every requested layer captured, then one ``autograd.grad`` of the
        target's scores w.r.t. the input (when some technique needs it) and those layers."""
        if mode not in self._passes:
            x = self.x.detach().requires_grad_(self.need_input_grad or mode != "plain")
            with torch.enable_grad(), guided(self.model, mode), conv_sizes(self.model) as sizes, \
                    capture(self.model, self.layers) as acts:
                output = self.output(x)
                self._decide(output)
                score = self.target.score(output).sum()
                missing = [n for n in self.layers if n not in acts]
                if missing:
                    raise LayerError(f"layers {missing} were not called in the forward pass")
                wrt = ([x] if x.requires_grad else []) + [acts[n] for n in self.layers]
                if wrt and not score.requires_grad:
                    raise LayerError(f"layers {list(self.layers)} do not influence the model's output")
                grads = torch.autograd.grad(score, wrt, allow_unused=True) if wrt else ()
            input_grad = grads[0] if x.requires_grad else None
            layer_grads = dict(zip(self.layers, grads[1 if x.requires_grad else 0:]))
            for name, g in layer_grads.items():
                if g is None:
                    raise LayerError(f"layer {name!r} does not influence the model's output")
            self._passes[mode] = Pass(
                _map_tensors(Tensor.detach, output), None if input_grad is None else input_grad.detach(),
                {k: v.detach() for k, v in acts.items()}, {k: v.detach() for k, v in layer_grads.items()},
                frozenset(sizes), dict(acts.levels),
            )
        return self._passes[mode]

    def forward(self) -> Pass:
        """The model's output and activations of every requested layer, without building a graph."""
        if not self._passes:  # otherwise a backward pass's forward half serves as well
            with torch.inference_mode(), conv_sizes(self.model) as sizes, capture(self.model, self.layers) as acts:
                output = self.output(self.x)
            self._passes["forward"] = Pass(_map_tensors(Tensor.clone, output), None,
                                           {k: v.clone() for k, v in acts.items()}, {},
                                           frozenset(sizes), dict(acts.levels))
            self._decide(self._passes["forward"].output)
        return next(iter(self._passes.values()))

    def grid(self, layer: str) -> Grid:
        """How ``layer``'s output lies on the image (:meth:`galleryvis.engine.layers.Patches.grid`),
        decided from its shape in the shared forward and the convolution outputs of that forward;
        :meth:`Grid.nchw` maps it and its gradient to (N, C, h, w)."""
        p = self.forward()
        if layer in p.levels:
            return Grid.of_levels(p.levels[layer])
        return Patches.of(self.model, p.conv_sizes).grid(layer, tuple(p.acts[layer].shape), self.x.shape[0],
                                                         resolve_layer(self.model, layer))

    def input_grad(self, x: Tensor, target: targets.Objective, mode: str = "plain") -> Tensor:
        """d score / d x for an arbitrary batch (noisy samples, IG path points) and its
        objective (``ctx.target.image(i, len(x))``), chunked."""
        out = []
        for xs, ts in zip(x.split(self.batch_size), target.split(self.batch_size)):
            xs = xs.detach().requires_grad_(True)
            with torch.enable_grad(), guided(self.model, mode):
                score = ts.score(self.output(xs)).sum()
                (g,) = torch.autograd.grad(score, xs)
            out.append(g.detach())
        return torch.cat(out)

    def advance(self, done: int, total: int) -> None:
        """Tell the caller how far a long technique is: ``done`` of its ``total`` passes (or
        images, masks, windows) on this chunk. Free when nobody listens."""
        if self.report is not None:
            self.report(done, total)

    def pixel_value(self, value: float) -> Tensor:
        """Pixel ``value`` in [0, 1] (0: black, 1: white) in the model's input space, shaped
        (1, C, 1, 1) like :attr:`x`, by the model's own :attr:`mean` and :attr:`std`."""
        return pixel_value(value, self.x, self.mean, self.std)

    def output(self, x: Tensor) -> Any:
        """The model's raw output for ``x``, through :attr:`runner` when given; read it with
        :attr:`target` (the objective checks its form, e.g. logits (N, classes) for a class)."""
        return (self.runner or self.model)(x)

    def shared(self, key: Any, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` once per chunk for ``key`` (made hashable as :meth:`run`'s keys are): what
        variants of a technique have in common, e.g. integrated gradients' path-averaged gradient
        with and without the multiplication by the input."""
        key = ("shared", _freeze(key))
        if key not in self._results:
            self._results[key] = compute()
        return self._results[key]

    def run(self, name: str, layer: Any = None, **params: Any) -> Tensor:
        """Another technique's map on this chunk (memoized), at the layer's own resolution."""
        tech = registry.get(name)
        resolved = registry.resolve_params(tech, params)
        key = (name, _freeze(layer), _freeze(resolved))
        if key not in self._results:
            kwargs = dict(resolved)
            if tech.layer != "none":
                kwargs["layer"] = layer
            try:
                self._results[key] = tech.fn(self, **kwargs)
            except targets.ScoreOnlyError as e:
                if e.who is not None:
                    raise
                raise targets.ScoreOnlyError(targets.confidence_error(name, e.what), name, e.what) from None
        return self._results[key]


def pixel_value(value: float, x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Pixel ``value`` in [0, 1] (0: black, 1: white) in the input space of a model that
    normalizes with ``mean`` and ``std``, shaped (1, C, 1, 1) with ``x``'s dtype and device."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (value - m) / s


def gaussian_blur(x: Tensor, kernel: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, the one of galleryvis (deletion/insertion,
    integrated gradients' blur baseline, class visualization): ``kernel`` taps (odd) of standard
    deviation ``sigma`` pixels, reflect padding; along a side not longer than the radius the
    kernel is cut to fit and renormalized. ``sigma <= 0`` or one tap returns ``x``."""
    radius = kernel // 2
    if sigma <= 0 or radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    radius_h, radius_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    kh = k[radius - radius_h: radius + radius_h + 1]
    kw = k[radius - radius_w: radius + radius_w + 1]
    kh, kw = kh / kh.sum(), kw / kw.sum()
    x = F.pad(x, (radius_w, radius_w, 0, 0), mode="reflect")
    x = F.conv2d(x, kw.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius_h, radius_h), mode="reflect")
    return F.conv2d(x, kh.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _map_tensors(fn: Callable[[Tensor], Tensor], output: Any) -> Any:
    """``fn`` applied to every tensor of a model's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(output, Tensor):
        return fn(output)
    if isinstance(output, (tuple, list)):
        values = [_map_tensors(fn, v) for v in output]
        return type(output)(*values) if hasattr(output, "_fields") else type(output)(values)
    if isinstance(output, dict):
        return type(output)((k, _map_tensors(fn, v)) for k, v in output.items())
    return output


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Tensor):
        return ("tensor", id(value))
    return value


def default_batch_size(device: torch.device) -> int:
    """Chunk size for ``device``: :data:`DEFAULT_BATCH_SIZE` on the CPU, :data:`GPU_BATCH_SIZE` else."""
    return DEFAULT_BATCH_SIZE if device.type == "cpu" else GPU_BATCH_SIZE


def chunking_of(batch_size: int | Chunking | None, device: torch.device) -> Chunking:
    """The chunk sizes of a call: a :class:`~galleryvis.engine.chunking.Chunking` as given, an int as
    :meth:`Chunking.of <galleryvis.engine.chunking.Chunking.of>`, None as the device's default."""
    if isinstance(batch_size, Chunking):
        return batch_size
    if batch_size is None:
        batch_size = default_batch_size(device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    return Chunking.of(batch_size)


def measure_chunking(model: nn.Module, sample: Tensor) -> Chunking:
    """The fastest chunk sizes of ``model`` on this machine, timed on copies of ``sample`` (one
    normalized image, (1, 3, H, W)) through the model as :func:`attribute` runs it (parameters
    frozen, batch norm folded, channels_last on the CPU), up to 4x :func:`default_batch_size`.
    A few seconds; pass the result as ``batch_size=`` to every call on that model."""
    check_inputs(sample)
    device = model_device(model)
    x1 = fast_layout(sample[:1].detach().to(device))
    with prepared(model), folded(model, x1) as runner:
        return measure_chunks(runner, x1, FORWARD_BATCH_FACTOR * default_batch_size(device),
                              fast_layout)


def fast_layout(x: Tensor) -> Tensor:
    """``x`` in channels_last on the CPU (convolutions 20-30 % faster there, bench/; same values);
    as it is elsewhere (on a GPU channels_last halved the speed of small batches)."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" and x.dim() == 4 else x


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for parameter-free models)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def check_inputs(inputs: Tensor) -> Tensor:
    """``inputs`` detached, once checked to be a float tensor (N, C, H, W) (a ValueError otherwise)."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        desc = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a float tensor of shape (N, C, H, W), got {desc}")
    return inputs.detach()


def _layers_for(tech: registry.Technique, layer: str | Sequence[str] | None, model: nn.Module,
                x: Tensor, cache: dict[str, str]) -> str | tuple[str, ...] | None:
    if tech.layer == "none":
        return None
    if layer is None:
        if tech.layer == "optional":
            return None
        if "default" not in cache:
            cache["default"] = default_layer(model, x[:1])
        layer = cache["default"]
    names = (layer,) if isinstance(layer, str) else tuple(layer)
    if not names:
        raise LayerError(f"{tech.name}: no layer given")
    if tech.layer in ("one", "optional") and len(names) != 1:
        raise LayerError(f"{tech.name} takes one layer, got {list(names)}")
    return names if tech.layer == "many" else names[0]


@dataclass(frozen=True)
class Call:
    """One technique to run in :func:`attribute_calls`: its registry ``name``, ``layer`` (a dotted
    name, a list for multi-layer techniques, None for the default) and ``params``."""

    name: str
    layer: str | Sequence[str] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


def attribute_many(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    techniques: Sequence[str],
    target: targets.Target,
    layer: LayerArg = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    batch_size: int | Chunking | None = None,
    progress: Callable[[str, int], None] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """Maps for several techniques, sharing the forward/backward passes they have in common.

    ``layer`` is one dotted module name, a list (multi-layer techniques) or a mapping
    technique -> layer; ``params`` maps technique -> parameters; ``mean`` and ``std`` are the
    model's input normalization (a black baseline, LRP's pixel bounds). Returns ``{technique: maps}``
    with raw float32 CPU maps, (N,3,H,W) or (N,1,H,W) upsampled bilinearly to the input size
    (for a list of images, a list of maps). ``progress(technique, n_images)`` is called each
    time a technique finishes a chunk.
    """
    params = dict(params or {})
    unknown = set(params) - set(techniques)
    if unknown:
        raise registry.TechniqueError(f"params given for techniques not requested: {sorted(unknown)}")
    calls = {name: Call(name, layer.get(name) if isinstance(layer, Mapping) else layer, params.get(name) or {})
             for name in techniques}
    return attribute_calls(model, inputs, calls, target, batch_size=batch_size, progress=progress,
                           mean=mean, std=std)


def attribute_calls(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    calls: Mapping[str, Call],
    target: targets.Target,
    *,
    batch_size: int | Chunking | None = None,
    progress: Callable[[str, int], None] | None = None,
    within: Callable[[str, int, int], None] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """:func:`attribute_many` for calls under ids of the caller's choosing, so one technique can
    run at several layers or with several parameter sets in one call (a gallery's rows, a sanity
    step): every pass they have in common is shared (the chunk's :class:`Context` memoizes by
    technique, layer and parameters). Returns ``{id: maps}``; ``progress(id, n_images)`` when
    a technique finishes a chunk, ``within(id, done, total)`` while a long one (perturbations,
    Score-CAM, Ablation-CAM, the Shapley family) runs (:meth:`Context.advance`). ``inputs`` may
    also be a list of images (C, H, W) of any sizes (a detector's photos): one call each, and a
    list of maps per id."""
    if isinstance(inputs, (list, tuple)):
        return _each_image(model, inputs, calls, target, batch_size=batch_size, progress=progress, within=within,
                           mean=mean, std=std)
    check_inputs(inputs)
    device = model_device(model)
    chunks = chunking_of(batch_size, device)
    techs = {key: registry.get(c.name) for key, c in calls.items()}
    for t in techs.values():
        api = families.named(t.family).api
        if api != "attribute":
            raise registry.TechniqueError(
                f"{t.name!r} is a {t.family} technique: use galleryvis.{api}() for it")
    task = targets.of(target, inputs.shape[0]).task
    for t in techs.values():
        tasks.check(t.name, t.tasks, task)
    resolved = {key: registry.resolve_params(techs[key], c.params) for key, c in calls.items()}
    x = fast_layout(inputs.detach().to(device))
    out: dict[str, list[Tensor]] = {key: [] for key in calls}
    with prepared(model):
        default_cache: dict[str, str] = {}
        layer_of = {key: _layers_for(techs[key], c.layer, model, x, default_cache) for key, c in calls.items()}
        all_layers = tuple(dict.fromkeys(
            n for lay in layer_of.values() for n in ((lay,) if isinstance(lay, str) else lay or ())))
        for n in all_layers:
            resolve_layer(model, n)
        need_input = any("input_grad" in t.needs for t in techs.values())
        with folded(model, x[:1], all_layers, enabled=_folds(list(techs.values()), x.shape[0], model)) as runner:
            objective = targets.of(target, x.shape[0])  # a top-1 is decided by each chunk's first pass
            for xs, ts in zip(x.split(chunks.backward), objective.split(chunks.backward)):
                ctx = Context(model, xs, ts, all_layers, chunks.backward, chunks.forward, need_input, runner, mean,
                              std)
                _decide_first(ctx, list(techs.values()))
                for key in sorted(calls, key=lambda k: _forward_only(techs[k])):  # reuse a backward's forward
                    ctx.report = None if within is None else functools.partial(within, key)
                    m = ctx.run(calls[key].name, layer_of[key], **resolved[key])
                    out[key].append(_finish(m, xs))
                    if progress is not None:
                        progress(key, xs.shape[0])
    return {key: torch.cat(maps) for key, maps in out.items()}


def _each_image(model: nn.Module, images: Sequence[Tensor], calls: Mapping[str, Call], target: targets.Target,
                **options: Any) -> dict[str, Any]:
    """:func:`attribute_calls` for each of ``images`` (C, H, W) on its own, with its entry of
    ``target``: ``{id: [one map per image]}``, no image's maps depending on another's."""
    if not images or any(not isinstance(im, Tensor) or im.dim() != 3 for im in images):
        shapes = [tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__ for im in images]
        raise ValueError(f"a list of inputs must hold images (C, H, W), got {shapes}")
    objective = targets.of(target, len(images))
    out: dict[str, list[Tensor]] = {key: [] for key in calls}
    for i, image in enumerate(images):
        try:
            done = attribute_calls(model, image[None], calls, objective.at(i), **options)
        except NotFound as e:
            raise NotFound(f"image {i}: {e}") from None
        for key, maps in done.items():
            out[key].append(maps[0])
    return out


#: A call folds batch norm (:func:`galleryvis.engine.fold.folded`) when it runs at least this many
#: images, or any technique runs passes of its own (SmoothGrad, IG, Score-CAM): preparing costs
#: a weight copy and two forwards of one image, which a single shared pass does not repay.
FOLD_MIN_IMAGES = 8


def _folds(techs: Sequence[registry.Technique], n_images: int, model: nn.Module) -> bool:
    """Whether a call folds, decided once before its first pass (every pass then runs the same
    weights); never when a technique opts out (``fold=False``), nor for a detector: folding is
    checked on a probe's logits, and a detector's boxes are none (its probe forward, 1 in 65 of
    D-RISE's passes at 64 masks, would be spent on a refusal)."""
    if not all(t.fold for t in techs) or tasks.of_model(model) == "detection":
        return False
    return n_images >= FOLD_MIN_IMAGES or any("passes" in t.needs for t in techs)


def _decide_first(ctx: Context, techs: Sequence[registry.Technique]) -> None:
    """Decide a chunk's top-1 target before its techniques run, on a pass they share: the plain
    backward when one of them reads layer gradients (its forward half decides), else the shared
    forward; left to the first backward when every technique only reads shared backward passes
    (vanilla, guided backprop: their own mode's forward decides). So a technique never reads the
    target for the first time inside a model change of its own (LRP, ablation)."""
    if ctx.decided or all(t.needs & {"layer_grad", "input_grad"} and "passes" not in t.needs for t in techs):
        return
    if any("layer_grad" in t.needs for t in techs):
        ctx.backward("plain")
    else:
        ctx.forward()


def _forward_only(tech: registry.Technique) -> bool:
    """Reads the shared forward and no shared gradient: run last in a chunk, so a backward's
    forward half serves it."""
    return "forward" in tech.needs and not tech.needs & {"layer_grad", "input_grad"}


def _finish(m: Tensor, x: Tensor) -> Tensor:
    if m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return m.detach().float().cpu().contiguous()


def attribute(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    technique: str,
    target: targets.Target,
    layer: str | Sequence[str] | None = None,
    *,
    batch_size: int | Chunking | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **params: Any,
) -> Tensor | list[Tensor]:
    """Raw attribution maps of one technique for a batch of normalized images.

    Args:
        model: any model; with class targets, one returning logits (N, classes).
        inputs: float tensor (N, 3, H, W), already normalized; or a list of images (3, H, W)
            of any sizes (a detector's photos), each computed on its own.
        technique: a registry name (see :func:`techniques`).
        target: what the maps explain: a class index for all images, one per image, None for
            each image's top-1 class, a :mod:`galleryvis.targets` objective (one per image in a
            list), or a callable ``f(output) -> Tensor[N]`` scoring the model's raw output
            (gradient techniques only: those that read a confidence say so in one line).
        layer: dotted module name (a list for multi-layer techniques); default: the model's
            last convolutional block, found by a probe forward.
        batch_size: images, samples or steps per pass with a gradient, and 4x as many
            perturbed copies per forward-only pass (default: 8 on the CPU, 32 on a GPU); or a
            :class:`~galleryvis.engine.chunking.Chunking` with both, such as
            :func:`measure_chunking` finds for the model. Maps do not depend on it.
        mean, std: the model's input normalization (integrated gradients' black baseline and
            LRP's pixel bounds are black and white in the model's own input space).
        **params: the technique's parameters.

    Returns:
        float32 CPU tensor (N,3,H,W) for input-space techniques, (N,1,H,W) for CAM-style maps;
        for a list of images, a list of maps (3 or 1, H, W).
    """
    return attribute_many(model, inputs, [technique], target, layer, {technique: params},
                          batch_size=batch_size, mean=mean, std=std)[technique]


def techniques() -> list[dict[str, Any]]:
    """Every registered technique with its parameters, defaults, output kind and paper."""
    return [registry.get(n).describe() for n in registry.names()]

