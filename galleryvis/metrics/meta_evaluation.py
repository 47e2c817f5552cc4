"""What each Quantus-grade metric is, and how far the metrics of one category agree.

* :data:`METRICS`: the one declaration of every metric of :mod:`galleryvis.metrics.evaluation`: its
  category, its direction (higher or lower is better), its cost in model passes per image,
  the question it answers and its reference. docs/metrics.md's table is :func:`metrics_table`.
* :func:`agreement`: meta-evaluation. Given per-technique scores of several metrics (techniques
  x metrics), Kendall's tau-b between every pair of metric columns, each column turned so that
  higher is better: 1 where two metrics rank the techniques alike, -1 where they reverse each
  other, near 0 where their rankings are unrelated. Its mean over the pairs says whether a
  ranking of techniques is robust or an artefact of one metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

Category = Literal["faithfulness", "robustness", "complexity", "randomisation", "axiomatic", "localisation"]
#: The categories in the order the tables list them (Quantus's).
CATEGORIES: tuple[str, ...] = ("faithfulness", "robustness", "complexity", "randomisation", "axiomatic",
                               "localisation")


@dataclass(frozen=True)
class MetricInfo:
    """One metric's declaration: ``category``; ``higher_is_better``; ``passes``, its model passes
    per image as a formula of its settings; ``question`` it answers; ``reference``;
    ``one_channel``: it reads one value per pixel (a CAM), so a gallery gives it a map of several
    channels as its one-channel view; ``compares_images``: an image's value depends on the other
    images of the call (so a gallery calls it on one technique's maps at a time)."""

    category: Category
    higher_is_better: bool
    passes: str
    question: str
    reference: str
    one_channel: bool = False
    compares_images: bool = False


def _m(category: Category, better: str, passes: str, question: str, reference: str, one_channel: bool = False,
       compares_images: bool = False) -> MetricInfo:
    return MetricInfo(category, {"higher": True, "lower": False}[better], passes, question, reference, one_channel,
                      compares_images)


#: Every metric of :mod:`galleryvis.metrics.evaluation` by its name in :mod:`galleryvis.metrics`.
METRICS: dict[str, MetricInfo] = {
    "pixel_flipping": _m(
        "faithfulness", "lower", "C·H·W / `features_in_step`",
        "does removing what the map ranks first destroy the target soonest? (AUC of the target as elements "
        "are replaced, one unit per step)", "Bach et al. 2015"),
    "region_perturbation": _m(
        "faithfulness", "higher", "1 + min(`regions_evaluation`, patches)",
        "the same by `patch_size` squares: area under f(x) − f(x perturbed) (higher with `order=\"morf\"`, "
        "the default)", "Samek et al. 2017"),
    "monotonicity_correlation": _m(
        "faithfulness", "higher",
        "1 + draws · C·H·W / `features_in_step` (draws: `nr_samples` for `\"uniform\"`, 1 for a constant)",
        "do more relevant features change the target more? (Spearman correlation of a group's relevance "
        "with the squared change when it alone is replaced)", "Nguyen & Martinez 2020 (\"Monotonicity (Nguyen)\")"),
    "irof": _m(
        "faithfulness", "higher", "1 + superpixels (SLIC's default: about 100)",
        "does removing superpixels by mean relevance destroy the target soonest? (area over the relative curve)",
        "Rieger & Hansen 2020"),
    "faithfulness_correlation": _m(
        "faithfulness", "higher", "1 + `nr_runs`",
        "does the map's sum on a random subset predict the drop when that subset is removed? (Pearson over "
        "`nr_runs` subsets)", "Bhatt et al. 2020"),
    "infidelity": _m(
        "faithfulness", "lower", "1 + squares per patch size (36 at 24 × 24 with 4 px squares)",
        "does the map's sum times the removed input predict the drop when squares are removed? (mean squared "
        "gap over the steps, then over `perturb_patch_sizes`)", "Yeh et al. 2019"),
    "sufficiency": _m(
        "faithfulness", "higher", "1",
        "do the other images with a map within `threshold` of this one get the same predicted class? (their "
        "share; over the images of the call)", "Dasgupta et al. 2022", compares_images=True),
    "average_drop": _m(
        "faithfulness", "lower", "2", "how much of the target is lost on the image times its map?",
        "Chattopadhay et al. 2018 (Grad-CAM++)", one_channel=True),
    "average_increase": _m(
        "faithfulness", "higher", "2", "is the target higher on the image times its map? (1 or 0)",
        "Chattopadhay et al. 2018", one_channel=True),
    "max_sensitivity": _m(
        "robustness", "lower", "1 + `nr_samples` explanations",
        "how much does the map change under small input noise? (largest ‖Δmap‖ / ‖map‖ over `nr_samples` "
        "draws)", "Yeh et al. 2019"),
    "avg_sensitivity": _m(
        "robustness", "lower", "1 + `nr_samples` explanations", "the same, averaged over the draws",
        "Yeh et al. 2019"),
    "local_lipschitz_estimate": _m(
        "robustness", "lower", "1 + `nr_samples` explanations",
        "how fast can the map change near the input? (largest ‖Δmap‖ / ‖Δinput‖ over `nr_samples` Gaussian "
        "draws)", "Alvarez-Melis & Jaakkola 2018"),
    "relative_input_stability": _m(
        "robustness", "lower", "1 + `nr_samples` explanations",
        "how much does the map change relative to how much the input changed, both elementwise relative? "
        "(largest ratio over `nr_samples` draws)", "Agarwal et al. 2022"),
    "sparseness": _m(
        "complexity", "higher", "0", "is the map concentrated on few features? (Gini index)",
        "Chalasani et al. 2020"),
    "complexity": _m(
        "complexity", "lower", "0", "how spread is the map? (entropy of its values)", "Bhatt et al. 2020"),
    "random_logit": _m(
        "randomisation", "lower", "2 explanations",
        "does the map change when another class is explained? (SSIM of the target's map with a random other "
        "class's)", "Sixt et al. 2020"),
    "completeness": _m(
        "axiomatic", "lower", "2",
        "does the map sum to f(x) − f(baseline)? (`relative_error`, lower is better; `verdict`, Quantus's "
        "exact test)", "Sundararajan et al. 2017"),
    "pointing_game": _m(
        "localisation", "higher", "0", "is the map's maximum on the object?", "Zhang et al. 2018"),
    "relevance_mass_accuracy": _m(
        "localisation", "higher", "0", "what share of the map's total lies on the object?", "Arras et al. 2022"),
    "relevance_rank_accuracy": _m(
        "localisation", "higher", "0", "of the K most relevant pixels (K = object area), what share lies on it?",
        "Arras et al. 2022"),
    "top_k_intersection": _m(
        "localisation", "higher", "0", "of the `k` most relevant pixels, what share lies on the object?",
        "Theiner et al. 2021"),
    "attribution_localisation": _m(
        "localisation", "higher", "0", "what share of the (positive) map lies on the object?",
        "Kohlbrenner et al. 2020"),
    "auc_localisation": _m(
        "localisation", "higher", "0",
        "how well do the map's values separate object from background? (ROC AUC; `metrics.auc` keeps its "
        "meaning, the deletion curves' area)", "Fawcett 2006"),
}


#: The category of each score the gallery computes of its own (:mod:`galleryvis.metrics.gallery`),
#: by its name in a cell's scores; as Quantus files its counterparts (ROAD and pixel flipping are
#: faithfulness, the model parameter randomisation test is randomisation).
GALLERY_CATEGORIES: dict[str, Category] = {"deletion_auc": "faithfulness", "insertion_auc": "faithfulness",
                                           "road_morf": "faithfulness", "road_lerf": "faithfulness",
                                           "sanity": "randomisation"}


def unknown_metrics(names: Sequence[str]) -> list[str]:
    """One message for each of ``names`` that :data:`METRICS` does not declare (with a did-you-mean)."""
    from galleryvis.registry import suggest

    return [f"unknown metric {name!r}{suggest(name, METRICS)} (docs/metrics.md lists them)"
            for name in names if name not in METRICS]


def metrics_table() -> str:
    """docs/metrics.md's table of the metrics (Markdown), by category, from :data:`METRICS`."""
    rows = ["| metric | category | question | better | model passes per image | reference |",
            "|---|---|---|---|---|---|"]
    for category in CATEGORIES:
        for name, m in METRICS.items():
            if m.category == category:
                better = "higher" if m.higher_is_better else "lower"
                rows.append(f"| `{name}` | {category} | {m.question} | {better} | {m.passes} | {m.reference} |")
    return "\n".join(rows)


def kendall_tau_b(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b of two 1-D arrays over the positions where both are finite: (concordant -
    discordant pairs) / sqrt(pairs untied in ``a`` x pairs untied in ``b``); NaN when fewer than
    two positions are left or one side is constant there."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"kendall_tau_b needs two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    kept = np.isfinite(a) & np.isfinite(b)
    a, b = a[kept], b[kept]
    upper = np.triu_indices(len(a), 1)
    sa, sb = np.sign(a[:, None] - a[None])[upper], np.sign(b[:, None] - b[None])[upper]
    untied = float(np.count_nonzero(sa)) * float(np.count_nonzero(sb))
    return float((sa * sb).sum() / math.sqrt(untied)) if untied > 0 else math.nan


@dataclass(frozen=True, eq=False)
class Agreement:
    """Result of :func:`agreement`.

    Attributes:
        metrics: the metric columns' names, in order.
        tau: (M, M) Kendall's tau-b between the columns, each turned so that higher is better
            (1 on the diagonal, NaN where a column is constant).
        mean: the mean of ``tau`` over the pairs of distinct columns, NaN pairs left out.
    """

    metrics: tuple[str, ...]
    tau: np.ndarray
    mean: float


def agreement(scores: Mapping[str, Sequence[float]] | np.ndarray, higher_is_better: Sequence[bool] | None = None,
              metrics: Sequence[str] | None = None) -> Agreement:
    """How far metrics agree on the ranking of techniques: Kendall's tau-b between every pair of
    metric columns (see :class:`Agreement`).

    Args:
        scores: a mapping metric name -> one score per technique (the techniques in the same
            order in every column), or an array (techniques, metrics).
        higher_is_better: each column's direction; by default :data:`METRICS`' declaration of
            each name (then ``scores`` must be a mapping of declared metrics, or ``metrics``
            must name the array's columns).
        metrics: the columns' names for an array (default ``"0"``, ``"1"``, ...).

    A lower-is-better column is negated, so a positive tau always means the two metrics
    prefer the same techniques. Techniques where either column is NaN are left out of that pair.
    """
    if isinstance(scores, Mapping):
        if metrics is not None:
            raise ValueError("metrics names an array's columns; a mapping of scores names its own")
        names = [str(k) for k in scores]
        try:
            table = np.column_stack([np.asarray(v, dtype=np.float64) for v in scores.values()]) if scores else None
        except ValueError:
            raise ValueError(f"every metric needs one score per technique, got lengths "
                             f"{[len(v) for v in scores.values()]}") from None
    else:
        table = np.asarray(scores, dtype=np.float64)
        if table.ndim != 2:
            raise ValueError(f"scores must be a (techniques, metrics) array or a mapping, got shape {table.shape}")
        names = [str(j) for j in range(table.shape[1])] if metrics is None else list(metrics)
        if len(names) != table.shape[1]:
            raise ValueError(f"metrics names {len(names)} columns for a scores array with {table.shape[1]}")
    if table is None or table.ndim != 2 or table.shape[1] < 2:
        raise ValueError(f"agreement needs at least two metric columns, got {names}")
    if higher_is_better is None:
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ValueError(f"no declared direction for {unknown}; pass higher_is_better (one bool per metric)")
        higher_is_better = [METRICS[n].higher_is_better for n in names]
    directions = list(higher_is_better)
    if len(directions) != len(names) or not all(isinstance(d, (bool, np.bool_)) for d in directions):
        raise ValueError(f"higher_is_better needs one bool per metric ({len(names)}), got {higher_is_better!r}")
    turned = np.where(np.asarray(directions, dtype=bool), table, -table)
    m = len(names)
    tau = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            tau[i, j] = tau[j, i] = kendall_tau_b(turned[:, i], turned[:, j])
    for i in range(m):
        if np.unique(turned[np.isfinite(turned[:, i]), i]).size < 2:
            tau[i, i] = math.nan
    pairs = tau[np.triu_indices(m, 1)]
    mean = float(np.nanmean(pairs)) if np.isfinite(pairs).any() else math.nan
    return Agreement(tuple(names), tau, mean)


def agreement_by_category(scores: Mapping[str, Sequence[float]]) -> dict[str, Agreement]:
    """:func:`agreement` of the declared metrics of ``scores`` (name -> one score per technique)
    within each category that has two metrics or more, by category in :data:`CATEGORIES` order."""
    unknown = [n for n in scores if n not in METRICS]
    if unknown:
        raise ValueError(f"no declared category for {unknown}; see galleryvis.metrics.METRICS")
    out = {}
    for category in CATEGORIES:
        mine = {n: v for n, v in scores.items() if METRICS[n].category == category}
        if len(mine) >= 2:
            out[category] = agreement(mine)
    return out
