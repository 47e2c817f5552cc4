"""Feature visualization (``galleryvis.synthesize``): acceptance on the real EfficientNet-Lite0,
behaviour and hygiene on small random nets.

The acceptance tests run each technique with its own default parameters (steps, learning rate,
regularization); only the image size and the layer are chosen by the test.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import galleryvis
from galleryvis import families, registry
from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD
from galleryvis.hooks import LayerError, capture, hook_count
from galleryvis.sources.lite import efficientnet_lite
from galleryvis.engine import gaussian_blur
from galleryvis.registry import TechniqueError
from galleryvis.synthesis import param as P
from galleryvis.synthesis import transforms as T
from galleryvis.synthesis.api import SynthesisResult
from galleryvis.synthesis.transfer import class_rank

ROOT = Path(__file__).resolve().parents[1]
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
SYNTHESIS = ["filter_visualization", "layer_activation", "deep_dream", "class_visualization",
             "inverted_representation"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The CPUs are shared: two intra-op threads competing with other processes spin-wait and
    # run orders of magnitude slower than one. Restored after this module.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- models and images ---------------------------------------------------------------------------
class SmallNet(nn.Module):
    """A random conv net with BatchNorm and in-place ReLUs; layers ``stem.*``, ``body.*``, ``fc``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(self.stem(x))).flatten(1))


