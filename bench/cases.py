"""The rows of the benchmark: one case per technique (or combination), each with its implementations.

An implementation is ``(key, label, kind, make)``; ``make(bench)`` returns the zero-argument
call that is timed, or raises :class:`~bench.common.Skip`. ``kind`` is ``galleryvis``,
``seed`` (the seed-style loop), ``peer`` (captum / pytorch-grad-cam) or ``reference``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from galleryvis.engine.chunking import FORWARD_BATCH_FACTOR

from . import peers, seed_style
from .common import Skip, frozen, is_sequential

COMBINATION = ("vanilla", "grad_x_image", "gradcam", "layercam")


@dataclass
class Bench:
    """What a case needs: the model, inputs, per-image targets, the CAM layer and settings.

    A segmentation model's ``targets`` are each image's top-1 class and ``masks`` (N, H, W) bool
    its region (the pixels the model assigns to that class), which the peers are given;
    galleryvis gets ``targets.Segment()`` and finds them itself (:attr:`objective`). A
    detector's are each image's best detection, its label and ``boxes`` (N, 4); galleryvis gets
    ``targets.Detection()`` and its inputs' normalization (:attr:`normalization`: pixels in [0, 1]).
    """

    model: nn.Module
    x: Tensor
    targets: list[int]
    layer: str
    batch_size: int
    settings: dict[str, Any] = field(default_factory=dict)
    masks: Tensor | None = None
    boxes: Tensor | None = None

    @property
    def normalization(self) -> dict[str, Any]:
        """galleryvis's ``mean`` and ``std`` where the inputs are not ImageNet-normalized (a detector's)."""
        from .common import RAW

        return {} if self.boxes is None else RAW

    @property
    def sequential(self) -> bool:
        return is_sequential(self.model)

    @property
    def objective(self) -> Any:
        """What galleryvis is asked to explain: the classes, or for a segmentation model each
        image's top-1 class over its region, left to galleryvis to resolve (``Segment()``)."""
        from galleryvis.targets import Detection, Segment

        if self.boxes is not None:
            return Detection()
        if self.masks is None:
            return self.targets
        return Segment()


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    kind: str
    make: Callable[[Bench], Callable[[], object]]


@dataclass(frozen=True)
class Case:
    key: str
    label: Callable[[dict[str, Any]], str]
    impls: tuple[Impl, ...]
    applies: Callable[[Bench], str | None] = lambda b: None  # why it does not apply, or None
    gradient: bool = True  # targets: >= 2.5x the seed-style loop
    peer_target: float = 1.0  # galleryvis must be this many times faster than the fastest peer
    # Forward + input-gradient passes per image that any implementation needs, and the reference
    # (frozen-parameter pass at batch 1 or at the chunk size) they are priced at, optionally plus
    # that many passes of the same kind at batch 1 (a detector's forward finding its detection):
    # the floor row.
    floor: Callable[[dict[str, Any]], tuple[int, str] | tuple[int, str, int]] | None = None
    # Before timing, every implementation's maps against galleryvis's: at least this Pearson r per
    # image, so that the timings compare the same work (None: not checked).
    agreement: float | None = None


#: The multiples of ``--batch-size`` that galleryvis's and the peers' batch settings are swept
#: over (for the techniques whose cost depends on them), so each side is judged at its best.
SWEEP = (1, 4)


def _ours_setting(technique: str, multiple: float = 1, **mapping: str) -> Callable[[Bench], Callable[[], object]]:
    """galleryvis with parameters taken from ``Bench.settings`` (``param=setting_name``), at
    ``batch_size = multiple`` × ``--batch-size`` (at least 1)."""
    def make(b: Bench) -> Callable[[], object]:
        import galleryvis
        from galleryvis import registry

        if technique not in registry.names():
            raise Skip(f"technique {technique!r} is not registered yet")
        params = {k: b.layer if v == "@layer" else b.settings[v] if v in b.settings else v
                  for k, v in mapping.items()}
        batch = max(1, int(multiple * b.batch_size))
        return lambda: galleryvis.attribute(b.model, b.x, technique, b.objective, batch_size=batch,
                                            **b.normalization, **params)
    return make


