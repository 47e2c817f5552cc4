"""Object detectors: the Detection objective, D-RISE, and agreement with pytorch-grad-cam's
Faster R-CNN recipe and with D-RISE's formula. Seeded random-weight torchvision detectors at
small sizes (no download); ``box_score_thresh=0`` so they still output boxes."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign, box_iou

import galleryvis
from galleryvis import targets
from galleryvis.targets.detection import IOU_THRESHOLD, Detections, detections_of, iou, similarity
from galleryvis.tasks import TaskError

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget  # noqa: E402
from test_agreement import check, pearson  # noqa: E402
from conftest import IMAGES  # noqa: E402

pytestmark = pytest.mark.slow  # real detectors against pytorch-grad-cam: `pytest -m "not slow"` leaves them out

#: Pixels in [0, 1]: torchvision's detectors normalize inside.
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def photo(name: str, size: tuple[int, int]) -> Tensor:
    """A photo of input_images/ resized to ``size`` (H, W), pixels in [0, 1], (3, H, W)."""
    return TF.to_tensor(Image.open(IMAGES / name).convert("RGB").resize(size[::-1]))


@pytest.fixture(scope="module")
def frcnn() -> nn.Module:
    """Faster R-CNN ResNet-50 FPN v1, seeded random weights, 128-px inputs, 30 proposals."""
    torch.manual_seed(0)
    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=128,
                                   max_size=128, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
                                   box_detections_per_img=30).eval()


@pytest.fixture(scope="module")
def small() -> nn.Module:
    """A small Faster R-CNN (two convolutions as its backbone, 5 classes), seeded, 64-px inputs."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    backbone.out_channels = 16  # type: ignore[assignment]
    return FasterRCNN(backbone, num_classes=5, min_size=64, max_size=64, box_score_thresh=0.0,
                      rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), rpn_pre_nms_top_n_test=60,
                      rpn_post_nms_top_n_test=20, box_detections_per_img=20).eval()


@pytest.fixture(scope="module")
def photos128() -> Tensor:
    return torch.stack([photo("cat.png", (128, 128)), photo("coffee.png", (128, 128))])


def predicted(model: nn.Module, x: Tensor) -> list[dict[str, Tensor]]:
    with torch.no_grad():
        return model(x)


def test_gradcam_agrees_with_pytorch_grad_cam_box_score_target(frcnn: nn.Module, photos128: Tensor) -> None:
    """Grad-CAM at backbone.body.layer4 with FasterRCNNBoxScoreTarget on each image's best
    detection, against galleryvis's Detection(cls, box) of the same detection."""
    out = predicted(frcnn, photos128)
    labels = [int(o["labels"][0]) for o in out]
    boxes = [o["boxes"][0] for o in out]
    with GradCAM(frcnn, target_layers=[frcnn.backbone.body.layer4]) as cam:
        ref = cam(photos128, targets=[FasterRCNNBoxScoreTarget([lab], [b.numpy()]) for lab, b in zip(labels, boxes)])
    ours = galleryvis.attribute(frcnn, photos128, "gradcam", layer="backbone.body.layer4", **RAW,
                                target=[targets.Detection(cls=lab, box=b.tolist()) for lab, b in zip(labels, boxes)])
    check("gradcam faster r-cnn layer4", pearson(ours[:, 0], ref))