class FlakyNet(SmallNet):
    """Raises on its ``fail_at``-th forward pass (to test clean-up after an exception)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return super().forward(x)


def small_net(cls: type[SmallNet] = SmallNet, *args: int) -> SmallNet:
    torch.manual_seed(0)
    net = cls(*args)
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-0.1, 0.1)
        net.stem[1].running_var.uniform_(0.5, 1.5)
    return net.train()  # synthesis must switch to eval and back


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    from galleryvis.sources.lite import efficientnet_lite0

    return efficientnet_lite0()


def photo(name: str = "cat.png", size: int = 128) -> torch.Tensor:
    """A bundled photo, resized, normalized: (1,3,size,size)."""
    im = Image.open(ROOT / "input_images" / name).convert("RGB").resize((size, size), Image.BILINEAR)
    x01 = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()[None] / 255
    return (x01 - MEAN) / STD


def layer_mean(model: nn.Module, img01: torch.Tensor, layer: str, channels: list[int]) -> torch.Tensor:
    """Mean activation of channels[i] of ``layer`` for image i (no transforms)."""
    with torch.no_grad(), capture(model, [layer]) as acts:
        model.eval()((img01 - MEAN) / STD)
    a = acts[layer]
    return torch.stack([a[i, c].mean() for i, c in enumerate(channels)])


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert hook_count(model) == 0
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["inplace"] == before["inplace"]
    assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())
    assert all(p.grad is None for p in model.parameters())


# -- acceptance on EfficientNet-Lite0 -------------------------------------------------------------
def test_class_visualization_reaches_confidence(lite0):
    target = 130  # flamingo
    img, trace = galleryvis.synthesize(lite0, "class_visualization", target=target)
    steps = registry.get("class_visualization").params["steps"]
    assert trace.shape == (steps, 1)
    with torch.no_grad():
        p = lite0((img - MEAN) / STD).softmax(1)[0, target]
    assert p >= 0.9
    assert trace[-10:].mean() > trace[:10].mean() + 5


@pytest.mark.slow
@pytest.mark.slow
def test_class_visualizations_made_with_lite0_are_recognized_by_lite1(lite0):
    # bench/transfer.py measures this over a dozen classes and both directions
    lite1 = efficientnet_lite("efficientnet_lite1")
    for target in (130, 872):  # flamingo, tripod
        img, _ = galleryvis.synthesize(lite0, "class_visualization", target=target)
        assert img.shape == (1, 3, 224, 224)
        assert class_rank(lite0, img, target, size=224)[1] >= 0.9
        assert class_rank(lite1, img, target, size=240)[0] <= 5


@pytest.mark.slow
def test_filter_visualization_raises_channel_activation(lite0):
    layer, channels = "_blocks.10", [0, 2, 4]
    start, _ = galleryvis.synthesize(lite0, "filter_visualization", layer=layer, channel=channels, steps=0)
    img, trace = galleryvis.synthesize(lite0, "filter_visualization", layer=layer, channel=channels)
    a0, a1 = layer_mean(lite0, start, layer, channels), layer_mean(lite0, img, layer, channels)
    # The layer is a linear bottleneck (signed): compare with the magnitude at the start.
    assert (a1 >= 10 * a0.abs()).all(), (a0, a1)
    assert trace.shape == (registry.get("filter_visualization").params["steps"], 3)


def test_filter_visualization_batch_equals_single_calls_lite0(lite0):
    channels = list(range(0, 40, 5))
    batched = galleryvis.synthesize(lite0, "filter_visualization", layer="_blocks.4",
                                    channel=channels, steps=4, size=64)
    for i, c in enumerate(channels):
        one = galleryvis.synthesize(lite0, "filter_visualization", layer="_blocks.4", channel=c,
                                    steps=4, size=64)
        # bit for bit, on any CPU: each item runs in passes of its own
        assert torch.equal(batched.image[i:i + 1], one.image) and torch.equal(batched.trace[:, i:i + 1], one.trace)


def test_inverted_representation_early_layer(lite0):
    x = photo("cat.png", 128)
    layer = "_blocks.1"  # stride 4
    img, trace = galleryvis.synthesize(lite0, "inverted_representation", layer=layer, image=x)
    with torch.no_grad(), capture(lite0, [layer]) as acts:
        lite0((img - MEAN) / STD)
        rec = acts[layer].clone()
        lite0(x)
        orig = acts[layer].clone()
    rel = (rec - orig).norm() / orig.norm()
    assert rel <= 0.2
    # recognisable: the reconstruction correlates with the photo pixel by pixel
    r = np.corrcoef(img.flatten().numpy(), (x * STD + MEAN).flatten().numpy())[0, 1]
    assert r >= 0.8
    assert trace[-1, 0] < 0.1 * trace[0, 0]
    assert (trace[-1, 0] - rel ** 2).abs() < 0.02  # the trace is the squared relative distance


def test_deep_dream_increases_objective_and_keeps_size(lite0):
    x = photo("coffee.png", 112)
    layer = "_blocks.7"
    params = registry.get("deep_dream").params
    img, trace = galleryvis.synthesize(lite0, "deep_dream", layer=layer, image=x)
    assert img.shape == x.shape
    assert trace.shape == (params["steps"] * params["octaves"], 1)
    for octave in trace.split(params["steps"]):  # within each scale, on average upwards
        half = len(octave) // 2
        assert octave[half:].mean() > octave[:half].mean()
    with torch.no_grad(), capture(lite0, [layer]) as acts:
        lite0((img - MEAN) / STD)
        after = acts[layer].square().mean()
        lite0(x)
        before = acts[layer].square().mean()
    assert after > 1.5 * before
    assert (img - (x * STD + MEAN)).abs().mean() > 0.02  # the photo changed, visibly


# -- behaviour on small nets -------------------------------------------------------------------------
def test_registered_as_synthesis_family():
    assert registry.names("synthesis") == SYNTHESIS
    for name in SYNTHESIS:
        d = registry.get(name).describe()
        assert d["family"] == "synthesis" and d["output"] == "input" and d["paper"]
    assert registry.get("filter_visualization").params["param"] == "fft"
    assert registry.get("class_visualization").params["param"] == "fft"
    assert registry.get("class_visualization").params["regularization"] == "none"
    assert "synthesize" in galleryvis.__all__
    # what each takes lives in its registry entry, as every other fact of a technique does
    assert [registry.get(n).inputs.unit for n in SYNTHESIS] == ["channel", "channel", "channel", "target", None]
    assert registry.get("gradcam").inputs == families.Attribution.inputs
    with pytest.raises(registry.TechniqueError, match="family must be one of attribution, synthesis, concepts, got 'concept'"):
        registry.technique("concept_map", output="cam", paper="-", summary="-", family="concept")


@pytest.mark.slow
def test_filter_visualization_small_net_gain_and_batching():
    net = small_net()
    channels = list(range(8))
    start, _ = galleryvis.synthesize(net, "filter_visualization", layer="body.3", channel=channels,
                                     steps=0, size=32)
    res = galleryvis.synthesize(net, "filter_visualization", layer="body.3", channel=channels, size=32)
    a0, a1 = layer_mean(net, start, "body.3", channels), layer_mean(net, res.image, "body.3", channels)
    # A random net's response to images in [0, 1] is bounded near its response to grey, so the
    # Lite0 test carries the 10x criterion; here: every live channel goes up, at least 2x.
    live = a0 > 0
    assert live.sum() >= 2 and (a1[live] >= 2 * a0[live]).all(), (a0, a1)
    for i, c in enumerate(channels):
        one = galleryvis.synthesize(net, "filter_visualization", layer="body.3", channel=c, size=32)
        # 128 Adam steps amplify any rounding difference (issue 18: 0.11 on a Xeon when the
        # batch shared its convolutions), so equality holds only by construction: bit for bit
        assert torch.equal(res.image[i:i + 1], one.image) and torch.equal(res.trace[:, i:i + 1], one.trace)
    # and the order of the list does not matter either
    rev = galleryvis.synthesize(net, "filter_visualization", layer="body.3", channel=channels[::-1],
                                size=32)
    assert torch.equal(rev.image.flip(0), res.image)


class BatchRoundingNet(SmallNet):
    """SmallNet whose output moves by 1e-6 (relative) per extra image in the batch: a CPU whose
    kernels round differently for a batch than for one image, made deterministic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (1 + 1e-6 * (x.shape[0] - 1))


