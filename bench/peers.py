"""captum and pytorch-grad-cam at the same settings as galleryvis, when they are installed.

Each runner takes ``(model, x, targets, **settings)`` and returns the maps; the model is used
as torchvision builds it (parameters trainable, in-place ReLUs), as a user would pass it.
A runner raises :class:`~bench.common.Skip` when its package is missing.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
from typing import Any, Callable

import torch
from torch import Tensor, nn

from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD
from galleryvis.hooks import resolve_layer

from .common import Skip, detection_targets


def version(package: str) -> str | None:
    """Installed distribution version, or None."""
    from importlib.metadata import PackageNotFoundError, version as _version

    try:
        return _version(package)
    except PackageNotFoundError:
        return None


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Skip(f"{module} is not installed")


# -- captum -----------------------------------------------------------------------------------


def captum_saliency(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    _need("captum")
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=targets, abs=False)


def captum_input_x_gradient(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    _need("captum")
    from captum.attr import InputXGradient

    return InputXGradient(model).attribute(x, target=targets)


def captum_integrated_gradients(model: nn.Module, x: Tensor, targets: list[int], steps: int,
                                batch_size: int) -> Tensor:
    _need("captum")
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(x, baselines=0.0, target=targets, n_steps=steps,
                                                method="gausslegendre", internal_batch_size=batch_size)


def captum_smoothgrad(model: nn.Module, x: Tensor, targets: list[int], samples: int, sigma: float,
                      batch_size: int) -> Tensor:
    """NoiseTunnel(Saliency), noise std = sigma * (max - min) of each image (one call per image)."""
    _need("captum")
    from captum.attr import NoiseTunnel, Saliency

    nt = NoiseTunnel(Saliency(model))
    return torch.cat([
        nt.attribute(xi[None], nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=batch_size,
                     stdevs=sigma * float(xi.max() - xi.min()), target=t, abs=False)
        for xi, t in zip(x, targets)
    ])


def captum_gradcam(model: nn.Module, x: Tensor, targets: list[int], layer: str) -> Tensor:
    _need("captum")
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, resolve_layer(model, layer)).attribute(x, target=targets, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")


def captum_occlusion(model: nn.Module, x: Tensor, targets: list[int], window: int, stride: int,
                     batch_size: int) -> Tensor:
    """captum's Occlusion over all channels, zero baseline, ``perturbations_per_eval=batch_size``."""
    _need("captum")
    from captum.attr import Occlusion

    with torch.no_grad():
        return Occlusion(model).attribute(x, sliding_window_shapes=(x.shape[1], window, window),
                                          strides=(x.shape[1], stride, stride), baselines=0.0, target=targets,
                                          perturbations_per_eval=batch_size)


def captum_gradient_shap(model: nn.Module, x: Tensor, targets: list[int], samples: int, stdev: float,
                         seed: int = 0) -> Tensor:
    """captum's GradientShap with ``samples`` uniform-noise baselines (galleryvis's default
    distribution); it has no batch setting: all samples of an image go through at once."""
    _need("captum")
    from captum.attr import GradientShap

    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    refs = ((torch.rand((samples, *x.shape[1:]), generator=g) - mean) / std).to(x.device)
    return GradientShap(model).attribute(x, baselines=refs, n_samples=samples, stdevs=stdev, target=targets)


