"""Agreement with captum and pytorch-grad-cam: per-image Pearson r of the raw maps, flattened.

Models: VGG16 (64x64) and ResNet-18 (112x112), ``weights=None`` and seeded, on two photos, and the real
EfficientNet-Lite0 on two photos at 224x224; targets are each image's top-1 class.
Run with ``-s`` to see every r.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import galleryvis
from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD
from galleryvis.engine.layers import default_layer
from galleryvis.engine import gaussian_blur
from galleryvis.metrics import deletion_insertion, random_map

captum_attr = pytest.importorskip("captum.attr")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

R_MIN = 0.99
IG_STEPS = 4
#: Techniques computed in one attribute_many call per model (sharing their passes).
SHARED = ["vanilla", "grad_x_image", "guided_backprop", "deconvnet", "integrated_gradients",
          "gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "eigencam", "guided_gradcam"]
CAM_CLASSES = {"gradcam": "GradCAM", "gradcam_pp": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
               "hirescam": "HiResCAM", "layercam": "LayerCAM"}
#: model fixture, input fixture, CAM layer (the probe's default, asserted in test_engine).
MODELS = {"vgg16": ("photos64", "features.29"), "resnet18": ("photos112", "layer4"),
          "lite0": ("photos224", "_head_relu")}


def pearson(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> list[float]:
    """Pearson r per image of two (N, ...) maps, flattened."""
    a = torch.as_tensor(a).flatten(1).double()
    b = torch.as_tensor(b).flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).tolist()


def check(label: str, rs: list[float], r_min: float = R_MIN) -> None:
    print(f"\n  r {label}: {', '.join(f'{r:.5f}' for r in rs)}")
    assert all(r >= r_min for r in rs), (label, rs)  # NaN (a constant map) fails too


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Reference libraries run with frozen parameters (faster; input gradients are unchanged)
    and leave no parameter gradients or mode changes behind on the shared fixtures."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        for m, training in modes:
            m.training = training


def layer_output(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """The output of ``model.<layer>`` in a plain forward of ``x``."""
    out: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o: out.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return out[-1]


def up(m: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(m, size=size, mode=mode, **kw)


@dataclass
class Case:
    name: str
    model: nn.Module
    x: Tensor
    target: list[int]
    layer: str
    ours: dict[str, Tensor]
    memo: dict[tuple, Tensor]

    @property
    def module(self) -> nn.Module:
        return self.model.get_submodule(self.layer)

    def captum(self, cls: str, *args: object, **kw: object) -> Tensor:
        """captum's ``cls(model, *args).attribute(x, target, **kw)``, memoized per case."""
        key = (cls, *map(id, args), *sorted(kw.items()))
        if key not in self.memo:
            with frozen(self.model):
                algo = getattr(captum_attr, cls)(self.model, *args)
                self.memo[key] = algo.attribute(self.x.clone(), target=self.target, **kw).detach()
        return self.memo[key]

    def gradcam(self, cls: str, layers: list[str] | None = None) -> np.ndarray:
        mods = [self.model.get_submodule(n) for n in layers or [self.layer]]
        with frozen(self.model), getattr(pgc, cls)(model=self.model, target_layers=mods) as cam:
            targets = [ClassifierOutputTarget(t) for t in self.target]
            return cam(input_tensor=self.x.clone().requires_grad_(True), targets=targets)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest) -> Case:
    model = request.getfixturevalue(request.param)
    x = request.getfixturevalue(MODELS[request.param][0])
    layer = MODELS[request.param][1]
    with torch.no_grad():
        target = model(x).argmax(1).tolist()
    ours = galleryvis.attribute_many(model, x, SHARED, target, layer,
                                     {"integrated_gradients": {"steps": IG_STEPS}})
    return Case(request.param, model, x, target, layer, ours, {})


# -- input gradients ---------------------------------------------------------------------------
def test_vanilla(case: Case) -> None:
    check(f"vanilla/{case.name}", pearson(case.ours["vanilla"], case.captum("Saliency", abs=False)))


def test_grad_x_image(case: Case) -> None:
    check(f"grad_x_image/{case.name}", pearson(case.ours["grad_x_image"], case.captum("InputXGradient")))


def test_integrated_gradients(case: Case) -> None:
    ref = case.captum("IntegratedGradients", baselines=0.0, n_steps=IG_STEPS, method="gausslegendre")
    check(f"integrated_gradients/{case.name}", pearson(case.ours["integrated_gradients"], ref))