def test_a_channel_list_equals_separate_calls_even_where_batched_kernels_round_differently():
    net = small_net(BatchRoundingNet)
    listed = galleryvis.synthesize(net, "class_visualization", target=[1, 2, 3], size=24, steps=30)
    for i, t in enumerate([1, 2, 3]):
        one = galleryvis.synthesize(net, "class_visualization", target=t, size=24, steps=30)
        assert torch.equal(listed.image[i:i + 1], one.image)


@pytest.mark.parametrize("param", ["fft", "pixel"])
def test_filter_visualization_pixel_and_fft(param):
    net = small_net()
    img, trace = galleryvis.synthesize(net, "filter_visualization", layer="body.2", channel=[1, 5],
                                       param=param, steps=40, size=24)
    assert img.shape == (2, 3, 24, 24) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1
    assert trace[-5:].mean() > trace[:5].mean()


def test_redirected_relu_revives_a_dead_channel():
    net = small_net()
    kw = dict(layer="body.3", channel=3, steps=30, size=24)
    start, _ = galleryvis.synthesize(net, "filter_visualization", **{**kw, "steps": 0})
    pre = _max_pre(net, start)
    with torch.no_grad():
        net.body[2].bias[3] -= pre + 0.02  # channel 3 of body.3 is now 0 on the whole start image
    dead = galleryvis.synthesize(net, "filter_visualization", redirect=False, **kw)
    alive = galleryvis.synthesize(net, "filter_visualization", **kw)
    assert dead.trace.abs().max() == 0
    assert alive.trace[0, 0] == 0 and alive.trace[-1, 0] > 0


def _max_pre(net: nn.Module, img01: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), capture(net, ["body.2"]) as acts:
        net.eval()((img01 - MEAN) / STD)
    return acts["body.2"][0, 3].max()


def test_forward_stops_at_the_layer():
    net = small_net()
    calls = {}
    for steps in (0, 5):
        handle = net.fc.register_forward_hook(lambda *_, s=steps: calls.__setitem__(s, calls.get(s, 0) + 1))
        try:
            galleryvis.synthesize(net, "filter_visualization", layer="stem.2", channel=0, steps=steps, size=16)
        finally:
            handle.remove()
    assert calls[5] == calls[0]  # the probes only (layer and batch-norm folding); the 5 steps stop after stem.2


def test_reused_module_reads_its_last_call(lite0):
    # _blocks.1._relu runs twice per forward (after expand and after depthwise); capture keeps
    # the last call, and so must the early-stopping tap.
    x = photo("cat.png", 64)
    img, trace = galleryvis.synthesize(lite0, "layer_activation", layer="_blocks.1._relu", channel=7, image=x)
    with torch.no_grad(), capture(lite0, ["_blocks.1._relu"]) as acts:
        lite0.eval()(x)
    torch.testing.assert_close(trace[0, 0], acts["_blocks.1._relu"][0, 7].mean())


