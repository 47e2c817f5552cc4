"""Quantus-grade evaluation metrics: one value per image, equal to Quantus 0.6 on the same work.

Every function here is exported from :mod:`galleryvis.metrics` under Quantus's class name in
snake case and is called as ``(model, inputs, maps, target, **settings) -> np.ndarray`` (one
float per image). The settings carry Quantus's constructor arguments under the same names
(``abs``, ``normalise``, ``perturb_baseline``, ``features_in_step``, ``patch_size``, ...) plus
Quantus's ``softmax`` call argument: ``True`` reads the target's confidence, ``False`` its
score (:mod:`galleryvis.targets`), so every metric works for any objective, and a callable
target is refused in one line where a confidence is read.

Where Quantus 0.6 is loose, galleryvis is explicit (docs/metrics.md lists each case): maps are
normalised per image (Quantus divides by the batch's extremes); ``perturb_baseline="black"`` is
a black photo in the model's input units, ``(0 - mean) / std`` (Quantus takes the tensor's
minimum: pass a number to compare); ``"mean"`` is each image's own mean (Quantus's IROF takes
the batch's); curve metrics return their area per image. A result never depends on the other
images of the call (sufficiency aside, which compares them by definition) beyond float
rounding: the perturbed copies of one image are run in batches of their own, while the clean
passes of all images, and the two copies per image of completeness and Average Drop /
Increase, share batches of ``batch_size`` rows; a robustness metric explains each image and
its noisy copies in one call.

Metrics:

* faithfulness: :func:`pixel_flipping`, :func:`region_perturbation`,
  :func:`monotonicity_correlation` (Nguyen & Martinez 2020), :func:`irof`,
  :func:`faithfulness_correlation`, :func:`infidelity`, :func:`sufficiency` (over the images of
  the call);
* robustness (they take a technique's name instead of maps and explain again):
  :func:`max_sensitivity`, :func:`avg_sensitivity`, :func:`local_lipschitz_estimate`,
  :func:`relative_input_stability`;
* complexity: :func:`sparseness`, :func:`complexity`;
* randomisation: :func:`random_logit`;
* axiomatic: :func:`completeness` (Quantus's verdict and the relative error);
* :func:`average_drop`, :func:`average_increase` (Chattopadhay et al. 2018, as torchcam);
* localisation against a binary ``mask`` per image: :func:`pointing_game`,
  :func:`relevance_mass_accuracy`, :func:`relevance_rank_accuracy`, :func:`top_k_intersection`,
  :func:`attribution_localisation`, :func:`auc_localisation` (:func:`box_mask` makes a mask
  of boxes).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis import targets
from galleryvis.engine.changes import prepared
from galleryvis.engine import (DEFAULT_BATCH_SIZE, IMAGENET_MEAN, IMAGENET_STD, check_inputs, fast_layout, model_device,
                     pixel_value)
from galleryvis.engine.fold import folded

Target = targets.Target
#: A replacement value: a number in the model's input units, or a named one (see each metric).
Baseline = Union[float, str]
Order = Literal["morf", "lerf", "random"]


# --- shared pieces ------------------------------------------------------------------------------


def _maps(maps: Tensor | np.ndarray, x: Tensor, abs: bool, normalise: bool) -> np.ndarray:
    """``maps`` as float64 (N, 1 or C, H, W), resized bilinearly to the inputs' size, normalised
    per image by their largest |value| when ``normalise``, then made absolute when ``abs``."""
    m = maps.detach().cpu() if isinstance(maps, Tensor) else torch.as_tensor(np.asarray(maps))
    if m.dim() == 3:
        m = m[:, None]
    n, c = x.shape[:2]
    if m.dim() != 4 or m.shape[0] != n or m.shape[1] not in (1, c):
        raise ValueError(f"maps must have shape (N, 1 or {c}, H, W) or (N, H, W) with N = {n}, got {tuple(m.shape)}")
    if m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    a = m.double().numpy().copy()
    if normalise:
        a = normalise_by_max(a)
    return np.abs(a) if abs else a


def normalise_by_max(maps: np.ndarray) -> np.ndarray:
    """Each map (first axis) divided by its largest |value| (Quantus's ``normalise_by_max``, per
    image rather than per batch); all-zero maps stay as they are."""
    a = np.asarray(maps, dtype=np.float64)
    top = np.abs(a.reshape(len(a), -1)).max(1).reshape((-1,) + (1,) * (a.ndim - 1))
    return a / np.where(top > 0, top, 1.0)


def _masks(mask: Tensor | np.ndarray, x: Tensor) -> np.ndarray:
    """A binary ``mask`` per image as bool (N, H*W); one line naming its shape when it does not fit."""
    s = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask)
    n, _, h, w = x.shape
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.shape != (n, h, w):
        raise ValueError(f"mask must have shape (N, H, W) = {(n, h, w)} (one binary mask per image), got {s.shape}")
    return s.astype(bool).reshape(n, h * w)


def _baseline(value: Baseline, x: Tensor, mean: Sequence[float], std: Sequence[float], allowed: Sequence[str]
              ) -> Tensor | str:
    """A constant replacement for every image, (1 or C, 1, 1), or the name of one computed per image."""
    if isinstance(value, str):
        if value not in allowed:
            raise ValueError(f"unknown perturb_baseline {value!r}; give a number or one of {list(allowed)}")
        if value != "black":
            return value
        c = x.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean and std need {c} values for perturb_baseline='black'")
        return pixel_value(0.0, x, mean, std)[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"perturb_baseline must be a number or one of {list(allowed)}, got {value!r}")
    return torch.full((1, 1, 1), float(value), dtype=x.dtype, device=x.device)


def _descending(v: np.ndarray) -> np.ndarray:
    """Per-row order of ``v`` from the largest value; ties keep their position (a stable sort)."""
    return np.argsort(-v, axis=-1, kind="stable")


def _trapezoid(curves: np.ndarray) -> np.ndarray:
    """Quantus's AUC: the trapezoid rule over the curve's points, one unit apart: (N, K) -> (N,)."""
    return np.trapezoid(curves, dx=1, axis=-1) if curves.shape[-1] > 1 else np.zeros(len(curves))


#: Fewest copies a metric's call runs for its passes to be folded (:func:`galleryvis.engine.fold.folded`).
FOLD_MIN_ROWS = 32


class _Reader:
    """Runs perturbed copies of one image through the model in chunks and reads the target."""

    def __init__(self, run: Callable[[Tensor], object], objective: targets.Objective, softmax: bool,
                 batch_size: int, x: Tensor) -> None:
        self.run, self.objective, self.softmax, self.batch_size, self.x = run, objective, softmax, batch_size, x
        self._clean: np.ndarray | None = None

    def clean(self, i: int) -> float:
        """The target on the clean image ``i``: every image's clean pass is run at the first
        call, together in chunks of ``batch_size``, instead of one pass of one image each."""
        if self._clean is None:
            self._clean = self.rows(range(len(self.x)), self.x)
        return float(self._clean[i])

    def __call__(self, i: int, count: int, make: Callable[[int, int], Tensor]) -> np.ndarray:
        """The target's value on ``make(lo, hi)`` (copies ``lo ... hi-1`` of image ``i``), (count,) float64."""
        values = []
        for lo in range(0, count, self.batch_size):
            hi = min(lo + self.batch_size, count)
            output = self.run(fast_layout(make(lo, hi)))
            t = self.objective.image(i, hi - lo)
            out = t.confidence(output) if self.softmax else t.score(output)
            values.append(out.double().cpu())
        return torch.cat(values).numpy() if values else np.zeros(0)

    def rows(self, images: Sequence[int], inputs: Tensor) -> np.ndarray:
        """The target on ``inputs`` (row ``k`` a copy of image ``images[k]``), all images' rows
        together in chunks of ``batch_size``: for metrics with a few copies per image, where
        chunks of one image's copies alone would run nearly empty. (rows,) float64."""
        values = []
        for lo in range(0, len(images), self.batch_size):
            hi = min(lo + self.batch_size, len(images))
            output = self.run(fast_layout(inputs[lo:hi]))
            t = self.objective.rows(list(images[lo:hi]))
            out = t.confidence(output) if self.softmax else t.score(output)
            values.append(out.double().cpu())
        return torch.cat(values).numpy() if values else np.zeros(0)


