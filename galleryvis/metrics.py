"""Faithfulness and sanity scores for attribution maps.

* :func:`deletion_insertion`: the causal deletion / insertion metrics of Petsiuk et al. 2018
  (RISE, https://arxiv.org/abs/1806.07421). Pixels are ranked by the map; the deletion curve
  follows the target's softmax probability while the top-ranked pixels are replaced by a
  substrate, the insertion curve while they are copied onto a blurred version of the image.
  Lower deletion AUC and higher insertion AUC mean a more faithful map.
* :func:`sanity` / :func:`sanity_many`: the cascading model-parameter randomization test of Adebayo et al. 2018
  (https://arxiv.org/abs/1810.03292). Layers of a copy of the model are re-initialized from the
  logits towards the input and the map is recomputed after each step; a map that stays similar
  (high Spearman correlation) to the original does not depend on what the model learned.
* :func:`road`: ROAD (Rong et al. 2022, https://arxiv.org/abs/2202.00449), the target's
  probability after the most or least relevant pixels are removed by noisy linear imputation.
* :func:`rank_techniques`: a model's techniques ordered by insertion - deletion.
* :func:`random_map`, :func:`center_gaussian_map`: the baselines every ranking should include.

Every function here leaves the caller's model as it found it (training flags, ``requires_grad``,
in-place flags, parameters, no hooks); :func:`sanity` never touches it at all (it works on a
deep copy). See docs/metrics.md for the protocols and measured costs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import targets
from .engine import (DEFAULT_BATCH_SIZE, IMAGENET_MEAN, IMAGENET_STD, Call, attribute_calls, chunking_of, fast_layout,
                     model_device, pixel_value)
from .changes import first_calls, prepared, reinitialize
from .chunking import Chunking
from .fold import folded

Substrate = Literal["zero", "black", "blur"]
Score = Literal["probability", "logit"]
RankBy = Literal["signed", "abs"]

#: What :func:`deletion_insertion` can replace deleted pixels with.
SUBSTRATES: tuple[str, ...] = ("zero", "black", "blur")

_SUBSTRATE_TEXT = {
    "zero": "zeros of the normalized tensor (the dataset mean colour, as RISE's reference code)",
    "black": "black pixels (0 before normalization)",
    "blur": "the blurred image",
}

Target = targets.Target


# --- deletion / insertion ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DeletionInsertion:
    """Deletion and insertion scores of N maps (see :func:`deletion_insertion`).

    Attributes:
        deletion_auc: (N,) area under the deletion curve; lower is more faithful.
        insertion_auc: (N,) area under the insertion curve; higher is more faithful.
        deletion_curve: (N, steps + 1) target score with ``fractions[k]`` of the pixels deleted.
        insertion_curve: (N, steps + 1) target score with ``fractions[k]`` of the pixels inserted.
        fractions: (steps + 1,) fraction of pixels replaced at each point (0 ... 1).
        targets: (M,) the class index scored for each map (int64) when the target is a class;
            otherwise each map's :mod:`galleryvis.targets` objective (an object array).
        protocol: one line describing how the scores were made; show it with every score.
    """

    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    deletion_curve: np.ndarray
    insertion_curve: np.ndarray
    fractions: np.ndarray
    targets: np.ndarray
    protocol: str

    @property
    def score(self) -> np.ndarray:
        """(N,) insertion AUC - deletion AUC, the quantity :func:`rank_techniques` sorts by."""
        return self.insertion_auc - self.deletion_auc

    def describe(self, i: int) -> str:
        """Image ``i``'s scores with the protocol, e.g. for a gallery caption."""
        return (f"deletion AUC {self.deletion_auc[i]:.3f}, insertion AUC {self.insertion_auc[i]:.3f} "
                f"[{self.protocol}]")

    def __str__(self) -> str:
        return "\n".join(self.describe(i) for i in range(len(self.deletion_auc)))