@pytest.mark.parametrize("method", ["riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_methods_and_baseline(resnet18: nn.Module, photos64: Tensor, method: str) -> None:
    black = ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(galleryvis.IMAGENET_STD))[None, :, None, None]
    named = galleryvis.attribute(resnet18, photos64, "integrated_gradients", [1, 2], steps=4,
                                 method=method, baseline="black")
    given = galleryvis.attribute(resnet18, photos64, "integrated_gradients", [1, 2], steps=4,
                                 method=method, baseline=black)
    assert torch.equal(named, given)  # the same baseline, bit for bit
    # The trapezoid's first node is the baseline itself: a constant image, where every max-pool
    # window is a tie and which input gets the gradient is the kernel's choice (it differed
    # between captum's batches and ours under a 1e-7 change of the convolutions' rounding: r =
    # 0.96). A faint fixed texture on the baseline breaks the ties, so the integrand is defined.
    texture = 1e-3 * torch.randn(1, 3, *photos64.shape[-2:], generator=torch.Generator().manual_seed(0))
    base = (black + texture).expand_as(photos64)
    ours = galleryvis.attribute(resnet18, photos64, "integrated_gradients", [1, 2], steps=4,
                                method=method, baseline=base[:1])
    with frozen(resnet18):
        ref = captum_attr.IntegratedGradients(resnet18).attribute(
            photos64, baselines=base, target=[1, 2], n_steps=4, method=method)
    check(f"integrated_gradients {method} black/resnet18", pearson(ours, ref))


# Guided backprop / deconvnet on nets with ReLU6 (Lite0): captum guides only nn.ReLU, so the
# reference there swaps every ReLU-family module of a copy for one with the paper's backward.
class _GuidedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, hi: float, deconv: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.hi, ctx.deconv = hi, deconv
        return x.clamp(0, hi)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        g = g.clamp(min=0)
        return (g if ctx.deconv else g * ((x > 0) & (x < ctx.hi))), None, None


class _GuidedAct(nn.Module):
    def __init__(self, hi: float, deconv: bool) -> None:
        super().__init__()
        self.hi, self.deconv = hi, deconv

    def forward(self, x: Tensor) -> Tensor:
        return _GuidedFn.apply(x, self.hi, self.deconv)


def guided_reference(model: nn.Module, x: Tensor, target: list[int], deconv: bool) -> Tensor:
    ref = copy.deepcopy(model)
    for name, m in list(ref.named_modules()):
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            parent, _, attr = name.rpartition(".")
            hi = 6.0 if isinstance(m, nn.ReLU6) else math.inf
            setattr(ref.get_submodule(parent), attr, _GuidedAct(hi, deconv))
    for p in ref.parameters():
        p.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref(xg).gather(1, torch.tensor(target)[:, None]).sum(), xg)
    return g


@pytest.mark.parametrize("name, cls", [("guided_backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")])
def test_guided_and_deconv(case: Case, name: str, cls: str) -> None:
    if case.name == "lite0":
        assert not any(isinstance(m, nn.ReLU) for m in case.model.modules())  # ReLU6 only
        ref = guided_reference(case.model, case.x, case.target, deconv=name == "deconvnet")
        check(f"{name}/lite0 (ReLU6 reference)", pearson(case.ours[name], ref))
    else:
        check(f"{name}/{case.name}", pearson(case.ours[name], case.captum(cls)))


def test_guided_reference_matches_captum_on_relu_nets(resnet18: nn.Module, photos64: Tensor) -> None:
    """The hand-written reference used for Lite0 is captum's rule where captum applies."""
    with frozen(resnet18):
        for deconv, cls in ((False, "GuidedBackprop"), (True, "Deconvolution")):
            ref = guided_reference(resnet18, photos64, [3, 4], deconv)
            cap = getattr(captum_attr, cls)(resnet18).attribute(photos64.clone(), target=[3, 4])
            torch.testing.assert_close(ref, cap, rtol=1e-4, atol=1e-6)


# -- CAMs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CAM_CLASSES))
def test_cams(case: Case, name: str) -> None:
    """grad-cam min-max normalizes and upsamples with cv2 (bilinear, half-pixel): compare at the
    input size; Pearson is invariant to the normalization."""
    check(f"{name}/{case.name}", pearson(case.ours[name], case.gradcam(CAM_CLASSES[name])))


def test_layercam_several_layers(vgg16: nn.Module, photos64: Tensor) -> None:
    layers = ["features.22", "features.29"]
    ours = galleryvis.attribute(vgg16, photos64, "layercam", [5, 6], layer=layers)
    mods = [vgg16.get_submodule(n) for n in layers]
    with frozen(vgg16), pgc.LayerCAM(model=vgg16, target_layers=mods) as cam:
        ref = cam(input_tensor=photos64.clone().requires_grad_(True),
                  targets=[ClassifierOutputTarget(t) for t in (5, 6)])
    check("layercam features.22+29/vgg16", pearson(ours, ref))


def test_guided_gradcam(case: Case) -> None:
    """captum's GuidedGradCam upsamples Grad-CAM nearest-neighbour; galleryvis bilinearly (as
    the paper's code). The reference is captum's guided backprop (the ReLU6 reference on Lite0)
    times captum's LayerGradCam upsampled bilinearly; captum's own product is reported."""
    size = case.x.shape[-2:]
    cam = case.captum("LayerGradCam", case.module, relu_attributions=True)
    if case.name == "lite0":
        guided = guided_reference(case.model, case.x, case.target, deconv=False)
    else:
        guided = case.captum("GuidedBackprop")
    check(f"guided_gradcam/{case.name}", pearson(case.ours["guided_gradcam"], guided * up(cam, size)))
    if case.name == "resnet18":
        nearest = case.captum("GuidedGradCam", case.module)
        print(f"\n  r guided_gradcam vs captum GuidedGradCam (nearest)/{case.name}: "
              + ", ".join(f"{r:.5f}" for r in pearson(case.ours["guided_gradcam"], nearest)))
        check(f"guided_gradcam nearest-upsampled gradcam/{case.name}",
              pearson(case.ours["guided_backprop"] * up(cam, size, "nearest"), nearest))


def test_eigencam(case: Case) -> None:
    """The first principal component's sign is arbitrary: grad-cam takes numpy's, galleryvis
    makes it correlate positively with the channel sum. Checked: grad-cam's EigenCAM equals
    ReLU(P) for grad-cam's projection P, and ours equals ReLU(s * P) with our sign s."""
    a = layer_output(case.model, case.layer, case.x)
    proj = torch.from_numpy(get_2d_projection(a.numpy().copy()))[:, None]
    with frozen(case.model), pgc.EigenCAM(model=case.model, target_layers=[case.module]) as cam:
        theirs = cam(input_tensor=case.x.clone(), targets=None)
    size = case.x.shape[-2:]
    check(f"eigencam grad-cam vs its projection/{case.name}", pearson(up(F.relu(proj), size), theirs))
    ref = a.sum(1, keepdim=True)
    corr = torch.tensor(pearson(proj, ref))
    sign = torch.where(corr < 0, -1.0, 1.0)[:, None, None, None]
    check(f"eigencam/{case.name}", pearson(case.ours["eigencam"], up(F.relu(sign * proj), size)))
    print(f"\n  |r| eigencam vs grad-cam EigenCAM/{case.name}: "
          + ", ".join(f"{abs(r):.5f}" for r in pearson(case.ours["eigencam"], theirs)))


