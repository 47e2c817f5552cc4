"""Detector model sources: torchvision's detectors, Ultralytics YOLO and Hugging Face
``*ForObjectDetection`` loaded as manifest models (seeded random weights or small files saved
here, never downloaded), their task, class names and preprocessing, the manifest's
``score_threshold`` / ``max_detections``, and Grad-CAM on the loaded detectors."""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import IMAGES
from PIL import Image
from torch import Tensor

import galleryvis
from galleryvis import targets
from galleryvis.targets.detection import detections_of
from galleryvis.config.manifest import ManifestError, ModelSpec, parse_manifest
from galleryvis.sources.loading import ModelAdapter, ModelError, load_model

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def yolo_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Ultralytics writes its settings file where YOLO_CONFIG_DIR says: a temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo")))
        yield


def load(name: str, weights: str = "none", base: Path = Path("."), **keys: Any) -> ModelAdapter:
    return load_model(ModelSpec(name=name, weights=weights, **keys), base, CPU, "m.toml: models[0]")


def small_inputs(adapter: ModelAdapter, side: int = 64) -> None:
    """A torchvision detector's transform resizing to ``side`` pixels, and an R-CNN's region
    proposals cut from 1000 to 50 (fast tests)."""
    t = adapter.model.transform
    if not getattr(t, "fixed_size", None):  # SSD300 and SSDlite320 take their size only
        t.min_size, t.max_size = (side,), side
    rpn = getattr(adapter.model, "rpn", None)
    if rpn is not None:
        rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"] = 200, 50


def photos(side: int = 64) -> Tensor:
    """Two photos of input_images/ at ``side`` x ``side``, pixels in [0, 1]."""
    return torch.stack([TF.to_tensor(Image.open(IMAGES / n).convert("RGB").resize((side, side)))
                        for n in ("cat.png", "coffee.png")])


def assert_kept(got: list[dict[str, Tensor]], every: list[Any], score_threshold: float, k: int) -> None:
    """``got`` is ``every`` (the unlimited detections, :func:`detections_of`'s) with the scores >=
    ``score_threshold``, at most ``k`` per image, best first: the same scores, and each of its
    detections one of ``every``'s (box, label and score; ties in score may come in any order)."""
    for g, d in zip(got, every, strict=True):
        kept = d.kept(score_threshold, k)
        torch.testing.assert_close(g["scores"], kept.scores)
        rows = torch.cat([d.boxes, d.labels[:, None].to(d.boxes), d.scores[:, None]], 1)
        for row in torch.cat([g["boxes"], g["labels"][:, None].to(g["boxes"]), g["scores"][:, None]], 1):
            assert bool(torch.isclose(rows, row).all(1).any()), row


# --- torchvision ------------------------------------------------------------------------------

TORCHVISION = {  # name -> its default CAM layer
    "fasterrcnn_resnet50_fpn": "backbone.body.layer4", "fasterrcnn_resnet50_fpn_v2": "backbone.body.layer4",
    "fasterrcnn_mobilenet_v3_large_fpn": "backbone.body.16", "retinanet_resnet50_fpn": "backbone.body.layer4",
    "retinanet_resnet50_fpn_v2": "backbone.body.layer4", "fcos_resnet50_fpn": "backbone.body.layer4",
    "ssd300_vgg16": "backbone.features.22", "ssdlite320_mobilenet_v3_large": "backbone.features.1",
    "maskrcnn_resnet50_fpn": "backbone.body.layer4",
}


