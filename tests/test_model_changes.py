"""Every temporary model change is undone: after each registered technique (attribution and
synthesis) and each metric, and after an exception in the first and in the last forward of each,
the model has the same tensors (values and identity), training flags, hooks, ``requires_grad``
flags and module attributes as before. Tiny seeded models: a CNN with batch norm (folded by the engine) in
training mode with one frozen convolution, a timm ViT whose attention is fused, and torchvision's
ViT (``nn.MultiheadAttention``, whose output the attention techniques replace)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

import galleryvis
from galleryvis import metrics, registry
from galleryvis.errors import LayerError
from galleryvis.tasks import TaskError
from galleryvis.synthesis.transfer import class_rank

timm_vit = pytest.importorskip("timm.models.vision_transformer")

#: Small parameters, so that every technique runs in well under a second on one core.
FAST: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": 2}, "integrated_gradients": {"steps": 2}, "gradient_shap": {"samples": 2},
    "rise": {"masks": 8}, "occlusion": {"window": 16, "stride": 16}, "kernel_shap": {"segments": 4, "samples": 4},
    "lime": {"segments": 4, "samples": 4},
    "filter_visualization": {"steps": 2, "size": 16, "channel": 0}, "layer_activation": {"channel": 0},
    "deep_dream": {"steps": 2, "octaves": 1}, "class_visualization": {"steps": 2, "size": 16, "target": 1},
    "inverted_representation": {"steps": 2},
}
SYNTHESIS = set(registry.names("synthesis"))
#: The concept techniques (``crp``), computed through ``galleryvis.concepts``.
CONCEPTS = set(registry.names("concepts"))
#: The synthesis techniques that start from (or reconstruct) an image.
FROM_IMAGE = {"layer_activation", "deep_dream", "inverted_representation"}


class Tripwire(nn.Identity):
    """The models' first module: :func:`tripped` makes every forward go through it count, or
    raise at a given call (patched on the class, so the model's own attributes stay as they are)."""


class Trip(RuntimeError):
    pass


@pytest.fixture
def tripped(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], list[int]]:
    """``tripped(k)``: from now on Tripwire counts its calls in the returned list and raises
    :class:`Trip` at call ``k`` (never with None)."""
    def arm(at: int | None) -> list[int]:
        calls = [0]

        def forward(self: Tripwire, x: Tensor) -> Tensor:
            calls[0] += 1
            if calls[0] == at:
                raise Trip(f"forward {at}")
            return x

        monkeypatch.setattr(Tripwire, "forward", forward)
        return calls
    return arm


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        Tripwire(), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 10))
    with torch.no_grad():
        for bn in (model[2], model[6]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    model[1].requires_grad_(False)
    return model.train()


def _vit() -> nn.Module:
    torch.manual_seed(0)
    vit = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=10)
    return nn.Sequential(Tripwire(), vit).eval()


def _torchvision_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=10)
    return nn.Sequential(Tripwire(), vit).eval()


MODELS = {"cnn": _cnn, "vit": _vit, "torchvision_vit": _torchvision_vit}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build() for name, build in MODELS.items()}


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# -- what "as before" means ----------------------------------------------------------------------
def _frozen(v: Any) -> Any:
    """A value to compare later: tensors by identity, storage and a copy of their values; modules
    by identity; containers element by element; anything else as it is."""
    if isinstance(v, Tensor):
        return ("tensor", id(v), v.data_ptr(), v.detach().clone())
    if isinstance(v, nn.Module):
        return ("module", id(v))
    if isinstance(v, dict):
        return {k: _frozen(e) for k, e in v.items()}
    if isinstance(v, (list, tuple, set)):
        return (type(v).__name__, [_frozen(e) for e in v])
    return v