def captum_lrp(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    """captum's LRP with its default rules (epsilon for conv, linear and pooling layers)."""
    _need("captum")
    from captum.attr import LRP

    return LRP(model).attribute(x, target=targets)


def _grid_mask(x: Tensor, segments: int) -> Tensor:
    """galleryvis's grid of ``segments`` cells as a captum feature mask, (1, 1, H, W)."""
    from galleryvis.attribution.shapley import grid_segments

    return grid_segments(x.shape[-2], x.shape[-1], segments, x.device)[None, None]


def captum_kernel_shap(model: nn.Module, x: Tensor, targets: list[int], samples: int, segments: int,
                       batch_size: int) -> Tensor:
    """KernelShap over the same grid cells, ``perturbations_per_eval`` = the bench's batch."""
    _need("captum")
    from captum.attr import KernelShap

    return KernelShap(model).attribute(x, baselines=0.0, target=targets, feature_mask=_grid_mask(x, segments),
                                       n_samples=samples, perturbations_per_eval=batch_size)


def captum_lime(model: nn.Module, x: Tensor, targets: list[int], samples: int, segments: int,
                batch_size: int) -> Tensor:
    """Lime (captum's default surrogate and kernel) over the same grid cells."""
    _need("captum")
    from captum.attr import Lime

    return Lime(model).attribute(x, baselines=0.0, target=targets, feature_mask=_grid_mask(x, segments),
                                 n_samples=samples, perturbations_per_eval=batch_size)


def captum_deeplift(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    """DeepLift with the zero baseline; it refuses a module called twice (torchvision's ResNet
    blocks reuse ``self.relu``), which is a Skip here."""
    _need("captum")
    from captum.attr import DeepLift

    inplace = [m for m in model.modules() if getattr(m, "inplace", False)]
    try:
        for m in inplace:
            m.inplace = False
        return DeepLift(model).attribute(x, target=targets)
    except RuntimeError as exc:
        if "used more than once" in str(exc):
            raise Skip("captum DeepLift refuses a module called twice (this model reuses its ReLUs)") from None
        raise
    finally:
        for m in inplace:
            m.inplace = True


# -- pytorch-grad-cam ------------------------------------------------------------------------


Reshape = Callable[[Tensor], Tensor] | None


def _gradcam_run(cls_name: str, model: nn.Module, x: Tensor, targets: list[int], layer: str,
                 batch_size: int | None = None, reshape_transform: Reshape = None) -> Tensor:
    """``reshape_transform``: grad-cam's documented hook for token and channels-last layers."""
    _need("pytorch_grad_cam")
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, cls_name)
    with cls(model=model, target_layers=[resolve_layer(model, layer)], reshape_transform=reshape_transform) as cam:
        if batch_size is not None:
            cam.batch_size = batch_size  # the documented way (cam.py) to set ScoreCAM's batch
        with contextlib.redirect_stderr(io.StringIO()):  # ScoreCAM's tqdm bars
            out = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    return torch.from_numpy(out)


def gradcam_gradcam(model: nn.Module, x: Tensor, targets: list[int], layer: str,
                    reshape_transform: Reshape = None) -> Tensor:
    return _gradcam_run("GradCAM", model, x, targets, layer, reshape_transform=reshape_transform)


def gradcam_layercam(model: nn.Module, x: Tensor, targets: list[int], layer: str,
                     reshape_transform: Reshape = None) -> Tensor:
    return _gradcam_run("LayerCAM", model, x, targets, layer, reshape_transform=reshape_transform)


def gradcam_scorecam(model: nn.Module, x: Tensor, targets: list[int], layer: str, batch_size: int,
                     reshape_transform: Reshape = None) -> Tensor:
    return _gradcam_run("ScoreCAM", model, x, targets, layer, batch_size, reshape_transform)


def gradcam_ablationcam(model: nn.Module, x: Tensor, targets: list[int], layer: str, batch_size: int,
                        reshape_transform: Reshape = None) -> Tensor:
    if reshape_transform is not None:
        raise Skip("pytorch-grad-cam's AblationCAM needs its AblationLayerVit on token layers")
    _need("pytorch_grad_cam")
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with pytorch_grad_cam.AblationCAM(model=model, target_layers=[resolve_layer(model, layer)],
                                      batch_size=batch_size) as cam, contextlib.redirect_stderr(io.StringIO()):
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets]))


def combination(model: nn.Module, x: Tensor, targets: list[int], layer: str,
                reshape_transform: Reshape = None) -> dict[str, Any]:
    """The four maps from the peers, one technique at a time: captum Saliency and
    InputXGradient, pytorch-grad-cam GradCAM and LayerCAM."""
    return {"vanilla": captum_saliency(model, x, targets),
            "grad_x_image": captum_input_x_gradient(model, x, targets),
            "gradcam": gradcam_gradcam(model, x, targets, layer, reshape_transform),
            "layercam": gradcam_layercam(model, x, targets, layer, reshape_transform)}



# -- segmentation: the class's logits summed over a region ------------------------------------


