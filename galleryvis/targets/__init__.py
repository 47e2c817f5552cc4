"""What a map explains: objectives that turn a model's raw output into one score per image.

An objective answers two questions about a batch the model has just computed:

* :meth:`Objective.score`: one differentiable value per row (image, noisy sample, masked
  copy), what gradients, CAMs and the perturbations that read a difference (occlusion,
  Ablation-CAM, the Shapley family) explain; LRP starts from :meth:`Objective.relevance`;
* :meth:`Objective.confidence`: one value per row in [0, 1], what RISE, paper Score-CAM,
  deletion / insertion (``score="probability"``) and ROAD read.

``Class(index)`` is a classifier's objective: score the class logit, confidence its softmax
probability. ``galleryvis.attribute(..., target=...)`` and the metrics take an objective, or
what :func:`of` turns into one: an int (a class for every image), a sequence of ints (one per
image), None (each image's top-1 class), a ``targets.*`` object, a sequence of them (one per
image; ints and None mix in), or any callable ``f(output) -> Tensor[N]`` (a score only).

An objective may apply to any number of rows (``Class(3)``, a callable: ``n`` is None) or be
bound to ``n`` rows (``Class([3, 5])``). The engine binds the target of a call to its images
(:func:`resolve`), then cuts it to every batch it runs with :meth:`Objective.rows`: its
chunks (:meth:`Objective.split`), each image's samples, windows or masks
(:meth:`Objective.image`). Nothing outside this module indexes or normalizes a model's
output to read a target.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from numbers import Integral
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Row selections :meth:`Objective.rows` takes: a slice, row numbers or a 1-D integer tensor.
Rows = Union[slice, Sequence[int], Tensor]


class ScoreOnlyError(ValueError):
    """A confidence was asked of an objective that has only a score (a callable target);
    ``who``: the technique or metric that asked, once known; ``what``: the target, in words."""

    def __init__(self, message: str, who: str | None = None, what: str = "a callable target") -> None:
        super().__init__(message)
        self.who, self.what = who, what


class Objective(ABC):
    """Base of every objective: :meth:`score` and :meth:`rows` to implement, :meth:`confidence`
    where the objective has a bounded one, :meth:`at` for one image's objective, :meth:`resolve`
    where part of it is decided by the model's output on the clean images (``Class()``'s top-1).

    ``n``: the number of rows the objective is bound to, or None when it applies to any
    number of rows (each the same way).
    """

    n: int | None = None
    #: Whether :meth:`resolve` must see the model's output on the clean images first.
    needs_output: bool = False
    #: The task whose output it reads (:data:`galleryvis.tasks.TASKS`); None: any output.
    task: str | None = None
    #: What :meth:`confidence` is, in words a protocol line shows.
    confidence_words: str = "confidence"

    @property
    def has_confidence(self) -> bool:
        """Whether :meth:`confidence` is defined (a subclass that overrides it has one)."""
        return type(self).confidence is not Objective.confidence

    @abstractmethod
    def score(self, output: Any) -> Tensor:
        """One differentiable value per row of ``output`` (the model's raw output), (rows,)."""

    def confidence(self, output: Any) -> Tensor:
        """One value per row of ``output`` in [0, 1], (rows,)."""
        what = type(self).__name__
        raise ScoreOnlyError(f"{what} gives only a score, not a confidence in [0, 1]", what=what)

    def relevance(self, output: Tensor) -> Tensor:
        """LRP's starting relevance on ``output`` (a tensor): ``output * d score / d output``,
        exactly zero where the score does not depend on it (the class logit alone for
        :class:`Class`)."""
        o = output.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.score(o).sum(), o)
        return torch.where(g != 0, o.detach() * g, torch.zeros_like(g))

    @abstractmethod
    def rows(self, index: Rows) -> Objective:
        """The objective of the rows ``index`` of this one's batch, bound to ``len(index)``
        rows in that order (rows may repeat); an objective that applies to any number of rows
        is bound to as many copies of itself."""

    @abstractmethod
    def at(self, i: int) -> Objective:
        """Image ``i``'s objective, applying to any number of rows (copies of that image)."""

    def resolve(self, output: Any) -> Objective:
        """This objective with what depends on the model's ``output`` for the clean images of
        its rows decided (each image's top-1 class for ``Class()``); itself when nothing does."""
        return self

    def image(self, i: int, copies: int = 1) -> Objective:
        """Image ``i``'s objective for ``copies`` rows: its noisy samples, masked copies, windows."""
        return self.rows([i] * copies)

    @classmethod
    def join(cls, parts: Sequence[Objective]) -> Objective | None:
        """One objective for the rows of ``parts`` (bound objectives of this type) in order, or
        None when the type cannot join them (:func:`resolve` then keeps one per image)."""
        return None

    def split(self, size: int) -> list[Objective]:
        """Consecutive chunks of at most ``size`` rows, as ``Tensor.split`` cuts the images."""
        return [self.rows(slice(i, i + size)) for i in range(0, len(self), size)]

    def bind(self, n: int) -> Objective:
        """This objective for a batch of ``n`` images; a ValueError when it is bound to another number."""
        if self.n is None:
            return self.rows(range(n))  # type: ignore[arg-type]
        if self.n != n:
            raise ValueError(f"target has {self.n} entries for {n} images; give one per image or a single int")
        return self

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError(f"{self!r} applies to any number of images; bind it first")
        return self.n


