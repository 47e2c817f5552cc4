"""The ``quantus`` section: each Quantus-grade metric of galleryvis against Quantus 0.6 on the same work.

Same model (the first of ``--models``, ``weights=None`` from ``--seed``), the same inputs (the
bundled photos), the same maps (galleryvis's vanilla gradient summed over the channels, scaled
so that each map's largest |value| is 1: Quantus's normalisation by the batch's maximum is then
galleryvis's per image), the same targets (top-1), the same settings (Quantus's constructor
arguments under their own names, constant baselines given as numbers) and, for the robustness
metrics, the same explanations (galleryvis's vanilla gradient as Quantus's ``explain_func``).
Quantus runs all images in one call (``batch_size`` = the number of images: its perturbation
loops run once per step over the whole batch, so that is as large as helps); galleryvis runs
its perturbed copies in chunks of ``--batch-size``. Before timing, each pair's values are
compared (as tests/test_evaluation.py does), so the timing compares the same work.
"""
from __future__ import annotations

import inspect
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

#: Quick and full settings of the section: images, input size and the samples of the stochastic metrics.
QUICK = {"images": 4, "size": 96, "samples": 4, "runs": 16}
FULL = {"images": 4, "size": 192, "samples": 10, "runs": 64}


@dataclass(frozen=True)
class Work:
    """One metric's row: Quantus's class, the settings both get (Quantus's names), what the metric
    reads (``maps``, ``technique`` or ``mask``), and Quantus's extra constructor arguments
    (ones that only make it return the same quantity)."""

    quantus: str
    settings: dict[str, Any]
    reads: str = "maps"
    quantus_only: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False