# -- Score-CAM -----------------------------------------------------------------------------------
def scorecam_reference(model: nn.Module, x: Tensor, target: int, layer: str) -> Tensor:
    """The paper's algorithm as its official code writes it, one channel at a time: upsample the
    activation map (bilinear), skip constant maps, min-max normalize, mask the input, weight by
    the softmax probability of the target class; ReLU of the weighted sum. (1, 1, H, W)."""
    a = layer_output(model, layer, x)
    total = torch.zeros(1, 1, *x.shape[-2:])
    with torch.no_grad():
        for k in range(a.shape[1]):
            sal = F.interpolate(a[:, k:k + 1], size=x.shape[-2:], mode="bilinear", align_corners=False)
            if sal.max() == sal.min():
                continue
            norm = (sal - sal.min()) / (sal.max() - sal.min())
            score = F.softmax(model(x * norm), dim=1)[0, target]
            total += score * sal
    return F.relu(total)


def test_scorecam_paper_on_lite0(lite0: nn.Module, photos224: Tensor) -> None:
    layer = "_blocks.4"  # 40 channels, 14x14
    x = photos224[:1]
    with torch.no_grad():
        target = int(lite0(x).argmax())
    ours = galleryvis.attribute(lite0, x, "scorecam", target, layer=layer)
    check("scorecam paper/lite0 _blocks.4", pearson(ours, scorecam_reference(lite0, x, target, layer)))


def test_scorecam_gradcam_weighting(resnet18: nn.Module, photos64: Tensor) -> None:
    """``weighting="gradcam"`` reproduces pytorch-grad-cam's ScoreCAM (random net)."""
    ours = galleryvis.attribute(resnet18, photos64, "scorecam", [7, 8], layer="layer1", weighting="gradcam")
    with frozen(resnet18), pgc.ScoreCAM(model=resnet18, target_layers=[resnet18.layer1]) as cam:
        ref = cam(input_tensor=photos64.clone(), targets=[ClassifierOutputTarget(t) for t in (7, 8)])
    check("scorecam weighting=gradcam/resnet18 layer1", pearson(ours, ref))


# -- SmoothGrad ----------------------------------------------------------------------------------
def noise_tunnel(model: nn.Module, cls: str, x: Tensor, target: int, nt_type: str, samples: int,
                 sigma: float, seed: int) -> Tensor:
    """captum's ``NoiseTunnel`` over ``captum.attr.<cls>`` (``Saliency`` signed) with galleryvis's
    noise: captum's global RNG seeded with ``seed``, ``sigma`` a fraction of ``x``'s range."""
    kw = {"abs": False} if cls == "Saliency" else {}
    with frozen(model):
        torch.manual_seed(seed)
        return captum_attr.NoiseTunnel(getattr(captum_attr, cls)(model)).attribute(
            x.clone(), nt_type=nt_type, nt_samples=samples, stdevs=sigma * float(x.max() - x.min()),
            target=target, **kw)


@pytest.mark.parametrize("variant, nt_type, base, cls", [
    ("mean", "smoothgrad", "vanilla", "Saliency"),
    ("squared", "smoothgrad_sq", "vanilla", "Saliency"),
    ("vargrad", "vargrad", "vanilla", "Saliency"),
    ("mean", "smoothgrad", "guided_backprop", "GuidedBackprop"),
])
def test_smoothgrad_matches_noise_tunnel(resnet18: nn.Module, photos64: Tensor,
                                         variant: str, nt_type: str, base: str, cls: str) -> None:
    """Identical noise: one image, all samples in one draw from a generator seeded like captum's
    global RNG; sigma is a fraction of the image's range, captum's stdev absolute."""
    x, samples, sigma, seed = photos64[:1], 8, 0.15, 3
    ours = galleryvis.attribute(resnet18, x, "smoothgrad", 9, samples=samples, sigma=sigma,
                                variant=variant, base=base, seed=seed, batch_size=samples)
    ref = noise_tunnel(resnet18, cls, x, 9, nt_type, samples, sigma, seed)
    check(f"smoothgrad {variant} base={base}/resnet18", pearson(ours, ref))
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()))


