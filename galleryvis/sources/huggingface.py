"""Hugging Face ``transformers`` image classifiers, ``*ForSemanticSegmentation`` models and
``*ForObjectDetection`` detectors (DETR, RT-DETR, ...; :class:`Boxes`)
(optional extra ``galleryvis[huggingface]``): ``hf:<hub id or folder>`` or ``source =
"huggingface"``, loaded from a local folder
(``save_pretrained``) or the local hub cache, never downloaded; preprocessing from the image
processor config, labels from ``id2label``, and ``.logits`` unwrapped. CLIP and SigLIP models
(``CLIPModel``, ``SiglipModel``) are image-text models: zero-shot classifiers over the entry's
``prompts`` (:mod:`galleryvis.sources.imagetext`), with the folder's tokenizer."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD
from galleryvis.storage.images import file_sha256
from galleryvis.tasks import of_model
from galleryvis.sources import LoadedModel, ModelError, Spec, bare_name, source_of
from galleryvis.sources.weights import folder_weights, no_named_weights

#: PIL's resampling codes, as image processor configs write them.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class Logits(nn.Module):
    """A Hugging Face classifier or segmentation model that returns its ``.logits`` tensor (its
    layer names gain the prefix ``model.``); ``task``: the wrapped model's
    (:func:`galleryvis.tasks.of_model`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.task = of_model(model)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


class Boxes(nn.Module):
    """A Hugging Face ``*ForObjectDetection`` model (DETR, RT-DETR, Deformable DETR, ...) that
    returns torchvision's output, one dict per image: each query a detection, ``boxes`` in pixels
    of the input (from its ``pred_boxes``, centre and size relative to the input),
    ``probs`` its class probabilities (a softmax without the last, "no object", class where the
    logits have one more class than the labels, DETR's; one sigmoid per class otherwise,
    RT-DETR's), ``scores`` and ``labels`` their maximum and its class. Its layer names gain the
    prefix ``model.``; ``cam_layer``: the last stage of its backbone
    (:func:`galleryvis.targets.detection.detector_layer`)."""

    task = "detection"

    def __init__(self, model: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.model = model
        self.num_labels = num_labels
        stages = [n for n, _ in self.named_modules() if re.search(r"\.backbone\..*(\.stages\.\d+|\.layer\d+)$", n)]
        self.cam_layer = stages[-1] if stages else None

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        out = self.model(pixel_values=x)
        logits = out.logits
        probs = logits.softmax(-1)[..., :-1] if logits.shape[-1] == self.num_labels + 1 else logits.sigmoid()
        cx, cy, w, h = out.pred_boxes.unbind(-1)
        height, width = x.shape[-2:]
        boxes = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                             (cy + h / 2) * height], -1)
        scores, labels = probs.max(-1)
        return [{"boxes": b, "labels": lab, "scores": s, "probs": p}
                for b, lab, s, p in zip(boxes, labels, scores, probs)]


class HuggingFaceSource:
    """``AutoModelForImageClassification`` from a local folder or the local hub cache; weights
    ``DEFAULT`` (the folder's, safetensors preferred, ``.bin`` with ``weights_only``) or ``none``
    (random init from its config)."""

    name = "huggingface"
    usage = ('name = "hf:HUB_ID" from the local Hugging Face cache (never downloaded), or name = "hf:FOLDER", '
             'a folder save_pretrained() wrote')

    def handles(self, spec: Spec) -> bool:
        return not spec.factory and source_of(spec) == "huggingface"

    def names(self) -> tuple[str, ...]:
        return ()

    def knows(self, name: str) -> bool:
        return bool(name.strip())

    def offline(self) -> frozenset[str]:
        return frozenset()  # it names no models: any hub id or folder

    def missing(self) -> str:
        return "" if importlib.util.find_spec("transformers") else "pip install 'galleryvis[huggingface]'"

    def check_weights(self, name: str, weights: str) -> str:
        return no_named_weights(f"Hugging Face model {name}", weights)

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        try:
            from transformers import AutoConfig
        except ImportError:
            raise ModelError(f"{what}: Hugging Face models need transformers: "
                             "pip install 'galleryvis[huggingface]'") from None
        ref, weights = bare_name(spec.name), (spec.weights or "DEFAULT")
        if weights.upper() not in ("DEFAULT", "NONE"):
            raise ModelError(f"{what}: a Hugging Face model takes its weights from its folder or the hub cache "
                             f'(weights "DEFAULT") or none ("none"), not {weights!r}')
        folder = _folder(base, ref, what)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        files = tuple(p for p in (folder / "config.json", folder / "preprocessor_config.json") if p.is_file())
        if _image_text(config):
            return _image_text_model(spec, folder, config, weights.upper() == "NONE", files, ref, what)
        auto = _auto_class(config)
        if weights.upper() == "NONE":
            model, fingerprint, desc = auto.from_config(config), "random-init", "random weights"
        else:
            path = folder_weights(folder, what)
            model = auto.from_pretrained(folder, local_files_only=True, use_safetensors=path.suffix == ".safetensors")
            fingerprint, desc, files = f"hf:{file_sha256(path)}", f"weights from {path.name}", files + (path,)
        id2label = getattr(config, "id2label", None) or {}
        labels = [str(id2label.get(i, id2label.get(str(i), f"class {i}"))) for i in range(len(id2label))]
        wrapped = Boxes(model, len(labels)) if _detector(config) else Logits(model)
        return LoadedModel(wrapped.eval(), fingerprint, f"Hugging Face {ref}, {desc}",
                           labels=labels, files=files, random=weights.upper() == "NONE",
                           **_preprocessing(folder, config))