def test_layer_activation_is_guided_gradient():
    net = small_net().eval()
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    img, trace = galleryvis.synthesize(net, "layer_activation", layer="stem.0", channel=[2, 6],
                                       image=x, scaling="minmax")
    # stem.0 is the first conv: nothing to guide, the gradient of its channel mean is exact
    xs = x.clone().requires_grad_(True)
    out = net.stem[0](xs)
    (g,) = torch.autograd.grad(out[0, 2].mean() + out[1, 6].mean(), xs)
    flat = g.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    torch.testing.assert_close(img, (g - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trace[0], torch.stack([out[0, 2].mean(), out[1, 6].mean()]).detach())
    sym, _ = galleryvis.synthesize(net, "layer_activation", layer="body.3", image=x)
    assert sym.shape == x.shape and 0 <= sym.min() and sym.max() <= 1


def test_one_image_many_channels_and_one_channel_many_images():
    net = small_net()
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    many, _ = galleryvis.synthesize(net, "deep_dream", layer="body.1", channel=[0, 1], image=x[:1], steps=3)
    assert many.shape == (2, 3, 24, 24)
    one, _ = galleryvis.synthesize(net, "deep_dream", layer="body.1", channel=1, image=x[:1], steps=3)
    assert torch.equal(many[1:], one)
    per_image, trace = galleryvis.synthesize(net, "deep_dream", layer="body.1", channel=4, image=x, steps=3)
    assert per_image.shape == (3, 3, 24, 24) and trace.shape == (9, 3)
    with pytest.raises(ValueError, match="one per image"):
        galleryvis.synthesize(net, "deep_dream", layer="body.1", channel=[0, 1], image=x, steps=3)


@pytest.mark.parametrize("param,regularization", [("fft", "none"), ("pixel", "yosinski"), ("pixel", "none"),
                                                   ("pixel", "l1"), ("pixel", "l2")])
def test_class_visualization_regularizations(param, regularization):
    net = small_net()
    # the default weights (l1 0.1, l2 1.0) suit a trained net; this random net's logits move far
    # less per pixel, so the penalty would swamp them
    setting = dict(param=param, regularization=regularization)
    res = galleryvis.synthesize(net, "class_visualization", target=[3, 7], steps=25, size=24,
                                l1_weight=1e-4, l2_weight=1e-3, **setting)
    img, trace = res
    assert img.shape == (2, 3, 24, 24) and trace.shape == (25, 2)
    assert 0 <= img.min() and img.max() <= 1
    assert (trace[-5:].mean(0) > trace[:5].mean(0)).all()
    start, _ = galleryvis.synthesize(net, "class_visualization", target=[3, 7], steps=0, size=24, **setting)
    with torch.no_grad():
        gain = net.eval()((img - MEAN) / STD) - net((start - MEAN) / STD)
    # each target logit rose more than the other classes' on average
    assert (gain[[0, 1], [3, 7]] > gain.mean(1)).all()


@pytest.mark.parametrize("param,atol", [("pixel", 1e-5), ("fft", 1e-3 + 1e-6)])
def test_class_visualization_from_an_image(param, atol):
    # the Fourier parameterization's sigmoid never reaches 0 or 1: the start is within 1e-3
    net = small_net()
    x = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(3))
    img, _ = galleryvis.synthesize(net, "class_visualization", target=2, image=x, steps=0, param=param)
    torch.testing.assert_close(img, (x * STD + MEAN).clamp(0, 1), rtol=0, atol=atol)


def test_class_visualization_regularizes_pixels_only():
    with pytest.raises(ValueError, match="regularization 'yosinski' acts on pixels.*param='pixel'"):
        galleryvis.synthesize(small_net(), "class_visualization", target=1, steps=1, size=16,
                              regularization="yosinski")


def test_class_rank_counts_the_classes_above_the_target():
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 6))
    torch.nn.init.normal_(net[2].weight, generator=torch.Generator().manual_seed(0))
    img = torch.full((1, 3, 12, 12), 0.3)
    with torch.no_grad():
        logits = net((img - MEAN) / STD)[0]
    for rank, c in enumerate(logits.argsort(descending=True).tolist(), start=1):
        got, prob = class_rank(net, img, c, size=9)
        assert got == rank and prob == pytest.approx(float(logits.softmax(0)[c]), rel=1e-6)


def test_inverted_representation_small_net():
    net = small_net()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    img, trace = galleryvis.synthesize(net, "inverted_representation", layer="stem.2", image=x, steps=60)
    assert img.shape == x.shape and trace.shape == (60, 2)
    assert (trace[-1] < 0.5 * trace[0]).all()


