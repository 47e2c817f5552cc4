"""galleryvis.metrics' Quantus-grade metrics against Quantus 0.6 and torchcam, value by value.

Quantus normalises maps by the batch's maximum and takes "black" / "mean" baselines over the
batch; galleryvis does both per image, so Quantus is called on one image at a time here, and
baselines are given as numbers where the two define "black" differently.
"""
from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from galleryvis import metrics

quantus = pytest.importorskip("quantus")

ATOL = 1e-6
SIZE = 24  # 3 * 24 * 24 elements: features_in_step = 48 keeps a pixel's channels in one step


@pytest.fixture(autouse=True)
def _quantus_on_numpy_2(monkeypatch):
    """Quantus 0.6 calls np.trapz, which numpy 2.4 removed; np.trapezoid is the same rule."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    warnings.filterwarnings("ignore", module="quantus")


#: Tiny batches: one thread is faster than several waiting on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def _cnn(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()


@pytest.fixture(scope="module")
def work():
    model = _cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, SIZE, SIZE, generator=g)
    maps = torch.randn(3, 1, SIZE, SIZE, generator=g)
    y = np.array([0, 3, 1])
    mask = np.zeros((3, 1, SIZE, SIZE), dtype=bool)
    mask[:, :, 6:18, 4:20] = True
    top = int(maps[0, 0].argmax())  # image 0's maximum lies in its mask: the pointing game hits
    mask[0, 0, top // SIZE, top % SIZE] = True
    return model, x, maps, y, mask


def _quantus(metric, model, x, maps, y, mask=None) -> np.ndarray:
    """Quantus's value for each image, scored alone (its normalisation and baselines are per batch)."""
    out = []
    for i in range(len(x)):
        a = None if maps is None else maps[i:i + 1].numpy()  # None: Quantus explains
        v = metric(model=model, x_batch=x[i:i + 1].numpy(), y_batch=y[i:i + 1], a_batch=a,
                   s_batch=None if mask is None else mask[i:i + 1], channel_first=True, device="cpu")
        out.append(float(np.ravel(v)[0]))
    return np.array(out)


@pytest.mark.parametrize("name, cls", [("sparseness", "Sparseness"), ("complexity", "Complexity")])
def test_complexity_metrics_equal_quantus(work, name, cls):
    model, x, maps, y, _ = work
    ours = getattr(metrics, name)(model, x, maps, y)
    theirs = _quantus(getattr(quantus, cls)(disable_warnings=True), model, x, maps, y)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


@pytest.mark.parametrize("softmax", [True, False])
def test_pixel_flipping_equals_quantus(work, softmax):
    model, x, maps, y, _ = work
    ours = metrics.pixel_flipping(model, x, maps, y, features_in_step=48, perturb_baseline=-1.5, softmax=softmax)
    q = quantus.PixelFlipping(features_in_step=48, perturb_baseline=-1.5, return_auc_per_sample=True,
                              disable_warnings=True)
    theirs = _quantus(partial(q, softmax=softmax), model, x, maps, y)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL * (1 if softmax else 10))


def test_mean_baseline_is_recomputed_each_step_as_quantus(work):
    model, x, maps, y, _ = work
    ours = metrics.pixel_flipping(model, x, maps, y, features_in_step=48, perturb_baseline="mean")
    q = quantus.PixelFlipping(features_in_step=48, perturb_baseline="mean", return_auc_per_sample=True,
                              disable_warnings=True)
    np.testing.assert_allclose(ours, _quantus(q, model, x, maps, y), rtol=0, atol=ATOL)


@pytest.mark.parametrize("order, patch_size", [("morf", 8), ("morf", 5), ("lerf", 5)])
def test_region_perturbation_equals_quantus_auc(work, order, patch_size):
    model, x, maps, y, _ = work
    ours = metrics.region_perturbation(model, x, maps, y, patch_size=patch_size, order=order, regions_evaluation=12,
                                       perturb_baseline=0.5)
    q = quantus.RegionPerturbation(patch_size=patch_size, order=order, regions_evaluation=12, perturb_baseline=0.5,
                                   disable_warnings=True)
    curves = [np.asarray(q(model=model, x_batch=x[i:i + 1].numpy(), y_batch=y[i:i + 1],
                           a_batch=maps[i:i + 1].numpy(), channel_first=True, device="cpu"))[0] for i in range(3)]
    np.testing.assert_allclose(ours, [np.trapezoid(c) for c in curves], rtol=0, atol=ATOL)


