"""Segmentation and multi-label objectives (galleryvis.targets.Segment / MultiLabel).

Agreement: per-image Pearson r of the raw maps against pytorch-grad-cam's
``SemanticSegmentationTarget`` (with its documented wrapper returning the model's scores) and
captum with the same summed-output forward, on seeded random-weight torchvision FCN-ResNet50,
DeepLabV3-MobileNetV3-Large and LRASPP-MobileNetV3-Large and a tiny Hugging Face SegFormer; the
region is each image's top-1 class (most pixels, background excepted) on the clean image, as
the tutorials compute their mask. Run with ``-s`` to see every r.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import IMAGES, calibrated
from test_agreement import check, frozen, layer_output, pearson, up
from torch import Tensor, nn

import galleryvis
from galleryvis import targets, tasks
from galleryvis.engine.layers import default_layer
from galleryvis.metrics import deletion_insertion

torchvision = pytest.importorskip("torchvision")
captum_attr = pytest.importorskip("captum.attr")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

IG_STEPS = 4
SHARED = ["gradcam", "hirescam", "eigencam", "vanilla", "integrated_gradients"]


class Out(nn.Module):
    """pytorch-grad-cam's documented segmentation wrapper: the model's score tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return tasks.spatial_logits(self.model(x))


def tiny_segformer() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.SegformerConfig(num_labels=6, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                                          decoder_hidden_size=32, num_attention_heads=[1, 1, 2, 2])
    return transformers.SegformerForSemanticSegmentation(config)


def torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(1)
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21)


#: name: (builder, CAM layer (pytorch-grad-cam's tutorial's ``backbone.layer4`` and its
#: counterparts), Score-CAM's layer (one forward per channel: an early one with few), input size).
MODELS = {
    "fcn_resnet50": (lambda: torchvision_model("fcn_resnet50"), "backbone.layer4", "backbone.relu", 96),
    "deeplabv3_mobilenet_v3_large": (lambda: torchvision_model("deeplabv3_mobilenet_v3_large"), "backbone.16",
                                     "backbone.1", 96),
    "lraspp_mobilenet_v3_large": (lambda: torchvision_model("lraspp_mobilenet_v3_large"), "backbone.16",
                                  "backbone.1", 96),
    "segformer": (tiny_segformer, "segformer.stages.2", "segformer.stages.2", 128),
}


@dataclass
class Case:
    name: str
    model: nn.Module
    x: Tensor
    layer: str
    scorecam_layer: str
    classes: list[int]
    masks: Tensor  # (N, h, w) bool, at the scores' resolution
    ours: dict[str, Tensor]

    def cam(self, cls: str, layer: str | None = None) -> np.ndarray:
        module = self.model.get_submodule(layer or self.layer)
        with frozen(self.model), getattr(pgc, cls)(model=Out(self.model), target_layers=[module]) as cam:
            tg = [SemanticSegmentationTarget(c, m.float().numpy()) for c, m in zip(self.classes, self.masks)]
            return cam(input_tensor=self.x.clone().requires_grad_(True), targets=tg)

    def captum(self, cls: str, **kw: object) -> Tensor:
        """captum's ``cls`` per image on the forward that sums the class's scores over its region."""
        maps = []
        with frozen(self.model):
            for i, (c, m) in enumerate(zip(self.classes, self.masks)):
                def summed(x: Tensor, c: int = c, m: Tensor = m) -> Tensor:
                    return (tasks.spatial_logits(self.model(x))[:, c] * m).sum((1, 2))

                maps.append(getattr(captum_attr, cls)(summed).attribute(self.x[i:i + 1].clone(), **kw).detach())
        return torch.cat(maps)


