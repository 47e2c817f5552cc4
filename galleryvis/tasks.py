"""What a model does: its task, and how a task's raw output is read.

A model has one task (:data:`TASKS`): ``classification`` (logits (N, classes), softmax
confidences), ``multilabel`` (logits (N, classes), one sigmoid per class), ``segmentation``
(a score per class and pixel, (N, classes, h, w)), ``image-text`` (similarities with texts)
or ``detection`` (boxes with classes and scores, :mod:`galleryvis.targets.detection`).
Sources infer it where they know the model (:func:`of_model`); a manifest's ``task`` wins.
Techniques declare the tasks they support (the registry's ``tasks``); :func:`check` refuses
the others in one line before anything is computed. Imports no torch (the site layer reads it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Collection, Literal, get_args

if TYPE_CHECKING:
    from torch import Tensor, nn

Task = Literal["classification", "multilabel", "segmentation", "image-text", "detection"]
#: Every task, in the order the docs list them.
TASKS: tuple[str, ...] = get_args(Task)
#: Tasks a technique supports only where its registry entry names them: a detector's output
#: (boxes, :mod:`galleryvis.targets.detection`) is explained by few techniques.
OPT_IN = frozenset({"detection"})
#: The tasks of a technique that names none.
DEFAULT_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t not in OPT_IN)
#: The task of a model that declares none and that no source knows better.
DEFAULT_TASK: str = "classification"
#: The tasks whose raw output is logits (N, classes) (a class per image).
CLASS_TASKS = frozenset({"classification", "multilabel"})

#: The tasks a gallery build can show (its plan reads one class per image, through the model's
#: class confidences, or one detection, through a detector's detections); a task outside it works
#: in the Python API and is refused by a build in one line.
GALLERY_TASKS = frozenset(TASKS)

#: The torchvision builders of segmentation models (``torchvision.models.segmentation``).
TORCHVISION_SEGMENTATION = ("fcn_", "deeplabv3_", "lraspp_")

#: Ultralytics' detection model class (YOLO's ``.model``; its segmentation and pose models
#: subclass it and are not detectors).
ULTRALYTICS_DETECTOR = "ultralytics.nn.tasks.DetectionModel"


class TaskError(ValueError):
    """A technique asked for a task it does not support, or a model for one it cannot do."""


def check(technique: str, supported: Collection[str], task: str | None) -> None:
    """A one-line :class:`TaskError` when ``technique`` does not support ``task`` (None: any
    task, as with a callable target)."""
    if task is not None and task not in supported:
        raise TaskError(f"{technique} does not support {task} models (it supports {', '.join(sorted(supported))})")


def of_model(model: nn.Module) -> str:
    """The task ``model`` was built for: its own ``task`` attribute when it declares one of
    :data:`TASKS` (a wrapper can); segmentation for torchvision's segmentation models and Hugging
    Face's ``*ForSemanticSegmentation``; detection for torchvision's detectors, Hugging Face's
    ``*ForObjectDetection`` and Ultralytics' ``DetectionModel``; classification otherwise."""
    declared = getattr(model, "task", None)
    if declared in TASKS:
        return str(declared)
    names = {c.__module__ + "." + c.__name__ for c in type(model).__mro__}
    if any(n.startswith("torchvision.models.segmentation.") or n.endswith("ForSemanticSegmentation") for n in names):
        return "segmentation"
    if any(n.startswith("torchvision.models.detection.") or n.endswith("ForObjectDetection") for n in names) \
            or f"{type(model).__module__}.{type(model).__name__}" == ULTRALYTICS_DETECTOR:
        return "detection"
    return "classification"


def check_model(task: str | None, model: nn.Module, what: str) -> str:
    """The task of a manifest's model: ``task`` when given (a classifier may be read as
    multi-label and back), else :func:`of_model`; a one-line :class:`TaskError` naming ``what``
    when the model cannot do the task given."""
    built = of_model(model)
    if task is None:
        return built
    if task != built and not {task, built} <= CLASS_TASKS:
        raise TaskError(f"{what}: task {task!r}, but {type(model).__name__} is a {built} model; "
                        f"set task = {built!r} or remove task (it is inferred)")
    return task


def spatial_logits(output: Any) -> Tensor:
    """A segmentation model's class scores per pixel, (N, classes, h, w), from its raw output:
    the tensor itself, a dict's ``"out"`` (torchvision) or an object's ``.logits`` (Hugging
    Face). A ValueError naming what came back otherwise."""
    from torch import Tensor

    if isinstance(output, dict) and "out" in output:
        output = output["out"]
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
        output = output.logits
    if not isinstance(output, Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"a segmentation target needs scores of shape (N, classes, H, W) (a tensor, a dict's 'out' "
                         f"or an object's .logits); the model returned {shape}")
    return output


def class_logits(output: Any, task: str) -> Tensor:
    """One score per image and class, (N, classes), of a model of ``task``: a classifier's
    logits as they are; a segmentation model's mean logit of each class over the image (what
    feature visualization maximizes for it)."""
    if task == "segmentation":
        return spatial_logits(output).mean((2, 3))
    from torch import Tensor

    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"the model must return logits of shape (N, classes); it returned {shape}")
    return output


#: The names torchvision (``classifier``, ``aux_classifier``) and Hugging Face
#: (``decode_head``, ``auxiliary_head``) give a segmentation model's heads.
HEADS = ("classifier", "aux_classifier", "decode_head", "auxiliary_head")


def heads(model: nn.Module) -> tuple[str, ...]:
    """The dotted names of a segmentation model's heads (direct children named in :data:`HEADS`),
    where its default CAM layer is never looked for."""
    return tuple(n for n, _ in model.named_children() if n in HEADS)
