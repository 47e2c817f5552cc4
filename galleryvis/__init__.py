"""galleryvis: a manifest of images x models x techniques in, a static gallery of CNN visualizations out.

Public API: :func:`attribute`, :func:`attribute_many`, :func:`techniques`, :func:`synthesize`
and the :mod:`galleryvis.metrics` module.
"""
from . import attribution as _attribution  # noqa: F401  (fills the registry)
from .engine import IMAGENET_MEAN, IMAGENET_STD, attribute, attribute_many, techniques
from . import metrics
from .synthesis import synthesize

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "attribute", "attribute_many", "metrics", "synthesize", "techniques"]
__version__ = "0.1.0"