def top1_by_hand(scores: Tensor) -> tuple[list[int], Tensor]:
    """Each image's class covering most pixels other than class 0, and its pixels."""
    labels = scores.argmax(1)
    classes = [int(torch.bincount(lab.flatten()[lab.flatten() > 0], minlength=scores.shape[1]).argmax())
               for lab in labels]
    return classes, labels == torch.tensor(classes)[:, None, None]


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest, photos112: Tensor) -> Case:
    build, layer, scorecam_layer, size = MODELS[request.param]
    x = F.interpolate(photos112, size=(size, size), mode="bilinear", align_corners=False)
    model = calibrated(build(), x, seed=2)
    with torch.no_grad():
        scores = tasks.spatial_logits(model(x))
    classes, masks = top1_by_hand(scores)
    assert all(c > 0 for c in classes) and all(m.float().mean() < 1 for m in masks), (classes, "degenerate model")
    ours = galleryvis.attribute_many(model, x, SHARED, targets.Segment(), layer,
                                     {"integrated_gradients": {"steps": IG_STEPS}})
    return Case(request.param, model, x, layer, scorecam_layer, classes, masks, ours)


def test_gradcam(case: Case) -> None:
    check(f"gradcam/{case.name}", pearson(case.ours["gradcam"], case.cam("GradCAM")))


def test_hirescam(case: Case) -> None:
    check(f"hirescam/{case.name}", pearson(case.ours["hirescam"], case.cam("HiResCAM")))


def test_scorecam(case: Case) -> None:
    """``weighting="gradcam"``: pytorch-grad-cam's ScoreCAM (its target on every masked copy)."""
    layer = case.scorecam_layer
    ours = galleryvis.attribute(case.model, case.x, "scorecam", targets.Segment(), layer, weighting="gradcam")
    check(f"scorecam {layer}/{case.name}", pearson(ours, case.cam("ScoreCAM", layer)))


def test_eigencam(case: Case) -> None:
    """As in test_agreement: grad-cam's EigenCAM is ReLU of its projection P (numpy's sign), ours
    ReLU(s * P) with the sign s that correlates with the channel sum."""
    a = layer_output(case.model, case.layer, case.x)
    proj = torch.from_numpy(get_2d_projection(a.numpy().copy()))[:, None]
    size = case.x.shape[-2:]
    check(f"eigencam grad-cam vs its projection/{case.name}", pearson(up(F.relu(proj), size), case.cam("EigenCAM")))
    sign = torch.where(torch.tensor(pearson(proj, a.sum(1, keepdim=True))) < 0, -1.0, 1.0)[:, None, None, None]
    check(f"eigencam/{case.name}", pearson(case.ours["eigencam"], up(F.relu(sign * proj), size)))


def test_vanilla(case: Case) -> None:
    check(f"vanilla/{case.name}", pearson(case.ours["vanilla"], case.captum("Saliency", abs=False)))


def test_integrated_gradients(case: Case) -> None:
    ref = case.captum("IntegratedGradients", baselines=0.0, n_steps=IG_STEPS, method="gausslegendre")
    check(f"integrated_gradients/{case.name}", pearson(case.ours["integrated_gradients"], ref))


def test_occlusion(case: Case) -> None:
    """captum repeats the map over the three channels."""
    window, stride = case.x.shape[-1] // 4, case.x.shape[-1] // 8
    ours = galleryvis.attribute(case.model, case.x, "occlusion", targets.Segment(), window=window, stride=stride)
    ref = case.captum("Occlusion", sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                      baselines=0.0, perturbations_per_eval=16)
    check(f"occlusion/{case.name}", pearson(ours, ref[:, :1]))


# -- the objective itself ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scores() -> Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 5, 6, 8, requires_grad=True)


def test_segment_score_and_confidence_by_hand(scores: Tensor) -> None:
    """score: the class's logits summed over its argmax pixels; confidence: its mean softmax there."""
    labels = scores.detach().argmax(1)
    seg = targets.Segment(2).bind(3).resolve(scores)
    for i in range(3):
        region = labels[i] == 2
        assert seg.score(scores)[i].item() == pytest.approx(scores[i, 2][region].sum().item(), rel=1e-6)
        want = scores[i].detach().softmax(0)[2][region].mean().item() if region.any() else 0.0
        assert seg.confidence(scores)[i].item() == pytest.approx(want, rel=1e-6)
    assert torch.equal(seg.coverage(), (labels == 2).float().mean((1, 2)))