#: the fast ones; the others, ResNet-50 and VGG-16 backbones, take 2-8 s each on a shared CPU
FAST = ("fasterrcnn_mobilenet_v3_large_fpn", "ssdlite320_mobilenet_v3_large")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in TORCHVISION])
def test_torchvision_detectors_load_offline_as_detectors(name: str) -> None:
    """Random weights without backbone weights (offline), task inferred, COCO's class names,
    pixels in [0, 1] (the detector's transform normalizes), the default CAM layer in the
    backbone, and one dict of detections per image."""
    import torchvision

    adapter = load(name)
    assert adapter.task == "detection" and adapter.random and adapter.fingerprint.startswith("random-init:seed=0")
    categories = torchvision.models.get_model_weights(name).DEFAULT.meta["categories"]
    assert adapter.labels == categories and len(categories) == 91 and adapter.label(18) == "dog"
    assert (adapter.mean, adapter.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert adapter.size == adapter.model.transform.min_size[0] and adapter.num_classes == 91
    img = Image.open(IMAGES / "cat.png").convert("RGB")
    torch.testing.assert_close(adapter.preprocess(img), TF.to_tensor(adapter.crop(img)))  # no normalization
    assert adapter.default_layer() == TORCHVISION[name]
    small_inputs(adapter)
    with torch.no_grad():
        out = adapter.model(photos()[:1])
    assert len(detections_of(out)) == 1


def test_a_detector_with_a_wrong_task_or_a_classifier_with_detection_keys_is_refused_in_one_line(tmp_path: Path,
                                                                                                ) -> None:
    with pytest.raises(ModelError, match=r"^m.toml: models\[0\]: task 'classification', but FasterRCNN is a "
                                         r"detection model; set task = 'detection' or remove task"):
        load("fasterrcnn_mobilenet_v3_large_fpn", task="classification")
    assert load("fasterrcnn_mobilenet_v3_large_fpn", task="detection").task == "detection"
    with pytest.raises(ModelError, match=r"^m.toml: models\[0\]: max_detections is for detection models; "
                                         r"resnet18 is a classification model$"):
        load("resnet18", max_detections=3)

    def parse(model: dict[str, Any]) -> None:
        Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
        parse_manifest({"images": [{"path": "x.png"}], "models": [model]}, path=Path("m.toml"), root=tmp_path)

    parse({"name": "ssd300_vgg16", "score_threshold": 0.5, "max_detections": 3})
    with pytest.raises(ManifestError) as e:  # an explicit task that is not detection: refused when parsed
        parse({"name": "resnet18", "task": "classification", "score_threshold": 0.5})
    assert str(e.value).splitlines() == [
        "m.toml: models[0].score_threshold: only detection models take it, and task is 'classification'"]
    with pytest.raises(ManifestError, match=r"models\[0\].score_threshold"):
        parse({"name": "ssd300_vgg16", "score_threshold": 2})


@pytest.mark.slow  # about 10 s on a shared CPU: three Faster R-CNNs
def test_torchvision_score_threshold_and_max_detections() -> None:
    """The limits are the detector's own thresholds, which they may lower below torchvision's
    0.05: its output is the unlimited detector's (threshold 0, every detection) with the scores
    >= the threshold, at most max_detections, best first. (A random Faster R-CNN scores every
    box about 1/91: its class scores are sharpened here, alike in both.)"""

    def sharp(adapter: ModelAdapter) -> ModelAdapter:
        small_inputs(adapter, 96)
        with torch.no_grad():
            adapter.model.roi_heads.box_predictor.cls_score.weight.mul_(300)
        return adapter

    free = sharp(load("fasterrcnn_mobilenet_v3_large_fpn"))
    assert free.model.roi_heads.score_thresh == 0.05
    free.model.roi_heads.score_thresh, free.model.roi_heads.detections_per_img = 0.0, 1000
    x = photos(96)
    with torch.no_grad():
        every = free.model(x)
    cut = float(every[0]["scores"][9])  # 10 of image 0's detections reach it
    limited = sharp(load("fasterrcnn_mobilenet_v3_large_fpn", score_threshold=cut, max_detections=7))
    with torch.no_grad():
        got = limited.model(x)
    assert len(got[0]["scores"]) == 7 and all(bool((d["scores"] >= cut).all()) for d in got)
    assert all(len(d["scores"]) > 10 for d in every)
    assert_kept(got, detections_of(every), cut, 7)
    masks = load("maskrcnn_resnet50_fpn", score_threshold=0.0, max_detections=3)  # its masks are kept alike
    small_inputs(masks)
    with torch.no_grad():
        (d,) = masks.model(photos()[:1])
    assert d["masks"].shape[0] == len(d["scores"]) == 3


@pytest.mark.slow  # 10-20 s on a shared CPU
def test_gradcam_on_a_loaded_torchvision_detector_is_pytorch_grad_cams() -> None:
    """Grad-CAM at the default layer of a loaded Faster R-CNN ResNet-50 FPN on each image's best
    detection, against pytorch-grad-cam's FasterRCNNBoxScoreTarget (Pearson r per image)."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    from test_agreement import check, pearson

    adapter = load("fasterrcnn_resnet50_fpn", score_threshold=0.0, max_detections=20)
    small_inputs(adapter, 128)
    x, model = photos(128), adapter.model
    with torch.no_grad():
        out = model(x)
    labels, boxes = [int(o["labels"][0]) for o in out], [o["boxes"][0] for o in out]
    layer = adapter.default_layer()
    ours = galleryvis.attribute(model, x, "gradcam", layer=layer, mean=adapter.mean, std=adapter.std,
                                target=[targets.Detection(cls=c, box=b.tolist()) for c, b in zip(labels, boxes)])
    with GradCAM(model, target_layers=[model.get_submodule(layer)]) as cam:
        ref = cam(x, targets=[FasterRCNNBoxScoreTarget([c], [b.numpy()]) for c, b in zip(labels, boxes)])
    assert ours.shape == (2, 1, 128, 128) and bool(ours.abs().sum() > 0)
    check("gradcam loaded faster r-cnn", pearson(ours[:, 0], ref))


# --- Ultralytics --------------------------------------------------------------------------------


@pytest.mark.slow  # 10-15 s on a shared CPU: four Ultralytics models built
def test_yolo_from_its_config_with_coco_names_and_limits() -> None:
    """``ultralytics:yolov8n`` with weights "none": the DetectionModel built from its config
    (seeded), COCO's 80 names, pixels in [0, 1], the layer before the head; the limits keep the
    raw predictions' best detections (one per anchor) as torchvision dicts."""
    pytest.importorskip("ultralytics")
    free = load("ultralytics:yolov8n")
    assert free.task == "detection" and type(free.model).__name__ == "DetectionModel"
    assert len(free.labels) == 80 and free.labels[:3] == ["person", "bicycle", "car"]
    assert (free.size, free.mean, free.std) == (640, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert free.default_layer() == "model.21"
    assert load("ultralytics:yolov8n").fingerprint == free.fingerprint != load("ultralytics:yolov8n", seed=1).fingerprint
    x = photos(64)
    with torch.no_grad():
        raw = detections_of(free.model(x))
    cut = float(raw[0].scores.sort(descending=True).values[10])  # 11 of image 0's detections reach it
    limited = load("ultralytics:yolov8n", score_threshold=cut, max_detections=6)
    with torch.no_grad():
        got = limited.model(x)
    assert len(got[0]["scores"]) == 6 and got[0]["probs"].shape == (6, 80)
    assert_kept(got, raw, cut, 6)
    with pytest.raises(ModelError, match=r"^m.toml: models\[0\]: unknown Ultralytics detection model 'yolov8q'"):
        load("ultralytics:yolov8q")
    with pytest.raises(ModelError, match=r"^m.toml: models\[0\]: no yolov8n.pt beside the manifest"):
        load("ultralytics:yolov8n", "DEFAULT", base=Path("/nonexistent"))


@pytest.mark.slow  # 10-15 s on a shared CPU: four Ultralytics models built
def test_yolo_checkpoints_load_safely(tmp_path: Path) -> None:
    """A checkpoint as Ultralytics saves it (the pickled model): its class names, the same
    outputs; a plain state dict too; one holding anything but modules and data is refused."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(3)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    model.names = {0: "cat", 1: "dog"}
    torch.save({"model": model, "epoch": -1, "date": "2026-01-01"}, tmp_path / "pets.pt")
    loaded = load("ultralytics:yolov8n", str(tmp_path / "pets.pt"))
    assert loaded.labels == ["cat", "dog"] and not loaded.random and loaded.files == (tmp_path / "pets.pt",)
    x = photos(64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], model(x)[0])
    free = load("ultralytics:yolov8n")
    torch.save(free.model.state_dict(), tmp_path / "state.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in free.model.state_dict().items()}, tmp_path / "state.safetensors")
    with torch.no_grad():
        for name in ("state.pt", "state.safetensors"):
            torch.testing.assert_close(load("ultralytics:yolov8n", str(tmp_path / name)).model(x)[0], free.model(x)[0])
    torch.save({"model": model, "train_args": argparse.Namespace(lr=0.1)}, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match=r"^m.toml: models\[0\]: refusing to load .*odd.pt': it holds "
                                         r"argparse.Namespace, neither a module of torch.nn or ultralytics.nn nor "
                                         r"plain data$"):
        load("ultralytics:yolov8n", str(tmp_path / "odd.pt"))


def test_gradcam_and_eigencam_on_a_loaded_yolo() -> None:
    pytest.importorskip("ultralytics")
    adapter = load("ultralytics:yolov8n", max_detections=50)
    x = photos(64)
    for name in ("gradcam", "eigencam"):
        m = galleryvis.attribute(adapter.model, x, name, layer=adapter.default_layer(), mean=adapter.mean,
                                 std=adapter.std, target=targets.Detection(cls=0))
        assert m.shape == (2, 1, 64, 64) and bool(torch.isfinite(m).all()) and bool(m.abs().sum() > 0), name


# --- Hugging Face -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DETR (a 2-stage ResNet of transformers itself, no timm) saved with its
    image processor's config."""
    transformers = pytest.importorskip("transformers")
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                         layer_type="basic", out_features=["stage2"])
    config = transformers.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                                     d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
                                     num_queries=6, id2label={0: "cat", 1: "dog", 2: "car"})
    torch.manual_seed(0)
    model = transformers.DetrForObjectDetection(config).eval()
    for p in model.parameters():  # queries that differ, so the detections do
        p.data.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("detr")
    model.save_pretrained(folder)
    transformers.DetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 96}).save_pretrained(folder)
    return folder


