"""Raw maps (numpy float arrays) -> display images (PIL RGB), saved as deterministic PNGs.

numpy and Pillow only: this module never imports torch. Map kinds and their variants, in the
order :func:`variants` returns them:

========== ======================= ==============================================================
kind       raw shape               variants
========== ======================= ==============================================================
gradient   (C, H, W), signed       ``color``, ``saliency`` (+ ``positive``, ``negative`` if guided)
cam        (1, H, W), >= 0         ``map``, ``heatmap``, ``overlay``
signed     (C, H, W), signed       ``diverging``, ``saliency``
image      (3, H, W) in [0, 1]     ``image``
========== ======================= ==============================================================

Non-finite values never crash: NaN becomes 0, and +Inf / -Inf become the largest / smallest
finite value of the map (with 0 included in that range). A map with no spread (all zero or
constant) renders black, except the diverging view, which renders the centre colour.
"""
from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from cmap import Colormap
from PIL import Image

from galleryvis.storage.fileio import atomic_write
from galleryvis.registry import suggest

#: Every colormap name offered, with what it is for (see docs/colormaps.md).
COLORMAPS: dict[str, str] = {
    "inferno": "perceptually uniform black-red-yellow; default for CAM heatmaps",
    "viridis": "perceptually uniform blue-green-yellow; colour-vision-deficiency safe",
    "magma": "perceptually uniform black-purple-cream; softer than inferno",
    "cividis": "perceptually uniform blue-yellow, designed for colour-vision deficiency",
    "gray": "black to white; the plain intensity ramp",
    "turbo": "improved rainbow (Google); jet-like look with smoother lightness",
    "jet": "classic rainbow (matplotlib/MATLAB jet); the early seed (cv2) heatmap look",
    "hsv": "cyclic hue wheel; the seed's CAM heatmap colormap (misleading: both ends are red)",
    "vik": "perceptually uniform diverging blue-white-red (Crameri); default for signed maps",
    "RdBu_r": "ColorBrewer diverging blue-white-red",
    "coolwarm": "Moreland's smooth diverging blue-grey-red",
    "bwr": "linear diverging blue-white-red (pure blue, white, pure red)",
    "seismic": "diverging dark blue-white-dark red; the seed's LRP colormap",
}

#: Fully namespaced ``cmap`` catalogue names (avoids cmap's ambiguous-alias warnings).
_CMAP_IDS: dict[str, str] = {
    "inferno": "bids:inferno",
    "viridis": "bids:viridis",
    "magma": "bids:magma",
    "cividis": "cividis:cividis",
    "gray": "matlab:gray",
    "turbo": "google:turbo",
    "jet": "matlab:jet",
    "hsv": "matlab:hsv",
    "vik": "crameri:vik",
    "RdBu_r": "colorbrewer:rdbu_r",
    "coolwarm": "matplotlib:coolwarm",
    "bwr": "matplotlib:bwr",
    "seismic": "matplotlib:seismic",
}

DEFAULT_COLORMAP = "inferno"
DEFAULT_DIVERGING = "vik"
KINDS = ("gradient", "cam", "signed", "image")

Variant = tuple[str, str, Image.Image]


# -- colormaps ----------------------------------------------------------------------------------
_BY_LOWER = {k.lower(): k for k in COLORMAPS}


def _canonical(name: str) -> str:
    if name.lower() in _BY_LOWER:
        return _BY_LOWER[name.lower()]
    raise ValueError(f"unknown colormap {name!r}{suggest(name, COLORMAPS, fold_case=True)}; "
                     f"known: {', '.join(COLORMAPS)}")


@functools.lru_cache(maxsize=None)
def _lut(name: str) -> np.ndarray:
    """256 x 3 uint8 lookup table of an offered colormap (read-only, cached)."""
    rgba = Colormap(_CMAP_IDS[name]).lut(256)
    table = np.clip(np.rint(rgba[:, :3] * 255.0), 0, 255).astype(np.uint8)
    table.setflags(write=False)
    return table