def test_segment_reads_dicts_and_logits_objects(scores: Tensor) -> None:
    class Output:
        logits = scores

    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[1:3, 2:7] = True
    seg = targets.Segment(4, mask=mask)
    want = scores[:, 4, 1:3, 2:7].sum((1, 2))
    for output in (scores, {"out": scores, "aux": scores * 0}, Output()):
        torch.testing.assert_close(seg.score(output), want)


def test_segment_mask_at_input_size_upsamples_the_scores(scores: Tensor) -> None:
    """A (H, W) mask larger than the scores (SegFormer's are at 1/4): the scores resized
    bilinearly to it, as pytorch-grad-cam's SegFormer tutorial upsamples them."""
    mask = torch.rand(12, 16) > 0.5
    big = F.interpolate(scores, size=(12, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(targets.Segment(1, mask=mask).score(scores), (big[:, 1] * mask).sum((1, 2)))


def test_segment_top1_skips_background_and_per_image_masks(scores: Tensor) -> None:
    classes, masks = top1_by_hand(scores.detach())
    seg = targets.resolve(targets.Segment(), lambda x: x, scores.detach(), batch_size=2)
    assert isinstance(seg, targets.Segment) and seg.cls == tuple(classes)
    assert torch.equal(seg.mask, masks)
    assert seg.rows([2, 0]).cls == (classes[2], classes[0]) and torch.equal(seg.at(1).mask, masks[1])
    only_background = torch.zeros(1, 3, 2, 2)
    only_background[:, 0] = 1
    assert targets.Segment().bind(1).resolve(only_background).cls == (0,)
    given = torch.zeros(3, 6, 8, dtype=torch.bool)
    given[:, :2] = True
    within = targets.Segment(mask=given).resolve(scores.detach())
    assert within.cls == tuple(top1_by_hand(scores.detach()[..., :2, :])[0]) and torch.equal(within.mask, given)


def test_segment_refuses_bad_input(scores: Tensor) -> None:
    with pytest.raises(ValueError, match="boolean"):
        targets.Segment(1, mask=torch.ones(6, 8))
    with pytest.raises(ValueError, match="out of range for 5 classes"):
        targets.Segment(7).bind(3).resolve(scores).score(scores)
    with pytest.raises(ValueError, match=r"needs scores of shape \(N, classes, H, W\).*\(3, 5\)"):
        targets.Segment(1).score(torch.zeros(3, 5))


def test_default_layer_is_the_encoders() -> None:
    """A segmentation model's head holds its last 4-D layer: the default CAM layer is looked for
    outside it (the backbone's last block, as the tutorials choose by hand)."""
    x = torch.randn(1, 3, 64, 64)
    assert default_layer(torchvision_model("fcn_resnet50").eval(), x) == "backbone.layer4"
    assert default_layer(torchvision_model("lraspp_mobilenet_v3_large").eval(), x) == "backbone.16"
    assert default_layer(tiny_segformer().eval(), x) == "segformer.stages.3"


def test_attribute_with_segment_and_layer_name(photos64: Tensor) -> None:
    """The issue's call: ``attribute(fcn, x, "gradcam", target=Segment(15), layer="backbone.layer4")``."""
    fcn = calibrated(torchvision_model("fcn_resnet50"), photos64, seed=2)
    maps = galleryvis.attribute(fcn, photos64, "gradcam", target=targets.Segment(15), layer="backbone.layer4")
    assert maps.shape == (2, 1, 64, 64) and torch.isfinite(maps).all()


def test_technique_refuses_a_task_in_one_line(photos64: Tensor) -> None:
    model = tiny_segformer().eval()
    with pytest.raises(tasks.TaskError, match=r"^drise does not support segmentation models \(it supports detection\)$"):
        galleryvis.attribute(model, photos64, "drise", targets.Segment(1))


class TinySegmenter(nn.Module):
    """Two convolutions returning torchvision's ``{"out": scores}`` at the input's size."""

    task = "segmentation"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.body(x)}


def test_class_visualization_maximizes_the_class_mean_logit_over_the_image() -> None:
    """Feature visualization of a segmentation class: the trace is the class's mean logit over
    the image (checked on the result), and it rises; a detector is refused in one line."""
    model = TinySegmenter().eval()
    result = galleryvis.synthesize(model, "class_visualization", target=2, steps=8, size=32, jitter=0,
                                   blur_every=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert result.trace[-1, 0] > result.trace[0, 0]
    with torch.no_grad():
        mean_logit = model(result.image)["out"][:, 2].mean()
    assert float(mean_logit) > float(result.trace[0, 0])
    detector = TinySegmenter()
    detector.task = "detection"
    with pytest.raises(tasks.TaskError, match=r"^class_visualization does not support detection models \(it supports"):
        galleryvis.synthesize(detector, "class_visualization", target=0, steps=1, size=32)


# -- multi-label ---------------------------------------------------------------------------------
class Sigmoid2(nn.Module):
    """Class ``c`` of a multi-label model as a two-class classifier whose softmax is exactly
    (sigmoid, 1 - sigmoid) of the logit: log sigmoid(l) and log sigmoid(-l)."""

    def __init__(self, model: nn.Module, c: int) -> None:
        super().__init__()
        self.model, self.c = model, c

    def forward(self, x: Tensor) -> Tensor:
        logit = self.model(x)[:, self.c]
        return torch.stack([F.logsigmoid(logit), F.logsigmoid(-logit)], 1)


@pytest.fixture(scope="module")
def multilabel(photos64: Tensor) -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 6)).eval()