def test_hugging_face_detr_from_a_folder(detr_folder: Path) -> None:
    """``hf:FOLDER`` of a DETR: task inferred, id2label's names, its processor's statistics and
    size, the last backbone stage as CAM layer; the detections are DETR's own post-processing's
    (softmax without the no-object class, boxes in pixels), and the limits apply."""
    from transformers import DetrImageProcessor

    adapter = load(f"hf:{detr_folder}", "DEFAULT")
    assert adapter.task == "detection" and adapter.labels == ["cat", "dog", "car"] and adapter.size == 96
    assert adapter.mean == (0.485, 0.456, 0.406)
    assert adapter.default_layer() == "model.model.backbone.model.encoder.stages.1"
    x = photos(96)
    with torch.no_grad():
        ours = adapter.model(x)
        theirs = DetrImageProcessor().post_process_object_detection(
            adapter.model.model(pixel_values=x), threshold=-1.0, target_sizes=[(96, 96)] * 2)
    for o, t in zip(ours, theirs, strict=True):
        torch.testing.assert_close(o["scores"], t["scores"])
        torch.testing.assert_close(o["labels"], t["labels"])
        torch.testing.assert_close(o["boxes"], t["boxes"])
        torch.testing.assert_close(o["probs"].sum(-1) <= 1, torch.ones(6, dtype=torch.bool))
    limited = load(f"hf:{detr_folder}", "DEFAULT", max_detections=2)
    with torch.no_grad():
        top2 = limited.model(x)
    assert len(top2[0]["scores"]) == 2
    assert_kept(top2, detections_of(ours), 0.0, 2)
    random = load(f"hf:{detr_folder}", "none")
    assert random.task == "detection" and random.random
    m = galleryvis.attribute(adapter.model, x, "gradcam", layer=adapter.default_layer(), mean=adapter.mean,
                             std=adapter.std, target=targets.Detection())
    assert m.shape == (2, 1, 96, 96) and bool(torch.isfinite(m).all()) and bool(m.abs().sum() > 0)
    with pytest.raises(ModelError, match=r"^m.toml: models\[0\]: task 'segmentation', but Boxes is a detection"):
        load(f"hf:{detr_folder}", "DEFAULT", task="segmentation")


