"""Faithfulness (deletion / insertion) and sanity (cascading randomization) scores.

The acceptance tests run the real EfficientNet-Lite0 on the default gallery's photos
(input_images/, preprocessed as the gallery does). This CPU is slow (about 0.4 s per Lite0
forward when shared), so they use fewer curve steps and cascade steps than the defaults; the
numbers at the default settings are in docs/metrics.md.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from galleryvis import IMAGENET_MEAN, IMAGENET_STD, attribute
from galleryvis.hooks import hook_count
from galleryvis.storage.images import fit, load_image, to_tensor
from galleryvis.metrics import gallery as gallery_metrics
from galleryvis.engine import Call
from galleryvis.engine import gaussian_blur
from galleryvis.metrics import (auc, center_gaussian_map, deletion_insertion, linear_imputation,
                                random_map, rank_techniques, road, sanity, sanity_many, spearman)

IMAGES = Path(__file__).resolve().parent.parent / "input_images"
STEPS = 5  # curve intervals in the Lite0 tests (default 20: 41 forwards per map and image)


def snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[bool], list[bool], list[bool]]:
    """Everything a metric could leave changed on a model."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [getattr(m, "inplace", None) for m in model.modules()])


def assert_untouched(model: nn.Module, before: tuple) -> None:
    state, training, grads, inplace = snapshot(model)
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert training == before[1] and grads == before[2] and inplace == before[3]
    assert hook_count(model) == 0


# --- the default gallery on the real Lite0 -----------------------------------------------------


@pytest.fixture(scope="module")
def default_photos() -> Tensor:
    """Every photo of the default gallery, as the gallery feeds them to Lite0: (4, 3, 224, 224)."""
    paths = sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    assert len(paths) == 4
    return torch.stack([to_tensor(fit(load_image(p), 224), IMAGENET_MEAN, IMAGENET_STD) for p in paths])


@pytest.fixture(scope="module")
def lite0_scores(lite0: nn.Module, default_photos: Tensor) -> dict:
    """Deletion / insertion of Grad-CAM and the random map on every default photo, in one call,
    then the random map once more in a call of its own (same inputs, same batch size). (The
    centre-Gaussian baseline is left out to save forwards; docs/metrics.md has its numbers.)"""
    n = len(default_photos)
    with torch.inference_mode():
        top1 = lite0(default_photos).argmax(1).tolist()
    maps = {
        "gradcam": attribute(lite0, default_photos, "gradcam", top1),
        "random": random_map((n, 1, 224, 224), seed=0),
    }
    before = snapshot(lite0)
    together = deletion_insertion(lite0, default_photos.repeat(2, 1, 1, 1), torch.cat(list(maps.values())),
                                  top1 * 2, steps=STEPS)
    again = deletion_insertion(lite0, default_photos, maps["random"].clone(), top1, steps=STEPS)
    assert_untouched(lite0, before)
    per = {name: (together.deletion_auc[i * n:(i + 1) * n], together.insertion_auc[i * n:(i + 1) * n])
           for i, name in enumerate(maps)}
    return {"per": per, "together": together, "random_again": again, "n": n, "top1": top1}


def test_gradcam_beats_the_random_map_on_both_curves(lite0_scores: dict) -> None:
    (gc_del, gc_ins), (rnd_del, rnd_ins) = lite0_scores["per"]["gradcam"], lite0_scores["per"]["random"]
    assert gc_ins.mean() > rnd_ins.mean()
    assert gc_del.mean() < rnd_del.mean()


