"""Engine spec: the model comes back exactly as it came, targets, shapes, errors, shared passes,
default layers. Tiny seeded models (see conftest.py) keep this file fast."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import galleryvis
from galleryvis import registry
from galleryvis.engine import Context
from galleryvis.hooks import LayerError, hook_count
from galleryvis.engine.layers import Grid, default_layer, grids_of, probe
from galleryvis.registry import TechniqueError

from conftest import tiny_sequential

ATTRIBUTION = registry.names("attribution")
#: The techniques that read self-attention (transformers only) and the ones CNNs take.
ATTENTION = [n for n in ATTRIBUTION if registry.get(n).attention]
CNN_TECHS = [n for n in ATTRIBUTION if n not in ATTENTION and "classification" in registry.get(n).tasks]
#: The techniques of gradients.py / cam.py / shapley.py (lrp.py is tested by its own file).
MINE = [n for n in ATTRIBUTION
        if registry.get(n).fn.__module__.rsplit(".", 1)[-1] in ("gradients", "cam", "shapley")]
LAYER_TECHS = [n for n in MINE if registry.get(n).layer in ("one", "many")]
PERTURBATION = [n for n in ATTRIBUTION if registry.get(n).fn.__module__.endswith(".perturbation")]
FAST = {"smoothgrad": {"samples": 4}, "integrated_gradients": {"steps": 4}, "rise": {"masks": 16},
        "occlusion": {"window": 16, "stride": 8},
        "gradient_shap": {"samples": 4}, "kernel_shap": {"segments": 4, "samples": 8},
        "lime": {"segments": 4, "samples": 8}}
SEQ_LAYER = "7"  # tiny_sequential's last ReLU, 8x8 at 32x32


def kwargs(name: str, layer: str | None = SEQ_LAYER) -> dict[str, Any]:
    """``layer`` for layer techniques, small sample counts for the sampling techniques."""
    tech = registry.get(name)
    out: dict[str, Any] = {k: v for k, v in FAST.get(name, {}).items() if k in tech.params}
    if tech.layer in ("one", "many"):
        out["layer"] = layer
    return out


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "hooks": hook_count(model),
        "training": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    for key in ("hooks", "training", "inplace", "requires_grad"):
        assert after[key] == before[key], key
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    assert all(p.grad is None for p in model.parameters()), "parameter gradients were computed"


@pytest.fixture(scope="module")
def train_model() -> nn.Sequential:
    """tiny_sequential in *training* mode with its first conv frozen: both must survive calls."""
    torch.manual_seed(2)
    model = tiny_sequential().train()
    model[0].requires_grad_(False)
    return model


# -- the model comes back as it came ---------------------------------------------------------------
@pytest.mark.parametrize("name", CNN_TECHS)
def test_model_unchanged_and_output_contract(train_model: nn.Module, tiny_x: Tensor, name: str) -> None:
    before = snapshot(train_model)
    out = galleryvis.attribute(train_model, tiny_x[:2], name, [1, 2], **kwargs(name))
    assert_unchanged(train_model, before)
    channels = 3 if registry.get(name).output == "input" else 1
    assert out.shape == (2, channels, 32, 32) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all() and not out.requires_grad


class Boom(RuntimeError):
    pass


def _raise_forward(_m: nn.Module, _i: object, _o: Tensor) -> None:
    raise Boom("forward")


def _raise_backward(_m: nn.Module, _i: object, out: Tensor) -> None:
    if out.requires_grad:
        out.register_hook(lambda g: (_ for _ in ()).throw(Boom("backward")))


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.parametrize("name", CNN_TECHS)
def test_model_unchanged_after_exception(train_model: nn.Module, tiny_x: Tensor, name: str, where: str) -> None:
    """A module after the CAM layer raises in the forward (or in the backward) of every pass."""
    before = snapshot(train_model)
    handle = train_model[9].register_forward_hook(_raise_forward if where == "forward" else _raise_backward)
    try:
        with contextlib.suppress(Boom) if where == "backward" else pytest.raises(Boom):
            galleryvis.attribute(train_model, tiny_x[:2], name, 1, **kwargs(name))
    finally:
        handle.remove()
    assert_unchanged(train_model, before)


def test_model_unchanged_after_exception_in_probe(train_model: nn.Module, tiny_x: Tensor) -> None:
    before = snapshot(train_model)
    handle = train_model[9].register_forward_hook(_raise_forward)
    try:
        with pytest.raises(Boom):
            galleryvis.attribute(train_model, tiny_x[:1], "gradcam", 1)  # default layer: probe
        with pytest.raises(Boom):
            galleryvis.attribute(train_model, tiny_x[:1], "vanilla", None)  # top-1 target
    finally:
        handle.remove()
    assert_unchanged(train_model, before)


# -- in-place and reused activations -----------------------------------------------------------------
@pytest.mark.parametrize("name, layers", [(n, ("conv2", "conv2")) for n in MINE]
                         + [(n, ("relu", "relus.2")) for n in LAYER_TECHS])
def test_inplace_and_reused_relu(tiny_shared: tuple[nn.Module, nn.Module], tiny_x: Tensor,
                                 name: str, layers: tuple[str, str]) -> None:
    """One in-place ReLU called three times gives the maps of three separate ReLUs (the layer
    'relu' means its last call); the model keeps its in-place flag and gains no hooks."""
    shared, separate = tiny_shared
    before = snapshot(shared)
    a = galleryvis.attribute(shared, tiny_x, name, [0, 1, 2, 3], **kwargs(name, layers[0]))
    b = galleryvis.attribute(separate, tiny_x, name, [0, 1, 2, 3], **kwargs(name, layers[1]))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
    assert a.abs().max() > 0
    assert_unchanged(shared, before)
    assert shared.relu.inplace


def test_reused_relu_gradients_match_autograd_and_captum(tiny_shared: tuple[nn.Module, nn.Module],
                                                          tiny_x: Tensor) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    shared, separate = tiny_shared
    x = tiny_x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(shared(x)[:, 4].sum(), x)
    torch.testing.assert_close(galleryvis.attribute(shared, tiny_x, "vanilla", 4), ref)
    guided = captum_attr.GuidedBackprop(separate).attribute(tiny_x.clone(), target=4)
    torch.testing.assert_close(galleryvis.attribute(shared, tiny_x, "guided_backprop", 4), guided)
    for m in (shared, separate):
        m.zero_grad(set_to_none=True)


# -- targets and batching ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CNN_TECHS)
def test_batch_equals_single_calls(tiny_seq: nn.Module, tiny_x: Tensor, name: str) -> None:
    targets = [0, 3, 5, 7]
    kw = kwargs(name)
    batch = galleryvis.attribute(tiny_seq, tiny_x, name, targets, batch_size=3, **kw)  # 2 chunks
    singles = torch.cat([galleryvis.attribute(tiny_seq, tiny_x[i:i + 1], name, t, **kw)
                         for i, t in enumerate(targets)])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-5 * float(singles.abs().max()))


def _bn_net() -> nn.Sequential:
    """tiny_sequential with an eval-mode BatchNorm after every convolution (non-trivial stats),
    so a call of 8 or more images folds them; cam layer ``"10"``."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("name", CNN_TECHS)