def test_hugging_face_rt_detr_reads_one_sigmoid_per_class(tmp_path: Path) -> None:
    """A tiny random RT-DETR (no "no object" class): each query's class probabilities are one
    sigmoid per class, its box the centre and size scaled to pixels; its processor does not
    normalize, so neither does the model's preprocessing."""
    transformers = pytest.importorskip("transformers")
    from transformers.image_transforms import center_to_corners_format

    backbone = transformers.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1],
                                               layer_type="basic", out_features=["stage1", "stage2", "stage3"])
    config = transformers.RTDetrConfig(
        backbone_config=backbone, use_pretrained_backbone=False, encoder_hidden_dim=16, encoder_in_channels=[8, 16, 16],
        feat_strides=[8, 16, 32], d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=6,
        decoder_in_channels=[16, 16, 16], num_feature_levels=3, decoder_n_points=2,
        id2label={0: "cat", 1: "dog", 2: "car"})
    torch.manual_seed(0)
    transformers.RTDetrForObjectDetection(config).save_pretrained(tmp_path)
    transformers.RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    adapter = load(f"hf:{tmp_path}", "DEFAULT")
    assert adapter.task == "detection" and adapter.labels == ["cat", "dog", "car"] and adapter.size == 64
    assert (adapter.mean, adapter.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert adapter.default_layer() == "model.model.backbone.model.encoder.stages.2"
    x = photos(64)
    with torch.no_grad():
        ours, raw = adapter.model(x), adapter.model.model(pixel_values=x)
    probs = raw.logits.sigmoid()
    for i, o in enumerate(ours):
        torch.testing.assert_close(o["probs"], probs[i])
        torch.testing.assert_close(o["scores"], probs[i].max(-1).values)
        torch.testing.assert_close(o["boxes"], center_to_corners_format(raw.pred_boxes[i]) * 64)


# --- the CLI ------------------------------------------------------------------------------------


def test_the_cli_lists_detectors_and_their_default_layer() -> None:
    from click.testing import CliRunner

    from galleryvis.cli import main

    listing = CliRunner().invoke(main, ["models"])
    assert listing.exit_code == 0, listing.output
    for name in ("fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn", "ssdlite320_mobilenet_v3_large"):
        assert f"  {name}\n" in listing.output
    assert "ultralytics: name = \"ultralytics:yolov8n\"" in listing.output and "  yolov8n" in listing.output
    layers = CliRunner().invoke(main, ["layers", "ssdlite320_mobilenet_v3_large"])
    assert layers.exit_code == 0, layers.output
    assert [ln.split()[1] for ln in layers.output.splitlines() if ln.startswith("*")] == ["backbone.features.1"]