def test_aucs_are_probabilities_and_curves_start_and_end_where_they_must(lite0_scores: dict) -> None:
    r = lite0_scores["together"]
    for a in (r.deletion_auc, r.insertion_auc, r.deletion_curve, r.insertion_curve):
        assert np.isfinite(a).all() and (a >= 0).all() and (a <= 1).all()
    assert r.deletion_curve.shape == r.insertion_curve.shape == (2 * lite0_scores["n"], STEPS + 1)
    # round(k / steps * H * W) pixels at point k
    np.testing.assert_allclose(r.fractions, np.linspace(0, 1, STEPS + 1), atol=1 / 224**2)
    # The unperturbed image opens the deletion curve and closes the insertion curve.
    np.testing.assert_array_equal(r.deletion_curve[:, 0], r.insertion_curve[:, -1])
    np.testing.assert_allclose(r.deletion_auc, auc(r.deletion_curve))
    assert r.targets.tolist() == lite0_scores["top1"] * 2
    for word in (f"{STEPS} steps", "zeros of the normalized tensor", "sigma 5", "softmax probability"):
        assert word in r.protocol
    assert r.protocol in r.describe(0) and str(r).count(r.protocol) == 2 * lite0_scores["n"]


def test_identical_inputs_give_identical_aucs(lite0_scores: dict) -> None:
    rnd_del, rnd_ins = lite0_scores["per"]["random"]
    again = lite0_scores["random_again"]
    # Same images and map, scored in another call next to other images: bit-identical.
    np.testing.assert_array_equal(again.deletion_auc, rnd_del)
    np.testing.assert_array_equal(again.insertion_auc, rnd_ins)
    n = lite0_scores["n"]
    np.testing.assert_array_equal(again.deletion_curve, lite0_scores["together"].deletion_curve[n:])


