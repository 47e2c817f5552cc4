"""Object detectors: how their raw output is read, matched to a reference detection and scored.

A detector is called as it is: a torchvision detector (Faster R-CNN, RetinaNet, FCOS, SSD, in
eval mode) takes a batch (N, 3, H, W) of images in [0, 1] (or a list of them) and returns one
dict per image, ``boxes`` (K, 4) in pixels of the image it was given, ``labels`` (K,) and
``scores`` (K,); a detector of your own may add ``probs`` (K, classes), each detection's class
probabilities, and ``objectness`` (K,). :class:`galleryvis.targets.Detection` reads it through
:func:`detections_of`; the two objectives are defined here:

* :func:`box_score`, for gradient techniques: the matched detection's class score plus its IoU
  with the reference box, as pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` defines it (0 when
  the detection of highest IoU has IoU <= 0.5 or another class);
* :func:`similarity`, for perturbation techniques and metrics: D-RISE's (Petsiuk et al. 2021)
  similarity of the reference detection with the best detection of the (perturbed) image,
  ``max_j IoU(L_t, L_j) * cos(P_t, P_j) * O_j`` (``O_j`` where the detector gives an objectness).
  A detector that gives one score per box (torchvision) has the class vector ``P`` of a
  detection taken as its score at its label and zeros elsewhere, so ``cos(P_t, P_j)`` is 1 for
  the same class and 0 for another.

Imports torch: only the engine's objectives and techniques use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor, nn

#: The IoU above which a detection matches a reference box (pytorch-grad-cam's and the issue's 0.5).
IOU_THRESHOLD = 0.5


class NotFound(ValueError):
    """No detection of an image is the one a target names (none of its class, none matching its box)."""


def _best(scores: Tensor, score_threshold: float, max_detections: int | None) -> Tensor:
    """The indices of the scores >= ``score_threshold``, best first, at most ``max_detections``."""
    keep = (scores >= score_threshold).nonzero()[:, 0]
    return keep[scores[keep].detach().argsort(descending=True, stable=True)][:max_detections]


class Detections(NamedTuple):
    """One image's detections, best first: ``boxes`` (K, 4) x0, y0, x1, y1 in pixels,
    ``labels`` (K,), ``scores`` (K,), ``probs`` (K, classes) or None, ``objectness`` (K,) or None."""

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    probs: Tensor | None = None
    objectness: Tensor | None = None

    def kept(self, score_threshold: float, max_detections: int) -> Detections:
        """The detections of score >= ``score_threshold``, at most ``max_detections``, best first."""
        keep = _best(self.scores, score_threshold, max_detections)
        return Detections(*(None if v is None else v[keep] for v in self))

    def vectors(self) -> Tensor:
        """Each detection's class vector (K, C): ``probs`` where given, else its score at its
        label and zeros elsewhere (C: one past the highest label)."""
        if self.probs is not None:
            return self.probs
        classes = int(self.labels.max()) + 1 if len(self.labels) else 1
        out = self.scores.new_zeros((len(self.scores), classes))
        return out.scatter(1, self.labels[:, None].long(), self.scores[:, None])


def iou(box: Tensor, boxes: Tensor) -> Tensor:
    """The IoU of ``box`` (4,) with each of ``boxes`` (K, 4), (K,): torchvision's ``box_iou``,
    but 0 where the union is empty (two boxes of no area), never NaN."""
    lt, rb = torch.maximum(box[:2], boxes[:, :2]), torch.minimum(box[2:], boxes[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = (box[2:] - box[:2]).clamp_min(0).prod(-1) + (boxes[:, 2:] - boxes[:, :2]).clamp_min(0).prod(-1)
    union = area - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(union.dtype).tiny), torch.zeros_like(union))


class Reference(NamedTuple):
    """The detection an objective explains in one image: its ``box`` (4,), ``label``,
    ``score`` and class ``vector`` (C,), all detached."""

    box: Tensor
    label: int
    score: float
    vector: Tensor


def _ultralytics(predictions: Tensor) -> list[Detections]:
    """Ultralytics YOLO's raw predictions (N, 4 + classes, anchors), before NMS: every anchor a
    detection, its box from (cx, cy, w, h), its class scores (one sigmoid each) as ``probs``."""
    cx, cy, w, h = predictions[:, :4].unbind(1)
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    probs = predictions[:, 4:].transpose(1, 2)
    scores, labels = probs.max(-1)
    return [Detections(*v) for v in zip(boxes, labels, scores, probs)]


def detections_of(output: Any, rows: int | None = None) -> list[Detections]:
    """A detector's raw output as one :class:`Detections` per image: a list or tuple of dicts
    with ``boxes``, ``labels`` and ``scores`` (torchvision), optionally ``probs`` and
    ``objectness``; or Ultralytics YOLO's (predictions (N, 4 + classes, anchors), ...) in eval
    mode. A ValueError naming what came back otherwise."""
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Tensor) and output[0].dim() == 3:
        output = _ultralytics(output[0])
        if rows is not None and len(output) != rows:
            raise ValueError(f"the detector returned {len(output)} images' detections for a target of {rows} images")
        return output
    ok = isinstance(output, (list, tuple)) and all(
        isinstance(o, dict) and {"boxes", "labels", "scores"} <= o.keys() for o in output)
    if not ok:
        got = type(output).__name__ if not isinstance(output, (list, tuple)) or not output \
            else f"{type(output).__name__} of {type(output[0]).__name__}"
        raise ValueError(f"a detection target needs the detector's output as one dict per image with 'boxes', "
                         f"'labels' and 'scores' (torchvision's); the model returned {got}")
    if rows is not None and len(output) != rows:
        raise ValueError(f"the detector returned {len(output)} images' detections for a target of {rows} images")
    return [Detections(o["boxes"], o["labels"], o["scores"], o.get("probs"), o.get("objectness")) for o in output]


def choose(dets: Detections, cls: int | None, box: Sequence[float] | None, rank: int = 1) -> Reference:
    """The reference detection of one image (:func:`pick`), detached."""
    i = pick(dets, cls, box, rank)
    vector = dets.vectors()[i].detach()
    return Reference(dets.boxes[i].detach(), int(dets.labels[i]), float(dets.scores[i].detach()), vector)


def pick(dets: Detections, cls: int | None, box: Sequence[float] | None, rank: int = 1) -> int:
    """The index of the reference detection of one image: with ``box``, the detection (of class
    ``cls`` when given) of highest IoU with it, which must be >= :data:`IOU_THRESHOLD`; otherwise
    the ``rank``-th highest-scoring detection (of class ``cls`` when given). A one-line ValueError
    when none is (:class:`NotFound`)."""
    of_class = "" if cls is None else f" of class {cls}"
    pool = torch.arange(len(dets.scores), device=dets.scores.device)
    if cls is not None:
        pool = pool[dets.labels[pool] == cls]
    if len(pool) == 0:
        raise NotFound(f"Detection: no detection{of_class} above the score threshold")
    if box is None:
        if rank > len(pool):
            raise NotFound(f"Detection: detection {rank}{of_class} asked, and {len(pool)} are above the "
                             f"score threshold")
        i = int(pool[dets.scores[pool].detach().argsort(descending=True, stable=True)[rank - 1]])
    else:
        ious = iou(torch.as_tensor(list(box), dtype=dets.boxes.dtype, device=dets.boxes.device),
                   dets.boxes[pool].detach())
        best = int(ious.argmax())
        if float(ious[best]) < IOU_THRESHOLD:
            raise NotFound(f"Detection: no detection{of_class} matches box {[round(float(v), 1) for v in box]} "
                             f"(IoU >= {IOU_THRESHOLD}); the best IoU found is {float(ious[best]):.2f}")
        i = int(pool[best])
    return i


def box_score(dets: Detections, ref: Reference) -> Tensor:
    """pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` for one reference: the score plus the
    IoU of the detection of highest IoU with ``ref.box``, when that IoU is > 0.5 and its label
    is ``ref.label``; 0 otherwise (connected to the graph, so its gradient is zero)."""
    zero = dets.scores.sum() * 0
    if len(dets.scores) == 0:
        return zero
    ious = iou(ref.box.to(dets.boxes), dets.boxes)
    i = ious.argmax()
    if ious[i] > IOU_THRESHOLD and int(dets.labels[i]) == ref.label:
        return ious[i] + dets.scores[i]
    return zero


def similarity(dets: Detections, ref: Reference) -> Tensor:
    """D-RISE's similarity of ``ref`` with the best of ``dets``, in [0, 1] (0 without detections)."""
    if len(dets.scores) == 0:
        return dets.scores.new_zeros((), dtype=torch.float32)
    overlap = iou(ref.box.to(dets.boxes).float(), dets.boxes.float())
    vectors = dets.vectors().float()
    ref_vector = ref.vector.to(vectors)
    width = max(vectors.shape[1], ref_vector.shape[0])
    vectors = torch.nn.functional.pad(vectors, (0, width - vectors.shape[1]))
    ref_vector = torch.nn.functional.pad(ref_vector, (0, width - ref_vector.shape[0]))
    cos = torch.nn.functional.cosine_similarity(vectors, ref_vector[None], dim=1)
    s = overlap * cos
    if dets.objectness is not None:
        s = s * dets.objectness.float()
    return s.max()



def detector_layer(model: nn.Module) -> str | None:
    """The CAM layer of a known detector, None for any other model: the last block of a
    torchvision detector's backbone body (``backbone.body.layer4`` of the ResNet-50 FPN ones,
    the last feature block of the MobileNetV3 ones; a backbone of your own without an FPN:
    ``backbone``), the last block of SSD's and SSDlite's ``backbone.features``,
    Ultralytics YOLO's layer before its head (pytorch-grad-cam's YOLO recipe), and the one a
    model names in its ``cam_layer`` (a Hugging Face detector's last backbone stage,
    :class:`galleryvis.sources.huggingface.Boxes`)."""
    from torchvision.models.detection import fcos, generalized_rcnn, retinanet, ssd

    declared = getattr(model, "cam_layer", None)
    if isinstance(declared, str):
        return declared
    if isinstance(model, (generalized_rcnn.GeneralizedRCNN, retinanet.RetinaNet, fcos.FCOS)):
        body = getattr(model.backbone, "body", None)
        if isinstance(body, nn.Module) and len(body._modules):
            return f"backbone.body.{list(body._modules)[-1]}"
        return "backbone"
    features = getattr(model.backbone, "features", None) if isinstance(model, ssd.SSD) else None
    if isinstance(features, nn.Sequential) and len(features):
        return f"backbone.features.{len(features) - 1}"
    layers = getattr(model, "model", None)
    if type(model).__name__ == "DetectionModel" and isinstance(layers, nn.Sequential) and len(layers) > 1:
        return f"model.{len(layers) - 2}"
    return None


@dataclass(frozen=True)
class Limits:
    """A detector's own ``score_threshold`` and ``max_detections`` (a manifest model's keys), as
    a forward hook on the detector: its output becomes one torchvision dict per image (``boxes``,
    ``labels``, ``scores``, with ``probs`` and ``objectness`` where :func:`read` finds them and
    any other per-detection tensor, Mask R-CNN's ``masks``), holding only the detections of
    score >= ``score_threshold``, at most ``max_detections``, best first (gradients flow)."""

    score_threshold: float = 0.0
    max_detections: int | None = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> list[dict[str, Tensor]]:
        dicts = output if isinstance(output, (list, tuple)) and all(isinstance(o, dict) for o in output) else None
        out = []
        for i, d in enumerate(detections_of(output)):
            keep = _best(d.scores, self.score_threshold, self.max_detections)
            given = dict(zip(Detections._fields, d))
            extra = {k: v for k, v in (dicts[i] if dicts is not None else {}).items() if k not in given}
            out.append({k: v[keep] if isinstance(v, Tensor) and v.dim() and v.shape[0] == len(d.scores) else v
                        for k, v in {**given, **extra}.items() if v is not None})
        return out


def limit(model: nn.Module, score_threshold: float | None = None, max_detections: int | None = None) -> None:
    """Make ``model`` (a detector) give only the detections of score >= ``score_threshold``, at
    most ``max_detections`` per image, best first: a torchvision detector's own thresholds are
    set to them (``box_score_thresh`` / ``score_thresh``, ``box_detections_per_img`` /
    ``detections_per_img``, so a threshold below its default 0.05 and more than its 100
    detections count), and a :class:`Limits` hook reads every detector's output. Nothing
    happens when neither is given."""
    if score_threshold is None and max_detections is None:
        return
    for owner in (getattr(model, "roi_heads", None), model):
        if owner is not None and hasattr(owner, "score_thresh") and hasattr(owner, "detections_per_img"):
            if score_threshold is not None:
                owner.score_thresh = float(score_threshold)
            if max_detections is not None:
                owner.detections_per_img = int(max_detections)
            break
    model.register_forward_hook(Limits(float(score_threshold or 0.0), max_detections))