@contextmanager
def _reading(model: nn.Module, x: Tensor, target: Target, softmax: bool, batch_size: int, who: str,
             rows: int | None = None) -> Iterator[_Reader]:
    """The model prepared (eval mode, frozen, every forward folded) with the target bound to
    ``x``. ``rows``: the copies the call runs, when known; below :data:`FOLD_MIN_ROWS` the
    passes run unfolded (folding costs a weight copy and two probe forwards)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    fold = rows is None or rows >= FOLD_MIN_ROWS
    with prepared(model), torch.inference_mode(), folded(model, x[:1], enabled=fold) as runner:
        objective = targets.resolve(target, runner, x, batch_size)
        if softmax:
            targets.require_confidence(objective, f"{who} (softmax=True)")
        yield _Reader(runner, objective, softmax, batch_size, x)


def _progressive(read: _Reader, i: int, x: Tensor, step_of: Tensor, steps: int, baseline: Tensor | str
                 ) -> np.ndarray:
    """The target on image ``i`` after steps 1 ... ``steps`` of a cumulative replacement: element
    ``e`` of ``x`` (C, H, W) is replaced from step ``step_of[e]`` on (> steps: never). A constant
    baseline fills in its value; ``"mean"`` the mean of the image as it was before that step
    (what Quantus recomputes at every step)."""
    if isinstance(baseline, Tensor):
        fill = baseline.expand_as(x)

        def make(lo: int, hi: int) -> Tensor:
            k = torch.arange(lo + 1, hi + 1, device=x.device).view(-1, 1, 1, 1)
            return torch.where(step_of <= k, fill, x)
    else:  # "mean": the means form a recursion over the elements replaced at each step
        xd = x.double()
        size = x.numel()
        replaced = torch.bincount(step_of.flatten().clamp(max=steps + 1), minlength=steps + 2)
        sums = torch.bincount(step_of.flatten().clamp(max=steps + 1), weights=xd.flatten(), minlength=steps + 2)
        means = torch.zeros(steps + 2, dtype=torch.float64, device=x.device)
        total = xd.sum()
        for k in range(1, steps + 1):
            means[k] = total / size
            total = total - sums[k] + replaced[k] * means[k]
        value = means[step_of.clamp(max=steps + 1)].to(x.dtype)

        def make(lo: int, hi: int) -> Tensor:
            k = torch.arange(lo + 1, hi + 1, device=x.device).view(-1, 1, 1, 1)
            return torch.where(step_of <= k, value, x)

    return read(i, steps, make)


def _features_step(features_in_step: int, x: Tensor) -> int:
    if isinstance(features_in_step, bool) or not isinstance(features_in_step, int) or features_in_step < 1:
        raise ValueError(f"features_in_step must be an int >= 1, got {features_in_step!r}")
    if (x.shape[2] * x.shape[3]) % features_in_step:
        raise ValueError(f"features_in_step ({features_in_step}) must divide the number of pixels, "
                         f"{x.shape[2]} x {x.shape[3]}")
    return features_in_step


def _element_ranks(a: np.ndarray, x: Tensor, descending: bool) -> np.ndarray:
    """Rank (0 = first) of every element of the map broadcast over the input's channels, (N, C*H*W)."""
    flat = np.broadcast_to(a, tuple(x.shape)).reshape(len(a), -1)
    order = _descending(flat) if descending else np.argsort(flat, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None].repeat(len(a), 0), axis=-1)
    return ranks


# --- complexity ---------------------------------------------------------------------------------


def sparseness(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *, abs: bool = True,
               normalise: bool = True) -> np.ndarray:
    """Sparseness (Chalasani et al. 2020): the Gini index of the map's values (+ 1e-7), in
    [0, 1]; higher is sparser, a map that concentrates on few features. No model pass."""
    x = check_inputs(inputs)
    a = _maps(maps, x, abs, normalise).reshape(x.shape[0], -1) + 1e-7
    a = np.sort(a, axis=-1)
    k = a.shape[1]
    weights = 2 * np.arange(1, k + 1) - k - 1
    return (weights * a).sum(-1) / (k * a.sum(-1))