def test_smoothgrad_seed_and_variants(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    x = tiny_x[:2]
    sg = lambda **kw: galleryvis.attribute(tiny_seq, x, "smoothgrad", 3, samples=6, **kw)  # noqa: E731
    mean, sq, var = (sg(variant=v, seed=5) for v in ("mean", "squared", "vargrad"))
    torch.testing.assert_close(sg(variant="mean", seed=5), mean, rtol=0, atol=0)  # deterministic
    assert not torch.allclose(sg(variant="mean", seed=6), mean)
    torch.testing.assert_close(var, sq - mean * mean, rtol=1e-4, atol=1e-9)
    assert (sq >= 0).all() and (var >= -1e-9).all()
    # batch size does not change the noise; sigma = 0 gives the plain gradient
    torch.testing.assert_close(galleryvis.attribute(tiny_seq, x, "smoothgrad", 3, samples=6, seed=5,
                                                    batch_size=4), mean)
    vanilla = galleryvis.attribute(tiny_seq, x, "vanilla", 3)
    torch.testing.assert_close(sg(sigma=0.0), vanilla)
    torch.testing.assert_close(sg(sigma=0.0, variant="squared"), vanilla * vanilla)



# -- perturbation and Shapley --------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["zero", "black", "blur"])
def test_occlusion_matches_captum(resnet18: nn.Module, photos64: Tensor, baseline: str) -> None:
    """captum repeats the map over the three channels; its baselines given as the same images."""
    x, window, stride, target = photos64[:1], 32, 8, [3]  # 5 x 5 overlapping windows
    ours = galleryvis.attribute(resnet18, x, "occlusion", target, window=window, stride=stride, baseline=baseline)
    black = ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
    sigma = x.shape[-1] / 20
    reference = {"zero": 0.0, "black": black.expand_as(x).contiguous(),
                 "blur": gaussian_blur(x, 2 * int(3 * sigma) + 1, sigma)}[baseline]
    with frozen(resnet18), torch.no_grad():
        ref = captum_attr.Occlusion(resnet18).attribute(
            x.clone(), sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
            baselines=reference, target=target, perturbations_per_eval=16)
    check(f"occlusion baseline={baseline}/resnet18", pearson(ours, ref[:, :1]))
    torch.testing.assert_close(ours, ref[:, :1], rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("model_name, layer", [("resnet18", "layer1"), ("tiny_seq", "7")])  # 64, 16 channels
def test_ablationcam_matches_gradcam(request: pytest.FixtureRequest, model_name: str, layer: str) -> None:
    """Layers after a ReLU, where grad-cam's AblationLayer zeroes the channel as the paper does."""
    model = request.getfixturevalue(model_name)
    x = request.getfixturevalue("photos64")[:1] if model_name == "resnet18" else request.getfixturevalue("tiny_x")[:2]
    target = [1, 2][:len(x)]
    ours = galleryvis.attribute(model, x, "ablationcam", target, layer=layer)
    with frozen(model), pgc.AblationCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        ref = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(t) for t in target])
    check(f"ablationcam {layer}/{model_name}", pearson(ours, ref))


class PatchNet(nn.Module):
    """Two classes; class 0's logit is 6 x (the mean of the first channel inside ``box`` (rows,
    columns)) - 3: the evidence a faithful map has to find."""

    def __init__(self, box: tuple[slice, slice]) -> None:
        super().__init__()
        self.box = box
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        evidence = 6 * self.conv(x)[:, 0][:, self.box[0], self.box[1]].mean((1, 2)) - 3
        return torch.stack([evidence, torch.zeros_like(evidence)], 1)


def test_rise_is_more_faithful_than_a_random_map() -> None:
    """Insertion - deletion AUC of RISE beats the blob-shaped random map on every image."""
    box = (slice(8, 20), slice(12, 28))
    net = PatchNet(box).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x[:, :, box[0], box[1]] += 0.5  # the target's probability is about 0.9
    maps = galleryvis.attribute(net, x, "rise", 0, masks=256)
    rise = deletion_insertion(net, x, maps, 0, steps=16).score
    rand = deletion_insertion(net, x, random_map(maps.shape, cells=7), 0, steps=16).score
    print(f"\n  insertion - deletion: rise {rise}, random {rand}")
    assert (rise > rand + 0.1).all(), (rise, rand)


def _expected_difference(model: nn.Module, x: Tensor, refs: Tensor, target: int) -> Tensor:
    with torch.no_grad():
        return model(x)[:, target] - model(refs)[:, target].mean()


def test_gradient_shap_is_exact_on_a_linear_model() -> None:
    """stdev = 0 and one baseline: every sample's attributions sum to f(x) - f(baseline)."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = galleryvis.attribute(linear, x, "gradient_shap", 2, samples=5, stdev=0.0, baselines="zero")
    torch.testing.assert_close(ours.sum((1, 2, 3)), _expected_difference(linear, x, torch.zeros(1, 3, 8, 8), 2))
    torch.testing.assert_close(ours, linear[1].weight[2].view(1, 3, 8, 8) * x)


def test_gradient_shap_is_complete_in_expectation() -> None:
    """With random reference images (expected gradients) and stdev = 0, the attributions sum to
    f(x) - E f(b) up to the Monte Carlo error (a small tanh MLP, so thousands of samples are cheap)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    refs = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    ours = galleryvis.attribute(mlp, x, "gradient_shap", 1, samples=2048, stdev=0.0, baselines=refs,
                                batch_size=512)
    want = _expected_difference(mlp, x, refs, 1)
    print(f"\n  gradient_shap sums {ours.sum((1, 2, 3)).tolist()} vs f(x) - E f(b) {want.tolist()}")
    torch.testing.assert_close(ours.sum((1, 2, 3)), want, rtol=0.03, atol=0.01)

# -- transformers: token and channels-last layers ------------------------------------------------
#: (model in conftest.tiny_transformers, layer, grid (h, w), layout: the number of prefix tokens,
#: "last" for channels last or "first"): each model's default layer, plus token layers without a
#: prefix (timm Swin's norm2) and channels-last leaves (torchvision Swin's norm1, the issue's).
TOKEN_CASES = [
    ("vit", "encoder.layers.encoder_layer_1.ln_1", (8, 8), 1),
    ("timm_vit", "blocks.1.norm1", (6, 8), 5),  # non-square, class + 4 register tokens
    ("deit", "blocks.1.norm1", (8, 8), 2),  # class + distillation token
    ("swin", "features.3.1", (8, 8), "last"),
    ("swin", "features.3.1.norm1", (8, 8), "last"),
    ("timm_swin", "layers.1.blocks.1", (8, 8), "last"),
    ("timm_swin", "layers.1.blocks.1.norm2", (8, 8), 0),
    ("convnext", "features.3", (8, 8), "first"),
]
TOKEN_IDS = [f"{m}:{layer}" for m, layer, _, _ in TOKEN_CASES]
TOKEN_CAMS = {**CAM_CLASSES, "scorecam": "ScoreCAM", "eigencam": "EigenCAM"}