def _ours_sweep(technique: str, label: str = "galleryvis.attribute", *, layer: bool = False,
                multiples: tuple[float, ...] = SWEEP, **mapping: str) -> tuple[Impl, ...]:
    """galleryvis at each batch setting of ``multiples`` (:data:`SWEEP`), one row each; the report
    judges its best."""
    if layer:
        mapping = {**mapping, "layer": "@layer"}
    return tuple(Impl(f"galleryvis_x{m:g}", f"{label}, batch_size {m:g}× --batch-size", "galleryvis",
                      _ours_setting(technique, m, **mapping)) for m in multiples)


def _ours_many(b: Bench) -> Callable[[], object]:
    import galleryvis

    layers = {"gradcam": b.layer, "layercam": b.layer}
    return lambda: galleryvis.attribute_many(b.model, b.x, list(COMBINATION), b.targets, layers,
                                             batch_size=b.batch_size)


def _ours_layer(technique: str) -> Callable[[Bench], Callable[[], object]]:
    def make(b: Bench) -> Callable[[], object]:
        import galleryvis
        from galleryvis import registry

        if technique not in registry.names():
            raise Skip(f"technique {technique!r} is not registered yet")
        return lambda: galleryvis.attribute(b.model, b.x, technique, b.objective, b.layer,
                                            batch_size=b.batch_size, **b.normalization)
    return make


def _call(fn: Callable[..., object], *, layer: bool = False, batch: int = 0, segment: bool = False,
          detect: bool = False, **mapping: str) -> Callable[[Bench], Callable[[], object]]:
    """A seed-style or peer runner ``fn(model, x, targets, [masks], [boxes], [layer], **settings)``,
    given ``batch_size = batch`` × ``--batch-size`` unless ``batch`` is 0, the segmentation regions
    (``masks``) when ``segment`` and the detections' boxes (``boxes``) when ``detect``."""
    def make(b: Bench) -> Callable[[], object]:
        kwargs: dict[str, Any] = {k: b.settings[v] for k, v in mapping.items()}
        if layer and b.settings["reshape"] is not None and "reshape_transform" not in mapping:
            raise Skip(f"it reads the CAM layer as (N, C, H, W), and {b.layer!r} is not")
        if segment:
            if b.masks is None:
                raise Skip("it explains a segmentation model's region, and this model has none")
            kwargs["masks"] = b.masks
        if detect:
            if b.boxes is None:
                raise Skip("it explains a detector's detection, and this model has none")
            kwargs["boxes"] = b.boxes
        if layer:
            kwargs["layer"] = b.layer
        if batch:
            kwargs["batch_size"] = batch * b.batch_size
        return lambda: fn(b.model, b.x, b.targets, **kwargs)
    return make


def _probe_peer(fn: Callable[..., object], make: Callable[[Bench], Callable[[], object]]
                ) -> Callable[[Bench], Callable[[], object]]:
    """Fail early (Skip) when the peer's package is missing."""
    def wrapped(b: Bench) -> Callable[[], object]:
        module = {"captum": "captum", "gradcam": "pytorch_grad_cam", "torch": "torch"}[fn.__name__.split("_")[0]]
        peers._need(module)  # noqa: SLF001
        return make(b)
    return wrapped


def _peer(fn: Callable[..., object], label: str, **kw: Any) -> Impl:
    return Impl(fn.__name__, label, "peer", _probe_peer(fn, _call(fn, **kw)))


def _peer_sweep(fn: Callable[..., object], label: str, **kw: Any) -> tuple[Impl, ...]:
    """The peer at each :data:`SWEEP` batch setting (multiples of ``--batch-size``), one row
    each, so that its target is judged against the best of them."""
    return tuple(Impl(f"{fn.__name__}_x{m}", f"{label}, batch {m}× --batch-size", "peer",
                      _probe_peer(fn, _call(fn, batch=m, **kw))) for m in SWEEP)


def _seed(fn: Callable[..., object], label: str = "seed-style loop", **kw: Any) -> Impl:
    return Impl("seed", label, "seed", _call(fn, **kw))


