"""timm's models (optional extra ``galleryvis[timm]``): ``timm:<architecture>`` or
``source = "timm"``; weights from the local Hugging Face hub cache, a model folder or a file;
preprocessing and labels from the model's pretrained config."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from torch import nn

from galleryvis.storage.images import file_sha256
from galleryvis.sources.labels import imagenet_labels
from galleryvis.sources import LoadedModel, ModelError, Spec, bare_name, close_names, source_of
from galleryvis.sources.weights import folder_weights, load_into, no_named_weights


def _timm(what: str) -> Any:
    try:
        import timm
    except ImportError:
        raise ModelError(f"{what}: timm models need timm: pip install 'galleryvis[timm]'") from None
    return timm


class TimmSource:
    """Any timm architecture by name; weights ``DEFAULT`` (the pretrained config's hub snapshot,
    from the local Hugging Face cache only), ``none``, a weights file, or a model folder
    (``config.json`` + ``model.safetensors``, as timm's ``save_for_hf`` and the hub write it)."""

    name = "timm"
    usage = ('name = "timm:NAME": default weights from the local Hugging Face cache (never downloaded); '
             'weights = a model folder (config.json + model.safetensors) or a .safetensors file for local ones')

    def handles(self, spec: Spec) -> bool:
        return not spec.factory and source_of(spec) == "timm"

    def names(self) -> tuple[str, ...]:
        try:
            return tuple(_timm("timm").list_models())
        except ModelError:
            return ()

    def knows(self, name: str) -> bool:
        timm = _timm(name)
        return timm.is_model(timm.models.split_model_name_tag(name)[0])

    def offline(self) -> frozenset[str]:
        """The models whose default pretrained weights are in the local Hugging Face cache."""
        if self.missing():
            return frozenset()
        from huggingface_hub.constants import HF_HUB_CACHE

        cached = {p.name.removeprefix("models--").replace("--", "/") for p in Path(HF_HUB_CACHE).glob("models--*")}
        if not cached:
            return frozenset()
        timm = _timm("timm")
        return frozenset(n for n in self.names()
                         if getattr(timm.models.get_pretrained_cfg(n), "hf_hub_id", None) in cached)

    def missing(self) -> str:
        return "" if importlib.util.find_spec("timm") else "pip install 'galleryvis[timm]'"

    def check_weights(self, name: str, weights: str) -> str:
        return no_named_weights(f"timm model {name}", weights)

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        timm = _timm(what)
        name, weights = bare_name(spec.name), spec.weights
        if not self.knows(name):
            raise ModelError(f"{what}: unknown timm model {name!r}{close_names(name, 'timm')}")
        if weights is None or weights.upper() == "DEFAULT":
            folder, fingerprint = _cached(timm, name, what), None
        elif weights.lower() == "none":
            model = timm.create_model(name, pretrained=False)
            return _loaded(timm, model, "random-init", f"timm {name}, random weights", random=True)
        else:
            folder = (base / weights).expanduser()
            fingerprint = None if folder.is_dir() else file_sha256(folder)
        if fingerprint is not None:  # a weights file for the named architecture
            model = timm.create_model(name, pretrained=False)
            load_into(model, folder, what)
            return _loaded(timm, model, f"timm:{name}:{fingerprint}", f"timm {name}, weights from {folder.name}",
                           (folder,))
        from timm.models._hub import load_model_config_from_path

        cfg, architecture, args = load_model_config_from_path(folder)
        if timm.models.split_model_name_tag(architecture)[0] != timm.models.split_model_name_tag(name)[0]:
            raise ModelError(f"{what}: {str(folder)!r} holds a {architecture!r}, not a {name!r}")
        model = timm.create_model(architecture, pretrained=False, pretrained_cfg=cfg, **args)
        path = folder_weights(folder, what)
        load_into(model, path, what)
        return _loaded(timm, model, f"timm:{name}:{file_sha256(path)}", f"timm {name}, weights from {folder.name}",
                       (folder / "config.json", path))


def _cached(timm: Any, name: str, what: str) -> Path:
    """The local hub-cache snapshot of ``name``'s default pretrained weights (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    config = try_to_load_from_cache(hub_id, "config.json") if hub_id else None
    if not isinstance(config, str):
        raise ModelError(f"{what}: timm weights for {name!r} ({hub_id or 'no hub id'}) are not in the local "
                         f"Hugging Face cache; download them where the hub is reachable, or set weights to a "
                         f"model folder or a .safetensors file")
    return Path(config).parent


def _loaded(timm: Any, model: nn.Module, fingerprint: str, description: str,
            files: tuple[Path, ...] = (), random: bool = False) -> LoadedModel:
    """``model`` with its pretrained config's preprocessing and labels, built from ``files``
    (``random``: randomly initialized)."""
    data = timm.data.resolve_model_data_config(model)
    cfg = dict(model.pretrained_cfg)
    _, height, width = data["input_size"]
    if height != width:
        raise ModelError(f"{description}: input size {height}x{width} is not square; galleryvis crops squares")
    labels = cfg.get("label_names") or (imagenet_labels() if getattr(model, "num_classes", 0) == 1000 else [])
    return LoadedModel(model.eval(), fingerprint, description, size=int(height), mean=tuple(data["mean"]),
                       std=tuple(data["std"]), labels=[str(v) for v in labels], crop_pct=float(data["crop_pct"]),
                       interpolation=str(data["interpolation"]), files=files, random=random)