@pytest.mark.parametrize("technique,kwargs", [
    ("filter_visualization", dict(layer="body.3", channel=[2, 9], steps=6, size=20)),
    ("class_visualization", dict(target=[1, 4], steps=6, size=20)),
    ("deep_dream", dict(layer="body.1", image="x", steps=3)),
    ("inverted_representation", dict(layer="body.1", image="x", steps=6)),
    ("layer_activation", dict(layer="body.1", channel=3, image="x")),
])
def test_seed_determinism_and_result(technique, kwargs):
    net = small_net()
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(5))
    kwargs = {k: (x if v == "x" else v) for k, v in kwargs.items()}
    a = galleryvis.synthesize(net, technique, seed=3, **kwargs)
    b = galleryvis.synthesize(net, technique, seed=3, **kwargs)
    assert isinstance(a, SynthesisResult)
    image, trace = a
    assert image is a.image and trace is a.trace
    assert image.dtype == torch.float32 and image.device.type == "cpu" and image.dim() == 4
    assert 0 <= image.min() and image.max() <= 1
    assert trace.dtype == torch.float32 and trace.shape[1] == image.shape[0]
    assert torch.equal(a.image, b.image) and torch.equal(a.trace, b.trace)
    if technique in ("filter_visualization", "class_visualization", "deep_dream"):
        c = galleryvis.synthesize(net, technique, seed=4, **kwargs)
        assert not torch.equal(a.image, c.image)


def test_no_global_rng_use():
    net = small_net()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    galleryvis.synthesize(net, "filter_visualization", layer="body.1", channel=[0, 1], steps=3, size=16)
    galleryvis.synthesize(net, "class_visualization", target=0, steps=3, size=16)
    assert torch.equal(torch.rand(3), expected)


def test_steps_zero_returns_the_start():
    net = small_net()
    img, trace = galleryvis.synthesize(net, "filter_visualization", layer="body.1", channel=0, steps=0, size=16)
    assert trace.shape == (0, 1)
    assert (img - 0.5).abs().max() < 0.1  # the FFT start is nearly uniform grey


# -- model hygiene -----------------------------------------------------------------------------------
CASES = [
    ("filter_visualization", dict(layer="body.3", channel=[0, 1], steps=3, size=16)),
    ("filter_visualization", dict(layer="body.3", channel=0, steps=3, size=16, param="pixel", redirect=False)),
    ("layer_activation", dict(layer="body.1", channel=0, image="x")),
    ("deep_dream", dict(layer="body.1", image="x", steps=2, octaves=2)),
    ("class_visualization", dict(target=1, steps=3, size=16)),
    ("inverted_representation", dict(layer="body.1", image="x", steps=3)),
]


@pytest.mark.parametrize("technique,kwargs", CASES)
def test_model_untouched_after_success(technique, kwargs):
    net = small_net()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    before = snapshot(net)
    galleryvis.synthesize(net, technique, **{k: (x if v == "x" else v) for k, v in kwargs.items()})
    assert_untouched(net, before)


@pytest.mark.parametrize("technique,kwargs", CASES)
def test_model_untouched_after_exception(technique, kwargs):
    net = small_net(FlakyNet, 3)  # the probe passes, a later forward raises
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    before = snapshot(net)
    kwargs = {k: (x if v == "x" else v) for k, v in kwargs.items()}
    if technique == "layer_activation":
        net.fail_at = 2  # one forward after the probe
    with pytest.raises(RuntimeError, match="boom"):
        galleryvis.synthesize(net, technique, **kwargs)
    assert_untouched(net, before)