def complexity(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *, abs: bool = True,
               normalise: bool = True) -> np.ndarray:
    """Complexity (Bhatt et al. 2020): the entropy of the map's values taken as a distribution
    (each value over the sum of |values|); lower is simpler. No model pass."""
    x = check_inputs(inputs)
    a = _maps(maps, x, abs, normalise).reshape(x.shape[0], -1)
    p = a / np.abs(a).sum(-1, keepdims=True)
    return -(p * np.log(p + 1e-12)).sum(-1)


# --- faithfulness -------------------------------------------------------------------------------


def pixel_flipping(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                   features_in_step: int = 1, abs: bool = False, normalise: bool = True,
                   perturb_baseline: Baseline = "black", softmax: bool = True,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Pixel-Flipping (Bach et al. 2015): the input's elements (the map broadcast over the
    channels, so every channel of every pixel) are replaced by ``perturb_baseline`` from the most
    relevant on, ``features_in_step`` more at each step, and the target is read after each step.
    Returns the area under that curve (trapezoid, one unit per step; Quantus's
    ``return_auc_per_sample=True``); lower is more faithful. Cost: C*H*W / features_in_step
    forwards per image.

    ``perturb_baseline``: a number in the model's input units, ``"black"`` (a black photo,
    ``(0 - mean) / std``) or ``"mean"`` (the image's mean before each step).
    """
    x = check_inputs(inputs).to(model_device(model))
    f = _features_step(features_in_step, x)
    base = _baseline(perturb_baseline, x, mean, std, ("black", "mean"))
    ranks = torch.as_tensor(_element_ranks(_maps(maps, x, abs, normalise), x, descending=True), device=x.device)
    steps = -(-x[0].numel() // f)
    out = np.empty(len(x))
    with _reading(model, x, target, softmax, batch_size, "pixel_flipping") as read:
        for i in range(len(x)):
            step_of = (ranks[i] // f + 1).view(x.shape[1:])
            out[i] = _trapezoid(_progressive(read, i, x[i], step_of, steps, base)[None])[0]
    return out


def region_perturbation(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                        patch_size: int = 8, order: Order = "morf", regions_evaluation: int = 100,
                        abs: bool = False, normalise: bool = True, perturb_baseline: Baseline = "black",
                        softmax: bool = True, seed: int = 0, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Region Perturbation (Samek et al. 2017): the image is cut into ``patch_size`` squares
    (padded evenly at the edges as Quantus does when the size is not a multiple), ordered by the
    map's sum over each (``"morf"``: most relevant first; ``"lerf"``: least; ``"random"``: a
    permutation drawn from ``seed``), and the first ``regions_evaluation`` are replaced one after
    the other by ``perturb_baseline``. Returns the area (trapezoid, one unit per step) under the
    curve of ``f(x) - f(x perturbed)``; with ``"morf"`` higher is more faithful. Cost:
    ``min(regions_evaluation, patches)`` forwards per image.
    """
    if order not in ("morf", "lerf", "random"):
        raise ValueError(f"unknown order {order!r}; choose 'morf', 'lerf' or 'random'")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be an int >= 1, got {patch_size!r}")
    x = check_inputs(inputs).to(model_device(model))
    n, c, h, w = x.shape
    base = _baseline(perturb_baseline, x, mean, std, ("black", "mean"))
    a = np.broadcast_to(_maps(maps, x, abs, normalise), (n, c, h, w)).sum(1)  # (N, H, W)
    square, count = _squares(h, w, patch_size)
    patch = square.numpy() - 1  # on the padded grid: the padding itself has zero relevance
    sums = np.stack([np.bincount(patch.ravel(), weights=ai.ravel(), minlength=count) for ai in a])
    steps = min(regions_evaluation, count)
    out = np.empty(n)
    with _reading(model, x, target, softmax, batch_size, "region_perturbation") as read:
        for i in range(n):
            if order == "random":
                ordered = np.random.default_rng(seed).permutation(count)
            else:
                ordered = _descending(sums[i] if order == "morf" else -sums[i])
            position = np.empty(count, dtype=np.int64)
            position[ordered] = np.arange(count)
            step_of = torch.as_tensor(position[patch] + 1, device=x.device).expand(c, h, w)
            clean = read.clean(i)
            curve = clean - _progressive(read, i, x[i], step_of, steps, base)
            out[i] = _trapezoid(curve[None])[0]
    return out


def _padding(size: int, patch: int) -> tuple[int, int]:
    """Quantus's padding of a side to a multiple of the patch size: (before, after)."""
    missing = -size % patch
    return missing // 2, missing - missing // 2


def monotonicity_correlation(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                             eps: float = 1e-5, nr_samples: int = 100, features_in_step: int = 1,
                             abs: bool = True, normalise: bool = True, perturb_baseline: Baseline = "uniform",
                             uniform_low: float = 0.0, uniform_high: float = 1.0, softmax: bool = True,
                             seed: int = 0, mean: Sequence[float] = IMAGENET_MEAN,
                             std: Sequence[float] = IMAGENET_STD,
                             batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Monotonicity (Nguyen & Martinez 2020; Quantus's ``MonotonicityCorrelation``): the input's
    elements are taken ``features_in_step`` at a time from the least relevant; each group alone
    is replaced by ``perturb_baseline`` and the squared change of the target, divided by the
    target's square (when |target| >= ``eps``), is averaged over ``nr_samples`` draws. Returns
    the Spearman correlation between the groups' relevance and those changes; higher is more
    faithful. ``"uniform"`` draws one value per group and draw in [uniform_low, uniform_high)
    from a generator seeded by ``seed`` (the same for every image); a constant baseline needs one
    draw. Cost: C*H*W / features_in_step forwards per draw and image.
    """
    x = check_inputs(inputs).to(model_device(model))
    f = _features_step(features_in_step, x)
    base = _baseline(perturb_baseline, x, mean, std, ("black", "uniform"))
    draws = nr_samples if isinstance(base, str) else 1
    if isinstance(nr_samples, bool) or not isinstance(nr_samples, int) or nr_samples < 1:
        raise ValueError(f"nr_samples must be an int >= 1, got {nr_samples!r}")
    a = _maps(maps, x, abs, normalise)
    ranks = _element_ranks(a, x, descending=False)
    flat = np.broadcast_to(a, tuple(x.shape)).reshape(len(a), -1)
    groups = -(-x[0].numel() // f)
    out = np.empty(len(x))
    with _reading(model, x, target, softmax, batch_size, "monotonicity_correlation") as read:
        for i in range(len(x)):
            group_of = torch.as_tensor(ranks[i] // f, device=x.device).view(x.shape[1:])
            y = read.clean(i)
            if isinstance(base, str):
                gen = torch.Generator().manual_seed(seed)
                fills = torch.empty(draws, groups, dtype=torch.float64).uniform_(uniform_low, uniform_high,
                                                                                  generator=gen)
                fills = fills.to(x.dtype).to(x.device)

            def make(lo: int, hi: int) -> Tensor:  # copy j: draw j // groups, group j % groups
                j = torch.arange(lo, hi, device=x.device).view(-1, 1, 1, 1)
                value = fills[j // groups, j % groups] if isinstance(base, str) else base
                return torch.where(group_of == j % groups, value, x[i])

            changed = read(i, draws * groups, make).reshape(draws, groups)
            inv = 1.0 / np.abs(y) ** 2 if np.abs(y) >= eps else 1.0
            variance = ((changed - y) ** 2).mean(0) * inv
            relevance = np.bincount(ranks[i] // f, weights=flat[i], minlength=groups)
            out[i] = _spearman(relevance, variance)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (average ranks for ties), NaN when one is constant."""
    from galleryvis.metrics.gallery import spearman

    return float(spearman(a[None], b[None])[0])


def irof(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
         segmentation_method: Literal["slic", "felzenszwalb"] = "slic", abs: bool = False, normalise: bool = True,
         perturb_baseline: Baseline = "mean", softmax: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
         std: Sequence[float] = IMAGENET_STD, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Iterative Removal Of Features (Rieger & Hansen 2020): the image is cut into superpixels
    (scikit-image's SLIC or Felzenszwalb with their defaults, on the model's input), removed
    one after the other by decreasing mean relevance (replaced by ``perturb_baseline``:
    ``"mean"``, the image's mean before each step, a number, or ``"black"``), and the target is
    read after each removal, relative to the clean image's. Returns the area over that curve
    (segments - trapezoid area, one unit per segment); higher is more faithful. Cost: one
    forward per superpixel, plus one.
    """
    from skimage.segmentation import felzenszwalb, slic

    if segmentation_method not in ("slic", "felzenszwalb"):
        raise ValueError(f"unknown segmentation_method {segmentation_method!r}; choose 'slic' or 'felzenszwalb'")
    x = check_inputs(inputs).to(model_device(model))
    n, c, h, w = x.shape
    base = _baseline(perturb_baseline, x, mean, std, ("black", "mean"))
    a = np.broadcast_to(_maps(maps, x, abs, normalise), (n, c, h, w))
    out = np.empty(n)
    with _reading(model, x, target, softmax, batch_size, "irof") as read:
        for i in range(n):
            image = np.moveaxis(x[i].float().cpu().numpy(), 0, -1).astype(np.float64)
            segments = slic(image, start_label=0) if segmentation_method == "slic" else felzenszwalb(image)
            count = int(segments.max()) + 1
            relevance = np.array([a[i][:, segments == s].mean() for s in range(count)])
            position = np.empty(count, dtype=np.int64)
            position[_descending(relevance)] = np.arange(count)
            step_of = torch.as_tensor(position[segments] + 1, device=x.device).expand(c, h, w)
            y = read.clean(i)
            curve = _progressive(read, i, x[i], step_of, count, base) / y
            out[i] = count - _trapezoid(curve[None])[0]
    return out


def faithfulness_correlation(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                             nr_runs: int = 100, subset_size: int = 224, abs: bool = False, normalise: bool = True,
                             perturb_baseline: Baseline = "black", softmax: bool = False, seed: int = 0,
                             mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                             batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Faithfulness Correlation (Bhatt et al. 2020): ``nr_runs`` random subsets of
    ``subset_size`` input elements (the map broadcast over the channels) are replaced by
    ``perturb_baseline``; returns the Pearson correlation, over the runs, between the map's sum
    on the subset and the drop of the target ``f(x) - f(x perturbed)``; higher is more faithful.
    The subsets are drawn from a generator seeded by ``seed``, the same for every image. Cost:
    ``nr_runs + 1`` forwards per image.
    """
    x = check_inputs(inputs).to(model_device(model))
    elements = x[0].numel()
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or not 1 <= subset_size <= elements:
        raise ValueError(f"subset_size must be an int in [1, {elements}] (the input's elements), got {subset_size!r}")
    if isinstance(nr_runs, bool) or not isinstance(nr_runs, int) or nr_runs < 2:
        raise ValueError(f"nr_runs must be an int >= 2, got {nr_runs!r}")
    base = _baseline(perturb_baseline, x, mean, std, ("black",))
    flat = np.broadcast_to(_maps(maps, x, abs, normalise), tuple(x.shape)).reshape(len(x), -1)
    out = np.empty(len(x))
    with _reading(model, x, target, softmax, batch_size, "faithfulness_correlation") as read:
        for i in range(len(x)):
            gen = torch.Generator().manual_seed(seed)
            subsets = torch.stack([torch.randperm(elements, generator=gen)[:subset_size] for _ in range(nr_runs)])
            image = x[i].flatten()
            fill = base.expand_as(x[i]).flatten()
            on_device = subsets.to(x.device)

            def make(lo: int, hi: int) -> Tensor:
                idx = on_device[lo:hi]
                return image.repeat(hi - lo, 1).scatter_(1, idx, fill[idx]).view(hi - lo, *x.shape[1:])

            y = read.clean(i)
            drops = y - read(i, nr_runs, make)
            out[i] = _pearson(flat[i][subsets.numpy()].sum(-1), drops)
    return out


def infidelity(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
               perturb_patch_sizes: Sequence[int] = (4,), abs: bool = False, normalise: bool = False,
               perturb_baseline: Baseline = "black", softmax: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Infidelity (Yeh et al. 2019) with Quantus's perturbations: for each patch size, the
    image's squares (raster order) are replaced by ``perturb_baseline`` one more at a time; at
    each step ``I = x - x perturbed`` and the squared gap between ``sum(map * I)`` and
    ``f(x) - f(x perturbed)`` is taken. Returns its mean over the steps, then over the patch
    sizes; lower is more faithful. Equal to captum's ``infidelity`` given those perturbations
    (one per step). Quantus's ``n_perturb_samples`` repeats this same deterministic computation,
    so it is not a setting here. Cost: 1 + the number of squares per patch size, forwards per image.
    """
    x = check_inputs(inputs).to(model_device(model))
    n, c, h, w = x.shape
    sizes = list(perturb_patch_sizes)
    if not sizes or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in sizes):
        raise ValueError(f"perturb_patch_sizes must be ints >= 1, got {perturb_patch_sizes!r}")
    base = _baseline(perturb_baseline, x, mean, std, ("black",))
    a = torch.as_tensor(np.broadcast_to(_maps(maps, x, abs, normalise), (n, c, h, w)).copy())
    out = np.zeros(n)
    with _reading(model, x, target, softmax, batch_size, "infidelity") as read:
        for i in range(n):
            y = read.clean(i)
            removed = (a[i] * (x[i].double().cpu() - base.expand_as(x[i]).double().cpu())).flatten()
            for size in sizes:
                step_of, steps = _squares(h, w, size)
                step_of = step_of.to(x.device).expand(c, h, w)
                drops = y - _progressive(read, i, x[i], step_of, steps, base)
                explained = torch.bincount(step_of.flatten().cpu(), weights=removed, minlength=steps + 1)[1:].cumsum(0)
                out[i] += np.mean((drops - explained.numpy()) ** 2) / len(sizes)
    return out


def _squares(h: int, w: int, size: int) -> tuple[Tensor, int]:
    """The ``size`` squares of an h x w image (padded evenly as Quantus does) numbered 1, 2, ...
    in raster order: (H, W) long tensor of each pixel's square, and the number of squares."""
    (top, bottom), (left, right) = _padding(h, size), _padding(w, size)
    cols = (w + left + right) // size
    rows = (h + top + bottom) // size
    square = ((torch.arange(h) + top) // size)[:, None] * cols + ((torch.arange(w) + left) // size)[None]
    return square + 1, rows * cols


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-D arrays, NaN when one is constant."""
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else float("nan")


def sufficiency(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *, threshold: float = 0.6,
                distance_func: str = "seuclidean", abs: bool = True, normalise: bool = True,
                batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Sufficiency (Dasgupta et al. 2022): of the other images of the call whose maps lie within
    ``threshold`` of this image's map, the share the model predicts the same class for; higher
    is better; NaN where no other map is that close. Distances are scipy's ``cdist`` with
    ``distance_func`` between the flattened maps, divided by the largest distance of the call;
    for ``"seuclidean"`` the features constant over the call are left out (Quantus: NaN
    distances). The prediction is each image's top-1 class; ``target`` only says which kind
    (a class target, a :class:`~galleryvis.targets.Class` or ``MultiLabel``). Unlike every
    other metric here, an image's value depends on the other images of the call, by
    definition. Cost: one forward per image."""
    from scipy.spatial.distance import cdist

    x = check_inputs(inputs).to(model_device(model))
    a = _maps(maps, x, abs, normalise).reshape(len(x), -1)
    objective = targets.of(target, len(x))
    if not isinstance(objective, targets.Class):
        raise ValueError(f"sufficiency compares predicted classes: it needs a class target (ints, one per image, "
                         f"or None), got {objective!r}")
    with _reading(model, x, type(objective)(), False, batch_size, "sufficiency", rows=len(x)) as read:
        predicted = np.asarray(read.objective.index)
    if len(x) < 2:
        return np.full(len(x), np.nan)
    if distance_func == "seuclidean":
        a = a[:, a.var(0, ddof=1) > 0]
    d = cdist(a, a, distance_func) if a.shape[1] else np.zeros((len(x), len(x)))
    close = (normalise_by_max(d[None])[0] <= threshold) & ~np.eye(len(x), dtype=bool)
    same = predicted[:, None] == predicted[None]
    count = close.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, (close & same).sum(-1) / count, np.nan)


# --- robustness ---------------------------------------------------------------------------------


def _uniform(lower_bound: float, upper_bound: float | None) -> Callable[[torch.Generator, tuple], Tensor]:
    """Quantus's uniform noise: in [-lower_bound, lower_bound], or [lower_bound, upper_bound]."""
    if upper_bound is not None and not upper_bound > lower_bound:
        raise ValueError(f"upper_bound ({upper_bound}) must be larger than lower_bound ({lower_bound})")
    low, high = (-lower_bound, lower_bound) if upper_bound is None else (lower_bound, upper_bound)
    return lambda gen, shape: torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=gen)


#: How a robustness metric compares: (map (D,), maps of the noisy copies (S, D), image (E,),
#: noisy copies (S, E)) -> (S,).
Ratio = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _relative_to_map(a: np.ndarray, b: np.ndarray, x: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """||map(x + noise) - map(x)|| / ||map(x)|| (Euclidean over all elements)."""
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a)


def _relative_to_noise(a: np.ndarray, b: np.ndarray, x: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """||map(x + noise) - map(x)|| / (||noise|| + 1e-10)."""
    return np.linalg.norm(a - b, axis=-1) / (np.linalg.norm(xs - x, axis=-1) + 1e-10)


def _sensitivities(model: nn.Module, inputs: Tensor, technique: str, target: Target, layer: str | Sequence[str] | None,
                   nr_samples: int, noise: Callable[[torch.Generator, tuple], Tensor], ratio: Ratio, abs: bool,
                   normalise: bool, seed: int, batch_size: int, mean: Sequence[float], std: Sequence[float],
                   params: dict) -> np.ndarray:
    """(N, nr_samples): ``ratio`` of each image's map and the maps of its ``nr_samples`` copies
    with ``noise`` added, drawn from a generator seeded by ``seed`` (the same for every image)."""
    from galleryvis.engine import attribute

    if isinstance(nr_samples, bool) or not isinstance(nr_samples, int) or nr_samples < 1:
        raise ValueError(f"nr_samples must be an int >= 1, got {nr_samples!r}")
    x = check_inputs(inputs).to(model_device(model))
    with prepared(model), torch.no_grad():
        objective = targets.resolve(target, model, x, batch_size)
    drawn = noise(torch.Generator().manual_seed(seed), (nr_samples, *x.shape[1:])).to(x.dtype).to(x.device)
    out = np.empty((len(x), nr_samples))
    for i in range(len(x)):  # one call per image, its clean copy first: its maps do not depend on the other images
        both = torch.cat([x[i:i + 1], x[i] + drawn])
        maps = attribute(model, both, technique, objective.image(i, nr_samples + 1), layer, batch_size=batch_size,
                         mean=mean, std=std, **params)
        a = _maps(maps[:1], both[:1], abs, normalise).reshape(-1)
        b = _maps(maps[1:], both[1:], abs, normalise).reshape(nr_samples, -1)
        flat = both[1:].double().cpu().numpy().reshape(nr_samples, -1)
        out[i] = ratio(a, b, x[i].double().cpu().numpy().reshape(-1), flat)
    return out


def max_sensitivity(model: nn.Module, inputs: Tensor, technique: str, target: Target = None,
                    layer: str | Sequence[str] | None = None, *, nr_samples: int = 200, lower_bound: float = 0.2,
                    upper_bound: float | None = None, abs: bool = False, normalise: bool = False, seed: int = 0,
                    batch_size: int = DEFAULT_BATCH_SIZE, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, technique_params: dict | None = None,
                    **params: object) -> np.ndarray:
    """Max-Sensitivity (Yeh et al. 2019): the largest relative change of ``technique``'s map,
    ``||map(x + noise) - map(x)|| / ||map(x)||``, over ``nr_samples`` draws of uniform noise in
    [-lower_bound, lower_bound] (or [lower_bound, upper_bound]) added to the model's input, the
    target staying the clean image's; lower is more robust. Takes the technique's name (and
    ``layer``, parameters as ``**params`` or ``technique_params`` where a name clashes) instead of
    maps, since it explains again. The noise comes from a generator seeded by ``seed``, the same
    for every image. Cost: one explanation of the image and ``nr_samples`` of noisy copies.
    """
    return np.nanmax(_sensitivities(model, inputs, technique, target, layer, nr_samples,
                                    _uniform(lower_bound, upper_bound), _relative_to_map, abs, normalise, seed,
                                    batch_size, mean, std, {**(technique_params or {}), **params}), axis=1)


def avg_sensitivity(model: nn.Module, inputs: Tensor, technique: str, target: Target = None,
                    layer: str | Sequence[str] | None = None, *, nr_samples: int = 200, lower_bound: float = 0.2,
                    upper_bound: float | None = None, abs: bool = False, normalise: bool = False, seed: int = 0,
                    batch_size: int = DEFAULT_BATCH_SIZE, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, technique_params: dict | None = None,
                    **params: object) -> np.ndarray:
    """Avg-Sensitivity (Yeh et al. 2019): :func:`max_sensitivity`'s relative changes averaged
    over the draws instead of their maximum; lower is more robust. Same cost."""
    return np.nanmean(_sensitivities(model, inputs, technique, target, layer, nr_samples,
                                     _uniform(lower_bound, upper_bound), _relative_to_map, abs, normalise, seed,
                                     batch_size, mean, std, {**(technique_params or {}), **params}), axis=1)


def local_lipschitz_estimate(model: nn.Module, inputs: Tensor, technique: str, target: Target = None,
                             layer: str | Sequence[str] | None = None, *, nr_samples: int = 200,
                             perturb_mean: float = 0.0, perturb_std: float = 0.1, abs: bool = False,
                             normalise: bool = True, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                             mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                             technique_params: dict | None = None, **params: object) -> np.ndarray:
    """Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018): the largest
    ``||map(x + noise) - map(x)|| / ||noise||`` over ``nr_samples`` draws of Gaussian noise
    (``perturb_mean``, ``perturb_std``) added to the model's input; lower is more robust. As
    :func:`max_sensitivity`, it takes the technique's name and explains each noisy copy again.
    Cost: one explanation of the image and ``nr_samples`` of noisy copies."""
    def gaussian(gen: torch.Generator, shape: tuple) -> Tensor:
        return torch.empty(shape, dtype=torch.float64).normal_(perturb_mean, perturb_std, generator=gen)

    return np.nanmax(_sensitivities(model, inputs, technique, target, layer, nr_samples, gaussian,
                                    _relative_to_noise, abs, normalise, seed, batch_size, mean, std,
                                    {**(technique_params or {}), **params}), axis=1)


def relative_input_stability(model: nn.Module, inputs: Tensor, technique: str, target: Target = None,
                             layer: str | Sequence[str] | None = None, *, nr_samples: int = 200,
                             lower_bound: float = 0.02, upper_bound: float | None = 0.2, eps_min: float = 1e-6,
                             abs: bool = False, normalise: bool = False, seed: int = 0,
                             batch_size: int = DEFAULT_BATCH_SIZE, mean: Sequence[float] = IMAGENET_MEAN,
                             std: Sequence[float] = IMAGENET_STD, technique_params: dict | None = None,
                             **params: object) -> np.ndarray:
    """Relative Input Stability (Agarwal et al. 2022): the largest ratio of the map's relative
    change, ``||(map(x') - map(x)) / map(x)||``, to the input's, ``||(x' - x) / x||`` (zeros
    replaced by ``eps_min``, a denominator of 0 by ``eps_min``), over ``nr_samples`` draws of
    uniform noise in [lower_bound, upper_bound] (Quantus's default: [0.02, 0.2]; ``upper_bound=None``:
    [-lower_bound, lower_bound]); lower is more stable. Draws where the prediction changes are kept
    (Quantus's ``return_nan_when_prediction_changes=False``). Cost: one explanation of the image
    and ``nr_samples`` of noisy copies."""
    def ratio(a: np.ndarray, b: np.ndarray, x: np.ndarray, xs: np.ndarray) -> np.ndarray:
        change = np.linalg.norm((a - b) / (a + (a == 0) * eps_min), axis=-1)
        moved = np.linalg.norm((x - xs) / (x + (x == 0) * eps_min), axis=-1)
        return change / (moved + (moved == 0) * eps_min)

    return np.max(_sensitivities(model, inputs, technique, target, layer, nr_samples,
                                 _uniform(lower_bound, upper_bound), ratio, abs, normalise, seed, batch_size, mean,
                                 std, {**(technique_params or {}), **params}), axis=1)


# --- randomisation ------------------------------------------------------------------------------


def random_logit(model: nn.Module, inputs: Tensor, technique: str, target: Target = None,
                 layer: str | Sequence[str] | None = None, *, num_classes: int = 1000, seed: int = 42,
                 abs: bool = False, normalise: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 technique_params: dict | None = None, **params: object) -> np.ndarray:
    """Random Logit (Sixt et al. 2020): the structural similarity (SSIM over the flattened maps,
    as Quantus) of ``technique``'s map for the target class with its map for another class,
    drawn uniformly among the ``num_classes - 1`` others; lower means the map depends on the
    class. The other class is the first draw of NumPy's ``RandomState(seed)``, the same for every
    image (Quantus's draw for an image scored alone). A class target only (an int, one per image,
    or None); others are refused in one line. Cost: two explanations per image.
    """
    from skimage.metrics import structural_similarity

    from galleryvis.engine import attribute

    x = check_inputs(inputs).to(model_device(model))
    with prepared(model), torch.no_grad():
        objective = targets.resolve(target, model, x, batch_size)
    if not isinstance(objective, targets.Class):
        raise ValueError(f"random_logit compares a class's map with another class's: it needs a class target "
                         f"(an int, one per image or None), got {objective!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    tparams = {**(technique_params or {}), **params}
    draw = int(np.random.RandomState(seed).randint(0, num_classes - 1, 1)[0])
    own = [int(objective.at(i).index) for i in range(len(x))]
    other = [draw + (draw >= c) for c in own]  # the other classes, in order, without the target's
    pairs = x.repeat_interleave(2, dim=0)  # every image's two maps in one call
    maps = attribute(model, pairs, technique, [c for pair in zip(own, other) for c in pair], layer,
                     batch_size=batch_size, mean=mean, std=std, **tparams)
    flat = _maps(maps, pairs, abs, normalise).reshape(len(x), 2, -1)
    out = np.empty(len(x))
    for i in range(len(x)):
        a, b = flat[i]
        both = np.concatenate([a, b])
        out[i] = structural_similarity(a, b, data_range=float(both.max() - both.min()))
    return out


# --- axiomatic ----------------------------------------------------------------------------------

#: The fields of :func:`completeness`'s result.
COMPLETENESS = np.dtype([("verdict", bool), ("relative_error", np.float64)])


def completeness(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *, abs: bool = False,
                 normalise: bool = False, perturb_baseline: Baseline = "black", softmax: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Completeness (Sundararajan et al. 2017): does the map sum to ``f(x) - f(baseline)``?

    Returns a structured array (N,) of :data:`COMPLETENESS`: ``verdict``, Quantus's exact test
    (the float32 sum of the map equals the float32 difference), and ``relative_error``,
    ``|sum(map) - (f(x) - f(baseline))| / |f(x) - f(baseline)|``; lower is better. The baseline
    image is the whole input replaced by ``perturb_baseline``. ``normalise`` defaults to False
    (Quantus: True, which rescales the map and so breaks the sum the axiom is about). Cost: two
    forwards per image.
    """
    x = check_inputs(inputs).to(model_device(model))
    base = _baseline(perturb_baseline, x, mean, std, ("black",))
    if isinstance(base, str):
        raise ValueError("completeness needs a constant perturb_baseline")
    total = _maps(maps, x, abs, normalise).reshape(len(x), -1)
    out = np.empty(len(x), dtype=COMPLETENESS)
    n = len(x)
    with _reading(model, x, target, softmax, batch_size, "completeness", rows=2 * n) as read:
        values = read.rows([*range(n), *range(n)], torch.cat([x, base.expand_as(x)]))
    y, yb = values[:n], values[n:]
    for i in range(n):
        out[i] = (total[i].astype(np.float32).sum() == np.float32(y[i]) - np.float32(yb[i]),
                  np.abs(total[i].sum() - (y[i] - yb[i])) / np.abs(y[i] - yb[i]))
    return out


# --- average drop / increase --------------------------------------------------------------------


def _masked_scores(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, softmax: bool,
                   batch_size: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """The target on each image and on the image times its map (min-max scaled to [0, 1] at the
    map's resolution, then resized bilinearly): two (N,) arrays."""
    x = check_inputs(inputs).to(model_device(model))
    m = maps.detach() if isinstance(maps, Tensor) else torch.as_tensor(np.asarray(maps))
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3 or m.shape[0] != len(x):
        raise ValueError(f"maps must have shape (N, H, W) or (N, 1, H, W) with N = {len(x)}, got {tuple(m.shape)}")
    m = m.float()
    low = m.amin((1, 2), keepdim=True)
    m = (m - low) / ((m - low).amax((1, 2), keepdim=True) + 1e-8)
    m = F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False).to(x)
    n = len(x)
    with _reading(model, x, target, softmax, batch_size, who, rows=2 * n) as read:
        values = read.rows([*range(n), *range(n)], torch.cat([x, m * x]))
    return values[:n], values[n:]


def average_drop(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *, softmax: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Average Drop (Chattopadhay et al. 2018, Grad-CAM++): ``max(0, y - y_masked) / y`` with
    ``y`` the target on the image and ``y_masked`` on the image times its map (min-max scaled to
    [0, 1]); lower is better. torchcam's ``avg_drop`` is the mean over images. Cost: two
    forwards per image."""
    y, ym = _masked_scores(model, inputs, maps, target, softmax, batch_size, "average_drop")
    return np.maximum(y - ym, 0) / (y + 1e-7)


def average_increase(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                     softmax: bool = True, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Increase in Confidence (Chattopadhay et al. 2018): 1.0 where the target is higher on the
    image times its map than on the image, else 0.0; higher is better. torchcam's
    ``conf_increase`` is the mean over images. Cost: two forwards per image."""
    y, ym = _masked_scores(model, inputs, maps, target, softmax, batch_size, "average_increase")
    return (y < ym).astype(np.float64)


# --- localisation -------------------------------------------------------------------------------


def box_mask(boxes: Sequence[float] | Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """A binary (height, width) mask of one box ``[x0, y0, x1, y1]`` or the union of a list of
    them, in pixels of the image the maps explain (x to the right, y down; a box covers the
    pixels from ``floor(x0)`` to ``ceil(x1)`` exclusive, and the same for y). A box outside the
    image, empty or not four numbers is a ValueError naming it. Lists, tuples and arrays work."""
    try:
        rows = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        rows = np.empty(0)
    rows = rows[None] if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.shape[1:] != (4,) or not len(rows) or isinstance(boxes, (str, bytes)):
        raise ValueError(f"a box is four numbers [x0, y0, x1, y1] (or give a list of boxes), got {boxes!r}")
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in rows.tolist():
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"box {[x0, y0, x1, y1]} must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= "
                             f"{height} (the image is {width} x {height})")
        mask[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
    return mask


def _located(inputs: Tensor, maps: Tensor, mask: Tensor | np.ndarray, abs: bool, normalise: bool
             ) -> tuple[np.ndarray, np.ndarray]:
    """(N, H*W) map values summed over channels and (N, H*W) bool mask."""
    x = check_inputs(inputs)
    a = _maps(maps, x, abs, normalise).sum(1).reshape(len(x), -1)
    return a, _masks(mask, x)


def _empty_nan(values: np.ndarray, s: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    values[s.sum(-1) == 0] = np.nan
    return values


def pointing_game(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                  mask: Tensor | np.ndarray, weighted: bool = False, abs: bool = False,
                  normalise: bool = True) -> np.ndarray:
    """Pointing Game (Zhang et al. 2018): 1.0 where a pixel of the map's maximum lies in the
    mask, else 0.0 (``weighted``: a hit counts ``1 - mask area / image area``); NaN for an empty
    mask; higher is better. No model pass."""
    a, s = _located(inputs, maps, mask, abs, normalise)
    hit = np.any(s & (a == a.max(-1, keepdims=True)), axis=-1).astype(np.float64)
    if weighted:
        hit = np.where(hit > 0, 1 - s.sum(-1) / s.shape[1], hit)
    return _empty_nan(hit, s)


def relevance_mass_accuracy(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                            mask: Tensor | np.ndarray, abs: bool = False, normalise: bool = True) -> np.ndarray:
    """Relevance Mass Accuracy (Arras et al. 2022): the map's sum inside the mask over its total;
    higher is better; NaN for an empty mask. No model pass."""
    a, s = _located(inputs, maps, mask, abs, normalise)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _empty_nan((a * s).sum(-1) / a.sum(-1), s)


def relevance_rank_accuracy(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                            mask: Tensor | np.ndarray, abs: bool = False, normalise: bool = True) -> np.ndarray:
    """Relevance Rank Accuracy (Arras et al. 2022): of the K most relevant pixels, K the mask's
    area, the fraction inside the mask; higher is better; NaN for an empty mask. No model pass."""
    a, s = _located(inputs, maps, mask, abs, normalise)
    ordered = np.take_along_axis(s, _descending(a), axis=-1)
    area = s.sum(-1)
    within = np.cumsum(ordered, axis=-1)[np.arange(len(s)), np.maximum(area - 1, 0)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return _empty_nan(within / area, s)


def top_k_intersection(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                       mask: Tensor | np.ndarray, k: int = 1000, concept_influence: bool = False,
                       abs: bool = False, normalise: bool = True) -> np.ndarray:
    """Top-K Intersection (Theiner et al. 2021): the fraction of the ``k`` most relevant pixels
    inside the mask (``concept_influence``: divided by the mask's share of the image); higher is
    better; NaN for an empty mask. No model pass."""
    a, s = _located(inputs, maps, mask, abs, normalise)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= s.shape[1]:
        raise ValueError(f"k must be an int in [1, {s.shape[1]}] (the number of pixels), got {k!r}")
    share = np.take_along_axis(s, _descending(a)[:, :k], axis=-1).mean(-1)
    if concept_influence:
        with np.errstate(divide="ignore", invalid="ignore"):
            share = share * s.shape[1] / s.sum(-1)
    return _empty_nan(share, s)


def attribution_localisation(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                             mask: Tensor | np.ndarray, weighted: bool = False, max_size: float = 1.0,
                             positive_attributions: bool = False, abs: bool = True,
                             normalise: bool = True) -> np.ndarray:
    """Attribution Localisation (Kohlbrenner et al. 2020): the share of the map's total (+1e-9)
    inside the mask (``positive_attributions``: negative values clipped first; ``weighted``: times
    the mask's share of the image, H*W pixels, where Quantus divides by a batch-dependent size);
    NaN for an empty mask or a share above 1; higher is better. ``max_size`` only warns in
    Quantus and is accepted for the same call. No model pass."""
    a, s = _located(inputs, maps, mask, abs, normalise)
    if positive_attributions:
        a = np.clip(a, 0, None)
    share = (a * s).sum(-1) / (a.sum(-1) + 1e-9)
    share[share > 1] = np.nan
    if weighted:
        share = share * s.sum(-1) / s.shape[1]
    return _empty_nan(share, s)


def auc_localisation(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, *,
                     mask: Tensor | np.ndarray, abs: bool = False, normalise: bool = True) -> np.ndarray:
    """AUC (Fawcett 2006; Quantus's ``AUC``): the area under the ROC curve of the map's values as
    a detector of the mask's pixels (ties count half), 0.5 for a map that ignores the mask;
    higher is better; NaN for an empty mask. No model pass."""
    from galleryvis.metrics.gallery import _average_ranks

    a, s = _located(inputs, maps, mask, abs, normalise)
    out = np.empty(len(a))
    for i in range(len(a)):
        inside, total = int(s[i].sum()), s.shape[1]
        if inside in (0, total):
            out[i] = np.nan
            continue
        r = _average_ranks(a[i]) + 1
        out[i] = (r[s[i]].sum() - inside * (inside + 1) / 2) / (inside * (total - inside))
    return _empty_nan(out, s)