def test_a_batch_of_ten_equals_ten_single_calls_for_every_technique(name: str) -> None:
    """The model state of a call (batch norm folded or not) is decided before its first pass,
    so a result does not depend on how many images came with it: 10 images (folded, 3 chunks)
    give the maps of 10 one-image calls (unfolded for the single-pass techniques)."""
    net = _bn_net()
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = list(range(10))
    kw = kwargs(name, "10")
    batch = galleryvis.attribute(net, x, name, targets, batch_size=4, **kw)
    singles = torch.cat([galleryvis.attribute(net, x[i:i + 1], name, t, batch_size=4, **kw)
                         for i, t in enumerate(targets)])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-5 * float(singles.abs().max()))


def test_black_baselines_and_pixel_bounds_follow_the_models_own_normalization(tiny_seq: nn.Module,
                                                                            tiny_x: Tensor) -> None:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # not ImageNet's
    black = torch.full((1, 3, 1, 1), (0 - 0.5) / 0.25)
    ig = galleryvis.attribute(tiny_seq, tiny_x, "integrated_gradients", 3, steps=4, baseline="black",
                              mean=mean, std=std)
    given = galleryvis.attribute(tiny_seq, tiny_x, "integrated_gradients", 3, steps=4, baseline=black)
    torch.testing.assert_close(ig, given)
    imagenet = galleryvis.attribute(tiny_seq, tiny_x, "integrated_gradients", 3, steps=4, baseline="black")
    assert not torch.allclose(imagenet, given)
    # LRP's z^B box rule at the first layer: bounds black .. white in the model's normalization
    ours = galleryvis.attribute(tiny_seq, tiny_x, "lrp", 3, mean=mean, std=std)
    assert not torch.allclose(ours, galleryvis.attribute(tiny_seq, tiny_x, "lrp", 3))
    ctx = Context(tiny_seq, tiny_x, torch.zeros(4, dtype=torch.long), mean=mean, std=std)
    torch.testing.assert_close(ctx.pixel_value(1.0), torch.full((1, 3, 1, 1), 2.0))


