"""galleryvis: a manifest of images x models x techniques in, a static gallery of CNN visualizations out.

Public API: :func:`attribute`, :func:`attribute_many`, :func:`techniques`, :func:`concepts`,
:func:`concept_drop` and :func:`reference_examples`, :func:`synthesize`,
:func:`measure_chunking` with its :class:`Chunking`, and the :mod:`galleryvis.metrics` module. They are imported on first use, so that the command
line can answer an unchanged rebuild without importing torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Chunking", "Context", "attribute", "attribute_many", "concept_drop",
           "concepts", "measure_chunking", "reference_examples",
           "metrics", "synthesize", "targets", "technique", "techniques"]
__version__ = "0.1.0"

#: public name -> the module that defines it (``metrics`` and ``targets`` are the modules themselves)
_HOMES = {"IMAGENET_MEAN": "engine", "IMAGENET_STD": "engine", "attribute": "engine", "attribute_many": "engine",
          "techniques": "engine", "synthesize": "synthesis", "metrics": "metrics", "Chunking": "engine.chunking",
          "measure_chunking": "engine", "Context": "engine", "technique": "registry", "targets": "targets",
          "concepts": "attribution.concepts", "concept_drop": "attribution.concepts",
          "reference_examples": "attribution.references"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'galleryvis' has no attribute {name!r}")
    module = import_module(f".{_HOMES[name]}", __name__)
    value = module if name == _HOMES[name] else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