# -- errors ------------------------------------------------------------------------------------------
def test_errors():
    net = small_net()
    x = torch.randn(1, 3, 16, 16)
    fv = dict(layer="body.1", channel=0, steps=1, size=16)
    with pytest.raises(TechniqueError, match="did you mean: filter_visualization"):
        galleryvis.synthesize(net, "filter_visualisation", **fv)
    with pytest.raises(TechniqueError, match="attribution technique.*galleryvis.attribute"):
        galleryvis.synthesize(net, "gradcam", layer="body.1")
    with pytest.raises(LayerError, match="unknown layer 'body.7'.*did you mean"):
        galleryvis.synthesize(net, "filter_visualization", layer="body.7", channel=0)
    with pytest.raises(ValueError, match="channel 16 is out of range"):
        galleryvis.synthesize(net, "filter_visualization", layer="body.1", channel=16)
    with pytest.raises(ValueError, match="target 10 is out of range"):
        galleryvis.synthesize(net, "class_visualization", target=10)
    with pytest.raises(ValueError, match="needs channel="):
        galleryvis.synthesize(net, "filter_visualization", layer="body.1")
    with pytest.raises(ValueError, match="needs target="):
        galleryvis.synthesize(net, "class_visualization")
    with pytest.raises(ValueError, match="takes no target"):
        galleryvis.synthesize(net, "filter_visualization", target=1, **fv)
    with pytest.raises(ValueError, match="takes no channel"):
        galleryvis.synthesize(net, "class_visualization", target=1, channel=2)
    with pytest.raises(LayerError, match="takes no layer"):
        galleryvis.synthesize(net, "class_visualization", target=1, layer="body.1")
    with pytest.raises(ValueError, match="takes no image"):
        galleryvis.synthesize(net, "filter_visualization", image=x, **fv)
    with pytest.raises(ValueError, match="needs image="):
        galleryvis.synthesize(net, "deep_dream", layer="body.1")
    with pytest.raises(ValueError, match=r"shape \(N, 3, H, W\)"):
        galleryvis.synthesize(net, "deep_dream", layer="body.1", image=x[0])
    with pytest.raises(TechniqueError, match="takes no steps"):
        galleryvis.synthesize(net, "layer_activation", layer="body.1", image=x, steps=3)
    with pytest.raises(TechniqueError, match="unknown parameter 'octave'.*did you mean: octaves"):
        galleryvis.synthesize(net, "deep_dream", layer="body.1", image=x, octave=2)
    with pytest.raises(TechniqueError, match="must be one of"):
        galleryvis.synthesize(net, "filter_visualization", param="cppn", **fv)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        galleryvis.synthesize(net, "filter_visualization", layer="body.1", channel=0, steps=-1)
    with pytest.raises(ValueError, match="non-negative ints"):
        galleryvis.synthesize(net, "filter_visualization", layer="body.1", channel=[0, -1])
    with pytest.raises(ValueError, match="mean must have 3 values"):
        galleryvis.synthesize(net, "filter_visualization", mean=(0.5,), **fv)
    assert hook_count(net) == 0


# -- building blocks ---------------------------------------------------------------------------------
def test_transforms_and_params():
    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(7))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    same = T.random_affine(x, gens, pad=0, jitter=0, scales=(1.0,), angles=(0.0,))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-5)
    const = torch.full((1, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 2 * math.ceil(3 * 1.5) + 1, 1.5), const)
    out = T.random_affine(x, gens)
    assert out.shape == (2, 3, 17 + 24, 23 + 24)
    rolled = T.roll(x, [torch.Generator().manual_seed(0)] * 2, 4)
    assert torch.allclose(rolled.sum((2, 3)), x.sum((2, 3)), atol=1e-4)
    p = P.fft([torch.Generator().manual_seed(0)], (20, 30), torch.device("cpu"))
    img = p.image()
    assert img.shape == (1, 3, 20, 30) and (img - 0.5).abs().max() < 0.05
    start = torch.rand(2, 3, 20, 31, generator=torch.Generator().manual_seed(1)) * 0.99 + 0.005
    torch.testing.assert_close(P.fft(gens, (20, 31), torch.device("cpu"), start=start).image(), start)
    q = P.pixel([torch.Generator().manual_seed(0)], (8, 8), torch.device("cpu"))
    assert q.image().min() >= 150 / 255 and q.image().max() <= 180 / 255


def test_deterministic_settings_are_restored_after_synthesis() -> None:
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    settings = lambda: (torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),  # noqa: E731
                        torch.utils.deterministic.fill_uninitialized_memory)
    before = settings()
    during = []
    net[0].register_forward_hook(lambda *_: during.append(settings()))
    galleryvis.synthesize(net, "class_visualization", target=1, steps=2, size=32)
    assert settings() == before
    # deterministic kernels, without torch's debugging fill of every new tensor (it costs, changes nothing)
    assert set(during) == {(True, True, False)}