def apply_colormap(x01: np.ndarray, name: str) -> np.ndarray:
    """Values in [0, 1] (any shape, e.g. (H, W)) -> uint8 colours of shape (..., 3).

    Entry ``min(floor(x * 256), 255)`` of a 256-entry LUT, as matplotlib indexes; values
    outside [0, 1] are clipped and NaN counts as 0. Names are case-insensitive keys of
    :data:`COLORMAPS`.

    Raises:
        ValueError: unknown colormap name (the message suggests close names).
    """
    x = np.clip(np.nan_to_num(np.asarray(x01, dtype=np.float64), nan=0.0), 0.0, 1.0)
    idx = np.minimum((x * 256).astype(np.intp), 255)
    return _lut(_canonical(name))[idx]


# -- normalization ------------------------------------------------------------------------------
#: Percent of a map's largest magnitudes clipped by default (captum's ``outlier_perc``).
OUTLIER_PERC = 0.5

#: What each display variant encodes, and so the value range its colour scale spans.
QUANTITY: dict[str, str] = {
    "color": "gradient per colour channel",
    "saliency": "|map| summed over channels",
    "positive": "positive part of the gradient",
    "negative": "negative part of the gradient",
    "map": "map value",
    "heatmap": "map value",
    "overlay": "map value",
    "diverging": "map summed over channels",
}

#: The colours at the low and high end of every offered colormap, as a reader names them.
ENDS: dict[str, tuple[str, str]] = {
    "inferno": ("black", "yellow"), "viridis": ("purple", "yellow"), "magma": ("black", "cream"),
    "cividis": ("blue", "yellow"), "gray": ("black", "white"), "turbo": ("blue", "red"),
    "jet": ("blue", "red"), "hsv": ("red", "red"), "vik": ("blue", "red"), "RdBu_r": ("blue", "red"),
    "coolwarm": ("blue", "red"), "bwr": ("blue", "red"), "seismic": ("blue", "red"),
}

Limits = dict[str, tuple[float, float]]


def _finite(raw: np.ndarray) -> np.ndarray:
    """float64 copy with NaN -> 0 and +/-Inf -> the finite range (0 included)."""
    a = np.asarray(raw, dtype=np.float64)
    ok = np.isfinite(a)
    if ok.all():
        return a.copy()
    hi = max(float(a[ok].max()), 0.0) if ok.any() else 0.0
    lo = min(float(a[ok].min()), 0.0) if ok.any() else 0.0
    return np.nan_to_num(a, nan=0.0, posinf=hi, neginf=lo)


def _check_outlier_perc(outlier_perc: float) -> float:
    if not 0.0 <= outlier_perc < 100.0:
        raise ValueError(f"outlier_perc must be in [0, 100), got {outlier_perc}")
    return 100.0 - outlier_perc


def _upper(values: np.ndarray, pct: float) -> float:
    """The ``pct`` percentile of non-negative ``values``; their maximum when that is 0 (a sparse map)."""
    hi = float(np.percentile(values, pct))
    return hi if hi > 0.0 else float(values.max(initial=0.0))


def _saliency(a: np.ndarray) -> np.ndarray:
    return np.abs(a).sum(axis=0) if a.ndim == 3 else np.abs(a)


#: The variant whose quantity (:data:`QUANTITY`) :func:`display_values` returns, per map kind.
MAIN_VARIANT = {"cam": "map", "signed": "diverging", "gradient": "saliency"}


def display_values(kind: str, raw: np.ndarray) -> np.ndarray:
    """The (H, W) quantity of a map kind's :data:`MAIN_VARIANT`: the CAM itself, the channel sum
    of a signed map, the saliency of a gradient; what the viewer shows under the pointer."""
    a = _finite(raw)
    if kind == "cam":
        return a[0]
    if kind == "signed":
        return a.sum(axis=0)
    if kind == "gradient":
        return _saliency(a)
    raise ValueError(f"a {kind!r} map has no display values")