def reshape_transform(h: int, w: int, layout: int | str) -> Callable[[Tensor], Tensor] | None:
    """pytorch-grad-cam's documented reshape transforms (its vision-transformer and Swin
    tutorials): tokens without the leading ones -> (N, h, w, C); then channels to dim 1.
    None for channels-first layers."""
    if layout == "first":
        return None

    def fn(t: Tensor) -> Tensor:
        if isinstance(layout, int):
            t = t[:, layout:, :]
        return t.reshape(t.size(0), h, w, t.size(-1)).transpose(2, 3).transpose(1, 2)
    return fn


@dataclass
class TokenCase:
    name: str
    model: nn.Module
    x: Tensor
    target: list[int]
    layer: str
    reshape: Callable[[Tensor], Tensor] | None
    ours: dict[str, Tensor]

    def gradcam(self, cls: str) -> np.ndarray:
        module = self.model.get_submodule(self.layer)
        with frozen(self.model), getattr(pgc, cls)(model=self.model, target_layers=[module],
                                                   reshape_transform=self.reshape) as cam:
            cam.batch_size = 64
            targets = [ClassifierOutputTarget(t) for t in self.target]
            return cam(input_tensor=self.x.clone().requires_grad_(True), targets=targets)


def transformer_inputs(transformers: dict[str, nn.Module], name: str, photos64: Tensor
                       ) -> tuple[nn.Module, Tensor, list[int]]:
    """A tiny transformer, its photos (timm's ViT takes 48x64) and their top-1 classes."""
    if name not in transformers:
        pytest.skip("timm is not installed")
    model = transformers[name]
    x = photos64[..., 8:56, :] if name == "timm_vit" else photos64
    with torch.no_grad():
        return model, x, model(x).argmax(1).tolist()


@pytest.fixture(scope="module", params=TOKEN_CASES, ids=TOKEN_IDS)
def token_case(request: pytest.FixtureRequest, transformers: dict[str, nn.Module], photos64: Tensor) -> TokenCase:
    name, layer, (h, w), layout = request.param
    model, x, target = transformer_inputs(transformers, name, photos64)
    ours = galleryvis.attribute_many(model, x, [*CAM_CLASSES, "eigencam", "scorecam"], target, layer,
                                     {"scorecam": {"weighting": "gradcam"}})
    return TokenCase(name, model, x, target, layer, reshape_transform(h, w, layout), ours)


@pytest.mark.parametrize("name", [n for n in (*CAM_CLASSES, "scorecam") if n != "gradcam_pp"])
def test_cams_on_transformers(token_case: TokenCase, name: str) -> None:
    """The same maps as pytorch-grad-cam with its reshape transform at the same layer
    (Score-CAM: ``weighting="gradcam"``, grad-cam's variant)."""
    check(f"{name}/{token_case.name} {token_case.layer}",
          pearson(token_case.ours[name], token_case.gradcam(TOKEN_CAMS[name])))


TRANSFORMER_MODELS = ["vit", "swin", "convnext", "timm_vit", "deit", "timm_swin"]


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_gradients_smoothgrad_ig_and_occlusion_on_transformers(transformers: dict[str, nn.Module], photos64: Tensor,
                                                              name: str) -> None:
    """The input-gradient and perturbation techniques on ViT, DeiT, Swin and ConvNeXt, one
    shared call, against captum (SmoothGrad: one image, the same noise)."""
    model, x, target = transformer_inputs(transformers, name, photos64)
    ours = galleryvis.attribute_many(model, x, ["vanilla", "grad_x_image", "integrated_gradients", "occlusion"],
                                     target, params={"integrated_gradients": {"steps": IG_STEPS},
                                                     "occlusion": {"window": 16, "stride": 8}})
    case = Case(name, model, x, target, "", ours, {})
    check(f"vanilla/{name}", pearson(ours["vanilla"], case.captum("Saliency", abs=False)))
    check(f"grad_x_image/{name}", pearson(ours["grad_x_image"], case.captum("InputXGradient")))
    ig = case.captum("IntegratedGradients", baselines=0.0, n_steps=IG_STEPS, method="gausslegendre")
    check(f"integrated_gradients/{name}", pearson(ours["integrated_gradients"], ig))
    occlusion = case.captum("Occlusion", sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0.0)
    check(f"occlusion/{name}", pearson(ours["occlusion"], occlusion.sum(1, keepdim=True)))
    sigma, samples, seed = 0.15, 8, 3
    smooth = galleryvis.attribute(model, x[:1], "smoothgrad", target[0], samples=samples, sigma=sigma, seed=seed,
                                  batch_size=samples)
    check(f"smoothgrad/{name}", pearson(smooth, noise_tunnel(model, "Saliency", x[:1], target[0], "smoothgrad",
                                                            samples, sigma, seed)))


def gradcam_pp_formula(a: Tensor, g: Tensor, eps: float) -> Tensor:
    """grad-cam's Grad-CAM++ (``grad_cam_plusplus.py``) in float64 with its epsilon a parameter:
    alpha = g^2 / (2 g^2 + sum(A) g^3 + eps) where g != 0, weights sum(alpha ReLU(g))."""
    a, g = a.double(), g.double()
    alpha = g.pow(2) / (2 * g.pow(2) + a.sum((2, 3), keepdim=True) * g.pow(3) + eps)
    weights = (torch.where(g != 0, alpha, 0.0) * F.relu(g)).sum((2, 3), keepdim=True)
    return F.relu((weights * a).sum(1, keepdim=True))


