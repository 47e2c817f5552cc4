"""Batch-norm folding: same logits and maps, model returned as it came, unsafe folds refused."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import galleryvis
from galleryvis.engine.changes.canonizers import Folding, watch
from galleryvis.engine.fold import Prepared, folded, prepare, usable
from galleryvis.hooks import hook_count


def _with_stats(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine terms, so a wrong fold shows."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return _with_stats(torchvision.models.resnet18(weights=None))


def _two_passes(model: nn.Module, x: Tensor, keep: tuple[str, ...] = ()) -> tuple[Tensor, Tensor, Prepared]:
    """The same batch twice: through the model as it is, then through its prepared weights."""
    with torch.no_grad(), folded(model, x[:1], keep) as runner:
        return model(x), runner(x), runner


def test_every_conv_batchnorm_pair_of_a_resnet_is_found_and_folded(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    first, second, runner = _two_passes(resnet, x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    assert runner.folded == n_bn == 20
    torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-4)


def test_the_model_comes_back_unchanged(resnet: nn.Module) -> None:
    params = {n: (p, p.clone()) for n, p in resnet.named_parameters()}
    _two_passes(resnet, torch.randn(1, 3, 64, 64))
    folding = Folding.build(resnet, [("conv1", "bn1")])
    with pytest.raises(RuntimeError, match="inside"), folding.active():
        assert resnet.conv1.weight is not params["conv1.weight"][0]
        raise RuntimeError("raised inside")
    for name, p in resnet.named_parameters():
        assert p is params[name][0] and torch.equal(p, params[name][1]), name
    assert "forward" not in resnet.bn1.__dict__ and hook_count(resnet) == 0


def test_a_call_decides_folding_before_its_first_pass(resnet: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    build = Folding.build
    monkeypatch.setattr(Folding, "build", classmethod(lambda cls, m, pairs=(), *a: built.append(len(pairs)) or build(m, pairs, *a)))
    seen: list[int] = []  # per forward: how many convolutions ran with their own weights
    handle = resnet.register_forward_pre_hook(
        lambda m, _i: seen.append(sum(isinstance(c._parameters.get("weight"), nn.Parameter) for c in m.modules()
                                      if isinstance(c, nn.Conv2d))))
    try:
        x = torch.randn(9, 3, 32, 32)
        galleryvis.attribute(resnet, x[:1], "vanilla", 1)  # one image, one shared pass: never folds
        assert built == [] and set(seen) == {20}
        seen.clear()
        galleryvis.attribute(resnet, x, "vanilla", 1, batch_size=3)  # 9 images: folds from the first pass
    finally:
        handle.remove()
    assert built == [20]
    assert seen[:2] == [20, 0]  # the probe, then the folded check; every later pass folded
    assert set(seen[2:]) == {0} and len(seen) == 2 + 3  # target given: the 3 chunks' passes


def test_an_eager_runner_folds_from_the_first_pass_so_inputs_score_alike_in_any_pass(resnet: nn.Module) -> None:
    x, other = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad(), folded(resnet, other[:1]) as runner:
        runner(other)
        assert runner.folded == 20
        second = runner(x)
        first = Prepared(resnet, prepare(resnet, x[:1]))(x)
    assert torch.equal(first, second)


def test_prepared_convolution_weights_follow_a_channels_last_input(resnet: nn.Module) -> None:
    seen: list[bool] = []
    handle = resnet.layer1[0].conv2.register_forward_pre_hook(
        lambda m, _inp: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
    try:
        with torch.no_grad():
            for x in (torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last), torch.randn(2, 3, 64, 64)):
                with folded(resnet, x[:1]) as runner:
                    runner(x)
            x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
            with folded(resnet, x[:1], enabled=False) as runner:
                runner(x)
    finally:
        handle.remove()
    # per call: the probe (weights as they are), its folded check, the pass; a call that does
    # not fold keeps the weights as they are
    assert seen == [False, True, True] + [False, False, False] + [False]
    assert isinstance(resnet.layer1[0].conv2.weight, nn.Parameter) and resnet.layer1[0].conv2.weight.is_contiguous()


def test_a_convolution_with_a_hook_of_its_own_is_not_folded(resnet: nn.Module) -> None:
    seen: list[Tensor] = []
    handle = resnet.layer2[0].conv1.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        first, second, runner = _two_passes(resnet, torch.randn(1, 3, 64, 64))
    finally:
        handle.remove()
    assert runner.folded == 19  # 20 BatchNorms but the hooked conv's
    torch.testing.assert_close(seen[-1], seen[0])  # the hook saw the convolution's own output
    torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-4)


def test_weights_prepared_under_inference_mode_serve_later_gradient_passes(resnet: nn.Module) -> None:
    # Weights prepared while inference mode is on (deletion / insertion prepares inside it)
    # serve a gradient pass; and a folded call's maps are the unfolded ones.
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        folding = prepare(resnet, x[:1])
    xg = x[:2].clone().requires_grad_(True)
    with folding.active():
        resnet(xg)[:, 1].sum().backward()
    assert xg.grad is not None and len(folding.bns) == 20
    maps = galleryvis.attribute_many(resnet, x, ["scorecam", "vanilla"], 1, "layer3", batch_size=8)
    alone = galleryvis.attribute(resnet, x[8:], "vanilla", 1, batch_size=8)  # one chunk: unfolded
    for f, p in zip(maps["vanilla"][8:], alone):
        assert torch.corrcoef(torch.stack([f.flatten(), p.flatten()]))[0, 1] > 0.9999


def test_a_parametrized_convolution_weight_is_left_alone() -> None:
    from torch.nn.utils.parametrizations import weight_norm

    net = _with_stats(nn.Sequential(weight_norm(nn.Conv2d(3, 8, 3)), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1),
                                    nn.Flatten(), nn.Linear(8, 4)))
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    first, second, runner = _two_passes(net, x)
    assert runner.folded == 1  # the plain convolution's BatchNorm only
    torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-5)
    assert "weight" not in net[0]._parameters and isinstance(net[0].weight, Tensor)


class _SharedConvOutput(nn.Module):
    """The convolution's output feeds the BatchNorm and also a skip path: folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv(x)
        return self.fc((self.bn(c) + c).mean((2, 3)))