def limits(kind: str, raws: list[np.ndarray], outlier_perc: float = OUTLIER_PERC) -> Limits:
    """The value range each variant's colours span, shared by every map in ``raws`` (one map for
    a per-map scale, a row's or an image's maps for a shared one): ``variant key -> (low, high)``.

    Gradient-family views clip the largest ``outlier_perc`` percent of magnitudes (captum's
    ``outlier_perc``; Smilkov et al.'s saliency): the colored gradient and signed maps
    symmetrically around 0, saliency and the guided positive / negative parts from 0. CAMs
    span their minimum to maximum, as the CAM papers and pytorch-grad-cam scale them.
    """
    pct = _check_outlier_perc(outlier_perc)
    maps = [_finite(r) for r in raws]
    if kind == "image" or not maps:
        return {"image": (0.0, 1.0)}
    if kind == "cam":
        lo = min(float(m.min()) for m in maps)
        hi = max(float(m.max()) for m in maps)
        return {k: (lo, hi) for k in ("map", "heatmap", "overlay")}
    out: Limits = {"saliency": _saliency_span(np.concatenate([_saliency(m).ravel() for m in maps]), pct)}
    if kind == "signed":
        lim = _upper(np.abs(np.concatenate([m.sum(axis=0).ravel() for m in maps])), pct)
        return {"diverging": (-lim, lim), **out}
    if kind != "gradient":
        raise ValueError(f"unknown map kind {kind!r}{suggest(kind, KINDS)}; known: {', '.join(KINDS)}")
    flat = np.concatenate([m.ravel() for m in maps])
    lim = _upper(np.abs(flat), pct)
    return {"color": (-lim, lim), **out,
            "positive": (0.0, _upper(np.maximum(flat, 0.0), pct)),
            "negative": (0.0, _upper(np.maximum(-flat, 0.0), pct))}


def _saliency_span(sal: np.ndarray, pct: float) -> tuple[float, float]:
    lo = float(sal.min())
    return lo, lo + _upper(sal - lo, pct)


def _scaled(a: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """``a`` mapped linearly so ``span`` becomes [0, 1], clipped; no spread -> zeros, or 0.5 for
    a symmetric span (the centre colour of a signed map)."""
    lo, hi = span
    if hi <= lo:
        return np.full_like(a, 0.5 if lo == -hi else 0.0)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


# -- to images ----------------------------------------------------------------------------------
def _u8(x01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x01 * 255.0), 0, 255).astype(np.uint8)


def _grey(x01: np.ndarray) -> Image.Image:
    return Image.fromarray(_u8(x01), "L").convert("RGB")


def _rgb(chw01: np.ndarray) -> Image.Image:
    """(3, H, W) or (1, H, W) in [0, 1] -> RGB image."""
    hwc = np.repeat(chw01, 3, axis=0) if chw01.shape[0] == 1 else chw01
    return Image.fromarray(np.ascontiguousarray(_u8(hwc).transpose(1, 2, 0)), "RGB")


def _colored(x01: np.ndarray, name: str) -> Image.Image:
    return Image.fromarray(apply_colormap(x01, name), "RGB")


def _check_shape(kind: str, raw: np.ndarray, channels: tuple[int, ...] | None) -> None:
    if raw.ndim != 3 or (channels is not None and raw.shape[0] not in channels):
        want = "(C, H, W)" if channels is None else f"({' or '.join(map(str, channels))}, H, W)"
        raise ValueError(f"a {kind!r} map must have shape {want}, got {raw.shape}")
    if raw.shape[1] == 0 or raw.shape[2] == 0:
        raise ValueError(f"a {kind!r} map must not be empty, got shape {raw.shape}")