def test_multilabel_score_confidence_top1(multilabel: nn.Module, photos64: Tensor) -> None:
    with torch.no_grad():
        logits = multilabel(photos64)
    ml = targets.of(targets.MultiLabel(), 2).resolve(logits)
    assert isinstance(ml, targets.MultiLabel) and ml.index == tuple(logits.sigmoid().argmax(1).tolist())
    torch.testing.assert_close(ml.score(logits), logits.gather(1, torch.tensor(ml.index)[:, None])[:, 0])
    torch.testing.assert_close(ml.confidence(logits), logits.sigmoid().gather(1, torch.tensor(ml.index)[:, None])[:, 0])
    assert targets.resolve(targets.MultiLabel(), multilabel, photos64, 1).index == ml.index


def test_multilabel_rise_reads_the_sigmoid(multilabel: nn.Module, photos64: Tensor) -> None:
    ours = galleryvis.attribute(multilabel, photos64, "rise", targets.MultiLabel(3), masks=64)
    by_hand = galleryvis.attribute(Sigmoid2(multilabel, 3), photos64, "rise", 0, masks=64)
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-7)


def test_multilabel_deletion_insertion_read_the_sigmoid(multilabel: nn.Module, photos64: Tensor) -> None:
    maps = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = deletion_insertion(multilabel, photos64, maps, targets.MultiLabel(3), steps=8)
    by_hand = deletion_insertion(Sigmoid2(multilabel, 3), photos64, maps, 0, steps=8)
    for field in ("deletion_curve", "insertion_curve", "deletion_auc", "insertion_auc"):
        np.testing.assert_allclose(getattr(ours, field), getattr(by_hand, field), rtol=1e-5, atol=1e-7)


# -- sources, manifest, tasks --------------------------------------------------------------------
CPU = torch.device("cpu")


