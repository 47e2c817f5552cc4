"""Shared fixtures: tiny seeded models, VGG16 / ResNet-18 with seeded random weights, the real
EfficientNet-Lite0 with real photos, lxt's AttnLRP patches. Everything is module or session
scoped; no test may leave a change on these models (that is what the engine promises and what
test_engine checks)."""
from __future__ import annotations

import copy
import importlib
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import Tensor, nn

from galleryvis import IMAGENET_MEAN, IMAGENET_STD
from galleryvis.sources.lite import efficientnet_lite0

IMAGES = Path(__file__).resolve().parent.parent / "input_images"


@pytest.fixture(autouse=True)
def _fixed_chunks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Galleries built in tests run at fixed chunk sizes (8 with a gradient, 32 forward-only)
    instead of timing the chunk search (seconds per model and build); tests about the search
    are marked ``chunk_search`` and measure for real."""
    if request.node.get_closest_marker("chunk_search") is None:
        from galleryvis.build import executor
        from galleryvis.engine.chunking import Chunking

        monkeypatch.setattr(executor, "measure_chunking", lambda model, sample: Chunking.of(8))


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (restored after): tiny batches run faster
    without threads waiting on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def factory_folder(root: Path, module: str) -> Iterator[Path]:
    """While inside: ``root`` on ``sys.path`` (its factory ``module`` importable by a manifest) and
    pages drawn with this checkout's templates, whichever checkout the installed package points at;
    both undone on exit."""
    from galleryvis.render import pages

    sys.path.insert(0, str(root))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pages, "_resources", lambda: Path(__file__).resolve().parent.parent / "templates")
            pages._environments.cache_clear()
            yield root
    finally:
        pages._environments.cache_clear()
        sys.path.remove(str(root))
        sys.modules.pop(module, None)


def load_photo(name: str, size: int = 224) -> Tensor:
    """A photo from input_images/: short side resized to ``size``, centre crop, ImageNet
    normalization; (1, 3, size, size) float32."""
    prep = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return prep(Image.open(IMAGES / name).convert("RGB"))[None]


class TinyNet(nn.Module):
    """Conv net whose one ``nn.ReLU(inplace=True)`` is called three times per forward, with BN,
    dropout and a residual add after which the ReLU acts in place. ``shared=False`` builds the
    same function with three separate, not-in-place ReLUs (same parameter names)."""

    def __init__(self, shared: bool = True, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.conv3 = nn.Conv2d(12, 12, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(12, classes)
        self.shared = shared
        if shared:
            self.relu = nn.ReLU(inplace=True)
        else:
            self.relus = nn.ModuleList(nn.ReLU() for _ in range(3))

    def act(self, i: int, x: Tensor) -> Tensor:
        return self.relu(x) if self.shared else self.relus[i](x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.act(0, self.bn1(self.conv1(x))))
        x = self.act(1, self.conv2(x))
        y = self.conv3(x)
        y += x  # in-place residual add, as torchvision's blocks do
        x = self.act(2, y)
        return self.head(self.drop(x.mean((2, 3))))


def tiny_sequential(classes: int = 10) -> nn.Sequential:
    """A plain sequential conv net (VGG-like, so every technique, LRP included, supports it)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, classes),
    )