@pytest.mark.parametrize("target", [[1, 2, 3], [1, 2, 3, 4, 5], torch.tensor([1, 2, 3]), []])
def test_target_of_wrong_length_raises(tiny_seq: nn.Module, tiny_x: Tensor, target: Any) -> None:
    with pytest.raises(ValueError, match="4 images"):
        galleryvis.attribute(tiny_seq, tiny_x, "vanilla", target)
    with pytest.raises(ValueError, match="4 images"):
        galleryvis.attribute_many(tiny_seq, tiny_x, ["vanilla", "gradcam"], target, SEQ_LAYER)


def test_target_forms(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    ref = galleryvis.attribute(tiny_seq, tiny_x, "vanilla", [3, 3, 3, 3])
    for target in (3, torch.tensor(3), torch.tensor([3, 3, 3, 3]), (3, 3, 3, 3)):
        torch.testing.assert_close(galleryvis.attribute(tiny_seq, tiny_x, "vanilla", target), ref)
    top1 = tiny_seq(tiny_x).argmax(1).tolist()
    torch.testing.assert_close(galleryvis.attribute(tiny_seq, tiny_x, "vanilla", None),
                               galleryvis.attribute(tiny_seq, tiny_x, "vanilla", top1))
    with pytest.raises(ValueError, match="out of range"):
        galleryvis.attribute(tiny_seq, tiny_x, "vanilla", 10)
    with pytest.raises(TypeError):
        galleryvis.attribute(tiny_seq, tiny_x, "vanilla", [1.5, 2, 3, 4])
    with pytest.raises(TypeError):
        galleryvis.attribute(tiny_seq, tiny_x, "vanilla", "3")


# -- errors ------------------------------------------------------------------------------------------
def test_unknown_layer_suggests(vgg16: nn.Module) -> None:
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(LayerError, match=r"did you mean: features\.29"):
        galleryvis.attribute(vgg16, x, "gradcam", 0, layer="feature.29")
    with pytest.raises(LayerError, match="unknown layer"):
        galleryvis.attribute_many(vgg16, x, ["vanilla", "layercam"], 0, {"layercam": ["features.29", "nope"]})
    assert hook_count(vgg16) == 0


def test_unknown_technique_and_parameters(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    x = tiny_x[:1]
    with pytest.raises(TechniqueError, match="did you mean: gradcam"):
        galleryvis.attribute(tiny_seq, x, "gradcamm", 0)
    with pytest.raises(TechniqueError, match="samples"):
        galleryvis.attribute(tiny_seq, x, "smoothgrad", 0, sample=3)
    with pytest.raises(TechniqueError, match="must be int"):
        galleryvis.attribute(tiny_seq, x, "smoothgrad", 0, samples="3")
    with pytest.raises(TechniqueError, match="must be one of"):
        galleryvis.attribute(tiny_seq, x, "smoothgrad", 0, variant="median")
    with pytest.raises(TechniqueError, match="not requested"):
        galleryvis.attribute_many(tiny_seq, x, ["vanilla"], 0, params={"gradcam": {}})
    with pytest.raises(LayerError, match="one layer"):
        galleryvis.attribute(tiny_seq, x, "gradcam", 0, layer=["4", "7"])
    with pytest.raises(ValueError, match="N, C, H, W"):
        galleryvis.attribute(tiny_seq, x[0], "vanilla", 0)


@pytest.mark.parametrize("name", LAYER_TECHS)
@pytest.mark.parametrize("layer", ["9", "11"])  # Flatten (N, 64), Linear (N, 10)
def test_cam_on_non_4d_layer_raises_layer_error(tiny_seq: nn.Module, tiny_x: Tensor, name: str, layer: str) -> None:
    with pytest.raises(LayerError, match="4-D"):
        galleryvis.attribute(tiny_seq, tiny_x[:1], name, 0, **kwargs(name, layer))
    assert hook_count(tiny_seq) == 0


# -- shared passes and where the backward stops ----------------------------------------------------------
class Counting(nn.Module):
    """Counts forward calls; records batch sizes, inference mode and parameter grad flags."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.shape[0], torch.is_inference_mode_enabled(),
                           any(p.requires_grad for p in self.parameters())))
        return self.inner(x)


SHARING = [
    (["vanilla", "grad_x_image", "gradcam", "layercam"], 1),
    (["vanilla", "grad_x_image", "gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "eigencam"], 1),
    (["eigencam", "gradcam"], 1),  # forward-only techniques reuse the backward's forward
    (["guided_backprop", "guided_gradcam"], 2),  # the guided pass + the plain one for Grad-CAM
    (["eigencam"], 1),
]


@pytest.mark.parametrize("techs, per_chunk", SHARING)
def test_attribute_many_shares_passes(tiny_seq: nn.Module, tiny_x: Tensor, techs: list[str], per_chunk: int) -> None:
    model = Counting(tiny_seq)
    x = torch.cat([tiny_x, tiny_x[:1]])  # 5 images, batch_size 2: 3 chunks
    maps = galleryvis.attribute_many(model, x, techs, 6, "inner." + SEQ_LAYER, batch_size=2)
    assert len(model.calls) == 3 * per_chunk
    assert not any(grad_flag for _, _, grad_flag in model.calls)
    for name in techs:
        single = galleryvis.attribute(tiny_seq, x, name, 6, **kwargs(name))
        torch.testing.assert_close(maps[name], single)


@pytest.mark.parametrize("techs, per_chunk", SHARING)
def test_a_top1_target_costs_no_pass_of_its_own(tiny_seq: nn.Module, tiny_x: Tensor, techs: list[str],
                                                per_chunk: int) -> None:
    """target=None: each chunk's first shared pass decides the top-1 classes; the maps are those
    of the classes given."""
    model = Counting(tiny_seq)
    x = torch.cat([tiny_x, tiny_x[:1]])
    maps = galleryvis.attribute_many(model, x, techs, None, "inner." + SEQ_LAYER, batch_size=2)
    assert len(model.calls) == 3 * per_chunk
    with torch.no_grad():
        top1 = tiny_seq(x).argmax(1).tolist()
    given = galleryvis.attribute_many(tiny_seq, x, techs, top1, SEQ_LAYER, batch_size=2)
    for name in techs:
        torch.testing.assert_close(maps[name], given[name])


def test_a_context_decides_its_top1_target_on_its_first_pass(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    """A Context given Class() decides it from its first backward, or, read before any pass, from
    the shared forward it then keeps; neither costs a forward of its own."""
    model = Counting(tiny_seq)
    with torch.no_grad():
        top1 = tiny_seq(tiny_x).argmax(1).tolist()
    ctx = Context(model, tiny_x, galleryvis.targets.Class())
    assert not ctx.decided
    ctx.backward()
    assert ctx.decided and list(ctx.target.index) == top1 and len(model.calls) == 1
    read = Context(model, tiny_x, galleryvis.targets.Class())
    assert list(read.target.index) == top1 and len(model.calls) == 2
    read.forward()
    assert len(model.calls) == 2
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        read.nothing  # noqa: B018


def test_backward_stops_at_the_cam_layer(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    reached: list[str] = []

    def spy(_m: nn.Module, _i: object, out: Tensor) -> None:
        if out.requires_grad:
            out.register_hook(lambda g: reached.append("conv0"))

    handle = tiny_seq[0].register_forward_hook(spy)
    try:
        galleryvis.attribute_many(tiny_seq, tiny_x, ["gradcam", "layercam", "hirescam"], 1, SEQ_LAYER)
        assert reached == []
        galleryvis.attribute_many(tiny_seq, tiny_x, ["gradcam", "vanilla"], 1, SEQ_LAYER)
        assert reached == ["conv0"]
    finally:
        handle.remove()


def test_scorecam_chunks_masks_under_inference_mode(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    from galleryvis.engine.chunking import Chunking

    model = Counting(tiny_seq)
    # 16 channels; the masked forwards run forward-only chunks of 5
    galleryvis.attribute(model, tiny_x[:2], "scorecam", 1, layer="inner.4", batch_size=Chunking(8, 5))
    masked = model.calls[1:]
    with torch.no_grad():
        acts = tiny_seq[:5](tiny_x[:2])
    live = int((acts.amax((2, 3)) > acts.amin((2, 3))).sum())
    assert sum(n for n, _, _ in masked) == live
    assert all(n <= 5 and inference and not grads for n, inference, grads in masked)


# -- default layer -------------------------------------------------------------------------------------
def test_default_layer_by_probe(vgg16: nn.Module, resnet18: nn.Module, lite0: nn.Module,
                                tiny_seq: nn.Module, tiny_shared: tuple[nn.Module, nn.Module]) -> None:
    x = torch.zeros(1, 3, 64, 64)
    assert default_layer(vgg16, x) == "features.29"
    assert default_layer(resnet18, x) == "layer4"
    assert default_layer(lite0, x) == "_head_relu"
    assert default_layer(tiny_seq, x) == SEQ_LAYER
    assert default_layer(tiny_shared[0], x) == "relu"
    assert default_layer(tiny_shared[1], x) == "relus.2"
    for m in (vgg16, resnet18, lite0):
        assert hook_count(m) == 0 and not m.training


def test_default_layer_used_when_none(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    torch.testing.assert_close(galleryvis.attribute(tiny_seq, tiny_x, "gradcam", 2),
                               galleryvis.attribute(tiny_seq, tiny_x, "gradcam", 2, layer=SEQ_LAYER))


def test_techniques_listing() -> None:
    listed = {t["name"]: t for t in galleryvis.techniques()}
    for name in MINE:
        entry = listed[name]
        assert entry["output"] in ("input", "cam") and entry["paper"].split()[0] and "http" in entry["paper"]
        assert entry["params"] == dict(registry.get(name).params)
    assert listed["smoothgrad"]["params"]["sigma"] == 0.15


def test_grad_x_image_bases(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    x = tiny_x[:2]
    vanilla = galleryvis.attribute(tiny_seq, x, "vanilla", 2)
    torch.testing.assert_close(galleryvis.attribute(tiny_seq, x, "grad_x_image", 2), vanilla * x)
    # integrated gradients already multiplies by the input: not a second time
    torch.testing.assert_close(galleryvis.attribute(tiny_seq, x, "grad_x_image", 2, base="integrated_gradients"),
                               galleryvis.attribute(tiny_seq, x, "integrated_gradients", 2))


@pytest.mark.parametrize("name", MINE + PERTURBATION)
def test_technique_docs(name: str) -> None:
    doc = (Path(__file__).resolve().parent.parent / "templates" / "techniques" / f"{name}.md").read_text()
    for section in ("# Parameters", "# Departures from the seed", "http"):
        assert section in doc, section
    for param in registry.get(name).params:
        assert f"`{param}`" in doc, param


def test_synthesis_techniques_are_refused_by_attribute(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    synthesis = registry.names("synthesis")
    assert synthesis, "the synthesis techniques are registered"
    with pytest.raises(registry.TechniqueError, match="galleryvis.synthesize"):
        galleryvis.attribute(tiny_seq, tiny_x, synthesis[0], 2)


@pytest.mark.parametrize("baseline", ["zero", "black", "blur"])
def test_integrated_gradients_is_complete_for_each_baseline(tiny_seq: nn.Module, tiny_x: Tensor,
                                                            baseline: str) -> None:
    # Completeness (Sundararajan et al.): the map sums to f(x) - f(baseline) for the target.
    from galleryvis.engine import gaussian_blur

    sigma = tiny_x.shape[-1] / 20
    ref = {"zero": torch.zeros_like(tiny_x), "blur": gaussian_blur(tiny_x, 2 * max(1, int(3 * sigma)) + 1, sigma),
           "black": ((0 - torch.tensor(galleryvis.IMAGENET_MEAN)) / torch.tensor(galleryvis.IMAGENET_STD))
           .view(1, 3, 1, 1).expand_as(tiny_x)}[baseline]
    maps = galleryvis.attribute(tiny_seq, tiny_x, "integrated_gradients", 3, steps=64, baseline=baseline)
    with torch.no_grad():
        gap = tiny_seq(tiny_x)[:, 3] - tiny_seq(ref)[:, 3]
    # the gaps are a few 1e-3 here and differ between baselines by as much; 64 Gauss-Legendre
    # steps integrate the piecewise-linear net to within about 2e-4
    torch.testing.assert_close(maps.sum((1, 2, 3)), gap, rtol=0.05, atol=5e-4)


def test_replaced_output_changes_a_layer_while_inside_and_never_after(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    from galleryvis.hooks import replaced_output

    before = tiny_seq(tiny_x)
    with replaced_output(tiny_seq, "7", torch.zeros_like):
        zeroed = tiny_seq(tiny_x)
    bias = tiny_seq[-1].bias
    torch.testing.assert_close(zeroed, bias.expand_as(zeroed))  # nothing but the last layer's bias is left
    with pytest.raises(RuntimeError, match="inside"), replaced_output(tiny_seq, "7", torch.zeros_like):
        raise RuntimeError("raised inside")
    torch.testing.assert_close(tiny_seq(tiny_x), before)
    assert hook_count(tiny_seq) == 0


def test_a_technique_that_opts_out_of_folding_keeps_the_whole_call_unfolded(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from galleryvis.engine.changes.canonizers import Folding

    built: list[int] = []
    build = Folding.build
    monkeypatch.setattr(Folding, "build", classmethod(lambda cls, m, pairs=(), *a: built.append(len(pairs)) or build(m, pairs, *a)))
    net, x = _bn_net(), torch.randn(10, 3, 32, 32)
    galleryvis.attribute_many(net, x, ["vanilla", "gradcam"], 1, "10")  # 10 images: folded
    assert built and max(built) == 3
    built.clear()
    gradcam = registry.get("gradcam")
    monkeypatch.setitem(registry._REGISTRY, "gradcam", dataclasses.replace(gradcam, fold=False))
    galleryvis.attribute_many(net, x, ["vanilla", "gradcam"], 1, "10")
    assert built == []


# -- transformers: token and channels-last layers -------------------------------------------------
@pytest.mark.parametrize("name, layer", [
    ("vit", "encoder.layers.encoder_layer_1.ln_1"),  # the last block's first LayerNorm
    ("timm_vit", "blocks.1.norm1"),
    ("deit", "blocks.1.norm1"),
    ("swin", "features.3.1"),  # the last stage's last block
    ("timm_swin", "layers.1.blocks.1"),
    ("convnext", "features.3"),  # the last stage
])
def test_default_layer_on_transformers(transformers: dict[str, nn.Module], name: str, layer: str) -> None:
    if name not in transformers:
        pytest.skip("timm is not installed")
    x = torch.zeros(1, 3, 48, 64) if name == "timm_vit" else torch.zeros(1, 3, 64, 64)
    assert default_layer(transformers[name], x) == layer


def _grids(model: nn.Module, x: Tensor) -> dict[str, str]:
    return {n: str(g) for n, g in grids_of(model, probe(model, x), x.shape[0]).items()}


def test_grids_of_transformer_layers(transformers: dict[str, nn.Module]) -> None:
    vit = _grids(transformers["vit"], torch.zeros(1, 3, 64, 64))
    assert vit["conv_proj"] == "8x8"
    assert vit["encoder.layers.encoder_layer_1.ln_1"] == "8x8 (tokens, 1 dropped)"
    assert "does not lie on the image" in vit["heads.head"]
    swin = _grids(transformers["swin"], torch.zeros(1, 3, 64, 64))
    assert swin["features.0.0"] == "16x16" and swin["features.0.2"] == "16x16 (channels last)"
    assert swin["features.3.1.norm1"] == "8x8 (channels last)" and swin["permute"] == "8x8"
    assert swin["features.2.norm"] == "8x8 (channels last)"  # patch merging: 4x the channels
    if "timm_vit" in transformers:
        timm_vit = _grids(transformers["timm_vit"], torch.zeros(1, 3, 48, 64))
        assert timm_vit["blocks.1.norm1"] == "6x8 (tokens, 5 dropped)"  # class + 4 register tokens
        assert timm_vit["patch_embed"] == "6x8 (tokens)"  # before the prefix is prepended
        timm_swin = _grids(transformers["timm_swin"], torch.zeros(2, 3, 64, 64))
        assert timm_swin["layers.1.blocks.1.norm2"] == "8x8 (tokens)"
        assert "not the batch" in timm_swin["layers.1.blocks.1.attn"]  # (2 x 4 windows, 16, 48)


@pytest.mark.parametrize("grid", [Grid("channels_first", (2, 2), (3, 2, 2)), Grid("channels_last", (2, 2), (2, 2, 3)),
                                  Grid("tokens", (2, 2), (5, 3), 1)], ids=lambda g: g.layout)
def test_per_channel_values_scale_each_channel_in_the_layers_own_layout(grid: Grid) -> None:
    """What Ablation-CAM zeroes a channel with: (N, C) values broadcast over the raw output,
    every position and token (the prefix tokens too)."""
    keep = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    out = torch.randn(2, *grid.shape, generator=torch.Generator().manual_seed(0))
    scaled = out * grid.per_channel(keep)
    torch.testing.assert_close(grid.nchw(scaled), grid.nchw(out) * keep[:, :, None, None])
    if grid.layout == "tokens":
        torch.testing.assert_close(scaled[:, :1], out[:, :1] * keep[:, None, :])


@pytest.mark.parametrize("name, layer", [("vit", "encoder.layers.encoder_layer_1.ln_1"), ("swin", "features.3.1")])
def test_ablationcam_on_token_and_channels_last_layers(transformers: dict[str, nn.Module], name: str,
                                                       layer: str) -> None:
    model = transformers[name]
    before = snapshot(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    out = galleryvis.attribute(model, x, "ablationcam", [1, 2], layer=layer)
    assert_unchanged(model, before)
    assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all() and out.amax((1, 2, 3)).gt(0).all()


def test_channels_last_is_read_as_channels_last(transformers: dict[str, nn.Module]) -> None:
    """Swin's final LayerNorm (N, H, W, C) and the permute after it (N, C, H, W) hold the same
    values: every CAM is the same at both (the issue's silent misreading gave r = -0.06)."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    techs = ["gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "eigencam"]
    at = {layer: galleryvis.attribute_many(transformers["swin"], x, techs, 3, layer) for layer in ("norm", "permute")}
    for t in techs:
        torch.testing.assert_close(at["norm"][t], at["permute"][t], msg=t)


class Ambiguous(nn.Module):
    """A patch embedding to an 8x8 grid with 8 channels, then channels last: the LayerNorm and
    the ReLU after it output (N, 8, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.norm = nn.LayerNorm(8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.norm(self.embed(x).permute(0, 2, 3, 1))).mean((1, 2)))


@pytest.mark.parametrize("name, layer, message", [
    ("vit", "heads.head", r"'heads.head' outputs shape \(1, 10\), which does not lie on the image"),
    ("vit", "encoder.layers.encoder_layer_1.self_attention", "returns tuple, not a tensor"),
    ("timm_swin", "layers.1.blocks.1.attn", r"outputs shape \(4, 16, 48\) for 1 images"),
])
def test_unmappable_layers_raise_one_line(transformers: dict[str, nn.Module], name: str, layer: str,
                                          message: str) -> None:
    if name not in transformers:
        pytest.skip("timm is not installed")
    with pytest.raises(LayerError, match=message) as info:
        galleryvis.attribute(transformers[name], torch.zeros(1, 3, 64, 64), "gradcam", 0, layer)
    assert "\n" not in str(info.value)
    assert hook_count(transformers[name]) == 0


def test_ambiguous_layout_raises_unless_the_module_fixes_it() -> None:
    torch.manual_seed(0)
    model, x = Ambiguous().eval(), torch.randn(1, 3, 64, 64)
    with pytest.raises(LayerError, match=r"'act' outputs shape \(1, 8, 8, 8\): both"):
        galleryvis.attribute(model, x, "gradcam", 0, "act")
    grids = _grids(model, x)
    assert grids["embed"] == "8x8" and grids["norm"] == "8x8 (channels last)"  # a convolution; a LayerNorm


# -- transformers: attention capture, and the techniques that cannot apply ------------------------------
@pytest.mark.parametrize("name", ["vit", "timm_vit", "deit"])
def test_attention_capture_leaves_the_model_as_it_was(transformers: dict[str, nn.Module], name: str) -> None:
    """Inside: the same logits, one (N, heads, T, T) probability tensor per block, rows summing
    to 1; timm's fused attention (switched on here) is back on after, also after a raise."""
    from galleryvis.engine.changes.attention import attentions

    if name not in transformers:
        pytest.skip("timm is not installed")
    model = transformers[name]
    x = torch.randn(2, 3, 48, 64) if name == "timm_vit" else torch.randn(2, 3, 64, 64)
    fused = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for m in fused:
        m.fused_attn = True
    with torch.no_grad():
        plain = model(x)
        with attentions(model) as probs:
            torch.testing.assert_close(model(x), plain)
        assert len(probs) == 2 and all(p.shape[:2] == (2, 2) and p.shape[2] == p.shape[3] for p in probs)
        torch.testing.assert_close(probs[0].sum(-1), torch.ones(probs[0].shape[:3]))
        with pytest.raises(RuntimeError), attentions(model):
            raise RuntimeError("inside")
    assert hook_count(model) == 0 and all(m.fused_attn for m in fused)


@pytest.mark.parametrize("name, technique, message", [
    ("convnext", "attention_rollout", "no self-attention galleryvis can read"),
    ("timm_swin", "attention_gradient", "not global self-attention over one token sequence"),
    ("vit", "guided_backprop", "guides ReLU-family activations .* and this model has none"),
    ("vit", "deconvnet", "deconvnet guides ReLU-family"),
    ("timm_swin", "guided_gradcam", "this model has none"),
])
def test_techniques_that_cannot_apply_say_why(transformers: dict[str, nn.Module], name: str, technique: str,
                                              message: str) -> None:
    if name not in transformers:
        pytest.skip("timm is not installed")
    model = transformers[name]
    with pytest.raises(LayerError, match=message) as info:
        galleryvis.attribute(model, torch.randn(1, 3, 64, 64), technique, 0)
    assert "\n" not in str(info.value) and hook_count(model) == 0


@pytest.mark.parametrize("model_name", ["vit", "timm_vit"])
@pytest.mark.parametrize("name", ATTENTION)
def test_attention_techniques_keep_the_contracts(transformers: dict[str, nn.Module], model_name: str,
                                                 name: str) -> None:
    """The registry-wide contracts on a ViT in training mode (timm's: fused attention on): the
    model comes back unchanged, also after a raise in the forward or the backward; (N, 1, H, W)
    float32 CPU maps; a batch in chunks gives the single calls' maps."""
    if model_name not in transformers:
        pytest.skip("timm is not installed")
    model = copy.deepcopy(transformers[model_name]).train()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    x = torch.randn(3, 3, *((48, 64) if model_name == "timm_vit" else (64, 64)),
                    generator=torch.Generator().manual_seed(0))
    before = snapshot(model)
    fused = [getattr(m, "fused_attn", None) for m in model.modules()]
    out = galleryvis.attribute(model, x, name, [1, 2, 3], batch_size=2)
    assert_unchanged(model, before)
    assert fused == [getattr(m, "fused_attn", None) for m in model.modules()]
    assert out.shape == (3, 1, *x.shape[-2:]) and out.dtype == torch.float32 and torch.isfinite(out).all()
    singles = torch.cat([galleryvis.attribute(model, x[i:i + 1], name, t) for i, t in enumerate([1, 2, 3])])
    torch.testing.assert_close(out, singles, rtol=1e-4, atol=1e-5 * float(singles.abs().max()))
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10][0]
    for hook in (_raise_forward, _raise_backward):
        handle = head.register_forward_hook(hook)
        try:
            with contextlib.suppress(Boom):
                galleryvis.attribute(model, x[:1], name, 1)
        finally:
            handle.remove()
        assert_unchanged(model, before)


# --- progress within a long technique ----------------------------------------------------------
LONG = ["occlusion", "rise", "ablationcam", "scorecam", "kernel_shap", "lime", "gradient_shap"]


@pytest.mark.parametrize("name", LONG)
def test_a_long_technique_says_how_far_it_is(name: str, tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    from galleryvis.engine import Call, attribute_calls

    said: list[tuple[str, int, int]] = []
    params = kwargs(name)
    layer = params.pop("layer", None)
    attribute_calls(tiny_seq, tiny_x[:2], {"row": Call(name, layer, params)}, None, batch_size=2,
                    within=lambda key, done, total: said.append((key, done, total)))
    assert len(said) >= 2 and {k for k, _, _ in said} == {"row"}
    totals = {t for _, _, t in said}
    done = [d for _, d, _ in said]
    assert len(totals) == 1 and done[0] == 0 and done == sorted(done) and done[-1] < totals.pop()


def test_progress_within_a_step_is_rate_limited_without_a_terminal(capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from galleryvis.build import progress

    bar = progress.Progress(3, quiet=False)
    bar._said = 100.0  # the last line's time
    clock = iter([101.0, 111.0, 111.5, 112.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    for done in (1, 2, 3):
        bar.within("lite0: rise", done, 4)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["[0/3] lite0: rise 50%"]  # 1 s after the last line: quiet; 11 s: a line; 0.5 s: quiet


# --- Ablation-CAM runs the layers before its layer once per chunk ------------------------------
class BatchBound(nn.Module):
    """Reshapes by the batch size its input came with: a batch widened inside cannot pass."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).reshape(x.shape[0], -1))


@pytest.mark.parametrize("model_name, layer, size", [
    ("tiny_seq", "4", 32), ("resnet18", "layer3.0.bn1", 32),
    ("swin", "features.3.1", 64), ("vit", "encoder.layers.encoder_layer_1.ln_1", 64),  # channels last, tokens
])
def test_ablationcam_widened_at_its_layer_equals_whole_model_copies(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, model_name: str, layer: str,
        size: int) -> None:
    from galleryvis.attribution import perturbation

    if model_name in ("swin", "vit"):
        model = request.getfixturevalue("transformers")[model_name]
    else:
        model = request.getfixturevalue(model_name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    said, widens = [], perturbation._widens
    monkeypatch.setattr(perturbation, "_widens", lambda *a: said.append(widens(*a)) or said[-1])
    widened = galleryvis.attribute(model, x, "ablationcam", [1, 2], layer=layer)
    assert said == [True]  # the residual branch from before the layer broadcasts over the chunk
    monkeypatch.setattr(perturbation, "_widens", lambda *_: False)
    copies = galleryvis.attribute(model, x, "ablationcam", [1, 2], layer=layer)
    torch.testing.assert_close(widened, copies, rtol=1e-4, atol=1e-5 * float(copies.abs().max()))


def test_ablationcam_runs_whole_copies_where_the_model_refuses_a_wider_batch() -> None:
    from galleryvis.attribution import perturbation

    model = BatchBound().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ctx = Context(model, x, torch.tensor([0, 1]), ("body.1",))
    assert not perturbation._widens(ctx, "body.1", ctx.grid("body.1").per_channel, 4)
    before = snapshot(model)
    out = galleryvis.attribute(model, x, "ablationcam", [0, 1], layer="body.1")
    assert_unchanged(model, before)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
