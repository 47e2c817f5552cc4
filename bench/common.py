"""What every measurement shares: models, inputs, timing and peak-memory probes."""
from __future__ import annotations

import ctypes
import gc
import re
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from galleryvis.engine.chunking import sync

#: Bundled photos (the repository's input_images/), used as benchmark inputs.
IMAGES_DIR = Path(__file__).resolve().parent.parent / "input_images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class Skip(Exception):
    """An implementation that cannot run here (package missing, technique not registered...)."""


#: Classes of a torchvision segmentation model built by the bench (its weights' PASCAL VOC 21).
SEGMENTATION_CLASSES = 21


def build_model(name: str, seed: int, device: torch.device, size: int | None = None) -> nn.Module:
    """A torchvision classifier or segmentation model (``fcn_*``, ``deeplabv3_*``, ``lraspp_*``:
    :data:`SEGMENTATION_CLASSES` classes, no backbone weights either) with ``weights=None``
    (``timm:NAME``: a timm one without its pretrained weights), initialized from ``seed``, in
    eval mode. A torchvision detector (``torchvision.models.detection``) has no backbone weights
    either, ``box_score_thresh=0`` (random weights still give boxes) and, given ``size``, that
    size as its transform's ``min_size`` and ``max_size`` (the photos are not upscaled to 800 px)."""
    import torchvision

    from galleryvis.tasks import TORCHVISION_SEGMENTATION

    torch.manual_seed(seed)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name.removeprefix("timm:"), pretrained=False).eval().to(device)
    if name.startswith(TORCHVISION_SEGMENTATION):
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                             num_classes=SEGMENTATION_CLASSES)
    elif name in torchvision.models.list_models(torchvision.models.detection):
        sizes = {} if size is None else {"min_size": size, "max_size": size}
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, box_score_thresh=0.0,
                                             **sizes)
    else:
        model = torchvision.models.get_model(name, weights=None)
    return model.eval().to(device)


def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` in eval mode with its batch-norm statistics those of the images ``x`` (one
    training-mode forward at momentum 1; no weight changes): a random-weight segmentation model
    otherwise gives one class to every pixel, so its argmax regions would be the whole image."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def segment_targets(model: nn.Module, x: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Each image's top-1 segment as segmentation tutorials find it: one forward, the argmax class
    of every pixel, the class covering most pixels (background, class 0, only where it is all
    there is) and its pixels: the classes and the masks (N, H, W) bool at the output's size."""
    from galleryvis.tasks import spatial_logits

    with torch.no_grad():
        labels = spatial_logits(model(x)).argmax(1)
    classes = []
    for lab in labels:
        counts = torch.bincount(lab.flatten())
        if counts[1:].any():
            counts[0] = 0
        classes.append(int(counts.argmax()))
    return classes, labels == torch.tensor(classes, device=labels.device)[:, None, None]


#: A detector's input normalization: pixels in [0, 1] (torchvision's detectors normalize inside).
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def detection_targets(model: nn.Module, x: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Each image's best detection as the detection tutorials find it: one forward, the detection
    of highest score: the labels and the boxes (N, 4) in pixels."""
    with torch.no_grad():
        out = model(x)
    best = [int(o["scores"].argmax()) for o in out]
    return [int(o["labels"][i]) for o, i in zip(out, best)], torch.stack([o["boxes"][i] for o, i in zip(out, best)])


def load_inputs(n: int, size: int, device: torch.device, raw: bool = False) -> torch.Tensor:
    """``n`` bundled photos (cycled), centre-cropped to ``size``, ImageNet-normalized (``raw``:
    pixels in [0, 1], as a detector takes them): (n,3,size,size)."""
    from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD
    from galleryvis.storage.images import fit, load_image, to_tensor

    paths = sorted(p for p in IMAGES_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images in {IMAGES_DIR}")
    mean, std = (RAW["mean"], RAW["std"]) if raw else (IMAGENET_MEAN, IMAGENET_STD)
    imgs = [to_tensor(fit(load_image(paths[i % len(paths)]), size), mean, std)
            for i in range(n)]
    return torch.stack([t[0] if t.dim() == 4 else t for t in imgs]).to(device)


def is_sequential(model: nn.Module) -> bool:
    """VGG / AlexNet style: ``features`` -> ``avgpool`` -> ``classifier``, no residual adds."""
    return all(isinstance(getattr(model, a, None), nn.Module) for a in ("features", "avgpool", "classifier"))


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters with ``requires_grad=False`` while inside (only input gradients are computed);
    their flags come back on exit."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


# -- peak memory ------------------------------------------------------------------------------

_LIBC: Any = None


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS, so the resident baseline is the live memory."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def can_reset_peak_rss() -> bool:
    """Linux lets a process reset its own resident high-water mark (VmHWM) via clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Peak memory growth of a block, in MB.

    CPU: resident set (VmHWM after - VmRSS before); the high-water mark is reset before the
    block and freed heap memory is trimmed first, so the baseline is what is live (model,
    inputs). CUDA: ``torch.cuda.max_memory_allocated`` - ``memory_allocated`` before.
    Returns None where neither is available.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base: int | None = None

    def start(self) -> None:
        cleanup(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif can_reset_peak_rss():
            self.base = _status_kb("VmRSS")

    def stop(self) -> float | None:
        if self.base is None:
            return None
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        peak = _status_kb("VmHWM")
        return None if peak is None else max(0, peak - self.base) / 1024


def memory_label(device: torch.device) -> str:
    if device.type == "cuda":
        return "peak CUDA memory allocated during the call, above what was allocated before (torch.cuda.max_memory_allocated)"
    if can_reset_peak_rss():
        return "peak resident-set growth during the call (VmHWM after - VmRSS before; model and inputs excluded)"
    return "not measured (needs Linux /proc/self/clear_refs or CUDA)"


def cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _malloc_trim()


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Seconds of each timed call (the warm-up call excluded unless it was the only one)."""

    times: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    cold_only: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.times)


#: The clocks :func:`timed` can read: wall-clock seconds (the default), or the CPU seconds of the
#: process, all its threads (``--clock cpu``: on a machine that others share it moves far less,
#: and with ``--threads 1`` it is the work itself; CPU devices only).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def use_clock(name: str) -> None:
    """Make :func:`timed` read clock ``name`` of :data:`CLOCKS` from now on (in this process)."""
    global _clock
    _clock = CLOCKS[name]


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = _clock()
    out = fn()
    sync(device)
    dt = _clock() - t0
    del out
    return dt


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, budget: float) -> Measurement:
    """One warm-up call, then up to ``repeats`` timed calls while they fit in ``budget`` seconds.

    A call slower than the whole budget is run once and reported as is (``cold_only``);
    the peak memory covers every call, the warm-up included.
    """
    mem = PeakMemory(device)
    mem.start()
    first = timed(fn, device)
    n = repeats if first <= 0 else min(repeats, int(budget // first))
    times = [timed(fn, device) for _ in range(n)]
    peak = mem.stop()
    return Measurement(times or [first], peak, cold_only=not times)