def variants(
    kind: str,
    raw: np.ndarray,
    image: Image.Image | None,
    *,
    colormap: str | None = None,
    diverging: str | None = None,
    alpha: float = 0.5,
    guided: bool = False,
    scale: Limits | None = None,
    outlier_perc: float = OUTLIER_PERC,
) -> list[Variant]:
    """Display variants of one raw map as ``(key, human label, RGB image)`` in a fixed order.

    Args:
        kind: ``gradient``, ``cam``, ``signed`` or ``image`` (shapes in the module doc).
        raw: the technique's map for one image, at the image's resolution.
        image: the fitted input crop, same H x W; needed only for the CAM ``overlay``, which
            is left out when ``image`` is None.
        colormap: sequential colormap of CAM heatmaps (default :data:`DEFAULT_COLORMAP`).
        diverging: colormap of signed maps, centred at 0 (default :data:`DEFAULT_DIVERGING`).
        alpha: heatmap weight of the overlay, ``alpha * heatmap + (1 - alpha) * image``.
        guided: add the positive and negative saliency of a guided-backprop gradient.
        scale: the value range of each variant (:func:`limits` of a group of maps that share
            one scale); default: this map's own, clipping ``outlier_perc`` percent.
        outlier_perc: percent of the largest magnitudes clipped when ``scale`` is None.

    Raises:
        ValueError: unknown kind or colormap, wrong shape, alpha or outlier_perc out of range,
            or an overlay image whose size differs from the map.
    """
    cmap_name = _canonical(colormap or DEFAULT_COLORMAP)
    div_name = _canonical(diverging or DEFAULT_DIVERGING)
    _check_alpha(alpha)
    if kind not in KINDS:
        raise ValueError(f"unknown map kind {kind!r}{suggest(kind, KINDS)}; known: {', '.join(KINDS)}")
    a = np.asarray(raw)
    _check_shape(kind, a, {"gradient": (1, 3), "cam": (1,), "signed": None, "image": (1, 3)}[kind])
    m = _finite(a)
    if kind == "image":
        return [("image", "Image", _rgb(np.clip(m, 0.0, 1.0)))]
    span = scale if scale is not None else limits(kind, [m], outlier_perc)
    if kind == "gradient":
        out = [
            ("color", "Colored gradient", _rgb(_scaled(m, span["color"]))),
            ("saliency", "Saliency", _grey(_scaled(_saliency(m), span["saliency"]))),
        ]
        if guided:
            out.append(("positive", "Positive saliency", _rgb(_scaled(np.maximum(m, 0.0), span["positive"]))))
            out.append(("negative", "Negative saliency", _rgb(_scaled(np.maximum(-m, 0.0), span["negative"]))))
        return out
    if kind == "cam":
        c = _scaled(m[0], span["map"])
        out = [("map", "Map", _grey(c)), ("heatmap", "Heatmap", _colored(c, cmap_name))]
        if image is not None:
            if image.size != (c.shape[1], c.shape[0]):
                raise ValueError(
                    f"overlay image is {image.size[0]}x{image.size[1]} but the map is "
                    f"{c.shape[1]}x{c.shape[0]}"
                )
            out.append(("overlay", "Heatmap on image", Image.blend(image.convert("RGB"), out[1][2], alpha)))
        return out
    return [
        ("diverging", "Signed map", _colored(_scaled(m.sum(axis=0), span["diverging"]), div_name)),
        ("saliency", "Saliency", _grey(_scaled(_saliency(m), span["saliency"]))),
    ]


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")


# -- the whole photo ------------------------------------------------------------------------------
#: A box in a photo's pixels: (left, top, right, bottom).
Box = tuple[float, float, float, float]


