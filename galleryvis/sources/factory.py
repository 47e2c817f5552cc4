"""Models built by the user's own code: ``factory = "package.module:function"``."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from torch import nn

from galleryvis.storage.images import file_sha256
from galleryvis.sources import LoadedModel, ModelError, Spec
from galleryvis.sources.weights import load_into, no_named_weights, state_sha256


def _factory(spec: str, what: str) -> Callable[[], nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"{what}: factory must look like 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{what}: cannot import factory {spec!r}: {exc}") from None
    return fn


class FactorySource:
    """A function returning an ``nn.Module``; weights ``none`` (as returned) or a local file."""

    name = "factory"
    usage = 'factory = "package.module:function" (your code returns the nn.Module); weights = "file.pth" or "none"'

    def handles(self, spec: Spec) -> bool:
        return bool(spec.factory)

    def names(self) -> tuple[str, ...]:
        return ()

    def knows(self, name: str) -> bool:
        return True

    def offline(self) -> frozenset[str]:
        return frozenset()  # it names no models: the factory's code makes them

    def missing(self) -> str:
        return ""

    def check_weights(self, name: str, weights: str) -> str:
        return no_named_weights("a factory model", weights)

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        assert spec.factory
        model = _factory(spec.factory, what)()
        if not isinstance(model, nn.Module):
            raise ModelError(f"{what}: factory {spec.factory!r} returned {type(model).__name__}, not an nn.Module")
        if spec.weights and spec.weights.lower() != "none":
            path = (base / spec.weights).expanduser()
            load_into(model, path, what)
            return LoadedModel(model, f"factory:{spec.factory}:{file_sha256(path)}",
                               f"{spec.factory} with weights from {path.name}", files=(path,))
        # the weights are whatever the factory made (its code, files it read): only they tell
        return LoadedModel(model, f"factory:{spec.factory}:state={state_sha256(model)}", spec.factory, pinned=False)