def test_detection_targets_choose_and_refuse(frcnn: nn.Module, photos128: Tensor) -> None:
    x = photos128[:1]
    (out,) = predicted(frcnn, x)
    top = targets.resolve(targets.Detection(), frcnn, x, 8).reference()[0]
    assert top.label == int(out["labels"][out["scores"].argmax()]) and top.score == float(out["scores"].max())
    cls = int(out["labels"][-1])
    of_class = targets.resolve(targets.Detection(cls=cls), frcnn, x, 8).reference()[0]
    assert of_class.label == cls
    assert of_class.score == float(out["scores"][out["labels"] == cls].max())
    # a box: the detection of highest IoU with it, here a detection's own box slightly moved
    i = len(out["boxes"]) // 2
    moved = (out["boxes"][i] + 1.0).tolist()
    matched = targets.resolve(targets.Detection(box=moved), frcnn, x, 8).reference()[0]
    ious = box_iou(torch.tensor([moved]), out["boxes"])[0]
    torch.testing.assert_close(matched.box, out["boxes"][ious.argmax()])
    # few detections kept: max_detections and score_threshold apply before the choice
    best2 = targets.resolve(targets.Detection(max_detections=1), frcnn, x, 8).reference()[0]
    assert best2.score == top.score
    # rank: the k-th best (of a class)
    ranked = out["scores"].sort(descending=True, stable=True).values
    assert targets.resolve(targets.Detection(rank=3), frcnn, x, 8).reference()[0].score == float(ranked[2])
    of_class2 = out["scores"][out["labels"] == top.label].sort(descending=True).values
    second = targets.resolve(targets.Detection(cls=top.label, rank=2), frcnn, x, 8).reference()[0]
    assert second.label == top.label and second.score == float(of_class2[1])
    with pytest.raises(ValueError, match=r"^Detection: detection 4 asked, and 3 are above the score threshold$"):
        targets.resolve(targets.Detection(rank=4, max_detections=3), frcnn, x, 8).split(8)
    with pytest.raises(ValueError, match=r"no detection above the score threshold"):
        targets.resolve(targets.Detection(score_threshold=2.0), frcnn, x, 8).split(8)
    with pytest.raises(ValueError, match=r"^Detection: no detection matches box \[1.0, 1.0, 3.0, 3.0\] "
                                         r"\(IoU >= 0.5\); the best IoU found is 0\.\d\d$"):
        galleryvis.attribute(frcnn, x, "gradcam", layer="backbone.body.layer4",
                             target=targets.Detection(box=[1, 1, 3, 3]))


class Refuses(nn.Module):
    """A model that fails the test when it is called: a refusal must come before any computation."""

    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("the model was called")


@pytest.mark.parametrize("name", ["scorecam", "lrp", "ablationcam", "xgradcam"])
def test_techniques_without_detection_refuse_in_one_line(name: str) -> None:
    with pytest.raises(TaskError, match=rf"^{name} does not support detection models \(it supports [a-z, -]+\)$"):
        galleryvis.attribute(Refuses(), torch.rand(1, 3, 32, 32), name, target=targets.Detection(cls=1),
                             layer="x")


def test_drise_refuses_classification() -> None:
    with pytest.raises(TaskError, match=r"^drise does not support classification models \(it supports detection\)$"):
        galleryvis.attribute(Refuses(), torch.rand(1, 3, 32, 32), "drise", target=3)


def drise_by_hand(model: nn.Module, x: Tensor, masks: Tensor) -> Tensor:
    """D-RISE (Petsiuk et al. 2021, eq. 2 and 3) for each image's top detection, written out:
    w_i = max_j IoU(L_t, L_j) cos(P_t, P_j) over the detections of x * M_i, P a torchvision
    detection's one-hot class vector scaled by its score; the map sum_i w_i M_i / M."""
    maps = []
    with torch.no_grad():
        for xi in x:
            (ref,) = model(xi[None])
            t = int(ref["scores"].argmax())
            box, label = ref["boxes"][t], ref["labels"][t]
            total = torch.zeros(masks.shape[-2:])
            for m in masks:
                (d,) = model((xi * m)[None])
                iou = box_iou(box[None], d["boxes"])[0]
                cos = (d["labels"] == label).float()  # cosine of two one-hot vectors times their scores
                total += (iou * cos).max() * m[0] if len(iou) else 0 * m[0]
            maps.append(total / len(masks))
    return torch.stack(maps)