class _PaddedConv(nn.Conv2d):
    """A convolution that pads in its own forward (as EfficientNet's 'same' padding)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.weight, self.bias)


def test_a_fold_that_would_change_the_logits_is_refused() -> None:
    model = _with_stats(_SharedConvOutput())
    x = torch.randn(2, 3, 16, 16)
    with watch(model) as pairs, torch.no_grad():
        model(x)
    assert pairs == [("conv", "bn")]
    first, second, runner = _two_passes(model, x)
    assert runner.folded == 0
    torch.testing.assert_close(second, first)


def test_conv_subclasses_with_their_own_forward_fold_correctly() -> None:
    model = _with_stats(nn.Sequential(_PaddedConv(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                                      nn.LazyLinear(4)))
    x = torch.randn(2, 3, 8, 8)
    model(x)
    first, second, runner = _two_passes(model, x)
    assert runner.folded == 1
    torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-5)


def test_captured_convolutions_and_training_batchnorms_are_not_folded(resnet: nn.Module) -> None:
    with watch(resnet) as pairs, torch.no_grad():
        resnet(torch.randn(1, 3, 64, 64))
    assert ("conv1", "bn1") in pairs
    kept = usable(resnet, pairs, keep=("conv1", "layer4.1.conv2", "layer3"))
    assert ("conv1", "bn1") not in kept and ("layer4.1.conv2", "layer4.1.bn2") not in kept
    assert ("layer3.0.conv1", "layer3.0.bn1") in kept  # both inside the captured block
    resnet.bn1.train()
    try:
        with watch(resnet) as pairs, torch.no_grad():
            resnet(torch.randn(2, 3, 64, 64))
    finally:
        resnet.eval()
    assert ("conv1", "bn1") not in pairs


@pytest.mark.parametrize("technique", ["integrated_gradients", "smoothgrad", "scorecam"])
def test_multi_pass_techniques_give_the_unfolded_maps(resnet: nn.Module, technique: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3, 64, 64)
    params = {"scorecam": {"layer": "layer3"}}.get(technique, {"batch_size": 4})
    built: list[int] = []
    build = Folding.build
    monkeypatch.setattr(Folding, "build", classmethod(lambda cls, m, pairs=(), *a: built.append(len(pairs)) or build(m, pairs, *a)))
    folded = galleryvis.attribute(resnet, x, technique, [1, 2], **params)
    assert max(built) > 0  # the first build only lays the weights out; the fold follows
    monkeypatch.setattr(Folding, "build", classmethod(lambda cls, *_args: cls()))
    plain = galleryvis.attribute(resnet, x, technique, [1, 2], **params)
    for f, p in zip(folded, plain):
        assert torch.corrcoef(torch.stack([f.flatten(), p.flatten()]))[0, 1] > 0.9999
    assert hook_count(resnet) == 0