def test_gradcam_pp_on_transformers(token_case: TokenCase) -> None:
    """grad-cam adds 1e-6 to Grad-CAM++'s denominator 2 g^2 + sum(A) g^3; at token layers of
    these nets 2 g^2 is about that size (median 6e-7 at torchvision Swin's norm1, where grad-cam's
    map moves to r = 0.73-0.77 from the formula without it); galleryvis has the paper's closed
    form. Checked: grad-cam's formula on grad-cam's own reshaped activations and gradients gives
    its map with the epsilon and ours without it; at each model's default layer ours also agrees
    with grad-cam's map directly."""
    case = token_case
    module = case.model.get_submodule(case.layer)
    with frozen(case.model):
        aag = ActivationsAndGradients(case.model, [module], case.reshape)
        try:
            logits = aag(case.x.clone().requires_grad_(True))
            logits.gather(1, torch.tensor(case.target)[:, None]).sum().backward()
            a, g = aag.activations[0], aag.gradients[0]
        finally:
            aag.release()
    size = case.x.shape[-2:]
    theirs = case.gradcam("GradCAMPlusPlus")
    check(f"gradcam_pp grad-cam vs its formula/{case.name} {case.layer}",
          pearson(up(gradcam_pp_formula(a, g, 1e-6).float(), size), theirs))
    check(f"gradcam_pp vs the formula without epsilon/{case.name} {case.layer}",
          pearson(case.ours["gradcam_pp"], up(gradcam_pp_formula(a, g, 0.0).float(), size)))
    if default_layer(case.model, case.x[:1]) == case.layer:
        check(f"gradcam_pp/{case.name} {case.layer}", pearson(case.ours["gradcam_pp"], theirs))
    else:
        print(f"\n  r gradcam_pp vs grad-cam/{case.name} {case.layer}: "
              + ", ".join(f"{r:.5f}" for r in pearson(case.ours["gradcam_pp"], theirs)))


def test_eigencam_on_transformers(token_case: TokenCase) -> None:
    """grad-cam's first principal component of the reshaped activations, with galleryvis's sign
    (positive correlation with the channel sum), as test_eigencam checks on CNNs."""
    a = layer_output(token_case.model, token_case.layer, token_case.x)
    a = token_case.reshape(a) if token_case.reshape else a
    proj = torch.from_numpy(get_2d_projection(a.numpy().copy()))[:, None]
    sign = torch.where(torch.tensor(pearson(proj, a.sum(1, keepdim=True))) < 0, -1.0, 1.0)[:, None, None, None]
    size = token_case.x.shape[-2:]
    check(f"eigencam/{token_case.name} {token_case.layer}",
          pearson(token_case.ours["eigencam"], up(F.relu(sign * proj), size)))
    print(f"\n  |r| eigencam vs grad-cam EigenCAM/{token_case.name}: "
          + ", ".join(f"{abs(r):.5f}" for r in pearson(token_case.ours["eigencam"], token_case.gradcam("EigenCAM"))))


# -- attention rollout and attention x gradient ----------------------------------------------------
class ExplicitAttention(nn.Module):
    """A reference self-attention: torchvision's ``nn.MultiheadAttention`` (``kind="mha"``) or
    timm's ``Attention`` (``"timm"``) computed as softmax(q k^T / sqrt(d)) v from the module's own
    weights, keeping the probabilities (with their gradient) in ``self.probs``."""

    def __init__(self, inner: nn.Module, kind: str, heads: int) -> None:
        super().__init__()
        self.inner, self.kind, self.heads, self.probs = inner, kind, heads, None

    def forward(self, x: Tensor, *_: object, **__: object) -> object:
        n, t, d = x.shape
        w, b = ((self.inner.in_proj_weight, self.inner.in_proj_bias) if self.kind == "mha"
                else (self.inner.qkv.weight, self.inner.qkv.bias))
        q, k, v = (x @ w.T + b).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        self.probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        self.probs.retain_grad()
        out = (self.probs @ v).transpose(1, 2).reshape(n, t, d)
        proj = self.inner.out_proj if self.kind == "mha" else self.inner.proj
        return (proj(out), None) if self.kind == "mha" else proj(out)


def reference_attentions(name: str, model: nn.Module, x: Tensor, target: list[int]
                         ) -> tuple[list[Tensor], list[Tensor]]:
    """Each layer's attention probabilities (N, heads, T, T) and their gradients of the target
    logits, from a copy with :class:`ExplicitAttention` (Hugging Face: its own eager attention
    with ``output_attentions``)."""
    if name == "hf_vit":
        from transformers import ViTForImageClassification

        config = copy.deepcopy(model.model.config)
        ref = ViTForImageClassification._from_config(config, attn_implementation="eager").eval()
        ref.load_state_dict(model.model.state_dict())
        xg = x.clone().requires_grad_(True)
        out = ref(pixel_values=xg, output_attentions=True)
        probs = list(out.attentions)
        grads = torch.autograd.grad(out.logits.gather(1, torch.tensor(target)[:, None]).sum(), probs)
        return [p.detach() for p in probs], list(grads)
    ref = copy.deepcopy(model)
    kind, parent = ("mha", "self_attention") if name == "vit" else ("timm", "attn")
    blocks = [m for m in ref.modules() if isinstance(getattr(m, parent, None), nn.Module)]
    for blk in blocks:
        inner = getattr(blk, parent)
        setattr(blk, parent, ExplicitAttention(inner, kind, inner.num_heads))
    xg = x.clone().requires_grad_(True)
    ref(xg).gather(1, torch.tensor(target)[:, None]).sum().backward()
    explicit = [getattr(blk, parent) for blk in blocks]
    return [e.probs.detach() for e in explicit], [e.probs.grad for e in explicit]