#: Rows that run one masked forward per channel of the CAM layer: a reference row prices them
#: at C x one batched forward (the channel count comes from the worker).
PER_CHANNEL = ("scorecam", "ablationcam")


def _per_channel_applies(case: str) -> Callable[[Bench], str | None]:
    def applies(b: Bench) -> str | None:
        if b.sequential or b.settings.get(f"{case}_everywhere"):
            return None
        return (f"one masked forward per channel of `{b.layer}`, minutes per implementation on this "
                f"architecture: add --cases {case} to run it")
    return applies


def _windows(s: dict[str, Any]) -> int:
    """Occlusion windows per image at the bench's size, window and stride."""
    return len(range(0, s["size"] - s["occ_window"] + 1, s["occ_stride"])) ** 2


def _peers_combination(b: Bench) -> Callable[[], object]:
    peers._need("captum")  # noqa: SLF001
    peers._need("pytorch_grad_cam")  # noqa: SLF001
    return lambda: peers.combination(b.model, b.x, b.targets, b.layer, b.settings.get("reshape"))


CASES: dict[str, Case] = {c.key: c for c in [
    Case("vanilla", lambda s: "vanilla gradient", (
        Impl("galleryvis", "galleryvis.attribute", "galleryvis", _ours_setting("vanilla")),
        _seed(seed_style.vanilla),
        _peer(peers.captum_saliency, "captum Saliency(abs=False)"),
    ), floor=lambda s: (1, "fwdbwd_b1")),
    Case("gradcam", lambda s: "Grad-CAM", (
        Impl("galleryvis", "galleryvis.attribute", "galleryvis", _ours_layer("gradcam")),
        _seed(seed_style.gradcam, layer=True),
        _peer(peers.captum_gradcam, "captum LayerGradCam + interpolate", layer=True),
        _peer(peers.gradcam_gradcam, "pytorch-grad-cam GradCAM", layer=True, reshape_transform="reshape"),
    )),
    Case("combination", lambda s: "vanilla + grad×image + Grad-CAM + LayerCAM", (
        Impl("galleryvis", "galleryvis.attribute_many (one backward)", "galleryvis", _ours_many),
        _seed(seed_style.combination, "seed-style loop (4 backward passes)", layer=True),
        Impl("peers", "captum Saliency, InputXGradient + grad-cam GradCAM, LayerCAM (4 calls)", "peer",
             _peers_combination),
    ), peer_target=5.0, floor=lambda s: (1, "fwdbwd_b1")),
    Case("integrated_gradients", lambda s: f"integrated gradients, {s['ig_steps']} steps", (
        *_ours_sweep("integrated_gradients", steps="ig_steps", method="gausslegendre", baseline="zero"),
        _seed(seed_style.integrated_gradients, "seed-style loop (one pass per step)", steps="ig_steps"),
        *_peer_sweep(peers.captum_integrated_gradients, "captum IntegratedGradients, internal_batch_size",
                     steps="ig_steps"),
    ), floor=lambda s: (s["ig_steps"], "fwdbwd_bs")),
    Case("smoothgrad", lambda s: f"SmoothGrad, {s['sg_samples']} samples, σ={s['sg_sigma']}", (
        *_ours_sweep("smoothgrad", samples="sg_samples", sigma="sg_sigma"),
        _seed(seed_style.smoothgrad, "seed-style loop (one pass per sample)", samples="sg_samples", sigma="sg_sigma"),
        *_peer_sweep(peers.captum_smoothgrad, "captum NoiseTunnel(Saliency), nt_samples_batch_size",
                     samples="sg_samples", sigma="sg_sigma"),
    ), floor=lambda s: (s["sg_samples"], "fwdbwd_bs")),
    Case("lrp", lambda s: "LRP, epsilon rule", (
        Impl("galleryvis", "galleryvis.attribute(rule='epsilon')", "galleryvis", _ours_setting("lrp", rule="epsilon")),
        _seed(seed_style.lrp_epsilon, "seed-style loop (deep copy per layer)"),
        _peer(peers.captum_lrp, "captum LRP (default epsilon rules)"),
    )),
    Case("scorecam", lambda s: "Score-CAM", (
        *_ours_sweep("scorecam", layer=True),
        _seed(seed_style.scorecam, "seed-style loop (batch 1, autograd on)", layer=True),
        *_peer_sweep(peers.gradcam_scorecam, "pytorch-grad-cam ScoreCAM, batch_size", layer=True,
                     reshape_transform="reshape"),
    ), applies=_per_channel_applies("scorecam"), gradient=False),
    Case("occlusion", lambda s: f"occlusion, window {s['occ_window']}, stride {s['occ_stride']}", (
        *_ours_sweep("occlusion", window="occ_window", stride="occ_stride"),
        *_peer_sweep(peers.captum_occlusion, "captum Occlusion, perturbations_per_eval", window="occ_window",
                     stride="occ_stride"),
    ), gradient=False, floor=lambda s: (_windows(s), "forward_bs")),
    Case("rise", lambda s: f"RISE, {s['rise_masks']} masks", (
        *_ours_sweep("rise", masks="rise_masks"),
    ), gradient=False, floor=lambda s: (s["rise_masks"], "forward_bs")),
    Case("ablationcam", lambda s: "Ablation-CAM", (
        *_ours_sweep("ablationcam", layer=True),
        *_peer_sweep(peers.gradcam_ablationcam, "pytorch-grad-cam AblationCAM, batch_size", layer=True,
                     reshape_transform="reshape"),
    ), applies=_per_channel_applies("ablationcam"), gradient=False),
    Case("gradient_shap", lambda s: f"GradientSHAP, {s['gs_samples']} samples, stdev {s['gs_stdev']}", (
        *_ours_sweep("gradient_shap", samples="gs_samples", stdev="gs_stdev"),
        _peer(peers.captum_gradient_shap, "captum GradientShap (no batch setting)", samples="gs_samples",
              stdev="gs_stdev"),
    ), gradient=False, floor=lambda s: (s["gs_samples"], "fwdbwd_bs")),
    Case("kernel_shap", lambda s: f"KernelSHAP, {s['shap_samples']} samples, {s['shap_segments']} grid cells", (
        *_ours_sweep("kernel_shap", samples="shap_samples", segments="shap_segments"),
        *_peer_sweep(peers.captum_kernel_shap, "captum KernelShap, perturbations_per_eval", samples="shap_samples",
                     segments="shap_segments"),
    ), gradient=False, floor=lambda s: (s["shap_samples"] + 1, "forward_bs")),
    Case("lime", lambda s: f"LIME, {s['shap_samples']} samples, {s['shap_segments']} grid cells", (
        *_ours_sweep("lime", samples="shap_samples", segments="shap_segments"),
        *_peer_sweep(peers.captum_lime, "captum Lime, perturbations_per_eval", samples="shap_samples",
                     segments="shap_segments"),
    ), gradient=False, floor=lambda s: (s["shap_samples"] + 1, "forward_bs")),
    Case("deeplift", lambda s: "DeepLIFT, rescale rule, zero baseline", (
        Impl("galleryvis", "galleryvis.attribute", "galleryvis", _ours_setting("deeplift")),
        _peer(peers.captum_deeplift, "captum DeepLift"),
    ), gradient=False, floor=lambda s: (2, "fwdbwd_b1")),
]}