def _seeded(build, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build().eval()


@pytest.fixture(scope="session")
def tiny_seq() -> nn.Sequential:
    """Sequential tiny net, seeded; cam layer ``"6"`` (8x8 at 32x32 input)."""
    return _seeded(tiny_sequential)


@pytest.fixture(scope="session")
def tiny_shared() -> tuple[TinyNet, TinyNet]:
    """(net with one in-place ReLU called three times, the same net with separate ReLUs)."""
    shared = _seeded(lambda: TinyNet(shared=True))
    with torch.no_grad():  # non-trivial BN statistics
        shared.bn1.running_mean.uniform_(-0.2, 0.2)
        shared.bn1.running_var.uniform_(0.5, 1.5)
    separate = TinyNet(shared=False).eval()
    separate.load_state_dict(shared.state_dict())
    return shared, separate


@pytest.fixture(scope="session")
def tiny_x() -> Tensor:
    """4 seeded images, 3x32x32."""
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def vgg16() -> nn.Module:
    return _seeded(lambda: torchvision.models.vgg16(weights=None))


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    return _seeded(lambda: torchvision.models.resnet18(weights=None))


@pytest.fixture(scope="session")
def lite0() -> nn.Module:
    """The real EfficientNet-Lite0 with its bundled ImageNet weights (offline)."""
    return efficientnet_lite0()


@pytest.fixture(scope="session")
def photos224() -> Tensor:
    """cat.png and coffee.png, preprocessed for ImageNet models at 224x224: (2, 3, 224, 224)."""
    return torch.cat([load_photo("cat.png"), load_photo("coffee.png")])


@pytest.fixture(scope="session")
def photos112() -> Tensor:
    """cat.png and rocket.jpg at 112x112 (small inputs for VGG16 / ResNet-18)."""
    return torch.cat([load_photo("cat.png", 112), load_photo("rocket.jpg", 112)])


@pytest.fixture(scope="session")
def photos64() -> Tensor:
    """cat.png and rocket.jpg at 64x64 (VGG16 at this size: features.29 is 4x4)."""
    return torch.cat([load_photo("cat.png", 64), load_photo("rocket.jpg", 64)])


def tiny_transformers() -> dict[str, nn.Module]:
    """Seeded tiny transformers and a ConvNeXt (random weights), for 64x64 inputs (``timm_vit``:
    48x64): torchvision ViT (patch 8, class token), timm ViT (4 register tokens), timm DeiT
    (distillation token), torchvision and timm Swin (patch 4, window 4, two stages), torchvision
    ConvNeXt (two stages). timm models are left out when timm is not installed."""
    from torchvision.models import ConvNeXt, SwinTransformer, VisionTransformer
    from torchvision.models.convnext import CNBlockConfig

    builds = {
        "vit": lambda: VisionTransformer(image_size=64, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                         mlp_dim=64, num_classes=10),
        "swin": lambda: SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 2],
                                        window_size=[4, 4], num_classes=10),
        "convnext": lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 2)], num_classes=10),
    }
    try:
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.swin_transformer import SwinTransformer as TimmSwin
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:
        pass
    else:
        vit_kw = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}
        builds |= {
            "timm_vit": lambda: TimmViT(img_size=(48, 64), reg_tokens=4, **vit_kw),
            "deit": lambda: VisionTransformerDistilled(img_size=64, **vit_kw),
            "timm_swin": lambda: TimmSwin(img_size=64, patch_size=4, window_size=4, embed_dim=24, depths=(2, 2),
                                          num_heads=(2, 2), num_classes=10),
        }
    # seed 1: no top-1 CAM of tests/test_agreement.py is zero everywhere (with seed 0 timm Swin's
    # LayerCAM of rocket.jpg is, and a correlation with a constant map is undefined)
    return {name: _seeded(lambda build=build: trained_like(build()), 1) for name, build in builds.items()}


def trained_like(model: nn.Module, classes: int = 10) -> nn.Module:
    """Statistics of a trained net where initialization is degenerate: LayerNorm weights and
    biases spread around 1 and 0 (at 1 and 0 a token's channels sum to zero exactly), class
    heads of weight std 0.5 (gradients of a trained net's size; torchvision zero-initializes
    the ViT head, timm uses std 0.02)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, nn.Linear) and m.out_features == classes:
                m.weight.normal_(std=0.5)
    return model


@pytest.fixture(scope="session")
def transformers() -> dict[str, nn.Module]:
    """:func:`tiny_transformers`, built once."""
    return tiny_transformers()


# -- lxt, the AttnLRP authors' reference ---------------------------------------------------------
@pytest.fixture(scope="module")
def lxt_patches() -> Iterator[types.ModuleType]:
    """``lxt.efficient.patches``, the AttnLRP authors' rules in their Gradient x Input form. lxt
    2.1's ``lxt.efficient`` package imports every language model it patches, some from modules
    transformers 5 removed, so its plain modules are imported without that ``__init__``."""
    lxt = pytest.importorskip("lxt")
    names = ("lxt.efficient", "lxt.efficient.rules", "lxt.efficient.patches")
    saved = {n: sys.modules.get(n) for n in names}
    package = types.ModuleType("lxt.efficient")
    package.__path__ = [str(Path(lxt.__file__).parent / "efficient")]
    sys.modules["lxt.efficient"] = package
    try:
        yield importlib.import_module("lxt.efficient.patches")
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module


def gradient_times_input(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """lxt's relevance: the input times the gradient of the target logit (through its patches)."""
    model = copy.deepcopy(model).requires_grad_(False)
    x = x.clone().requires_grad_(True)
    model(x)[:, target].sum().backward()
    return (x * x.grad).detach()


def calibrated(model: nn.Module, x: Tensor, seed: int) -> nn.Module:
    """``model`` in eval mode with its batch-norm statistics those of ``x`` (random weights
    give a single class everywhere otherwise): one training-mode forward at momentum 1."""
    torch.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    for m in bns:
        m.momentum = 0.1
    return model.eval()