def test_drise_agrees_with_the_paper_formula(small: nn.Module) -> None:
    x = torch.stack([photo("rocket.jpg", (64, 64)), photo("cameraman.png", (64, 64))])
    gen = torch.Generator().manual_seed(1)
    masks = torch.nn.functional.interpolate((torch.rand(24, 1, 4, 4, generator=gen) < 0.5).float(), size=(64, 64),
                                           mode="bilinear", align_corners=False)
    ours = galleryvis.attribute(small, x, "drise", target=targets.Detection(), masks=masks, **RAW)
    check("drise small faster r-cnn", pearson(ours[:, 0], drise_by_hand(small, x, masks)))
    # (M, H, W) masks are the same masks
    torch.testing.assert_close(
        galleryvis.attribute(small, x, "drise", target=targets.Detection(), masks=masks[:, 0], **RAW), ours)
    with pytest.raises(ValueError, match=r"^drise: masks must lie in \[0, 1\], got \[0, 2\]$"):
        galleryvis.attribute(small, x, "drise", target=targets.Detection(), masks=masks * 2, **RAW)


def test_similarity_is_the_papers_with_class_probabilities_and_objectness() -> None:
    """A detector that gives class probabilities and an objectness: IoU x cosine x objectness."""
    ref_out = [{"boxes": torch.tensor([[10.0, 10, 30, 30]]), "labels": torch.tensor([1]),
                "scores": torch.tensor([0.6]), "probs": torch.tensor([[0.1, 0.6, 0.3]])}]
    ref = targets.Detection().resolve(ref_out).reference()[0]
    boxes = torch.tensor([[10.0, 10, 30, 30], [12.0, 10, 30, 30]])
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.5, 0.4]])
    dets = Detections(boxes, torch.tensor([0, 1]), probs.amax(1), probs, torch.tensor([0.9, 0.7]))
    cos = torch.nn.functional.cosine_similarity(probs, torch.tensor([[0.1, 0.6, 0.3]]))
    by_hand = (box_iou(boxes[:1], boxes)[0] * cos * torch.tensor([0.9, 0.7])).max()
    torch.testing.assert_close(similarity(dets, ref), by_hand)
    assert float(similarity(detections_of([{"boxes": boxes[:0], "labels": torch.tensor([], dtype=torch.long),
                                   "scores": torch.tensor([])}])[0], ref)) == 0.0


def test_results_do_not_depend_on_the_other_images(small: nn.Module) -> None:
    """Photos of different sizes in one call, each through the detector's own transform: each
    image's maps are those of a call with that image alone, also in a batch of equal sizes."""
    a, b = photo("cat.png", (64, 80)), photo("coffee.png", (72, 64))
    kw = {"target": targets.Detection(), "masks": 8, "cells": 4, **RAW}
    both = galleryvis.attribute(small, [a, b], "drise", **kw)
    assert [tuple(m.shape) for m in both] == [(1, 64, 80), (1, 72, 64)]
    with pytest.raises(ValueError, match=r"^image 1: Detection: no detection matches box \[0.0, 0.0, 1.0, 1.0\]"):
        galleryvis.attribute(small, [a, b], "vanilla", target=[targets.Detection(), targets.Detection(box=[0, 0, 1, 1])])
    torch.testing.assert_close(both[1], galleryvis.attribute(small, b[None], "drise", **kw)[0])
    c = photo("rocket.jpg", (64, 80))
    grads = galleryvis.attribute(small, torch.stack([a, c]), "vanilla", target=targets.Detection(), **RAW)
    torch.testing.assert_close(grads[1], galleryvis.attribute(small, c[None], "vanilla",
                                                              target=targets.Detection(), **RAW)[0])
    assert grads[1].abs().sum() > 0


def test_the_box_score_is_pytorch_grad_cams(small: nn.Module) -> None:
    """Detection's score is FasterRCNNBoxScoreTarget's value, and 0 when the box finds no match."""
    x = photo("cat.png", (64, 64))[None]
    out = predicted(small, x)
    box, label = out[0]["boxes"][3], int(out[0]["labels"][3])
    objective = targets.resolve(targets.Detection(cls=label, box=box.tolist()), small, x, 8)
    expected = FasterRCNNBoxScoreTarget([label], [box.numpy()], IOU_THRESHOLD)(out[0])
    torch.testing.assert_close(objective.score(out), expected.reshape(1))
    far = [{**out[0], "boxes": out[0]["boxes"] + 1000}]
    assert objective.score(far).tolist() == [0.0]