def deletion_insertion(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    target: Target,
    steps: int = 20,
    substrate: Substrate = "zero",
    *,
    score: Score = "probability",
    rank_by: RankBy | Sequence[RankBy] = "signed",
    images: Sequence[int] | None = None,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> DeletionInsertion:
    """Deletion and insertion curves and AUCs (Petsiuk et al. 2018) for one map per image.

    Pixels are ranked by the map summed over channels (``rank_by="signed"``: the value itself,
    as RISE does, so negative evidence comes last; ``"abs"``: its magnitude, which matches the
    gallery's "saliency" view of gradient maps). Ties keep raster order (a stable sort), NaN
    ranks last. Point ``k`` of a curve (k = 0 ... steps) replaces the top ``round(k/steps *
    H*W)`` pixels, all channels at once:

    * deletion: those pixels take the ``substrate`` value (``"zero"``: zeros of the normalized
      tensor, i.e. the mean colour, as in RISE's reference code; ``"black"``: pixel value 0,
      ``(0 - mean) / std``; ``"blur"``: the blurred image);
    * insertion: those pixels of the image are copied onto its blurred version (Gaussian,
      ``blur_kernel`` x ``blur_kernel``, ``blur_sigma``, reflect padding; RISE uses 11 and 5).

    Each curve point is the target's confidence, a class's softmax probability (``score="logit"``:
    its score, the raw logit; the only choice for a callable target, which gives no confidence).
    AUC: trapezoid rule over the pixel fraction on the nominal grid k/steps (RISE's
    ``(sum - (first + last) / 2) / steps``), so probability AUCs lie in [0, 1]; logit AUCs are
    in logit units and unbounded.

    Cost: ``2 * steps + 1`` forward passes per image (the unperturbed image is shared by both
    curves; with ``substrate="blur"`` the fully deleted and the empty insertion image are one
    forward too, ``2 * steps``). They run under ``torch.inference_mode`` in batches of
    ``batch_size`` that never mix images, with the model in eval mode (restored afterwards).
    Each image's result is a deterministic function of that image, its maps, the target, the
    protocol and ``batch_size``: bit-identical whatever other images share the call.

    Several maps of one image (a gallery's techniques) are scored in one call with ``images``:
    map ``m`` explains ``inputs[images[m]]``; the perturbed inputs of all maps of an image are
    batched together and its unperturbed, blurred and fully deleted forwards are shared, so M
    maps of an image cost ``M * (2 * steps - 2) + 3`` forwards (one fewer with the blur substrate).

    Args:
        model: classifier returning logits (N, classes).
        inputs: (N, C, H, W) normalized images.
        maps: (M, 1 or C, h, w) or (M, h, w) maps, one per image (or per entry of ``images``);
            resized bilinearly to H x W when their size differs.
        target: one class for all images, one per image, None for each image's top-1, or any
            target :func:`galleryvis.attribute` takes.
        steps: number of intervals of each curve (>= 1).
        substrate: what deleted pixels become: ``"zero"``, ``"black"`` or ``"blur"``.
        score: ``"probability"`` (softmax) or ``"logit"``.
        rank_by: ``"signed"`` or ``"abs"`` (see above), or one of them per map.
        images: for each map, the index of the image in ``inputs`` it explains (default: map
            ``i`` explains image ``i``).
        blur_kernel: odd kernel size of the insertion (and ``"blur"`` substrate) blur.
        blur_sigma: its standard deviation in pixels.
        mean, std: the normalization of ``inputs`` (for ``substrate="black"`` only).
        batch_size: perturbed images per forward pass.

    Returns:
        :class:`DeletionInsertion` with (M,) AUCs, (M, steps + 1) curves and (M,) targets.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        desc = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a float tensor of shape (N, C, H, W), got {desc}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if substrate not in SUBSTRATES:
        raise ValueError(f"unknown substrate {substrate!r}; choose one of {list(SUBSTRATES)}")
    if score not in ("probability", "logit"):
        raise ValueError(f"unknown score {score!r}; choose 'probability' or 'logit'")
    if blur_kernel < 1 or blur_kernel % 2 == 0 or not blur_sigma > 0:
        raise ValueError("blur_kernel must be a positive odd int and blur_sigma > 0")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")

    device = model_device(model)
    x = inputs.detach().to(device)
    c, h, w = x.shape[1:]
    image_of = list(range(x.shape[0])) if images is None else [int(i) for i in images]
    if any(not 0 <= i < x.shape[0] for i in image_of):
        raise ValueError(f"images must index the {x.shape[0]} inputs, got {image_of}")
    n = len(image_of)
    rank_of = [rank_by] * n if isinstance(rank_by, str) else list(rank_by)
    if len(rank_of) != n or any(r not in ("signed", "abs") for r in rank_of):
        raise ValueError(f"rank_by must be 'signed' or 'abs', or one of them for each of the {n} maps; "
                         f"got {rank_by!r}")
    ranks = _pixel_ranks(_check_maps(maps, n, x), rank_of).to(device)  # (M, H, W)
    pixels = h * w
    counts = [(k * pixels + steps // 2) // steps for k in range(steps + 1)]

    with prepared(model), torch.inference_mode(), folded(model, x[:1]) as runner:  # every forward folded
        objective = targets.resolve(target, runner, x, batch_size)
        if score == "probability":
            targets.require_confidence(objective, "deletion_insertion (score='probability')")
        blurred = gaussian_blur(x, blur_kernel, blur_sigma)
        if substrate == "blur":
            sub = blurred
        elif substrate == "zero":
            sub = torch.zeros_like(x)
        else:
            if len(mean) != c or len(std) != c:
                raise ValueError(f"mean and std need {c} values for substrate='black'")
            sub = pixel_value(0.0, x, mean, std).expand_as(x)

        # One job per distinct input to score, (kind, image, ...); the endpoints shared by the
        # curves (and by the maps of one image) are scored once.
        def key(curve: str, m: int, k: int) -> tuple[Any, ...]:
            i = image_of[m]
            if curve == "del":
                if counts[k] == 0:
                    return ("orig", i)
                if counts[k] == pixels:
                    return ("blur", i) if substrate == "blur" else ("sub", i)
            else:
                if counts[k] == 0:
                    return ("blur", i)
                if counts[k] == pixels:
                    return ("orig", i)
            return (curve, i, m, k)

        slots = {(curve, m, k): key(curve, m, k) for m in range(n) for curve in ("del", "ins")
                 for k in range(steps + 1)}
        jobs = list(dict.fromkeys(slots.values()))

        def make(job: tuple[Any, ...]) -> Tensor:
            kind, i = job[0], job[1]
            if kind == "orig":
                return x[i]
            if kind == "blur":
                return blurred[i]
            if kind == "sub":
                return sub[i]
            mask = ranks[job[2]] < counts[job[3]]  # (H, W): the top-ranked pixels
            return torch.where(mask, sub[i], x[i]) if kind == "del" else torch.where(mask, x[i], blurred[i])

        # Batches never mix images, so an image's scores do not depend on the other images
        # of the call (bit-identical whatever it is scored with).
        chunks = [chunk for i in dict.fromkeys(image_of) for per in [[j for j in jobs if j[1] == i]]
                  for chunk in (per[lo:lo + batch_size] for lo in range(0, len(per), batch_size))]
        values: dict[tuple[Any, ...], float] = {}
        for chunk in chunks:
            output = runner(fast_layout(torch.stack([make(j) for j in chunk])))
            t = objective.rows([j[1] for j in chunk])
            out = t.confidence(output) if score == "probability" else t.score(output).float()
            for j, v in zip(chunk, out.tolist()):
                values[j] = v

    curves = {curve: np.array([[values[slots[(curve, i, k)]] for k in range(steps + 1)] for i in range(n)],
                              dtype=np.float64).reshape(n, steps + 1)
              for curve in ("del", "ins")}
    protocol = _protocol(steps, substrate, score, rank_of, blur_kernel, blur_sigma)
    return DeletionInsertion(
        deletion_auc=auc(curves["del"]), insertion_auc=auc(curves["ins"]),
        deletion_curve=curves["del"], insertion_curve=curves["ins"],
        fractions=np.array(counts, dtype=np.float64) / pixels,
        targets=_scored(objective.rows(image_of)), protocol=protocol,
    )


def _scored(objective: targets.Objective) -> np.ndarray:
    """What :attr:`DeletionInsertion.targets` shows of each row's objective."""
    if isinstance(objective, targets.Class) and isinstance(objective.index, tuple):
        return np.array(objective.index, dtype=np.int64)
    out = np.empty(len(objective), dtype=object)
    for i in range(len(out)):
        out[i] = objective.at(i)
    return out


def auc(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under curves sampled at k/steps, k = 0 ... steps: (..., steps + 1) -> (...)."""
    curves = np.asarray(curves, dtype=np.float64)
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least 2 points")
    return (curves.sum(-1) - (curves[..., 0] + curves[..., -1]) / 2) / steps


def _protocol(steps: int, substrate: str, score: str, rank_by: Sequence[str], kernel: int, sigma: float) -> str:
    what = "softmax probability" if score == "probability" else "logit"
    rank = " or ".join({"signed": "signed value", "abs": "|value|"}[r] for r in sorted(set(rank_by), reverse=True))
    return (f"deletion/insertion (Petsiuk et al. 2018): {steps} steps of {100 / steps:.3g}% of the pixels, "
            f"ranked by the map's channel-summed {rank}; deleted pixels become {_SUBSTRATE_TEXT[substrate]}; "
            f"insertion onto a Gaussian blur (kernel {kernel}, sigma {sigma:g}); "
            f"score: the target's {what}; AUC: trapezoid over the pixel fraction")


def _check_maps(maps: Tensor, count: int, x: Tensor) -> Tensor:
    if not isinstance(maps, Tensor):
        maps = torch.as_tensor(np.asarray(maps))
    if maps.dim() == 3:
        maps = maps[:, None]
    if maps.dim() != 4 or maps.shape[0] != count:
        raise ValueError(f"maps must have shape (N, C, H, W) or (N, H, W) with N = {count}, "
                         f"got {tuple(maps.shape)}")
    maps = maps.detach().float().cpu()
    if maps.shape[-2:] != x.shape[-2:]:
        maps = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return maps


def _pixel_ranks(maps: Tensor, rank_by: Sequence[str]) -> Tensor:
    """(N, C, H, W) maps -> (N, H, W) long: 0 for the most important pixel, H*W - 1 for the least;
    map ``i`` ranked by its signed value or its magnitude as ``rank_by[i]`` says."""
    n, _, h, w = maps.shape
    v = maps.sum(1).reshape(n, h * w).double()
    by_abs = torch.tensor([r == "abs" for r in rank_by])
    v[by_abs] = v[by_abs].abs()
    v = torch.nan_to_num(v, nan=-math.inf)
    order = torch.sort(v, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w).expand(n, -1).contiguous())
    return ranks.reshape(n, h, w)


def gaussian_blur(x: Tensor, kernel: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, the one of galleryvis (deletion/insertion,
    integrated gradients' blur baseline, class visualization): ``kernel`` taps (odd) of standard
    deviation ``sigma`` pixels, reflect padding; along a side not longer than the radius the
    kernel is cut to fit and renormalized. ``sigma <= 0`` or one tap returns ``x``."""
    radius = kernel // 2
    if sigma <= 0 or radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    radius_h, radius_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    kh = k[radius - radius_h: radius + radius_h + 1]
    kw = k[radius - radius_w: radius + radius_w + 1]
    kh, kw = kh / kh.sum(), kw / kw.sum()
    x = F.pad(x, (radius_w, radius_w, 0, 0), mode="reflect")
    x = F.conv2d(x, kw.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius_h, radius_h), mode="reflect")
    return F.conv2d(x, kh.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# --- ROAD ---------------------------------------------------------------------------------------

Order = Literal["morf", "lerf"]

#: Neighbour weights of ROAD's noisy linear imputation: 1/6 for the four direct neighbours,
#: 1/12 for the four diagonal ones (Rong et al. 2022).
_ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def road(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    target: Target,
    *,
    percentile: float,
    order: Order,
    rank_by: RankBy = "signed",
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """ROAD (Rong et al. 2022, https://arxiv.org/abs/2202.00449): the target's softmax
    probability after ``percentile`` % of the pixels are removed, the most relevant first
    (``order="morf"``: a faithful map makes it low) or the least relevant first (``"lerf"``:
    it stays high), one value per image.

    Pixels are ranked as :func:`deletion_insertion` ranks them (``rank_by``; ties in raster
    order); ``round(percentile / 100 * H * W)`` of them are removed, all channels at once.
    Removed pixels are imputed by noisy linear imputation: each is the weighted mean of its
    eight neighbours (:data:`_ROAD_WEIGHTS`; removed neighbours are unknowns too, so an
    image's holes are one sparse linear system, solved directly by scipy), plus Gaussian noise
    of standard deviation ``noise`` in the units of ``inputs`` (ROAD's 0.01), drawn per image from a CPU generator seeded with ``seed``, so a
    value does not depend on the other images of the call. Agrees with pytorch-grad-cam's
    ``ROADMostRelevantFirst`` / ``ROADLeastRelevantFirst`` (``return_diff=False``), whose
    ``percentile`` is the share of pixels *kept*: ``100 - percentile`` there.

    Cost: one forward per image, under ``torch.inference_mode`` in batches of ``batch_size``,
    with the model in eval mode (restored afterwards), plus one sparse solve per image on the
    CPU (about a second at 224 x 224 with most pixels removed).

    Args:
        model: classifier returning logits (N, classes).
        inputs: (N, C, H, W) normalized images.
        maps: (N, 1 or C, h, w) or (N, h, w) maps, resized bilinearly to H x W when needed.
        target: one class for all images, one per image, None for each image's top-1, or any
            target of :func:`galleryvis.attribute` that has a confidence.
        percentile: share of the pixels removed, 0 <= percentile < 100.
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        rank_by: ``"signed"`` or ``"abs"``, as in :func:`deletion_insertion`.
        noise: standard deviation of the imputation noise (0: none).
        seed: seed of the noise.
        batch_size: imputed images per forward pass.

    Returns:
        (N,) float64: the target's softmax probability on each imputed image.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        desc = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a float tensor of shape (N, C, H, W), got {desc}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 <= percentile < 100:
        raise ValueError(f"percentile must be a number in [0, 100), got {percentile!r}")
    if order not in ("morf", "lerf"):
        raise ValueError(f"unknown order {order!r}; choose 'morf' or 'lerf'")
    if rank_by not in ("signed", "abs"):
        raise ValueError(f"unknown rank_by {rank_by!r}; choose 'signed' or 'abs'")
    if not noise >= 0 or batch_size < 1:
        raise ValueError("noise must be >= 0 and batch_size >= 1")
    device = model_device(model)
    x = inputs.detach().to(device)
    n, c, h, w = x.shape
    ranks = _pixel_ranks(_check_maps(maps, n, x), [rank_by] * n).to(device)
    count = round(percentile / 100 * h * w)
    removed = (ranks < count) if order == "morf" else (ranks >= h * w - count)
    noises = torch.stack([torch.randn((c, h, w), generator=torch.Generator().manual_seed(seed)) for _ in range(n)])
    with prepared(model), torch.inference_mode():  # one forward per image: folding would not pay
        objective = targets.resolve(target, model, x, batch_size)
        targets.require_confidence(objective, "road")
        imputed = linear_imputation(x, removed[:, None]) + noise * noises.to(device, x.dtype) * removed[:, None]
        probs = [ts.confidence(model(fast_layout(xs)))
                 for xs, ts in zip(imputed.split(batch_size), objective.split(batch_size))]
    return torch.cat(probs).double().cpu().numpy()


def linear_imputation(x: Tensor, removed: Tensor) -> Tensor:
    """``x`` (N, C, H, W) with the pixels where ``removed`` (N, 1, H, W) is True replaced by
    the solution of ROAD's linear system: each removed pixel is the weighted mean
    (:data:`_ROAD_WEIGHTS`) of its neighbours inside the image, removed ones included. One
    sparse direct solve per image (scipy), every channel a right-hand side of it."""
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError:
        raise ImportError("ROAD's imputation needs scipy: pip install 'galleryvis[road]'") from None
    n, c, h, w = x.shape
    out = x.detach().double().cpu().numpy().copy()
    holes = removed.reshape(n, h, w).cpu().numpy()
    for i in range(n):
        rows, cols = np.nonzero(holes[i])
        if not len(rows):
            continue
        unknown = np.full((h, w), -1)
        unknown[rows, cols] = np.arange(len(rows))
        diag = np.zeros(len(rows))
        rhs = np.zeros((len(rows), c))
        ii, jj, vv = [], [], []
        for dy, weights in zip((-1, 0, 1), _ROAD_WEIGHTS):
            for dx, weight in zip((-1, 0, 1), weights):
                if not weight:
                    continue
                ny, nx = rows + dy, cols + dx
                inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
                diag[inside] += weight
                eq, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
                hole = unknown[ny, nx] >= 0
                ii.append(eq[hole])
                jj.append(unknown[ny[hole], nx[hole]])
                vv.append(np.full(int(hole.sum()), -weight))
                rhs[eq[~hole]] += weight * out[i][:, ny[~hole], nx[~hole]].T
        size = len(rows)
        system = coo_matrix((np.concatenate(vv + [diag]), (np.concatenate(ii + [np.arange(size)]),
                                                            np.concatenate(jj + [np.arange(size)]))),
                            shape=(size, size)).tocsc()
        out[i][:, rows, cols] = np.asarray(spsolve(system, rhs)).reshape(size, c).T
    return torch.from_numpy(out).to(x.device, x.dtype)


# --- baselines ----------------------------------------------------------------------------------


def random_map(shape: Sequence[int], seed: int = 0, *, cells: int | None = None) -> Tensor:
    """The random baseline: uniform noise in [0, 1), float32 CPU, from a generator seeded by ``seed``.

    ``shape`` is the map's shape, e.g. (N, 1, H, W). With ``cells``, the noise is drawn on a
    ``cells`` x ``cells`` grid and upsampled bilinearly to H x W: a random map with the blob
    structure of a CAM instead of independent pixels (see docs/metrics.md for why it matters).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape needs at least (H, W), all positive, got {shape}")
    g = torch.Generator().manual_seed(int(seed))
    if cells is None:
        return torch.rand(shape, generator=g)
    lead, (h, w) = shape[:-2], shape[-2:]
    m = math.prod(lead)
    coarse = torch.rand((m, 1, cells, cells), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).reshape(shape)


def center_gaussian_map(shape: Sequence[int], sigma: float = 0.25) -> Tensor:
    """The centre baseline: a Gaussian bump at the image centre, float32 CPU, broadcast to ``shape``.

    ``sigma`` is a fraction of the height (rows) and width (columns). Photographers centre
    their subject, so this baseline is hard to beat on ImageNet-like photos.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1 or not sigma > 0:
        raise ValueError(f"shape needs at least (H, W), all positive, and sigma > 0; got {shape}, {sigma}")
    h, w = shape[-2:]
    y = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) / (sigma * h)
    x = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) / (sigma * w)
    bump = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / 2).float()
    return bump.expand(shape).clone()


# --- ranking ------------------------------------------------------------------------------------


def rank_techniques(scores: Mapping[str, tuple[float, float]]) -> list[dict[str, Any]]:
    """Rows of a ranking table, best first, by ``insertion - deletion``.

    Args:
        scores: technique (or baseline) name -> (mean deletion AUC, mean insertion AUC).

    Returns:
        One dict per entry: ``technique``, ``deletion``, ``insertion``, ``score`` (insertion -
        deletion) and ``rank`` (1 = best). Scores equal to 9 decimals share a rank (1, 2, 2, 4)
        and are listed by name; entries with a NaN score come last with rank None.
    """
    rows = []
    for name, (deletion, insertion) in scores.items():
        d, i = float(deletion), float(insertion)
        rows.append({"technique": name, "deletion": d, "insertion": i, "score": i - d, "rank": None})

    def tied(score: float) -> float:  # 0.6 - 0.2 and 0.5 - 0.1 are the same score
        return 0.0 if math.isnan(score) else round(score, 9)

    rows.sort(key=lambda r: (math.isnan(r["score"]), -tied(r["score"]), r["technique"]))
    for pos, row in enumerate(rows):
        if math.isnan(row["score"]):
            break
        prev = rows[pos - 1] if pos else None
        same = prev is not None and tied(prev["score"]) == tied(row["score"])
        row["rank"] = prev["rank"] if same else pos + 1
    return rows


# --- sanity: cascading randomization ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sanity:
    """Result of :func:`sanity` for N images.

    Attributes:
        similarity: (N,) Spearman correlation of |map| with the original map once every step of
            the cascade is randomized (the last row of ``curve``). Near 1: the map ignores the
            learned parameters.
        curve: (steps, N) the same after each cascade step.
        control: (N,) the same for the map recomputed on the unchanged copy (1.0 for
            deterministic techniques): the reference ``similarity`` should fall well below;
            None when :func:`sanity_many` was asked not to compute it.
        cascade: for each step, the names of the modules re-initialized at that step.
        protocol: one line describing the test.
    """

    similarity: np.ndarray
    curve: np.ndarray
    control: np.ndarray | None
    cascade: tuple[tuple[str, ...], ...]
    protocol: str


def sanity(
    model: nn.Module,
    inputs: Tensor,
    technique: str,
    target: Target,
    layer: str | Sequence[str] | None = None,
    *,
    max_steps: int | None = 10,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    technique_params: Mapping[str, Any] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **params: Any,
) -> Sanity:
    """Cascading model-parameter randomization (Adebayo et al. 2018) for ``technique``.

    Works on ``copy.deepcopy(model)``; the caller's model is never modified. The modules that
    own parameters are ordered by their first call in a probe forward (one whose weights its
    parent reads without calling it, as in attention, right after that parent); the cascade walks them
    from the last (the logits layer) to the first. With ``max_steps=None`` each step
    re-initializes one module; otherwise the modules are split into at most ``max_steps``
    evenly sized consecutive groups (Lite0 has 99 parametrized modules). After each step the
    map is recomputed with :func:`galleryvis.attribute` for the same targets (resolved once on
    the unchanged model) and compared with the original by the per-image Spearman rank
    correlation of |map| summed over channels (average ranks for ties; NaN when a map is
    constant).

    Re-initialization is PyTorch's default: convolution / linear weights and biases
    ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn on the CPU from ``torch.Generator``s seeded by
    ``seed`` and the module's position (so a module gets the same values whatever the grouping);
    normalization layers get weight 1, bias 0 and fresh running statistics (mean 0, var 1);
    any other parametrized module gets Gaussian noise with its parameters' mean and std.

    Args:
        model, inputs, technique, target, layer: as for :func:`galleryvis.attribute`.
        max_steps: at most this many cascade steps (None: one per parametrized module).
        seed: seed of the re-initialization.
        batch_size: passed to :func:`galleryvis.attribute`.
        technique_params: technique parameters whose names clash with the options above
            (e.g. SmoothGrad's ``seed``); merged with ``**params``.
        mean, std: the model's input normalization, as for :func:`galleryvis.attribute`.
        **params: the technique's parameters.

    Returns:
        :class:`Sanity`. Cost: ``steps + 2`` calls of :func:`galleryvis.attribute` (original,
        control, one per step), plus a deep copy of the model. :func:`sanity_many` runs several
        techniques through the same cascade.
    """
    tparams = dict(technique_params or {})
    clash = set(tparams) & set(params)
    if clash:
        raise ValueError(f"technique parameters given twice: {sorted(clash)}")
    tparams.update(params)
    return sanity_many(model, inputs, {technique: Call(technique, layer, tparams)}, target, max_steps=max_steps,
                       seed=seed, batch_size=batch_size, mean=mean, std=std)[technique]


def sanity_many(
    model: nn.Module,
    inputs: Tensor,
    calls: Mapping[str, Call],
    target: Target,
    *,
    max_steps: int | None = 10,
    seed: int = 0,
    batch_size: int | Chunking = DEFAULT_BATCH_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    control: bool = True,
    within: Callable[[int, int], None] | None = None,
) -> dict[str, Sanity]:
    """:func:`sanity` for several techniques (``{id: Call}``, as for
    :func:`galleryvis.engine.attribute_calls`) through one cascade: one copy of the model,
    randomized once per step, and at each step one ``attribute_calls`` call for all of them, so
    they share their passes. Each technique's result equals its own :func:`sanity` (the same
    cascade and targets; the maps agree to float rounding, which shared passes and batch-norm
    folding can move). ``control=False`` skips the control recomputation (``Sanity.control``
    is then None): one call fewer, for callers that only read ``similarity``. ``within(done,
    total)``: how far the cascade is, in ``attribute_calls`` calls (finer while a long technique
    runs), for a progress bar.
    """
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be an int >= 1 or None, got {max_steps!r}")
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError("inputs must be a float tensor of shape (N, C, H, W)")

    net = copy.deepcopy(model)
    x = inputs.detach().to(model_device(net))
    with prepared(net), torch.no_grad():
        objective = targets.resolve(target, net, x, chunking_of(batch_size, x.device).forward)
        order = _call_order(net, x[:1])
    if not order:
        raise ValueError("the model has no parameters to randomize")

    cascade = list(reversed(order))  # logits first
    groups = _groups(len(cascade), max_steps)
    total = 1 + control + len(groups)  # attribute_calls calls
    done = [0]

    def explain() -> dict[str, np.ndarray]:
        inner = None if within is None else (lambda _key, d, t: within(done[0] * t + d, total * t))
        maps = attribute_calls(net, x, calls, objective, batch_size=batch_size, mean=mean, std=std, within=inner)
        done[0] += 1
        if within is not None:
            within(done[0], total)
        return {key: m.abs().sum(1).flatten(1).double().numpy() for key, m in maps.items()}

    original = explain()
    again = explain() if control else None
    curves: dict[str, list[np.ndarray]] = {key: [] for key in calls}
    names: list[tuple[str, ...]] = []
    for lo, hi in groups:
        step = cascade[lo:hi]
        for name, module, index in step:
            reinitialize(module, seed, index)
        names.append(tuple(name for name, _, _ in step))
        for key, m in explain().items():
            curves[key].append(spearman(original[key], m))
    out = {}
    for key, call in calls.items():
        curve = np.stack(curves[key])
        protocol = (f"cascading randomization (Adebayo et al. 2018) of {call.name}: {len(cascade)} parametrized "
                    f"modules re-initialized from the logits towards the input in {len(groups)} steps "
                    f"(seed {seed}); Spearman rank correlation of |map| (channel sum) with the original")
        out[key] = Sanity(similarity=curve[-1], curve=curve,
                          control=None if again is None else spearman(original[key], again[key]),
                          cascade=tuple(names), protocol=protocol)
    return out


def _call_order(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, int]]:
    """(name, module, index) of every module owning parameters, by first call in a forward. An
    owner that is never called itself, whose weights its parent's functional code reads (the
    ``out_proj`` of torchvision's ``nn.MultiheadAttention``, Swin's ``qkv`` and ``proj``), comes
    right after its nearest called ancestor."""
    named = list(model.named_modules())
    with first_calls(model) as first:  # id(module) -> rank of its first call
        model(x)
    modules = dict(named)
    order = []
    for index, (name, m) in enumerate(named):
        if next(m.parameters(recurse=False), None) is None:
            continue
        called = id(m) in first
        ancestor = name
        while id(modules[ancestor]) not in first and ancestor:
            ancestor = ancestor.rpartition(".")[0]
        if id(modules[ancestor]) in first:
            order.append(((first[id(modules[ancestor])], not called, index), (name, m, index)))
    return [entry for _, entry in sorted(order, key=lambda item: item[0])]


def _groups(count: int, max_steps: int | None) -> list[tuple[int, int]]:
    steps = count if max_steps is None else min(count, max_steps)
    cuts = [round(j * count / steps) for j in range(steps + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def spearman(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> np.ndarray:
    """Per-row Spearman rank correlation of (N, ...) arrays, flattened per row: (N,).

    Ties get their average rank; a row where either side is constant gives NaN.
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    out = np.empty(len(a))
    for i in range(len(a)):
        ra, rb = _average_ranks(a[i]), _average_ranks(b[i])
        ra -= ra.mean()
        rb -= rb.mean()
        den = math.sqrt(float(ra @ ra) * float(rb @ rb))
        out[i] = float(ra @ rb) / den if den > 0 else math.nan
    return out


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 0 ... n-1 of a 1-D array, tied values sharing their average rank."""
    order = np.argsort(v, kind="stable")
    s = v[order]
    new = np.empty(len(s), dtype=bool)
    new[:1] = True
    new[1:] = s[1:] != s[:-1]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(s)))
    avg = starts + (counts - 1) / 2
    ranks = np.empty(len(s))
    ranks[order] = avg[group]
    return ranks


# --- Quantus-grade metrics (galleryvis.evaluation), one value per image -------------------------

from .evaluation import (attribution_localisation, auc_localisation, average_drop, average_increase,  # noqa: E402
                         avg_sensitivity, box_mask, completeness, complexity, faithfulness_correlation, infidelity, irof,
                         local_lipschitz_estimate, max_sensitivity, monotonicity_correlation, pixel_flipping,
                         pointing_game, random_logit, region_perturbation, relative_input_stability,
                         relevance_mass_accuracy, relevance_rank_accuracy, sparseness, sufficiency,
                         top_k_intersection)
from .meta_evaluation import (METRICS, Agreement, MetricInfo, agreement, agreement_by_category,  # noqa: E402
                              kendall_tau_b, metrics_table)
