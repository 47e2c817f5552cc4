"""Scores of attribution maps, one value per image, through the target's objective.

The gallery's own scores (:mod:`galleryvis.metrics.gallery`):

* :func:`deletion_insertion`: the causal deletion / insertion metrics of Petsiuk et al. 2018
  (RISE, https://arxiv.org/abs/1806.07421). Pixels are ranked by the map; the deletion curve
  follows the target's confidence while the top-ranked pixels are replaced by a substrate, the
  insertion curve while they are copied onto a blurred version of the image. Lower deletion AUC
  and higher insertion AUC mean a more faithful map.
* :func:`sanity` / :func:`sanity_many`: the cascading model-parameter randomization test of
  Adebayo et al. 2018 (https://arxiv.org/abs/1810.03292). Layers of a copy of the model are
  re-initialized from the logits towards the input and the map is recomputed after each step; a
  map that stays similar (high Spearman correlation) to the original does not depend on what
  the model learned.
* :func:`road`: ROAD (Rong et al. 2022, https://arxiv.org/abs/2202.00449), the target's
  confidence after the most or least relevant pixels are removed by noisy linear imputation.
* :func:`rank_techniques`: a model's techniques ordered by insertion - deletion.
* :func:`random_map`, :func:`center_gaussian_map`: the baselines every ranking should include.

Quantus-grade metrics under Quantus's class names in snake case
(:mod:`galleryvis.metrics.evaluation`): faithfulness curves and correlations, robustness,
complexity, randomisation, completeness, Average Drop / Increase and localisation against a
mask or boxes.

Every function here leaves the caller's model as it found it (training flags, ``requires_grad``,
in-place flags, parameters, no hooks); :func:`sanity` never touches it at all (it works on a
deep copy). See docs/metrics.md for the protocols and measured costs.
"""
from galleryvis.metrics.evaluation import (attribution_localisation, auc_localisation, average_drop,
                                           average_increase, avg_sensitivity, box_mask, completeness, complexity,
                                           faithfulness_correlation, infidelity, irof, local_lipschitz_estimate,
                                           max_sensitivity, monotonicity_correlation, pixel_flipping, pointing_game,
                                           random_logit, region_perturbation, relative_input_stability,
                                           relevance_mass_accuracy, relevance_rank_accuracy, sparseness,
                                           sufficiency, top_k_intersection)
from galleryvis.metrics.meta_evaluation import (METRICS, Agreement, MetricInfo, agreement,
                                                agreement_by_category, kendall_tau_b, metrics_table,
                                                unknown_metrics)
from galleryvis.metrics.gallery import (DeletionInsertion, Sanity, auc, center_gaussian_map, deletion_insertion,
                                        linear_imputation, random_map, rank_techniques, road, sanity, sanity_many,
                                        spearman)

__all__ = ["METRICS", "Agreement", "DeletionInsertion", "MetricInfo", "Sanity", "agreement", "agreement_by_category",
           "kendall_tau_b", "metrics_table", "sufficiency", "unknown_metrics", "attribution_localisation", "auc", "auc_localisation", "average_drop",
           "average_increase", "avg_sensitivity", "box_mask", "center_gaussian_map", "completeness", "complexity",
           "deletion_insertion", "faithfulness_correlation", "infidelity", "irof", "linear_imputation",
           "local_lipschitz_estimate", "max_sensitivity", "monotonicity_correlation", "pixel_flipping",
           "pointing_game", "random_logit", "random_map", "rank_techniques", "region_perturbation",
           "relative_input_stability", "relevance_mass_accuracy", "relevance_rank_accuracy", "road", "sanity",
           "sanity_many", "sparseness", "spearman", "top_k_intersection"]
