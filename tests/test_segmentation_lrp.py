"""LRP on segmentation models: ``galleryvis.attribute(model, x, "lrp", targets.Segment(...))``.

Agreement with zennit on a small seeded encoder-decoder (dilated convolutions, BatchNorm,
ConvTranspose2d, AdaptiveAvgPool2d, concatenated skips), starting from the same relevance
(``Segment.relevance`` as zennit's ``grad_output``); interpolation (which zennit leaves to the
plain gradient) and transposed convolutions against the epsilon rule computed by hand;
conservation on a bias-free net; torchvision's FCN, DeepLabV3 and LRASPP and a tiny Hugging Face
SegFormer run. 64 px inputs, seeded random weights.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import calibrated
from test_concepts import STABILIZER, engine_composite
from torch import Tensor, nn

import galleryvis
from galleryvis import targets, tasks
from galleryvis.hooks import LayerError
from galleryvis.sources.huggingface import Logits

SIZE = 64
CLASSES = 5


def images(n: int = 2, size: int = SIZE) -> Tensor:
    """Images inside the ImageNet-normalized pixel range (the composite's box bounds)."""
    mean = torch.tensor(galleryvis.IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(galleryvis.IMAGENET_STD)[None, :, None, None]
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    return (x - mean) / std


def pearson(a: Tensor, b: Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


def region(size: int = SIZE) -> Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[size // 4:3 * size // 4, size // 8:size // 2] = True
    return mask


class EncoderDecoder(nn.Module):
    """A small U-Net: conv, strided conv, dilated conv, an adaptive-average-pooled context branch
    brought back by a ConvTranspose2d, concatenated skips, a second upsampling (ConvTranspose2d
    with output padding, or ``F.interpolate`` bilinear then a 1x1 conv), a 1x1 head. Blocks are
    ``nn.Sequential(conv, BatchNorm, ReLU)`` so zennit's ``SequentialMergeBatchNorm`` folds them."""

    def __init__(self, bias: bool = True, bn: bool = True, interpolate: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)

        def block(conv: nn.Module, channels: int, norm: bool = bn) -> nn.Sequential:
            return nn.Sequential(conv, *([nn.BatchNorm2d(channels)] if norm else []), nn.ReLU())

        self.enc = block(nn.Conv2d(3, 8, 3, padding=1, bias=bias), 8)
        self.down = block(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=bias), 16)
        self.dilated = block(nn.Conv2d(16, 16, 3, padding=2, dilation=2, bias=bias), 16)
        self.pool = nn.AdaptiveAvgPool2d(SIZE // 4)
        self.context = block(nn.Conv2d(16, 16, 1, bias=bias), 16, norm=False)
        self.up1 = block(nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1, bias=bias), 16)
        self.interpolate = interpolate
        up2 = nn.Conv2d(32, 8, 1, bias=bias) if interpolate else \
            nn.ConvTranspose2d(32, 8, 3, stride=2, padding=1, output_padding=1, bias=bias)
        self.up2 = block(up2, 8, norm=False)
        self.head = nn.Conv2d(16, CLASSES, 1, bias=bias)
        gen = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                    m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
        self.eval()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        skip = self.enc(x)
        mid = self.dilated(self.down(skip))
        up = self.up1(self.context(self.pool(mid)))
        h = torch.cat([mid, up], 1)
        if self.interpolate:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        return {"out": self.head(torch.cat([skip, self.up2(h)], 1))}  # torchvision's dict


def zennit_relevance(net: nn.Module, x: Tensor, target: targets.Segment, composite_name: str) -> Tensor:
    """zennit's relevance at the input with its composite and BatchNorm canonizer, from the
    starting relevance ``target.relevance`` of the scores (zennit's ``grad_output``):
    ``EpsilonGammaBox`` set up as the engine's defaults (gamma on weights only, as in
    tests/test_concepts.py) or ``EpsilonPlus`` (epsilon 1e-6)."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlus

    class Scores(nn.Module):  # zennit needs a tensor output
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)["out"]

    model = Scores().eval()
    with torch.no_grad():
        r0 = target.relevance(model(x))
    canonizers = [SequentialMergeBatchNorm()]
    if composite_name == "EpsilonGammaBox":
        composite = engine_composite(x.shape[0], tuple(x.shape[-2:]), canonizers)
    else:
        composite = EpsilonPlus(epsilon=1e-6, stabilizer=STABILIZER, canonizers=canonizers)
    with Gradient(model=model, composite=composite) as attributor:
        _, rel = attributor(x, r0)
    return rel.detach()


# -- agreement with zennit ------------------------------------------------------------------------
@pytest.mark.parametrize(("rule", "composite"), [("composite", "EpsilonGammaBox"), ("zplus", "EpsilonPlus")])
def test_an_encoder_decoder_agrees_with_zennit(rule: str, composite: str) -> None:
    pytest.importorskip("zennit")
    net, x = EncoderDecoder(), images()
    target = targets.Segment(3, region())
    ours = galleryvis.attribute(net, x, "lrp", target, rule=rule, epsilon=0.25 if rule == "composite" else 1e-6)
    theirs = zennit_relevance(net, x, target, composite)
    assert ours.shape == theirs.shape == x.shape
    for i in range(len(x)):
        r = pearson(ours[i], theirs[i])
        print(f"{rule} vs zennit {composite}, image {i}: r = {r:.6f}")
        assert r >= 0.9999  # measured: 1.00000000
    torch.testing.assert_close(ours.sum((1, 2, 3)), theirs.sum((1, 2, 3)), rtol=1e-4, atol=1e-6)


def test_top1_and_class_regions_agree_with_zennit_too() -> None:
    """``Segment(cls)`` and ``Segment()``: the region is the class's argmax pixels, decided on
    the clean image; zennit starts from the same resolved target's relevance."""
    pytest.importorskip("zennit")
    net, x = EncoderDecoder(), images()
    for target in (targets.Segment(3), targets.Segment()):  # 20 % and 37 % of the pixels (class 2: top-1)
        resolved = targets.resolve(target, net, x, 8)
        assert resolved.mask is not None and resolved.mask.flatten(1).any(1).all(), resolved
        ours = galleryvis.attribute(net, x, "lrp", target)
        theirs = zennit_relevance(net, x, resolved, "EpsilonGammaBox")
        for i in range(len(x)):
            assert pearson(ours[i], theirs[i]) >= 0.9999
        torch.testing.assert_close(ours.sum((1, 2, 3)), theirs.sum((1, 2, 3)), rtol=1e-4, atol=1e-6)


# -- operations zennit leaves to the gradient, by hand -----------------------------------------
def bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in): 1-D linear interpolation as F.interpolate does it with align_corners=False."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[o, i0] += 1 - lam
        m[o, i1] += lam
    return m


class Upsample(nn.Module):
    """Scores at twice the input's resolution: bilinear upsampling of its channels (the classes)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def test_bilinear_upsampling_gets_the_epsilon_rule_by_hand() -> None:
    """R_in = x * M^T (R / (M x + eps sign(M x))) with M the bilinear map built by hand, per
    channel (separable: M X = My X Mx^T); not the plain gradient M^T R that zennit applies."""
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[2:11, 5:14] = True
    target, eps = targets.Segment(1, mask), 0.5
    ours = galleryvis.attribute(Upsample(), x, "lrp", target, rule="epsilon", epsilon=eps)
    m = bilinear_matrix(8, 16)
    xd = x.double()
    z = m @ xd @ m.T
    r = torch.zeros_like(z)
    r[:, 1] = z[:, 1] * mask
    s = r / (z + eps * torch.where(z >= 0, 1.0, -1.0))
    expected = xd * (m.T @ s @ m)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-6)
    assert (ours[:, [0, 2]] == 0).all()
    gradient = xd * (m.T @ r @ m) / xd.where(xd != 0, 1.0)  # what the plain gradient would route: M^T R
    assert not torch.allclose(ours.double(), gradient, atol=1e-3)


def epsilon_by_hand(layer: nn.Module, x: Tensor, r: Tensor, eps: float) -> Tensor:
    """x * d<layer(x), r / (z + eps sign z)>/dx through the module itself (z includes the bias)."""
    leaf = x.detach().clone().requires_grad_(True)
    z = layer(leaf)
    s = r / (z.detach() + eps * torch.where(z.detach() >= 0, 1.0, -1.0))
    (g,) = torch.autograd.grad(z, leaf, s)
    return (leaf * g).detach()


class Reshaped(nn.Module):
    """``layer`` on the (N, C, H, W) input reshaped to ``shape`` (1-D and 3-D layers)."""

    def __init__(self, layer: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layer, self.shape = layer, shape

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.reshape(self.shape))


#: Transposed and dilated convolutions: (module, input shape); output_padding >= stride (allowed
#: with dilation) has no closed-form transpose here and goes through autograd.
LAYERS = {
    "convT1d": (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 4, 9)),
    "convT2d_groups": (lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2), (2, 4, 7, 6)),
    "convT2d_dilated": (lambda: nn.ConvTranspose2d(4, 3, 3, stride=2, padding=2, output_padding=2, dilation=3),
                        (2, 4, 6, 5)),
    "convT3d": (lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), (1, 2, 3, 4, 3)),
    "conv2d_dilated_strided": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=3, dilation=3), (2, 4, 17, 14)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_transposed_and_dilated_convolutions_follow_the_epsilon_formula(name: str) -> None:
    build, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = Reshaped(build(), shape).eval()
    x = torch.randn(*shape[:3], math.prod(shape[3:]), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        weights = torch.randn(layer(x).shape, generator=torch.Generator().manual_seed(5))

    def score(out: Tensor) -> Tensor:  # relevance = out * weights
        return (out * weights).flatten(1).sum(1)
    eps = 0.1
    ours = galleryvis.attribute(layer, x, "lrp", score, rule="epsilon", epsilon=eps)
    with torch.no_grad():
        r = layer(x) * weights
    torch.testing.assert_close(ours, epsilon_by_hand(layer, x, r, eps), rtol=1e-4, atol=1e-5)


def test_batchnorm_after_a_grouped_transposed_convolution_is_folded_into_it() -> None:
    """The same map as the net with the BatchNorm folded by hand into the ConvTranspose2d (its
    weight is (in, out / groups, k, k): output channel o of group g is column o % (out / groups)
    of rows g * in / groups .. (g + 1) * in / groups)."""
    torch.manual_seed(0)
    up = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), up, bn, nn.ReLU(), nn.Conv2d(6, CLASSES, 1)).eval()
    folded = copy.deepcopy(net)
    del folded[3]
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    with torch.no_grad():
        for o in range(6):
            g = o // 3
            folded[2].weight[2 * g:2 * g + 2, o % 3] *= scale[o]
        folded[2].bias.copy_((up.bias - bn.running_mean) * scale + bn.bias)
    x = images(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
    target = targets.Segment(2, region(32))
    for rule in ("composite", "epsilon", "zplus"):
        ours = galleryvis.attribute(net, x, "lrp", target, rule=rule)
        by_hand = galleryvis.attribute(folded, x, "lrp", target, rule=rule)
        torch.testing.assert_close(ours, by_hand, rtol=1e-4, atol=1e-6)


# -- conservation -------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolate", [False, True], ids=["conv_transpose", "bilinear"])
def test_relevance_sums_to_the_segment_score_without_biases(interpolate: bool) -> None:
    net, x = EncoderDecoder(bias=False, bn=False, interpolate=interpolate), images()
    for target in (targets.Segment(3, region()), targets.Segment()):
        with torch.no_grad():
            score = targets.resolve(target, net, x, 8).score(net(x))
        assert (score.abs() > 1e-3).all()
        rel = galleryvis.attribute(net, x, "lrp", target, rule="epsilon", epsilon=1e-9)
        torch.testing.assert_close(rel.sum((1, 2, 3)), score, rtol=1e-4, atol=0)


def test_relevance_at_a_layer_is_conserved_too() -> None:
    net, x = EncoderDecoder(bias=False, bn=False), images()
    target = targets.Segment(3, region())
    with torch.no_grad():
        score = target.score(net(x))
    rel = galleryvis.attribute(net, x, "lrp", target, layer="enc", rule="epsilon", epsilon=1e-9)
    assert rel.shape == (2, 1, SIZE, SIZE)  # the encoder's output: both the skip's and the way down's share
    torch.testing.assert_close(rel.sum((1, 2, 3)), score, rtol=1e-4, atol=0)


# -- real segmentation models ---------------------------------------------------------------------
def torchvision_segmenter(name: str) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=CLASSES)


def tiny_segformer() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.SegformerConfig(num_labels=CLASSES, depths=[1, 1], hidden_sizes=[8, 16], num_encoder_blocks=2,
                                          sr_ratios=[2, 1], num_attention_heads=[1, 2], strides=[4, 2],
                                          patch_sizes=[7, 3], mlp_ratios=[2, 2], decoder_hidden_size=16)
    return transformers.SegformerForSemanticSegmentation(config)


SEGMENTERS = {
    "fcn_resnet50": (lambda: torchvision_segmenter("fcn_resnet50"), "backbone.layer4"),
    "deeplabv3_mobilenet_v3_large": (lambda: torchvision_segmenter("deeplabv3_mobilenet_v3_large"), "backbone.16"),
    "lraspp_mobilenet_v3_large": (lambda: torchvision_segmenter("lraspp_mobilenet_v3_large"), "backbone.16"),
    "segformer": (tiny_segformer, "segformer.stages.1"),
    "segformer_logits": (lambda: Logits(tiny_segformer()), "model.segformer.stages.1"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_lrp_runs_on_segmentation_models(name: str) -> None:
    """torchvision's dicts, Hugging Face's output objects and the source's ``Logits`` wrapper:
    finite maps, not all zero, for a class, a class over a region, the top-1 and at a layer."""
    build, layer = SEGMENTERS[name]
    x = images()
    model = calibrated(build(), x, seed=1)
    with torch.no_grad():
        labels = tasks.spatial_logits(model(x)).argmax(1)
    common = int(labels.flatten().mode().values)  # a class with pixels in one image at least
    for target in (targets.Segment(common), targets.Segment(3, region()), targets.Segment()):
        rel = galleryvis.attribute(model, x, "lrp", target)
        assert rel.shape == x.shape and torch.isfinite(rel).all()
        carries = rel.flatten(1).abs().sum(1) > 0
        expected = (labels == common).flatten(1).any(1) if target.cls == common else torch.ones(2, dtype=torch.bool)
        assert carries.tolist() == expected.tolist(), (name, target)  # an empty region has no relevance
    at = galleryvis.attribute(model, x, "lrp", targets.Segment(3, region()), layer=layer)
    assert at.shape == (2, 1, SIZE, SIZE) and torch.isfinite(at).all() and at.abs().sum() > 0


def test_concepts_run_on_a_segmentation_model() -> None:
    """CRP reuses the LRP forward: a segment's concepts at a layer, their maps and drops."""
    net, x = EncoderDecoder(), images()
    found = galleryvis.concepts(net, x, targets.Segment(3, region()), layer="dilated", top_k=2, random_channels=2)
    assert found.channels.shape == (2, 2) and found.maps.shape == (2, 2, SIZE, SIZE)
    assert torch.isfinite(found.maps).all() and found.drops is not None


def test_an_unsupported_decoder_operation_is_refused_naming_the_module() -> None:
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.GroupNorm(2, 4)
            self.head = nn.Conv2d(4, CLASSES, 1)

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"out": self.head(self.norm(self.conv(x)))}

    with pytest.raises(LayerError, match=r"^lrp cannot propagate relevance through 'norm' \(GroupNorm\): "
                                         r"it computes group_norm, which has no LRP rule here"):
        galleryvis.attribute(Decoder().eval(), images(1, 16), "lrp", targets.Segment(1))


def test_a_callable_target_on_a_dict_output_is_refused() -> None:
    """A callable reads the raw output (a dict), but relevance starts from a tensor."""
    with pytest.raises(LayerError, match=r"lrp needs a model that returns a tensor, not dict \(a segmentation "
                                         r"model's dict or .logits is read with a targets.Segment target\)$"):
        galleryvis.attribute(EncoderDecoder(), images(1), "lrp", lambda out: out["out"].sum((1, 2, 3)))
