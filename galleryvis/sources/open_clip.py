"""open_clip's image-text models (optional extra ``galleryvis[clip]``): ``open_clip:<architecture>``
or ``source = "open_clip"``, an architecture open_clip registers (``ViT-B-32``) or a model config
file in open_clip's format (``open_clip:tiny.json``, relative to the manifest); weights a local
checkpoint (a state dict, ``.pt`` or ``.safetensors``) or ``none``, never downloaded. The model
becomes a zero-shot classifier over the entry's ``prompts`` (:mod:`galleryvis.sources.imagetext`)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from torch import nn

from galleryvis.storage.images import file_sha256
from galleryvis.sources import LoadedModel, ModelError, Spec, bare_name, close_names, source_of
from galleryvis.sources.weights import load_state_dict, random_init


def _open_clip(what: str) -> Any:
    try:
        import open_clip
    except ImportError:
        raise ModelError(f"{what}: open_clip models need open_clip: pip install 'galleryvis[clip]'") from None
    return open_clip


def _is_config(name: str) -> bool:
    return name.endswith(".json")


class OpenClipSource:
    """open_clip's architectures by name, or a model config file; weights ``none`` or a checkpoint."""

    name = "open_clip"
    usage = ('name = "open_clip:ViT-B-32" (or a model config file, "open_clip:my-model.json") with weights = a '
             'local checkpoint (.pt or .safetensors state dict) or "none"; prompts = [...] or "imagenet"')

    def handles(self, spec: Spec) -> bool:
        return not spec.factory and source_of(spec) == "open_clip"

    def names(self) -> tuple[str, ...]:
        try:
            return tuple(_open_clip("open_clip").list_models())
        except ModelError:
            return ()

    def knows(self, name: str) -> bool:
        return _is_config(name) or name in self.names()

    def offline(self) -> frozenset[str]:
        return frozenset()  # no weights ship with it: a checkpoint file or none

    def missing(self) -> str:
        return "" if importlib.util.find_spec("open_clip") else "pip install 'galleryvis[clip]'"

    def check_weights(self, name: str, weights: str) -> str:
        raise ModelError(f'open_clip model {name} takes weights = a local checkpoint (.pt, .safetensors) or "none", '
                         f"not {weights!r} (galleryvis never downloads open_clip's pretrained tags)")

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        from galleryvis.sources.imagetext import zero_shot

        open_clip = _open_clip(what)
        name, weights = bare_name(spec.name), spec.weights
        if weights is None or weights.upper() == "DEFAULT":
            raise ModelError(f'{what}: open_clip model {name} needs weights = a local checkpoint (.pt, .safetensors) '
                             f'or "none"; galleryvis never downloads its pretrained tags')
        if not self.knows(name):
            raise ModelError(f"{what}: unknown open_clip model {name!r}{close_names(name, 'open_clip')}")
        config = (base / name).expanduser() if _is_config(name) else None
        model, tokenizer = _build(open_clip, name, config, what)
        files: tuple[Path, ...] = () if config is None else (config,)
        if weights.lower() == "none":
            fingerprint, desc = random_init(model, spec.seed), "random weights"
        else:
            path = (base / weights).expanduser()
            _load_checkpoint(model, path, what)
            fingerprint, desc, files = f"open_clip:{file_sha256(path)}", f"weights from {path.name}", files + (path,)
        try:
            clip = zero_shot(model.eval(), spec.prompts, tokenizer)
        except ValueError as exc:
            raise ModelError(f"{what}: {exc}") from None
        pre = open_clip.get_model_preprocess_cfg(model)
        size = pre.get("size", model.visual.image_size)
        return LoadedModel(clip, f"{fingerprint}:prompts={clip.prompts_sha256()}",
                           f"open_clip {name}, {desc}, {len(clip.prompts)} prompts",
                           size=int(size[0] if isinstance(size, (tuple, list)) else size),
                           mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                           std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
                           labels=list(clip.labels), interpolation=pre.get("interpolation", "bicubic"),
                           files=files, random=weights.lower() == "none")


def _build(open_clip: Any, name: str, config: Path | None, what: str) -> tuple[nn.Module, Any]:
    """The architecture (random weights, from torch's seeded generator) and its tokenizer."""
    if config is None:
        model = open_clip.create_model(name, pretrained=None)
        try:
            return model, open_clip.get_tokenizer(name)
        except Exception as exc:  # noqa: BLE001  (Hugging Face tokenizers raise their own errors offline)
            raise ModelError(f"{what}: the tokenizer of open_clip {name} is not available here: {exc}") from None
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{what}: cannot read the open_clip model config {str(config)!r}: {exc}") from None
    cfg = cfg.get("model_cfg", cfg)  # a hub folder's open_clip_config.json nests it
    text = dict(cfg.get("text_cfg", {}))
    try:
        custom = cfg.pop("custom_text", False) or "hf_model_name" in text
        model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"{what}: {str(config)!r} is not an open_clip model config: {exc}") from None
    context = int(text.get("context_length", 77))
    if text.get("hf_tokenizer_name"):
        return model, open_clip.tokenizer.HFTokenizer(text["hf_tokenizer_name"], context_length=context)
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=context)


def _load_checkpoint(model: nn.Module, path: Path, what: str) -> None:
    """A state dict (as open_clip's training saves it: ``state_dict``, maybe ``module.``-prefixed)."""
    state = load_state_dict(path, what)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{what}: {str(path)!r} does not fit the architecture: "
                         f"{str(exc).strip().splitlines()[0]}") from None
