"""Feature visualization: images optimized or reconstructed through a model.

:func:`synthesize` runs one of the techniques registered here with ``family="synthesis"``
(:class:`galleryvis.families.Synthesis`: how a gallery plans, computes, stores and shows them):
``filter_visualization``, ``layer_activation``, ``deep_dream``, ``class_visualization`` and
``inverted_representation``.

Modules: ``api`` (``synthesize``, ``SynthesisResult``, the per-chunk ``Chunk``, and
``synthesis_technique``, which registers a technique with what it takes), ``param`` (pixel and
decorrelated FFT image parameterizations), ``transforms`` (jitter/scale/rotate/blur with one
``torch.Generator`` per item), ``objectives`` (the layer tap, unit objectives, regularizers),
``techniques`` (the five registered functions) and ``transfer`` (``class_rank``: how a model
ranks a class for a synthesized image).
"""
from galleryvis.synthesis import techniques as _techniques  # noqa: F401  (fills the registry)
from galleryvis.synthesis.api import SynthesisResult, synthesize

__all__ = ["SynthesisResult", "synthesize"]
