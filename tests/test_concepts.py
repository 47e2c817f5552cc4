"""Concept Relevance Propagation (galleryvis.concepts) against zennit-crp's CondAttribution, its
confidence drops against models with the channel cut out of their weights, and its refusals."""
from __future__ import annotations

import copy
import statistics
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import galleryvis
from galleryvis import targets
from galleryvis.attribution import concepts as concepts_module
from galleryvis.attribution.concepts import Concepts, concept_drop, concepts
from galleryvis.engine.changes import forward_hooks
from galleryvis.errors import LayerError
from galleryvis.hooks import hook_count
from galleryvis.engine.layers import default_layer
from galleryvis.sources.lite import MBConv
from galleryvis.registry import TechniqueError

MEAN = torch.tensor(galleryvis.IMAGENET_MEAN)[None, :, None, None]
STD = torch.tensor(galleryvis.IMAGENET_STD)[None, :, None, None]
#: Black and white in the models' input space: the box rule's bounds, the engine's and zennit's.
LOW, HIGH = -MEAN / STD, (1 - MEAN) / STD


def pearson(a: Tensor, b: Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


def in_range(x: Tensor) -> Tensor:
    """Images whose pixels lie between black and white (the box rule's premise)."""
    return torch.max(torch.min(x, HIGH), LOW)


# -- zennit-crp, set up as the engine's LRP -----------------------------------------------------------
#: The engine's guard against 0/0 in the rules other than epsilon (zennit's default: 1e-6).
STABILIZER = 1e-9


def engine_composite(n: int, size: tuple[int, int], canonizers: list[Any]) -> Any:
    """zennit's EpsilonGammaBox with the engine's defaults (epsilon 0.25, gamma 0.25, box bounds
    black and white, stabilizer 1e-9), its gamma applied to weights only, as the engine does
    (zennit's own Gamma also scales positive biases), for ``n`` copies of an image of ``size``."""
    from zennit.composites import EpsilonGammaBox
    from zennit.core import ParamMod
    from zennit.rules import Gamma
    from zennit.types import Convolution

    class WeightGamma(Gamma):
        def __init__(self, gamma: float) -> None:
            super().__init__(gamma=gamma, stabilizer=STABILIZER)

            def mod(low: float | None, high: float | None, no_bias: bool) -> ParamMod:
                return ParamMod(lambda p, name: p if name == "bias" else p + gamma * p.clamp(min=low, max=high),
                                zero_params=["bias"] if no_bias else None)
            # zennit's order: positive part of z >= 0 units, its negative inputs, then z < 0 units
            self.param_modifiers[:4] = [mod(0.0, None, False), mod(None, 0.0, True), mod(None, 0.0, False),
                                        mod(0.0, None, True)]

    low, high = LOW.expand(n, 3, *size), HIGH.expand(n, 3, *size)
    return EpsilonGammaBox(low=low, high=high, epsilon=0.25, gamma=0.25, stabilizer=STABILIZER, canonizers=canonizers,
                           layer_map=[(Convolution, WeightGamma(0.25))])


def crp_reference(model: nn.Module, x: Tensor, cls: int, layer: str, channels: list[int],
                  canonizers: Any) -> tuple[Tensor, Tensor]:
    """zennit-crp on one image (1, 3, H, W): the conditional heatmaps of ``channels`` (k, H, W)
    and the relevance shares of every channel of ``layer`` (C,), ``abs_norm`` as its tutorials
    rank concepts. ``canonizers(model)``: the canonizers for the model (a fresh copy, since
    CondAttribution freezes parameters and canonizers change modules while active)."""
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept

    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    attribution = CondAttribution(model)
    size = tuple(x.shape[-2:])
    conds = [{"y": [cls], layer: [c]} for c in channels]
    maps = attribution(x.clone().requires_grad_(True), conds, engine_composite(len(channels), size, canonizers(model)))
    full = attribution(x.clone().requires_grad_(True), [{"y": [cls]}], engine_composite(1, size, canonizers(model)),
                       record_layer=[layer])
    shares = ChannelConcept().attribute(full.relevances[layer], abs_norm=True)[0]
    return maps.heatmap.detach(), shares.detach()


def vgg_canonizers(_model: nn.Module) -> list[Any]:
    from zennit.torchvision import VGGCanonizer
    return [VGGCanonizer()]


def resnet_canonizers(_model: nn.Module) -> list[Any]:
    from zennit.torchvision import ResNetCanonizer
    return [ResNetCanonizer()]


def _mbconv_forward(self: MBConv, x: Tensor) -> Tensor:
    """MBConv's forward with its skip connection summed by zennit's Sum (its Norm rule splits
    the relevance in proportion, as the engine's additions do)."""
    h = x
    if hasattr(self, "_expand_conv"):
        h = self._relu(self._bn0(self._expand_conv(h)))
    h = self._relu(self._bn1(self._depthwise_conv(h)))
    h = self._bn2(self._project_conv(h))
    return self.canonizer_sum(torch.stack([h, x], dim=-1))


def lite_canonizers(model: nn.Module) -> list[Any]:
    """EfficientNet-Lite's canonizers for zennit: every BatchNorm merged into the convolution before
    it (by name), and the skip connections summed by a Sum module."""
    from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm
    from zennit.layer import Sum

    pairs = [(["_conv_stem"], "_bn0"), (["_conv_head"], "_bn1")]
    for name, m in model.named_modules():
        if isinstance(m, MBConv):
            if hasattr(m, "_expand_conv"):
                pairs.append(([f"{name}._expand_conv"], f"{name}._bn0"))
            pairs += [([f"{name}._depthwise_conv"], f"{name}._bn1"), ([f"{name}._project_conv"], f"{name}._bn2")]

    class ExactMerge(NamedMergeBatchNorm):
        """zennit's merge with the merged BatchNorm's ``eps`` at 0 while merged: zennit 0.5 leaves
        it, so the "identity" BatchNorm still divides by sqrt(1 + eps), 0.05 % per layer with
        EfficientNet's eps = 1e-3 (the model would no longer be the one explained)."""

        def register(self, linears: list[nn.Module], batch_norm: nn.Module) -> None:
            super().register(linears, batch_norm)
            self.eps, batch_norm.eps = batch_norm.eps, 0.0

        def remove(self) -> None:
            self.batch_norm.eps = self.eps
            super().remove()

    def skip(_name: str, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, MBConv) and module.skip:
            return {"forward": _mbconv_forward.__get__(module), "canonizer_sum": Sum()}
        return None
    return [ExactMerge(pairs), AttributeCanonizer(skip)]


def no_canonizers(_model: nn.Module) -> list[Any]:
    return []


#: Measured (r, share error) per model and layer are reported in the docs (docs/concepts.md).
MIN_R = 0.99
MAX_SHARE_ERROR = 1e-4


def assert_equals_crp(model: nn.Module, x: Tensor, classes: list[int], layer: str | None, canonizers: Any,
                      top_k: int = 3) -> Concepts:
    pytest.importorskip("zennit")
    pytest.importorskip("crp")
    ours = concepts(model, x, classes, layer=layer, top_k=top_k, drop=False)
    for i, cls in enumerate(classes):
        maps, shares = crp_reference(model, x[i:i + 1], cls, ours.layer, ours.channels[i].tolist(), canonizers)
        # the k largest shares (channels whose shares tie within the tolerance may swap places)
        torch.testing.assert_close(ours.shares[i], shares.topk(top_k).values, rtol=0, atol=MAX_SHARE_ERROR)
        for j in range(top_k):
            assert pearson(ours.maps[i, j], maps[j]) >= MIN_R, (i, j)
        torch.testing.assert_close(ours.shares[i], shares[ours.channels[i]], rtol=0, atol=MAX_SHARE_ERROR)
    return ours


# -- agreement ------------------------------------------------------------------------------------------
def test_concepts_equal_crp_on_a_tiny_sequential_net(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    assert_equals_crp(tiny_seq, in_range(tiny_x[:2]), [1, 4], "3", no_canonizers)


@pytest.mark.slow
def test_concepts_equal_crp_on_vgg16(vgg16: nn.Module, photos64: Tensor) -> None:
    assert_equals_crp(vgg16, photos64[:1], [3], "features.28", vgg_canonizers)


def resnet_with_statistics(resnet18: nn.Module) -> nn.Module:
    """ResNet-18 (seeded random weights) with seeded, non-trivial batch-norm statistics and
    affine parameters, so that folding them into the convolutions (and their biases) matters."""
    model = copy.deepcopy(resnet18)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.3, 0.3), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                                  (m.bias, -0.3, 0.3)):
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("layer", [None, "layer3.1.conv2"], ids=["default-layer4", "inside-a-residual-block"])
def test_concepts_equal_crp_on_resnet18(resnet18: nn.Module, photos64: Tensor, layer: str | None) -> None:
    """The default layer (``layer4``), and a convolution whose BatchNorm is folded into it and
    whose output a skip connection bypasses (relevance kept to the path through the layer)."""
    ours = assert_equals_crp(resnet_with_statistics(resnet18), photos64[1:], [7], layer, resnet_canonizers)
    assert ours.layer == (layer or "layer4")