def rollout_reference(probs: list[Tensor], prefix: int, grid: tuple[int, int], fusion: str = "mean",
                      discard: float = 0.0) -> Tensor:
    """Abnar & Zuidema's rollout, image by image: fuse heads, zero the lowest ``discard`` of the
    entries (not the class token's own), add the identity, halve, renormalize the rows, multiply
    the layers (last leftmost); the class token's row over the patches. (N, 1, h, w)."""
    out = []
    for i in range(probs[0].shape[0]):
        t = probs[0].shape[-1]
        result = torch.eye(t)
        for p in probs:
            fused = getattr(p[i], fusion)(0) if fusion == "mean" else getattr(p[i], fusion)(0).values
            flat = fused.flatten().clone()
            low = flat.topk(int(flat.numel() * discard), largest=False).indices
            flat[low[low != 0]] = 0
            a = (flat.view(t, t) + torch.eye(t)) / 2
            result = (a / a.sum(-1, keepdim=True)) @ result
        out.append(result[0, prefix:].reshape(1, *grid))
    return torch.stack(out)


def gradient_reference(probs: list[Tensor], grads: list[Tensor], prefix: int, grid: tuple[int, int]) -> Tensor:
    """Chefer et al. 2021: R = I, R <- R + E_h[(grad A * A)^+] R per layer; class row, patches."""
    t = probs[0].shape[-1]
    r = torch.eye(t).repeat(probs[0].shape[0], 1, 1)
    for a, g in zip(probs, grads):
        r = r + torch.bmm((g * a).clamp(min=0).mean(1), r)
    return r[:, 0, prefix:].reshape(-1, 1, *grid)


@pytest.fixture(scope="module")
def attention_models(transformers: dict[str, nn.Module]) -> dict[str, tuple[nn.Module, tuple[int, int], int]]:
    """(model, grid, prefix tokens) of the ViTs: torchvision, timm with registers (48x64), DeiT,
    and a tiny random Hugging Face ViT (64 px, patch 8) returning its logits."""
    out = {"vit": (transformers["vit"], (8, 8), 1)}
    if "timm_vit" in transformers:
        out |= {"timm_vit": (transformers["timm_vit"], (6, 8), 5), "deit": (transformers["deit"], (8, 8), 2)}
    try:
        from transformers import ViTConfig, ViTForImageClassification
    except ImportError:
        return out
    from galleryvis.sources.huggingface import Logits

    torch.manual_seed(0)
    config = ViTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=10)
    out["hf_vit"] = (Logits(ViTForImageClassification(config)).eval(), (8, 8), 1)
    return out


ATTENTION_MODELS = ["vit", "timm_vit", "deit", "hf_vit"]


@pytest.mark.parametrize("name", ATTENTION_MODELS)
@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.9), ("min", 0.0)])
def test_attention_rollout(attention_models: dict, photos64: Tensor, name: str, fusion: str, discard: float) -> None:
    if name not in attention_models:
        pytest.skip("timm / transformers not installed")
    model, grid, prefix = attention_models[name]
    x = photos64[..., 8:56, :] if name == "timm_vit" else photos64
    probs, _ = reference_attentions(name, model, x, [0, 0])
    ours = galleryvis.attribute(model, x, "attention_rollout", 0, head_fusion=fusion, discard_ratio=discard)
    ref = up(rollout_reference(probs, prefix, grid, fusion, discard), x.shape[-2:])
    check(f"attention_rollout {fusion} discard {discard}/{name}", pearson(ours, ref))


@pytest.mark.parametrize("name", ["timm_vit", "deit"])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_attention_rollout_agrees_with_fast_vit_rollout(attention_models: dict, photos64: Tensor, name: str,
                                                       fusion: str) -> None:
    """fast-vit-rollout (PyPI) hooks timm's explicit attention; without discarding it is the same
    rollout (it adds the identity without halving, which the row normalization undoes). Its
    discard ratio is another rule (a quantile of the normalized map, the class token not kept)."""
    rollout = pytest.importorskip("fast_vit_rollout.vit_rollout")
    if name not in attention_models:
        pytest.skip("timm not installed")
    model, grid, prefix = attention_models[name]
    x = photos64[..., 8:56, :] if name == "timm_vit" else photos64
    ours = galleryvis.attribute(model, x, "attention_rollout", 0, head_fusion=fusion)
    theirs_model = copy.deepcopy(model)  # it leaves its hooks on the model
    for m in theirs_model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # its hooks sit on attn_drop, which only the explicit path calls
    matrix = rollout.ViTAttentionRollout(theirs_model, head_fusion=fusion, discard_ratio=0.0)(x)
    theirs = matrix[:, 0, prefix:].reshape(-1, 1, *grid)
    check(f"attention_rollout {fusion} vs fast-vit-rollout/{name}", pearson(ours, up(theirs, x.shape[-2:])))


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_attention_gradient(attention_models: dict, photos64: Tensor, name: str) -> None:
    if name not in attention_models:
        pytest.skip("timm / transformers not installed")
    model, grid, prefix = attention_models[name]
    x = photos64[..., 8:56, :] if name == "timm_vit" else photos64
    with torch.no_grad():
        target = model(x).argmax(1).tolist()
    probs, grads = reference_attentions(name, model, x, target)
    ours = galleryvis.attribute(model, x, "attention_gradient", target)
    check(f"attention_gradient/{name}", pearson(ours, up(gradient_reference(probs, grads, prefix, grid), x.shape[-2:])))