def works(size: int, samples: int, runs: int) -> dict[str, Work]:
    """Every metric of :data:`galleryvis.metrics.METRICS` that Quantus 0.6 has, with settings for ``size`` px."""
    hw = size * size  # a multiple of 3 (96, 192 px): features_in_step keeps a pixel's three channels in one step
    patch = size // 8
    robust = {"nr_samples": samples}
    return {
        "pixel_flipping": Work("PixelFlipping", {"features_in_step": 3 * hw // 48, "perturb_baseline": 0.0},
                               quantus_only={"return_auc_per_sample": True}),
        "region_perturbation": Work("RegionPerturbation", {"patch_size": patch, "regions_evaluation": 32,
                                                           "perturb_baseline": 0.0}),
        "monotonicity_correlation": Work("MonotonicityCorrelation", {"features_in_step": 3 * hw // 24,
                                                                     "perturb_baseline": 0.0, "nr_samples": 1}),
        "irof": Work("IROF", {"perturb_baseline": 0.0}, quantus_only={"return_aggregate": False}),
        "faithfulness_correlation": Work("FaithfulnessCorrelation", {"nr_runs": runs, "subset_size": 224,
                                                                     "perturb_baseline": 0.0},
                                         quantus_only={"return_aggregate": False}, stochastic=True),
        "infidelity": Work("Infidelity", {"perturb_patch_sizes": [patch], "perturb_baseline": 0.0},
                           quantus_only={"n_perturb_samples": 1}),
        "sufficiency": Work("Sufficiency", {"threshold": 0.6}),
        "max_sensitivity": Work("MaxSensitivity", robust, "technique", stochastic=True),
        "avg_sensitivity": Work("AvgSensitivity", robust, "technique", stochastic=True),
        "local_lipschitz_estimate": Work("LocalLipschitzEstimate", robust, "technique", stochastic=True),
        "relative_input_stability": Work("RelativeInputStability", robust, "technique",
                                         quantus_only={"return_nan_when_prediction_changes": False},
                                         stochastic=True),
        "sparseness": Work("Sparseness", {}),
        "complexity": Work("Complexity", {}),
        "random_logit": Work("RandomLogit", {"num_classes": 1000}, "technique"),
        "completeness": Work("Completeness", {"perturb_baseline": 0.0}),
        "pointing_game": Work("PointingGame", {}, "mask"),
        "relevance_mass_accuracy": Work("RelevanceMassAccuracy", {}, "mask"),
        "relevance_rank_accuracy": Work("RelevanceRankAccuracy", {}, "mask"),
        "top_k_intersection": Work("TopKIntersection", {"k": hw // 16}, "mask"),
        "attribution_localisation": Work("AttributionLocalisation", {}, "mask"),
        "auc_localisation": Work("AUC", {}, "mask"),
    }


#: The technique the robustness metrics and Random Logit explain again, on both sides.
TECHNIQUE = "vanilla"


class Setup:
    """The shared work: model, inputs, targets, maps and masks, and Quantus's call for each metric."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, layer: str, batch_size: int) -> None:
        import galleryvis
        from galleryvis import metrics

        self.model, self.x, self.batch_size = model, x, batch_size
        with torch.no_grad():
            self.y = model(x).argmax(1).numpy()
        # the vanilla gradient summed over the channels: continuous values, so that no two orders of tied
        # pixels (galleryvis sorts stably, Quantus does not) can tell the two apart
        maps = galleryvis.attribute(model, x, "vanilla", self.y.tolist()).sum(1, keepdim=True)
        top = maps.abs().amax((1, 2, 3), keepdim=True)
        if (top == 0).any():
            raise ValueError("a gradient map is all zero: choose another --seed")
        self.maps = (maps / top).float()  # each map's largest |value| is 1: Quantus's batch max is the per-image one
        n, _, h, w = x.shape
        # ground truth: the central half of each photo, where the bundled photos' subjects are
        self.mask = np.stack([metrics.box_mask([w // 4, h // 4, 3 * w // 4, 3 * h // 4], h, w)] * n)[:, None]

    def explain(self, model: Any, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        """Quantus's ``explain_func``: galleryvis's map of :data:`TECHNIQUE`, as galleryvis's metrics compute it."""
        import galleryvis

        return galleryvis.attribute(self.model, torch.as_tensor(inputs), TECHNIQUE, [int(t) for t in targets],
                                    batch_size=self.batch_size).numpy()

    def ours(self, name: str, work: Work) -> Callable[[], np.ndarray]:
        from galleryvis import metrics

        fn = getattr(metrics, name)
        extra = {"batch_size": self.batch_size} if "batch_size" in inspect.signature(fn).parameters else {}
        what = {"maps": self.maps, "mask": self.maps, "technique": TECHNIQUE}[work.reads]
        more = {"mask": self.mask} if work.reads == "mask" else {}
        return lambda: fn(self.model, self.x, what, self.y, **work.settings, **more, **extra)

    def theirs(self, name: str, work: Work, images: slice | None = None) -> Callable[[], np.ndarray]:
        """Quantus's call on all the images at once (or on ``images``), with galleryvis's defaults of
        ``abs``, ``normalise`` and ``softmax`` passed explicitly."""
        import quantus

        from galleryvis import metrics

        params = inspect.signature(getattr(metrics, name)).parameters
        shared = {k: params[k].default for k in ("abs", "normalise") if k in params}
        call = {"softmax": params["softmax"].default} if "softmax" in params else {}
        metric = getattr(quantus, work.quantus)(**work.settings, **shared, **work.quantus_only, disable_warnings=True)
        sel = images or slice(None)
        x = self.x[sel].numpy()
        kwargs = dict(model=self.model, x_batch=x, y_batch=self.y[sel], channel_first=True, device="cpu",
                      batch_size=len(x), **call)
        if work.reads == "technique":
            kwargs.update(a_batch=None, explain_func=self.explain)
        else:
            kwargs.update(a_batch=self.maps[sel].numpy())
        if work.reads == "mask":
            kwargs.update(s_batch=self.mask[sel])
        return lambda: metric(**kwargs)


def _values(name: str, v: Any) -> np.ndarray:
    """One float per image from either side's result (Quantus's region curves: their trapezoid AUC;
    completeness: galleryvis's verdict field)."""
    if isinstance(v, np.ndarray) and v.dtype.names:
        return v["verdict"].astype(np.float64)
    if name == "region_perturbation" and np.asarray(v, dtype=object).ndim >= 1 and np.ndim(v[0]) == 1:
        return np.array([np.trapezoid(np.asarray(c, dtype=np.float64)) for c in v])
    return np.asarray(v, dtype=np.float64).reshape(-1)


def agreement(setup: Setup, name: str, work: Work, ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """How the two sides' values compare: for deterministic metrics the largest |difference|,
    also relative to the largest |value| (agreeing within 1e-4 relative + 1e-5: float32 passes at
    other batch sizes and with batch norm folded); for stochastic ones (independent draws) both
    sides' means, not judged here."""
    a, b = _values(name, ours), _values(name, theirs)
    if name == "random_logit":  # Quantus draws one class per image of a call; galleryvis's draw is an image's alone
        b = np.concatenate([_values(name, setup.theirs(name, work, slice(i, i + 1))()) for i in range(len(a))])
    if name == "sufficiency":  # Quantus: 0 where no other map is close; galleryvis: NaN
        b = np.where(np.isnan(a), np.nan, b)
    both = ~(np.isnan(a) & np.isnan(b))
    if work.stochastic:  # independent draws: their agreement in expectation is what the tests check (r >= 0.95)
        return {"stochastic": True, "ok": None, "mean_ours": float(np.nanmean(a)), "mean_theirs": float(np.nanmean(b)),
                "ours": a.tolist(), "theirs": b.tolist()}
    diff = float(np.nanmax(np.abs(a[both] - b[both]))) if both.any() else 0.0
    scale = float(np.nanmax(np.abs(b[both]))) if both.any() else 0.0
    ok = bool(np.allclose(a[both], b[both], rtol=1e-4, atol=1e-5, equal_nan=True))
    return {"stochastic": False, "max_diff": diff, "rel_diff": diff / scale if scale > 0 else diff, "ok": ok,
            "ours": a.tolist(), "theirs": b.tolist()}


def run(model_name: str, quick: bool, seed: int, batch_size: int, repeats: int, budget: float,
        only: list[str] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Time every metric on both sides in interleaved rounds (bench.worker's), after checking their values."""
    if threads:
        torch.set_num_threads(threads)
    import galleryvis.metrics  # noqa: F401 (imported before timing)
    from galleryvis.engine.layers import default_layer

    from .common import build_model, load_inputs
    from .worker import _interleaved

    if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz, which numpy 2.4 removed; np.trapezoid is the same rule
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    warnings.filterwarnings("ignore", module="quantus")
    cfg = QUICK if quick else FULL
    device = torch.device("cpu")
    model = build_model(model_name, seed, device)
    x = load_inputs(cfg["images"], cfg["size"], device)
    layer = default_layer(model, x[:1])
    setup = Setup(model, x, layer, batch_size)
    rows = []
    spec = {"repeats": max(repeats, 3), "budget": max(budget, 60.0)}  # every call joins 3 or more rounds
    for name, work in works(cfg["size"], cfg["samples"], cfg["runs"]).items():
        if only and name not in only:
            continue
        print(f"  [quantus] {name} ...", file=sys.stderr, flush=True)
        row: dict[str, Any] = {"metric": name, "quantus": work.quantus, "settings": work.settings}
        try:
            ours, theirs = setup.ours(name, work), setup.theirs(name, work)
            row["agreement"] = agreement(setup, name, work, ours(), theirs())
        except Exception as exc:  # noqa: BLE001 - a failing metric is a row with its error
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            rows.append(row)
            continue
        ready = [({"side": "galleryvis"}, ours), ({"side": "quantus"}, theirs)]
        for rec in _interleaved(ready, spec, len(x), device, model):
            row[rec["side"]] = rec
        rows.append(row)
    return {"model": model_name, "images": len(x), "size": cfg["size"], "layer": layer, "batch_size": batch_size,
            "threads": torch.get_num_threads(), "rows": rows, "rounds": spec["repeats"],
            **{k: cfg[k] for k in ("samples", "runs")}}


def table(rep: Any, r: dict[str, Any]) -> str:
    """The section's table: seconds per call on each side, their ratio and the ≥ 1× target."""
    from .report import secs

    head = (f"galleryvis metrics against Quantus 0.6 · {r['model']} (weights=None) · cpu · {r['threads']} threads"
            f" · {r['images']} photos at {r['size']}×{r['size']} · galleryvis batch_size {r['batch_size']}, Quantus "
            f"batch_size {r['images']} (all images in one batch)")
    rows = []
    for row in r["rows"]:
        name = row["metric"]
        if "error" in row:
            rows.append([name, "—", "—", "—", "—", f"error: {row['error'][:90]}"])
            continue
        ag = row["agreement"]
        same = (f"≈ means {ag['mean_ours']:.3g} and {ag['mean_theirs']:.3g} (stochastic)" if ag["stochastic"]
                else ("✓" if ag["ok"] else "✗") + f" max |Δ| {ag['max_diff']:.1e} ({ag['rel_diff']:.0e} relative)")
        ours, theirs = row["galleryvis"], row["quantus"]
        if "error" in ours or "error" in theirs:
            rows.append([name, "—", "—", "—", same, f"error: {ours.get('error') or theirs.get('error')}"])
            continue
        ratio = theirs["seconds"] / ours["seconds"] if ours["seconds"] > 0 else float("inf")
        mark = rep.check(f"{name}: galleryvis at least as fast as Quantus 0.6 ({ratio:.2f}×)", ratio >= 1.0)
        rows.append([name, secs(ours["seconds"]), secs(theirs["seconds"]), f"{ratio:.2f}×",
                     same, f"≥ 1.0× {mark}"])
    settings = "; ".join(f"{row['metric']} {row['settings']}" for row in r["rows"] if row["settings"])
    lines = [rep.heading(head), "",
             rep.table(["metric", "galleryvis s", "Quantus s", "ratio", "same values", "target"], rows), "",
             f"seconds: median of {r['rounds']} interleaved rounds (after a warm-up call) of one call on all "
             f"{r['images']} images; ratio: Quantus ÷ galleryvis (> 1: galleryvis is faster); maps: the vanilla "
             f"gradient summed over the channels, each scaled to a largest |value| of 1; robustness and Random Logit "
             f"explain with galleryvis's '{TECHNIQUE}' on both sides; settings: {settings}"]
    return rep.join(lines)