def on_photo(kind: str, raw: np.ndarray, photo: Image.Image, box: Box, *, colormap: str | None = None,
             diverging: str | None = None, alpha: float = 0.5, outlier_perc: float = OUTLIER_PERC) -> Image.Image:
    """The map over the whole photo, at the photo's size: the map's main display values
    (:func:`display_values`, on its own colour scale as :func:`limits` spans it) in the
    sequential ``colormap`` (the ``diverging`` one for a signed map), resized into ``box`` (what
    the model saw, to the nearest pixel) and blended there as ``alpha * colour + (1 - alpha) *
    photo``; outside ``box`` the photo as it is, and the box outlined when the model saw less
    than the whole photo.

    Raises:
        ValueError: an ``image`` kind (a picture, not a map), an unknown colormap, ``alpha`` out
            of range, or a box that misses the photo.
    """
    _check_alpha(alpha)
    name = _canonical((diverging or DEFAULT_DIVERGING) if kind == "signed" else (colormap or DEFAULT_COLORMAP))
    a = _finite(np.asarray(raw))
    x01 = _scaled(display_values(kind, a), limits(kind, [a], outlier_perc)[MAIN_VARIANT[kind]])
    frame = photo.convert("RGB")
    width, height = frame.size
    left, top = max(0, round(box[0])), max(0, round(box[1]))
    right, bottom = min(width, round(box[2])), min(height, round(box[3]))
    if right <= left or bottom <= top:
        raise ValueError(f"box {box} misses the {width}x{height} photo")
    region = (left, top, right, bottom)
    values = Image.fromarray(x01.astype(np.float32), "F").resize((right - left, bottom - top),
                                                                 Image.Resampling.BILINEAR)
    colour = Image.fromarray(apply_colormap(np.asarray(values), name), "RGB")
    out = frame.copy()
    out.paste(Image.blend(frame.crop(region), colour, alpha), region[:2])
    if region != (0, 0, width, height):
        out = outline(out, _box_mask(out.size, region))
    return out


def _box_mask(size: tuple[int, int], box: Box) -> np.ndarray:
    """The pixels of a box ``(x0, y0, x1, y1)`` (pixels, to the nearest pixel edge) in a picture
    of ``size`` (width, height): a boolean (height, width) array, clipped to the picture."""
    width, height = size
    left, top = min(width, max(0, round(box[0]))), min(height, max(0, round(box[1])))
    right, bottom = min(width, max(0, round(box[2]))), min(height, max(0, round(box[3])))
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def _tag(draw: Any, xy: tuple[float, float], text: str, fill: tuple[int, int, int], width: int) -> None:
    """``text`` on a tag of colour ``fill`` whose top-left corner is at ``xy`` (kept inside a
    picture ``width`` wide), in white or black, whichever reads better on it."""
    left, top, right, bottom = draw.textbbox((0, 0), text)
    x = min(max(0.0, xy[0]), max(0.0, width - (right - left) - 2))
    draw.rectangle((x, xy[1], x + right - left + 2, xy[1] + bottom + 2), fill=fill)
    light = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] < 140
    draw.text((x + 1, xy[1] + 1 - top / 2), text, fill=(255, 255, 255) if light else (0, 0, 0))


def draw_boxes(img: Image.Image, boxes: list[Box], colours: list[str], texts: list[str] | None = None,
               alpha: float = 1.0) -> Image.Image:
    """A copy of ``img`` with ``boxes`` ``(x0, y0, x1, y1)`` (its pixels) drawn, each in its CSS
    colour (``#rrggbb``), blended as ``alpha * line + (1 - alpha) * picture`` (faint below 1),
    ``min(size) / 200`` pixels wide (at least 1), with its text (class and score) on a tag of
    its colour at its top-left corner when ``texts`` gives one; the later boxes over the earlier.

    Raises:
        ValueError: ``alpha`` out of range, or not as many colours (and texts) as boxes.
    """
    from PIL import ImageDraw

    _check_alpha(alpha)
    if len(colours) != len(boxes) or (texts is not None and len(texts) != len(boxes)):
        raise ValueError(f"{len(boxes)} boxes need as many colours and texts, got {len(colours)} and "
                         f"{len(texts or ())}")
    base = img.convert("RGB")
    layer = base.copy()
    draw = ImageDraw.Draw(layer)
    line = max(1, round(min(img.size) / 200))
    for i, (box, colour) in enumerate(zip(boxes, colours)):
        fill = tuple(int(colour[k:k + 2], 16) for k in (1, 3, 5))
        draw.rectangle(tuple(float(v) for v in box), outline=fill, width=line)
        if texts is not None and texts[i]:
            _tag(draw, (float(box[0]), float(box[1])), texts[i], fill, img.width)  # type: ignore[arg-type]
    return Image.blend(base, layer, alpha)