#: The order rows are printed in.
ORDER = ("vanilla", "gradcam", "combination", "integrated_gradients", "smoothgrad", "lrp", "scorecam",
         "occlusion", "rise", "ablationcam", "gradient_shap", "kernel_shap", "lime", "deeplift")

#: The segmentation section's rows: a torchvision segmentation model explained for each image's
#: top-1 class over the pixels the model assigns to it (galleryvis: ``targets.Segment()``; the
#: peers: the same class and region, found once before timing, as their tutorials do).
SEGMENTATION: dict[str, Case] = {c.key: c for c in [
    Case("segment_gradcam", lambda s: "Grad-CAM, top-1 segment", (
        Impl("galleryvis", "galleryvis.attribute(target=Segment())", "galleryvis", _ours_layer("gradcam")),
        _peer(peers.gradcam_segment_gradcam, "pytorch-grad-cam GradCAM + SemanticSegmentationTarget", layer=True,
              segment=True),
    ), agreement=0.99),
    Case("segment_integrated_gradients", lambda s: f"integrated gradients, {s['ig_steps']} steps, top-1 segment", (
        *_ours_sweep("integrated_gradients", "galleryvis.attribute(target=Segment())", steps="ig_steps",
                     method="gausslegendre", baseline="zero"),
        *_peer_sweep(peers.captum_segment_integrated_gradients,
                     "captum IntegratedGradients (logits summed over the mask), internal_batch_size",
                     steps="ig_steps", segment=True),
    ), floor=lambda s: (s["ig_steps"], "fwdbwd_bs"), agreement=0.99),
]}
#: The classifier rows the segmentation rows stand for (``--cases gradcam`` selects both).
SEGMENT_ROWS = {"gradcam": "segment_gradcam", "integrated_gradients": "segment_integrated_gradients"}
SEGMENT_ORDER = tuple(SEGMENT_ROWS.values())
CASES.update(SEGMENTATION)

