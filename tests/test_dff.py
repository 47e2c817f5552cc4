"""Deep Feature Factorization (the ``dff`` technique, galleryvis.attribution.dff) against
pytorch-grad-cam's ``DeepFeatureFactorization`` and scikit-learn's ``NMF``, and its refusals.
Run with ``-s`` to see every r."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import galleryvis
from galleryvis.attribution.dff import Factors, factorize, nmf
from galleryvis.errors import LayerError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

R_MIN = 0.99


def matched(ours: Tensor, ref: Tensor) -> tuple[tuple[int, ...], list[float]]:
    """The order of ``ref``'s k maps (k, ...) that best matches ``ours`` (the highest least
    Pearson r over the pairs), and those r."""
    k = ours.shape[0]
    r = torch.corrcoef(torch.cat([ours.flatten(1), ref.flatten(1)]).double())[:k, k:]
    best = max(itertools.permutations(range(k)), key=lambda p: min(r[i, j].item() for i, j in enumerate(p)))
    return best, [r[i, j].item() for i, j in enumerate(best)]


def reference(model: nn.Module, module: nn.Module, head: nn.Module, x: Tensor, k: int) -> tuple[Tensor, ...]:
    """pytorch-grad-cam on one image (1, 3, H, W): the factors' raw maps (k, h, w) (its ``dff``
    on the activations its ``DeepFeatureFactorization`` captured; that class returns them
    rescaled and resized), concepts (k, C) and concept outputs (k, classes)."""
    ff = pytest.importorskip("pytorch_grad_cam.feature_factorization.deep_feature_factorization")
    dff = ff.DeepFeatureFactorization(model, module, computation_on_concepts=head)
    try:
        concepts, _, outputs = dff(x, k)
        acts = dff.activations_and_grads.activations[0].cpu().numpy()
    finally:
        dff.activations_and_grads.release()
    _, maps = ff.dff(acts.copy(), k)
    return torch.from_numpy(maps[0]), torch.from_numpy(concepts.T.copy()), torch.from_numpy(outputs)


def check_against_reference(model: nn.Module, layer: str, head: nn.Module, x: Tensor, k: int, label: str) -> None:
    ours = factorize(model, x, layer, k)
    assert ours.maps.shape[:2] == (len(x), k) and ours.concepts.shape[:2] == (len(x), k)
    for i in range(len(x)):
        maps, concepts, outputs = reference(model, model.get_submodule(layer), head, x[i:i + 1], k)
        order, rs = matched(ours.maps[i], maps)
        print(f"\n  r {label} image {i} (reference order {order}): {', '.join(f'{r:.5f}' for r in rs)}")
        assert min(rs) >= R_MIN, (label, i, rs)
        torch.testing.assert_close(ours.concepts[i], concepts[list(order)].float(), rtol=1e-3,
                                   atol=1e-3 * float(concepts.abs().max()))
        assert ours.scores is not None
        torch.testing.assert_close(ours.scores[i], outputs[list(order)].float(), rtol=1e-3,
                                   atol=1e-3 * float(outputs.abs().max()))


@pytest.mark.parametrize("k", [2, 4])
def test_resnet18_matches_pytorch_grad_cam(resnet18: nn.Module, photos112: Tensor, k: int) -> None:
    check_against_reference(resnet18, "layer4", resnet18.fc, photos112, k, f"dff k={k}/resnet18 layer4")


def test_resnet18_earlier_layer_matches_pytorch_grad_cam(resnet18: nn.Module, photos64: Tensor) -> None:
    """layer3 (4x4 at 64 px): the maps and concepts as pytorch-grad-cam has them (its classifier
    needs the layer before the pooling, so only the maps and concepts are compared here)."""
    ours = factorize(resnet18, photos64, "layer3", 3)
    for i in range(len(photos64)):
        maps, concepts, _ = reference(resnet18, resnet18.layer3, nn.Identity(), photos64[i:i + 1], 3)
        order, rs = matched(ours.maps[i], maps)
        print(f"\n  r dff k=3/resnet18 layer3 image {i}: {', '.join(f'{r:.5f}' for r in rs)}")
        assert min(rs) >= R_MIN
        torch.testing.assert_close(ours.concepts[i], concepts[list(order)].float(), rtol=1e-3,
                                   atol=1e-3 * float(concepts.abs().max()))


def test_lite0_matches_pytorch_grad_cam(lite0: nn.Module, photos224: Tensor) -> None:
    check_against_reference(lite0, "_head_relu", lite0._fc, photos224, 4, "dff k=4/lite0 _head_relu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nmf_matches_scikit_learn(dtype: torch.dtype) -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    x = torch.rand(24, 30, generator=torch.Generator().manual_seed(3), dtype=dtype) ** 2
    w, h = nmf(x, 5)
    model = decomposition.NMF(n_components=5, init="random", random_state=0)
    ref_w = model.fit_transform(x.numpy())
    assert w.dtype == h.dtype == dtype and (w >= 0).all() and (h >= 0).all()
    tol = {"rtol": 1e-3, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-7, "atol": 1e-9}
    torch.testing.assert_close(w, torch.from_numpy(ref_w), **tol)
    torch.testing.assert_close(h, torch.from_numpy(model.components_), **tol)


def test_nmf_of_zeros_is_zero() -> None:
    w, h = nmf(torch.zeros(6, 5), 2)
    assert not w.any() and not h.any()


def test_the_cell_map_is_the_factor_that_scores_the_target_highest(resnet18: nn.Module, photos64: Tensor) -> None:
    target = [7, 400]
    found = factorize(resnet18, photos64, "layer3", 4, target)
    assert found.scores is not None
    torch.testing.assert_close(found.best, found.scores[torch.arange(2), :, torch.tensor(target)].argmax(1))
    chosen = found.maps[torch.arange(2), found.best][:, None]
    want = F.interpolate(chosen, size=photos64.shape[-2:], mode="bilinear", align_corners=False)
    got = galleryvis.attribute(resnet18, photos64, "dff", target, layer="layer3")
    torch.testing.assert_close(got, want)
    # each image is factorized alone: the batch does not change its map
    alone = galleryvis.attribute(resnet18, photos64[1:], "dff", target[1:], layer="layer3", batch_size=1)
    torch.testing.assert_close(alone, got[1:])


def test_top_classes(resnet18: nn.Module, photos64: Tensor) -> None:
    found = factorize(resnet18, photos64, "layer4", 3)
    assert isinstance(found, Factors) and found.layer == "layer4" and found.scores is not None
    indices, probabilities = found.top_classes(2)
    assert indices.shape == probabilities.shape == (2, 3, 2)
    torch.testing.assert_close(indices, found.scores.topk(2, dim=-1).indices)
    torch.testing.assert_close(probabilities, found.scores.softmax(-1).topk(2, dim=-1).values)


def test_default_layer_is_the_cam_layer(resnet18: nn.Module, photos64: Tensor) -> None:
    assert factorize(resnet18, photos64[:1], n_components=2).layer == "layer4"


def test_a_layer_without_a_grid_is_refused_in_one_line(resnet18: nn.Module, photos64: Tensor) -> None:
    for call in (lambda: galleryvis.attribute(resnet18, photos64, "dff", 1, layer="fc"),
                 lambda: factorize(resnet18, photos64, "fc")):
        with pytest.raises(LayerError, match="'fc' outputs shape") as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_bad_n_components_is_refused_in_one_line(resnet18: nn.Module, photos64: Tensor, n: object) -> None:
    with pytest.raises(ValueError, match="n_components must be an int >= 1") as info:
        factorize(resnet18, photos64, "layer4", n)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="n_components") as info:
        galleryvis.attribute(resnet18, photos64, "dff", 1, n_components=n)
    assert "\n" not in str(info.value)