def test_torchvision_segmentation_models_load_with_their_task(tmp_path) -> None:
    """By name with weights "none" (no backbone download either) or a local file: task inferred,
    Pascal VOC's class names; an explicit task wins; a task the model cannot do is one line."""
    from galleryvis.config.manifest import ModelSpec
    from galleryvis.sources.loading import ModelError, load_model

    random = load_model(ModelSpec(name="lraspp_mobilenet_v3_large", weights="none"), tmp_path, CPU)
    assert random.task == "segmentation" and random.labels[15] == "person" and len(random.labels) == 21
    torch.save(random.model.state_dict(), tmp_path / "lraspp.pth")
    local = load_model(ModelSpec(name="lraspp_mobilenet_v3_large", weights="lraspp.pth"), tmp_path, CPU)
    assert local.task == "segmentation"
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(local.model(x)["out"], random.model(x)["out"])
    assert load_model(ModelSpec(name="resnet18", weights="none", task="multilabel"), tmp_path, CPU).task == "multilabel"
    with pytest.raises(ModelError, match=r"^model: task 'classification', but LRASPP is a segmentation model; "
                                         r"set task = 'segmentation'"):
        load_model(ModelSpec(name="lraspp_mobilenet_v3_large", weights="none", task="classification"), tmp_path, CPU)
    with pytest.raises(ModelError, match="task 'segmentation', but ResNet is a classification model"):
        load_model(ModelSpec(name="resnet18", weights="none", task="segmentation"), tmp_path, CPU)


def test_huggingface_segformer_from_a_folder(tmp_path) -> None:
    """``hf:FOLDER`` of a ``*ForSemanticSegmentation``: loaded as one, task inferred, labels from id2label."""
    from galleryvis.config.manifest import ModelSpec
    from galleryvis.sources.loading import load_model

    model = tiny_segformer()
    model.config.id2label = {i: f"part {i}" for i in range(6)}
    model.save_pretrained(tmp_path / "seg")
    adapter = load_model(ModelSpec(name="hf:seg"), tmp_path, CPU)
    assert adapter.task == "segmentation" and adapter.labels[2] == "part 2"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tasks.spatial_logits(adapter.model(x)), model.eval()(x).logits)