def _detector(config: Any) -> bool:
    """Whether ``config``'s architectures are ``*ForObjectDetection`` (DETR, RT-DETR, ...)."""
    return any(a.endswith("ForObjectDetection") for a in getattr(config, "architectures", None) or ())


def _auto_class(config: Any) -> Any:
    """``AutoModelForSemanticSegmentation`` for a config whose architectures are
    ``*ForSemanticSegmentation`` (SegFormer, ...), ``AutoModelForObjectDetection`` for
    ``*ForObjectDetection``, ``AutoModelForImageClassification`` otherwise."""
    import transformers

    if _detector(config):
        return transformers.AutoModelForObjectDetection
    segmentation = any(a.endswith("ForSemanticSegmentation") for a in getattr(config, "architectures", None) or ())
    return transformers.AutoModelForSemanticSegmentation if segmentation else transformers.AutoModelForImageClassification


#: The Hugging Face model types galleryvis reads as image-text models (:func:`galleryvis.sources.imagetext.kind_of`).
_IMAGE_TEXT_TYPES = ("clip", "siglip")


def _image_text(config: Any) -> bool:
    """Whether ``config`` describes a CLIP-like image-text model (by its ``model_type``)."""
    return getattr(config, "model_type", "") in _IMAGE_TEXT_TYPES


def _image_text_model(spec: Spec, folder: Path, config: Any, random: bool, files: tuple[Path, ...], ref: str,
                      what: str) -> LoadedModel:
    """A CLIP / SigLIP folder as a zero-shot classifier over ``spec.prompts`` (its tokenizer from the folder)."""
    from transformers import AutoModel, AutoTokenizer

    from galleryvis.sources.imagetext import zero_shot
    from galleryvis.sources.weights import random_init

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{what}: {str(folder)!r} holds no tokenizer this image-text model can use: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    if random:
        model = AutoModel.from_config(config)
        fingerprint, desc = random_init(model, spec.seed), "random weights"
    else:
        path = folder_weights(folder, what)
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=path.suffix == ".safetensors")
        fingerprint, desc, files = f"hf:{file_sha256(path)}", f"weights from {path.name}", files + (path,)
    try:
        clip = zero_shot(model.eval(), spec.prompts, tokenizer)
    except ValueError as exc:
        raise ModelError(f"{what}: {exc}") from None
    return LoadedModel(clip, f"{fingerprint}:prompts={clip.prompts_sha256()}",
                       f"Hugging Face {ref}, {desc}, {len(clip.prompts)} prompts", labels=list(clip.labels),
                       files=files, random=random, **_preprocessing(folder, config.vision_config))


def _folder(base: Path, ref: str, what: str) -> Path:
    """``ref`` as a local model folder (relative to ``base``), else its local hub-cache snapshot."""
    local = (base / ref).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(ref, "config.json")
    except ValueError:  # not a valid repo id
        config = None
    if not isinstance(config, str):
        raise ModelError(f"{what}: {ref!r} is neither a model folder ({str(local)!r}) nor in the local Hugging Face "
                         f"cache; download it where the hub is reachable, or save_pretrained() it to a folder")
    return Path(config).parent


def _preprocessing(folder: Path, config: Any) -> dict[str, Any]:
    """Size, mean, std, crop and interpolation from ``preprocessor_config.json`` (ImageNet
    statistics and the config's ``image_size`` without one; pixels in [0, 1] where it says
    ``do_normalize: false``, RT-DETR's)."""
    path = folder / "preprocessor_config.json"
    proc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def side(value: Any) -> int | None:
        if isinstance(value, dict):
            value = value.get("height", value.get("shortest_edge"))
        return int(value) if isinstance(value, (int, float)) else None

    resize = side(proc.get("size")) or int(getattr(config, "image_size", 224))
    crop = side(proc.get("crop_size")) if proc.get("do_center_crop") else None
    size = crop or resize
    crop_pct = float(proc.get("crop_pct") or (crop / resize if crop and crop < resize else 1.0))
    raw = proc.get("do_normalize") is False
    return {"size": size, "mean": (0.0, 0.0, 0.0) if raw else tuple(proc.get("image_mean", IMAGENET_MEAN)),
            "std": (1.0, 1.0, 1.0) if raw else tuple(proc.get("image_std", IMAGENET_STD)), "crop_pct": min(crop_pct, 1.0),
            "interpolation": _RESAMPLE.get(proc.get("resample", 2), "bilinear")}