# -- the Shapley family --------------------------------------------------------------------------
def _unshared_resnet(model: nn.Module) -> nn.Module:
    """A copy of a torchvision ResNet whose blocks call a second ReLU module for their output:
    captum's DeepLift refuses a module called twice (torchvision's blocks reuse ``self.relu``)."""
    from torchvision.models.resnet import BasicBlock

    def forward(self: BasicBlock, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu_out(out + (x if self.downsample is None else self.downsample(x)))

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, BasicBlock):
            m.relu_out = nn.ReLU()
            m.forward = forward.__get__(m)
    return model


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_deeplift_matches_captum(request: pytest.FixtureRequest, photos64: Tensor, name: str) -> None:
    """Rescale rule on ReLUs and captum's max-pool rule; the zero baseline, captum's default."""
    model = request.getfixturevalue(name)
    with torch.no_grad():
        target = model(photos64).argmax(1).tolist()
    ours = galleryvis.attribute(model, photos64, "deeplift", target)
    ref_model = _unshared_resnet(model) if name == "resnet18" else model
    with frozen(ref_model), no_inplace(ref_model):
        ref = captum_attr.DeepLift(ref_model).attribute(photos64.clone(), target=target).detach()
    check(f"deeplift/{name}", pearson(ours, ref))
    with torch.no_grad():  # and summation to delta: the contributions add up to the logit's change
        delta = (model(photos64) - model(torch.zeros_like(photos64)))[[0, 1], target]
    torch.testing.assert_close(ours.sum((1, 2, 3)), delta, rtol=1e-3, atol=1e-4)


@contextmanager
def no_inplace(model: nn.Module) -> Iterator[None]:
    """In-place activations off (captum's DeepLift reads each activation's input after it ran)."""
    mods = [m for m in model.modules() if getattr(m, "inplace", False)]
    try:
        for m in mods:
            m.inplace = False
        yield
    finally:
        for m in mods:
            m.inplace = True


def _linear_model(classes: int = 3, size: int = 24) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes)).eval()


def _cell_values(maps: Tensor, labels: Tensor) -> Tensor:
    """(N, M) value of each segment of (N, 1, H, W) maps (constant within the segment, asserted)."""
    out = []
    for m in maps[:, 0]:
        values = [m[labels == k] for k in range(int(labels.max()) + 1)]
        assert all(torch.equal(v.amin(), v.amax()) for v in values), "a map not constant within a segment"
        out.append(torch.stack([v[0] for v in values]))
    return torch.stack(out)


@pytest.mark.parametrize("name", ["kernel_shap", "lime"])
@pytest.mark.parametrize("baseline", ["zero", "black"])
def test_segment_methods_are_exact_on_a_linear_model(name: str, baseline: str) -> None:
    """A linear model over grid cells: each cell's Shapley value (and each LIME coefficient) is
    the cell's share of w . (x - baseline), known in closed form."""
    from galleryvis.attribution.shapley import grid_segments
    model = _linear_model()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    labels = grid_segments(24, 24, 16)
    ours = _cell_values(galleryvis.attribute(model, x, name, [0, 2], segments=16, samples=64, baseline=baseline),
                        labels)
    base = torch.zeros(1, 3, 1, 1) if baseline == "zero" else \
        (0 - torch.tensor(IMAGENET_MEAN) / torch.tensor(galleryvis.IMAGENET_STD))[None, :, None, None]
    share = (model[1].weight[[0, 2]].view(2, 3, 24, 24) * (x - base)).sum(1)  # (2, H, W)
    exact = torch.stack([torch.zeros(16).index_add_(0, labels.flatten(), s.flatten()) for s in share])
    check(f"{name} {baseline}/linear", pearson(ours, exact))
    torch.testing.assert_close(ours, exact, rtol=1e-3, atol=1e-4)


def test_kernel_shap_approaches_the_exact_shapley_values_of_a_nonlinear_net(tiny_seq: nn.Module,
                                                                              tiny_x: Tensor) -> None:
    """Four cells, so the exact Shapley values of the conv net come from all 16 coalitions; the
    estimate sums to f(x) - f(baseline) exactly (efficiency)."""
    from galleryvis.attribution.shapley import grid_segments
    labels = grid_segments(32, 32, 4)
    x, target = tiny_x[:2], [3, 5]
    ours = _cell_values(galleryvis.attribute(tiny_seq, x, "kernel_shap", target, segments=4, samples=400), labels)
    coalitions = torch.tensor([[(c >> k) & 1 for k in range(4)] for c in range(16)], dtype=torch.bool)
    with torch.no_grad():
        f = torch.stack([tiny_seq(torch.where(z[labels], x, 0.0))[[0, 1], target] for z in coalitions], 1)
    exact = torch.zeros(2, 4, dtype=torch.double)
    for c, z in enumerate(coalitions):
        for k in range(4):
            if not z[k]:
                s = int(z.sum())
                weight = math.factorial(s) * math.factorial(4 - s - 1) / math.factorial(4)
                exact[:, k] += weight * (f[:, c | (1 << k)] - f[:, c]).double()
    check("kernel_shap/exact Shapley, 4 cells", pearson(ours, exact))
    torch.testing.assert_close(ours.double().sum(1), (f[:, 15] - f[:, 0]).double(), rtol=1e-4, atol=1e-5)


def test_slic_segments_come_from_scikit_image(photos64: Tensor) -> None:
    pytest.importorskip("skimage")
    from skimage.segmentation import slic
    model = _linear_model(size=64)
    maps = galleryvis.attribute(model, photos64[:1], "lime", 0, features="slic", segments=16, samples=32)
    rgb = (photos64[0] * torch.tensor(galleryvis.IMAGENET_STD)[:, None, None]
           + torch.tensor(IMAGENET_MEAN)[:, None, None]).clamp(0, 1).permute(1, 2, 0).double().numpy()
    labels = torch.from_numpy(np.unique(slic(rgb, n_segments=16, compactness=10, start_label=0, channel_axis=-1),
                                        return_inverse=True)[1].reshape(64, 64))
    _cell_values(maps, labels)  # constant within each superpixel
    assert int(labels.max()) + 1 > 4 and len(maps.unique()) == int(labels.max()) + 1