def _row_numbers(index: Rows, n: int | None) -> list[int]:
    """``index`` as a list of row numbers (a slice needs ``n``)."""
    if isinstance(index, slice):
        if n is None:
            raise TypeError("a slice of rows needs an objective bound to a number of rows")
        return list(range(n))[index]
    if isinstance(index, Tensor):
        return [int(i) for i in index.flatten().tolist()]
    return [int(i) for i in index]


def _logits(output: Any, rows: int | None = None) -> Tensor:
    """``output`` checked to be logits (N, classes), N = ``rows`` when given (a clear ValueError otherwise)."""
    if not isinstance(output, Tensor) or output.dim() != 2 or (rows is not None and output.shape[0] != rows):
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"the model must return logits of shape (N, classes); it returned {shape}")
    return output


class Class(Objective):
    """A classifier's class: score its logit, confidence its softmax probability.

    ``index``: an int (that class for every image, any number of rows), a sequence or 1-D
    tensor of ints (one per image, bound to that many rows), or None (each image's top-1
    class, decided by :meth:`resolve` on the clean images; the engine does it). ``classes``:
    how many leading logit columns are classes (an image-text model's prompts, before its free
    texts: :attr:`galleryvis.sources.imagetext.ImageText.classes`), the softmax and the top-1
    over those alone; None: every column.
    """

    task: str | None = "classification"
    confidence_words = "softmax probability"

    def __init__(self, index: int | Sequence[int] | Tensor | np.ndarray | None = None, *,
                 classes: int | None = None) -> None:
        if isinstance(index, (Tensor, np.ndarray)):
            t = torch.as_tensor(index)
            index = t.flatten().tolist() if t.dim() else t.item()
        if index is None or (isinstance(index, Integral) and not isinstance(index, bool)):
            self.index: int | tuple[int, ...] | None = None if index is None else int(index)
        elif isinstance(index, Sequence) and not isinstance(index, str):
            if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in index):
                raise TypeError(f"target must hold class indices (ints), got {list(index)!r}")
            self.index = tuple(int(v) for v in index)
            self.n = len(self.index)
        else:
            raise TypeError(f"a class index must be an int, a sequence of ints or None, not {type(index).__name__}")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, Integral) or classes < 1):
            raise ValueError(f"classes must be a number of logit columns >= 1, got {classes!r}")
        self.classes = None if classes is None else int(classes)
        self.needs_output = index is None

    def _like(self, index: int | Sequence[int] | None, n: int | None = None) -> Class:
        """An objective of this type and ``classes`` for ``index`` (None bound to ``n`` rows: top-1 each)."""
        c = type(self)(index, classes=self.classes)
        if index is None:
            c.n = n
        return c

    @classmethod
    def _top1(cls, n: int) -> Class:
        """``Class()`` bound to ``n`` rows, each to be resolved to its image's top-1 class."""
        c = cls()
        c.n = n
        return c

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({'top-1' if self.index is None else self.index}"
                f"{'' if self.classes is None else f', classes={self.classes}'}"
                f"{'' if self.n is None else f', n={self.n}'})")

    @staticmethod
    def probabilities(output: Any) -> Tensor:
        """The softmax over classes of ``output`` (N, classes): every class's confidence."""
        return _logits(output).softmax(1)

    @staticmethod
    def top1(confidences: Tensor) -> Tensor:
        """Each row's class of highest confidence (:meth:`probabilities`), (N,)."""
        return confidences.argmax(1)

    def _classes(self, output: Any) -> Tensor:
        """The logits of ``output`` over the classes alone (the leading ``classes`` columns)."""
        logits = _logits(output, self.n)
        if self.classes is not None and self.classes > logits.shape[1]:
            raise ValueError(f"the model returned {logits.shape[1]} logits for {self.classes} classes")
        return logits if self.classes is None else logits[:, :self.classes]

    def _indices(self, logits: Tensor) -> Tensor:
        """One class index per row of ``logits``, checked against its number of classes."""
        if self.index is None:
            raise ValueError("Class() (top-1) must be resolved on the model's output first (targets.resolve)")
        values = (self.index,) if isinstance(self.index, int) else self.index
        if values and (min(values) < 0 or max(values) >= logits.shape[1]):
            shown = list(self.index) if isinstance(self.index, tuple) else [self.index] * logits.shape[0]
            raise ValueError(f"target {shown} out of range for {logits.shape[1]} classes")
        if isinstance(self.index, int):
            return torch.full((logits.shape[0],), self.index, dtype=torch.long, device=logits.device)
        return torch.tensor(self.index, dtype=torch.long, device=logits.device)

    def score(self, output: Any) -> Tensor:
        """The class logit of each row."""
        logits = self._classes(output)
        return logits.gather(1, self._indices(logits)[:, None])[:, 0]

    def confidence(self, output: Any) -> Tensor:
        """The class's softmax probability in each row (float32 at least)."""
        logits = self._classes(output)
        return logits.float().softmax(1).gather(1, self._indices(logits)[:, None])[:, 0]

    def rows(self, index: Rows) -> Class:
        rows = _row_numbers(index, self.n)
        if self.index is None:
            return self._like(None, len(rows))
        if isinstance(self.index, int):
            return self._like(tuple([self.index] * len(rows)))
        return self._like(tuple(self.index[i] for i in rows))

    def at(self, i: int) -> Class:
        if isinstance(self.index, tuple):
            return self._like(self.index[i])
        return self._like(self.index)

    def resolve(self, output: Any) -> Class:
        """Each row's top-1 class of ``output`` when no index was given."""
        if self.index is not None:
            return self
        return self._like(self._classes(output).argmax(1).tolist())

    @classmethod
    def join(cls, parts: Sequence[Objective]) -> Class | None:
        """The parts' classes as one objective, when they read the same ``classes``."""
        if len({p.classes for p in parts}) > 1:  # type: ignore[attr-defined]
            return None
        return cls(tuple(i for p in parts for i in p.index), classes=parts[0].classes)  # type: ignore[attr-defined]