class SegmentationOutput(nn.Module):
    """The wrapper pytorch-grad-cam's segmentation tutorial puts around a torchvision model:
    its forward returns the score tensor (``out`` of the dict), (N, classes, H, W)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        from galleryvis.tasks import spatial_logits

        return spatial_logits(self.model(x))


def segment_scores(output: Tensor, classes: Tensor, masks: Tensor) -> Tensor:
    """Each row's class logits summed over its region: ``output`` (N, classes, H, W), ``classes``
    (N,) and ``masks`` (N, H, W) float; (N,)."""
    index = classes.long()[:, None, None, None].expand(-1, 1, *output.shape[-2:])
    return (output.gather(1, index)[:, 0] * masks).sum((1, 2))


def captum_segment_integrated_gradients(model: nn.Module, x: Tensor, targets: list[int], masks: Tensor,
                                        steps: int, batch_size: int) -> Tensor:
    """captum's IntegratedGradients on a forward that returns each image's summed class logits over
    its region (the classes and masks travel as ``additional_forward_args``, which captum expands
    with the steps); ``internal_batch_size=batch_size``."""
    _need("captum")
    from captum.attr import IntegratedGradients

    wrapped = SegmentationOutput(model)
    classes = torch.tensor(targets, device=x.device)

    def summed(xs: Tensor, cls: Tensor, region: Tensor) -> Tensor:
        return segment_scores(wrapped(xs), cls, region)

    return IntegratedGradients(summed).attribute(x, baselines=0.0, n_steps=steps, method="gausslegendre",
                                                 additional_forward_args=(classes, masks.float()),
                                                 internal_batch_size=batch_size)


def gradcam_segment_gradcam(model: nn.Module, x: Tensor, targets: list[int], masks: Tensor, layer: str) -> Tensor:
    """pytorch-grad-cam's GradCAM on the tutorial's wrapper, one ``SemanticSegmentationTarget(class,
    mask)`` per image."""
    _need("pytorch_grad_cam")
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    cams = [SemanticSegmentationTarget(c, m.float().cpu().numpy()) for c, m in zip(targets, masks)]
    with pytorch_grad_cam.GradCAM(model=SegmentationOutput(model), target_layers=[resolve_layer(model, layer)]) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=cams))


# -- detection: each image's best detection --------------------------------------------------


def box_scores(output: list[dict[str, Tensor]], labels: Tensor, boxes: Tensor) -> Tensor:
    """pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` for each image's reference detection: the
    score plus the IoU of the detection of highest IoU with ``boxes[i]`` when that IoU is > 0.5
    and its label is ``labels[i]``, else 0 (connected to the graph); (N,)."""
    from torchvision.ops import box_iou

    out = []
    for o, label, box in zip(output, labels, boxes):
        ious = box_iou(box[None], o["boxes"])[0] if len(o["boxes"]) else o["scores"][:0]
        i = ious.argmax() if len(ious) else None
        hit = i is not None and ious[i] > 0.5 and o["labels"][i] == label
        out.append(ious[i] + o["scores"][i] if hit else o["scores"].sum() * 0)
    return torch.stack(out)


def gradcam_detect_gradcam(model: nn.Module, x: Tensor, targets: list[int], boxes: Tensor, layer: str) -> Tensor:
    """pytorch-grad-cam's Faster R-CNN tutorial: GradCAM with one ``FasterRCNNBoxScoreTarget(labels,
    boxes)`` per image, the detector called as it is (it runs the whole batch in one call: no
    batch setting)."""
    _need("pytorch_grad_cam")
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    cams = [FasterRCNNBoxScoreTarget([t], [b.detach().cpu().numpy()]) for t, b in zip(targets, boxes)]
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[resolve_layer(model, layer)]) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=cams))


def torch_drise(model: nn.Module, x: Tensor, targets: list[int], masks: Tensor, batch_size: int) -> Tensor:
    """D-RISE (Petsiuk et al. 2021, eq. 2 and 3) in plain PyTorch for each image's best detection,
    found first as a user of the formula must (pytorch-grad-cam's detection tutorial runs the
    detector first): one forward of the clean images, the detection of highest score
    (:func:`bench.common.detection_targets`; ``targets`` is not read). Then ``batch_size``
    masked copies per forward under ``torch.inference_mode``, w = max_j IoU(L_t, L_j) cos(P_t, P_j)
    over each copy's detections (a torchvision detection's class vector is its score at its
    label: the cosine is 1 for the same label, 0 for another), the map sum_i w_i M_i / M.
    ``masks`` (M, 1, H, W)."""
    from torchvision.ops import box_iou

    maps = []
    with torch.inference_mode():
        labels, boxes = detection_targets(model, x)
        for xi, label, box in zip(x, labels, boxes):
            total = torch.zeros(masks.shape[-2:], device=x.device)
            for start in range(0, len(masks), batch_size):
                m = masks[start:start + batch_size]
                w = torch.stack([(box_iou(box[None], d["boxes"])[0] * (d["labels"] == label)).max()
                                 if len(d["boxes"]) else box.new_zeros(()) for d in model(xi[None] * m)])
                total += (w[:, None, None] * m[:, 0]).sum(0)
            maps.append(total / len(masks))
    return torch.stack(maps)