def test_monotonicity_correlation_equals_quantus(work):
    model, x, maps, y, _ = work
    ours = metrics.monotonicity_correlation(model, x, maps, y, features_in_step=48, perturb_baseline=0.3)
    q = quantus.MonotonicityCorrelation(features_in_step=48, perturb_baseline=0.3, nr_samples=2,
                                        disable_warnings=True)
    np.testing.assert_allclose(ours, _quantus(q, model, x, maps, y), rtol=0, atol=ATOL)


@pytest.mark.parametrize("baseline", ["mean", 0.2])
def test_irof_equals_quantus(work, baseline):
    """Quantus 0.6's IROF runs on one-channel inputs only (its mask has one channel)."""
    model = _cnn(channels=1)
    x = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    maps, y = work[2], work[3]
    ours = metrics.irof(model, x, maps, y, perturb_baseline=baseline)
    q = quantus.IROF(return_aggregate=False, perturb_baseline=baseline, disable_warnings=True)
    np.testing.assert_allclose(ours, _quantus(q, model, x, maps, y), rtol=0, atol=ATOL)


@pytest.mark.parametrize("technique", ["vanilla", "gradcam"])
def test_random_logit_equals_quantus(work, technique):
    from galleryvis import attribute

    model, x, _, y, _ = work

    def explain(model, inputs, targets, **kwargs):
        return attribute(model, torch.as_tensor(inputs), technique, [int(t) for t in targets]).numpy()

    ours = metrics.random_logit(model, x, technique, y, num_classes=5)
    q = partial(quantus.RandomLogit(num_classes=5, disable_warnings=True), explain_func=explain)
    np.testing.assert_allclose(ours, _quantus(q, model, x, None, y), rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="random_logit .* class target"):
        metrics.random_logit(model, x, technique, lambda out: out[:, 0], num_classes=5)


