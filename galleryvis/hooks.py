"""The context managers for temporary model changes, under the name techniques and plugins import
them by (docs/adding-a-technique.md). They are declared in :mod:`galleryvis.engine.changes`."""
from __future__ import annotations

from galleryvis.engine.changes import (RELU_FAMILY, capture, counting, deterministic, guided, hook_count, output_rule, prepared,
                      replaced_output, resolve_layer)
from galleryvis.errors import LayerError

__all__ = ["RELU_FAMILY", "LayerError", "capture", "counting", "deterministic", "guided", "hook_count",
           "output_rule", "prepared", "replaced_output", "resolve_layer"]