#: torch's hooks on every module (``register_module_forward_hook`` and its kin).
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks")


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Every module's ``__dict__`` (parameters, buffers, submodules, hook dicts, flags such as
    ``training``, ``inplace`` and ``fused_attn``, any shadowing ``forward``), the state dict,
    each parameter's ``requires_grad`` and ``grad``, torch's global module hooks and grad mode."""
    return {
        "global": {**{name: _frozen(dict(getattr(nn.modules.module, name, {}))) for name in GLOBAL_HOOKS},
                   "grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled()},
        "modules": {name: _frozen(dict(m.__dict__)) for name, m in model.named_modules()},
        "state_dict": _frozen(dict(model.state_dict(keep_vars=True))),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: p.grad is None for n, p in model.named_parameters()},
    }


def differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    if isinstance(a, tuple) and len(a) == 4 and a[0] == "tensor":
        if not (isinstance(b, tuple) and len(b) == 4 and b[0] == "tensor"):
            yield f"{path}: a tensor became {b!r}"
        elif a[1:3] != b[1:3]:
            yield f"{path}: another tensor or storage"
        elif a[3].shape != b[3].shape or not torch.equal(a[3], b[3]):
            yield f"{path}: other values"
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in a.keys() | b.keys():
            if k not in a or k not in b:
                yield f"{path}.{k}: {'added' if k in b else 'removed'}"
            else:
                yield from differences(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == 2 and isinstance(a[1], list):
        if a[0] != b[0] or len(a[1]) != len(b[1]):
            yield f"{path}: {a!r} became {b!r}"
        else:
            for i, (u, v) in enumerate(zip(a[1], b[1])):
                yield from differences(u, v, f"{path}[{i}]")
    elif a != b:
        yield f"{path}: {a!r} became {b!r}"


def assert_as_before(model: nn.Module, before: dict[str, Any]) -> None:
    found = list(differences(before, snapshot(model)))
    assert not found, "\n".join(found[:20])


def check(model: nn.Module, run: Callable[[], object], tripped: Callable[[int | None], list[int]]) -> None:
    """``run()`` leaves ``model`` as before, and so does ``run()`` raising in its first forward
    (a probe, as a rule) and in its last (inside every change the run makes). A refusal
    (:class:`LayerError`: the technique does not apply to the model; :class:`TaskError`: nor to
    its task) must too."""
    before = snapshot(model)
    calls = tripped(None)
    try:
        run()
    except (LayerError, TaskError):
        pass
    assert_as_before(model, before)
    for at in sorted({1, calls[0]}) if calls[0] else ():
        tripped(at)
        with pytest.raises(Trip):
            run()
        assert_as_before(model, before)


# -- every technique ---------------------------------------------------------------------------
def _technique(name: str, model: nn.Module, x: Tensor) -> Callable[[], object]:
    params = dict(FAST.get(name, {}))
    if name in SYNTHESIS:
        if name in FROM_IMAGE:
            params["image"] = x[:1]
        return lambda: galleryvis.synthesize(model, name, **params)
    if name in CONCEPTS:
        return lambda: galleryvis.concepts(model, x, [1, 2], top_k=2, random_channels=2)
    return lambda: galleryvis.attribute(model, x, name, [1, 2], **params)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", registry.names())
def test_technique_leaves_the_model_as_before(models: dict[str, nn.Module], x: Tensor, name: str,
                                              model_name: str, tripped: Callable[[int | None], list[int]]) -> None:
    check(models[model_name], _technique(name, models[model_name], x), tripped)


# -- every metric (and synthesis's transfer score) --------------------------------------------
def _maps(x: Tensor) -> Tensor:
    return torch.rand(x.shape[0], 1, *x.shape[2:], generator=torch.Generator().manual_seed(2))


METRICS: dict[str, Callable[[nn.Module, Tensor], object]] = {
    "deletion_insertion": lambda model, x: metrics.deletion_insertion(model, x, _maps(x), [1, 2], steps=4),
    "road": lambda model, x: metrics.road(model, x, _maps(x), [1, 2], percentile=50, order="morf"),
    "sanity": lambda model, x: metrics.sanity(model, x, "vanilla", [1, 2], max_steps=2),
    "class_rank": lambda model, x: class_rank(model, x[:1].sigmoid(), 1, size=32),
}
#: Small settings for the Quantus-grade metrics, where a metric takes them.
FAST_METRICS: dict[str, Any] = {"nr_samples": 2, "nr_runs": 2, "subset_size": 64, "features_in_step": 512,
                                "regions_evaluation": 2, "patch_size": 16, "perturb_patch_sizes": [16], "num_classes": 10}


def _evaluation(name: str) -> Callable[[nn.Module, Tensor], object]:
    """A call of ``galleryvis.metrics.<name>`` at small settings: maps, or the technique
    "vanilla" for a metric that explains again; a square of the image as the object's mask."""
    fn = getattr(metrics, name)
    params = inspect.signature(fn).parameters

    def run(model: nn.Module, x: Tensor) -> object:
        kwargs = {k: v for k, v in FAST_METRICS.items() if k in params}
        if "mask" in params:
            mask = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)
            mask[:, 8:24, 8:24] = True
            kwargs["mask"] = mask
        explained = "vanilla" if "technique" in params else _maps(x)
        return fn(model, x, explained, [1, 2], **kwargs)

    return run


METRICS.update({name: _evaluation(name) for name in metrics.METRICS})


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("metric", list(METRICS))
def test_metric_leaves_the_model_as_before(models: dict[str, nn.Module], x: Tensor, metric: str, model_name: str,
                                           tripped: Callable[[int | None], list[int]]) -> None:
    model = models[model_name]
    check(model, lambda: METRICS[metric](model, x), tripped)


# -- the check itself sees what it must ----------------------------------------------------------
@pytest.mark.parametrize("change", ["value", "tensor", "training", "hook", "requires_grad", "attribute"])
def test_every_kind_of_change_is_seen(change: str) -> None:
    model = _cnn()
    before = snapshot(model)
    conv, bn = model[1], model[2]
    if change == "value":
        with torch.no_grad():
            bn.running_mean.add_(1)
    elif change == "tensor":
        conv._parameters["weight"] = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
    elif change == "training":
        bn.eval()
    elif change == "hook":
        conv.register_forward_hook(lambda *_: None)
    elif change == "requires_grad":
        model[5].weight.requires_grad_(False)
    else:
        model[3].inplace = False
    with pytest.raises(AssertionError):
        assert_as_before(model, before)


def test_a_dict_of_maps_is_read_as_levels_but_a_model_output_record_is_refused() -> None:
    """A layer returning a plain dict of (N, C, H, W) maps (torchvision's FPN) is captured as its
    levels; one returning Hugging Face's ``ModelOutput`` (whose pooled output is a 1x1 map too)
    is refused in one line, not read as levels."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)).eval()

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.hf(pixel_values=x).logits

    class Pyramid(nn.Module):  # two levels as a dict, then their pooled sum
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(3, 4, 3, 4, 1)
            self.levels = nn.Identity()
            self.head = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            levels = self.levels({"0": self.a(x), "1": self.b(x)})
            return self.head(sum(v.mean((2, 3)) for v in levels.values()))

    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(LayerError, match=r"^layer 'hf.resnet' returns BaseModelOutputWithPoolingAndNoAttention, "
                                         r"not a tensor or a dict of \(N, C, H, W\) maps$"):
        galleryvis.attribute(Logits().eval(), x, "gradcam", None, layer="hf.resnet")
    maps = galleryvis.attribute(Pyramid().eval(), x, "gradcam", None, layer="levels")
    assert maps.shape == (2, 1, 32, 32) and torch.isfinite(maps).all()