def test_manifest_task_is_one_of_the_tasks(tmp_path) -> None:
    from galleryvis.config import schema
    from galleryvis.errors import ManifestError
    from galleryvis.config.manifest import load_manifest

    assert schema.field("models", "task").choices == tasks.TASKS
    (tmp_path / "galleryvis.toml").write_text('[[models]]\nname = "fcn_resnet50"\nweights = "none"\n'
                                              'task = "segmentaton"\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"models\[0\]\.task.*must be one of.*did you mean: segmentation"):
        load_manifest(tmp_path / "galleryvis.toml")


def _half_mask(photo: Path, folder: Path) -> Path:
    """A binary image the photo's size: its left half."""
    from PIL import Image

    with Image.open(photo) as img:
        w, h = img.size
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (0, 0, w // 2, h))
    mask.save(folder / "left.png")
    return folder / "left.png"


@pytest.mark.slow
def test_a_segmentation_gallery_explains_a_class_over_its_pixels_or_a_given_region(tmp_path) -> None:
    """A segmentation model in a gallery: "top1" is the class covering most pixels (background
    excepted), `{ class, mask }` explains a class over a given region; deletion / insertion read
    the class's mean probability over that region (as ``metrics.deletion_insertion`` with
    ``targets.Segment`` gives them), and the top-5 are the classes' shares of the pixels."""
    import json

    from galleryvis.build.pipeline import Options, build
    from galleryvis.config.manifest import load_manifest
    from galleryvis.sources.loading import load_model
    from galleryvis.storage.images import load_image

    cat = IMAGES / "cat.png"
    _half_mask(cat, tmp_path)
    (tmp_path / "galleryvis.toml").write_text(
        f'[[images]]\npath = "{cat}"\n\n[[images]]\npath = "{cat}"\ntarget = {{ class = 8, mask = "left.png" }}\n\n'
        '[[models]]\nname = "lraspp_mobilenet_v3_large"\nweights = "none"\nsize = 64\n\n'
        '[[techniques]]\nname = "gradcam"\n\n[metrics]\nenabled = true\nsanity = false\nsteps = 4\n',
        encoding="utf-8")
    loaded = load_manifest(tmp_path / "galleryvis.toml")
    summary = build(loaded, Options(quiet=True, batch_size=2))
    assert (summary.computed, summary.failed) == (2, 0)
    gallery = json.loads((loaded.gallery.output / "gallery.json").read_text(encoding="utf-8"))

    adapter = load_model(loaded.models[0], tmp_path, torch.device("cpu"))
    assert adapter.task == "segmentation"
    x = adapter.preprocess(load_image(cat).convert("RGB"))[None]
    with torch.no_grad():
        shares = targets.Segment.probabilities(adapter.model(x))[0]
    top = gallery["models"][0]["predictions"][gallery["images"][0]["id"]]
    shown = [(k, round(float(shares[k]), 4)) for k in shares.topk(5).indices.tolist() if shares[k] > 0]
    assert sorted((p["index"], p["prob"]) for p in top) == sorted(shown)
    top1 = int(targets.Segment.top1(shares[None])[0])
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[:, :32] = True
    labels = (f"{adapter.label(top1)}, {float(shares[top1]):.0%} of pixels", f"{adapter.label(8)}, over the given region")
    for cell, objective, label in zip(gallery["cells"], (targets.Segment(top1), targets.Segment(8, mask=region)), labels):
        assert (cell["target_index"], cell["target_label"]) == (objective.cls, label)
        gradcam = galleryvis.attribute(adapter.model, x, "gradcam", target=objective)
        expected = deletion_insertion(adapter.model, x, gradcam, objective, steps=4)
        assert cell["metrics"]["deletion_auc"] == pytest.approx(float(expected.deletion_auc[0]), abs=1e-4)
        assert cell["metrics"]["insertion_auc"] == pytest.approx(float(expected.insertion_auc[0]), abs=1e-4)


def test_a_region_must_fit_its_photo_and_a_segmentation_model(tmp_path) -> None:
    """A region of another size than the photo, or on a classifier, is one manifest error naming
    the image entry."""
    from galleryvis.build.jobs import load_models
    from galleryvis.config.manifest import load_manifest
    from galleryvis.errors import ManifestError
    from PIL import Image

    cat = IMAGES / "cat.png"
    Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    (tmp_path / "galleryvis.toml").write_text(
        f'[[images]]\npath = "{cat}"\ntarget = {{ class = 8, mask = "small.png" }}\n\n'
        '[[models]]\nname = "resnet18"\nweights = "none"\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"images\[0\]\.target\.mask: 'small\.png' is 10 x 10 pixels, the photo"):
        load_manifest(tmp_path / "galleryvis.toml")
    _half_mask(cat, tmp_path).rename(tmp_path / "small.png")
    with pytest.raises(ManifestError) as exc:
        load_models(load_manifest(tmp_path / "galleryvis.toml"))
    assert [m.split(": ", 1)[1] for m in exc.value.errors] == [
        "images[0].target.mask: a region is for segmentation models; model 'resnet18' is a classification model"]


@pytest.mark.slow
def test_a_multilabel_gallery_reads_each_class_by_its_sigmoid(tmp_path) -> None:
    """A multi-label model in a gallery: its top-5 are the sigmoids of its logits, each image
    explains its class of highest sigmoid, deletion / insertion follow that class's sigmoid (as
    ``metrics.deletion_insertion`` with ``targets.MultiLabel`` gives them) and the ranking's
    protocol says so; the same model read as a classifier caches apart (softmax)."""
    import json

    from galleryvis.build.pipeline import Options, build
    from galleryvis.config.manifest import load_manifest
    from galleryvis.sources.loading import load_model
    from galleryvis.storage.images import load_image

    cat = IMAGES / "cat.png"
    manifest = (f'[[images]]\npath = "{cat}"\n\n[[models]]\nname = "resnet18"\nweights = "none"\nsize = 64\n'
                'task = "multilabel"\n\n[[techniques]]\nname = "gradcam"\n\n[metrics]\nenabled = true\n'
                'sanity = false\nsteps = 4\n')
    (tmp_path / "galleryvis.toml").write_text(manifest, encoding="utf-8")
    loaded = load_manifest(tmp_path / "galleryvis.toml")
    summary = build(loaded, Options(quiet=True, batch_size=2))
    assert (summary.computed, summary.failed) == (1, 0)
    gallery = json.loads((loaded.gallery.output / "gallery.json").read_text(encoding="utf-8"))

    adapter = load_model(loaded.models[0], tmp_path, torch.device("cpu"))
    assert adapter.task == "multilabel"
    x = adapter.preprocess(load_image(cat).convert("RGB"))[None]
    sigmoids = adapter.logits(x)[0].sigmoid()
    top = gallery["models"][0]["predictions"][gallery["images"][0]["id"]]
    assert [p["index"] for p in top] == sigmoids.topk(5).indices.tolist()
    np.testing.assert_allclose([p["prob"] for p in top], sigmoids.topk(5).values.numpy(), atol=1e-4)

    cell = gallery["cells"][0]
    target = int(sigmoids.argmax())
    assert cell["target_index"] == target
    gradcam = galleryvis.attribute(adapter.model, x, "gradcam", target=targets.MultiLabel(target))
    expected = deletion_insertion(adapter.model, x, gradcam, targets.MultiLabel(target), steps=4)
    assert cell["metrics"]["deletion_auc"] == pytest.approx(float(expected.deletion_auc[0]), abs=1e-4)
    assert cell["metrics"]["insertion_auc"] == pytest.approx(float(expected.insertion_auc[0]), abs=1e-4)
    assert "target sigmoid" in gallery["rankings"][0]["protocol"]

    (tmp_path / "galleryvis.toml").write_text(manifest.replace('task = "multilabel"\n', ""), encoding="utf-8")
    again = build(load_manifest(tmp_path / "galleryvis.toml"), Options(quiet=True, batch_size=2))
    assert again.computed == 1, "a classifier's softmax cells must not come from the multi-label cache"


def test_segmentation_deletion_reads_the_regions_mean_probability() -> None:
    """Deletion's curve on a segmentation model, value by value: point k zeroes the map's top
    round(k / steps * H * W) pixels (a stable descending sort) and reads the class's softmax
    probability averaged over the region of the clean image."""
    model = tiny_segformer().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    maps = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(6))
    steps = 4
    got = deletion_insertion(model, x, maps, targets.Segment(), steps=steps)
    with torch.no_grad():
        classes, regions = top1_by_hand(model(x).logits)
        for i in range(2):
            order = torch.sort(maps[i].flatten(), descending=True, stable=True).indices
            for k in range(steps + 1):
                gone = torch.zeros(64 * 64, dtype=torch.bool)
                gone[order[:round(k / steps * 64 * 64)]] = True
                xi = torch.where(gone.view(1, 64, 64), torch.zeros(()), x[i])
                probs = model(xi[None]).logits[0].softmax(0)[classes[i]]
                assert got.deletion_curve[i, k] == pytest.approx(probs[regions[i]].mean().item(), rel=1e-4)


def test_models_and_layers_commands_know_segmentation_models() -> None:
    from click.testing import CliRunner

    from galleryvis.cli import main

    listed = CliRunner().invoke(main, ["models"])
    assert listed.exit_code == 0 and all(n in listed.output.split() for n in
                                         ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"))
    result = CliRunner().invoke(main, ["layers", "lraspp_mobilenet_v3_large", "--size", "64"])
    assert result.exit_code == 0, result.output
    marked = [line for line in result.output.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1] == "backbone.16"