def fpn_levels(model: nn.Module, x: Tensor, labels: list[int], boxes: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The FPN's maps (``model.backbone``'s dict) and the gradients of pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` summed over the images w.r.t. them (zeros where the score does not
    reach a map: the RPN's proposals are detached, so nothing reads "pool"), by a hook of the test's own."""
    seen: dict[str, Tensor] = {}

    def keep(_m: nn.Module, _i: object, out: dict[str, Tensor]) -> None:
        seen.update(out)
        for v in out.values():
            v.retain_grad()

    handle = model.backbone.register_forward_hook(keep)
    try:
        out = model(x)
    finally:
        handle.remove()
    score = sum(FasterRCNNBoxScoreTarget([lab], [b.numpy()])(o) for lab, b, o in zip(labels, boxes, out))
    score.backward()
    return [v.detach() for v in seen.values()], [torch.zeros_like(v) if v.grad is None else v.grad for v in seen.values()]


def test_cams_at_the_fpn_read_it_as_pytorch_grad_cams_reshape_transform(frcnn: nn.Module, photos128: Tensor) -> None:
    """At ``backbone`` (a dict of five maps), Eigen-CAM equals pytorch-grad-cam's EigenCAM with
    ``fasterrcnn_reshape_transform`` (the maps' magnitudes resized to the smallest level,
    concatenated); Grad-CAM weights those by the gradients resized the same way (pytorch-grad-cam
    records no gradient for a dict output, so its Grad-CAM cannot run there): checked by hand."""
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    x = photos128

    def up(m: Tensor) -> Tensor:
        return torch.nn.functional.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)

    with EigenCAM(frcnn, [frcnn.backbone], reshape_transform=fasterrcnn_reshape_transform) as cam:
        theirs = cam(x, targets=[lambda out: out] * len(x))  # the targets are not read
        acts = cam.activations_and_grads.activations[0]
    assert acts.shape[1] == 5 * 256
    proj = torch.from_numpy(get_2d_projection(acts.numpy()))[:, None]
    check("eigencam fpn grad-cam vs its projection", pearson(up(torch.relu(proj)), theirs))
    sign = torch.where(torch.tensor(pearson(proj, acts.sum(1))) < 0, -1.0, 1.0)[:, None, None, None]
    ours = galleryvis.attribute(frcnn, x, "eigencam", layer="backbone", target=targets.Detection(), **RAW)
    check("eigencam fpn", pearson(ours, up(torch.relu(sign * proj))))

    out = predicted(frcnn, x)
    labels, boxes = [int(o["labels"][0]) for o in out], [o["boxes"][0] for o in out]
    maps, grads = fpn_levels(frcnn, x, labels, boxes)
    size = maps[-1].shape[-2:]  # the "pool" level, the smallest
    a = fasterrcnn_reshape_transform(dict(zip(map(str, range(len(maps))), maps)) | {"pool": maps[-1]})[:, :5 * 256]
    g = torch.cat([torch.nn.functional.interpolate(v, size, mode="bilinear") for v in grads], 1)
    by_hand = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    ours = galleryvis.attribute(frcnn, x, "gradcam", layer="backbone", **RAW,
                                target=[targets.Detection(cls=lab, box=b.tolist()) for lab, b in zip(labels, boxes)])
    check("gradcam fpn by hand", pearson(ours, up(by_hand)))


@pytest.mark.parametrize("name", ["hirescam", "gradcam_pp", "layercam"])
def test_the_other_cams_run_at_the_fpn(frcnn: nn.Module, photos128: Tensor, name: str) -> None:
    """HiResCAM, Grad-CAM++ and LayerCAM take the FPN as Grad-CAM does: a map per image on the
    smallest level's grid (upsampled to the image), finite, not blank."""
    maps = galleryvis.attribute(frcnn, photos128, name, layer="backbone", target=targets.Detection(), **RAW)
    assert maps.shape == (2, 1, 128, 128) and torch.isfinite(maps).all()
    assert (maps.flatten(1).amax(1) > 0).all()


def test_layers_lists_the_fpn_with_its_levels() -> None:
    """``galleryvis layers`` shows a detector's FPN with the grid its levels are read on."""
    from click.testing import CliRunner

    from galleryvis.cli import main

    result = CliRunner().invoke(main, ["layers", "fasterrcnn_mobilenet_v3_large_fpn", "--size", "64"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if row.split()[:1] == ["backbone"])
    assert line.rstrip().endswith("(3 levels: 25x25, 25x25, 13x13)")


def test_eigencam_on_yolo_agrees_with_pytorch_grad_cams_recipe(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eigen-CAM on a seeded random-weight YOLOv8n (built from its config, no download) at the
    layer before the head, as pytorch-grad-cam's YOLO tutorial takes it. The first principal
    component's sign is arbitrary: grad-cam's map is ReLU(P) of its projection P, ours
    ReLU(s * P) with s making it correlate positively with the channel sum."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    ultralytics = pytest.importorskip("ultralytics")
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    torch.manual_seed(0)
    yolo = ultralytics.YOLO("yolov8n.yaml").model.eval()
    x = torch.stack([photo("cat.png", (128, 128)), photo("rocket.jpg", (128, 128))])
    with EigenCAM(yolo, [yolo.model[-2]]) as cam:
        theirs = cam(x, targets=[lambda out: out.sum()] * len(x))  # the targets are not read
        acts = cam.activations_and_grads.activations[0]
    proj = torch.from_numpy(get_2d_projection(acts.numpy()))[:, None]

    def up(m: Tensor) -> Tensor:
        return torch.nn.functional.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)

    check("eigencam yolo grad-cam vs its projection", pearson(up(torch.relu(proj)), theirs))
    sign = torch.where(torch.tensor(pearson(proj, acts.sum(1))) < 0, -1.0, 1.0)[:, None, None, None]
    ours = galleryvis.attribute(yolo, x, "eigencam", layer=f"model.{len(yolo.model) - 2}",
                                target=targets.Detection(), **RAW)
    check("eigencam yolo", pearson(ours, up(torch.relu(sign * proj))))
    # the raw predictions are read as one detection per anchor: D-RISE's similarity of the top one with itself is 1
    with torch.no_grad():
        out = yolo(x)
    dets, top = detections_of(out), targets.Detection().resolve(out).reference()
    assert [float(similarity(d, r)) for d, r in zip(dets, top)] == pytest.approx([1.0, 1.0])


def test_deletion_insertion_reads_the_drise_similarity(small: nn.Module) -> None:
    """Metrics read a detection's confidence: on the clean image the reference detection is
    found again (similarity 1), with every pixel inserted too."""
    from galleryvis.metrics import deletion_insertion

    x = torch.stack([photo("cat.png", (64, 64)), photo("rocket.jpg", (64, 64))])
    maps = galleryvis.attribute(small, x, "drise", target=targets.Detection(), masks=8, cells=4, **RAW)
    r = deletion_insertion(small, x, maps, targets.Detection(), steps=4, **RAW)
    assert r.deletion_curve[:, 0].tolist() == pytest.approx([1.0, 1.0])
    assert r.insertion_curve[:, -1].tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("name", ["drise", "gradcam", "smoothgrad", "occlusion"])
def test_detection_techniques_leave_the_detector_as_before(small: nn.Module, name: str) -> None:
    from test_model_changes import assert_as_before, snapshot

    predicted(small, torch.rand(1, 3, 64, 64))  # torchvision's RoI pooler sets its scales on its first forward
    before = snapshot(small)
    params = {"drise": {"masks": 4, "cells": 4}, "gradcam": {"layer": "backbone.2"}, "smoothgrad": {"samples": 2},
              "occlusion": {"window": 32, "stride": 32}}[name]
    galleryvis.attribute(small, photo("cat.png", (64, 64))[None], name, target=targets.Detection(), **params, **RAW)
    assert_as_before(small, before)


def test_default_cam_layer_of_detectors(small: nn.Module, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer of the backbone, never of the heads a probe would find last."""
    from torchvision.models import detection as tvd

    from galleryvis.engine.layers import default_layer

    x = torch.rand(1, 3, 64, 64)
    for build, expected in [(tvd.fasterrcnn_mobilenet_v3_large_fpn, "backbone.body.16"),
                            (tvd.retinanet_resnet50_fpn, "backbone.body.layer4"),
                            (tvd.ssdlite320_mobilenet_v3_large, "backbone.features.1")]:
        model = build(weights=None, weights_backbone=None, num_classes=3).eval()
        assert default_layer(model, x) == expected, build.__name__
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    ultralytics = pytest.importorskip("ultralytics")
    assert default_layer(ultralytics.YOLO("yolov8n.yaml").model, x) == "model.21"
    assert default_layer(small, x) == "backbone"  # a backbone of its own, without an FPN


@pytest.mark.parametrize("builder", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_other_torchvision_detectors_called_as_they_are(builder: str) -> None:
    """RetinaNet, FCOS and SSDlite (seeded random weights, score_thresh=0): Grad-CAM at the
    default layer and D-RISE give finite maps (random FCOS weights give boxes of no area), each
    image's the same as in a call of its own."""
    from torchvision.models import detection as tvd

    torch.manual_seed(0)
    size = {} if builder.startswith("ssd") else {"min_size": 64, "max_size": 64}
    model = getattr(tvd, builder)(weights=None, weights_backbone=None, num_classes=5, score_thresh=0.0,
                                  **size).eval()
    x = torch.stack([photo("cat.png", (64, 64)), photo("coffee.png", (64, 64))])
    for name, params in (("gradcam", {}), ("drise", {"masks": 4, "cells": 4})):
        both = galleryvis.attribute(model, x, name, target=targets.Detection(), **params, **RAW)
        alone = galleryvis.attribute(model, x[1:], name, target=targets.Detection(), **params, **RAW)
        assert torch.isfinite(both).all(), name
        torch.testing.assert_close(both[1:], alone, rtol=1e-4, atol=1e-5)


def test_iou_is_torchvisions_and_zero_for_boxes_of_no_area() -> None:
    """Random weights give boxes of no area (FCOS on a masked image): their IoU is 0, not NaN."""
    gen = torch.Generator().manual_seed(0)
    corners = torch.rand(6, 2, 2, generator=gen) * 50
    boxes = torch.cat([corners.amin(1), corners.amax(1)], 1)
    torch.testing.assert_close(iou(boxes[0], boxes), box_iou(boxes[:1], boxes)[0])
    flat = torch.tensor([[5.0, 5, 5, 9], [5.0, 5, 5, 9]])
    assert iou(flat[0], flat).tolist() == [0.0, 0.0]
    ref = targets.Detection().resolve([{"boxes": flat[:1], "labels": torch.tensor([1]),
                                        "scores": torch.tensor([0.5])}]).reference()[0]
    assert float(similarity(Detections(flat, torch.tensor([1, 1]), torch.tensor([0.5, 0.4])), ref)) == 0.0


def test_drise_on_a_detector_with_batch_norm_spends_no_pass_on_folding() -> None:
    """Folding is checked on a probe's logits and a detector gives none: D-RISE runs the clean
    image once (its reference detection) and the masked copies, nothing else."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
    backbone.out_channels = 8  # type: ignore[assignment]
    model = FasterRCNN(backbone, num_classes=3, min_size=32, max_size=32, box_score_thresh=0.0,
                       rpn_anchor_generator=AnchorGenerator(((16,),), ((1.0,),)),
                       box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2)).eval()
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    galleryvis.attribute(model, photo("cat.png", (32, 32))[None], "drise", target=targets.Detection(), masks=12,
                         cells=4, batch_size=2, **RAW)
    assert calls == [1, 8, 4]  # batch_size 2: 8 masked copies per forward