class MultiLabel(Class):
    """A multi-label classifier's class (independent classes, one sigmoid each): score its
    logit, confidence its sigmoid; ``MultiLabel()`` (top-1): each image's class of highest
    sigmoid. ``index`` as for :class:`Class`."""

    task: str | None = "multilabel"
    confidence_words = "sigmoid"

    @staticmethod
    def probabilities(output: Any) -> Tensor:
        """The sigmoid of every logit of ``output`` (N, classes): every class's confidence."""
        return _logits(output).sigmoid()

    def confidence(self, output: Any) -> Tensor:
        """The class logit's sigmoid in each row (float32 at least)."""
        logits = _logits(output, self.n)
        return logits.float().gather(1, self._indices(logits)[:, None])[:, 0].sigmoid()


def _spatial(output: Any, rows: int | None) -> Tensor:
    """A segmentation output's scores (N, classes, h, w), N = ``rows`` when given."""
    from galleryvis.tasks import spatial_logits

    logits = spatial_logits(output)
    if rows is not None and logits.shape[0] != rows:
        raise ValueError(f"the model returned {logits.shape[0]} label maps for a target of {rows} images")
    return logits


class Segment(Objective):
    """A segmentation model's class over a region: score the sum of the class's logits over the
    region's pixels, confidence the class's mean softmax probability there (0 for an empty region).

    ``cls``: a class index (every image), a sequence of them (one per image), or None (each
    image's top-1: the class covering most pixels, background (class 0) excepted unless it is
    all there is). ``mask``: the region, a boolean (H, W) tensor (every image) or (N, H, W) (one
    per image); None: the pixels the model assigns to the class (argmax over classes) on the
    clean image, decided once by :meth:`resolve` (the engine does it), so masked, noisy and
    interpolated copies are scored over the same pixels. A model's raw output is read as
    :func:`galleryvis.tasks.spatial_logits` does (a tensor, ``out`` of a dict, ``.logits``),
    at the model's own resolution; a mask of another size than the scores (SegFormer's are
    at 1/4 of the input) has them resized bilinearly to it first.
    """

    task: str | None = "segmentation"

    def __init__(self, cls: int | Sequence[int] | None = None, mask: Tensor | np.ndarray | None = None) -> None:
        if cls is None or (isinstance(cls, Integral) and not isinstance(cls, bool)):
            self.cls: int | tuple[int, ...] | None = None if cls is None else int(cls)
        elif isinstance(cls, Sequence) and not isinstance(cls, str) \
                and all(isinstance(v, Integral) and not isinstance(v, bool) for v in cls):
            self.cls = tuple(int(v) for v in cls)
            self.n = len(self.cls)
        else:
            raise TypeError(f"a segmentation class must be an int, a sequence of ints or None, not {cls!r}")
        self.mask: Tensor | None = None
        if mask is not None:
            m = torch.as_tensor(mask)
            if m.dim() not in (2, 3) or m.dtype != torch.bool:
                raise ValueError(f"a segmentation mask must be a boolean (H, W) or (N, H, W) tensor, "
                                 f"got {m.dtype} {tuple(m.shape)}")
            if m.dim() == 3:
                if self.n is not None and self.n != m.shape[0]:
                    raise ValueError(f"{m.shape[0]} masks for {self.n} classes; give one per image")
                self.n = int(m.shape[0])
            self.mask = m
        self.needs_output = self.cls is None or self.mask is None

    @classmethod
    def _bound(cls, classes: Sequence[int] | None, mask: Tensor | None, n: int) -> Segment:
        """A segment bound to ``n`` rows: ``classes`` per row (None: top-1), ``mask`` (H, W) or (n, H, W)."""
        s = cls(None if classes is None else tuple(classes), mask if mask is None or mask.dim() == 3
                else mask.expand(n, *mask.shape))
        s.n = n
        return s

    def __repr__(self) -> str:
        region = "argmax" if self.mask is None else f"mask {tuple(self.mask.shape)}"
        return f"Segment({'top-1' if self.cls is None else self.cls}, {region}{'' if self.n is None else f', n={self.n}'})"

    def _classes(self, logits: Tensor) -> Tensor:
        """One class index per row, checked against the number of classes."""
        if self.cls is None:
            raise ValueError("Segment() (top-1) must be resolved on the model's output first (targets.resolve)")
        values = (self.cls,) if isinstance(self.cls, int) else self.cls
        if values and (min(values) < 0 or max(values) >= logits.shape[1]):
            raise ValueError(f"segmentation target {list(values)} out of range for {logits.shape[1]} classes")
        c = torch.as_tensor(values, dtype=torch.long, device=logits.device)
        return c.expand(logits.shape[0]) if isinstance(self.cls, int) else c

    def _region(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``logits`` at the mask's size and the region per row, float (rows, h, w)."""
        if self.mask is None:
            labels = logits.detach().argmax(1)
            return logits, (labels == self._classes(logits)[:, None, None]).to(logits.dtype)
        mask = self.mask.to(logits.device)
        if tuple(mask.shape[-2:]) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        return logits, mask.to(logits.dtype).expand(logits.shape[0], *mask.shape[-2:])

    def _per_class(self, logits: Tensor) -> Tensor:
        """Each row's class channel of ``logits``, (rows, h, w)."""
        c = self._classes(logits)[:, None, None, None].expand(-1, 1, *logits.shape[-2:])
        return logits.gather(1, c)[:, 0]

    def score(self, output: Any) -> Tensor:
        """The sum of the class's logits over the region, per row."""
        logits, region = self._region(_spatial(output, self.n))
        return (self._per_class(logits) * region).sum((1, 2))

    def confidence(self, output: Any) -> Tensor:
        """The class's mean softmax probability over the region, per row (float32 at least)."""
        logits, region = self._region(_spatial(output, self.n).float())
        return (self._per_class(logits.softmax(1)) * region).sum((1, 2)) / region.sum((1, 2)).clamp_min(1)

    def rows(self, index: Rows) -> Segment:
        rows = _row_numbers(index, self.n)
        classes = None if self.cls is None else [self.cls] * len(rows) if isinstance(self.cls, int) \
            else [self.cls[i] for i in rows]
        mask = self.mask if self.mask is None or self.mask.dim() == 2 else self.mask[rows]
        return Segment._bound(classes, mask, len(rows))

    def at(self, i: int) -> Segment:
        return Segment(self.cls[i] if isinstance(self.cls, tuple) else self.cls,
                       self.mask[i] if self.mask is not None and self.mask.dim() == 3 else self.mask)

    def resolve(self, output: Any) -> Segment:
        """Each row's top-1 class (when none was given) and region (the pixels the model assigns
        to the class, when no mask was given) on ``output``, the model's output for the clean images."""
        if not self.needs_output:
            return self
        logits = _spatial(output, self.n).detach()
        n = logits.shape[0]
        mask = None if self.mask is None else self.mask.to(logits.device).expand(n, *self.mask.shape[-2:])
        if mask is not None and tuple(mask.shape[-2:]) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        labels = logits.argmax(1)
        if self.cls is None:
            counts = F.one_hot(labels, logits.shape[1])
            counts = (counts * mask[..., None] if mask is not None else counts).sum((1, 2))
            classes = Segment.top1(counts).tolist()
        else:
            classes = [self.cls] * n if isinstance(self.cls, int) else list(self.cls)
        if mask is None:
            mask = labels == torch.as_tensor(classes, device=labels.device)[:, None, None]
        return Segment._bound(classes, mask, n)

    @classmethod
    def join(cls, parts: Sequence[Objective]) -> Segment | None:
        """The resolved segments of consecutive chunks as one, when their masks have one size."""
        segs = [p for p in parts if isinstance(p, Segment)]
        if any(s.cls is None or s.mask is None for s in segs) or len({s.mask.shape[-2:] for s in segs}) != 1:
            return None
        return cls._bound([c for s in segs for c in s.cls], torch.cat([s.mask for s in segs]),  # type: ignore[misc]
                          sum(len(s) for s in segs))

    @staticmethod
    def probabilities(output: Any) -> Tensor:
        """The share of each image's pixels the model assigns to each class (argmax over classes,
        at the model's resolution), (N, classes): what a gallery lists as a segmentation's top classes."""
        logits = _spatial(output, None)
        return F.one_hot(logits.argmax(1), logits.shape[1]).flatten(1, 2).float().mean(1)

    @staticmethod
    def top1(confidences: Tensor) -> Tensor:
        """Each row's class covering most pixels, background (class 0) excepted unless it is all
        there is (as :meth:`resolve` decides ``Segment()``), from :meth:`probabilities`' shares."""
        others = confidences[:, 1:]
        if not others.shape[1]:
            return confidences.argmax(1)
        return torch.where(others.amax(1) > 0, others.argmax(1) + 1, confidences.argmax(1))

    def coverage(self) -> Tensor:
        """The fraction of the image's pixels in each row's region, (rows,) (a resolved segment)."""
        if self.mask is None:
            raise ValueError("Segment's region is decided by the model's output: resolve it first (targets.resolve)")
        return self.mask.flatten(-2).float().mean(-1).expand(len(self))


#: The objective of one class for each task whose output names classes: its logit read by softmax
#: (classification; an image-text model's prompts are its classes) or by its own sigmoid
#: (multilabel), or its logits over the pixels the model assigns to it (segmentation). Each has
#: ``probabilities(output)`` (every class's confidence or share, (N, classes)) and ``top1``.
CLASS_OBJECTIVES: Mapping[str, type[Class] | type[Segment]] = {
    "classification": Class, "multilabel": MultiLabel, "image-text": Class, "segmentation": Segment}


class Text(Objective):
    """An image-text model's similarity with one text: column ``index`` of the logits
    :class:`galleryvis.sources.imagetext.ImageText` returns over its prompts, ``text`` being that
    prompt. Make it with ``model.text("a red car")``, which fills in the rest.

    Score: the model's scaled similarity ``scale * cos(image, text)`` (``+ bias`` for
    SigLIP), the column's logit. Confidence: that pair's alone, never a softmax over the other
    prompts: with a ``bias`` (SigLIP, trained with a sigmoid per pair) the logit's sigmoid, the
    model's probability that the text matches; without one (CLIP, trained with a softmax over a
    batch, which has no per-pair probability) the cosine similarity mapped to [0, 1],
    ``(1 + cos) / 2``.
    """

    task: str | None = "image-text"

    def __init__(self, text: str, index: int, scale: float, bias: float | None = None, n: int | None = None) -> None:
        if not isinstance(index, Integral) or isinstance(index, bool) or index < 0:
            raise TypeError(f"Text: index must be a prompt's column (an int >= 0), not {index!r}")
        if not scale > 0:
            raise ValueError(f"Text: scale must be > 0 (the model's exp(logit_scale)), got {scale!r}")
        self.text, self.index, self.scale, self.bias, self.n = str(text), int(index), float(scale), bias, n

    def __repr__(self) -> str:
        return f"Text({self.text!r}, column {self.index}{'' if self.n is None else f', n={self.n}'})"

    def _column(self, output: Any) -> Tensor:
        logits = _logits(output, self.n)
        if self.index >= logits.shape[1]:
            raise ValueError(f"Text({self.text!r}): column {self.index} out of range for {logits.shape[1]} prompts")
        return logits[:, self.index]

    def score(self, output: Any) -> Tensor:
        """The text's logit, the model's scaled similarity, per row."""
        return self._column(output)

    def confidence(self, output: Any) -> Tensor:
        """The pair's confidence in [0, 1] per row (float32 at least): the logit's sigmoid with a
        bias (SigLIP), ``(1 + cos) / 2`` without (CLIP)."""
        if self.bias is not None:
            return self._column(output).float().sigmoid()
        return ((1 + self.similarity(output)) / 2).clamp(0, 1)

    def similarity(self, output: Any) -> Tensor:
        """The cosine similarity of each row's image with the text, (rows,) float32 at least:
        the logit without the model's ``bias`` and ``scale``."""
        return (self._column(output).float() - (self.bias or 0.0)) / self.scale

    def rows(self, index: Rows) -> Text:
        return Text(self.text, self.index, self.scale, self.bias, len(_row_numbers(index, self.n)))

    def at(self, i: int) -> Text:
        return Text(self.text, self.index, self.scale, self.bias)


class Detection(Objective):
    """An object detector's detection (:mod:`galleryvis.targets.detection`): score the matched
    detection's class score plus its IoU with the reference box (pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget``), confidence D-RISE's similarity of the reference detection
    with the best detection of the (perturbed) image.

    The reference detection of each image is decided once on the clean image (:meth:`resolve`,
    the engine does it): with neither ``cls`` nor ``box`` its highest-scoring detection
    ("top1"; ``rank=k``: the k-th highest-scoring, k >= 1); with ``cls`` (a class index) the
    highest-scoring one of that class (the ``rank``-th); with ``box``
    ``[x0, y0, x1, y1]`` (pixels of the image given to the detector) the one (of class ``cls``
    when given) that matches it best, IoU >= 0.5, else a one-line ValueError naming the box and
    the best IoU found. Detections with a score below ``score_threshold`` are ignored and at
    most ``max_detections`` per image are read, best first, on every image the objective scores.
    """

    task: str | None = "detection"
    confidence_words = "D-RISE similarity"

    def __init__(self, cls: int | None = None, box: Sequence[float] | Tensor | np.ndarray | None = None, *,
                 rank: int = 1, score_threshold: float = 0.0, max_detections: int = 100) -> None:
        if cls is not None and (not isinstance(cls, Integral) or isinstance(cls, bool) or cls < 0):
            raise TypeError(f"Detection: cls must be a class index (an int >= 0) or None, not {cls!r}")
        if box is not None:
            box = [float(v) for v in torch.as_tensor(box).flatten().tolist()]
            if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
                raise ValueError(f"Detection: box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {box}")
        if isinstance(max_detections, bool) or not isinstance(max_detections, Integral) or max_detections < 1:
            raise ValueError(f"Detection: max_detections must be an int >= 1, got {max_detections!r}")
        if isinstance(rank, bool) or not isinstance(rank, Integral) or rank < 1 or (rank > 1 and box is not None):
            raise ValueError(f"Detection: rank must be an int >= 1 (and 1 with a box), got {rank!r}")
        self.rank = int(rank)
        self.cls = None if cls is None else int(cls)
        self.box: list[float] | None = box  # type: ignore[assignment]
        self.score_threshold, self.max_detections = float(score_threshold), int(max_detections)
        #: Each row's reference detection once resolved (one for any number of rows while ``n`` is
        #: None), or the one-line error of a row where none was found, raised when that row is taken.
        self.refs: tuple[Any, ...] | None = None
        self.needs_output = True

    def _with(self, refs: Sequence[Any] | None, n: int | None) -> Detection:
        """This objective's settings with ``refs`` (None: still to be resolved) for ``n`` rows."""
        d = Detection(self.cls, self.box, rank=self.rank, score_threshold=self.score_threshold,
                      max_detections=self.max_detections)
        d.refs = None if refs is None else tuple(refs)
        d.n, d.needs_output = n, refs is None
        return d

    def __repr__(self) -> str:
        given = (("cls", self.cls), ("box", self.box), ("rank", self.rank if self.rank > 1 else None))
        what = ", ".join(f"{k}={v}" for k, v in given if v is not None) or "top1"
        return f"Detection({what}{'' if self.n is None else f', n={self.n}'})"

    def _detections(self, output: Any) -> list[Any]:
        from galleryvis.targets.detection import detections_of

        return [d.kept(self.score_threshold, self.max_detections) for d in detections_of(output, self.n)]

    def _each(self, output: Any, fn: Callable[[Any, Any], Tensor]) -> Tensor:
        if self.refs is None:
            raise ValueError("Detection must be resolved on the detector's output first (targets.resolve)")
        dets = self._detections(output)
        refs = self._picked(range(len(dets)))
        return torch.stack([fn(d, r) for d, r in zip(dets, refs)])

    def score(self, output: Any) -> Tensor:
        """The matched detection's class score plus its IoU with the reference box, per row."""
        from galleryvis.targets.detection import box_score

        return self._each(output, box_score)

    def confidence(self, output: Any) -> Tensor:
        """D-RISE's similarity of the reference detection with the best detection, per row."""
        from galleryvis.targets.detection import similarity

        return self._each(output, similarity)

    def _picked(self, rows: Sequence[int]) -> list[Any]:
        """The references of ``rows``; the ValueError of the first row whose detection was not found."""
        from galleryvis.targets.detection import NotFound

        refs = [self.refs[0 if self.n is None else i] for i in rows]  # type: ignore[index]
        missing = next((r for r in refs if isinstance(r, str)), None)
        if missing is not None:
            raise NotFound(missing)
        return refs

    def rows(self, index: Rows) -> Detection:
        rows = _row_numbers(index, self.n)
        return self._with(None if self.refs is None else self._picked(rows), len(rows))

    def at(self, i: int) -> Detection:
        return self._with(None if self.refs is None else self._picked([i]), None)

    def resolve(self, output: Any) -> Detection:
        """Each row's reference detection on ``output``, the detector's output for the clean images."""
        from galleryvis.targets.detection import NotFound, choose

        if self.refs is not None:
            return self
        refs: list[Any] = []
        for d in self._detections(output):
            try:
                refs.append(choose(d, self.cls, self.box, self.rank))
            except NotFound as e:  # raised when the row is taken (a per-image list resolves every row)
                refs.append(str(e))
        return self._with(refs, len(refs))

    @classmethod
    def join(cls, parts: Sequence[Objective]) -> Detection | None:
        """The resolved detections of consecutive chunks as one."""
        dets = [p for p in parts if isinstance(p, Detection)]
        if any(d.refs is None or d.n is None for d in dets):
            return None
        return dets[0]._with([r for d in dets for r in d.refs], sum(len(d) for d in dets))  # type: ignore[union-attr]

    def reference(self) -> list[Any]:
        """Each row's reference detection (:class:`galleryvis.targets.detection.Reference`: box, label,
        score, class vector), once resolved."""
        if self.refs is None or self.n is None:
            raise ValueError("Detection must be resolved and bound to images first (targets.resolve)")
        return self._picked(range(self.n))


class Score(Objective):
    """A callable ``fn(output) -> Tensor[rows]``: a score, no confidence. It is applied to every
    batch the engine runs (chunks, samples, masked copies), so it must score each row on its own,
    the same way for every image (one per image: a list of them)."""

    has_confidence = False  # type: ignore[assignment]

    def __init__(self, fn: Callable[[Any], Tensor], n: int | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"a score must be callable, not {type(fn).__name__}")
        self.fn = fn
        self.n = n

    def __repr__(self) -> str:
        return f"Score({getattr(self.fn, '__name__', self.fn)!r}{'' if self.n is None else f', n={self.n}'})"

    def score(self, output: Any) -> Tensor:
        s = self.fn(output)
        if not isinstance(s, Tensor) or s.dim() != 1 or (self.n is not None and s.shape[0] != self.n):
            shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            rows = "N" if self.n is None else self.n
            raise ValueError(f"a target callable must return one score per image, shape ({rows},); it returned {shape}")
        return s

    def confidence(self, output: Any) -> Tensor:
        raise ScoreOnlyError("a callable target gives only a score, not a confidence in [0, 1]")

    def rows(self, index: Rows) -> Score:
        return Score(self.fn, len(_row_numbers(index, self.n)))

    def at(self, i: int) -> Score:
        return Score(self.fn)


class PerImage(Objective):
    """One objective per image (each applying to any number of rows): row ``r`` is scored by
    ``items[r]``. Build it with :func:`per_image`, which keeps plain class indices one
    :class:`Class`."""

    def __init__(self, items: Sequence[Objective]) -> None:
        bound = [o for o in items if o.n is not None]
        if bound:
            raise ValueError(f"a per-image target must apply to any number of rows, such as targets.Class(3); "
                             f"got {bound[0]!r}")
        self.items = tuple(items)
        self.n = len(self.items)
        self.needs_output = any(o.needs_output for o in self.items)
        given = {o.task for o in self.items} - {None}
        self.task = given.pop() if len(given) == 1 else None

    def __repr__(self) -> str:
        return f"PerImage({list(self.items)!r})"

    @property
    def has_confidence(self) -> bool:
        return all(o.has_confidence for o in self.items)

    def _each(self, output: Any, read: Callable[[Objective, Any], Tensor]) -> Tensor:
        """``read`` of every distinct item on the whole ``output``, row ``r`` taken from items[r]'s."""
        groups: dict[int, list[int]] = {}
        for r, o in enumerate(self.items):
            groups.setdefault(id(o), []).append(r)
        parts = [(rows, read(self.items[rows[0]].bind(len(self)), output)[rows]) for rows in groups.values()]
        if len(parts) == 1:
            return parts[0][1]
        order = torch.tensor([r for rows, _ in parts for r in rows])
        values = torch.cat([v for _, v in parts])
        return values[order.argsort().to(values.device)]

    def score(self, output: Any) -> Tensor:
        return self._each(output, lambda o, out: o.score(out))

    def confidence(self, output: Any) -> Tensor:
        return self._each(output, lambda o, out: o.confidence(out))

    def rows(self, index: Rows) -> Objective:
        return per_image([self.items[i] for i in _row_numbers(index, self.n)])

    def at(self, i: int) -> Objective:
        return self.items[i]

    def resolve(self, output: Any) -> Objective:
        done: dict[int, Objective] = {}
        for o in self.items:
            if o.needs_output and id(o) not in done:
                done[id(o)] = o.bind(len(self)).resolve(output)
        return per_image([done[id(o)].at(r) if id(o) in done else o for r, o in enumerate(self.items)])


def per_image(items: Sequence[Objective]) -> Objective:
    """The objective of images whose objectives are ``items`` (each for any number of rows):
    one :class:`Class` when all are fixed classes, so the usual case runs as one gather."""
    kind = type(items[0]) if items else Class
    if issubclass(kind, Class) and all(type(o) is kind and isinstance(o.index, int) for o in items):
        return kind(tuple(o.index for o in items))  # type: ignore[misc,attr-defined]
    return PerImage(items)


#: What every ``target=`` argument accepts (see :func:`of`).
Target = Union[int, Sequence[Any], Tensor, np.ndarray, None, Objective, Callable[[Any], Tensor]]


def _item(value: Any, given: Any) -> Objective:
    """One entry of a per-image target list as an objective for any number of rows."""
    if isinstance(value, Objective):
        return value
    if value is None:
        return Class()
    if isinstance(value, Integral) and not isinstance(value, bool):
        return Class(int(value))
    if callable(value):
        return Score(value)
    raise TypeError(f"target must hold class indices (ints), None, galleryvis.targets objectives or callables, "
                    f"got {list(given)!r}")


def of(target: Target, n: int) -> Objective:
    """``target`` as an objective bound to ``n`` images (see the module's docstring for the
    forms); ``Class()`` rows still to be resolved where None or ``Class()`` was given."""
    if isinstance(target, Objective):
        return target.bind(n)
    if target is None:
        return Class._top1(n)
    if isinstance(target, (Tensor, np.ndarray)):
        return Class(target).bind(n)
    if isinstance(target, Integral) and not isinstance(target, bool):
        return Class(int(target)).bind(n)
    if isinstance(target, Sequence) and not isinstance(target, str):
        if all(isinstance(v, Integral) and not isinstance(v, bool) for v in target):
            return Class(target).bind(n)
        if len(target) != n:
            raise ValueError(f"target has {len(target)} entries for {n} images; give one per image or a single int")
        return per_image([_item(v, target) for v in target])
    if callable(target):
        return Score(target).bind(n)
    raise TypeError(f"target must be an int, a sequence of ints, None, a galleryvis.targets objective or a callable, "
                    f"not {type(target).__name__}")


def resolve(target: Target, run: Callable[[Tensor], Any], x: Tensor, batch_size: int) -> Objective:
    """:func:`of` for the images ``x`` (N first), with what depends on the model's output
    decided (top-1 classes): forwards of ``run`` on ``batch_size`` images at a time, without
    gradients, only when something needs them."""
    objective = of(target, x.shape[0])
    if not objective.needs_output:
        return objective
    with torch.no_grad():
        parts = [part.resolve(run(xs)) for xs, part in zip(x.split(batch_size), objective.split(batch_size))]
    kind = type(parts[0])
    joined = kind.join(parts) if all(type(p) is kind for p in parts) else None
    return joined if joined is not None else per_image([p.at(i) for p in parts for i in range(len(p))])


def require_confidence(objective: Objective, who: str) -> None:
    """A one-line :class:`ScoreOnlyError` naming ``who`` when ``objective`` has no confidence."""
    if not objective.has_confidence:
        items = objective.items if isinstance(objective, PerImage) else (objective,)
        what = next((_what(o) for o in items if not o.has_confidence), _what(objective))
        raise ScoreOnlyError(confidence_error(who, what), who, what)


def _what(objective: Objective) -> str:
    return "a callable target" if isinstance(objective, Score) else type(objective).__name__


def confidence_error(who: str, what: str = "a callable target") -> str:
    """The one line that says ``who`` reads a confidence that ``what`` (the target) does not give."""
    return (f"{who} reads the target's confidence in [0, 1], and {what} gives only a score; "
            f"pass a galleryvis.targets objective with one, such as targets.Class")