#: The detection section's rows: a torchvision detector explained for each image's best
#: detection (galleryvis: ``targets.Detection()``, found by a forward of the clean images inside
#: the timed call; pytorch-grad-cam: its label and box, found once before timing, as its tutorial
#: does; the D-RISE formula finds it as galleryvis does, so both run M + 1 forwards, and so does
#: the floor). D-RISE's masks are the same tensor on both sides (``drise_masks`` of them).
DETECTION: dict[str, Case] = {c.key: c for c in [
    Case("detect_gradcam", lambda s: "Grad-CAM, best detection", (
        Impl("galleryvis", "galleryvis.attribute(target=Detection())", "galleryvis", _ours_layer("gradcam")),
        _peer(peers.gradcam_detect_gradcam, "pytorch-grad-cam GradCAM + FasterRCNNBoxScoreTarget", layer=True,
              detect=True),
    ), agreement=0.99),
    Case("detect_drise", lambda s: f"D-RISE, {s['drise_masks']} masks, best detection", (
        # galleryvis runs 4x batch_size masked copies per forward: ¼× and 1× give the peer's counts
        *_ours_sweep("drise", "galleryvis.attribute(target=Detection())", masks="drise_mask_tensor",
                     multiples=(1 / FORWARD_BATCH_FACTOR, 1)),
        *_peer_sweep(peers.torch_drise, "the paper's formula in plain PyTorch + a forward finding the detection, "
                     "masked copies per forward", masks="drise_mask_tensor"),
    ), gradient=False, floor=lambda s: (s["drise_masks"], "forward_bs", 1), agreement=0.99),
]}
#: The classifier rows the detection rows stand for (``--cases rise`` selects D-RISE).
DETECT_ROWS = {"gradcam": "detect_gradcam", "rise": "detect_drise"}
DETECT_ORDER = tuple(DETECT_ROWS.values())
CASES.update(DETECTION)


def input_gradient(model: nn.Module, x: Tensor, targets: list[int], masks: Tensor | None = None,
                   boxes: Tensor | None = None) -> Tensor:
    """One forward + backward w.r.t. the input only, parameters frozen: the cost floor. The score
    is each row's class logit, or with ``masks`` (N, H, W) its class logits summed over the mask,
    or with ``boxes`` (N, 4) a detector's box score of the detection of that label and box."""
    from galleryvis.tasks import spatial_logits

    xg = x.detach().requires_grad_(True)
    classes = torch.tensor(targets, device=x.device)
    with frozen(model), torch.enable_grad():
        out = model(xg)
        if boxes is not None:
            score = peers.box_scores(out, classes, boxes)
        elif masks is None:
            score = out.gather(1, classes[:, None])
        else:
            score = peers.segment_scores(spatial_logits(out), classes, masks.float())
        (g,) = torch.autograd.grad(score.sum(), xg)
    return g