def outline_box(img: Image.Image, box: Box, text: str = "") -> Image.Image:
    """A copy of ``img`` with a box ``(x0, y0, x1, y1)`` (its pixels) outlined as :func:`outline`
    outlines a region (white just inside, black just outside) and ``text`` on a black tag at its
    left edge, where it hides none of the box: just above its outline, else (a box at the
    picture's top) just below it, else (no room either side) inside its top-left corner."""
    from PIL import ImageDraw

    out = outline(img, _box_mask(img.size, box))
    if text:
        draw = ImageDraw.Draw(out)
        _, top, _, bottom = draw.textbbox((0, 0), text)
        tall, line = bottom + 3, max(1, round(min(img.size) / 200))  # the tag's height (_tag), the outline's width
        above, below = float(box[1]) - line - tall, float(box[3]) + line
        y = above if above >= 0 else below if below + tall <= out.height else float(box[1])
        _tag(draw, (float(box[0]), y), text, (0, 0, 0), out.width)
    return out


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` eroded by a (2r + 1)-pixel square, the picture's border continued outwards."""
    h, w = mask.shape
    padded = np.pad(mask, r, mode="edge")
    rows = np.logical_and.reduce([padded[k:k + h] for k in range(2 * r + 1)])
    return np.logical_and.reduce([rows[:, k:k + w] for k in range(2 * r + 1)])


def outline(img: Image.Image, mask: np.ndarray) -> Image.Image:
    """A copy of ``img`` with the edge of a region drawn: a white line just inside ``mask`` (a
    boolean (H, W) array of the picture's size) and a black one just outside, visible on any
    photo; ``min(size) / 200`` pixels wide (at least 1). The picture's own border is no edge.

    Raises:
        ValueError: a mask of another size than the picture.
    """
    m = np.asarray(mask, dtype=bool)
    if m.shape != (img.height, img.width):
        raise ValueError(f"the region is {m.shape[1]}x{m.shape[0]} but the picture is {img.width}x{img.height}")
    line = max(1, round(min(img.size) / 200))
    out = np.array(img.convert("RGB"))
    out[~m & ~_erode(~m, line)] = 0
    out[m & ~_erode(m, line)] = 255
    return Image.fromarray(out, "RGB")


# -- label maps ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def palette() -> np.ndarray:
    """The categorical colours of a label map, (K, 3) uint8, class ``i`` in colour ``i % K``:
    black for class 0 (a segmentation's background), then Tableau's 20 (its ten strong colours,
    then their light ones), then Glasbey's (white left out). Read-only."""
    tab = [c.color.rgba8[:3] for c in Colormap("tableau:tab20").color_stops]
    glasbey = [c.color.rgba8[:3] for c in Colormap("glasbey:glasbey").color_stops][1:]
    table = np.array([(0, 0, 0), *tab[0::2], *tab[1::2], *glasbey], dtype=np.uint8)
    table.setflags(write=False)
    return table


def label_colour(index: int) -> str:
    """Class ``index``'s colour in a label map (:func:`palette`) as CSS ``#rrggbb``."""
    r, g, b = palette()[index % len(palette())].tolist()
    return f"#{r:02x}{g:02x}{b:02x}"


def label_picture(labels: np.ndarray, image: Image.Image, alpha: float = 0.5,
                  explained: int | None = None) -> Image.Image:
    """A label map (an (H, W) array of class indices) drawn over ``image`` (its size): each
    class in its :func:`palette` colour, blended as ``alpha * colour + (1 - alpha) * image``,
    the pixels of class ``explained`` outlined (:func:`outline`).

    Raises:
        ValueError: ``alpha`` out of range, or an image of another size than the labels.
    """
    _check_alpha(alpha)
    lab = np.asarray(labels)
    if lab.shape != (image.height, image.width):
        raise ValueError(f"the labels are {lab.shape[1]}x{lab.shape[0]} but the image is {image.width}x{image.height}")
    colours = Image.fromarray(palette()[lab.astype(np.intp) % len(palette())], "RGB")
    out = Image.blend(image.convert("RGB"), colours, alpha)
    if explained is not None and (lab == explained).any():
        out = outline(out, lab == explained)
    return out


def label_png(labels: np.ndarray) -> bytes:
    """A label map as a lossless PNG whose pixel values are the class indices: a palette PNG in
    the :func:`palette` colours (up to 256 classes), else 16-bit grey; bytes that depend only on
    the labels."""
    lab = np.asarray(labels)
    buf = io.BytesIO()
    if int(lab.max(initial=0)) < 256:
        img = Image.fromarray(lab.astype(np.uint8), "P")
        img.putpalette(palette()[:256].tobytes())
    else:
        img = Image.fromarray(lab.astype(np.uint16), "I;16")
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def raw_picture(kind: str, raw: np.ndarray) -> Image.Image:
    """The raw map as a grey picture: its main display values (:func:`display_values`) from
    the low end of their colour scale (black) to the high end (white); a synthesis ``image`` as
    it is."""
    a = _finite(np.asarray(raw))
    if kind == "image":
        return _rgb(np.clip(a, 0.0, 1.0))
    return _grey(_scaled(display_values(kind, a), limits(kind, [a])[MAIN_VARIANT[kind]]))


# -- output -------------------------------------------------------------------------------------
#: The picture formats :func:`save_picture` writes, by file suffix, with their encoder settings.
PICTURE_FORMATS: dict[str, tuple[str, dict[str, int]]] = {
    ".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 92}), ".jpeg": ("JPEG", {"quality": 92}),
    ".webp": ("WEBP", {"quality": 90, "method": 6}),
}
def thumbnail(img: Image.Image, size: int = 160) -> Image.Image:
    """A copy that fits in ``size`` x ``size`` (aspect kept, never enlarged), bicubic."""
    if size < 1:
        raise ValueError(f"thumbnail size must be a positive number of pixels, got {size}")
    small = img.copy()
    small.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return small


def save_png(img: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write ``img`` as a PNG whose bytes depend only on its pixels, atomically.

    No metadata (no time, text, dpi, ICC or EXIF chunks), fixed zlib level, ``optimize=False``.
    The bytes go to a temporary file in the same folder (created if missing), which then
    replaces ``path`` with ``os.replace``: readers see the old file or the new one, never half.
    """
    mode = img.mode if img.mode in ("RGB", "RGBA", "L") else "RGB"
    src = img if img.mode == mode else img.convert(mode)
    buf = io.BytesIO()  # frombytes drops img.info (icc, exif, ...)
    Image.frombytes(mode, src.size, src.tobytes()).save(buf, format="PNG", optimize=False, compress_level=6)
    atomic_write(Path(path), buf.getvalue())


def save_picture(img: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write ``img`` in the format its suffix names (:data:`PICTURE_FORMATS`; a PNG as
    :func:`save_png` writes it), atomically and without metadata.

    Raises:
        ValueError: a suffix that names no picture format.
    """
    target = Path(path)
    if target.suffix.lower() not in PICTURE_FORMATS:
        raise ValueError(f"{target.name}: not a picture format; use {', '.join(PICTURE_FORMATS)}")
    fmt, settings = PICTURE_FORMATS[target.suffix.lower()]
    if fmt == "PNG":
        save_png(img, target)
        return
    buf = io.BytesIO()
    Image.frombytes("RGB", img.size, img.convert("RGB").tobytes()).save(buf, format=fmt, **settings)
    atomic_write(target, buf.getvalue())
