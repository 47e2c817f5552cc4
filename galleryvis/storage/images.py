"""Robust image decoding, the model's centre crop, and tensor conversion.

Every failure to read an image becomes an :class:`ImageError` whose one-line message names
the file and says what is wrong; :func:`load_image` never lets a Pillow or OS traceback out.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from galleryvis.errors import ImageError
from galleryvis.storage.fileio import sha256_of

StrPath = str | os.PathLike[str]

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
#: How :func:`fit` resamples an image to a model's input (part of every cache key).


def _fail(path: StrPath, problem: str) -> ImageError:
    # repr() keeps the message on one line even for names with newlines or control characters.
    return ImageError(f"image {os.fspath(path)!r}: {problem}")


def load_image(path: StrPath) -> Image.Image:
    """Decode ``path`` into a fully loaded 8-bit RGB image.

    * EXIF orientation is applied (a phone photo comes out the right way up).
    * Transparency (RGBA, LA, PA, or a palette/grey/RGB image with a transparent colour) is
      composited onto a WHITE background.
    * 16-bit greyscale (``I;16``, and 32-bit ``I`` holding 16-bit data) is scaled from
      0..65535 to 0..255; other modes (L, 1, P, CMYK, YCbCr, ...) use Pillow's conversion.
    * Multi-frame files (GIF, TIFF) give their first frame.
    * Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is kept: an image over
      it is refused rather than decoded.

    Raises:
        ImageError: missing file, folder, empty file, no permission, not an image, truncated
            or corrupt data, or an image over the pixel limit.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise _fail(p, "is a folder, not an image file")
        if not p.exists():
            raise _fail(p, "no such file")
        if p.stat().st_size == 0:
            raise _fail(p, "file is empty")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()
                upright = ImageOps.exif_transpose(im)
        return _to_rgb(upright)
    except ImageError:
        raise
    except PermissionError as e:
        raise _fail(p, "permission denied") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _fail(p, f"too many pixels to decode safely ({str(e).rstrip('.')})") from e
    except (UnidentifiedImageError, ImportError) as e:  # ImportError: a patched Image.open (Ultralytics
        # replaces it on import) looks for a plugin package when Pillow cannot identify the file
        raise _fail(p, "not a readable image (unknown format or damaged header)") from e
    except OSError as e:
        raise _fail(p, f"truncated or corrupt image data ({e.strerror or e})") from e
    except Exception as e:  # Pillow's decoders also raise SyntaxError, ValueError, struct.error, ...
        raise _fail(p, f"cannot decode image ({type(e).__name__}: {e})") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, transparency composited onto white."""
    if im.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(im, dtype=np.float64)
        grey = np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode == "RGB":
        return im.copy()
    return im.convert("RGB")


def fit(img: Image.Image, size: int, crop_pct: float = 1.0, interpolation: str = "bicubic") -> Image.Image:
    """Resize the shorter side to ``size / crop_pct`` and centre-crop to ``size`` x ``size``.

    Bicubic (or ``interpolation``: a ``PIL.Image.Resampling`` name) with antialiasing (Pillow
    widens the filter when shrinking). The central square of the source, ``crop_pct`` of its
    shorter side, is resampled directly (``resize(box=...)``), which equals resize-then-crop
    without rounding the intermediate size. This crop is what the model sees and what the
    gallery shows as "Original image".
    """
    if size < 1:
        raise ValueError(f"fit size must be a positive number of pixels, got {size}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    try:
        resample = Image.Resampling[interpolation.upper()]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}") from None
    return img.resize((size, size), resample, box=central_square(*img.size, crop_pct))


def central_square(width: int, height: int, crop_pct: float = 1.0) -> tuple[float, float, float, float]:
    """(left, top, right, bottom): the central square of a ``width`` x ``height`` photo,
    ``crop_pct`` of its shorter side, which :func:`fit` resamples into a model's input (so what
    the model sees)."""
    side = min(width, height) * crop_pct
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB image -> float32 tensor (3, H, W): ``(pixel / 255 - mean) / std`` per channel."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (R, G, B), got {len(mean)} and {len(std)}")
    if any(s == 0 for s in std):
        raise ValueError(f"std must not contain 0, got {tuple(std)}")
    x = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(((x - m) / s).transpose(2, 0, 1)))


def file_sha256(path: StrPath) -> str:
    """Hex SHA-256 of the file's bytes (read in 1 MiB blocks).

    Raises:
        ImageError: the file cannot be read.
    """
    try:
        return sha256_of(path)
    except IsADirectoryError as e:
        raise _fail(path, "is a folder, not an image file") from e
    except FileNotFoundError as e:
        raise _fail(path, "no such file") from e
    except PermissionError as e:
        raise _fail(path, "permission denied") from e
    except OSError as e:
        raise _fail(path, f"cannot read file ({e.strerror or e})") from e
