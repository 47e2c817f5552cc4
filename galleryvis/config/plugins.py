"""Technique plug-ins: modules that register techniques without editing galleryvis.

A plug-in is any module that calls :func:`galleryvis.registry.technique` (or
``synthesis_technique``) when imported. It is found in one of two ways:

- listed in the manifest, ``[gallery] plugins = ["my_techniques", "extra.py"]``: an importable
  module name, or a ``.py`` file relative to the manifest's folder;
- installed with an entry point in the group :data:`ENTRY_POINT_GROUP`
  (``[project.entry-points."galleryvis.plugins"] mine = "my_package.techniques"``), loaded by
  every build.

Each module is imported once per process (files under a name derived from their absolute
path), so parsing a manifest twice never registers a technique twice. galleryvis's own
techniques are registered before any plug-in, so a plug-in that reuses one of their names is
the one refused, in one line naming it.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from galleryvis import registry

ENTRY_POINT_GROUP = "galleryvis.plugins"


class PluginError(ImportError):
    """A plug-in that cannot be imported; the message names it and says why."""


def load_entry_points() -> list[str]:
    """Import every module registered under :data:`ENTRY_POINT_GROUP`; their names."""
    registry.names()  # the built-in techniques first: a plug-in that reuses a name is the one refused
    names = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001  (any import-time error of someone else's module)
            raise PluginError(f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r}: "
                              f"{type(exc).__name__}: {exc}") from None
        names.append(ep.value)
    return names


def load(spec: str, root: Path) -> ModuleType:
    """Import plug-in ``spec``: a ``.py`` file (relative to ``root``) or a module name."""
    registry.names()  # the built-in techniques first: a plug-in that reuses a name is the one refused
    if spec.endswith(".py"):
        path = (root / spec).resolve()
        if not path.is_file():
            raise PluginError(f"plug-in file {spec!r} does not exist (looked for {str(path)!r})")
        name = f"galleryvis_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001
            del sys.modules[name]
            raise PluginError(f"plug-in {spec!r} failed to import: {type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(spec)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"cannot import plug-in {spec!r}: {type(exc).__name__}: {exc}") from None