def test_identical_calls_are_bit_identical(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    # A repeated call is bit-identical too.
    maps = random_map(tiny_x.shape, seed=3)
    a = deletion_insertion(tiny_seq, tiny_x, maps, None, steps=8, batch_size=5)
    b = deletion_insertion(tiny_seq, tiny_x.clone(), maps.clone(), None, steps=8, batch_size=5)
    for field in ("deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_a_map_equal_to_the_random_baseline_ranks_last(lite0_scores: dict) -> None:
    per = lite0_scores["per"]
    again = lite0_scores["random_again"]
    means = {name: (float(d.mean()), float(i.mean())) for name, (d, i) in per.items()}
    means["imposter"] = (float(again.deletion_auc.mean()), float(again.insertion_auc.mean()))
    rows = rank_techniques(means)
    assert [(r["technique"], r["rank"]) for r in rows] == [("gradcam", 1), ("imposter", 2), ("random", 2)]


# --- sanity on the real Lite0 ------------------------------------------------------------------


def test_vanilla_gradients_fail_to_survive_cascading_randomization(lite0: nn.Module, photos224: Tensor) -> None:
    before = snapshot(lite0)
    rng = torch.get_rng_state()
    s = sanity(lite0, photos224, "vanilla", None, max_steps=2, seed=0)
    assert_untouched(lite0, before)
    assert torch.equal(torch.get_rng_state(), rng)
    np.testing.assert_allclose(s.control, 1.0)  # the unchanged model reproduces its map
    assert s.curve.shape == (2, 2) and np.array_equal(s.similarity, s.curve[-1])
    assert (s.similarity < 0.5).all(), s.similarity
    assert (s.control - s.similarity > 0.5).all()
    assert s.cascade[0][0] == "_fc" and s.cascade[-1][-1] == "_conv_stem"
    assert sum(len(step) for step in s.cascade) == 99
    assert "Adebayo" in s.protocol and "99 parametrized modules" in s.protocol


# --- small models: mechanics -------------------------------------------------------------------


class Patch(nn.Module):
    """Logits = (mean of the image's top-left quarter, 0): the evidence is known exactly."""

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        s = x[:, :, : h // 2, : w // 2].mean((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_the_right_map_deletes_fastest_and_inserts_fastest() -> None:
    x = torch.zeros(1, 3, 16, 16)
    x[..., :8, :8] = 1  # the evidence, in the top-left quarter
    right = torch.zeros(1, 1, 16, 16)
    right[..., :8, :8] = 1
    wrong = right.flip(-1)
    r = deletion_insertion(Patch(), x.repeat(2, 1, 1, 1), torch.cat([right, wrong]), 0, steps=4,
                           score="logit", blur_kernel=3, blur_sigma=1.0)
    # Deleting the top-left quarter first zeroes the logit after 1/4 of the pixels; the wrong map
    # deletes the (already black) top-right quarter first, then the rest in raster order.
    np.testing.assert_allclose(r.deletion_curve[0], [1, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(r.deletion_curve[1], [1, 1, 0.0, 0, 0], atol=1e-6)
    assert r.deletion_auc[0] < r.deletion_auc[1] and r.insertion_auc[0] > r.insertion_auc[1]
    assert "logit" in r.protocol


def test_rank_by_abs_and_signed_and_ties_in_raster_order() -> None:
    x = torch.ones(1, 1, 2, 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 4.0, 8.0], [0, 0, 0, 0]]))
    m = torch.tensor([[[[-5.0, 1.0], [1.0, 0.0]]]])
    signed = deletion_insertion(model, x, m, 0, steps=4, score="logit")
    absval = deletion_insertion(model, x, m, 0, steps=4, score="logit", rank_by="abs")
    # signed: pixels 1, 2 (tie, raster order), 3, then 0; abs: 0 first.
    np.testing.assert_allclose(signed.deletion_curve[0], [15, 13, 9, 1, 0])
    np.testing.assert_allclose(absval.deletion_curve[0], [15, 14, 12, 8, 0])


@pytest.mark.parametrize("substrate", ["zero", "black", "blur"])
def test_substrates_what_fully_deleted_images_become(substrate: str) -> None:
    seen: list[Tensor] = []

    class Spy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.extend(x.clone())
            return torch.zeros(len(x), 2)

    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    deletion_insertion(Spy(), x, torch.rand(1, 1, 12, 12), 0, steps=2, substrate=substrate)
    blurred = gaussian_blur(x)[0]
    expected = {"zero": torch.zeros(3, 12, 12), "blur": blurred,
                "black": ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(3, 1, 1).expand(3, 12, 12)}
    assert any(torch.allclose(s, expected[substrate]) for s in seen)
    assert any(torch.equal(s, x[0]) for s in seen) and any(torch.allclose(s, blurred) for s in seen)
    # 2 * steps + 1 distinct images (2 * steps with the blur substrate), each scored once.
    assert len(seen) == (4 if substrate == "blur" else 5)


def test_batches_respect_batch_size_and_model_mode_is_restored(tiny_shared: tuple) -> None:
    net = tiny_shared[0]
    net.train()
    sizes: list[int] = []
    handle = net.register_forward_pre_hook(lambda _m, inp: sizes.append(len(inp[0])))
    try:
        x = torch.randn(3, 3, 16, 16)
        r = deletion_insertion(net, x, torch.rand(3, 16, 16), [1, 2, 3], steps=3, batch_size=4)
    finally:
        handle.remove()
        net.eval()
    # 2 * 3 + 1 images per map, in batches of at most 4 that never mix images; targets given,
    # so no extra forward for them. First, batch-norm folding's probe and check (one image each).
    assert sizes == [1, 1] + [4, 3] * 3
    assert r.targets.tolist() == [1, 2, 3]
    assert net.relu.inplace is True


def test_maps_of_one_image_are_scored_together_as_each_would_be_alone(tiny_shared: tuple) -> None:
    """A gallery scores every technique of an image in one call: their perturbed inputs share
    batches and the image's unperturbed, blurred and deleted forwards are made once."""
    net = tiny_shared[0]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    maps = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    images, rank_by = [0, 0, 0, 1, 1], ["signed", "abs", "signed", "abs", "signed"]
    rows: list[int] = []
    handle = net.register_forward_pre_hook(lambda _m, inp: rows.append(len(inp[0])))
    try:
        together = deletion_insertion(net, x, maps, [1, 2], steps=4, rank_by=rank_by, images=images, batch_size=8)
    finally:
        handle.remove()
    # per image: M maps x 2 curves x (steps - 1) inner points + the original, blurred and
    # deleted image; first, batch-norm folding's probe and check (one image each)
    assert sum(rows) == 2 + (3 * 6 + 3) + (2 * 6 + 3)
    assert max(rows) == 8
    assert together.targets.tolist() == [1, 1, 1, 2, 2]
    for m, (i, r) in enumerate(zip(images, rank_by)):
        alone = deletion_insertion(net, x[i:i + 1], maps[m:m + 1], [1, 2][i], steps=4, rank_by=r, batch_size=8)
        np.testing.assert_allclose(together.deletion_curve[m], alone.deletion_curve[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(together.insertion_curve[m], alone.insertion_curve[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="images must index"):
        deletion_insertion(net, x, maps, None, images=[0, 0, 0, 1, 2])
    with pytest.raises(ValueError, match="rank_by"):
        deletion_insertion(net, x, maps, None, images=images, rank_by=["abs"])


def test_maps_of_another_size_are_resized_and_bad_arguments_raise(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    r = deletion_insertion(tiny_seq, tiny_x, torch.rand(4, 3, 8, 8), None, steps=2)
    assert r.deletion_curve.shape == (4, 3)
    with pytest.raises(ValueError, match="maps must have shape"):
        deletion_insertion(tiny_seq, tiny_x, torch.rand(3, 1, 32, 32), None)
    with pytest.raises(ValueError, match="substrate"):
        deletion_insertion(tiny_seq, tiny_x, torch.rand(4, 1, 32, 32), None, substrate="grey")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(tiny_seq, tiny_x, torch.rand(4, 1, 32, 32), None, steps=0)


def test_baselines_are_seeded_and_shaped() -> None:
    assert torch.equal(random_map((2, 1, 9, 7), 5), random_map((2, 1, 9, 7), 5))
    assert not torch.equal(random_map((2, 1, 9, 7), 5), random_map((2, 1, 9, 7), 6))
    smooth = random_map((2, 1, 64, 64), 0, cells=4)
    assert smooth.shape == (2, 1, 64, 64) and (smooth[..., 1:, :] - smooth[..., :-1, :]).abs().max() < 0.2
    c = center_gaussian_map((1, 1, 5, 5))
    assert c.shape == (1, 1, 5, 5) and c[0, 0, 2, 2] == c.max() == 1
    assert torch.equal(c, c.flip(-1)) and torch.equal(c, c.flip(-2))


def test_rank_techniques_orders_by_insertion_minus_deletion_and_shares_ties() -> None:
    rows = rank_techniques({"b": (0.1, 0.5), "a": (0.2, 0.6), "c": (0.3, 0.2), "d": (0.0, 0.1),
                            "nan": (math.nan, 0.5)})
    assert [r["technique"] for r in rows] == ["a", "b", "d", "c", "nan"]
    assert [r["rank"] for r in rows] == [1, 1, 3, 4, None]
    assert rows[0] == {"technique": "a", "deletion": 0.2, "insertion": 0.6, "score": pytest.approx(0.4), "rank": 1}


# --- sanity on small models --------------------------------------------------------------------


def test_spearman_matches_the_definition() -> None:
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 3.0]])
    np.testing.assert_allclose(spearman(a, a), [1, 1])
    np.testing.assert_allclose(spearman(a, -a), [-1, -1])
    # ties share their average rank: ranks (0.5, 0.5, 2, 3) vs (0, 1, 2, 3)
    r = np.array([0.5, 0.5, 2, 3]) - 1.5
    q = np.array([0, 1, 2, 3]) - 1.5
    np.testing.assert_allclose(spearman(a[1:], a[:1]), [r @ q / math.sqrt((r @ r) * (q @ q))])
    assert math.isnan(spearman(np.ones((1, 4)), a[:1])[0])


def test_sanity_many_says_how_far_its_cascade_is(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    """``within(done, total)`` rises to its total, one unit per attribute call (the original
    maps, the control, two cascade steps), finer while a long technique (occlusion) runs."""
    told: list[tuple[int, int]] = []
    sanity_many(tiny_seq, tiny_x, {"occlusion": Call("occlusion", params={"window": 8, "stride": 8})}, 0,
                max_steps=2, within=lambda done, total: told.append((done, total)))
    fractions = [d / t for d, t in told]
    assert fractions == sorted(fractions) and fractions[-1] == 1 and told[-1] == (4, 4)
    assert len(told) > 4  # the technique's own reports in between

def test_sanity_is_deterministic_leaves_the_model_alone_and_takes_params(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    before = snapshot(tiny_seq)
    a = sanity(tiny_seq, tiny_x, "smoothgrad", 0, max_steps=None, seed=1,
               technique_params={"seed": 2}, samples=2)
    b = sanity(tiny_seq, tiny_x, "smoothgrad", 0, max_steps=None, seed=1,
               technique_params={"seed": 2}, samples=2)
    assert_untouched(tiny_seq, before)
    np.testing.assert_array_equal(a.curve, b.curve)
    assert a.curve.shape == (4, 4)  # 3 convolutions and the linear layer, one step each
    assert [step for step in a.cascade] == [("11",), ("6",), ("3",), ("0",)]
    np.testing.assert_allclose(a.control, 1.0)
    c = sanity(tiny_seq, tiny_x, "gradcam", 0, layer="6", max_steps=2, seed=1)
    assert c.cascade == (("11", "6"), ("3", "0"))
    with pytest.raises(ValueError, match="given twice"):
        sanity(tiny_seq, tiny_x, "smoothgrad", 0, technique_params={"samples": 2}, samples=3)


def test_sanity_many_runs_every_technique_through_one_cascade_as_sanity_would(
        tiny_seq: nn.Module, tiny_x: Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    """One copy of the model, randomized once per step, and one shared call per step for all the
    techniques (a technique may come twice, at other layers or parameters): the same curves as
    each technique's own sanity check."""
    calls = {"vanilla": Call("vanilla"), "gradcam at 6": Call("gradcam", "6"), "gradcam at 3": Call("gradcam", "3"),
             "ig": Call("integrated_gradients", params={"steps": 4}),
             "ig, no x input": Call("integrated_gradients", params={"steps": 4, "multiply_by_inputs": False})}
    real, seen = gallery_metrics.attribute_calls, []

    def counted(model, x, calls, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen.append(sorted(calls))
        return real(model, x, calls, *args, **kwargs)

    monkeypatch.setattr(gallery_metrics, "attribute_calls", counted)
    before = snapshot(tiny_seq)
    many = sanity_many(tiny_seq, tiny_x, calls, 0, max_steps=2, seed=1, control=False)
    assert_untouched(tiny_seq, before)
    assert seen == [sorted(calls)] * 3  # the original maps, then one call per cascade step
    monkeypatch.setattr(gallery_metrics, "attribute_calls", real)
    for key, call in calls.items():
        alone = sanity(tiny_seq, tiny_x, call.name, 0, call.layer, max_steps=2, seed=1, technique_params=call.params)
        assert many[key].cascade == alone.cascade and many[key].protocol == alone.protocol
        assert many[key].control is None
        np.testing.assert_allclose(many[key].curve, alone.curve, rtol=0, atol=1e-6)


# --- ROAD ----------------------------------------------------------------------------------------


def test_road_matches_pytorch_grad_cam_on_lite0(lite0: nn.Module, photos224: Tensor) -> None:
    """Same Grad-CAM map of the cat photo, both orders: within 0.05 of ROADMostRelevantFirst / ROADLeastRelevantFirst
    (``return_diff=False``; their percentile is the share kept). Removing the most relevant 30 %
    must cost more probability than removing the least relevant 30 %."""
    road_ref = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    photos224 = photos224[:1]
    with torch.inference_mode():
        top1 = lite0(photos224).argmax(1).tolist()
    maps = attribute(lite0, photos224, "gradcam", top1)
    before = snapshot(lite0)
    ours = {order: road(lite0, photos224, maps, top1, percentile=30, order=order) for order in ("morf", "lerf")}
    assert_untouched(lite0, before)
    targets = [ClassifierOutputSoftmaxTarget(t) for t in top1]
    torch.manual_seed(0)  # their imputation noise comes from the global generator
    ref = {"morf": road_ref.ROADMostRelevantFirst(70)(photos224, maps[:, 0].numpy(), targets, lite0, return_diff=False),
           "lerf": road_ref.ROADLeastRelevantFirst(70)(photos224, maps[:, 0].numpy(), targets, lite0,
                                                      return_diff=False)}
    print("\n  ROAD 30 %: ours", {k: v.round(4).tolist() for k, v in ours.items()},
          "grad-cam", {k: v.round(4).tolist() for k, v in ref.items()})
    for order in ours:
        np.testing.assert_allclose(ours[order], ref[order], atol=0.05)
    assert (ours["morf"] < ours["lerf"]).all()


def test_road_imputes_the_neighbours_mean_and_is_seeded() -> None:
    """A removed pixel of a linear ramp is the ramp itself (the weighted neighbour mean is exact
    on a plane); kept pixels are untouched; noise is seeded per image, so batch == singles."""
    ramp = torch.linspace(0, 1, 16).expand(1, 3, 16, 16).contiguous()
    removed = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    removed[..., 4:12, 3:9] = True
    torch.testing.assert_close(linear_imputation(ramp, removed), ramp, rtol=0, atol=1e-6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    batch = road(model, x, maps, [0, 1, 2], percentile=40, order="lerf")
    singles = np.concatenate([road(model, x[i:i + 1], maps[i:i + 1], i, percentile=40, order="lerf")
                              for i in range(3)])
    np.testing.assert_allclose(batch, singles, rtol=1e-6)
    assert not np.allclose(batch, road(model, x, maps, [0, 1, 2], percentile=40, order="lerf", seed=1))
    for bad in ({"percentile": 100, "order": "morf"}, {"percentile": 10, "order": "most"}):
        with pytest.raises(ValueError):
            road(model, x, maps, 0, **bad)


# --- transformers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit", "swin", "convnext", "timm_vit", "deit", "timm_swin"])
def test_scores_on_transformers(transformers: dict[str, nn.Module], name: str) -> None:
    """Deletion / insertion and the sanity cascade on ViT, DeiT, Swin and ConvNeXt: curves that
    start and end at the model's own probabilities, every parametrized module randomized (the
    class and position embeddings' owners too), maps that no longer survive the full cascade,
    and the caller's model left as it was."""
    if name not in transformers:
        pytest.skip("timm is not installed")
    model = transformers[name]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x = x[..., :48, :] if name == "timm_vit" else x
    before = snapshot(model)
    with torch.no_grad():
        probs = model(x).softmax(1)
    target = probs.argmax(1).tolist()
    maps = attribute(model, x, "gradcam", target)
    scores = deletion_insertion(model, x, maps, target, steps=8)
    own = probs[range(2), target].numpy()
    np.testing.assert_allclose(scores.deletion_curve[:, 0], own, rtol=1e-4)
    np.testing.assert_allclose(scores.insertion_curve[:, -1], own, rtol=1e-4)
    calls = {"gradcam": Call("gradcam"), "lrp": Call("lrp"), "vanilla": Call("vanilla")}
    checks = sanity_many(model, x, calls, target, max_steps=3)
    assert_untouched(model, before)
    owners = sum(1 for m in model.modules() if next(m.parameters(recurse=False), None) is not None)
    for key, result in checks.items():
        assert sum(len(step) for step in result.cascade) == owners and result.curve.shape == (3, 2)
        assert np.isfinite(result.curve).all(), key
        np.testing.assert_allclose(result.control, 1.0, atol=1e-6)
        assert (result.similarity < 0.9).all(), (key, result.curve)
