"""Class names: ImageNet's, from a packaged copy of torchvision's list."""
from __future__ import annotations

import functools
import json
from pathlib import Path


@functools.cache
def _labels() -> tuple[str, ...]:
    return tuple(json.loads((Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.json").read_text("utf-8"))["labels"])


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names as torchvision ships them, read from a copy in the package:
    torchvision is imported only for torchvision models (its import takes over a second)."""
    return list(_labels())