# -- transformers: a unit is a channel on token and channels-last layers ----------------------------
@pytest.mark.parametrize("name, layer, tokens", [
    ("vit", "encoder.layers.encoder_layer_1.ln_1", True),  # (N, 65, 32): a class token and 8x8 patches
    ("swin", "features.3.1.norm1", False),  # (N, 8, 8, 48), channels last
])
def test_the_tap_reads_transformer_layers_as_channels(transformers: dict[str, nn.Module], name: str, layer: str,
                                                      tokens: bool) -> None:
    from galleryvis.synthesis.objectives import tap

    model, x = transformers[name], torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (raw,) = _outputs(model, layer, x)
    expected = raw[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2) if tokens else raw.permute(0, 3, 1, 2)
    with tap(model, layer) as t:
        assert t.probe(x) == tuple(expected.shape)
        torch.testing.assert_close(t(x), expected)
    result = galleryvis.synthesize(model, "filter_visualization", layer=layer, channel=expected.shape[1] - 1, steps=2)
    assert result.image.shape[0] == 1 and torch.isfinite(result.trace).all() and hook_count(model) == 0
    with pytest.raises(ValueError, match="out of range"):
        galleryvis.synthesize(model, "filter_visualization", layer=layer, channel=expected.shape[1], steps=2)


def _outputs(model: nn.Module, layer: str, x: Tensor) -> list[Tensor]:
    with capture(model, [layer]) as acts:
        model(x)
    return [acts[layer]]


TRANSFORMERS = ["vit", "swin", "convnext", "timm_vit", "deit", "timm_swin"]
#: (technique, params, whether the trace is the untransformed objective: it then must improve).
SYNTHESIS_ON_TRANSFORMERS = [
    ("filter_visualization", {"channel": 3, "size": 64}, False),
    ("filter_visualization", {"channel": 3, "size": 48, "transforms": False}, True),
    ("class_visualization", {"target": 3, "size": 64}, False),
    ("class_visualization", {"target": 3, "size": 80, "param": "pixel"}, True),
    ("class_visualization", {"target": 3, "size": 64, "param": "pixel", "regularization": "yosinski"}, False),
    ("deep_dream", {"channel": 3}, False),
    ("inverted_representation", {}, True),
]


@pytest.mark.parametrize("technique, params, exact", SYNTHESIS_ON_TRANSFORMERS,
                         ids=[f"{t}-{'-'.join(map(str, p.values()))}" for t, p, _ in SYNTHESIS_ON_TRANSFORMERS])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_synthesis_on_transformers(transformers: dict[str, nn.Module], name: str, technique: str,
                                   params: dict, exact: bool) -> None:
    """Filter and class visualization, deep dream and inversion on ViT, DeiT, Swin and ConvNeXt:
    models that take one input size (torchvision's and timm's ViT, timm's Swin) see every
    jittered, rescaled or octave image resized to it, and the picture keeps its own size. Where
    the trace is the objective itself (no random transforms), it rises over the steps (falls,
    for inversion); the model is left as it was."""
    model = transformers[name]
    h, w = (48, 64) if name == "timm_vit" else (64, 64)
    image = None if technique.endswith("visualization") else \
        torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    before = snapshot(model)
    result = galleryvis.synthesize(model, technique, image=image, steps=16 if exact else 4, **params)
    assert_untouched(model, before)
    size = params.get("size")
    assert result.image.shape == (1, 3, *((size, size) if size else (h, w)))
    assert torch.isfinite(result.image).all() and torch.isfinite(result.trace).all()
    if exact:
        first, last = float(result.trace[0, 0]), float(result.trace[-1, 0])
        assert last < first if technique == "inverted_representation" else last > first


def test_fixed_input_sizes_are_read_from_the_model(transformers: dict[str, nn.Module]) -> None:
    from galleryvis.engine.layers import fixed_input_size

    sizes = {name: fixed_input_size(model) for name, model in transformers.items()}
    assert sizes["vit"] == (64, 64) and sizes["swin"] is None and sizes["convnext"] is None
    if "timm_vit" in sizes:
        assert sizes["timm_vit"] == (48, 64) and sizes["deit"] == (64, 64) and sizes["timm_swin"] == (64, 64)


def test_layer_activation_refuses_models_without_relus(transformers: dict[str, nn.Module]) -> None:
    """Guided backprop on a GELU model would be the plain gradient: refused in one line."""
    with pytest.raises(LayerError, match="this model has none") as info:
        galleryvis.synthesize(transformers["vit"], "layer_activation", channel=1, image=torch.rand(1, 3, 64, 64))
    assert "\n" not in str(info.value)
