"""Meta-evaluation: Kendall's tau-b between metric columns against scipy, and the metrics' declarations
against Quantus's and the docs."""
from __future__ import annotations

import inspect
import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from galleryvis.metrics import evaluation
from galleryvis import metrics

stats = pytest.importorskip("scipy.stats")


#: Tiny batches: one thread is faster than several waiting on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def _scipy_tau(a: np.ndarray, b: np.ndarray) -> float:
    kept = np.isfinite(a) & np.isfinite(b)
    return float(stats.kendalltau(a[kept], b[kept], variant="b").statistic)


@pytest.mark.parametrize("seed", range(6))
def test_agreement_equals_scipy_kendall_tau_b_value_by_value(seed):
    rng = np.random.default_rng(seed)
    techniques, columns = int(rng.integers(3, 12)), int(rng.integers(2, 6))
    table = rng.integers(0, 4, (techniques, columns)).astype(float)  # few levels: many ties
    table[:, 0] = rng.normal(size=techniques)
    if seed % 2:
        table[rng.integers(techniques), rng.integers(columns)] = np.nan
    directions = rng.integers(0, 2, columns).astype(bool).tolist()
    result = metrics.agreement(table, higher_is_better=directions)
    turned = np.where(directions, table, -table)
    for i, j in itertools.product(range(columns), repeat=2):
        if i != j:
            np.testing.assert_allclose(result.tau[i, j], _scipy_tau(turned[:, i], turned[:, j]), rtol=0, atol=1e-12)
    pairs = [result.tau[i, j] for i, j in itertools.combinations(range(columns), 2)]
    np.testing.assert_allclose(result.mean, np.nanmean(pairs), rtol=0, atol=1e-12)
    assert result.metrics == tuple(str(j) for j in range(columns))


def test_agreement_turns_lower_is_better_columns_by_the_declared_direction():
    scores = {"pixel_flipping": [0.1, 0.2, 0.3, 0.4], "irof": [9.0, 7.0, 5.0, 1.0], "sufficiency": [1, 1, 0.5, 0]}
    result = metrics.agreement(scores)  # pixel flipping: lower is better; the other two: higher
    assert result.metrics == tuple(scores)
    assert result.tau[0, 1] == 1.0 and result.tau[0, 2] == result.tau[1, 2] > 0.9  # sufficiency has a tie
    np.testing.assert_allclose(result.tau[0, 2], _scipy_tau(-np.array(scores["pixel_flipping"]),
                                                            np.array(scores["sufficiency"])), rtol=0, atol=1e-12)
    constant = metrics.agreement({**scores, "average_increase": [1, 1, 1, 1]})
    assert math.isnan(constant.tau[3, 3]) and math.isnan(constant.tau[0, 3]) and constant.mean == result.mean
    both = metrics.agreement_by_category({**scores, "sparseness": [1, 2, 3, 4], "complexity": [4, 3, 2, 1]})
    assert list(both) == ["faithfulness", "complexity"] and both["complexity"].mean == 1.0


@pytest.mark.parametrize("call, words", [
    (lambda: metrics.agreement({"pixel_flipping": [1, 2, 3]}), "at least two metric columns"),
    (lambda: metrics.agreement({"irof": [1, 2], "mine": [2, 1]}), "no declared direction for ['mine']"),
    (lambda: metrics.agreement([[1, 2], [3, 4]], [True]), "one bool per metric (2)"),
    (lambda: metrics.agreement({"irof": [1, 2], "sparseness": [2, 1, 3]}), "one score per technique"),
    (lambda: metrics.agreement(np.zeros(3), [True]), "(techniques, metrics) array"),
])
def test_agreement_errors_are_one_line(call, words):
    with pytest.raises(ValueError) as error:
        call()
    assert words in str(error.value) and "\n" not in str(error.value)


def test_every_metric_is_declared_once_and_matches_quantus():
    """Directions and categories as Quantus 0.6 declares them, except where docs/metrics.md says why."""
    quantus = pytest.importorskip("quantus")
    scored = {name for name, f in inspect.getmembers(evaluation, inspect.isfunction)
              if not name.startswith("_") and f.__module__ == evaluation.__name__
              and list(inspect.signature(f).parameters)[:2] == ["model", "inputs"]}
    assert scored == set(metrics.METRICS)
    differ = {"region_perturbation": "direction",  # Quantus: LOWER, for an area under f(x) - f(x perturbed)
              "completeness": "direction"}  # Quantus's HIGHER is its verdict; the error is lower-is-better
    only_ours = {"average_drop", "average_increase"}
    names = {"irof": "IROF", "auc_localisation": "AUC"}
    for name, info in metrics.METRICS.items():
        if name in only_ours:
            continue
        cls = getattr(quantus, names.get(name, "".join(w.title() for w in name.split("_"))))
        assert cls.evaluation_category.value.lower() == info.category, name
        if differ.get(name) != "direction":
            assert (cls.score_direction.value.lower() == "higher") == info.higher_is_better, name


def test_the_docs_table_is_the_declarations():
    page = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert metrics.metrics_table() in page


def test_agreement_of_the_faithfulness_metrics_on_a_small_model():
    """End to end: five techniques scored by four faithfulness metrics on a seeded 32 px CNN."""
    from galleryvis import attribute

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 4
    maps = {t: attribute(model, x, t, None) for t in ("vanilla", "grad_x_image")}
    maps["random"] = metrics.random_map((4, 1, 32, 32), seed=0)
    maps["centre"] = metrics.center_gaussian_map((4, 1, 32, 32))
    maps["minus_grad_x_image"] = -maps["grad_x_image"]
    settings = {"softmax": False, "perturb_baseline": 0.0}
    columns = {
        "pixel_flipping": lambda m: metrics.pixel_flipping(model, x, m, None, features_in_step=128, **settings),
        "region_perturbation": lambda m: metrics.region_perturbation(model, x, m, None, patch_size=8, **settings),
        "faithfulness_correlation": lambda m: metrics.faithfulness_correlation(model, x, m, None, nr_runs=20,
                                                                               subset_size=256, **settings),
        "infidelity": lambda m: metrics.infidelity(model, x, m, None, perturb_patch_sizes=[8], **settings),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = {name: [float(np.nanmean(score(m))) for m in maps.values()] for name, score in columns.items()}
    result = metrics.agreement_by_category(scores)["faithfulness"]
    assert result.metrics == tuple(columns)
    np.testing.assert_allclose(result.tau, result.tau.T)
    for i, j in itertools.combinations(range(len(columns)), 2):
        a, b = (np.array(scores[result.metrics[k]]) * (1 if metrics.METRICS[result.metrics[k]].higher_is_better
                                                        else -1) for k in (i, j))
        np.testing.assert_allclose(result.tau[i, j], _scipy_tau(a, b), rtol=0, atol=1e-12)
    assert -1 <= result.mean <= 1