def test_infidelity_equals_quantus_and_captum(work):
    """Quantus's infidelity replaces one more square per step (its n_perturb_samples repeats the
    same steps); captum's, given those perturbations as its samples, is the same mean squared gap."""
    from captum.metrics import infidelity

    model, x, maps, y, _ = work
    maps = maps * 0.05  # a map on the scale of the logits' changes
    ours = metrics.infidelity(model, x, maps, y, perturb_patch_sizes=[4, 6], perturb_baseline=0.3)
    q = quantus.Infidelity(perturb_patch_sizes=[4, 6], perturb_baseline=0.3, n_perturb_samples=1,
                           disable_warnings=True)
    np.testing.assert_allclose(ours, _quantus(q, model, x, maps, y), rtol=1e-6, atol=ATOL)

    squares = (SIZE // 4) ** 2
    square = (torch.arange(SIZE)[:, None] // 4) * (SIZE // 4) + torch.arange(SIZE)[None] // 4

    def steps(rows):  # captum repeats each image for its samples: sample k removes squares 0 ... k
        k = torch.arange(len(rows)) % squares
        removed = torch.where((square[None] <= k.view(-1, 1, 1))[:, None], rows - 0.3, torch.zeros_like(rows))
        return removed, rows - removed

    theirs = infidelity(model, steps, x, maps.expand_as(x), target=torch.as_tensor(y), n_perturb_samples=squares)
    np.testing.assert_allclose(metrics.infidelity(model, x, maps, y, perturb_baseline=0.3), theirs.numpy(),
                               rtol=1e-6, atol=ATOL)


def test_completeness_verdict_equals_quantus_and_relative_error_is_the_gap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x = torch.randn(3, 3, 8, 8)
    y = np.array([1, 2, 0])
    complete = model[1].weight[torch.as_tensor(y)].detach().view(3, 3, 8, 8) * x  # gradient x input: exact here
    arbitrary = torch.randn(3, 3, 8, 8)
    for maps in (complete, arbitrary):
        ours = metrics.completeness(model, x, maps, y, perturb_baseline=0.0)
        q = quantus.Completeness(perturb_baseline=0.0, normalise=False, disable_warnings=True)
        assert ours["verdict"].tolist() == _quantus(q, model, x, maps, y).astype(bool).tolist()
    assert (metrics.completeness(model, x, complete, y, perturb_baseline=0.0)["relative_error"] < 1e-5).all()
    logits = model(x).detach()[np.arange(3), y] - model(torch.zeros_like(x)).detach()[np.arange(3), y]
    gap = np.abs(arbitrary.sum((1, 2, 3)).double().numpy() - logits.double().numpy()) / np.abs(logits.double().numpy())
    np.testing.assert_allclose(metrics.completeness(model, x, arbitrary, y, perturb_baseline=0.0)["relative_error"],
                               gap, rtol=1e-5)


@pytest.mark.parametrize("softmax", [True, False])
def test_average_drop_and_increase_equal_torchcam(work, softmax):
    from torchcam.methods import GradCAM
    from torchcam.metrics import ClassificationMetric

    model, x, _, y, _ = work
    theirs = []
    read = partial(torch.softmax, dim=-1) if softmax else None
    with GradCAM(model, target_layer="2") as extractor:  # torchcam explains what logits_fn returns
        cams = extractor(y.tolist(), read(model(x)) if read else model(x))[0].detach()
        metric = ClassificationMetric(extractor, read)
        for i in range(len(x)):
            metric.reset()
            metric.update(x[i:i + 1], class_idx=int(y[i]))
            theirs.append(metric.summary())
    drop = metrics.average_drop(model, x, cams, y, softmax=softmax)
    increase = metrics.average_increase(model, x, cams, y, softmax=softmax)
    # torchcam divides in float32: on logits (which may be near 0) that is a relative 1e-5
    np.testing.assert_allclose(drop, [t["avg_drop"] for t in theirs], rtol=0 if softmax else 1e-5, atol=ATOL)
    assert increase.tolist() == [t["conf_increase"] for t in theirs]


@pytest.mark.parametrize("name, cls, settings", [
    ("pointing_game", "PointingGame", {}),
    # signed, a random map's total is near 0, where Quantus's float32 sums drift by 1e-5 relative
    ("relevance_mass_accuracy", "RelevanceMassAccuracy", {"abs": True}),
    ("relevance_rank_accuracy", "RelevanceRankAccuracy", {}),
    ("top_k_intersection", "TopKIntersection", {"k": 100}),
    ("top_k_intersection", "TopKIntersection", {"k": 100, "concept_influence": True}),
    ("attribution_localisation", "AttributionLocalisation", {}),
    ("attribution_localisation", "AttributionLocalisation", {"positive_attributions": True, "abs": False}),
    ("auc_localisation", "AUC", {}),
])
def test_localisation_equals_quantus(work, name, cls, settings):
    model, x, maps, y, mask = work
    ours = getattr(metrics, name)(model, x, maps, y, mask=mask, **settings)
    theirs = _quantus(getattr(quantus, cls)(disable_warnings=True, **settings), model, x, maps, y, mask)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)
    if name == "pointing_game":
        assert ours[0] > 0  # the fixture's hit, so the test sees both outcomes


def test_weighted_localisation_weighs_by_the_mask_share(work):
    """Quantus 0.6 weighs attribution localisation by a size that depends on the batch, and its
    weighted pointing game raises; galleryvis weighs both by the mask's share of H*W pixels."""
    model, x, maps, y, mask = work
    share = mask.reshape(3, -1).mean(1)
    hit = metrics.pointing_game(model, x, maps, y, mask=mask)
    np.testing.assert_allclose(metrics.pointing_game(model, x, maps, y, mask=mask, weighted=True), hit * (1 - share))
    plain = metrics.attribution_localisation(model, x, maps, y, mask=mask)
    weighted = metrics.attribution_localisation(model, x, maps, y, mask=mask, weighted=True)
    np.testing.assert_allclose(weighted, plain * share)


def test_maps_are_normalised_per_image(work):
    model, x, maps, y, _ = work
    scaled = maps.clone()
    scaled[1] *= 128  # a power of two: the scaled map is exact
    for metric, settings in ((metrics.sparseness, {}), (metrics.pixel_flipping, {"features_in_step": 48})):
        np.testing.assert_allclose(metric(model, x, scaled, y, **settings), metric(model, x, maps, y, **settings),
                                   rtol=0, atol=1e-12)


def test_black_is_a_black_photo_in_input_units(work):
    model, x, maps, y, _ = work
    black = metrics.pixel_flipping(model, x, maps, y, features_in_step=48, perturb_baseline="black",
                                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    number = metrics.pixel_flipping(model, x, maps, y, features_in_step=48, perturb_baseline=-2.0)
    np.testing.assert_array_equal(black, number)


def test_results_do_not_depend_on_the_other_images_or_the_batch_size(work):
    model, x, maps, y, _ = work
    settings = {"patch_size": 6, "regions_evaluation": 9, "perturb_baseline": 0.1}
    full = metrics.region_perturbation(model, x, maps, y, **settings)
    alone = metrics.region_perturbation(model, x[1:2], maps[1:2], y[1:2], **settings)
    assert alone[0] == full[1]
    np.testing.assert_allclose(metrics.region_perturbation(model, x, maps, y, batch_size=1, **settings), full,
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("call", [
    lambda m, x, a, y, **kw: metrics.completeness(m, x, a, y, perturb_baseline=0.0, **kw)["relative_error"],
    lambda m, x, a, y, **kw: metrics.average_drop(m, x, a[:, 0], y, **kw),
    lambda m, x, a, y, **kw: metrics.faithfulness_correlation(m, x, a, y, nr_runs=5, subset_size=64, **kw),
    lambda m, x, a, y, **kw: metrics.random_logit(m, x, "vanilla", y, num_classes=5, **kw),
    lambda m, x, a, y, **kw: metrics.max_sensitivity(m, x, "vanilla", y, nr_samples=3, **kw),
])
def test_images_sharing_batches_score_as_each_image_alone(work, call):
    """Clean passes, two-copy metrics and explanations share batches across images: an image's
    value is its value alone (to float rounding)."""
    model, x, maps, y, _ = work
    full = call(model, x, maps, y)
    alone = np.concatenate([call(model, x[i:i + 1], maps[i:i + 1], y[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(full, alone, rtol=1e-6, atol=ATOL)


def test_callable_targets_read_scores_and_refuse_confidence_in_one_line(work):
    model, x, maps, _, _ = work
    with pytest.raises(ValueError) as error:
        metrics.pixel_flipping(model, x, maps, lambda out: out[:, 0], features_in_step=48)
    assert "\n" not in str(error.value) and "pixel_flipping" in str(error.value)
    by_callable = metrics.pixel_flipping(model, x, maps, lambda out: out[:, 0], features_in_step=48, softmax=False)
    by_class = metrics.pixel_flipping(model, x, maps, 0, features_in_step=48, softmax=False)
    np.testing.assert_array_equal(by_callable, by_class)


# --- stochastic metrics: galleryvis's seeded draws agree with Quantus's and captum's in expectation


@pytest.fixture(scope="module")
def spread():
    """Six images whose scores spread out: maps from faithful (grad x image) to its opposite, and
    the same images scaled from 0.1 to 10 (the noise of the robustness metrics matters less and less)."""
    from galleryvis import attribute

    model = _cnn()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, SIZE, SIZE, generator=g)
    y = np.array([0, 1, 2, 3, 4, 0])
    grad = attribute(model, x, "grad_x_image", y.tolist()).sum(1, keepdim=True)
    w = torch.linspace(1, -1, 6).view(6, 1, 1, 1)
    maps = w * grad + (1 - w.abs()) * torch.randn(6, 1, SIZE, SIZE, generator=g) * grad.abs().mean()
    return model, x, maps, y, x * torch.logspace(-1, 1, 6).view(6, 1, 1, 1)


def _r(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_faithfulness_correlation_agrees_with_quantus_in_expectation(spread):
    model, x, maps, y, _ = spread
    ours = metrics.faithfulness_correlation(model, x, maps, y, nr_runs=100, subset_size=64, perturb_baseline=0.0)
    np.random.seed(0)
    q = quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=64, perturb_baseline=0.0, return_aggregate=False,
                                        disable_warnings=True)
    theirs = q(model=model, x_batch=x.numpy(), y_batch=y, a_batch=maps.numpy(), channel_first=True, device="cpu")
    assert _r(ours, theirs) >= 0.95
    assert ours[0] > 0 > ours[-1]


def test_sensitivity_agrees_with_quantus_and_captum_in_expectation(spread):
    from captum.metrics import sensitivity_max

    from galleryvis import attribute

    model, _, _, y, x = spread

    def explain(model, inputs, targets, **kwargs):  # Quantus's explain_func
        return attribute(model, torch.as_tensor(inputs), "vanilla", [int(t) for t in targets]).numpy()

    np.random.seed(0)
    torch.manual_seed(0)
    for ours, cls in ((metrics.max_sensitivity, quantus.MaxSensitivity),
                      (metrics.avg_sensitivity, quantus.AvgSensitivity)):
        values = ours(model, x, "vanilla", y, nr_samples=20)
        theirs = cls(nr_samples=20, disable_warnings=True)(model=model, x_batch=x.numpy(), y_batch=y, a_batch=None,
                                                          explain_func=explain, channel_first=True, device="cpu")
        assert _r(values, theirs) >= 0.95, ours.__name__
    lipschitz = metrics.local_lipschitz_estimate(model, x, "vanilla", y, nr_samples=20)
    per_image = partial(quantus.LocalLipschitzEstimate(nr_samples=20, disable_warnings=True), explain_func=explain)
    assert _r(lipschitz, _quantus(per_image, model, x, None, y)) >= 0.95  # Quantus normalises per batch
    stability = metrics.relative_input_stability(model, x, "vanilla", y, nr_samples=20)
    q = quantus.RelativeInputStability(nr_samples=20, return_nan_when_prediction_changes=False, disable_warnings=True)
    assert _r(stability, q(model=model, x_batch=x.numpy(), y_batch=y, a_batch=None, explain_func=explain,
                           channel_first=True, device="cpu")) >= 0.95
    by_captum = sensitivity_max(lambda inputs, target: (attribute(model, inputs[0], "vanilla", target.tolist()),),
                                (x,), perturb_radius=0.2, n_perturb_samples=20, target=torch.as_tensor(y))
    assert _r(metrics.max_sensitivity(model, x, "vanilla", y, nr_samples=20), by_captum.numpy()) >= 0.95


def test_monotonicity_with_uniform_draws_agrees_with_quantus_in_expectation(spread):
    model, x, maps, y, _ = spread
    ours = metrics.monotonicity_correlation(model, x, maps, y, features_in_step=96, nr_samples=10)
    np.random.seed(0)
    q = quantus.MonotonicityCorrelation(features_in_step=96, nr_samples=10, disable_warnings=True)
    theirs = q(model=model, x_batch=x.numpy(), y_batch=y, a_batch=maps.numpy(), channel_first=True, device="cpu")
    assert _r(ours, theirs) >= 0.95


def test_seeded_draws_are_the_same_for_an_image_alone_or_in_a_batch(spread):
    model, x, maps, y, scaled = spread
    settings = {"nr_runs": 10, "subset_size": 64, "perturb_baseline": 0.0}
    full = metrics.faithfulness_correlation(model, x, maps, y, **settings)
    assert metrics.faithfulness_correlation(model, x[2:3], maps[2:3], y[2:3], **settings)[0] == full[2]
    settings = {"order": "random", "patch_size": 6, "regions_evaluation": 6, "perturb_baseline": 0.0}
    full = metrics.region_perturbation(model, x, maps, y, **settings)
    assert metrics.region_perturbation(model, x[3:4], maps[3:4], y[3:4], **settings)[0] == full[3]
    assert metrics.region_perturbation(model, x, maps, y, seed=1, **settings).tolist() != full.tolist()
    full = metrics.max_sensitivity(model, scaled, "vanilla", y, nr_samples=4)
    assert metrics.max_sensitivity(model, scaled[4:5], "vanilla", y[4:5], nr_samples=4)[0] == full[4]
    assert metrics.max_sensitivity(model, scaled, "vanilla", y, nr_samples=4, seed=1).tolist() != full.tolist()


def test_metrics_leave_a_training_model_with_batch_norm_as_it_was(work):
    from galleryvis.hooks import hook_count

    _, x, maps, y, mask = work
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).train()
    model[1].running_var.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics.pixel_flipping(model, x, maps, y, features_in_step=288)
    metrics.irof(model, x, maps, y, perturb_baseline=0.0)
    metrics.max_sensitivity(model, x, "vanilla", y, nr_samples=2)
    metrics.average_drop(model, x, maps, y)
    assert all(m.training for m in model.modules()) and model[2].inplace and hook_count(model) == 0
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("call, words", [
    (lambda m, x, a, y, s: metrics.pointing_game(m, x, a, y, mask=s[:, :, :10]), "mask must have shape"),
    (lambda m, x, a, y, s: metrics.pixel_flipping(m, x, a, y, features_in_step=7), "features_in_step (7)"),
    (lambda m, x, a, y, s: metrics.region_perturbation(m, x, a, y, perturb_baseline="white"), "perturb_baseline"),
    (lambda m, x, a, y, s: metrics.top_k_intersection(m, x, a, y, mask=s, k=10 ** 6), "k must be"),
    (lambda m, x, a, y, s: metrics.sparseness(m, x, a[:2], y), "maps must have shape"),
])
def test_user_errors_are_one_line_naming_the_setting(work, call, words):
    model, x, maps, y, mask = work
    with pytest.raises(ValueError) as error:
        call(model, x, maps, y, mask)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_box_mask_covers_the_boxes_and_refuses_one_outside_the_image():
    one = metrics.box_mask([1, 2, 4, 3], 5, 6)
    assert one.shape == (5, 6) and one.sum() == 3 and one[2, 1:4].all()
    two = metrics.box_mask([[0, 0, 1, 1], [4.5, 3.2, 6, 5]], 5, 6)
    assert two.sum() == 1 + 2 * 2 and two[0, 0] and two[4, 5]
    np.testing.assert_array_equal(metrics.box_mask(np.array([[0, 0, 1, 1], [4.5, 3.2, 6, 5]]), 5, 6), two)
    for bad, words in (([0, 0, 7, 1], "the image is 6 x 5"), ([2, 0, 1, 1], "x0 < x1"), ([1, 2, 3], "four numbers"),
                       ([[0, 0, 1, 1], [0, 1]], "four numbers"), ("abcd", "four numbers"), ([], "four numbers")):
        with pytest.raises(ValueError, match=words):
            metrics.box_mask(bad, 5, 6)


# --- sufficiency: a metric over the images of the call --------------------------------------------


@pytest.fixture(scope="module")
def clustered():
    """Ten 32 px images the model puts in three classes, with maps in three clusters (one map
    alone), each map's largest |value| 1 so Quantus's batch normalisation is the per-image one."""
    model = _cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, 32, 32, generator=g) * 4 + torch.randn(10, 3, 1, 1, generator=g) * 2
    centres = torch.randn(3, 1, 32, 32, generator=g)
    maps = centres[torch.tensor([0, 1, 0, 2, 1, 0, 0, 1, 2, 0])] + 0.1 * torch.randn(10, 1, 32, 32, generator=g)
    maps[9] = torch.randn(1, 32, 32, generator=g)
    return model, x, maps / maps.abs().amax((1, 2, 3), keepdim=True)


@pytest.mark.parametrize("threshold", [0.6, 0.95])
def test_sufficiency_equals_quantus_and_is_nan_without_neighbours(clustered, threshold):
    model, x, maps = clustered
    ours = metrics.sufficiency(model, x, maps, None, threshold=threshold)
    q = quantus.Sufficiency(threshold=threshold, disable_warnings=True)
    theirs = np.asarray(q(model=model, x_batch=x.numpy(), y_batch=np.zeros(10, dtype=int), a_batch=maps.numpy(),
                          channel_first=True, device="cpu"))
    alone = np.isnan(ours)
    np.testing.assert_allclose(ours[~alone], theirs[~alone], rtol=0, atol=ATOL)
    assert (theirs[alone] == 0).all()  # Quantus: 0 for an image no other map is close to
    assert alone.tolist() == ([False] * 9 + [True] if threshold == 0.6 else [False] * 10)
    assert len(set(ours[~alone].round(6))) >= 3


def test_sufficiency_reads_predicted_classes_and_refuses_other_targets(clustered):
    model, x, maps = clustered
    top1 = metrics.sufficiency(model, x, maps, None)
    np.testing.assert_array_equal(metrics.sufficiency(model, x, maps, [4] * 10), top1)  # the target is not read
    assert np.isnan(metrics.sufficiency(model, x[:1], maps[:1], None)).all()
    with pytest.raises(ValueError, match="sufficiency compares predicted classes") as error:
        metrics.sufficiency(model, x, maps, lambda out: out[:, 0])
    assert "\n" not in str(error.value)


def test_sufficiency_leaves_out_features_constant_over_the_call(clustered):
    """Quantus's standardised distance divides by their zero variance: every distance is NaN, every value 0."""
    model, x, maps = clustered
    banded = maps.clone()
    banded[:, :, :4] = 0
    q = quantus.Sufficiency(disable_warnings=True)
    theirs = q(model=model, x_batch=x.numpy(), y_batch=np.zeros(10, dtype=int), a_batch=banded.numpy(),
               channel_first=True, device="cpu")
    assert (np.asarray(theirs) == 0).all()
    np.testing.assert_array_equal(metrics.sufficiency(model, x, banded, None), metrics.sufficiency(model, x, maps, None))