@pytest.mark.slow
@pytest.mark.parametrize("layer", [None, "_blocks.10._project_conv"], ids=["default", "inside-a-skip-block"])
def test_concepts_equal_crp_on_the_real_lite0(lite0: nn.Module, photos64: Tensor, layer: str | None) -> None:
    """The gallery's default model with its ImageNet weights, on photos, for their top-1 classes."""
    x = photos64[:1]
    top1 = int(lite0(x).argmax())
    ours = assert_equals_crp(lite0, x, [top1], layer, lite_canonizers)
    assert ours.layer == (layer or default_layer(lite0, x))


# -- the contracts --------------------------------------------------------------------------------------
def test_the_maps_of_all_channels_add_up_to_the_lrp_map(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    """On a net without skip connections every relevance reaching the input passes the layer,
    so the conditional maps of all its channels sum to the LRP map, and all shares' magnitudes
    to 1."""
    found = concepts(tiny_seq, tiny_x, [1, 2, 3, 4], layer="3", channels=list(range(16)), drop=False)
    lrp = galleryvis.attribute(tiny_seq, tiny_x, "lrp", [1, 2, 3, 4]).sum(1)
    torch.testing.assert_close(found.maps.sum(1), lrp, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(found.shares.abs().sum(1), torch.ones(4))
    assert found.maps.shape == (4, 16, 32, 32) and found.channels.shape == (4, 16)


def test_top_k_are_the_largest_shares_and_channels_give_their_maps(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    every = concepts(tiny_seq, tiny_x, 1, layer="3", channels=list(range(16)), drop=False)
    top = concepts(tiny_seq, tiny_x, 1, layer="3", top_k=3, drop=False)
    expected = every.shares.topk(3, dim=1)
    assert torch.equal(top.channels, expected.indices)
    torch.testing.assert_close(top.shares, expected.values)
    torch.testing.assert_close(top.maps, every.maps.gather(1, top.channels[:, :, None, None].expand(-1, -1, 32, 32)))


def test_a_batch_equals_single_images_and_chunks(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    whole = concepts(tiny_seq, tiny_x, [1, 2, 3, 4], layer="6", random_channels=4)
    chunked = concepts(tiny_seq, tiny_x, [1, 2, 3, 4], layer="6", random_channels=4, batch_size=3)
    for name in ("channels", "shares", "maps", "drops", "random_drops"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name))
    for i in range(4):
        one = concepts(tiny_seq, tiny_x[i:i + 1], [i + 1], layer="6", random_channels=4)
        for name in ("channels", "shares", "maps", "drops", "random_drops"):
            torch.testing.assert_close(getattr(one, name)[0], getattr(whole, name)[i], rtol=1e-4, atol=1e-6)


def test_the_default_layer_and_target_are_the_cam_layer_and_the_top1(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    found = concepts(tiny_seq, tiny_x, drop=False)
    assert found.layer == default_layer(tiny_seq, tiny_x[:1]) == "7"
    top1 = tiny_seq(tiny_x).argmax(1).tolist()
    torch.testing.assert_close(found.maps, concepts(tiny_seq, tiny_x, top1, layer="7", drop=False).maps)


def test_any_target_attribute_takes_is_taken(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    as_int = concepts(tiny_seq, tiny_x, 2, layer="6", drop=False)
    as_objective = concepts(tiny_seq, tiny_x, targets.Class(2), layer="6", drop=False)
    as_callable = concepts(tiny_seq, tiny_x, lambda out: out[:, 2], layer="6", drop=False)
    for other in (as_objective, as_callable):
        torch.testing.assert_close(other.maps, as_int.maps)
        assert torch.equal(other.channels, as_int.channels)


def test_it_is_exported_and_leaves_the_model_as_it_was(tiny_shared: tuple[nn.Module, nn.Module],
                                                       tiny_x: Tensor) -> None:
    model = tiny_shared[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = galleryvis.concepts(model, tiny_x, 1, layer="conv3", top_k=2, random_channels=3)
    assert galleryvis.concepts is concepts and galleryvis.concept_drop is concept_drop
    assert found.drops is not None and found.random_drops is not None and found.random_channels == 3
    assert hook_count(model) == 0 and not model.training and model.relu.inplace
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# -- is a concept real? ----------------------------------------------------------------------------------
def cut(model: nn.Sequential, index: int, channel: int) -> nn.Sequential:
    """A copy of ``model`` whose convolution ``index`` has output ``channel`` removed from its weights."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out[index].weight[channel] = 0
        out[index].bias[channel] = 0
    return out


def test_drops_are_the_confidence_lost_without_the_channel(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    found = concepts(tiny_seq, tiny_x, [1, 2, 3, 4], layer="6", top_k=2, random_channels=6, seed=7)
    classes = torch.tensor([1, 2, 3, 4])

    @torch.no_grad()
    def confidence(model: nn.Module, i: int) -> float:
        return float(model(tiny_x[i:i + 1]).softmax(1)[0, classes[i]])

    for i in range(4):
        base = confidence(tiny_seq, i)
        for j, c in enumerate(found.channels[i].tolist()):
            assert found.drops is not None
            assert found.drops[i, j].item() == pytest.approx(base - confidence(cut(tiny_seq, 6, c), i), abs=1e-6)
        drawn = torch.randperm(16, generator=torch.Generator().manual_seed(7))[:6].tolist()
        median = statistics.median(base - confidence(cut(tiny_seq, 6, c), i) for c in drawn)
        assert found.random_drops is not None
        assert found.random_drops[i].item() == pytest.approx(median, abs=1e-6)
    drops, rand = concept_drop(tiny_seq, tiny_x, found.channels, [1, 2, 3, 4], layer="6", random_channels=6, seed=7)
    torch.testing.assert_close(drops, found.drops)
    torch.testing.assert_close(rand, found.random_drops)


def test_drops_are_seeded(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    runs = [concept_drop(tiny_seq, tiny_x, [0, 1], 1, layer="6", random_channels=3, seed=s)[1] for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # more random channels than the layer has: all of them
    every = concept_drop(tiny_seq, tiny_x, [0], 1, layer="6", random_channels=100)[1]
    assert torch.equal(every, concept_drop(tiny_seq, tiny_x, [0], 1, layer="6", random_channels=16, seed=5)[1])


# -- drops through copies of the layer's output ----------------------------------------------------------
class MixesRows(nn.Module):
    """Subtracts a tenth of the batch's mean: a model after which the rows of a batch are not independent."""

    def forward(self, x: Tensor) -> Tensor:
        return x - 0.1 * x.mean(0, keepdim=True)


def drops_and_forwards(model: nn.Module, x: Tensor, layer: str, copies: bool, monkeypatch: pytest.MonkeyPatch,
                       **kwargs: Any) -> tuple[Tensor, Tensor, int]:
    """(drops, random drops, forwards of the model begun) of :func:`concept_drop` for class 1 and the
    channels 0, 2 and 5; without ``copies``, by one forward of the chunk per channel (the old way)."""
    with monkeypatch.context() as patch:
        if not copies:
            patch.setattr(concepts_module, "_copied", lambda *_args: None)
        calls: list[int] = []
        with forward_hooks([(model, lambda *_args: calls.append(1))], pre=True):
            drops, rand = concept_drop(model, x, [0, 2, 5], 1, layer=layer, **kwargs)
    return drops, rand, len(calls)


def test_copies_of_the_layer_give_the_drops_of_a_forward_per_channel(
        tiny_seq: nn.Sequential, tiny_x: Tensor, resnet18: nn.Module, transformers: dict[str, nn.Module],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CNN, a ResNet inside a residual block (the identity around the layer comes from before it, of
    batch 1), a ViT's token layer and its MLP (a residual around it): the same drops as one forward of
    the chunk per channel, in one forward per image instead of one per channel (plus the shared one);
    with a small batch size, several forwards of copies per image."""
    x64, x32 = (torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(3)) for s in (64, 32))
    cases = [(tiny_seq, tiny_x, "3", {}), (tiny_seq, tiny_x, "6", {"batch_size": 2}),
             (resnet18, x32, "layer2.1.conv2", {}),
             (transformers["vit"], x64, "encoder.layers.encoder_layer_0", {}),
             (transformers["vit"], x64, "encoder.layers.encoder_layer_1.mlp", {})]
    for model, x, layer, kwargs in cases:
        new = drops_and_forwards(model, x, layer, True, monkeypatch, random_channels=6, **kwargs)
        old = drops_and_forwards(model, x, layer, False, monkeypatch, random_channels=6, **kwargs)
        torch.testing.assert_close(new[:2], old[:2], rtol=0, atol=2e-6, msg=layer)
        per_forward = 4 * kwargs.get("batch_size", 8) - 1  # zeroed copies beside the untouched one
        chunks = -(-len(x) // kwargs.get("batch_size", 8))
        assert new[2] == chunks + len(x) * -(-9 // per_forward), layer
        assert old[2] == chunks * (1 + 9), layer
    assert hook_count(tiny_seq) == hook_count(resnet18) == 0


def test_where_copies_do_not_go_through_the_model_a_forward_per_channel_gives_the_drops(
        resnet18: nn.Module, tiny_seq: nn.Sequential, tiny_x: Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet's downsampling path (the block adds it in place to its batch-1 main path: the forward
    raises) and a model whose rows mix after the layer (the untouched copy's confidence is not the
    clean one): each falls back to one forward per channel, with its values and the model unchanged."""
    mixing = nn.Sequential(*tiny_seq[:7], MixesRows(), *tiny_seq[7:]).eval()
    x32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for model, x, layer in [(resnet18, x32, "layer3.0.downsample"), (mixing, tiny_x, "6")]:
        new = drops_and_forwards(model, x, layer, True, monkeypatch, random_channels=4)
        old = drops_and_forwards(model, x, layer, False, monkeypatch, random_channels=4)
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1]), layer
        assert new[2] == old[2] + 1, layer  # the one forward of copies that failed
        assert hook_count(model) == 0 and not model.training


class FailsOnCall(nn.Module):
    """``model``, raising on its ``n``-th forward."""

    def __init__(self, model: nn.Module, n: int) -> None:
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return self.model(x)


@pytest.mark.parametrize("n", [2, 4], ids=["during-lrp", "while-a-channel-is-zeroed"])
def test_the_model_comes_back_after_an_exception(tiny_shared: tuple[nn.Module, nn.Module], tiny_x: Tensor,
                                                 n: int) -> None:
    inner = tiny_shared[0]
    model = FailsOnCall(inner, n)
    with pytest.raises(RuntimeError, match="boom"):
        concepts(model, tiny_x, 1, layer="model.conv3", top_k=2, random_channels=3)
    assert model.calls == n
    assert hook_count(model) == 0 and inner.relu.inplace and not inner.training
    assert all(p.requires_grad for p in inner.parameters())


# -- refusals -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"layer": "nope"}, LayerError, "unknown layer 'nope'"),
    ({"layer": "6", "channels": [3, 16]}, ValueError, "channel 16 is out of range for layer '6' with 16 channels"),
    ({"layer": "6", "channels": [-1]}, ValueError, "channel -1 is out of range"),
    ({"layer": "6", "channels": []}, ValueError, "channels must be a non-empty sequence of ints"),
    ({"layer": "6", "top_k": 0}, ValueError, "top_k must be an int >= 1, got 0"),
    ({"layer": "6", "top_k": 17}, ValueError, "top_k=17 is more than the 16 channels of layer '6'"),
    ({"layer": "6", "random_channels": 0}, ValueError, "random_channels must be an int >= 1, got 0"),
    ({"layer": "6", "rule": "nope"}, TechniqueError, "lrp: parameter 'rule' must be one of"),
], ids=["unknown-layer", "channel-too-large", "negative-channel", "no-channels", "top-k-0", "top-k-too-large",
        "no-random-channels", "unknown-lrp-rule"])
def test_bad_input_is_refused_in_one_line(tiny_seq: nn.Sequential, tiny_x: Tensor, kwargs: dict[str, Any],
                                          error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        concepts(tiny_seq, tiny_x, 1, **kwargs)
    assert "\n" not in str(info.value)
    assert hook_count(tiny_seq) == 0


def test_drops_need_a_confidence(tiny_seq: nn.Sequential, tiny_x: Tensor) -> None:
    with pytest.raises(targets.ScoreOnlyError, match="concepts with drop=True reads the target's confidence"):
        concepts(tiny_seq, tiny_x, lambda out: out[:, 1], layer="6")
    with pytest.raises(ValueError, match=r"channels must be \(k,\) or \(N, k\) for 4 images"):
        concept_drop(tiny_seq, tiny_x, torch.zeros(3, 2, dtype=torch.long), 1, layer="6")


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_token_and_channels_last_layers_give_concepts_of_their_last_dimension(
        transformers: dict[str, nn.Module], name: str) -> None:
    """ViT's tokens (N, T, D) and Swin's channels-last (N, H, W, C) default layers: the channels are
    D and C; asking for an image's top channels by number gives their shares and maps again."""
    model, x = transformers[name], torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    top = concepts(model, x, [1, 2], top_k=3, random_channels=4)
    assert top.layer == default_layer(model, x[:1]) and top.maps.shape == (2, 3, 64, 64)
    assert top.drops is not None and torch.isfinite(top.drops).all() and hook_count(model) == 0
    asked = concepts(model, x[:1], [1], layer=top.layer, channels=top.channels[0].tolist(), drop=False)
    torch.testing.assert_close(asked.shares[0], top.shares[0])
    torch.testing.assert_close(asked.maps[0], top.maps[0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_real_lite0s_top_concept_costs_more_confidence_than_random_channels(lite0: nn.Module) -> None:
    """cat.png and coffee.png at 112 px, top-1 classes, default layer: zeroing the top concept
    costs 2.7 and 12.5 points of confidence (measured), the median of 16 random channels 0.00."""
    from conftest import load_photo

    x = torch.cat([load_photo("cat.png", 112), load_photo("coffee.png", 112)])
    found = concepts(lite0, x, top_k=1)
    assert found.drops is not None and found.random_drops is not None
    assert (found.drops[:, 0] > found.random_drops + 0.01).all()


# -- token layers: the same computation done by hand with lxt ----------------------------------------
@pytest.mark.parametrize("layer", ["encoder.layers.encoder_layer_1.mlp", "encoder.layers.encoder_layer_0"])
def test_concepts_of_a_token_layer_equal_lxts_rules_by_hand(transformers: dict[str, nn.Module], lxt_patches: Any,
                                                            monkeypatch: pytest.MonkeyPatch, layer: str) -> None:
    """Channels of a ViT's token layer (N, tokens, D): under lxt's CP-LRP patches (identity on
    GELU, LayerNorm with its std held, attention held), relevance is gradient x input; a concept's
    map is the backward from the layer's output with the relevance kept at that channel of every
    token (what flows through the layer alone, as zennit-crp's ``exclude_parallel``), its share the
    channel's relevance over all tokens over the sum of the channels' absolute ones."""
    model = transformers["vit"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = concepts(model, x, [3, 5], layer=layer, top_k=3, drop=False, rule="epsilon", epsilon=1e-9, attention="cp")

    monkeypatch.setattr(nn.GELU, "original_forward", nn.GELU.forward, raising=False)
    monkeypatch.setattr(nn.GELU, "forward", lxt_patches.non_linear_forward)
    monkeypatch.setattr(nn.LayerNorm, "forward", lxt_patches.layer_norm_forward)
    monkeypatch.setattr(nn.MultiheadAttention, "original_forward", nn.MultiheadAttention.forward, raising=False)
    monkeypatch.setattr(nn.MultiheadAttention, "forward", lxt_patches.cp_multi_head_attention_forward)
    reference = copy.deepcopy(model).requires_grad_(False)
    kept: dict[str, Tensor] = {}
    handle = reference.get_submodule(layer).register_forward_hook(lambda _m, _i, out: kept.setdefault("h", out))
    leaf = x.clone().requires_grad_(True)
    logits = reference(leaf)
    handle.remove()
    h = kept["h"]
    (grad_h,) = torch.autograd.grad(logits[:, [3, 5]].diagonal().sum(), h, retain_graph=True)
    monkeypatch.undo()
    per_channel = (h * grad_h).detach().sum(1)  # (N, D): each channel's relevance over the tokens
    shares = per_channel / per_channel.abs().sum(1, keepdim=True)
    for i in range(2):
        torch.testing.assert_close(ours.channels[i], shares[i].topk(3).indices)
        torch.testing.assert_close(ours.shares[i], shares[i].topk(3).values, rtol=0, atol=MAX_SHARE_ERROR)
        for j, c in enumerate(ours.channels[i].tolist()):
            keep = torch.zeros_like(grad_h)
            keep[i, :, c] = 1
            (grad_x,) = torch.autograd.grad(h, leaf, grad_h * keep, retain_graph=True)
            assert pearson(ours.maps[i, j], (leaf * grad_x).detach()[i].sum(0)) >= 0.9999, (i, c)
